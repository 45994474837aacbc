"""The registry of attribution methods: each is a :class:`~vitlrp.protocol.Method` subclass registered by name
(or, for a family of names such as ``gamma:<c>:<l>``, with a parser) by the :func:`register` decorator.

Adding a method is one class in a family's file plus its test; the scripts, ``--help``, the benchmark and the
tests iterate the registry.
"""
import importlib
import importlib.metadata
import re
import sys
import textwrap
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Registration:
    """One registry entry: a method (or a family of names when ``parse`` is set) and its class."""

    name: str
    cls: type
    family: str
    summary: str
    parse: object = None  # name -> parameters (passed to the class after the model), or None for another name
    pattern: str = ""  # how a family's names look, for --help and messages


REGISTRY = {}


def register(name, family, summary, *, parse=None, pattern=""):
    """Class decorator: register a :class:`~vitlrp.protocol.Method` subclass under ``name`` (a family of names
    when ``parse(name)`` is given: it returns the parameters a name carries, or None for a name of another method).
    A name registered twice is an error."""
    def decorate(cls):
        if name in REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        cls.family, cls.summary = family, summary
        REGISTRY[name] = Registration(name, cls, family, summary, parse, pattern)
        return cls

    return decorate


def unregister(name):
    """Remove a registration (tests register toy methods and remove them again)."""
    REGISTRY.pop(name, None)


@dataclass(frozen=True)
class MethodChoice:
    """A method as the user named it, before a model is at hand: its registry entry and the parameters its name
    carries (the :class:`~vitlrp.gamma.GammaSpec` of a γ name)."""

    name: str
    entry: Registration
    params: object = None

    @property
    def family(self):
        return self.entry.family

    @property
    def cls(self):
        return self.entry.cls

    def identity(self):
        """What makes two names the same method: the registry entry and its parameters."""
        return self.entry.name, self.params

    def create(self, model, settings=None):
        """The method on ``model`` (enter it before use)."""
        method = self.cls(model, settings) if self.entry.parse is None else self.cls(model, self.params, settings)
        method.name = self.name
        return method


def list_methods(family=None):
    """The registered method names (a family of names by its pattern), in registration order."""
    return [e.pattern or n for n, e in REGISTRY.items() if family is None or e.family == family]


def names(family=None):
    """The registry's keys (a family of names under its family's key), in registration order."""
    return [n for n, e in REGISTRY.items() if family is None or e.family == family]


def choices():
    """The registered names in words, for error messages."""
    return ", ".join(e.pattern or n for n, e in REGISTRY.items())


def help_text():
    """The methods part of a script's ``--help``: one line per registered method or family."""
    lines = ["methods (the names a list of methods takes):"]
    for n, e in REGISTRY.items():
        needs = f" (needs {', '.join(requirement(d) for _, d in e.cls.packages)})" if e.cls.packages else ""
        lines += textwrap.wrap(f"{e.pattern or n}: {e.summary}{needs}", 116, initial_indent="  ",
                               subsequent_indent="      ")
    return "\n".join(lines)


def requirement(dist):
    """``dist`` as vitlrp's own metadata pins it (``captum==0.9.0``: the pins live in pyproject.toml alone), or its
    bare name where vitlrp's metadata is not installed."""
    try:
        required = importlib.metadata.requires("vitlrp") or []
    except importlib.metadata.PackageNotFoundError:
        required = []
    for r in required:
        if re.match(rf"{re.escape(dist)}\s*(==|>=|~=|<|$)", r.split(";")[0].strip(), re.IGNORECASE):
            return r.split(";")[0].strip()
    return dist


def check_available(entry):
    """Import the packages a registry entry needs; a missing or broken package is one UserError line."""
    for module, dist in entry.cls.packages:
        try:
            importlib.import_module(module)
        except Exception as err:  # ImportError, or a package that fails while importing (a missing cv2, ...)
            raise UserError(f"method {entry.name} needs the {dist} package, which cannot be imported "
                            f"({type(err).__name__}: {err}); install it with pip install {requirement(dist)}") from None


def parse_method(name):
    """The :class:`MethodChoice` a name stands for (``'balanced'``, ``'gamma:1:0.5'``, ``'gae'`` ...); one UserError
    line naming the choices for an unknown name, or for a package it needs that cannot be imported."""
    if isinstance(name, MethodChoice):
        return name
    if name in REGISTRY and REGISTRY[name].parse is None:
        choice = MethodChoice(name, REGISTRY[name])
    else:
        choice = next((MethodChoice(name, e, p) for e in REGISTRY.values() if e.parse is not None
                       for p in [e.parse(name)] if p is not None), None)
    if choice is None:
        raise UserError(f"unknown method {name!r}: use {choices()}")
    check_available(choice.entry)  # a missing package is a config error, found before any work
    return choice


def parse_methods(names, what="methods"):
    """Several method names (``what``: the list's name, the error's setting); the same method twice is refused,
    also under two names (``balanced`` and ``gamma:1:0.5``)."""
    chosen = [parse_method(m) for m in names]
    seen = {}
    for m in chosen:
        key = m.identity()
        if key in seen:
            same = (f"{m.name!r} twice" if seen[key] == m.name
                    else f"the same method twice ({seen[key]!r} and {m.name!r})")
            raise UserError(f"{what} lists {same}: name each method once", setting=what)
        seen[key] = m.name
    for m in chosen:  # a γ name whose +attn is moot says so (the user asked for it)
        note = m.params.attention_note(name=m.name) if hasattr(m.params, "attention_note") else ""
        if note:
            print(note, file=sys.stderr)
    return chosen


def create_method(name, model, settings=None):
    """The method a name (or a :class:`MethodChoice`) stands for, on ``model``; enter it before use."""
    return parse_method(name).create(model, settings)

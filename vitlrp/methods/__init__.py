"""Every attribution method by name, registered once in the file of its family.

=============  ==========================================================================
``lrp``        AttnLRP + the Gamma rule: the presets, ``gamma:<conv>:<lin>``, ``+attn``
``gradients``  ``input_x_gradient``, ``integrated_gradients`` (Captum), ``smoothgrad`` (Captum)
``cam``        ``gradcam`` (pytorch-grad-cam)
``attention``  ``rollout``, ``gae``
``baselines``  ``random``
=============  ==========================================================================

A registration (:func:`register`) gives a method's name (or, for a family of names such as ``gamma:<c>:<l>``, a
parser), a one-line summary for ``--help``, what it needs (packages; LXT's patched model or the plain one), what
its maps are like (signed or not, specific to the target class or not), and a context manager factory
``open(method, model, options)`` that yields a callable ``(images, target, ids) -> (logits, relevance)``: float32
logits ``[B, C]`` and a float32 pixel map ``[B, H, W]``. ``ids`` are the images' sample indices: methods that draw
random numbers seed them per image, so results do not depend on batching or on how torchrun shards the images.

Adding a method is one file (or one function in a family's file) plus its test; the scripts, ``--help``, the
benchmark and the tests iterate the registry.
"""
import importlib
import textwrap
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..explain import DEFAULT_IMPL
from ..lxtpatch import lxt_active


@dataclass(frozen=True)
class Options:
    """Settings every method may read: the model copy's dtype, the Gamma rule's implementation, the seed, and the
    sampling methods' costs (Integrated Gradients' steps, SmoothGrad's noisy copies, rows per forward)."""

    dtype: torch.dtype = torch.float32
    impl: str = DEFAULT_IMPL
    seed: int = 0
    ig_steps: int = 32
    smoothgrad_samples: int = 32
    rows_per_pass: int = 64


@dataclass(frozen=True)
class Spec:
    """One registry entry (a method, or a family of names when ``parse`` is set)."""

    name: str
    family: str
    summary: str
    open: object  # (method, model, options) -> context manager yielding (images, target, ids) -> (logits, maps)
    packages: tuple = ()  # (import name, pip requirement) pairs
    patched: bool = False  # runs on LXT's patched model (else on the plain model, never inside lxt_patched)
    signed: bool = True  # its maps can be negative (else negative_share says nothing about it)
    class_specific: bool = True  # False: the same map whatever class is asked (its class sensitivity is 0)
    parse: object = None  # name -> params dict, or None when the name is not of this family
    pattern: str = ""  # how a family's names look, for --help and messages
    open_group: object = None  # (methods, model, options) -> context manager yielding
    #                            (images, targets, ids) -> {name: (logits, [maps per target])}: shared work


@dataclass(frozen=True)
class Method:
    """A method as the user named it: its registry entry and the parameters its name carries."""

    name: str
    spec: Spec
    params: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def family(self):
        return self.spec.family


REGISTRY = {}


def register(name, family, summary, *, function=None, opener=None, packages=(), patched=False, signed=True,
             class_specific=True, parse=None, pattern="", open_group=None):
    """Register a method under ``name``: ``function(model, images, target, ids, method, options)`` for a method
    without state, or ``opener(method, model, options)`` (a context manager factory yielding such a callable
    without the model and options). Returns the :class:`Spec`. A name registered twice is an error."""
    if name in REGISTRY:
        raise ValueError(f"method {name!r} is registered twice")
    if (function is None) == (opener is None):
        raise ValueError("register a method with exactly one of function= or opener=")
    if opener is None:
        opener = _opener_of(function)
    spec = Spec(name, family, summary, opener, tuple(packages), patched, signed, class_specific, parse, pattern,
                open_group)
    REGISTRY[name] = spec
    return spec


def unregister(name):
    """Remove a registration (tests register toy methods and remove them again)."""
    REGISTRY.pop(name, None)


def _opener_of(function):
    @contextmanager
    def opener(method, model, options):
        yield lambda images, target, ids: function(model, images, target, ids, method, options)

    return opener


def names(family=None):
    """The registered method names (families by their pattern), in registration order."""
    return [n for n, s in REGISTRY.items() if family is None or s.family == family]


def choices():
    """The registered names in words, for error messages."""
    return ", ".join(s.pattern or n for n, s in REGISTRY.items())


def help_text():
    """The methods part of a script's ``--help``: one line per registered method or family."""
    lines = ["methods (the names METHODS, COMPARE_METHODS and REFERENCE take):"]
    for n, s in REGISTRY.items():
        needs = f" (needs {', '.join(p for _, p in s.packages)})" if s.packages else ""
        lines += textwrap.wrap(f"{s.pattern or n}: {s.summary}{needs}", 116, initial_indent="  ",
                               subsequent_indent="      ")
    return "\n".join(lines)


def check_available(spec):
    """Import the packages ``spec`` needs; a missing or broken package is one UserError line."""
    for module, pin in spec.packages:
        try:
            importlib.import_module(module)
        except Exception as err:  # ImportError, or a package that fails while importing (a missing cv2, ...)
            raise UserError(f"method {spec.name} needs the {pin.split('==')[0]} package, which cannot be imported "
                            f"({type(err).__name__}: {err}); install it with pip install {pin}") from None


def parse_method(name):
    """The :class:`Method` a name stands for (``'balanced'``, ``'gamma:1:0.5'``, ``'gae'`` ...); one UserError line
    naming the choices for an unknown name."""
    if name in REGISTRY and REGISTRY[name].parse is None:
        check_available(REGISTRY[name])  # a missing package is a config error, found before any work
        return Method(name, REGISTRY[name])
    for spec in REGISTRY.values():
        params = spec.parse(name) if spec.parse is not None else None
        if params is not None:
            return Method(name, spec, params)
    raise UserError(f"unknown method {name!r}: use {choices()}")


def parse_methods(names, what):
    """Several method names (``what``: the list's name, for the message); the same method twice is refused, also
    under two names (``balanced`` and ``gamma:1:0.5``)."""
    methods = [parse_method(m) for m in names]
    seen = {}
    for m in methods:
        key = identity(m)
        if key in seen:
            same = (f"{m.name!r} twice" if seen[key] == m.name
                    else f"the same method twice ({seen[key]!r} and {m.name!r})")
            raise UserError(f"{what} lists {same}: name each method once")
        seen[key] = m.name
    return methods


def identity(method):
    """What makes two names the same method: the registry entry and its parameters."""
    return method.spec.name, tuple(sorted((k, str(v)) for k, v in method.params.items()))


def upsample_patches(patch_maps, model):
    """``[B, tokens]`` patch scores (row-major on the patch grid) → ``[B, H, W]`` by bilinear interpolation (each
    patch value sits at its patch centre)."""
    grid = model.image_size // model.patch_size
    maps = patch_maps.float().reshape(-1, 1, grid, grid)
    return torch.nn.functional.interpolate(maps, size=(model.image_size, model.image_size), mode="bilinear",
                                           align_corners=False)[:, 0]


def plain_logits_and_targets(model, images, target):
    """Logits of the plain model (no graph) and the ``[B]`` classes to explain (``None``: the predicted ones)."""
    from ..explain import target_index

    with torch.no_grad():
        logits = model(images)
    return logits, target_index(logits, target).reshape(-1)


class MethodRunner:
    """Context manager computing ``(logits, relevance)`` of one :class:`Method` for batches (opened once)."""

    def __init__(self, method, model, options=None):
        self.method, self.model, self.options = method, model, options or Options()

    def __enter__(self):
        check_available(self.method.spec)
        self._cm = self.method.spec.open(self.method, self.model, self.options)
        self._fn = self._cm.__enter__()
        return self

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)

    def __call__(self, images, target=None, ids=None):
        """``ids``: the images' sample indices (default: their positions), which seed per-image randomness."""
        spec = self.method.spec
        if not spec.patched:
            if lxt_active():
                raise RuntimeError(f"{spec.name} must run on the plain model, not inside lxt_patched()")
            param = next(self.model.parameters())  # a bf16 model needs bf16 inputs (DTYPE=bf16)
            images = images.to(param.device, param.dtype)
        ids = list(range(len(images))) if ids is None else [int(i) for i in ids]
        try:
            logits, maps = self._fn(images, target, ids)
        except (UserError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as err:
            if not spec.packages:
                raise
            # a package's failure is one line for the user, with the package's own words
            raise UserError(f"method {spec.name} failed: {type(err).__name__}: {err}") from err
        return logits.detach().float(), maps.detach().float()


class MethodSet:
    """Context manager running several methods on the same batches, for one or more choices of class.

    ``methods_set(images, targets, ids)`` returns ``{name: (logits, [relevance per target])}``. Methods whose
    family can share work (``Spec.open_group``: every γ-LRP method takes one forward for all γ settings and classes)
    run together; the others one by one (:class:`MethodRunner`). The maps equal separate runs.
    """

    def __init__(self, methods, model, options=None):
        self.methods, self.model, self.options = list(methods), model, options or Options()
        self._stack = None

    def __enter__(self):
        with ExitStack() as stack:
            self._runs = []
            groups = {}
            for m in self.methods:
                if m.spec.open_group is not None:
                    groups.setdefault(m.spec.name, []).append(m)
                else:
                    runner = stack.enter_context(MethodRunner(m, self.model, self.options))
                    self._runs.append(self._one(m.name, runner, m.spec.class_specific))
            for group in groups.values():
                check_available(group[0].spec)
                self._runs.append(stack.enter_context(group[0].spec.open_group(group, self.model, self.options)))
            self._stack = stack.pop_all()  # entered: __exit__ closes them
        return self

    @staticmethod
    def _one(name, runner, class_specific):
        def run(images, targets, ids):
            if not class_specific:  # one map serves every class asked
                logits, relevance = runner(images, targets[0], ids)
                return {name: (logits, [relevance] * len(targets))}
            results = [runner(images, t, ids) for t in targets]
            return {name: (results[0][0], [r[1] for r in results])}
        return run

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)

    def __call__(self, images, targets, ids=None):
        ids = list(range(len(images))) if ids is None else [int(i) for i in ids]
        out = {}
        for run in self._runs:
            out.update(run(images, targets, ids))
        return {m.name: out[m.name] for m in self.methods}  # in the order asked


# the built-in families register themselves on import, in the order --help lists them
from . import lrp  # noqa: E402, F401, I001
from . import gradients  # noqa: E402, F401, I001
from . import cam  # noqa: E402, F401, I001
from . import attention  # noqa: E402, F401, I001
from . import baselines  # noqa: E402, F401, I001

"""γ of the Gamma rule as one type, :class:`GammaSpec`: the Conv2d γ, the Linear γ (a number or a per-block
schedule) and whether γ reaches the attention projections; its presets, names, files, and how a setting is chosen.

The Linear γ may vary with depth (:func:`parse_schedule`): one value per encoder block, given as a list
(``0.5/0.3/0.1/0``) or a family from the first block to the last (``linear:0.5:0``, ``geometric:1:0.01``).
Every Linear inside block *i* (MLP, and attention with ``attention``) gets value *i*; Linears outside the blocks
(the head) get the last block's value. The patch embedding keeps the Conv2d γ.

A setting is named like a method (:attr:`GammaSpec.name`): a preset (``balanced``) or ``gamma:<conv>:<lin>``,
either followed by ``+attn`` for γ on the attention projections too.
"""
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import UserError

PRESETS = {
    "baseline": (0.0, 0.0),
    "conservative": (0.5, 0.1),
    "balanced": (1.0, 0.5),
    "aggressive": (10.0, 1.0),
    "very_aggressive": (100.0, 1.0),
}
ATTENTION_SUFFIX = "+attn"


def check_gamma(name, value):
    """γ must be a finite, non-negative number (``name``: what the caller calls it, the error's setting)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"{name} must be a finite number >= 0, got {value!r}", setting=name.split(" ")[0])
    return float(value)


SCHEDULE_HELP = ("a number, one value per encoder block joined by '/' (e.g. 0.5/0.3/0.1/0), linear:<first>:<last> "
                 "or geometric:<first>:<last> (first and last block; the head gets the last block's value)")


def parse_schedule(spec, name="lin_gamma"):
    """A Linear-γ schedule → ``(form, values)``: ``('const', (g,))``, ``('list', (g0, g1, ...))``,
    ``('linear', (first, last))`` or ``('geometric', (first, last))``; ``spec`` is a number, a list or text."""
    setting = name.split(" ")[0]
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise UserError(f"{name} is an empty list: {SCHEDULE_HELP}", setting=setting)
        return "list", tuple(check_gamma(f"{name} value", v) for v in spec)
    if not isinstance(spec, str):
        return "const", (check_gamma(name, spec),)
    text = spec.strip()
    form, _, rest = text.partition(":")
    try:
        if form in ("linear", "geometric"):
            values = tuple(float(v) for v in rest.split(":"))
            if len(values) != 2:
                raise ValueError
            values = tuple(check_gamma(f"{name} {form} value", v) for v in values)
            if form == "geometric" and min(values) <= 0:
                raise UserError(f"{name} {text!r}: a geometric schedule needs values > 0 (use linear:... for 0)",
                                setting=setting)
            return form, values
        values = tuple(float(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"{name} {text!r} is not a γ schedule: {SCHEDULE_HELP}", setting=setting) from None
    values = tuple(check_gamma(f"{name} value", v) for v in values)
    return ("const", values) if len(values) == 1 else ("list", values)


def schedule_values(spec, num_blocks, name="lin_gamma"):
    """The Linear γ of each of ``num_blocks`` encoder blocks (a list of floats) for a schedule spec."""
    form, v = parse_schedule(spec, name)
    if form == "const":
        return [v[0]] * num_blocks
    if form == "list":
        if len(v) != num_blocks:
            raise UserError(f"{name} lists {len(v)} values but the model has {num_blocks} encoder blocks: give one "
                            "value per block, or use linear:<first>:<last>", setting=name.split(" ")[0])
        return list(v)
    steps = [i / (num_blocks - 1) if num_blocks > 1 else 0.0 for i in range(num_blocks)]
    if form == "linear":
        return [v[0] + (v[1] - v[0]) * t for t in steps]
    return [v[0] * (v[1] / v[0]) ** t for t in steps]


def schedule_text(spec, name="lin_gamma"):
    """The canonical text of a schedule (a number as ``%g``), as used in method names and JSON."""
    form, v = parse_schedule(spec, name)
    if form == "const":
        return f"{v[0]:g}"
    if form == "list":
        return "/".join(f"{g:g}" for g in v)
    return f"{form}:{v[0]:g}:{v[1]:g}"


def lin_gamma_value(spec, name="lin_gamma"):
    """A Linear γ as stored in configs and JSON: a float for a constant, the canonical text for a schedule."""
    form, v = parse_schedule(spec, name)
    return v[0] if form == "const" else schedule_text(spec, name)


@dataclass(frozen=True)
class GammaSpec:
    """One setting of the Gamma rule: ``conv`` (the patch embedding's γ), ``lin`` (the Linear γ: a float, or a
    schedule's canonical text) and ``attention`` (γ on the attention projections too). Values are checked and made
    canonical on construction, so two specs of the same setting are equal."""

    conv: float = 1.0
    lin: object = 0.5
    attention: bool = False

    def __post_init__(self):
        object.__setattr__(self, "conv", check_gamma("conv_gamma", self.conv))
        object.__setattr__(self, "lin", lin_gamma_value(self.lin, "lin_gamma"))
        object.__setattr__(self, "attention", bool(self.attention))

    @property
    def lin_text(self):
        """The Linear γ's canonical text (``0.5``, ``linear:0.5:0``)."""
        return schedule_text(self.lin)

    @property
    def is_schedule(self):
        return not isinstance(self.lin, float)

    @property
    def name(self):
        """The method name of this setting: ``gamma:<conv>:<lin>``, with ``+attn`` when γ reaches the attention."""
        return f"gamma:{self.conv:g}:{self.lin_text}" + (ATTENTION_SUFFIX if self.attention else "")

    def lin_values(self, num_blocks, name="lin_gamma"):
        """The Linear γ of each of ``num_blocks`` encoder blocks."""
        return schedule_values(self.lin, num_blocks, name)

    def with_attention(self, attention=True):
        return replace(self, attention=attention)

    @property
    def attention_changes_nothing(self):
        """``attention`` with every Linear γ 0: the projections then get LRP-0, which is their plain gradient, as
        without ``attention`` (the maps are the same)."""
        return self.attention and not any(parse_schedule(self.lin)[1])

    def attention_note(self, asked="+attn", name=None):
        """The one line saying that ``asked`` (how the user asked for ``attention``) changes nothing in this setting
        (``name``: the user's name of it); '' when it does change the maps."""
        if not self.attention_changes_nothing:
            return ""
        return (f"note: {asked} changes nothing in {name or self.name}: it puts the Linear γ on the attention "
                "projections, but that γ is 0, so they get LRP-0, their plain gradient, as without it (same maps)")

    @classmethod
    def preset(cls, name, attention=False, what="preset"):
        """A preset of :data:`PRESETS` by name."""
        if name not in PRESETS:
            raise UserError(f"unknown {what} {name!r}: choose one of {', '.join(PRESETS)}", setting=what)
        return cls(*PRESETS[name], attention)

    @classmethod
    def from_name(cls, name):
        """The setting a method name stands for (a preset or ``gamma:<conv>:<lin>``, maybe ``+attn``), None for a
        name of another method."""
        base, attention = (name[:-len(ATTENTION_SUFFIX)], True) if name.endswith(ATTENTION_SUFFIX) else (name, False)
        if base in PRESETS:
            return cls(*PRESETS[base], attention)
        if not base.startswith("gamma:"):
            return None
        parts = base.split(":")
        try:
            if len(parts) < 3:
                raise ValueError
            conv, lin = float(parts[1]), ":".join(parts[2:])
        except ValueError:
            raise UserError(f"method {name!r} must look like gamma:<conv>:<lin>, e.g. gamma:1:0.5") from None
        return cls(check_gamma(f"method {name!r} conv gamma", conv), lin_gamma_value(lin, f"method {name!r} lin gamma"),
                   attention)

    @classmethod
    def parse(cls, value):
        """A :class:`GammaSpec` from itself, a method name (``'balanced'``, ``'gamma:1:linear:0.5:0+attn'``), a
        ``(conv, lin)`` pair or a dict with ``conv_gamma`` and ``lin_gamma`` (and ``attention``)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            spec = cls.from_name(value.strip())
            if spec is None:
                raise UserError(f"{value!r} is no γ setting: use a preset ({', '.join(PRESETS)}) or "
                                "gamma:<conv>:<lin>, maybe followed by +attn")
            return spec
        if isinstance(value, dict):
            return cls(value.get("conv_gamma"), value.get("lin_gamma"), value.get("attention", False))
        if isinstance(value, (tuple, list)) and len(value) in (2, 3):
            return cls(*value)
        raise UserError(f"{value!r} is no γ setting: give a GammaSpec, a name, a (conv, lin) pair or a dict")

    @classmethod
    def from_file(cls, spec, what="gamma_file", checkpoint=None, force=False):
        """The setting of ``best_gamma.json`` (written by the γ sweep); ``path#metric`` takes that metric's best cell
        instead of the recommended one (a path that is itself a file keeps its ``#``). ``what``: the caller's name
        of the file (the errors' setting).

        Refused in one line, unless ``force``: a setting that did not pass the sweep's class check, and a file made
        for another checkpoint than ``checkpoint`` (its content hash, or its path for a file that records none)."""
        path, pick = _split_pick(spec)
        doc = _read_gamma_doc(path, what)
        entry, label = _pick_entry(doc, path, pick, what)
        try:
            conv, lin = entry["conv_gamma"], entry["lin_gamma"]
        except KeyError as err:
            raise UserError(f"{what} {path}: its {label} entry has no {err.args[0]} (a best_gamma.json written by "
                            "the sweep gives conv_gamma and lin_gamma)", setting=what) from None
        spec_ = cls(check_gamma(f"{what} conv_gamma", conv), lin_gamma_value(lin, f"{what} lin_gamma"))
        if not force:
            _refuse_unchecked(doc, entry, label, path, what, spec_)
            _refuse_other_model(doc, path, what, checkpoint)
        return spec_

    @classmethod
    def choose(cls, settings, given=()):
        """The setting a run asks for, and which settings chose it (a :class:`GammaChoice`).

        ``settings``: ``gamma_file``, ``preset``, ``conv_gamma``, ``lin_gamma``, ``lin_gamma_schedule`` and
        ``gamma_attention`` (missing ones count as unset), and for the file's checks (:meth:`from_file`)
        ``checkpoint_path`` and ``gamma_file_force``; ``given``: the names set explicitly (not left at their
        default). ``gamma_file`` or ``preset`` set both γ; else ``conv_gamma`` with ``lin_gamma_schedule`` or
        ``lin_gamma``. Two of them setting the same γ at once is refused (one line), never resolved silently.
        """
        get = settings.get
        both = [f"{n} {get(n)}" for n in ("gamma_file", "preset") if get(n)]
        conv = [f"conv_gamma {get('conv_gamma')}"] if "conv_gamma" in given else []
        lin = ([f"lin_gamma {get('lin_gamma')}"] if "lin_gamma" in given else []) + (
            [f"lin_gamma_schedule {get('lin_gamma_schedule')}"] if get("lin_gamma_schedule") else [])
        for clash in (both + conv + lin if both else []), lin:
            if len(clash) > 1:
                raise UserError(f"{' and '.join(clash[:2])} both set the gammas: keep one of them (preset and "
                                "gamma_file set both gammas; lin_gamma_schedule replaces lin_gamma)",
                                setting=("gamma_file", "preset", "conv_gamma", "lin_gamma", "lin_gamma_schedule"))
        attention = bool(get("gamma_attention"))
        if get("gamma_file"):
            spec = cls.from_file(get("gamma_file"), checkpoint=get("checkpoint_path"), force=get("gamma_file_force"))
            return GammaChoice(spec.with_attention(attention), ("gamma_file",), get("gamma_file"))
        if get("preset"):
            return GammaChoice(cls.preset(get("preset"), attention), ("preset",), get("preset"))
        conv = check_gamma("conv_gamma", get("conv_gamma", 1.0))
        if get("lin_gamma_schedule"):
            lin = lin_gamma_value(get("lin_gamma_schedule"), "lin_gamma_schedule")
            return GammaChoice(cls(conv, lin, attention), ("conv_gamma", "lin_gamma_schedule"))
        return GammaChoice(cls(conv, check_gamma("lin_gamma", get("lin_gamma", 0.5)), attention),
                           ("conv_gamma", "lin_gamma"))


def _split_pick(spec):
    """``(path, metric)`` of ``path#metric``; a path that exists as given keeps its ``#``."""
    text = str(spec)
    if "#" not in text or Path(text).exists():
        return text, ""
    path, _, pick = text.rpartition("#")
    return path, pick


def _read_gamma_doc(path, what):
    if Path(path).is_dir():
        inside = " (it holds one: pass that file)" if (Path(path) / "best_gamma.json").is_file() else ""
        raise UserError(f"{what} {path} is a folder, not a best_gamma.json file{inside}", setting=what)
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist", fix="gamma_file", setting=what) from None
    except (OSError, ValueError) as err:
        raise UserError(f"{what} {path} is not a readable best_gamma.json ({err})", setting=what) from None
    if not isinstance(doc, dict):
        raise UserError(f"{what} {path} is not a best_gamma.json (it holds a JSON {type(doc).__name__}, not an "
                        "object)", setting=what)
    return doc


def _pick_entry(doc, path, pick, what):
    """The entry a pick names (``''``: the recommendation) and how to name it in messages."""
    best = doc.get("best") if isinstance(doc.get("best"), dict) else {}
    if pick in ("", "recommended"):
        entry = doc.get("recommended")
        if entry is None and "recommended" in doc:
            why = doc.get("why") if isinstance(doc.get("why"), str) else "see the sweep's console"
            raise UserError(f"{what} {path} holds no recommendation: the sweep made none ({why})", setting=what)
        label = "recommended"
    else:
        entry, label = best.get(pick), f"best {pick!r}"
        if entry is None:
            choices = ", ".join(["recommended", *best])
            raise UserError(f"{what} {path}#{pick}: no setting {pick!r} in it (choose {choices})", setting=what)
    if not isinstance(entry, dict):
        raise UserError(f"{what} {path}: its {label} entry is not an object with conv_gamma and lin_gamma (a "
                        "best_gamma.json written by the sweep has one)", setting=what)
    return entry, label


def _refuse_unchecked(doc, entry, label, path, what, spec):
    """A setting the sweep's class check did not pass is refused (the file says so of each entry it holds)."""
    sanity = entry.get("sanity") if isinstance(entry.get("sanity"), dict) else {}
    passed = entry.get("passes_class_check", sanity.get("passes_class_check"))
    if passed is False:
        word = sanity.get("class_verdict") or entry.get("class_verdict") or "fail"
        raise UserError(f"{what} {path}: its {label} setting {spec.name} did not pass the sweep's class check "
                        f"({word}): its maps may hardly depend on the class; set gamma_file_force to true to use it "
                        "anyway", setting=(what, "gamma_file_force"))


def _refuse_other_model(doc, path, what, checkpoint):
    """A file made for another checkpoint (by content hash, else by path) is refused."""
    if not checkpoint or not str(checkpoint):
        return
    from .identity import file_sha256, short

    made_for, recorded = doc.get("checkpoint_sha256"), doc.get("checkpoint")
    now = file_sha256(checkpoint)
    if isinstance(made_for, str) and now and made_for != now:
        other = f" ({recorded})" if isinstance(recorded, str) else ""
        raise UserError(f"{what} {path} was made for another checkpoint{other}, sha256 {short(made_for)}, not "
                        f"{checkpoint} ({short(now)}): sweep this checkpoint, or set gamma_file_force to true to "
                        "use it anyway", setting=(what, "gamma_file_force"))
    if not isinstance(made_for, str) and isinstance(recorded, str) and recorded \
            and Path(recorded).resolve() != Path(checkpoint).resolve():
        raise UserError(f"{what} {path} was made for the checkpoint {recorded}, not {checkpoint}: sweep this "
                        "checkpoint, or set gamma_file_force to true to use it anyway",
                        setting=(what, "gamma_file_force"))


@dataclass(frozen=True)
class GammaChoice:
    """What :meth:`GammaSpec.choose` chose: the ``spec``, the ``settings`` that chose it and, for a file or a preset,
    its ``value``. ``word`` turns a setting's name into the caller's (a script's constant: ``str.upper``)."""

    spec: GammaSpec
    settings: tuple
    value: str = ""

    def source(self, word=str):
        """Where the γ came from: ``PRESET balanced``, ``GAMMA_FILE best_gamma.json`` or ``CONV_GAMMA, LIN_GAMMA``
        (with ``word=str.upper``)."""
        if self.value:
            return f"{word(self.settings[0])} {self.value}"
        return ", ".join(word(s) for s in self.settings)

    def lin_source(self, word=str):
        """What set the Linear γ, for messages: the Linear γ of a preset or file, else its setting's name."""
        return f"the Linear γ of {self.source(word)}" if self.value else word(self.settings[-1])

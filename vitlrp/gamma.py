"""γ values of the Gamma rule: the presets, the per-block schedule grammar, and which module gets which γ.

The Linear γ may vary with depth (:func:`parse_schedule`): one value per encoder block, given as a list
(``0.5/0.3/0.1/0``) or a family from the first block to the last (``linear:0.5:0``, ``geometric:1:0.01``).
Every Linear inside block *i* (MLP, and attention with ``gamma_attention``) gets value *i*; Linears outside the
blocks (the head) get the last block's value. The patch embedding keeps the Conv2d γ.
"""
import math

from torch import nn

from .errors import UserError

PRESETS = {
    "baseline": (0.0, 0.0),
    "conservative": (0.5, 0.1),
    "balanced": (1.0, 0.5),
    "aggressive": (10.0, 1.0),
    "very_aggressive": (100.0, 1.0),
}
def check_gamma(name, value):
    """γ must be a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


SCHEDULE_HELP = ("a number, one value per encoder block joined by '/' (e.g. 0.5/0.3/0.1/0), linear:<first>:<last> "
                 "or geometric:<first>:<last> (first and last block; the head gets the last block's value)")


def parse_schedule(spec, name="lin_gamma"):
    """A Linear-γ schedule → ``(form, values)``: ``('const', (g,))``, ``('list', (g0, g1, ...))``,
    ``('linear', (first, last))`` or ``('geometric', (first, last))``; ``spec`` is a number, a list or text."""
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise UserError(f"{name} is an empty list: {SCHEDULE_HELP}")
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
                raise UserError(f"{name} {text!r}: a geometric schedule needs values > 0 (use linear:... for 0)")
            return form, values
        values = tuple(float(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"{name} {text!r} is not a γ schedule: {SCHEDULE_HELP}") from None
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
                            "value per block, or use linear:<first>:<last>")
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


def encoder_blocks(model):
    """Names of the encoder blocks (modules with a ``self_attention``), in depth order."""
    return [name for name, m in model.named_modules() if hasattr(m, "self_attention") and name]


def module_gammas(model, conv_gamma, lin_spec):
    """module name → (module, γ) for every Conv2d (``conv_gamma``) and Linear (its block's scheduled γ)."""
    blocks = encoder_blocks(model)
    lin = schedule_values(lin_spec, max(len(blocks), 1))
    rules = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            rules[name] = (module, conv_gamma)
        elif isinstance(module, nn.Linear):
            depth = next((i for i, b in enumerate(blocks) if name.startswith(b + ".")), len(lin) - 1)
            rules[name] = (module, lin[depth])
    return rules

"""AttnLRP (LXT) with zennit's Gamma rule: the presets, ``gamma:<conv>:<lin>`` cells and ``+attn``.

A name is a preset (:data:`vitlrp.gamma.PRESETS`) or ``gamma:<conv>:<lin>`` with ``<lin>`` a number or a per-block
schedule (:data:`vitlrp.gamma.SCHEDULE_HELP`), either optionally followed by ``+attn`` (γ on the attention
projections too). Its parameters are ``conv_gamma``, ``lin_gamma`` (a float, or a schedule's canonical text) and
``attention``; ``balanced`` and ``gamma:1:0.5`` are the same method.
"""
from contextlib import ExitStack, contextmanager

from ..errors import UserError
from ..explain import Explainer
from ..gamma import PRESETS, SCHEDULE_HELP, check_gamma, lin_gamma_value
from . import register

PATTERN = "<preset> | gamma:<conv>:<lin> [+attn]"


def parse(name):
    """``{'conv_gamma', 'lin_gamma', 'attention'}`` of a γ method name, None for a name of another family."""
    base, attention = (name[:-5], True) if name.endswith("+attn") else (name, False)
    if base in PRESETS:
        conv, lin = PRESETS[base]
        return {"conv_gamma": conv, "lin_gamma": lin, "attention": attention}
    if not base.startswith("gamma:"):
        return None
    parts = base.split(":")
    try:
        if len(parts) < 3:
            raise ValueError
        conv, lin = float(parts[1]), ":".join(parts[2:])
    except ValueError:
        raise UserError(f"method {name!r} must look like gamma:<conv>:<lin>, e.g. gamma:1:0.5") from None
    return {"conv_gamma": check_gamma(f"{name} conv gamma", conv),
            "lin_gamma": lin_gamma_value(lin, f"method {name!r} lin gamma"), "attention": attention}


@contextmanager
def open_explainer(method, model, options):
    p = method.params
    with Explainer(model, p["conv_gamma"], p["lin_gamma"], p["attention"], options.dtype, options.impl) as ex:
        yield lambda images, target, ids: ex(images, target)


@contextmanager
def open_group(methods, model, options):
    """Every γ method of a batch from one forward per attention setting (:meth:`Explainer.explain_many`): the rule
    acts only in the backward, so the forward, and the backward down to the patch embedding of every setting with
    the same Linear γ, are shared by all the methods and classes."""
    by_attention = {}
    for m in methods:
        by_attention.setdefault(m.params["attention"], []).append(m)
    with ExitStack() as stack:
        explainers = {a: stack.enter_context(Explainer(model, dtype=options.dtype, impl=options.impl,
                                                       gamma_attention=a)) for a in by_attention}

        def run(images, targets, ids):
            out = {}
            for attention, group in by_attention.items():
                settings = [(m.params["conv_gamma"], m.params["lin_gamma"]) for m in group]
                logits, *maps = explainers[attention].explain_many(images, targets[0], settings, targets[1:])
                for k, m in enumerate(group):
                    out[m.name] = (logits, [per_target[k] for per_target in maps])
            return out

        yield run


register("gamma", "lrp", "AttnLRP with the Gamma rule; presets " + ", ".join(PRESETS) + "; <lin> is " + SCHEDULE_HELP
         + "; +attn puts γ on the attention projections too",
         opener=open_explainer, patched=True, parse=parse, pattern=PATTERN, open_group=open_group)


def is_lrp(method):
    return method.family == "lrp"


def schedules(methods):
    """``(what, Linear-γ spec)`` of the γ methods among ``methods``, to check against the model's depth."""
    return [(f"method {m.name!r}: its Linear γ", m.params["lin_gamma"]) for m in methods if is_lrp(m)]

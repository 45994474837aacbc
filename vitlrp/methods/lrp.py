"""AttnLRP (LXT) with zennit's Gamma rule: the presets, ``gamma:<conv>:<lin>`` cells and ``+attn``, all one
method class, :class:`vitlrp.explainer.Explainer`.

A name is a preset (:data:`vitlrp.gamma.PRESETS`) or ``gamma:<conv>:<lin>`` with ``<lin>`` a number or a per-block
schedule (:data:`vitlrp.gamma.SCHEDULE_HELP`), either optionally followed by ``+attn`` (γ on the attention
projections too). Its parameters are a :class:`~vitlrp.gamma.GammaSpec`; ``balanced`` and ``gamma:1:0.5`` are the
same method.
"""
from ..explainer import Explainer
from ..gamma import PRESETS, SCHEDULE_HELP, GammaSpec
from .registry import register

PATTERN = "<preset> | gamma:<conv>:<lin> [+attn]"

register("gamma", "lrp", "AttnLRP with the Gamma rule; presets " + ", ".join(PRESETS) + "; <lin> is " + SCHEDULE_HELP
         + "; +attn puts γ on the attention projections too", parse=GammaSpec.from_name, pattern=PATTERN)(Explainer)


def schedules(chosen):
    """``(what, Linear-γ spec)`` of the γ methods among ``chosen`` (:class:`~vitlrp.methods.MethodChoice`), to
    check against the model's depth."""
    return [(f"method {m.name!r}: its Linear γ", m.params.lin) for m in chosen if isinstance(m.params, GammaSpec)]

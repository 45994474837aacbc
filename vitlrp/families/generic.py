"""AttnLRP + the Gamma rule for any model family: which module gets which γ, and one map.

A family (``vitlrp.families.timm``, ``vitlrp.families.hf``, ...) says where the rules go; this module attaches
them: the fused Gamma rule (:func:`vitlrp.fastgamma.gamma_rules`) or zennit's ``Gamma`` hooks in LXT's
Input×Gradient convention, as :class:`vitlrp.explain.Explainer` does for torchvision.
"""
from contextlib import ExitStack, contextmanager

import torch

from ..errors import UserError
from ..gamma import check_gamma, schedule_values


def square_size(value, what, family):
    """``value`` (an int or a pair) as one int; a :class:`~vitlrp.errors.UserError` when not square."""
    value = (value, value) if isinstance(value, int) else tuple(value)
    if value[0] != value[1]:
        raise UserError(f"{family} model with a non-square {what} {value}: only square images are supported")
    return value[0]


def family_rule_map(family, model, conv_gamma, lin_gamma, attention):
    """module name → (module, γ): the patch embedding gets ``conv_gamma``; every other module of
    ``family.gamma_modules`` gets its block's value of the ``lin_gamma`` schedule (the last block's when it lies
    outside every block, as the head does)."""
    block_ids = {id(b): i for i, b in enumerate(family.blocks(model))}
    lin = schedule_values(lin_gamma, max(len(block_ids), 1))
    prefixes = [(n + ".", block_ids[id(m)]) for n, m in model.named_modules() if id(m) in block_ids]
    conv = family.patch_embedding(model)
    rules = {}
    for name, module in family.gamma_modules(model, attention).items():
        if module is conv:
            rules[name] = (module, check_gamma("conv_gamma", conv_gamma))
        else:
            depth = next((i for p, i in prefixes if name.startswith(p)), len(lin) - 1)
            rules[name] = (module, lin[depth])
    return rules


@contextmanager
def _rules_attached(rules, impl, model):
    if impl == "fused":
        from ..fastgamma import gamma_rules

        with gamma_rules({m: g for m, g in rules.values()}):
            yield
        return
    from zennit.core import Composite
    from zennit.rules import Gamma

    from ..lxtpatch import lxt_patched  # for LXT's Input×Gradient form of zennit's hooks

    by_gamma = {g: Gamma(g) for _, g in rules.values()}
    composite = Composite(module_map=lambda ctx, name, module: by_gamma[rules[name][1]] if name in rules else None)
    with lxt_patched(), composite.context(model):
        yield


def family_relevance(family, model, x, target, conv_gamma, lin_gamma, attention=False, impl="fused"):
    """``(logits, relevance [B, H, W])`` of AttnLRP with the Gamma rule on ``model`` (eval mode) of ``family``,
    float32 (float64 for a float64 model): ``target`` as in :func:`vitlrp.explain.target_index`; ``lin_gamma`` a
    number or a per-block schedule; ``attention``: γ also on the attention projections (``+attn``); ``impl``:
    ``'fused'`` or ``'zennit'``."""
    from ..explain import IMPLS, input_times_grad, target_index  # lazily: the explainer may import the families

    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if model.training:
        raise ValueError("call model.eval() before explaining (dropout would change the map)")
    param = next(model.parameters())
    x = x.detach().to(param.device, param.dtype).requires_grad_(True)  # a fresh leaf: the caller's x is left alone
    with ExitStack() as stack, torch.enable_grad():
        stack.enter_context(family.lrp_patched(model))
        if attention:
            stack.enter_context(family.attention_as_linear(model))
        rules = family_rule_map(family, model, conv_gamma, lin_gamma, attention)
        stack.enter_context(_rules_attached(rules, impl, model))
        logits = family.logits(model(x))
        (grad,) = torch.autograd.grad(logits.gather(1, target_index(logits, target)).sum(), x)
    return logits.detach(), input_times_grad(x, grad, torch.promote_types(param.dtype, torch.float32))

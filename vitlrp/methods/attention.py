"""Attention maps of a ViT: attention rollout and GAE, for every family that gives its attention layers
(``family.attention_layers``: torchvision's, timm's and Hugging Face's).

- ``rollout`` (Abnar & Zuidema 2020): per block the head-averaged attention plus the identity (the residual), rows
  renormalised, multiplied over the blocks; the class token's row over the patch tokens. Class independent.
- ``gae`` (Chefer et al. 2021, "Generic Attention-model Explainability"): ``R = I``, then per block
  ``R += mean_heads((∇A ⊙ A)⁺) @ R``; the class token's row over the patch tokens.

The attention functions (torchvision's ``need_weights=False``, fused kernels) do not return the probabilities, so
:func:`attention_recorded` recomputes them in a forward hook with the family's ``recompute``. Patch-level maps are
upsampled bilinearly (:func:`vitlrp.protocol.upsample_patches`). A model without a class token (timm's average
pooling) has no row to read: one UserError.
"""
from contextlib import contextmanager

import torch

from ..errors import UserError
from ..families import family_of, forward_logits
from ..protocol import Method, target_index, upsample_patches
from .registry import register


@contextmanager
def attention_recorded(model, with_grad):
    """Yield a list that receives each block's attention probabilities ``[B, heads, N, N]`` in forward order.

    A forward hook recomputes the probabilities from the attention's input (the family's ``attention_layers``);
    the block's output stays bit-identical (the logits do not change). With ``with_grad`` the output recomputed
    from them is spliced into the graph with a zero-valued term (``out + (o - o.detach())``), so that gradients
    reach the recorded probabilities (GAE's ∇A) and equal those of the original computation.
    """
    probs, handles = [], []

    def hook(recompute):
        def record(module, args, output):
            if not with_grad:
                with torch.no_grad():
                    probs.append(recompute(module, args[0])[0])
                return None
            a, o = recompute(module, args[0])
            probs.append(a)
            first = output[0] if isinstance(output, tuple) else output
            spliced = first.detach() + (o - o.detach())
            return (spliced, *output[1:]) if isinstance(output, tuple) else spliced
        return record

    try:
        for module, recompute in family_of(model).attention_layers(model):
            handles.append(module.register_forward_hook(hook(recompute)))
        yield probs
    finally:
        for handle in handles:
            handle.remove()


def _class_row(r, model):
    """The class token's row of ``R`` over the patch tokens: ``[B, patches]``."""
    family = family_of(model)
    if not family.class_token(model):
        raise UserError(f"{type(model).__name__} ({family.name}) has no class token: attention rollout and GAE read "
                        "the class token's row; use another method")
    return r[:, 0, family.prefix_tokens(model):]


@register("rollout", "attention", "attention rollout (Abnar & Zuidema 2020), the same map for every class")
class Rollout(Method):
    """Attention rollout: ``R = Π_blocks rownorm(mean_heads(A) + I)``, the class token's row (target ignored)."""

    signed = False
    class_specific = False

    def compute(self, x, target, ids):
        with torch.no_grad(), attention_recorded(self.model, with_grad=False) as probs:
            logits = forward_logits(self.model, x)
        r = None
        for a in probs:
            a = a.float().mean(1)
            a = a + torch.eye(a.shape[-1], device=a.device)
            a = a / a.sum(-1, keepdim=True)
            r = a if r is None else a @ r
        return logits, upsample_patches(_class_row(r, self.model), self.model)


@register("gae", "attention", "Chefer et al. 2021's generic attention explainability (gradient-weighted attention)")
class GAE(Method):
    """GAE: ``R = I``; per block ``R += mean_heads((∇A ⊙ A)⁺) @ R``; the class token's row."""

    signed = False

    def compute(self, x, target, ids):
        x = x.detach()
        with torch.enable_grad(), attention_recorded(self.model, with_grad=True) as probs:
            logits = forward_logits(self.model, x)
            grads = torch.autograd.grad(logits.gather(1, target_index(logits, target)).sum(), probs)
        n = probs[0].shape[-1]
        r = torch.eye(n, device=x.device).expand(len(x), n, n)
        for a, g in zip(probs, grads):
            cam = (g.float() * a.detach().float()).clamp(min=0).mean(1)
            r = r + cam @ r
        return logits, upsample_patches(_class_row(r, self.model), self.model)

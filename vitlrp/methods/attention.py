"""Attention maps of torchvision's ViT: attention rollout and GAE.

- ``rollout`` (Abnar & Zuidema 2020): per block the head-averaged attention plus the identity (the residual), rows
  renormalised, multiplied over the blocks; the class token's row without itself. Class independent.
- ``gae`` (Chefer et al. 2021, "Generic Attention-model Explainability"): ``R = I``, then per block
  ``R += mean_heads((∇A ⊙ A)⁺) @ R``; the class token's row without itself.

torchvision calls attention with ``need_weights=False``, so :func:`attention_recorded` recomputes the probabilities
in a forward hook. Patch-level maps are upsampled bilinearly (:func:`vitlrp.protocol.upsample_patches`).
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..protocol import Method, target_index, upsample_patches
from .registry import register


def _attention_probs(mha, x):
    """softmax(QKᵀ/√d) per head, ``[B, heads, N, N]``, and the values ``[B, heads, N, d]``, as torchvision computes."""
    b, n, e = x.shape
    h = mha.num_heads
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).view(b, n, 3, h, e // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    return (q @ k.transpose(-1, -2) * (e // h) ** -0.5).softmax(-1), v


def _blocks(model):
    mods = [blk.self_attention for blk in model.encoder.layers]
    if not all(isinstance(m, nn.MultiheadAttention) and m.batch_first and m._qkv_same_embed_dim for m in mods):
        raise ValueError("attention maps need torchvision's batch-first nn.MultiheadAttention in every block")
    return mods


@contextmanager
def attention_recorded(model, with_grad):
    """Yield a list that receives each block's attention probabilities ``[B, heads, N, N]`` in forward order.

    A forward hook recomputes the probabilities from the block's input and ``in_proj_weight``; the block's output
    stays bit-identical (the logits do not change). With ``with_grad`` the recomputed attention is spliced into the
    graph with a zero-valued term (``out + (o - o.detach())``), so that gradients reach the recorded probabilities
    (GAE's ∇A) and equal those of the original computation.
    """
    probs, handles = [], []

    def hook(mha, args, output):
        x = args[0]
        if not with_grad:
            with torch.no_grad():
                probs.append(_attention_probs(mha, x)[0])
            return None
        a, v = _attention_probs(mha, x)
        b, h, n, d = v.shape
        o = mha.out_proj(torch.matmul(a, v).transpose(1, 2).reshape(b, n, h * d))
        probs.append(a)
        return output[0].detach() + (o - o.detach()), *output[1:]

    try:
        for mha in _blocks(model):
            handles.append(mha.register_forward_hook(hook))
        yield probs
    finally:
        for handle in handles:
            handle.remove()


def _class_row(r):
    """The class token's row of ``R`` without itself: ``[B, tokens]``."""
    return r[:, 0, 1:]


@register("rollout", "attention", "attention rollout (Abnar & Zuidema 2020), the same map for every class")
class Rollout(Method):
    """Attention rollout: ``R = Π_blocks rownorm(mean_heads(A) + I)``, the class token's row (target ignored)."""

    signed = False
    class_specific = False

    def compute(self, x, target, ids):
        with torch.no_grad(), attention_recorded(self.model, with_grad=False) as probs:
            logits = self.model(x)
        r = None
        for a in probs:
            a = a.float().mean(1)
            a = a + torch.eye(a.shape[-1], device=a.device)
            a = a / a.sum(-1, keepdim=True)
            r = a if r is None else a @ r
        return logits, upsample_patches(_class_row(r), self.model)


@register("gae", "attention", "Chefer et al. 2021's generic attention explainability (gradient-weighted attention)")
class GAE(Method):
    """GAE: ``R = I``; per block ``R += mean_heads((∇A ⊙ A)⁺) @ R``; the class token's row."""

    signed = False

    def compute(self, x, target, ids):
        x = x.detach()
        with torch.enable_grad(), attention_recorded(self.model, with_grad=True) as probs:
            logits = self.model(x)
            grads = torch.autograd.grad(logits.gather(1, target_index(logits, target)).sum(), probs)
        n = probs[0].shape[-1]
        r = torch.eye(n, device=x.device).expand(len(x), n, n)
        for a, g in zip(probs, grads):
            cam = (g.float() * a.detach().float()).clamp(min=0).mean(1)
            r = r + cam @ r
        return logits, upsample_patches(_class_row(r), self.model)

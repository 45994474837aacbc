"""LXT's AttnLRP patches for torchvision's ViT, active only inside :func:`lxt_patched`, and the attention swap.

LXT (``lxt.efficient.monkey_patch``) rewrites the *classes* ``nn.GELU``, ``nn.LayerNorm`` and
``nn.MultiheadAttention`` for the whole process, and ``monkey_patch_zennit`` rewrites zennit's ``BasicHook``;
neither offers an undo. :func:`lxt_patched` saves the original methods and restores them on exit, so training
code and the plain explainers (Input×Gradient, Grad-CAM, ...) run unpatched in the same process.

torchvision's ``MultiheadAttention`` applies ``in_proj_weight`` and ``out_proj.weight`` through ``F.linear``, so no
module hook sees them; :func:`attention_as_linear` routes them through ``nn.Linear`` modules so that a Gamma rule
can reach them.
"""
from contextlib import contextmanager

import torch.nn.functional as F
from torch import nn

_MISSING = object()
_patch_depth = 0


def _patched_targets():
    from zennit.core import BasicHook

    return [(cls, name) for cls in (nn.GELU, nn.LayerNorm, nn.MultiheadAttention)
            for name in ("forward", "original_forward")] + [(BasicHook, "forward"), (BasicHook, "backward")]


def lxt_active():
    """Whether LXT's patches are in place now (inside :func:`lxt_patched`)."""
    return _patch_depth > 0


@contextmanager
def lxt_patched():
    """LXT's AttnLRP patches for torchvision's ViT (and for zennit's hooks), active only inside the block."""
    global _patch_depth
    if _patch_depth:
        _patch_depth += 1
        try:
            yield
        finally:
            _patch_depth -= 1
        return
    import torchvision.models.vision_transformer as tv_vit
    from lxt.efficient import monkey_patch, monkey_patch_zennit  # slow import (transformers): only when explaining

    saved = [(cls, name, cls.__dict__.get(name, _MISSING)) for cls, name in _patched_targets()]
    _patch_depth = 1
    try:
        monkey_patch(tv_vit)
        monkey_patch_zennit()
        yield
    finally:
        for cls, name, value in saved:
            if value is _MISSING:
                if name in cls.__dict__:
                    delattr(cls, name)
            else:
                setattr(cls, name, value)
        _patch_depth = 0


class LinearAttention(nn.Module):
    """torchvision's self-attention with its q/k/v and output projections as ``nn.Linear`` modules.

    The forward equals ``nn.MultiheadAttention`` (batch-first self-attention without masks); the weights are
    views of the original parameters. Query and key are detached as in LXT's CP-LRP patch.
    """

    def __init__(self, mha):
        super().__init__()
        e = mha.embed_dim
        self.num_heads = mha.num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(e, e, bias=mha.in_proj_bias is not None) for _ in range(3))
        for i, proj in enumerate((self.q_proj, self.k_proj, self.v_proj)):
            proj.weight = nn.Parameter(mha.in_proj_weight.detach()[i * e:(i + 1) * e], requires_grad=False)
            if mha.in_proj_bias is not None:
                proj.bias = nn.Parameter(mha.in_proj_bias.detach()[i * e:(i + 1) * e], requires_grad=False)
        self.out_proj = mha.out_proj

    def forward(self, query, key, value, need_weights=False, **kwargs):
        b, n, e = query.shape
        h = self.num_heads
        q = self.q_proj(query.detach()).view(b, n, h, e // h).transpose(1, 2)
        k = self.k_proj(key.detach()).view(b, n, h, e // h).transpose(1, 2)
        v = self.v_proj(value).view(b, n, h, e // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, e)
        return self.out_proj(out), None


@contextmanager
def attention_as_linear(model):
    """Swap every encoder block's ``self_attention`` for :class:`LinearAttention`; restore on exit."""
    blocks = [blk for blk in model.modules() if isinstance(getattr(blk, "self_attention", None),
                                                            nn.MultiheadAttention)]
    originals = [blk.self_attention for blk in blocks]
    try:
        for blk, mha in zip(blocks, originals):
            blk.self_attention = LinearAttention(mha)
        yield
    finally:
        for blk, mha in zip(blocks, originals):
            blk.self_attention = mha



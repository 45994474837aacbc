"""torchvision's ``VisionTransformer``: LXT's AttnLRP patches (active only inside :meth:`TorchvisionViT.lrp_patched`),
the attention swap, and what the explainer reads off the model.

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
from torchvision.models.vision_transformer import VisionTransformer

from .registry import register_family

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


@register_family
class TorchvisionViT:
    """torchvision's ``VisionTransformer`` (``vit_b_16`` ... and this project's ``vit_tiny``).

    γ reaches the patch embedding ``conv_proj``, the two MLP linears of each block and ``heads.head``: the attention
    applies its projections with ``F.linear``, so they are in :meth:`gamma_modules` only with ``attention`` (inside
    :meth:`attention_as_linear`, where they are modules that are called).
    """

    name = "torchvision"

    def matches(self, model):
        return isinstance(model, VisionTransformer)

    def lrp_patched(self, model):
        return lxt_patched()

    def lrp_active(self):
        return lxt_active()

    def attention_as_linear(self, model):
        return attention_as_linear(model)

    def blocks(self, model):
        return list(model.encoder.layers)

    def gamma_modules(self, model, attention):
        projections = ("q_proj", "k_proj", "v_proj", "out_proj")
        out = {}
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d) or (isinstance(module, nn.Linear) and (
                    attention or name.rsplit(".", 1)[-1] not in projections)):
                out[name] = module
        return out

    def patch_embedding(self, model):
        return model.conv_proj

    def image_size(self, model):
        return int(model.image_size)

    def patch_size(self, model):
        return int(model.patch_size)

    def num_classes(self, model):
        return int(model.heads[-1].out_features)

    def logits(self, output):
        return output

"""torchvision's ``VisionTransformer``: LXT's AttnLRP patches (active only inside :meth:`TorchvisionViT.lrp_patched`),
the attention swap, and what the explainer reads off the model.

LXT (``lxt.efficient.monkey_patch``) rewrites the *classes* ``nn.GELU``, ``nn.LayerNorm`` and
``nn.MultiheadAttention`` for the whole process, and ``monkey_patch_zennit`` rewrites zennit's ``BasicHook``;
neither offers an undo. :func:`classes_patched` (the family's ``lrp_patched``) saves the original methods and
restores them on exit, so training code and the plain explainers (Input×Gradient, Grad-CAM, ...) run unpatched in
the same process; zennit's patch is every family's (:data:`vitlrp.families.attnlrp.ZENNIT`, entered by the
Explainer for ``impl='zennit'``), and :func:`lxt_patched` applies both, as LXT's own recipe does.

torchvision's ``MultiheadAttention`` applies ``in_proj_weight`` and ``out_proj.weight`` through ``F.linear``, so no
module hook sees them; :func:`attention_as_linear` routes them through ``nn.Linear`` modules so that a Gamma rule
can reach them.
"""
from contextlib import contextmanager

import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from .attnlrp import ZENNIT, ClassPatch
from .registry import partition_steps, register_family


def _class_targets():
    return [(cls, name) for cls in (nn.GELU, nn.LayerNorm, nn.MultiheadAttention)
            for name in ("forward", "original_forward")]


def _patch_classes():
    import torchvision.models.vision_transformer as tv_vit
    from lxt.efficient import monkey_patch  # slow import (transformers): only when explaining

    monkey_patch(tv_vit)


CLASSES = ClassPatch(_class_targets, _patch_classes)  # LXT's rules on torchvision's ViT classes


def lxt_active():
    """Whether LXT's class patches for torchvision's ViT are in place now."""
    return CLASSES.active


def classes_patched():
    """LXT's AttnLRP class patches for torchvision's ViT, active only inside the block (the family's
    ``lrp_patched``)."""
    return CLASSES.applied()


@contextmanager
def lxt_patched():
    """Both of LXT's patches, as LXT's own recipe applies them: torchvision's classes and zennit's hooks in LXT's
    Input×Gradient convention (:data:`vitlrp.families.attnlrp.ZENNIT`), active only inside the block."""
    with CLASSES.applied(), ZENNIT.applied():
        yield


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
        return classes_patched()

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

    def step_parameters(self, model):
        """The sanity checks' randomization steps; the final LayerNorm goes with the head (it reads the last block's
        output, as the head does)."""
        embedding = [model.conv_proj, model.class_token, model.encoder.pos_embedding]
        return partition_steps(model, self.blocks(model), embedding, [model.heads, model.encoder.ln])

    def prefix_tokens(self, model):
        """Tokens before the patch grid: the class token."""
        return 1

    def class_token(self, model):
        return True

    def gradcam_layer(self, model):
        """The last block's first LayerNorm: the tokens entering the last attention."""
        return model.encoder.layers[-1].ln_1

    def attention_layers(self, model):
        """``[(module, recompute)]`` per block: ``recompute(module, x)`` gives the attention probabilities
        ``[B, heads, N, N]`` and the module's output computed from them (rollout, GAE)."""
        mods = [blk.self_attention for blk in model.encoder.layers]
        if not all(isinstance(m, nn.MultiheadAttention) and m.batch_first and m._qkv_same_embed_dim for m in mods):
            raise ValueError("attention maps need torchvision's batch-first nn.MultiheadAttention in every block")
        return [(m, _attention) for m in mods]


def _attention(mha, x):
    """softmax(QKᵀ/√d) per head and the attention's output from it, as torchvision computes them."""
    b, n, e = x.shape
    h = mha.num_heads
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).view(b, n, 3, h, e // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = (q @ k.transpose(-1, -2) * (e // h) ** -0.5).softmax(-1)
    return a, mha.out_proj((a @ v).transpose(1, 2).reshape(b, n, e))

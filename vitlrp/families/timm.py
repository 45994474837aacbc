"""The timm family: any ``timm.models.vision_transformer.VisionTransformer`` (vit_*, deit_*, deit3_*, register
tokens), with the class token or average pooling, LayerScale, qk-norm, ``no_embed_class``, fused or unfused
attention, and the distilled DeiT's second head.

Recipe (:mod:`vitlrp.families.attnlrp`, LXT's torchvision recipe rule for rule): every ``nn.LayerNorm`` (timm's
``LayerNorm`` subclass included: norm1/norm2, the final ``norm`` or ``fc_norm``, qk-norm, pre-norm) gets the
identity rule, as does each MLP's activation; the query and key are detached where they leave the fused ``qkv``
projection (the inputs of ``q_norm``/``k_norm``, which timm always calls, as ``nn.Identity`` without qk-norm).
timm calls ``qkv`` and ``proj`` as ``nn.Linear`` modules: the Gamma rule goes on them only with ``attention=True``;
on ``qkv`` it then acts on the value rows alone, since the query and key rows receive no relevance.

timm is never imported here: a model of this family exists only once the caller has imported it.
"""
import sys
from contextlib import nullcontext

from torch import nn

from .attnlrp import instance_rules, patched_models
from .registry import other_norms, partition_steps, refuse_first, register_family, square_size

POOLS = ("token", "avg")


def _vit():
    return sys.modules.get("timm.models.vision_transformer")


def _problems(model):
    """What the recipe does not cover, first found first (lazily)."""
    from timm.layers import Attention, Mlp, PatchEmbed
    from timm.models.vision_transformer import Block, ResPostBlock

    if type(model.patch_embed) is not PatchEmbed:
        yield f"the patch embedding is a {type(model.patch_embed).__name__} (supported: PatchEmbed)"
    if model.global_pool not in POOLS or model.attn_pool is not None:
        yield f"global_pool={model.global_pool!r} (supported: {', '.join(POOLS)})"
    for i, blk in enumerate(model.blocks):
        attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
        if type(blk) not in (Block, ResPostBlock):
            yield f"block {i} is a {type(blk).__name__} (supported: Block, ResPostBlock)"
        if type(attn) is not Attention:
            yield f"block {i}'s attention is a {type(attn).__name__} (supported: timm's Attention)"
        elif attn.gate is not None:
            yield f"block {i}'s attention is gated"
        if type(mlp) is not Mlp or not isinstance(mlp.fc1, nn.Linear):
            yield f"block {i}'s MLP is a {type(mlp).__name__} (supported: timm's Mlp; gated MLPs are not)"
    yield from other_norms(model)


def check_supported(model):
    """A :class:`~vitlrp.errors.UserError` naming the first part the recipe does not cover."""
    refuse_first(_problems(model), "timm", model)


def _attention(attn, x):
    """timm's attention probabilities ``[B, heads, N, N]`` and the module's output computed from them."""
    b, n, _ = x.shape
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    a = (attn.q_norm(q) * attn.scale @ attn.k_norm(k).transpose(-2, -1)).softmax(-1)
    return a, attn.proj(attn.norm((a @ v).transpose(1, 2).reshape(b, n, attn.attn_dim)))


@register_family
class TimmViT:
    """timm's ``VisionTransformer`` (see the module docstring)."""

    name = "timm"

    def matches(self, model):
        """Whether ``model`` is a timm ``VisionTransformer`` (or a subclass such as the distilled DeiT)."""
        vit = _vit()
        return vit is not None and isinstance(model, vit.VisionTransformer)

    def lrp_patched(self, model):
        """AttnLRP's rules on this model inside the block (see the module docstring); restored on exit."""
        check_supported(model)
        return instance_rules(
            model,
            layer_norms=[m for m in model.modules() if isinstance(m, nn.LayerNorm)],
            activations=[blk.mlp.act for blk in model.blocks],
            query_key_inputs=[m for blk in model.blocks for m in (blk.attn.q_norm, blk.attn.k_norm)])

    def lrp_active(self):
        return any(self.matches(m) for m in patched_models())

    def attention_as_linear(self, model):
        """A no-op: timm calls the attention's ``qkv`` and ``proj`` as ``nn.Linear`` modules already."""
        return nullcontext()

    def blocks(self, model):
        return list(model.blocks)

    def gamma_modules(self, model, attention):
        """name → module for the Gamma rule: the patch embedding, the MLP linears, the head(s); ``qkv`` and ``proj``
        only with ``attention``."""
        parts = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2") if attention else ("mlp.fc1", "mlp.fc2")
        chosen = {id(self.patch_embedding(model))}
        chosen.update(id(blk.get_submodule(p)) for blk in model.blocks for p in parts)
        chosen.update(id(m) for m in model.children() if isinstance(m, nn.Linear))  # head, and head_dist (DeiT)
        return {n: m for n, m in model.named_modules() if id(m) in chosen}

    def patch_embedding(self, model):
        return model.patch_embed.proj

    def image_size(self, model):
        return square_size(model.patch_embed.img_size, "image size", "timm")

    def patch_size(self, model):
        return square_size(model.patch_embed.patch_size, "patch size", "timm")

    def num_classes(self, model):
        return model.num_classes

    def logits(self, output):
        return output

    def step_parameters(self, model):
        """The sanity checks' randomization steps: the tokens, the position embedding and a pre-norm go with the
        embedding; the final norm (or ``fc_norm``) with the head(s)."""
        embedding = [model.patch_embed, model.cls_token, model.reg_token, getattr(model, "dist_token", None),
                     model.pos_embed, model.norm_pre]
        head = [m for m in model.children() if isinstance(m, nn.Linear)] + [model.norm, model.fc_norm]
        return partition_steps(model, self.blocks(model), embedding, head)

    def prefix_tokens(self, model):
        """Tokens before the patch grid: the class token, registers, DeiT's distillation token."""
        return int(model.num_prefix_tokens)

    def class_token(self, model):
        return model.cls_token is not None

    def gradcam_layer(self, model):
        return model.blocks[-1].norm1

    def attention_layers(self, model):
        check_supported(model)
        return [(blk.attn, _attention) for blk in model.blocks]

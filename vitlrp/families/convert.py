"""A torchvision ``VisionTransformer``'s weights in the equivalent timm ``VisionTransformer`` and Hugging Face
``ViTForImageClassification``: the same function of the image (same logits up to rounding).

What maps where: the patch conv; the class token; the position embedding (class token's row first in all three);
per block the two LayerNorms, the attention's packed ``in_proj`` (q, k, v rows in that order: timm's fused
``qkv`` as is, Hugging Face's ``query``/``key``/``value`` split), its output projection and the two MLP linears;
the final LayerNorm; the head. LayerNorm eps is torchvision's (1e-6), the GELU the exact (erf) one in all three
(timm's ``nn.GELU``, Hugging Face's ``hidden_act='gelu'``). Dropout is 0 (torchvision's default).
"""
from functools import partial

import torch
from torch import nn

from ..errors import UserError


def torchvision_spec(tv):
    """The architecture of a torchvision ViT as a dict (raises for parts without an equivalent)."""
    block = tv.encoder.layers[0]
    if len(tv.heads) != 1:
        raise UserError("torchvision ViT with representation_size (a pre-logits layer): no timm/HF equivalent here")
    return dict(image_size=tv.image_size, patch_size=tv.patch_size, hidden_dim=tv.hidden_dim,
                mlp_dim=block.mlp[0].out_features, num_layers=len(tv.encoder.layers),
                num_heads=block.self_attention.num_heads, num_classes=tv.num_classes, eps=block.ln_1.eps)


def _torchvision_parts(tv):
    """(name → tensor of the embedding and head, [per block name → tensor]) with neutral names."""
    top = {"conv.weight": tv.conv_proj.weight, "conv.bias": tv.conv_proj.bias, "cls": tv.class_token,
           "pos": tv.encoder.pos_embedding, "norm.weight": tv.encoder.ln.weight, "norm.bias": tv.encoder.ln.bias,
           "head.weight": tv.heads.head.weight, "head.bias": tv.heads.head.bias}
    layers = []
    for blk in tv.encoder.layers:
        attn = blk.self_attention
        layers.append({"ln1.weight": blk.ln_1.weight, "ln1.bias": blk.ln_1.bias,
                       "qkv.weight": attn.in_proj_weight, "qkv.bias": attn.in_proj_bias,
                       "proj.weight": attn.out_proj.weight, "proj.bias": attn.out_proj.bias,
                       "ln2.weight": blk.ln_2.weight, "ln2.bias": blk.ln_2.bias,
                       "fc1.weight": blk.mlp[0].weight, "fc1.bias": blk.mlp[0].bias,
                       "fc2.weight": blk.mlp[3].weight, "fc2.bias": blk.mlp[3].bias})
    return top, layers


def _load(target, state, tv):
    param = next(tv.parameters())
    target.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return target.to(param.device, param.dtype).eval()


def timm_from_torchvision(tv):
    """The timm ``VisionTransformer`` (class token, token pooling) computing the same function as ``tv``."""
    from timm.layers import LayerNorm
    from timm.models.vision_transformer import VisionTransformer

    spec = torchvision_spec(tv)
    if spec["mlp_dim"] % spec["hidden_dim"]:
        raise UserError(f"MLP width {spec['mlp_dim']} is not a multiple of {spec['hidden_dim']}: no timm equivalent")
    model = VisionTransformer(
        img_size=spec["image_size"], patch_size=spec["patch_size"], num_classes=spec["num_classes"],
        embed_dim=spec["hidden_dim"], depth=spec["num_layers"], num_heads=spec["num_heads"],
        mlp_ratio=spec["mlp_dim"] / spec["hidden_dim"], qkv_bias=True, global_pool="token", class_token=True,
        norm_layer=partial(LayerNorm, eps=spec["eps"]), act_layer=nn.GELU)
    top, layers = _torchvision_parts(tv)
    state = {"patch_embed.proj.weight": top["conv.weight"], "patch_embed.proj.bias": top["conv.bias"],
             "cls_token": top["cls"], "pos_embed": top["pos"], "norm.weight": top["norm.weight"],
             "norm.bias": top["norm.bias"], "head.weight": top["head.weight"], "head.bias": top["head.bias"]}
    names = {"ln1": "norm1", "qkv": "attn.qkv", "proj": "attn.proj", "ln2": "norm2", "fc1": "mlp.fc1",
             "fc2": "mlp.fc2"}
    for i, layer in enumerate(layers):
        for key, value in layer.items():
            part, kind = key.split(".")
            state[f"blocks.{i}.{names[part]}.{kind}"] = value
    return _load(model, state, tv)


def hf_from_torchvision(tv):
    """The Hugging Face ``ViTForImageClassification`` computing the same function as ``tv``."""
    from transformers import ViTConfig, ViTForImageClassification

    spec = torchvision_spec(tv)
    config = ViTConfig(hidden_size=spec["hidden_dim"], num_hidden_layers=spec["num_layers"],
                       num_attention_heads=spec["num_heads"], intermediate_size=spec["mlp_dim"], hidden_act="gelu",
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=spec["eps"],
                       image_size=spec["image_size"], patch_size=spec["patch_size"], num_channels=3, qkv_bias=True,
                       num_labels=spec["num_classes"])
    model = ViTForImageClassification(config)
    top, layers = _torchvision_parts(tv)
    emb = "vit.embeddings."
    state = {emb + "patch_embeddings.projection.weight": top["conv.weight"],
             emb + "patch_embeddings.projection.bias": top["conv.bias"], emb + "cls_token": top["cls"],
             emb + "position_embeddings": top["pos"], "vit.layernorm.weight": top["norm.weight"],
             "vit.layernorm.bias": top["norm.bias"], "classifier.weight": top["head.weight"],
             "classifier.bias": top["head.bias"]}
    names = {"ln1": "layernorm_before", "proj": "attention.output.dense", "ln2": "layernorm_after",
             "fc1": "intermediate.dense", "fc2": "output.dense"}
    for i, layer in enumerate(layers):
        prefix = f"vit.encoder.layer.{i}."
        for key, value in layer.items():
            part, kind = key.split(".")
            if part == "qkv":
                for proj, chunk in zip(("query", "key", "value"), torch.chunk(value, 3, dim=0)):
                    state[f"{prefix}attention.attention.{proj}.{kind}"] = chunk
            else:
                state[f"{prefix}{names[part]}.{kind}"] = value
    return _load(model, state, tv)

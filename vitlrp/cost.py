"""What γ-LRP costs: the matrix products of a ViT's forward, and the FLOP ceiling of the fused Gamma rule
(:mod:`vitlrp.gammarule`) against Input×Gradient."""
import torch
from torch import nn

from .families import family_of

# the backward of the attention's own products (QKᵀ, AV): fused attention kernels recompute QKᵀ and form dP, dV,
# dQ and dK, i.e. 5 products for the forward's 2, whichever input gradients are needed
ATTENTION_BACKWARD = (5, 2)


def matrix_products(model, image_size=None):
    """The matrix products of one image's forward through a torchvision ViT: ``[(name, macs, kind)]``.

    ``kind`` is ``'layer'`` (a Linear or the patch conv, including the attention's value and output projections),
    ``'query_key'`` (the query and key projections, named ``<attention>.q_proj`` / ``.k_proj`` as when the
    attention is swapped for ``nn.Linear`` modules) or ``'attention'`` (QKᵀ and AV together). Shapes come from one
    forward of a blank image, so the class token, the head's single row and the image size are counted as run.
    """
    if family_of(model).name != "torchvision":  # the count below knows nn.MultiheadAttention's products only
        raise ValueError(f"the cost model counts torchvision's ViT only, not a {family_of(model).name} model")
    products, hooks = [], []

    def layer(name):
        def hook(module, args):
            x = args[0]
            if isinstance(module, nn.Conv2d):
                h, w = (s // k for s, k in zip(x.shape[-2:], module.kernel_size))
                macs = h * w * module.weight[0].numel() * module.out_channels
            else:
                macs = x.numel() // x.shape[0] * module.out_features
            products.append((name, macs, "layer"))
        return hook

    def attention(name):
        def hook(module, args):
            q = args[0]
            e = module.embed_dim
            tokens = q.numel() // q.shape[0 if module.batch_first else 1] // e
            for part, kind in (("q_proj", "query_key"), ("k_proj", "query_key"), ("v_proj", "layer"),
                               ("out_proj", "layer")):
                products.append((f"{name}.{part}", tokens * e * e, kind))
            products.append((f"{name}.attention", 2 * tokens * tokens * e, "attention"))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            hooks.append(module.register_forward_pre_hook(attention(name)))
        elif isinstance(module, (nn.Linear, nn.Conv2d)) and not name.endswith("self_attention.out_proj"):
            hooks.append(module.register_forward_pre_hook(layer(name)))
    param = next(model.parameters())
    size = image_size or family_of(model).image_size(model)
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
    return products


def flop_ceiling(model, gamma_layers, image_size=None):
    """The matrix-product FLOPs per image of Input×Gradient and of exact γ-LRP with the fused rule, and their ratio:
    the share of Input×Gradient's throughput that exact γ-LRP can reach at best on this model.

    Input×Gradient: the forward, then each layer's input gradient (1 product; weight gradients are not computed
    when only the input's gradient is asked for). γ-LRP (AttnLRP with CP-LRP): the forward, then 1 product per
    layer without γ and 3 per layer in ``gamma_layers`` (``|x||W|ᵀ``, ``SW``, ``D|W|``; give only layers with
    γ > 0), none for the query and key projections (no relevance flows there). The attention's own products cost
    the same in both (:data:`ATTENTION_BACKWARD`). FLOPs are 2 per multiply-accumulate.
    """
    gamma_layers = set(gamma_layers)
    forward = ixg = lrp = attention = 0
    for name, macs, role in matrix_products(model, image_size):
        forward += macs
        if role == "attention":
            backward = macs * ATTENTION_BACKWARD[0] // ATTENTION_BACKWARD[1]
            attention += macs + backward
            ixg, lrp = ixg + backward, lrp + backward
        else:
            ixg += macs
            lrp += 0 if role == "query_key" else 3 * macs if name in gamma_layers else macs
    ixg, lrp = forward + ixg, forward + lrp
    return {"input_x_gradient_flops": 2 * ixg, "fused_gamma_lrp_flops": 2 * lrp, "forward_flops": 2 * forward,
            "attention_flops": 2 * attention, "gamma_layers": len(gamma_layers), "ratio": ixg / lrp}

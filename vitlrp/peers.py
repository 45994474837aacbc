"""The field's standard ViT explainers beside AttnLRP: Grad-CAM, rollout, GAE, Integrated Gradients, SmoothGrad.

Every method takes a batch with one target class per row and returns ``(logits, relevance)`` like
:class:`vitlrp.explain.Explainer`: float32 logits ``[B, C]`` and a float32 pixel map ``[B, H, W]``. They run on the
plain torchvision model (never inside :func:`vitlrp.explain.lxt_patched`) on whatever device the model is on.

- ``gradcam``: pytorch-grad-cam's ``GradCAM`` on the last block's ``ln_1`` output (the tokens entering the last
  attention), class token dropped and the patch tokens laid out on their grid; the package computes the channel
  weights (token-averaged gradients) and the weighted sum; we keep the ReLU'd map's scale (no per-image min-max
  scaling) and upsample it ourselves.
- ``rollout``: attention rollout (Abnar & Zuidema 2020): per block the head-averaged attention plus the identity
  (the residual), rows renormalised, multiplied over the blocks; the class token's row without itself. Class
  independent (the target is ignored).
- ``gae``: Chefer et al. 2021, "Generic Attention-model Explainability": ``R = I``, then per block
  ``R += mean_heads((∇A ⊙ A)⁺) @ R``; the class token's row without itself.
- ``integrated_gradients``: Captum's IntegratedGradients from an all-zero baseline (after normalisation: the dataset's
  mean colour), :data:`IG_STEPS` Gauss-Legendre steps, summed over colour channels.
- ``smoothgrad``: Captum's NoiseTunnel over Saliency (``|∇|``), :data:`SMOOTHGRAD_SAMPLES` noisy copies with
  σ = :data:`SMOOTHGRAD_STDEV`, summed over colour channels; seeded, reproducible.

Patch-level maps (gradcam, rollout, gae) are upsampled to pixels with bilinear interpolation
(``F.interpolate(mode='bilinear', align_corners=False)``: each patch value sits at its patch centre).
"""
import importlib
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from . import explain
from .errors import UserError
from .preprocess import IMAGENET_STD

PEERS = ("gradcam", "rollout", "gae", "integrated_gradients", "smoothgrad")
PACKAGES = {"gradcam": ("pytorch_grad_cam", "grad-cam==1.5.7"),
            "integrated_gradients": ("captum.attr", "captum==0.9.0"), "smoothgrad": ("captum.attr", "captum==0.9.0")}
IG_STEPS = 32  # Integrated Gradients: points on the path from the baseline (Gauss-Legendre rule)
SMOOTHGRAD_SAMPLES = 32  # SmoothGrad: noisy copies per image
# σ of SmoothGrad's noise in normalised input units: 15% of a pixel's [0, 1] range (Smilkov et al. suggest 10-20%),
# which ImageNet normalisation stretches to 1/std ≈ 4.4
SMOOTHGRAD_STDEV = 0.15 / (sum(IMAGENET_STD) / len(IMAGENET_STD))
ROWS_PER_PASS = 64  # IG and SmoothGrad: at most about this many images in one forward + backward (bounded memory)


def check_available(name):
    """Import the package ``name`` needs; a missing or broken package is one UserError line."""
    if name not in PACKAGES:
        return
    module, pin = PACKAGES[name]
    try:
        importlib.import_module(module)
    except Exception as err:  # ImportError, or a package that fails while importing (a missing cv2, ...)
        raise UserError(f"method {name} needs the {pin.split('==')[0]} package, which cannot be imported "
                        f"({type(err).__name__}: {err}); install it with pip install {pin}") from None


def explain_batch(name, model, images, target, generator=None):
    """``(logits, relevance)`` of peer method ``name`` for ``images`` (on the model's device and dtype).

    ``target``: one class per row, one class for all rows, or ``None`` (the predicted class). ``generator`` seeds
    SmoothGrad's noise (a CPU ``torch.Generator``).
    """
    if name not in PEERS:
        raise ValueError(f"unknown peer method {name!r}; choose from {', '.join(PEERS)}")
    if explain.lxt_active():
        raise RuntimeError(f"{name} must run on the plain model, not inside lxt_patched()")
    check_available(name)
    model.eval()
    try:
        if name == "gradcam":
            logits, maps = gradcam(model, images, target)
        elif name in ("rollout", "gae"):
            logits, maps = (rollout if name == "rollout" else gae)(model, images, target)
        elif name == "integrated_gradients":
            logits, maps = integrated_gradients(model, images, target)
        else:
            logits, maps = smoothgrad(model, images, target, generator)
    except (UserError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as err:  # a package's failure is one line for the user, with the package's own words
        raise UserError(f"method {name} failed: {type(err).__name__}: {err}") from err
    return logits.detach().float(), maps.detach().float()


def upsample(patch_maps, model):
    """``[B, tokens]`` patch scores (row-major on the patch grid) → ``[B, H, W]`` by bilinear interpolation."""
    grid = model.image_size // model.patch_size
    maps = patch_maps.float().reshape(-1, 1, grid, grid)
    return F.interpolate(maps, size=(model.image_size, model.image_size), mode="bilinear",
                         align_corners=False)[:, 0]


def _targets(model, x, target):
    """Logits (no graph) and the ``[B]`` target classes."""
    with torch.no_grad():
        logits = model(x)
    return logits, explain._target_index(logits, target).reshape(-1)


# --- Grad-CAM ------------------------------------------------------------------------------------------------------


def gradcam(model, images, target):
    """Grad-CAM on ``encoder.layers[-1].ln_1`` with pytorch-grad-cam's GradCAM (weights and weighted sum)."""
    from pytorch_grad_cam import GradCAM

    grid = model.image_size // model.patch_size

    def tokens_to_grid(t):  # [B, 1 + grid², D] → [B, D, grid, grid], the class token dropped
        return t[:, 1:, :].reshape(t.shape[0], grid, grid, t.shape[2]).permute(0, 3, 1, 2)

    layer = model.encoder.layers[-1].ln_1
    cam = GradCAM(model, [layer], reshape_transform=tokens_to_grid)  # hooks on ln_1 until release()
    try:
        # a fresh leaf that requires grad: the backward passes ln_1 (whose tensor hook stores the gradient)
        # without touching the parameters' .grad
        x = images.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = cam.activations_and_grads(x)
            tgt = explain._target_index(logits, target)
            torch.autograd.grad(logits.gather(1, tgt).sum(), x)
        acts = cam.activations_and_grads.activations[0].float().numpy()
        grads = cam.activations_and_grads.gradients[0].float().numpy()
        weighted = cam.get_cam_image(x, layer, None, acts, grads)  # [B, grid, grid]: Σ_c mean_tokens(∂y/∂A_c)·A_c
    finally:
        cam.activations_and_grads.release()
    patch = torch.from_numpy(weighted).to(images.device).clamp(min=0)
    return logits, upsample(patch.flatten(1), model)


# --- attention maps ------------------------------------------------------------------------------------------------


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

    torchvision calls attention with ``need_weights=False``; a forward hook recomputes the probabilities from the
    block's input and ``in_proj_weight``. The block's output stays bit-identical (the logits do not change). With
    ``with_grad`` the recomputed attention is spliced into the graph with a zero-valued term
    (``out + (o - o.detach())``), so that gradients reach the recorded probabilities (GAE's ∇A) and equal those of
    the original computation.
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


def rollout(model, images, target=None):
    """Attention rollout: ``R = Π_blocks rownorm(mean_heads(A) + I)``, the class token's row (target ignored)."""
    with torch.no_grad(), attention_recorded(model, with_grad=False) as probs:
        logits = model(images)
    r = None
    for a in probs:
        a = a.float().mean(1)
        a = a + torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else a @ r
    return logits, upsample(_class_row(r), model)


def gae(model, images, target):
    """Chefer et al. 2021 (GAE): ``R = I``; per block ``R += mean_heads((∇A ⊙ A)⁺) @ R``; the class token's row."""
    x = images.detach()
    with torch.enable_grad(), attention_recorded(model, with_grad=True) as probs:
        logits = model(x)
        tgt = explain._target_index(logits, target)
        grads = torch.autograd.grad(logits.gather(1, tgt).sum(), probs)
    n = probs[0].shape[-1]
    r = torch.eye(n, device=x.device).expand(len(x), n, n)
    for a, g in zip(probs, grads):
        cam = (g.float() * a.detach().float()).clamp(min=0).mean(1)
        r = r + cam @ r
    return logits, upsample(_class_row(r), model)


# --- Captum ----------------------------------------------------------------------------------------------------------


def integrated_gradients(model, images, target):
    """Captum's Integrated Gradients from the zero (mean-colour) baseline, channels summed."""
    from captum.attr import IntegratedGradients

    logits, tgt = _targets(model, images, target)
    attr = IntegratedGradients(model).attribute(
        images.detach(), baselines=0.0, target=tgt, n_steps=IG_STEPS,
        internal_batch_size=max(ROWS_PER_PASS, 2 * len(images)))
    return logits, attr.sum(1)


def smoothgrad(model, images, target, generator=None):
    """Captum's SmoothGrad (NoiseTunnel over Saliency, |∇| averaged over noisy copies), channels summed.

    The noise comes from the global RNG (Captum draws it there), so the call runs in a forked RNG seeded from
    ``generator``: reproducible, and the caller's RNG state is left as it was.
    """
    from captum.attr import NoiseTunnel, Saliency

    logits, tgt = _targets(model, images, target)
    seed = int(torch.randint(2**62, (1,), generator=generator)) if generator is not None else 0
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        attr = NoiseTunnel(Saliency(model)).attribute(
            images.detach(), nt_type="smoothgrad", nt_samples=SMOOTHGRAD_SAMPLES, stdevs=SMOOTHGRAD_STDEV,
            nt_samples_batch_size=max(1, ROWS_PER_PASS // len(images)), target=tgt)
    return logits, attr.sum(1)

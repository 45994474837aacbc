"""Gradient methods on the plain model: Input×Gradient, Integrated Gradients and SmoothGrad (both Captum's).

- ``input_x_gradient``: the input times the gradient of the target logit, summed over colour channels.
- ``integrated_gradients``: Captum's IntegratedGradients from an all-zero baseline (after normalisation: the
  dataset's mean colour), ``Options.ig_steps`` Gauss-Legendre steps, summed over colour channels.
- ``smoothgrad``: Captum's NoiseTunnel over Saliency (``|∇|``), ``Options.smoothgrad_samples`` noisy copies with
  σ = :data:`SMOOTHGRAD_STDEV`, summed over colour channels; each image's noise is seeded by the run's seed and the
  image (:func:`vitlrp.methods.image_seed`), so its map does not depend on its batch or torchrun's sharding.
"""
import torch

from ..explain import input_times_grad, target_index
from ..preprocess import IMAGENET_STD
from ..runtime import SMOOTHGRAD_KEY, image_seed
from . import plain_logits_and_targets, register

CAPTUM = (("captum.attr", "captum==0.9.0"),)
# σ of SmoothGrad's noise in normalised input units: 15% of a pixel's [0, 1] range (Smilkov et al. suggest 10-20%),
# which ImageNet normalisation stretches to 1/std ≈ 4.4
SMOOTHGRAD_STDEV = 0.15 / (sum(IMAGENET_STD) / len(IMAGENET_STD))


def input_x_gradient(model, images, target=None):
    """Plain Input×Gradient on the *unpatched* model: ``(logits, relevance [B, H, W])``."""
    device = next(model.parameters()).device
    x = images.detach().to(device).requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(logits.gather(1, target_index(logits, target)).sum(), x)
    return logits.detach().float(), input_times_grad(x, grad)


def integrated_gradients(model, images, target, ids, method, options):
    """Captum's Integrated Gradients from the zero (mean-colour) baseline, channels summed."""
    from captum.attr import IntegratedGradients

    logits, tgt = plain_logits_and_targets(model, images, target)
    attr = IntegratedGradients(model).attribute(
        images.detach(), baselines=0.0, target=tgt, n_steps=options.ig_steps,
        internal_batch_size=max(options.rows_per_pass, 2 * len(images)))
    return logits, attr.sum(1)


def smoothgrad(model, images, target, ids, method, options):
    """Captum's SmoothGrad (NoiseTunnel over Saliency, |∇| averaged over noisy copies), channels summed.

    Captum draws the noise from the global RNG, so each image runs in a forked RNG seeded for it: reproducible,
    independent of the batch, and the caller's RNG state is left as it was.
    """
    from captum.attr import NoiseTunnel, Saliency

    logits, tgt = plain_logits_and_targets(model, images, target)
    devices = [images.device] if images.device.type == "cuda" else []
    maps = []
    for k, i in enumerate(ids):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(image_seed(options.seed, i, SMOOTHGRAD_KEY))
            attr = NoiseTunnel(Saliency(model)).attribute(
                images[k:k + 1].detach(), nt_type="smoothgrad", nt_samples=options.smoothgrad_samples,
                stdevs=SMOOTHGRAD_STDEV, nt_samples_batch_size=max(1, options.rows_per_pass), target=tgt[k:k + 1])
        maps.append(attr.sum(1)[0])
    return logits, torch.stack(maps)


register("input_x_gradient", "gradients", "input times the gradient of the explained logit (plain model)",
         function=lambda model, images, target, ids, method, options: input_x_gradient(model, images, target))
register("integrated_gradients", "gradients", "Captum's Integrated Gradients from the mean-colour image "
         "(IG_STEPS steps)", function=integrated_gradients, packages=CAPTUM)
register("smoothgrad", "gradients", "Captum's SmoothGrad of |gradient| (SMOOTHGRAD_SAMPLES noisy copies, seeded per "
         "image)", function=smoothgrad, packages=CAPTUM, signed=False)

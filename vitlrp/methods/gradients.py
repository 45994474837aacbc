"""Gradient methods on the plain model: Input×Gradient, the plain gradient, Integrated Gradients and SmoothGrad (both
Captum's).

- ``input_x_gradient``: the input times the gradient of the target logit, summed over colour channels.
- ``gradient``: the gradient of the target logit itself, summed over colour channels (signed saliency, Simonyan et
  al. 2014): the sanity checks' second gradient baseline, whose map for each class is that class's gradient with no
  factor shared by every class (Input×Gradient's ``x``).

Both serve several choices of class from one forward (:meth:`PlainGradient.attribute_many`): the class check asks
for the maps of many classes of each image.
- ``integrated_gradients``: Captum's IntegratedGradients from an all-zero baseline (after normalisation: the
  dataset's mean colour), ``MethodSettings.ig_steps`` Gauss-Legendre steps, summed over colour channels.
- ``smoothgrad``: Captum's NoiseTunnel over Saliency (``|∇|``), ``MethodSettings.smoothgrad_samples`` noisy copies
  with σ = :data:`SMOOTHGRAD_STDEV`, summed over colour channels; each image's noise is seeded by the run's seed and
  the image (:func:`vitlrp.runtime.image_seed`), so its map does not depend on its batch or torchrun's sharding.
"""
from functools import partial

import torch

from ..families import forward_logits
from ..preprocess import IMAGENET_STD
from ..protocol import Attribution, Method, input_times_grad, plain_logits_and_targets, target_index
from ..runtime import SMOOTHGRAD_KEY, image_seed
from .registry import register

CAPTUM = (("captum.attr", "captum"),)
# σ of SmoothGrad's noise in normalised input units: 15% of a pixel's [0, 1] range (Smilkov et al. suggest 10-20%),
# which ImageNet normalisation stretches to 1/std ≈ 4.4
SMOOTHGRAD_STDEV = 0.15 / (sum(IMAGENET_STD) / len(IMAGENET_STD))


def input_x_gradient(model, images, target=None):
    """Plain Input×Gradient on the *unpatched* model: ``(logits, relevance [B, H, W])``."""
    device = next(model.parameters()).device
    x = images.detach().to(device).requires_grad_(True)
    with torch.enable_grad():
        logits = forward_logits(model, x)
        (grad,) = torch.autograd.grad(logits.gather(1, target_index(logits, target)).sum(), x)
    return logits.detach().float(), input_times_grad(x, grad)


class PlainGradient(Method):
    """A map from the gradient of the explained logit on the plain model (:meth:`from_gradient`), one forward for
    every choice of classes."""

    @staticmethod
    def from_gradient(x, grad):
        raise NotImplementedError

    def compute(self, x, target, ids):
        (one,) = self._maps(x, [target])
        return one

    def attribute_many(self, x, targets, ids=None):
        """One forward, then one backward per choice of classes in ``targets`` (the graph kept between them)."""
        param = next(self.model.parameters())
        x = x.to(param.device, param.dtype)
        return [Attribution(logits.detach().float(), rel.detach().float(), target_index(logits, t).reshape(-1))
                for t, (logits, rel) in zip(targets, self._maps(x, targets))]

    def _maps(self, images, targets):
        x = images.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = forward_logits(self.model, x)
            out = []
            for k, t in enumerate(targets):
                (grad,) = torch.autograd.grad(logits.gather(1, target_index(logits, t)).sum(), x,
                                              retain_graph=k < len(targets) - 1)
                out.append((logits, self.from_gradient(x, grad)))
        return out


@register("input_x_gradient", "gradients", "input times the gradient of the explained logit (plain model)")
class InputXGradient(PlainGradient):
    @staticmethod
    def from_gradient(x, grad):
        return input_times_grad(x, grad)


@register("gradient", "gradients", "the gradient of the explained logit, summed over colour channels (signed "
          "saliency; plain model)")
class Gradient(PlainGradient):
    @staticmethod
    def from_gradient(x, grad):
        return grad.float().sum(1)


@register("integrated_gradients", "gradients", "Captum's Integrated Gradients from the mean-colour image (ig_steps "
          "steps)")
class IntegratedGradients(Method):
    """Captum's Integrated Gradients from the zero (mean-colour) baseline, channels summed."""

    packages = CAPTUM

    def compute(self, x, target, ids):
        from captum.attr import IntegratedGradients as CaptumIG

        logits, tgt = plain_logits_and_targets(self.model, x, target)
        s = self.settings
        attr = CaptumIG(partial(forward_logits, self.model)).attribute(
            x.detach(), baselines=0.0, target=tgt, n_steps=s.ig_steps,
            internal_batch_size=max(s.rows_per_pass, 2 * len(x)))
        return logits, attr.sum(1)


@register("smoothgrad", "gradients", "Captum's SmoothGrad of |gradient| (smoothgrad_samples noisy copies, seeded per "
          "image)")
class SmoothGrad(Method):
    """Captum's SmoothGrad (NoiseTunnel over Saliency, |∇| averaged over noisy copies), channels summed.

    Captum draws the noise from the global RNG, so each image runs in a forked RNG seeded for it: reproducible,
    independent of the batch, and the caller's RNG state is left as it was.
    """

    packages = CAPTUM
    signed = False

    def compute(self, x, target, ids):
        from captum.attr import NoiseTunnel, Saliency

        logits, tgt = plain_logits_and_targets(self.model, x, target)
        s = self.settings
        devices = [x.device] if x.device.type == "cuda" else []
        # Captum's noise is float32 whatever the input: a bf16 model gets the noisy copies cast to its dtype (the
        # same noise as in fp32)
        saliency = Saliency(lambda noisy: forward_logits(self.model, noisy.to(x.dtype)))
        maps = []
        for k, i in enumerate(ids):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(image_seed(s.seed, i, SMOOTHGRAD_KEY))
                attr = NoiseTunnel(saliency).attribute(
                    x[k:k + 1].detach(), nt_type="smoothgrad", nt_samples=s.smoothgrad_samples,
                    stdevs=SMOOTHGRAD_STDEV, nt_samples_batch_size=max(1, s.rows_per_pass), target=tgt[k:k + 1])
            maps.append(attr.sum(1)[0])
        return logits, torch.stack(maps)

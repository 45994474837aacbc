"""The repaired model parameter randomisation tests of Hedström et al. 2023, "Sanity Checks Revisited: An
Exploration to Repair the Model Parameter Randomisation Test":

- **eMPRT** (:func:`entropy_rise`): the relative rise in a map's complexity once the model is fully randomized,
  ``(H(e_random) − H(e)) / H(e)``, with ``H`` the discrete entropy of the histogram of the map's values in
  :data:`ENTROPY_BINS` equal-width bins between its minimum and maximum. A map that explains the model turns into
  noise (its entropy rises, a positive score); one that stays as structured as before does not depend on the
  parameters. It needs only two model states, so it is cheap.
- **sMPRT** (:func:`smoothed`): the maps are averaged over ``samples`` noisy copies of the input (σ = ``magnitude``
  × the image's value range; the last copy noise-free) before the original and the randomized model's maps are
  compared, which removes the high-frequency noise that makes the plain MPRT score gradient maps as "randomized"
  whatever the model.

Both follow Quantus 0.6's ``EfficientMPRT`` (its default: no normalisation, no absolute value, 100 bins) and
``SmoothMPRT`` (whose default compares the absolute maps at pixel level: our ``pixel_spearman_of_abs``); the tests
check them against Quantus on the same randomized model. Quantus randomizes through ``reset_parameters``, which
misses parameters a ViT holds outside such modules (:mod:`.randomization` draws every one), so only its formulas are
used as the reference.
"""
import math

import numpy as np
import torch

from ..runtime import SMOOTHING_NOISE_KEY, image_seed

ENTROPY_BINS = 100  # Quantus's n_bins when no rule is given


def entropy(maps, bins=ENTROPY_BINS):
    """Per map of ``[B, ...]``, the discrete entropy (nats) of the histogram of its values in ``bins`` equal-width bins
    between its minimum and maximum (numpy's ``histogram``); NaN for a map holding NaN or inf."""
    from scipy.stats import entropy as scipy_entropy

    flat = maps.detach().double().cpu().flatten(1).numpy()
    return np.array([scipy_entropy(np.histogram(m, bins=bins)[0]) if np.isfinite(m).all() else math.nan
                     for m in flat])


def entropy_rise(original, randomized, bins=ENTROPY_BINS):
    """eMPRT per image: ``(H(randomized) − H(original)) / H(original)``; NaN where ``H(original)`` is 0 (a constant
    map has no complexity to compare) or undefined."""
    h0, h1 = entropy(original, bins), entropy(randomized, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(h0 > 0, (h1 - h0) / h0, math.nan)


def seeded_noise(ids, seed):
    """The default noise of :func:`smoothed`: ``noise(k, shape)`` → ``[B, ...]`` standard normal draws for copy
    ``k``, seeded per image (``image_seed(seed, i, SMOOTHING_NOISE_KEY, k)``): the same whatever the batch."""
    def draw(k, shape):
        return torch.stack([torch.randn(shape[1:], generator=torch.Generator().manual_seed(
            image_seed(seed, i, SMOOTHING_NOISE_KEY, k)), dtype=torch.float64) for i in ids])
    return draw


def noisy_inputs(x, samples, magnitude, noise):
    """sMPRT's ``samples`` copies of ``x``: ``x + σ · noise(k, x.shape)`` with σ = ``magnitude`` × (max − min) of
    each image; the last copy is noise-free (as Quantus's)."""
    flat = x.detach().double().flatten(1)
    std = (magnitude * (flat.max(1).values - flat.min(1).values)).view(-1, *[1] * (x.dim() - 1))
    for k in range(samples):
        if k == samples - 1:
            yield x
        else:
            yield x + (std * noise(k, x.shape).double()).to(x.device, x.dtype)


def smoothed(attribute, x, samples, magnitude, noise):
    """sMPRT's map: the mean of ``attribute(copy)`` (a ``[B, H, W]`` map) over :func:`noisy_inputs`."""
    total = None
    for copy in noisy_inputs(x, samples, magnitude, noise):
        maps = attribute(copy).double() / samples
        total = maps if total is None else total + maps
    return total

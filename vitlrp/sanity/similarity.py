"""Similarity of two maps ``a``, ``b`` of one image (:func:`similarity`); every measure is reported:

- ``spearman``: Spearman's ρ between the per-patch sums of ``a`` and ``b`` (one sum per patch of the model's patch
  size, :func:`vitlrp.metrics.patch_scores`; ρ is Pearson's r of the ranks, ties ranked by their mean);
- ``spearman_of_abs``: the same for the absolute per-patch sums ``|Σ_patch a|`` and ``|Σ_patch b|`` (where the
  evidence lies, whatever its sign);
- ``ssim``: the structural similarity of ``|a| / max|a|`` and ``|b| / max|b|`` at input resolution (scikit-image's
  ``structural_similarity``, data range 1, its 7×7 window; an all-zero map stays all zero);
- ``abs_spearman``: ``|ρ|`` of the patch sums, the verdicts' statistic: a map for another class that is the first
  one negated shares all its structure (Sixt et al. take the better of ``h`` vs ``h'`` and ``h`` vs ``-h'``).

These are the measures of Adebayo et al. 2018, "Sanity Checks for Saliency Maps" (Spearman rank correlation with
and without absolute values, SSIM); ρ is taken per patch because a ViT sees the image as patches. ρ is undefined
for a constant map (no ranking, e.g. an all-zero Grad-CAM): it is NaN, never 0, and :func:`summarize` counts those
values (``n_undefined``) apart from the mean of the defined ones. Every measure of a map holding NaN or inf is NaN.
"""
import numpy as np

from ..metrics import patch_scores, spearman

MEASURES = ("spearman", "spearman_of_abs", "ssim", "abs_spearman")


def max_normalised_abs(maps):
    """``|m| / max|m|`` per map (``[B, H, W]`` numpy); an all-zero map stays zero."""
    a = np.abs(np.asarray(maps, dtype=np.float64))
    peak = a.reshape(len(a), -1).max(1)
    return a / np.where(peak > 0, peak, 1.0)[:, None, None]


def ssim_rows(a, b):
    """SSIM of the max-normalised absolute maps, per image (scikit-image, data range 1); NaN for a non-finite map."""
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a).reshape(len(a), -1).all(1) & np.isfinite(b).reshape(len(b), -1).all(1)
    keep = ok[:, None, None]
    na, nb = max_normalised_abs(np.where(keep, a, 0)), max_normalised_abs(np.where(keep, b, 0))
    return np.array([structural_similarity(x, y, data_range=1.0) if good else np.nan
                     for x, y, good in zip(na, nb, ok)])


def patch_spearman(a, b, patch, absolute=False):
    """Spearman's ρ of the per-patch sums (their absolute values with ``absolute``) of the ``[B, H, W]`` maps ``a``
    and ``b``, per image: ``[B]`` numpy, NaN for a constant or non-finite map. The cheap part of
    :func:`similarity` (no SSIM), e.g. for a class-sensitivity score ``1 - |ρ|``."""
    sa, sb = (patch_scores(m.detach().float().cpu(), patch) for m in (a, b))
    return (spearman(sa.abs(), sb.abs()) if absolute else spearman(sa, sb)).numpy()


def similarity(a, b, patch):
    """Every measure of :data:`MEASURES` between the ``[B, H, W]`` maps ``a`` and ``b``: ``{measure: [B] numpy}``."""
    rho = patch_spearman(a, b, patch)
    return {"spearman": rho, "spearman_of_abs": patch_spearman(a, b, patch, absolute=True),
            "ssim": ssim_rows(a.detach().float().cpu().numpy(), b.detach().float().cpu().numpy()),
            "abs_spearman": np.abs(rho)}

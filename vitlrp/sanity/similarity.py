"""Similarity of two maps ``a``, ``b`` of one image (:func:`similarity`), at two levels; every measure is reported.

Patch level (a ViT sees the image as patches; one sum per patch of the model's patch size,
:func:`vitlrp.metrics.patch_scores`):

- ``spearman``: Spearman's ρ between the per-patch sums of ``a`` and ``b`` (Pearson's r of the ranks, ties ranked
  by their mean);
- ``spearman_of_abs``: the same for the absolute per-patch sums ``|Σ_patch a|`` and ``|Σ_patch b|`` (where the
  evidence lies, whatever its sign);
- ``abs_spearman``: ``|ρ|`` of the patch sums, the patch-level verdicts' statistic: a map for another class that is
  the first one negated shares all its structure (Sixt et al. take the better of ``h`` vs ``h'`` and ``h`` vs
  ``-h'``).

Pixel level (where the patch embedding's Conv2d γ acts: it only moves relevance inside each patch, which patch
sums cannot see): ``pixel_spearman`` and ``pixel_abs_spearman``, the same over the pixels (``pixel_spearman_of_abs``,
:data:`ABS_PIXELS`, only for sMPRT, whose Quantus default it is); and ``ssim``, the structural similarity of
``|a| / max|a|`` and ``|b| / max|b|`` (scikit-image's ``structural_similarity`` with its defaults: data range 1, a
7×7 uniform window, sample covariances, the mean over the positions whose window lies inside the image; computed
here in one batched pass and tested against it).

The class check adds the logit-sign-corrected ρ (:data:`SIGNED`): ``ρ · sign(f_c · f_c')`` at both levels. For large
Linear γ the map for class ``c'`` approaches ``f_c'/f_c`` times the map for ``c`` (Sixt et al. 2020), so ρ takes the
sign of ``f_c · f_c'``: the corrected ρ is then near +1, while two maps that truly rank the patches the other way
round (two classes that rest on disjoint evidence) keep a negative value.

These are the measures of Adebayo et al. 2018, "Sanity Checks for Saliency Maps" (Spearman rank correlation with
and without absolute values, SSIM). Every measure is undefined for a constant map (no ranking, no structure, e.g.
an all-zero Grad-CAM): NaN, never 0 or 1, and :func:`~vitlrp.sanity.verdicts.summarize` counts those values
(``n_undefined``) apart from the mean of the defined ones. Every measure of a map holding NaN or inf is NaN.
"""
import numpy as np

from ..metrics import patch_scores

MEASURES = ("spearman", "spearman_of_abs", "ssim", "abs_spearman", "pixel_spearman", "pixel_abs_spearman")
ABS_PIXELS = "pixel_spearman_of_abs"  # ρ of the absolute pixels: sMPRT's measure (a third sort, only where asked)
SIGNED = ("sign_spearman", "pixel_sign_spearman")  # the class check's logit-sign-corrected ρ
LEVELS = {"patch": "abs_spearman", "pixel": "pixel_abs_spearman"}  # the statistic of each level's verdicts
SSIM_WINDOW, SSIM_K1, SSIM_K2 = 7, 0.01, 0.03  # scikit-image's defaults


def max_normalised_abs(maps):
    """``|m| / max|m|`` per map (``[B, H, W]`` numpy); an all-zero map stays zero."""
    a = np.abs(np.asarray(maps, dtype=np.float64))
    peak = a.reshape(len(a), -1).max(1)
    return a / np.where(peak > 0, peak, 1.0)[:, None, None]


def average_ranks(values):
    """Per row of ``[B, N]``, the ranks 1..N with ties given their mean rank (scipy's ``rankdata``; a row without
    ties takes one sort instead, the common case of a pixel map)."""
    from scipy.stats import rankdata

    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, axis=1)
    ranks = np.empty_like(values)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(1.0, values.shape[1] + 1), values.shape), 1)
    tied = (np.diff(np.take_along_axis(values, order, 1), axis=1) == 0).any(1)
    if tied.any():
        ranks[tied] = rankdata(values[tied], axis=1)
    return ranks


def _centred_ranks(values, ok):
    """Ranks of each row (ties: their mean rank) minus their mean; rows that are not ``ok`` stay zero."""
    ranks = average_ranks(np.where(ok[:, None], values, 0.0))
    return ranks - ranks.mean(1, keepdims=True)


class Ranked:
    """What every comparison of a batch of ``[B, H, W]`` maps reads, computed once: the centred ranks of the patch
    sums and of the pixels (signed, and absolute on first use), the max-normalised absolute map, and which maps are
    usable (finite and not constant)."""

    def __init__(self, maps, patch):
        m = maps.detach().double().cpu()
        flat = m.flatten(1).numpy()
        finite = np.isfinite(flat).all(1)
        self.safe = np.where(finite[:, None], flat, 0.0)
        self.ok = finite & (self.safe.max(1) > self.safe.min(1))
        b, h, w = m.shape  # patch sums in numpy: the same as metrics.patch_scores, without torch's thread hand-offs
        sums = self.safe.reshape(b, h // patch, patch, w // patch, patch).sum((2, 4)).reshape(b, -1)
        self.ranks = {"patch": _centred_ranks(sums, self.ok), "patch_abs": _centred_ranks(np.abs(sums), self.ok),
                      "pixel": _centred_ranks(self.safe, self.ok)}
        self.norms = {k: np.sqrt((r * r).sum(1)) for k, r in self.ranks.items()}
        self.shape = m.shape
        self._normalised = None

    @property
    def normalised(self):
        """``|m| / max|m|`` per map (SSIM's input), made on first use."""
        if self._normalised is None:
            self._normalised = max_normalised_abs(self.safe.reshape(self.shape))
        return self._normalised

    def rank(self, key):
        """The centred ranks of ``key`` (``pixel_abs`` is ranked on first use) and their norms."""
        if key not in self.ranks:
            self.ranks[key] = _centred_ranks(np.abs(self.safe), self.ok)
            self.norms[key] = np.sqrt((self.ranks[key] ** 2).sum(1))
        return self.ranks[key], self.norms[key]

    def rows(self, positions):
        """The same for the maps at ``positions`` only."""
        out = object.__new__(Ranked)
        out.ok, out.safe = self.ok[positions], self.safe[positions]
        out.ranks = {k: r[positions] for k, r in self.ranks.items()}
        out.norms = {k: n[positions] for k, n in self.norms.items()}
        out.shape, out._normalised = (len(out.ok), *self.shape[1:]), None
        return out


def _rho(a, b, key):
    (ra, na), (rb, nb) = a.rank(key), b.rank(key)
    den = na * nb
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(1) / den
    return np.where(a.ok & b.ok & (den > 0), np.clip(rho, -1, 1), np.nan)


def _window_means(v, w):
    """The mean of every ``w × w`` window lying inside the ``[B, H, W]`` images (an integral image: exact, cheap)."""
    c = np.pad(v.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    return (c[:, w:, w:] - c[:, :-w, w:] - c[:, w:, :-w] + c[:, :-w, :-w]) / (w * w)


def ssim(a, b):
    """Per image, the SSIM of two ``[B, H, W]`` float64 arrays in [0, 1] (scikit-image's defaults, batched; numpy:
    many small torch operations cost more in thread hand-offs than in arithmetic)."""
    x, y = a, b
    n = SSIM_WINDOW ** 2
    mean = {k: _window_means(v, SSIM_WINDOW) for k, v in (("x", x), ("y", y), ("xx", x * x), ("yy", y * y),
                                                          ("xy", x * y))}
    cov = n / (n - 1)
    vx, vy = cov * (mean["xx"] - mean["x"] ** 2), cov * (mean["yy"] - mean["y"] ** 2)
    vxy = cov * (mean["xy"] - mean["x"] * mean["y"])
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    s = ((2 * mean["x"] * mean["y"] + c1) * (2 * vxy + c2)) / ((mean["x"] ** 2 + mean["y"] ** 2 + c1) * (vx + vy + c2))
    return s.reshape(len(s), -1).mean(1)


def ranked(maps, patch):
    """``maps`` as a :class:`Ranked` (a :class:`Ranked` is returned as it is)."""
    return maps if isinstance(maps, Ranked) else Ranked(maps, patch)


def similarity(a, b, patch, sign=None, extra=(), structure=True):
    """The measures of :data:`MEASURES` between the ``[B, H, W]`` maps ``a`` and ``b`` (or their :class:`Ranked`):
    ``{measure: [B] numpy}``; with ``sign`` (``[B]`` of ±1, ``sign(f_c · f_c')``) also those of :data:`SIGNED`;
    ``pixel_spearman_of_abs`` (a third sort of the pixels) only when ``extra`` names it; no ``ssim`` without
    ``structure``."""
    a, b = ranked(a, patch), ranked(b, patch)
    rho, pixel = _rho(a, b, "patch"), _rho(a, b, "pixel")
    out = {"spearman": rho, "spearman_of_abs": _rho(a, b, "patch_abs"), "abs_spearman": np.abs(rho),
           "pixel_spearman": pixel, "pixel_abs_spearman": np.abs(pixel)}
    if structure:
        out["ssim"] = np.where(a.ok & b.ok, ssim(a.normalised, b.normalised), np.nan)
    if "pixel_spearman_of_abs" in extra:
        out["pixel_spearman_of_abs"] = _rho(a, b, "pixel_abs")
    if sign is not None:
        sign = np.asarray(sign, dtype=np.float64)
        out.update(sign_spearman=rho * sign, pixel_sign_spearman=pixel * sign)
    return out


def abs_rho_levels(a, b, patch):
    """|ρ| at each level of :data:`LEVELS` between the maps ``a`` and ``b`` (or their :class:`Ranked`):
    ``{level: [B] numpy}``, the cheap part of :func:`similarity` (no SSIM)."""
    a, b = ranked(a, patch), ranked(b, patch)
    return {"patch": np.abs(_rho(a, b, "patch")), "pixel": np.abs(_rho(a, b, "pixel"))}


def patch_spearman(a, b, patch, absolute=False):
    """Spearman's ρ of the per-patch sums (their absolute values with ``absolute``) of the ``[B, H, W]`` maps ``a``
    and ``b``, per image: ``[B]`` numpy, NaN for a constant or non-finite map. The cheap part of
    :func:`similarity`, e.g. for a class-sensitivity score ``1 - |ρ|``."""
    from ..metrics import spearman

    sa, sb = (patch_scores(m.detach().float().cpu(), patch) for m in (a, b))
    return (spearman(sa.abs(), sb.abs()) if absolute else spearman(sa, sb)).numpy()

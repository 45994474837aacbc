"""Paired statistics for methods scored on the same images: differences, bootstrap intervals, Wilcoxon, Holm.

Every method is evaluated on the same images, so two methods are compared through their per-image
differences, not through their separate (overlapping) intervals. Computing only; the forest plot is drawn in
:mod:`vitlrp.plots`.
"""
import math

import numpy as np

ALPHA = 0.05  # significance level of the Holm-corrected Wilcoxon test
PAIRED_FIELDS = ["metric", "method", "reference", "mean_diff", "ci_low", "ci_high", "p_wilcoxon", "p_holm",
                 "agrees", "significant", "wins", "ties", "losses", "n_pairs", "n_dropped"]


def paired_values(a, b):
    """Pair two ``{sample_idx: value}`` dicts; ``(a_values, b_values, n_dropped)``.

    Only samples present in both are paired; a pair where either value is NaN (a score undefined for that image,
    e.g. a box cropped away) is dropped and counted.
    """
    common = sorted(set(a) & set(b))
    x = np.array([a[i] for i in common], dtype=np.float64)
    y = np.array([b[i] for i in common], dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok], int((~ok).sum())


def bootstrap_ci(diffs, n_boot=10000, seed=0, level=0.95, chunk=1000):
    """Percentile bootstrap interval of the mean of ``diffs`` (resampling images with replacement).

    Vectorised: ``chunk`` resamples at a time as one ``[chunk, n]`` index array. Seeded, so the same data give
    the same interval. ``(nan, nan)`` for no data.
    """
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        means[start:start + size] = d[rng.integers(0, n, size=(size, n))].mean(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def wilcoxon_p(diffs):
    """Two-sided Wilcoxon signed-rank p-value of ``diffs`` (scipy; zero differences dropped, its default).

    1.0 when every difference is 0 (nothing to test: the two methods agree on every image), NaN without data.
    """
    from scipy.stats import wilcoxon

    d = np.asarray(diffs, dtype=np.float64)
    if len(d) == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d).pvalue)


def rank_direction(diffs):
    """+1 / −1 / 0: the side the signed-rank test leans to (ranks of the positive minus the negative differences).

    A two-sided Wilcoxon p can be small while the *mean* difference has the other sign (many small losses, a few
    large wins): a verdict on the mean needs both to agree."""
    from scipy.stats import rankdata

    d = np.asarray(diffs, dtype=np.float64)
    d = d[d != 0]
    if len(d) == 0:
        return 0
    r = rankdata(np.abs(d))
    return int(np.sign(r[d > 0].sum() - r[d < 0].sum()))


def agrees(mean_diff, diffs):
    """Whether the signed-rank test leans the same way as ``mean_diff`` (both nonzero)."""
    return bool(mean_diff and math.isfinite(mean_diff) and rank_direction(diffs) == np.sign(mean_diff))


def holm(pvalues):
    """Holm's step-down adjusted p-values (family-wise error control), in the input order; NaN stays NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, math.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def wins_ties_losses(diffs, higher_is_better=True):
    """How many images the method scores better / the same / worse than the reference (by the metric's direction)."""
    d = np.asarray(diffs, dtype=np.float64) * (1 if higher_is_better else -1)
    return int((d > 0).sum()), int((d == 0).sum()), int((d < 0).sum())


def compare(values, higher_is_better=True, n_boot=10000, seed=0):
    """One paired comparison from ``(method_values, reference_values, n_dropped)`` (see :func:`paired_values`)."""
    x, y, dropped = values
    d = x - y
    lo, hi = bootstrap_ci(d, n_boot, seed)
    wins, ties, losses = wins_ties_losses(d, higher_is_better)
    mean = float(d.mean()) if len(d) else math.nan
    return {"mean_diff": mean, "ci_low": lo, "ci_high": hi, "p_wilcoxon": wilcoxon_p(d), "agrees": agrees(mean, d),
            "wins": wins, "ties": ties, "losses": losses, "n_pairs": len(d), "n_dropped": dropped}


def paired_table(scores, reference, metrics, n_boot=10000, seed=0, alpha=ALPHA):
    """Every method against ``reference`` on every metric, Holm-corrected over the methods per metric.

    ``scores``: ``{method: {metric: {sample_idx: value}}}``; ``metrics``: ``{metric: higher_is_better}``.
    Returns rows with :data:`PAIRED_FIELDS` (metric-major, methods in ``scores`` order, the reference left out).
    ``significant`` means Holm-adjusted p < ``alpha`` and the signed-rank test leaning the same way as the mean
    difference (``agrees``); the Holm correction is over the methods of one metric, not over the metrics.
    """
    others = [m for m in scores if m != reference]
    rows = []
    for metric, higher in metrics.items():
        block = [{"metric": metric, "method": m, "reference": reference,
                  **compare(paired_values(scores[m][metric], scores[reference][metric]), higher, n_boot, seed)}
                 for m in others]
        for row, p in zip(block, holm([r["p_wilcoxon"] for r in block])):
            row["p_holm"] = float(p)
            row["significant"] = bool(p < alpha) and row["agrees"]
        rows += block
    return rows


def t_interval(values, level=0.95):
    """``(mean, half-width, n)`` of the finite ``values``: Student's t interval of the mean over the units (images)
    the values belong to, one value per unit. The half-width is NaN for fewer than two values (no spread to go by),
    the mean NaN for none."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n < 2:
        return float(v.mean()), math.nan, 1
    sd = float(v.std(ddof=1))
    return float(v.mean()), float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n), n


def crossed_interval(matrix, n_boot=2000, seed=0, level=0.95):
    """``(mean, half-width, n)`` of the grand mean of a ``[units, draws]`` matrix whose two factors are both random
    (images and weight draws): a bootstrap that resamples the rows and the columns independently, each resample's
    mean, their standard deviation as the standard error, and the normal interval ``± z · SE``. Rows holding a NaN
    are left out; ``n`` counts the rows kept. With one column it is :func:`t_interval` of the rows (there is no draw
    to resample); the half-width is NaN for fewer than two rows."""
    from scipy.stats import norm

    m = np.asarray(matrix, dtype=np.float64).reshape(len(matrix), -1)
    m = m[np.isfinite(m).all(1)] if m.size else m
    n, d = m.shape
    if d <= 1 or n < 2:
        mean, half, n = t_interval(m[:, 0] if d else [])
        return mean, (half if n >= 2 else math.nan), n
    rng = np.random.default_rng(seed)
    # a resample's mean is w_rowsᵀ · m · w_cols, with each weight the share of the resample that drew that row/column
    w_rows = rng.multinomial(n, np.full(n, 1 / n), size=n_boot) / n
    w_cols = rng.multinomial(d, np.full(d, 1 / d), size=n_boot) / d
    means = np.einsum("bi,ij,bj->b", w_rows, m, w_cols)
    return float(m.mean()), float(norm.ppf(0.5 + level / 2) * means.std(ddof=1)), n

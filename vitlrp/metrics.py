"""Scores of relevance maps, batched (``[B, H, W]`` maps in model-input pixels), and the table of every metric.

Localization uses CUB's box and parts mapped into the model input (see :mod:`vitlrp.preprocess`); a pixel
belongs to a box when its centre lies inside it. Faithfulness removes the ViT's own patches in order of their
summed relevance and records the target probability (MoRF: most relevant first, LeRF: least relevant first).
A removed patch is set to 0 in normalized space, i.e. the dataset's mean colour. ROAD (Rong et al. 2022) removes
the same patches in the same order but fills them by noisy linear imputation from the pixels kept, so the
perturbed image stays closer to the data than a flat mean-colour square.

Ties count as a random order would: the pointing games score the share of the tied maxima that hit, rank accuracy
the expected share of the top K, and patches of equal relevance are removed in a random order (seeded per image by
the caller). So a flat map (no evidence at all) scores what chance scores.
"""
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

ROAD_NOISE = 0.01  # std of the Gaussian noise added to imputed values (ROAD's default; normalized units)
# ROAD's imputation weights: each missing pixel is the weighted mean of its 8 neighbours (edge 1/6, corner 1/12)
_NEIGHBOURS = [((dy, dx), 1 / 12 if dy and dx else 1 / 6) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def box_mask(boxes, size):
    """``[B, 4]`` boxes (x0, y0, x1, y1 edges) → ``[B, size, size]`` bool masks of the pixels whose centre is inside."""
    c = torch.arange(size, dtype=torch.float32, device=boxes.device) + 0.5
    b = boxes.float()
    inside_x = (c[None, :] >= b[:, 0:1]) & (c[None, :] < b[:, 2:3])
    inside_y = (c[None, :] >= b[:, 1:2]) & (c[None, :] < b[:, 3:4])
    return inside_y[:, :, None] & inside_x[:, None, :]


def _safe_div(a, b):
    return torch.where(b > 0, a / b.clamp(min=torch.finfo(b.dtype).tiny), torch.full_like(a, math.nan))


def _nan_where_empty(values, mask):
    """NaN for rows whose mask is empty (a box cropped away entirely): the score is undefined, not 0."""
    return torch.where(mask.flatten(1).any(1).to(values.device), values, torch.full_like(values, math.nan))


def box_share(relevance, mask):
    """Share of the positive relevance that lies inside ``mask`` (NaN when there is none, or the mask is empty)."""
    pos = relevance.clamp(min=0).flatten(1).double()
    return _nan_where_empty(_safe_div((pos * mask.flatten(1)).sum(1), pos.sum(1)).float(), mask)


def _maxima(relevance):
    """``[B, H, W]`` bool: the pixels that hold their map's maximum (several when it is tied)."""
    flat = relevance.flatten(1)
    return (flat == flat.max(1, keepdim=True).values).view_as(relevance)


def pointing_game(relevance, mask):
    """1 where the most relevant pixel lies inside ``mask``, else 0; with tied maxima the share of them inside (a hit
    under a random choice among them). NaN for an empty mask."""
    top = _maxima(relevance).flatten(1).to(mask.device)
    hit = (top & mask.flatten(1)).sum(1).double() / top.sum(1)
    return _nan_where_empty(hit.float(), mask)


def part_pointing(relevance, parts, tolerance):
    """1 where the most relevant pixel is within ``tolerance`` pixels of a visible part (with tied maxima, the share
    of them that are); NaN for a map without a visible part."""
    w = relevance.shape[-1]
    top = _maxima(relevance).flatten(1)
    row, pixel = top.nonzero(as_tuple=True)  # one entry per maximum: usually one per map
    d = torch.hypot(parts[row, :, 0] - (pixel % w)[:, None].float(), parts[row, :, 1] - (pixel // w)[:, None].float())
    visible = parts[..., 2] > 0
    near = ((d <= tolerance) & visible[row]).any(1).double()
    hit = torch.zeros(len(relevance), dtype=torch.float64, device=relevance.device).index_add_(0, row, near)
    hit = (hit / top.sum(1)).float()
    return torch.where(visible.any(1), hit, torch.full_like(hit, math.nan))


def rank_accuracy(relevance, mask):
    """Share of the K most relevant pixels inside ``mask``, with K its pixel count (NaN for an empty mask). Pixels
    tied with the K-th value count in proportion, as a random order among them would (in expectation)."""
    flat, m = relevance.flatten(1), mask.flatten(1).to(relevance.device)
    k = m.sum(1)
    kth = flat.sort(1, descending=True).values.gather(1, (k - 1).clamp(min=0)[:, None])  # the K-th largest value
    above, tied = flat > kth, flat == kth
    inside = (above & m).sum(1).double()
    slots = (k - above.sum(1)).double()  # places of the top K left for the tied pixels
    inside = inside + slots * (tied & m).sum(1).double() / tied.sum(1).clamp(min=1)
    return torch.where(k > 0, inside / k.clamp(min=1), torch.full_like(inside, math.nan)).float()


def negative_share(relevance):
    """Share of the total absolute relevance that is negative."""
    r = relevance.flatten(1).double()
    return _safe_div(r.clamp(max=0).abs().sum(1), r.abs().sum(1)).float()


def gini(relevance):
    """Gini coefficient of |relevance| per map: 0 for a uniform map, → 1 when all mass is in one pixel."""
    v = relevance.flatten(1).abs().double().sort(1).values
    n = v.shape[1]
    i = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    return _safe_div(((2 * i - n - 1) * v).sum(1), n * v.sum(1)).float()


def spearman(a, b):
    """Spearman's ρ of each row pair of ``[B, n]`` tensors or arrays (scipy's ranks, the mean rank for ties), as a
    float64 tensor; NaN for a row that is constant (no ranking to correlate) or not finite."""
    from scipy.stats import rankdata

    x, y = (np.asarray(t.detach().double().cpu() if torch.is_tensor(t) else t, dtype=np.float64) for t in (a, b))
    ok = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    rx = rankdata(np.where(ok[:, None], x, 0), axis=1)
    ry = rankdata(np.where(ok[:, None], y, 0), axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    den = np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(1) / den
    return torch.from_numpy(np.where(ok & (den > 0), np.clip(rho, -1, 1), np.nan))


def class_sensitivity(relevance, other, patch):
    """1 − |Spearman ρ| between the per-patch sums of the map and of the map of another class of the same image
    (Sixt et al. 2020: a map that looks the same whatever class it explains does not explain the class); 1 = the
    maps share no ranking, 0 = the same ranking (or its reverse). NaN where either map is constant."""
    return 1 - spearman(patch_scores(relevance, patch), patch_scores(other, patch)).abs()


def roughness(relevance):
    """Total variation of the map scaled to a largest |value| of 1: the mean absolute difference between
    horizontally and vertically neighbouring pixels (0 = flat; high = speckled). The seed's "less noise" claim, as a
    number; lower is smoother, which is not the same as more faithful."""
    r = relevance.float()
    r = r / r.flatten(1).abs().amax(1).clamp(min=torch.finfo(r.dtype).tiny)[:, None, None]
    return ((r[:, :, 1:] - r[:, :, :-1]).abs().mean((1, 2)) + (r[:, 1:, :] - r[:, :-1, :]).abs().mean((1, 2))) / 2


def linear_impute(images, keep, noise=ROAD_NOISE, generator=None, seeds=None):
    """ROAD's noisy linear imputation of ``[B, C, H, W]`` images where ``keep`` (``[B, 1, H, W]``, 1 = kept) is 0.

    Each missing pixel is the weighted mean of its in-image 8 neighbours (edges 1/6, corners 1/12), missing or not:
    one sparse linear system per image (Rong et al. 2022; the same system as pytorch-grad-cam's
    ``NoisyLinearImputer``), here assembled for the whole batch as one block-diagonal system and solved exactly
    with scipy's sparse LU on the CPU, all channels at once. Imputed pixels then get Gaussian noise of std
    ``noise``, drawn from ``generator``, or per image from its own seed in ``seeds`` (one int per image). An image
    with nothing kept has nothing to impute from and is returned as 0 (the mean colour).
    """
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import splu

    b, c, h, w = images.shape
    keep = keep.expand(b, 1, h, w)
    values = images.detach().permute(0, 2, 3, 1).reshape(-1, c).double().cpu().numpy()
    empty = ~keep.flatten(1).bool().any(1)
    miss = (keep.reshape(b, -1) < 0.5) & ~empty[:, None]  # a whole image removed is no system: it becomes 0 below
    miss = miss.reshape(-1).cpu().numpy()
    idx = np.flatnonzero(miss)
    out = values.copy()
    if len(idx):
        var = np.full(miss.size, -1)
        var[idx] = np.arange(len(idx))
        y, x = (idx // w) % h, idx % w
        diag, rhs = np.zeros(len(idx)), np.zeros((len(idx), c))
        rows, cols, vals = [np.arange(len(idx))], [np.arange(len(idx))], []
        for (dy, dx), weight in _NEIGHBOURS:
            inside = (y + dy >= 0) & (y + dy < h) & (x + dx >= 0) & (x + dx < w)
            eq = np.flatnonzero(inside)  # equations (missing pixels) with this neighbour in the image
            nb = idx[inside] + dy * w + dx
            diag[eq] += weight
            unknown = miss[nb]
            rows.append(eq[unknown])
            cols.append(var[nb[unknown]])
            vals.append(np.full(int(unknown.sum()), -weight))
            rhs[eq[~unknown]] += weight * values[nb[~unknown]]
        a = csc_matrix((np.concatenate([diag, *vals]), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(len(idx), len(idx)))
        out[idx] = splu(a).solve(rhs)
    filled = torch.from_numpy(out).float().view(b, h, w, c).permute(0, 3, 1, 2).to(images.device)
    miss_t = 1 - keep.to(filled)
    if noise:
        if seeds is not None:
            draws = torch.stack([torch.randn(filled.shape[1:], generator=torch.Generator().manual_seed(int(s)))
                                 for s in seeds])
        else:
            draws = torch.randn(filled.shape, generator=generator)
        filled = filled + noise * draws.to(filled.device) * miss_t
    return torch.where(empty.to(filled.device)[:, None, None, None], torch.zeros_like(filled), filled)


def patch_scores(relevance, patch):
    """Summed relevance per ``patch`` x ``patch`` cell: ``[B, L]`` in row-major patch order."""
    return F.avg_pool2d(relevance[:, None].float(), patch).flatten(1) * patch * patch


def removal_fractions(steps):
    return [s / steps for s in range(steps + 1)]


def keep_mask(images, order, count, patch):
    """``[B, 1, H, W]``: 0 on the first ``count`` patches of each row's ``order``, 1 elsewhere."""
    b, _, h, w = images.shape
    keep = torch.ones(b, (h // patch) * (w // patch), device=images.device)
    if count:
        keep.scatter_(1, order[:, :count].to(images.device), 0.0)
    return patch_keep_to_pixels(keep, h // patch, patch)


def patch_keep_to_pixels(keep, grid_h, patch):
    """``[R, L]`` per-patch keep flags (row-major patches) → ``[R, 1, H, W]`` per-pixel flags."""
    return keep.float().view(len(keep), 1, grid_h, -1).repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def perturbed(images, order, count, patch, value=0.0):
    """``images`` with the first ``count`` patches of each row's ``order`` set to ``value``."""
    keep = keep_mask(images, order, count, patch)
    return images * keep + value * (1 - keep)


def road_fill(noise=ROAD_NOISE):
    """A ``fill(images, keep, seeds)`` for :func:`perturbation_curves`: ROAD's noisy linear imputation, each
    perturbed image's noise drawn from its own seed."""
    return lambda images, keep, seeds: linear_impute(images.float(), keep, noise, seeds=seeds).to(images.dtype)


def removal_order(scores, descending, tiebreak=None):
    """Patch indices in removal order, ``[..., L]``: by score (most relevant first when ``descending``); patches of
    equal score in the order of ``tiebreak`` (random ranks ``[..., L]``, the same for MoRF and LeRF, so a flat map
    removes patches in one random order both ways), or in index order without it."""
    if tiebreak is None:
        return torch.sort(scores, dim=-1, descending=descending, stable=True).indices
    pre = tiebreak.expand_as(scores).argsort(-1)
    return pre.gather(-1, torch.sort(scores.gather(-1, pre), dim=-1, descending=descending, stable=True).indices)


def _perturbation_rows(orders, counts, image_seeds, fill):
    """Every perturbed image of the curves, once: ``(keys, inverse)`` where ``keys`` ``[U, 2 + L]`` holds (image,
    seed, kept patches) of each distinct perturbed image and ``inverse`` maps each (direction, map, count, image)
    to its key. Maps that remove the same patches of an image at a step share one forward (with ROAD's fill
    only at the same step and direction, whose noise seed it shares)."""
    d, m, b, n = orders.shape
    rank = orders.argsort(-1)  # [d, m, b, n]: each patch's place in the removal order
    c = torch.tensor(counts)
    keep = rank[:, :, None] >= c.view(1, 1, -1, 1, 1)  # [d, m, S, b, n]
    image = torch.arange(b).view(1, 1, 1, b).expand(d, m, len(counts), b)
    if fill is None or image_seeds is None:
        seed = torch.zeros_like(image)
    else:  # ROAD's noise: one seed per image, step and direction, shared by every map
        base = torch.as_tensor(image_seeds, dtype=torch.int64).view(1, 1, 1, b)
        seed = (base * 1_000_003 + torch.arange(d).view(d, 1, 1, 1) * 1009 + c.view(1, 1, -1, 1)) % 2**62
        seed = seed.expand(d, m, len(counts), b)
    rows = torch.cat([image.reshape(-1, 1), seed.reshape(-1, 1), keep.reshape(-1, n).long()], 1)
    return torch.unique(rows, dim=0, return_inverse=True)


@dataclass(frozen=True)
class Removal:
    """How :func:`perturbation_curves` removes patches and what it may reuse: ``start`` / ``end`` probabilities,
    the ``fill`` of removed pixels, the ``tiebreak`` ranks, ``image_seeds`` (of ``fill``), ``rows_per_pass`` and
    ``prob_kept`` (see there)."""

    start: object = None
    end: object = None
    fill: object = None
    tiebreak: object = None
    image_seeds: object = None
    rows_per_pass: int = 64
    prob_kept: object = None


@torch.inference_mode()
def perturbation_curves(prob_fn, images, scores, patch, steps, removal=None, **options):
    """Target probabilities as patches are removed: ``{'morf': [B, steps+1], 'lerf': [B, steps+1]}``.

    ``removal`` is a :class:`Removal`; ``options`` set its fields instead (``start=..., fill=...``).

    ``scores`` are per-patch scores ``[B, L]``, or ``[M, B, L]`` for M maps of each image (the curves are then
    ``[M, B, steps+1]``): every map of a batch is done together, and a perturbed image that several maps produce
    (the same patches removed from the same image) is forwarded once. The perturbed images go through the model
    in chunks of ``rows_per_pass``. ``prob_fn(x, rows) -> [R]`` returns the target probability of images ``x``,
    which are perturbed copies of ``images[rows]``. ``start`` / ``end`` (nothing / everything removed) may be
    passed to save two forwards. ``fill(x, keep, seeds) -> x`` replaces the removed pixels (``keep`` = 0), with
    ``seeds`` one int per row derived from ``image_seeds``; default: the mean colour (0). With everything removed
    no pixel is left to impute from, so ``end`` is always the all-mean-colour image. ``tiebreak``: see
    :func:`removal_order`. ``prob_kept(keep, rows)`` (mean-colour removal only) may stand in for ``prob_fn`` with the
    ``[R, L]`` bool patch mask instead of the perturbed images (a model that can skip their patch embedding).
    """
    r = replace(removal or Removal(), **options)
    start, end, fill, tiebreak, image_seeds, rows_per_pass, prob_kept = (
        r.start, r.end, r.fill, r.tiebreak, r.image_seeds, r.rows_per_pass, r.prob_kept)
    one = scores.ndim == 2
    scores = scores[None] if one else scores
    m, b, n = scores.shape
    rows_all = torch.arange(b, device=images.device)
    start = prob_fn(images, rows_all) if start is None else start
    end = prob_fn(torch.zeros_like(images), rows_all) if end is None else end
    counts = [round(f * n) for f in removal_fractions(steps)][1:-1]
    tb = None if tiebreak is None else tiebreak[None].to(scores.device)
    orders = torch.stack([removal_order(scores, True, tb), removal_order(scores, False, tb)]).cpu()
    keys, inverse = _perturbation_rows(orders, counts, image_seeds, fill)
    probs = torch.empty(len(keys))
    grid_h = images.shape[-2] // patch
    for lo in range(0, len(keys), max(1, rows_per_pass)):
        k = keys[lo:lo + rows_per_pass]
        rows = k[:, 0].to(images.device)
        if fill is None and prob_kept is not None:
            probs[lo:lo + len(k)] = prob_kept(k[:, 2:].bool(), rows).float().cpu()
            continue
        keep = patch_keep_to_pixels(k[:, 2:].to(images.device), grid_h, patch).to(images.dtype)
        x = images[rows] * keep if fill is None else fill(images[rows], keep, k[:, 1].tolist())
        probs[lo:lo + len(k)] = prob_fn(x, rows).float().cpu()
    inner = probs[inverse].view(2, m, len(counts), b).permute(0, 1, 3, 2)  # [direction, map, image, step]
    ends = (start.float().cpu().expand(m, b)[..., None], end.float().cpu().expand(m, b)[..., None])
    out = {name: torch.cat([ends[0], inner[i], ends[1]], -1) for i, name in enumerate(("morf", "lerf"))}
    return {k: v[0] for k, v in out.items()} if one else out


def auc(curves):
    """Trapezoid area under ``[B, steps+1]`` curves over removal fractions 0..1."""
    c = curves.double()
    return ((c[:, 1:] + c[:, :-1]) / 2).mean(1).float()


def mean_ci(values):
    """``(mean, half-width of the 95% interval, n)`` of the finite values (normal approximation)."""
    v = torch.as_tensor(values, dtype=torch.float64)
    v = v[torch.isfinite(v)]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    half = 1.96 * float(v.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    return float(v.mean()), half, n


# --- the table of metrics ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A metric: its direction, what it reads besides the map, and how it scores a batch.

    ``score(view)`` returns ``[B]`` floats for a view with ``rel`` (``[B, H, W]`` float maps), ``patch`` and, as
    ``needs`` says, ``mask`` (box pixels), ``parts`` + ``tolerance``, ``other`` (the maps of a random other class)
    or ``curves`` (``morf``, ``lerf``, ``road_morf``, ``road_lerf``: ``[B, steps+1]``). ``signed_only``: it says
    nothing about a method whose maps cannot be negative.
    """

    higher: bool  # higher is better
    needs: str  # "" (the map alone), "box", "parts", "other", "curves" or "road"
    score: object
    about: str
    signed_only: bool = False


def _auc_of(kind):
    return lambda v: auc(v.curves[kind])


def _auc_gap(prefix):
    return lambda v: auc(v.curves[prefix + "lerf"]) - auc(v.curves[prefix + "morf"])


METRICS = {
    "box_share": Metric(True, "box", lambda v: box_share(v.rel, v.mask), "share of positive relevance inside the box"),
    "pointing_game": Metric(True, "box", lambda v: pointing_game(v.rel, v.mask), "the maximum lies in the box"),
    "part_pointing": Metric(True, "parts", lambda v: part_pointing(v.rel, v.parts, v.tolerance),
                            "the maximum lies within tolerance of a visible part"),
    "rank_accuracy": Metric(True, "box", lambda v: rank_accuracy(v.rel, v.mask),
                            "share of the top-K pixels inside the box, K = box area (Arras et al., CLEVR-XAI)"),
    "negative_share": Metric(False, "", lambda v: negative_share(v.rel), "share of |relevance| that is negative",
                             signed_only=True),
    "gini": Metric(True, "", lambda v: gini(v.rel), "concentration of |relevance| (1 = one pixel, 0 = uniform)"),
    "roughness": Metric(False, "", lambda v: roughness(v.rel),
                        "total variation of the max-normalised map (lower is smoother, not more faithful)"),
    "class_sensitivity": Metric(True, "other", lambda v: class_sensitivity(v.rel, v.other, v.patch),
                                "1 − |Spearman ρ| to the map of a random other class (per-patch sums)"),
    "morf_auc": Metric(False, "curves", _auc_of("morf"),
                       "area under the MoRF probability curve (a faithful map drops it fast)"),
    "lerf_auc": Metric(True, "curves", _auc_of("lerf"),
                       "area under the LeRF curve (removing irrelevant patches keeps the prediction)"),
    "lerf_minus_morf": Metric(True, "curves", _auc_gap(""), "the difference, the headline faithfulness score"),
}
ROAD_METRICS = {  # the same curves with ROAD's noisy linear imputation instead of the mean colour
    "road_morf_auc": Metric(False, "road", _auc_of("road_morf"), "MoRF AUC with ROAD's imputation"),
    "road_lerf_auc": Metric(True, "road", _auc_of("road_lerf"), "LeRF AUC with ROAD's imputation"),
    "road_lerf_minus_morf": Metric(True, "road", _auc_gap("road_"), "LeRF − MoRF with ROAD's imputation"),
}
ALL_METRICS = {**METRICS, **ROAD_METRICS}


def directions(metrics):
    """``{metric: True when higher is better}`` (for JSON and the paired statistics)."""
    return {name: m.higher for name, m in metrics.items()}

"""Scores of relevance maps, batched (``[B, H, W]`` maps in model-input pixels).

Localization uses CUB's box and parts mapped into the model input (see :mod:`vitlrp.preprocess`); a pixel
belongs to a box when its centre lies inside it. Faithfulness removes the ViT's own patches in order of their
summed relevance and records the target probability (MoRF: most relevant first, LeRF: least relevant first).
A removed patch is set to 0 in normalized space, i.e. the dataset's mean colour. ROAD (Rong et al. 2022) removes
the same patches in the same order but fills them by noisy linear imputation from the pixels kept, so the
perturbed image stays closer to the data than a flat mean-colour square.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

# metric → True when higher is better
METRICS = {
    "box_share": True,          # share of positive relevance inside the box
    "pointing_game": True,      # the maximum lies in the box
    "part_pointing": True,      # the maximum lies within tolerance of a visible part
    "rank_accuracy": True,      # share of the top-K pixels inside the box, K = box area (Arras et al., CLEVR-XAI)
    "negative_share": False,    # share of |relevance| that is negative
    "gini": True,               # concentration of |relevance| (1 = one pixel, 0 = uniform)
    "morf_auc": False,          # area under the MoRF probability curve (a faithful map drops it fast)
    "lerf_auc": True,           # area under the LeRF curve (removing irrelevant patches keeps the prediction)
    "lerf_minus_morf": True,    # the difference, the headline faithfulness score
}
ROAD_METRICS = {  # the same curves with ROAD's noisy linear imputation instead of the mean colour
    "road_morf_auc": False,
    "road_lerf_auc": True,
    "road_lerf_minus_morf": True,
}
ROAD_NOISE = 0.01  # std of the Gaussian noise added to imputed values (ROAD's default; normalized units)
ALL_METRICS = {**METRICS, **ROAD_METRICS}
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


def _argmax_yx(relevance):
    flat = relevance.flatten(1).argmax(1)
    w = relevance.shape[-1]
    return flat // w, flat % w


def pointing_game(relevance, mask):
    """1 where the most relevant pixel lies inside ``mask``, else 0 (NaN for an empty mask)."""
    y, x = _argmax_yx(relevance)
    rows = torch.arange(len(mask), device=mask.device)
    return _nan_where_empty(mask[rows, y.to(mask.device), x.to(mask.device)].float(), mask)


def part_pointing(relevance, parts, tolerance):
    """1 where the most relevant pixel is within ``tolerance`` pixels of a visible part (NaN: no visible part)."""
    y, x = _argmax_yx(relevance)
    d = torch.hypot(parts[..., 0] - x[:, None].float(), parts[..., 1] - y[:, None].float())
    visible = parts[..., 2] > 0
    hit = ((d <= tolerance) & visible).any(1).float()
    return torch.where(visible.any(1), hit, torch.full_like(hit, math.nan))


def rank_accuracy(relevance, mask):
    """Share of the K most relevant pixels inside ``mask``, with K its pixel count (NaN for an empty mask)."""
    flat, m = relevance.flatten(1), mask.flatten(1).to(relevance.device)
    k = m.sum(1)
    order = flat.argsort(1, descending=True)
    inside_first_k = m.gather(1, order).double().cumsum(1).gather(1, (k - 1).clamp(min=0)[:, None]).squeeze(1)
    return torch.where(k > 0, inside_first_k / k.clamp(min=1), torch.full_like(inside_first_k, math.nan)).float()


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


def linear_impute(images, keep, noise=ROAD_NOISE, generator=None):
    """ROAD's noisy linear imputation of ``[B, C, H, W]`` images where ``keep`` (``[B, 1, H, W]``, 1 = kept) is 0.

    Each missing pixel is the weighted mean of its in-image 8 neighbours (edges 1/6, corners 1/12), missing or not:
    one sparse linear system per image (Rong et al. 2022; the same system as pytorch-grad-cam's
    ``NoisyLinearImputer``), here assembled for the whole batch as one block-diagonal system and solved exactly
    with scipy's sparse LU on the CPU, all channels at once. Imputed pixels then get Gaussian noise of std
    ``noise``. An image with nothing kept has nothing to impute from and is returned as 0 (the mean colour).
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
        filled = filled + noise * torch.randn(filled.shape, generator=generator).to(filled.device) * miss_t
    return torch.where(empty.to(filled.device)[:, None, None, None], torch.zeros_like(filled), filled)


def patch_scores(relevance, patch):
    """Summed relevance per ``patch`` x ``patch`` cell: ``[B, L]`` in row-major patch order."""
    return F.avg_pool2d(relevance[:, None].float(), patch).flatten(1) * patch * patch


def removal_fractions(steps):
    return [s / steps for s in range(steps + 1)]


def keep_mask(images, order, count, patch):
    """``[B, 1, H, W]``: 0 on the first ``count`` patches of each row's ``order``, 1 elsewhere."""
    b, _, h, w = images.shape
    gw = w // patch
    keep = torch.ones(b, (h // patch) * gw, device=images.device)
    if count:
        keep.scatter_(1, order[:, :count].to(images.device), 0.0)
    return keep.view(b, 1, h // patch, gw).repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def perturbed(images, order, count, patch, value=0.0):
    """``images`` with the first ``count`` patches of each row's ``order`` set to ``value``."""
    keep = keep_mask(images, order, count, patch)
    return images * keep + value * (1 - keep)


def road_fill(generator=None, noise=ROAD_NOISE):
    """A ``fill(images, keep)`` for :func:`perturbation_curves`: ROAD's noisy linear imputation."""
    return lambda images, keep: linear_impute(images.float(), keep, noise, generator).to(images.dtype)


@torch.no_grad()
def perturbation_curves(prob_fn, images, scores, patch, steps, start=None, end=None, fill=None):
    """Target probabilities as patches are removed: ``{'morf': [B, steps+1], 'lerf': [B, steps+1]}``.

    ``prob_fn(images) -> [B]`` returns the target probability. ``start`` / ``end`` (the probabilities with
    nothing / everything removed, the same for every method) may be passed to save two forwards.
    ``fill(images, keep) -> images`` replaces the removed pixels (``keep`` = 0); default: the mean colour (0).
    With everything removed no pixel is left to impute from, so ``end`` is always the all-mean-colour image.
    """
    n = scores.shape[1]
    counts = [round(f * n) for f in removal_fractions(steps)]
    start = prob_fn(images) if start is None else start
    end = prob_fn(perturbed(images, scores.argsort(1), n, patch)) if end is None else end
    out = {}
    for name, descending in (("morf", True), ("lerf", False)):
        order = torch.sort(scores, dim=1, descending=descending, stable=True).indices
        cols = [start.float().cpu()]
        for c in counts[1:-1]:
            x = perturbed(images, order, c, patch) if fill is None else fill(images, keep_mask(images, order, c, patch))
            cols.append(prob_fn(x).float().cpu())
        cols.append(end.float().cpu())
        out[name] = torch.stack(cols, 1)
    return out


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

"""Does an explanation show the shortcut a model really uses? Marks, measured reliance and a ROC AUC.

A Clever-Hans dataset (the shortcut mini-CUB of :mod:`vitlrp.synthetic`) puts a small class mark beside each bird
and writes every test bird twice: with its own class's mark and with another class's ("swapped"). Whether the
model relies on the mark is measured, not assumed: on a swapped image it *followed* the mark when it predicts the
mark's class. An explanation of the predicted class that shows what the model uses puts much relevance on the
mark exactly where the model followed it, so the share of positive relevance on the mark separates followed from
not-followed swapped images: ROC AUC 1 for a perfect map, 0.5 for a map unrelated to the model (``random``).

Annotation files (in the CUB folder, beside ``bounding_boxes.txt``; a folder without them is a normal CUB):
``shortcut_boxes.txt`` ``id x y w h`` (CUB's box format, pixels) and ``shortcut_marks.txt`` ``id mark_class
pair_id`` (1-based class id; ``pair_id`` 0 for images without a twin).
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import metrics as M
from .cub import parse_number, parse_numbers, read_keyed
from .errors import UserError

BOXES_FILE = "shortcut_boxes.txt"
MARKS_FILE = "shortcut_marks.txt"
# per-image columns the evaluation adds when the dataset has marks
ROW_FIELDS = ["mark_class", "pair_sample_idx", "swapped", "followed", "mark_share", "mark_pointing"]


@dataclass
class Marks:
    """The shortcut annotations of a CUB folder, one row per image in ``images.txt`` order."""

    boxes: np.ndarray       # [N, 4] x, y, w, h in pixels (NaN where an image has no mark)
    mark_class: np.ndarray  # [N] 0-based class of the mark, -1 for none
    pair_row: np.ndarray    # [N] row of the twin image, -1 for none


def load_marks(ann):
    """The :class:`Marks` of the CUB folder ``ann.root`` (a :class:`~vitlrp.cub.CUBAnnotations`), or None without."""
    f_boxes, f_marks = ann.root / BOXES_FILE, ann.root / MARKS_FILE
    if not f_boxes.is_file() and not f_marks.is_file():
        return None
    row_of = {int(iid): r for r, iid in enumerate(ann.image_ids)}
    n = len(ann.image_ids)
    marks = Marks(np.full((n, 4), np.nan, np.float32), np.full(n, -1, np.int64), np.full(n, -1, np.int64))
    for iid, (no, fields) in read_keyed(f_boxes, 5, "image_id x y width height", image_ids=row_of).items():
        marks.boxes[row_of[iid]] = parse_numbers(f_boxes, no, fields, float)
    rows = read_keyed(f_marks, 3, "image_id mark_class pair_id", image_ids=row_of)
    for iid, (no, (cls, pair)) in rows.items():
        c, pair = parse_number(f_marks, no, cls), parse_number(f_marks, no, pair)
        if not 1 <= c <= ann.num_classes:
            raise UserError(f"{f_marks}:{no}: mark class {c} is outside classes.txt (1..{ann.num_classes})")
        marks.mark_class[row_of[iid]] = c - 1
        if pair:
            if pair not in row_of:
                raise UserError(f"{f_marks}:{no}: image id {pair} is not in images.txt")
            marks.pair_row[row_of[iid]] = row_of[pair]
    for iid, (no, _) in rows.items():  # twins name each other: no image is the twin of two
        pair = marks.pair_row[row_of[iid]]
        if pair >= 0 and marks.pair_row[pair] != row_of[iid]:
            twin = int(ann.image_ids[pair])
            raise UserError(f"{f_marks}:{no}: image id {iid} names {twin} as its pair, but {twin} does not name "
                            f"{iid}; pairs name each other")
    has_box, has_class = np.isfinite(marks.boxes).all(1), marks.mark_class >= 0
    if (has_box != has_class).any():
        r = int(np.flatnonzero(has_box != has_class)[0])
        raise UserError(f"image id {ann.image_ids[r]} is in only one of {f_boxes.name} and {f_marks.name}")
    return marks


def split_marks(marks, dataset):
    """Per item of a :class:`~vitlrp.cub.CUBDataset` split: mark boxes in model-input pixels and pair indices.

    Returns ``{'box': [n, 4] x0, y0, x1, y1 edges, 'mark_class': [n], 'pair': [n] split index of the twin or -1,
    'swapped': [n] bool}``. Image sizes are read from the file headers (no decoding).
    """
    rows = dataset.rows
    index_of = {int(r): i for i, r in enumerate(rows)}
    boxes = np.zeros((len(rows), 4), np.float32)
    for i, r in enumerate(rows):
        if marks.mark_class[r] >= 0:
            try:
                with Image.open(dataset.ann.image_path(r)) as img:
                    width, height = img.size
            except OSError:
                continue  # an unreadable image is reported by the evaluation itself
            boxes[i] = dataset.preprocessing.map_box(marks.boxes[r], width, height)
    mark_class = marks.mark_class[rows]
    labels = dataset.ann.labels[rows]
    pair = np.array([index_of.get(int(marks.pair_row[r]), -1) for r in rows], np.int64)
    swapped = (mark_class >= 0) & (mark_class != labels) & (pair >= 0)
    return {"box": torch.from_numpy(boxes), "mark_class": mark_class, "pair": pair, "swapped": swapped}


def score_batch(relevance, boxes):
    """Share of positive relevance on the mark and the pointing game on it, per map (NaN where no mark)."""
    mask = M.box_mask(boxes.to(relevance.device), relevance.shape[-1])
    rel = relevance.float()
    return {"mark_share": M.box_share(rel, mask).cpu(), "mark_pointing": M.pointing_game(rel, mask).cpu()}


def annotate_rows(rows, split):
    """Add the mark columns that need no map to evaluation rows: mark class, pair, swapped, followed.

    ``followed`` (swapped images only, else empty) is 1 where the prediction is the mark's class: the explained
    ``target`` (the plain model's prediction), the same for every method, not a method's own (patched, bf16) logits.
    """
    for r in rows:
        if r.get("error"):
            continue
        i = r["sample_idx"]
        swapped = bool(split["swapped"][i])
        r.update(mark_class=int(split["mark_class"][i]), pair_sample_idx=int(split["pair"][i]), swapped=int(swapped),
                 followed=int(r["target"] == split["mark_class"][i]) if swapped else "")
    return rows


def roc_auc(scores, labels):
    """ROC AUC of ``scores`` for binary ``labels`` (Mann-Whitney U, ties count half); NaN without both classes."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # average ranks over ties (1-based)
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auc(scores, labels, n_boot=1000, seed=0, level=0.95):
    """``(auc, low, high)``: the AUC and its percentile bootstrap interval over resampled images (seeded)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    point = roc_auc(s, y)
    if not math.isfinite(point) or n_boot <= 0:
        return point, math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(s), size=(n_boot, len(s)))
    values = np.array([roc_auc(s[i], y[i]) for i in idx])
    values = values[np.isfinite(values)]  # a resample with one class only has no AUC
    if len(values) == 0:
        return point, math.nan, math.nan
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


def _mean(values):
    v = [x for x in values if x != "" and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def summarize(rows, methods, n_boot=1000, seed=0):
    """Per method: how often the model followed the swapped mark, mark share and pointing, and the AUC."""
    summary = {}
    for method in methods:
        ok = [r for r in rows if r["method"] == method and not r.get("error")]
        swapped = [r for r in ok if r["swapped"] and math.isfinite(r["mark_share"])]
        followed = [r["followed"] for r in swapped]
        auc, lo, hi = bootstrap_auc([r["mark_share"] for r in swapped], followed, n_boot, seed)
        summary[method] = {
            "n_images": len(ok), "n_swapped": len(swapped), "n_followed": int(sum(followed)),
            "mark_share": _mean([r["mark_share"] for r in ok]),
            "mark_pointing": _mean([r["mark_pointing"] for r in ok]),
            "mark_share_followed": _mean([r["mark_share"] for r in swapped if r["followed"]]),
            "mark_share_not_followed": _mean([r["mark_share"] for r in swapped if not r["followed"]]),
            "auc": auc, "auc_low": lo, "auc_high": hi,
        }
    return summary


CSV_FIELDS = ["method", "n_images", "n_swapped", "n_followed", "mark_share", "mark_pointing", "mark_share_followed",
              "mark_share_not_followed", "auc", "auc_low", "auc_high"]


def table_lines(summary):
    """The console table: reliance first, then one row per method."""
    # a method whose map has no positive relevance on an image leaves that image out: count from the fullest
    fullest = max(summary.values(), key=lambda v: v["n_swapped"])
    n, k = fullest["n_swapped"], fullest["n_followed"]
    lines = [f"Shortcut: on {n} swapped-mark test images the model followed the mark {k} times "
             f"({k / n:.0%})" if n else "Shortcut: no swapped-mark test images were scored",
             f"{'method':<22}{'mark_share':>11}{'mark_point':>11}{'share|followed':>15}{'share|not':>10}"
             f"{'AUC [95% CI]':>22}"]
    lines.append("-" * len(lines[1]))
    for method, s in summary.items():
        auc = (f"{s['auc']:.3f} [{s['auc_low']:.2f}, {s['auc_high']:.2f}]" if math.isfinite(s["auc"])
               else "n/a (one class)")
        lines.append(f"{method:<22}{s['mark_share']:>11.3f}{s['mark_pointing']:>11.3f}"
                     f"{s['mark_share_followed']:>15.3f}{s['mark_share_not_followed']:>10.3f}{auc:>22}")
    return lines


def pick_pairs(split, predicted, n, seed=0):
    """Up to ``n`` swapped split indices, half where the model followed the mark (seeded), the rest where not.

    ``predicted``: split index → predicted class, for the swapped images. Returns ``[(index, followed)]``.
    """
    import random

    swapped = sorted(predicted)
    followed = [i for i in swapped if predicted[i] == split["mark_class"][i]]
    kept = [i for i in swapped if predicted[i] != split["mark_class"][i]]
    rng = random.Random(seed)
    a = rng.sample(followed, min(len(followed), max(n - len(kept), (n + 1) // 2)))
    b = rng.sample(kept, min(len(kept), n - len(a)))
    return [(i, True) for i in sorted(a)] + [(i, False) for i in sorted(b)]

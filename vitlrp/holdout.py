"""The validation split: a seeded, stratified share of the training images, held out to choose the best epoch.

Choosing the best epoch on the test split and then explaining and scoring that split would tune the model to it; the
held-out images are never trained on and only pick the epoch. Per class with ``n`` training images,
``round(fraction * n)`` of them (rounded half up) are held out, at least 1 when ``n >= 2`` and at most ``n - 1`` (every
class keeps a training image); which ones is drawn per class under ``seed``. Fraction 0 holds out nothing, and the
best epoch is then picked on the test split.

A checkpoint records the split as ``val_split``: ``{"fraction", "seed", "image_ids"}`` (the sorted CUB image ids held
out), so a resumed run holds out the same images.
"""
import math
from dataclasses import dataclass

import numpy as np

from .errors import UserError

_STREAM = 0x7661_6C  # keeps the split's random stream apart from the other streams drawn from the same seed


@dataclass(frozen=True)
class Split:
    """Positions in the train split (``images.txt`` order): those trained on and those held out (both sorted)."""

    train: np.ndarray
    val: np.ndarray
    record: dict

    @property
    def picks_on(self):
        """The split whose top-1 picks the best epoch: ``'val'``, or ``'test'`` when nothing is held out."""
        return "val" if len(self.val) else "test"


def held_out_positions(labels, fraction, seed):
    """The sorted positions of ``labels`` to hold out: per class ``round(fraction * n)``, >= 1 when ``n >= 2``, < n."""
    labels = np.asarray(labels)
    if not fraction:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM,)))
    chosen = []
    for cls in np.unique(labels):  # ascending class order: the draws do not depend on the order of the files
        members = np.flatnonzero(labels == cls)
        n = len(members)
        k = min(max(math.floor(fraction * n + 0.5), 1 if n >= 2 else 0), n - 1)
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _split(ann, val, fraction, seed):
    rows = ann.split_indices("train")
    train = np.setdiff1d(np.arange(len(rows)), val)
    ids = sorted(int(i) for i in ann.image_ids[rows[val]])
    return Split(train, np.asarray(val, dtype=np.int64), {"fraction": float(fraction), "seed": int(seed),
                                                           "image_ids": ids})


def make_split(ann, fraction, seed):
    """Hold out ``fraction`` of ``ann``'s training images, stratified by class, drawn under ``seed``."""
    rows = ann.split_indices("train")
    split = _split(ann, held_out_positions(ann.labels[rows], fraction, seed), fraction, seed)
    if fraction and not len(split.val):
        raise UserError(f"val_fraction {fraction} holds out no image of {ann.root}: no class has 2 training images; "
                        "set val_fraction to 0 to pick the best epoch on the test split", setting="val_fraction")
    return split


def split_from_record(ann, record, where):
    """The split a checkpoint recorded (``where`` names it), checked against ``ann``'s training images."""
    try:
        fraction, seed, ids = float(record["fraction"]), int(record["seed"]), [int(i) for i in record["image_ids"]]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids")
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where} holds an unreadable val_split record {record!r}") from None
    rows = ann.split_indices("train")
    position = {int(i): p for p, i in enumerate(ann.image_ids[rows])}
    unknown = [i for i in ids if i not in position]
    if unknown:
        raise UserError(f"{where} held out image id {unknown[0]}, which is not a training image of {ann.root} "
                        f"({len(unknown)} such ids): the dataset changed since that run")
    return _split(ann, np.sort(np.array([position[i] for i in ids], dtype=np.int64)), fraction, seed)


def picked_on(rows):
    """Which split picked the best epoch of a run whose ``summary.csv`` rows are ``rows``: ``'val'`` or ``'test'``."""
    return "val" if rows and rows[0].get("val_top1") not in (None, "") else "test"


def best_row(rows):
    """The row of the best epoch: the first with the highest val top-1 (test top-1 when nothing was held out)."""
    if not rows:
        return None
    key = "val_top1" if picked_on(rows) == "val" else "top1"
    return max(rows, key=lambda r: float(r[key]))  # max keeps the first of equal rows, as the run did

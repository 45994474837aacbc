"""Adebayo et al. 2018's data randomization test: a model trained by the same recipe on permuted training labels
cannot have learned which image shows which class, so a map that explains what a model learned must differ from the
real model's map of the same class on the same image.

- :func:`permute_labels`: the training images' labels permuted (seeded; each class keeps its count of training
  images, and about one image in C keeps its own label by chance). Test labels stay true, so such a model's test
  accuracy shows the permutation worked: it is at chance.
- :func:`check_pair`: the real and the random-label checkpoint can be compared (same architecture and input size,
  trained on the same classes, only the second on permuted labels); one UserError line else.
- :func:`compare_batch`: per image and method every measure of :func:`.similarity.similarity` between the map of the
  explained class on the real model and on the random-label model (the test ``data_randomization``).
- :func:`verdicts`: the threshold verdict of :mod:`.verdicts` (pass when the 95% interval of |ρ| lies below
  ``RANDOMIZATION_MULTIPLE`` × the chance |ρ|, at patch and pixel level) and the paired verdict against the gradient
  baselines.
"""
import dataclasses
import math

import numpy as np

from ..errors import UserError
from .runner import query_maps
from .similarity import LEVELS, MEASURES, similarity
from .verdicts import (
    RANDOMIZATION_MULTIPLE,
    WORDS,
    chance_abs_rho,
    combine,
    find,
    level_verdicts,
    paired_verdict,
    per_image,
    plus_minus,
)
from .verdicts import summarize as summarize_rows

TEST = "data_randomization"
PERMUTE_KEY = 0x5EED_1AB  # mixed with the training seed: the permutation is not the draw of any other seeded choice
ROW_FIELDS = ["method", "sample_idx", "label", "target", "predicted", "random_predicted", "test", *MEASURES]


def permute_labels(ann, seed):
    """``ann`` with the labels of its training images permuted under ``seed`` (a copy; test labels unchanged)."""
    train = ann.split_indices("train")
    labels = ann.labels.copy()
    labels[train] = labels[train][np.random.default_rng([seed, PERMUTE_KEY]).permutation(len(train))]
    return dataclasses.replace(ann, labels=labels)


def permuted(ckpt):
    """Whether a checkpoint's model was trained on permuted labels (as its recorded config says)."""
    return bool(ckpt.get("config", {}).get("PERMUTE_LABELS", False))


def check_pair(real, random, real_path, random_path):
    """One UserError line unless ``random`` (a checkpoint trained on permuted labels) can stand beside ``real``."""
    if permuted(real):
        raise UserError(f"{real_path} was trained on permuted labels: pass the real model (trained on the true "
                        "labels) first and the random-label model second")
    if not permuted(random):
        raise UserError(f"{random_path} was not trained on permuted labels: train a model by the real model's "
                        "recipe on permuted labels and pass its checkpoint", fix="permute_labels")
    for key, what in (("arch", "architecture"), ("image_size", "input size"), ("class_names", "classes")):
        if real[key] != random[key]:
            raise UserError(f"{real_path} and {random_path} differ in their {what}: the random-label model must be "
                            "trained by the real model's recipe on the same dataset")


def recipe_notes(real, random, keys):
    """The recipe settings (``keys``) in which the two checkpoints' recorded configs differ."""
    a, b = real.get("config", {}), random.get("config", {})
    return [k for k in keys if k in a and k in b and a[k] != b[k]]


def compare_batch(real_methods, random_methods, c, patch, random_forward):
    """Rows of :data:`TEST` for a :class:`~vitlrp.sanity.runner.Compared` batch: each method's map of the explained
    class on the real model (``real_methods``, entered) against its map on the random-label model
    (``random_methods``); ``random_predicted``: the random-label model's prediction. ``random`` draws a fresh map
    for the second model: two unrelated draws, the chance level."""
    b = c.batch
    real = query_maps(real_methods, b.images, c.target, b.ids)
    other = query_maps(random_methods, b.images, c.target, b.ids, query=1)
    predicted = random_forward(b.images).argmax(1).tolist()
    rows = []
    for name, m in real.items():
        rows += c.rows(name, TEST, "", similarity(m, other[name], patch), random_predicted=predicted)
    return rows


def summarize(rows, names):
    """The rows of ``data_randomization.csv`` (sanity.csv's columns): per method and measure, the mean over the
    images and its 95% t interval (:func:`~vitlrp.sanity.verdicts.summarize`)."""
    return summarize_rows(rows, names, [], (), pairs=[(TEST, "")])


def verdicts(summary, rows, names, patches):
    """``{method: {threshold: {verdict, levels, threshold, chance, multiple}, paired: {verdict, levels}}}``."""
    chance = chance_abs_rho(patches)
    threshold = RANDOMIZATION_MULTIPLE * chance
    paired = {level: paired_verdict(per_image(rows, TEST, measure), names) for level, measure in LEVELS.items()}
    out = {}
    for name in names:
        levels, word = level_verdicts(summary, name, TEST, "", threshold)
        mine = {level: paired[level][name] for level in LEVELS}
        out[name] = {"threshold": dict(verdict=word, levels=levels, threshold=threshold, chance=chance,
                                       multiple=RANDOMIZATION_MULTIPLE),
                     "paired": dict(verdict=combine(v["verdict"] for v in mine.values()), levels=mine)}
    return out


def lines(found, summary):
    """The console summary: per method |ρ| at patch and pixel level, SSIM, the verdict and the paired verdict."""
    out = [f"{'method':<18} {'|ρ| patch':>11} {'|ρ| pixel':>11} {'SSIM':>11}  {'verdict':<9} {'paired':<9}"]
    for name, v in found.items():
        lv = v["threshold"]["levels"]
        ssim = find(summary, name, TEST, "", "ssim") or dict(mean=math.nan, ci95=math.nan)
        cells = [plus_minus(m["mean"], m["ci95"]) for m in (lv["patch"], lv["pixel"], ssim)]
        out.append(f"{name[:18]:<18} {cells[0]:>11} {cells[1]:>11} {cells[2]:>11}  "
                   f"{WORDS[v['threshold']['verdict']]:<9} {WORDS[v['paired']['verdict']]:<9}")
    t = next(iter(found.values()))["threshold"]
    out.append(f"pass: the 95% interval of |ρ| (real vs random-label model) lies below {t['multiple']:g} × chance "
               f"{t['chance']:.3f} = {t['threshold']:.3f} at both levels; paired: vs the gradient baselines.")
    return out

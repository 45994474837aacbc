"""The functions a researcher calls: a model, a map, its scores. Method names are strings
(:func:`list_methods`), the same the scripts take."""
from typing import NamedTuple

import torch

from . import metrics as M
from .batch import Batch
from .families import family_of
from .methods import Attribution, create_method
from .models import build_model as build_any
from .models import model_from_checkpoint, read_checkpoint
from .scoring import ModelForward, Scorer, ScoreSettings

# what score() computes by default: the metrics that need nothing but the model, the images and the maps
DEFAULT_METRICS = ("morf_auc", "lerf_auc", "lerf_minus_morf", "negative_share", "gini", "roughness")


def build_model(name, num_classes, image_size=0):
    """A randomly initialised model, in eval mode: of the model table (``vit_tiny``, ``vit_b_16``, ...; torchvision's
    init: its head is zero, so every map of an untrained model is zero), ``timm:<name>`` (timm's init) or
    ``hf:<Hub id or folder>`` (a ViT or DeiT classifier of that configuration)."""
    return build_any(name, num_classes, image_size).eval()


class Checkpoint(NamedTuple):
    """A trained model (eval mode, on the CPU), the preprocessing its inputs need and its class names."""

    model: torch.nn.Module
    preprocessing: object
    class_names: list


def load_checkpoint(path):
    """The :class:`Checkpoint` of a file written by ``scripts/train_vit_cub.py`` (loaded with
    ``weights_only=True``; every way the file can be wrong is one :class:`~vitlrp.errors.UserError`)."""
    ckpt = read_checkpoint(path)
    model, preprocessing = model_from_checkpoint(ckpt)
    return Checkpoint(model, preprocessing, list(ckpt["class_names"]))


def explain(model, x, target=None, method="balanced", settings=None):
    """The :class:`~vitlrp.methods.Attribution` of images ``x`` (``[B, 3, H, W]``, normalised as the model
    expects) by one method: ``.relevance`` ``[B, H, W]``, ``.logits``, ``.target``. ``target``: one class per image,
    one for all, or None for the predicted class; ``method``: a name of :func:`list_methods` (``'balanced'``,
    ``'gamma:1:linear:0.5:0'``, ``'gradcam'`` ...); ``settings``: :class:`~vitlrp.methods.MethodSettings`."""
    with create_method(method, model, settings) as m:
        return m.attribute(x, target)


def score(model, x, maps, target, metrics=DEFAULT_METRICS, settings=None):
    """``{metric: [B] float tensor}`` of the maps ``[B, H, W]`` (or an :class:`~vitlrp.methods.Attribution`) of
    images ``x`` explained for ``target`` (``[B]`` classes, or None for the predicted ones), with the evaluation's
    own code (NaN where a metric is undefined, e.g. an empty map). ``metrics``: names of :data:`METRICS` that need
    no box or parts (the default); ``settings``: a :class:`~vitlrp.scoring.ScoreSettings` (the patch size defaults to
    the model's)."""
    relevance = maps.relevance if isinstance(maps, Attribution) else maps
    unknown = [m for m in metrics if m not in M.ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}: choose from {', '.join(M.ALL_METRICS)}")
    param = next(model.parameters())
    forward = ModelForward(model, param.dtype, param.device)
    n = len(x)
    raw = {"image": x, "label": torch.zeros(n, dtype=torch.long), "index": torch.arange(n), "error": [""] * n,
           "box": torch.full((n, 4), float("nan")), "parts": torch.zeros(n, 1, 3)}
    b = Batch.of(raw, param.device, forward)
    target = b.logits.argmax(1) if target is None else torch.as_tensor(target, device=param.device).reshape(-1)
    settings = settings or ScoreSettings(family_of(model).patch_size(model))
    rows, _ = Scorer(b, target.expand(n), forward, settings).score(
        {"maps": (b.logits, relevance.to(param.device))}, {m: M.ALL_METRICS[m] for m in metrics})
    return {m: torch.tensor([r.get(m, float("nan")) for r in rows["maps"]]) for m in metrics}



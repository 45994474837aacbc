"""Scoring the maps of every method on one batch with every metric of :data:`vitlrp.metrics.METRICS`.

:class:`Scorer` holds what the methods of one :class:`~vitlrp.batch.Batch` share: the class each map explains,
the probabilities the perturbation curves start and end at (one forward each for all methods), and the seeded
random ranks that break ties between patches of equal relevance. :meth:`Scorer.score` then scores the maps of all
methods together: their perturbation curves in one chunked pass over the distinct perturbed images.

One rule for maps without any evidence (every pixel the same, e.g. an all-zero Grad-CAM): the image leaves *all* of
that method's metrics (NaN in its row, ``empty`` = 1, counted per method as ``n_empty``). A uniform map has no
ranking, no location and no class, so no metric can say anything true about it: scored, it would count as a miss in
one metric, as chance in another and as perfectly smooth in a third. Maps or logits with NaN or inf are not scored
either: their row carries the error.
"""
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from . import metrics as M
from .batch import Batch
from .families import forward_logits
from .runtime import ROAD_NOISE_KEY, image_seed


@dataclass(frozen=True)
class ScoreSettings:
    """How maps are scored: the model's patch size, the curves' steps, the part radius, ROAD, the seed of the
    per-image random draws (tie-breaks, ROAD's noise) and the rows per perturbation forward."""

    patch: int
    steps: int = 10
    tolerance: float = 15.0
    road: bool = False
    seed: int = 0
    rows_per_pass: int = 64


class ModelForward:
    """No-grad forwards of a model to fp32 logits: of images, and, for a torchvision ViT whose patch embedding is a
    conv with kernel = stride, of patch tokens. A patch set to the mean colour (0 after normalisation) embeds to the
    conv's bias alone, so a perturbed image's tokens are the clean image's tokens with the bias where patches were
    removed: the perturbation curves skip the patch embedding of every perturbed image (the same logits)."""

    def __init__(self, model, dtype, device):
        self.model, self.dtype, self.device = model, dtype, device
        conv = getattr(model, "conv_proj", None)
        self.tokens_ok = (conv is not None and hasattr(model, "_process_input") and hasattr(model, "class_token")
                          and conv.kernel_size == conv.stride and conv.padding in (0, (0, 0)))

    @torch.no_grad()
    def __call__(self, images):
        return forward_logits(self.model, images.to(self.device, self.dtype)).float()

    @torch.no_grad()
    def patch_tokens(self, images):
        """``([B, L, D] tokens, [D] the embedding of a removed patch)``, or None for a model without them."""
        if not self.tokens_ok:
            return None
        bias = self.model.conv_proj.bias
        tokens = self.model._process_input(images.to(self.device, self.dtype))
        return tokens, bias if bias is not None else torch.zeros_like(tokens[0, 0])

    @torch.no_grad()
    def from_tokens(self, tokens):
        """Logits from patch tokens, as torchvision's ``VisionTransformer.forward`` goes on after the embedding."""
        x = torch.cat([self.model.class_token.expand(len(tokens), -1, -1), tokens], dim=1)
        return self.model.heads(self.model.encoder(x)[:, 0]).float()


def model_in(model, dtype, device):
    """``(model in dtype, forward)``: a pure-``dtype`` copy when not fp32, and its :class:`ModelForward`."""
    plain = model if dtype == torch.float32 else model.to(dtype)
    return plain, ModelForward(plain, dtype, device)


def failed_rows(batch, names):
    """One error row per method name for every sample of a :class:`~vitlrp.batch.Batch` that could not be read."""
    return [{"method": n, "sample_idx": i, "label": label, "error": err} for i, label, err in batch.failed()
            for n in names]


def nonfinite_error(relevance, logits):
    """The error message of a sample whose map or logits hold NaN or inf (e.g. NaN weights, an overflow), else ''."""
    bad = int((~torch.isfinite(relevance)).sum())
    if bad == 0 and bool(torch.isfinite(logits).all()):
        return ""
    what = f"{bad} of {relevance.numel()} relevance values" if bad else "the logits"
    return (f"non-finite map: {what} are NaN or inf (broken weights or an overflow; try fp32 instead of bf16 or a "
            "smaller gamma, and check the checkpoint)")


def empty_maps(relevance):
    """``[B]`` bool: maps without any evidence, every pixel the same value (all zero, say)."""
    flat = relevance.flatten(1)
    return flat.max(1).values == flat.min(1).values


class Scorer:
    """Scoring the maps of one :class:`~vitlrp.batch.Batch` (with its plain ``logits``) explained for ``target``
    (``[B]`` classes): what the perturbation curves start and end at, the patch tokens they may start from, and
    :meth:`score`."""

    def __init__(self, batch, target, forward, settings):
        """``forward``: a :class:`ModelForward`; ``settings``: a :class:`ScoreSettings`."""
        self.batch, self.target, self.forward, self.settings = batch, target, forward, settings
        self.images, self.ids, self.ok = batch.images, batch.ids, batch.ok
        rows = torch.arange(len(batch.ok), device=batch.images.device)
        self.start = self._target_prob(batch.logits, rows)
        self.end = self.prob(torch.zeros_like(batch.images), rows)
        self.tokens = forward.patch_tokens(batch.images)
        self.other = batch.other_classes(target, settings.seed)[1]  # a random other class per image, as the sanity
        #                                                               checks draw it (class_sensitivity)

    def _target_prob(self, logits, rows):
        return logits.softmax(1).gather(1, self.target[rows].view(-1, 1)).squeeze(1)

    def prob(self, x, rows):
        """Probability of the target class of images ``rows`` for their (perturbed) copies ``x``."""
        return self._target_prob(self.forward(x), rows)

    def prob_kept(self, keep, rows):
        """Probability of the target class of images ``rows`` with the patches where ``keep`` ([R, L] bool) is
        False set to the mean colour, from their patch tokens (see :class:`ModelForward`)."""
        tokens, removed = self.tokens
        x = torch.where(keep[..., None].to(tokens.device), tokens[rows], removed)
        return self._target_prob(self.forward.from_tokens(x), rows)

    def tiebreak(self, n):
        """``[B, n]`` random ranks of the patches, seeded per image: the order among patches of equal relevance."""
        return torch.stack([torch.rand(n, generator=torch.Generator().manual_seed(image_seed(self.settings.seed, i)))
                            for i in self.ids])

    def score(self, maps, metrics=M.METRICS):
        """Score ``maps`` (method name → ``(logits, relevance [B, H, W])`` for the readable samples, plus the maps of
        :attr:`other` as a third item when a metric needs them).

        Returns ``(rows, curves)``: per method the per-image row dicts (metrics, the explained logit, the relevance
        sum, ``empty``, ``no_box``, ``error``) and the curves ``{kind: [B_finite, steps+1]}`` of its scored maps.
        """
        names = list(maps)
        s = self.settings
        rel, errors, empty = {}, {}, {}
        for n, (logits, relevance, *_) in maps.items():
            errors[n] = [nonfinite_error(relevance[k], logits[k]) for k in range(len(self.ok))]
            rel[n] = torch.nan_to_num(relevance.float(), nan=0.0, posinf=0.0, neginf=0.0)
            empty[n] = (empty_maps(rel[n]) & torch.tensor([not e for e in errors[n]], device=rel[n].device)).cpu()
        curves = self._curves([rel[n] for n in names], {m.needs for m in metrics.values()})
        view = SimpleNamespace(mask=M.box_mask(self.batch.annotation("box"), self.images.shape[-1]),
                               parts=self.batch.annotation("parts"), tolerance=s.tolerance, patch=s.patch)
        rows, kept = {}, {}
        for j, n in enumerate(names):
            view.rel, view.curves = rel[n], {k: c[j] for k, c in curves.items()}
            view.other = torch.nan_to_num(maps[n][2].float()) if len(maps[n]) > 2 else None
            values = {name: m.score(view).float().cpu().masked_fill(empty[n], float("nan"))
                      for name, m in metrics.items()}
            rows[n] = self._rows(maps[n][0], maps[n][1], values, errors[n], empty[n], view.mask)
            scored = torch.tensor([not e for e in errors[n]], dtype=torch.bool) & ~empty[n]
            kept[n] = {k: c[scored] for k, c in view.curves.items()}
        return rows, kept

    def _curves(self, rels, needs):
        """``{kind: [M, B, steps+1]}`` of the maps ``rels`` (one per method) for the curve kinds ``needs`` asks."""
        s, out = self.settings, {}
        if not needs & {"curves", "road"}:
            return out
        scores = torch.stack([M.patch_scores(r, s.patch) for r in rels])
        tiebreak = self.tiebreak(scores.shape[-1]).to(scores.device)
        common = M.Removal(start=self.start, end=self.end, tiebreak=tiebreak, rows_per_pass=s.rows_per_pass)
        if "curves" in needs:
            kept = self.prob_kept if self.tokens is not None else None
            out.update(M.perturbation_curves(self.prob, self.images, scores, s.patch, s.steps, common,
                                             prob_kept=kept))
        if "road" in needs:
            seeds = [image_seed(s.seed, i, ROAD_NOISE_KEY) for i in self.ids]
            road = M.perturbation_curves(self.prob, self.images, scores, s.patch, s.steps, common,
                                         fill=M.road_fill(), image_seeds=seeds)
            out.update(road_morf=road["morf"], road_lerf=road["lerf"])
        return out

    def _rows(self, logits, relevance, values, errors, empty, mask):
        sums = relevance.double().sum((1, 2)).cpu()
        explained = logits.gather(1, self.target.view(-1, 1).to(logits.device)).squeeze(1).cpu()
        has_box = mask.flatten(1).any(1).cpu()  # False: NaN, outside the image, negative size or cropped away
        out = []
        for k, row in enumerate(self.ok):
            entry = dict(sample_idx=self.ids[k], label=int(self.batch.raw["label"][row]), target=int(self.target[k]),
                         predicted=int(logits[k].argmax()))
            entry["correct"] = int(entry["predicted"] == entry["label"])
            if errors[k]:  # a NaN map would score as NaN and silently drop out of the means
                out.append({**entry, "error": errors[k]})
                continue
            entry.update({name: float(v[k]) for name, v in values.items()})
            entry.update(relevance_sum=float(sums[k]), explained_logit=float(explained[k]), empty=int(empty[k]),
                         error="", no_box=not bool(has_box[k]))
            out.append(entry)
        return out


@dataclass(frozen=True)
class ScoringRun:
    """How every batch of a run is scored: the plain ``forward`` (:class:`ModelForward`), which class the maps
    explain (``target_mode``: ``'pred'`` or ``'label'``), the device, the :class:`ScoreSettings` and the metrics."""

    forward: object
    target_mode: str
    device: object
    settings: ScoreSettings
    metrics: dict = field(default_factory=lambda: dict(M.METRICS))

    def scorer(self, b):
        """The :class:`Scorer` of a :class:`~vitlrp.batch.Batch` with readable images."""
        return Scorer(b, b.targets(self.target_mode), self.forward, self.settings)


def score_batches(batches, run, explain, names, extra=None, progress=None):
    """Explain and score every batch: ``(rows, curves)`` over all of them.

    ``run``: a :class:`ScoringRun`; ``explain(s)`` returns ``{name: (logits, relevance)}`` for a :class:`Scorer`
    ``s`` (method names ``names``); ``extra(s, maps, rows)`` may add columns to the rows of a batch; ``progress`` (a
    tqdm bar) is advanced by the images of each batch. Unreadable images get one error row per name.
    """
    rows, curves = [], {n: {} for n in names}
    for batch in batches:
        b = Batch.of(batch, run.device, run.forward)
        rows += failed_rows(b, names)
        if b.ok:
            s = run.scorer(b)
            maps = explain(s)
            scored, kept = s.score(maps, run.metrics)
            if extra is not None:
                extra(s, maps, scored)
            for n in names:
                rows += [{"method": n, **r} for r in scored[n]]
                for kind, c in kept[n].items():
                    curves[n].setdefault(kind, []).append(c)
        if progress is not None:
            progress.update(len(b))
    return rows, curves

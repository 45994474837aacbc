"""Every sanity check on one batch of readable images.

Checks (one image, one method; the explained class is the prediction or the label):

- ``class_runner_up`` / ``class_random`` (Sixt et al. 2020, "When Explanations Lie: Why Many Modified BP
  Attributions Fail"): the map of the explained class against the map of the runner-up class (the highest other
  logit) and of a seeded random other class (:func:`.draws.other_classes`). Rules that lean on positive weights (z⁺, αβ,
  large γ in the limit) converge to the same map for every class.
- ``randomization`` (Adebayo et al. 2018): cascading top-down randomization of the parameters (:func:`.cascade`,
  steps ``head``, ``block_{L-1}`` … ``block_0``, ``embedding``), the original map against each step's map of the
  same class. Binder et al. 2023, "Shortcomings of Top-Down Randomization-Based Sanity Checks for Evaluations of
  Deep Neural Network Explanations", show that the randomized network keeps the scale of its activations and part
  of the input's structure, so this check cannot rank methods finely: read its numbers beside the class check.
- ``noise`` (the "higher γ, less noise" claim): seeded noisy copies of the model input (:func:`.noisy_copy`),
  their maps against the clean map; a copy whose prediction changes is skipped and counted.
  σ = 0.25 in normalised units (about 6% of a pixel's range) by default: at 0.05 every method but ``random`` keeps
  ρ ≥ 0.99 on the mini-CUB, nothing to tell apart; at 0.25 (200 images) 8 of 600 copies change the prediction and
  Input×Gradient (ρ 0.93) parts from AttnLRP (0.96 at every γ).
"""
import copy
import math
from contextlib import ExitStack
from dataclasses import dataclass, replace

from ..runtime import FRESH_DRAW_KEY, image_seed
from .draws import noisy_copy
from .randomization import cascade
from .similarity import MEASURES, similarity

ROW_FIELDS = ["method", "sample_idx", "label", "target", "predicted", "test", "step", "other_class", "copies",
              "skipped", *MEASURES]
FRESH_FAMILIES = ("baselines",)  # methods that draw their map: a fresh draw per query, the chance level


@dataclass(frozen=True)
class Settings:
    """The checks' settings: the model's patch size, the seed, noisy copies per image and their σ (normalised
    input units)."""

    patch: int
    seed: int = 0
    noise_samples: int = 3
    noise_std: float = 0.25


@dataclass(frozen=True)
class CheckRun:
    """What every batch of a run is checked with: the methods (:class:`~vitlrp.methods.MethodChoice`), their
    :class:`~vitlrp.methods.MethodSettings`, the model, its plain ``forward`` (images → float32 logits) and the
    checks' :class:`Settings`."""

    methods: list
    method_settings: object
    model: object
    forward: object
    settings: Settings


@dataclass
class Compared:
    """A :class:`~vitlrp.batch.Batch` with the classes the checks compare: explained, runner-up, random other."""

    batch: object
    target: object
    runner_up: object = None
    random_other: object = None

    @classmethod
    def of(cls, b, target_mode, seed):
        target = b.targets(target_mode)
        return cls(b, target, *b.other_classes(target, seed))

    def rows(self, name, test, step, measures, **extra):
        """Per-image rows of one comparison (``positions`` in ``extra``: the rows ``measures`` are for)."""
        b = self.batch
        positions = extra.pop("positions", range(len(b.ids)))
        pred = b.logits.argmax(1)
        out = []
        for j, k in enumerate(positions):
            row = dict(method=name, sample_idx=b.ids[k], label=int(b.labels[k]), target=int(self.target[k]),
                       predicted=int(pred[k]), test=test, step=step, other_class="", copies="", skipped="")
            row.update({key: (v[j] if isinstance(v, list) else v) for key, v in extra.items()})
            row.update({m: float(measures[m][j]) for m in MEASURES})
            out.append(row)
        return out


def query_maps(methods, x, target, ids, query=0):
    """``{name: relevance}`` of entered methods. A method of :data:`FRESH_FAMILIES` (``random``) draws a new map for
    each ``query`` (seeded by the run's seed and the query, then per image as usual): the similarity of two
    unrelated maps, the chance level of every measure. With one draw per image it would show the same map for every
    class and model, which says nothing about them."""
    out = {}
    for m in methods:
        if query and m.family in FRESH_FAMILIES:
            m = copy.copy(m)
            m.settings = replace(m.settings, seed=image_seed(m.settings.seed, 0, FRESH_DRAW_KEY, query))
        out[m.name] = m.attribute(x, target, ids).relevance
    return out


def class_rows(methods, c, clean, s):
    """The class check: the clean maps against the maps of the runner-up and of the random other class."""
    rows, maps = [], {}
    b = c.batch
    for query, (test, other) in enumerate((("class_runner_up", c.runner_up), ("class_random", c.random_other)), 1):
        maps[test] = query_maps(methods, b.images, other, b.ids, query)
        for name, m in maps[test].items():
            rows += c.rows(name, test, "", similarity(clean[name], m, s.patch), other_class=other.tolist())
    return rows, maps


def noise_rows(methods, forward, c, clean, s):
    """The noise check: per image and method the mean of each measure over the kept noisy copies (``copies``);
    a copy whose prediction differs from the clean one is skipped (``skipped``). Images with no kept copy get a row
    with ``copies`` 0 and NaN measures, which :func:`~vitlrp.sanity.verdicts.summarize` leaves out."""
    b = c.batch
    pred = b.logits.argmax(1)
    names = [m.name for m in methods]
    per = {n: {m: [[] for _ in b.ids] for m in MEASURES} for n in names}
    kept = [0] * len(b.ids)
    for k in range(s.noise_samples):
        noisy = noisy_copy(b.images, b.ids, s.seed, k, s.noise_std)
        same = (forward(noisy).argmax(1) == pred).nonzero().flatten().tolist()
        if not same:
            continue
        maps = query_maps(methods, noisy[same], c.target[same], [b.ids[j] for j in same], 10 + k)
        for name, m in maps.items():
            sim = similarity(clean[name][same], m, s.patch)
            for j, pos in enumerate(same):
                for measure in MEASURES:
                    per[name][measure][pos].append(sim[measure][j])
        for pos in same:
            kept[pos] += 1
    rows = []
    for name in names:
        means = {m: [_nanmean(v) for v in per[name][m]] for m in MEASURES}
        rows += c.rows(name, "noise", "", means, copies=kept, skipped=[s.noise_samples - n for n in kept])
    return rows


def _nanmean(values):
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def opened(stack, run, model):
    """The run's methods on ``model``, entered on ``stack``."""
    return [stack.enter_context(m.create(model, run.method_settings)) for m in run.methods]


def randomization_rows(run, c, clean):
    """The randomization check: per step of :func:`~vitlrp.sanity.randomization.cascade` the clean maps against the
    randomized model's maps of the same classes. Returns ``(rows, {step: {name: maps}})``."""
    rows, maps = [], {}
    b, s = c.batch, run.settings
    for k, (step, randomized) in enumerate(cascade(run.model, s.seed)):
        with ExitStack() as stack:
            maps[step] = query_maps(opened(stack, run, randomized), b.images, c.target, b.ids, 100 + k)
        for name, m in maps[step].items():
            rows += c.rows(name, "randomization", step, similarity(clean[name], m, s.patch))
    return rows, maps


def check_batch(run, c, keep=()):
    """Every check on one :class:`Compared` batch: ``(rows, figures)``; ``figures`` holds, for the sample indices
    in ``keep``, the image and every map compared (``{'original', 'class_runner_up', 'class_random', <step>...}``)."""
    b, s = c.batch, run.settings
    with ExitStack() as stack:
        methods = opened(stack, run, run.model)
        clean = query_maps(methods, b.images, c.target, b.ids)
        rows, maps = class_rows(methods, c, clean, s)
        if s.noise_samples:
            rows += noise_rows(methods, run.forward, c, clean, s)
    steps, step_maps = randomization_rows(run, c, clean)
    rows += steps
    maps = {"original": clean, **maps, **step_maps}
    figures = [{"sample_idx": i, "image": b.images[k].float().cpu(), "target": int(c.target[k]),
                "runner_up": int(c.runner_up[k]), "random_other": int(c.random_other[k]),
                "maps": {name: {col: maps[col][name][k].cpu() for col in maps} for name in clean}}
               for k, i in enumerate(b.ids) if i in keep]
    return rows, figures

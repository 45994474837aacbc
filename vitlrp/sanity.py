"""Sanity checks: does a map depend on what it claims to explain (the class, the model's parameters), and does it
stay put under input noise the model ignores?

**Similarity** of two maps ``a``, ``b`` of one image (:func:`similarity`); every measure is reported:

- ``spearman``: Spearman's ρ between the per-patch sums of ``a`` and ``b`` (one sum per patch of the model's patch
  size, :func:`vitlrp.metrics.patch_scores`; ρ is Pearson's r of the ranks, ties ranked by their mean);
- ``spearman_of_abs``: the same for the absolute per-patch sums ``|Σ_patch a|`` and ``|Σ_patch b|`` (where the
  evidence lies, whatever its sign);
- ``ssim``: the structural similarity of ``|a| / max|a|`` and ``|b| / max|b|`` at input resolution (scikit-image's
  ``structural_similarity``, data range 1, its 7×7 window; an all-zero map stays all zero);
- ``abs_spearman``: ``|ρ|`` of the patch sums, the verdicts' statistic: a map for another class that is the first
  one negated shares all its structure (Sixt et al. take the better of ``h`` vs ``h'`` and ``h`` vs ``-h'``).

These are the measures of Adebayo et al. 2018, "Sanity Checks for Saliency Maps" (Spearman rank correlation with
and without absolute values, SSIM); ρ is taken per patch because a ViT sees the image as patches. ρ is undefined
for a constant map (no ranking, e.g. an all-zero Grad-CAM): it is NaN, never 0, and :func:`summarize` counts those
values (``n_undefined``) apart from the mean of the defined ones. Every measure of a map holding NaN or inf is NaN.

**Checks** (one image, one method; the explained class is the prediction or the label):

- ``class_runner_up`` / ``class_random`` (Sixt et al. 2020, "When Explanations Lie: Why Many Modified BP
  Attributions Fail"): the map of the explained class against the map of the runner-up class (the highest other
  logit) and of a seeded random other class (:func:`other_classes`). Rules that lean on positive weights (z⁺, αβ,
  large γ in the limit) converge to the same map for every class.
- ``randomization`` (Adebayo et al. 2018): cascading top-down randomization of the parameters (:func:`cascade`,
  steps ``head``, ``block_{L-1}`` … ``block_0``, ``embedding``), the original map against each step's map of the
  same class. Binder et al. 2023, "Shortcomings of Top-Down Randomization-Based Sanity Checks for Evaluations of
  Deep Neural Network Explanations", show that the randomized network keeps the scale of its activations and part
  of the input's structure, so this check cannot rank methods finely: read its numbers beside the class check.
- ``noise`` (the "higher γ, less noise" claim): seeded noisy copies of the model input (:func:`noisy_copy`),
  their maps against the clean map; a copy whose prediction changes is skipped and counted.
  σ = 0.25 in normalised units (about 6% of a pixel's range) by default: at 0.05 every method but ``random`` keeps
  ρ ≥ 0.99 on the mini-CUB, nothing to tell apart; at 0.25 (200 images) 8 of 600 copies change the prediction and
  Input×Gradient (ρ 0.93) parts from AttnLRP (0.96 at every γ).

**Verdicts** (:func:`verdicts`): the class check passes when the mean ``abs_spearman`` to the random other class is
below :data:`CLASS_THRESHOLD`, the randomization check when the mean ``abs_spearman`` at the last step (everything
randomized) is below :data:`RANDOMIZATION_THRESHOLD`. The numbers are reported beside every verdict.

Thresholds (0.6 for both), measured on the mini-CUB (a vit_tiny, 49 patches, all 200 test images; mean |ρ| ± 95%).
The chance level of |ρ| for ``n`` patches is ``√(2 / (π (n - 1)))``, 0.115 for 49 (0.057 for ViT-B/16's 196): the
``random`` baseline measures it (0.12 ± 0.01 in both checks). Input×Gradient, whose map for each class follows that
class's gradient, has 0.49 ± 0.04 to the random class: not near chance, because the patch sums of x·∇ share the
input's structure whatever the class. Rollout, the same map for every class by construction, has 1.00. The class
threshold sits above Input×Gradient's 95% interval (up to 0.53) with a margin, at a |ρ| whose ρ² = 0.36 says that
the patch ranking shares about a third of its variance with the other class's map on the average image. AttnLRP
at γ = 0 (0.47) and Grad-CAM (0.51) pass, conservative (0.56 ± 0.04) passes borderline, balanced (0.74),
aggressive (0.81), GAE (0.66) and rollout fail. After the full cascade every method of the mini-CUB lies between
0.29 (Input×Gradient) and 0.40 (rollout), against 0.61-0.88 for AttnLRP after the head alone: the same 0.6
separates a map that keeps its structure from one that lost it, and none keeps it here, in line with Binder et al.
A verdict whose 95% interval holds its threshold is marked borderline. The thresholds are calibrated on one small
model: on another model read them beside Input×Gradient and ``random`` on the same images (both default methods).

Limitation of |ρ|: it also counts anti-ordered maps as alike. Two classes that rest on disjoint pixels give their
Input×Gradient maps ρ = -0.86 (a linear model reading two halves of the image), which fails the class check though
the maps are as class-specific as maps can be; the signed ρ is reported beside |ρ| for that reason.

**Randomization of a parameter** (:func:`randomize_parameters`): every parameter of a step, whatever module holds it
(the attention's ``in_proj_weight``/``in_proj_bias``, the class token, the position embedding, the LayerNorms),
is replaced by a seeded Gaussian draw with the original tensor's mean and standard deviation: the learned
structure goes, the scale stays (so activations neither vanish nor explode). A constant tensor (torchvision's
zero-initialised head, a fresh LayerNorm or class token) has no spread to copy: a weight matrix then gets the
standard deviation ``1/√fan_in``, any other tensor :data:`FALLBACK_STD`, around its value, so a randomized head is
never all zero. Resetting a LayerNorm to weight 1 and bias 0 (what ``reset_parameters`` does) would not randomize
it, so it is drawn like every other parameter. The final encoder LayerNorm goes with the ``head`` step: it reads
the last block's output, as the head does.
"""
import copy
import math
import zlib
from contextlib import ExitStack
from dataclasses import dataclass, replace

import numpy as np
import torch

from .errors import UserError
from .methods import MethodRunner
from .metrics import mean_ci, patch_scores, spearman
from .runtime import FRESH_DRAW_KEY, INPUT_NOISE_KEY, OTHER_CLASS_KEY, image_seed

MEASURES = ("spearman", "spearman_of_abs", "ssim", "abs_spearman")
CLASS_THRESHOLD = 0.6  # mean |ρ| to a random other class below this: the class check passes
RANDOMIZATION_THRESHOLD = 0.6  # mean |ρ| after the last randomization step below this: the randomization check passes
FALLBACK_STD = 0.02  # spread of a randomized constant tensor that is not a weight matrix (torchvision's std of the
#                      position embedding)
FRESH_FAMILIES = ("baselines",)  # methods that draw their map: a fresh draw per query, the chance level
ROW_FIELDS = ["method", "sample_idx", "label", "target", "predicted", "test", "step", "other_class", "copies",
              "skipped", *MEASURES]
SUMMARY_FIELDS = ["method", "test", "step", "measure", "mean", "ci95", "n", "n_undefined"]


# --- similarity ----------------------------------------------------------------------------------------------------


def max_normalised_abs(maps):
    """``|m| / max|m|`` per map (``[B, H, W]`` numpy); an all-zero map stays zero."""
    a = np.abs(np.asarray(maps, dtype=np.float64))
    peak = a.reshape(len(a), -1).max(1)
    return a / np.where(peak > 0, peak, 1.0)[:, None, None]


def ssim_rows(a, b):
    """SSIM of the max-normalised absolute maps, per image (scikit-image, data range 1); NaN for a non-finite map."""
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a).reshape(len(a), -1).all(1) & np.isfinite(b).reshape(len(b), -1).all(1)
    keep = ok[:, None, None]
    na, nb = max_normalised_abs(np.where(keep, a, 0)), max_normalised_abs(np.where(keep, b, 0))
    return np.array([structural_similarity(x, y, data_range=1.0) if good else np.nan
                     for x, y, good in zip(na, nb, ok)])


def patch_spearman(a, b, patch, absolute=False):
    """Spearman's ρ of the per-patch sums (their absolute values with ``absolute``) of the ``[B, H, W]`` maps ``a``
    and ``b``, per image: ``[B]`` numpy, NaN for a constant or non-finite map. The cheap part of
    :func:`similarity` (no SSIM), e.g. for a class-sensitivity score ``1 - |ρ|``."""
    sa, sb = (patch_scores(m.detach().float().cpu(), patch) for m in (a, b))
    return (spearman(sa.abs(), sb.abs()) if absolute else spearman(sa, sb)).numpy()


def similarity(a, b, patch):
    """Every measure of :data:`MEASURES` between the ``[B, H, W]`` maps ``a`` and ``b``: ``{measure: [B] numpy}``."""
    rho = patch_spearman(a, b, patch)
    return {"spearman": rho, "spearman_of_abs": patch_spearman(a, b, patch, absolute=True),
            "ssim": ssim_rows(a.detach().float().cpu().numpy(), b.detach().float().cpu().numpy()),
            "abs_spearman": np.abs(rho)}


# --- what the checks compare -----------------------------------------------------------------------------------------


def other_classes(logits, target, ids, seed):
    """``(runner_up, random_other)``, each ``[B]`` long: the class with the highest logit other than ``target``, and
    a class other than ``target`` drawn uniformly, seeded by ``image_seed(seed, sample_idx, OTHER_CLASS_KEY)`` (the
    same whatever the batch or the shard)."""
    n = logits.shape[1]
    if n < 2:
        raise ValueError("the class check needs a model with at least two classes")
    target = target.reshape(-1).to(logits.device)
    masked = logits.detach().float().scatter(1, target.view(-1, 1), -math.inf)
    draws = [int(np.random.default_rng(image_seed(seed, i, OTHER_CLASS_KEY)).integers(n - 1)) for i in ids]
    others = torch.tensor(draws, device=logits.device)
    return masked.argmax(1), others + (others >= target).long()


def noisy_copy(images, ids, seed, copy_index, std):
    """``images + std · ε`` with ``ε ~ N(0, 1)`` seeded per image and copy
    (``image_seed(seed, i, INPUT_NOISE_KEY, k)``)."""
    noise = torch.stack([torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(
        image_seed(seed, i, INPUT_NOISE_KEY, copy_index))) for i in ids])
    return images + std * noise.to(images.device, images.dtype)


# --- cascading randomization -----------------------------------------------------------------------------------------


def randomization_steps(model):
    """The cascade's steps, top down: ``head``, ``block_{L-1}`` … ``block_0``, ``embedding``."""
    return ["head"] + [f"block_{i}" for i in reversed(range(len(model.encoder.layers)))] + ["embedding"]


def step_parameters(model):
    """``{step: [(name, parameter)]}`` for a torchvision ``VisionTransformer``; every parameter is in one step."""
    owner = {}
    for i, block in enumerate(model.encoder.layers):
        owner.update({id(p): f"block_{i}" for p in block.parameters()})
    owner.update({id(p): "head" for m in (model.heads, model.encoder.ln) for p in m.parameters()})
    embedding = [*model.conv_proj.parameters(), model.class_token, model.encoder.pos_embedding]
    owner.update({id(p): "embedding" for p in embedding})
    steps = {s: [] for s in randomization_steps(model)}
    for name, p in model.named_parameters():
        if id(p) not in owner:
            raise ValueError(f"parameter {name} belongs to no randomization step (not a torchvision ViT?)")
        steps[owner[id(p)]].append((name, p))
    return steps


def _param_seed(seed, name):
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(1)[0])


@torch.no_grad()
def randomize_parameters(named, seed):
    """Replace each ``(name, parameter)`` in place by ``N(mean, std²)`` of its own values, seeded by ``seed`` and its
    name; a constant tensor gets ``1/√fan_in`` (a weight matrix) or :data:`FALLBACK_STD` as its spread."""
    for name, p in named:
        values = p.detach().double()
        mean = float(values.mean())
        std = float(values.std()) if p.numel() > 1 else 0.0
        if not (math.isfinite(std) and std > 0):
            std = 1 / math.sqrt(p[0].numel()) if p.dim() >= 2 and name.endswith("weight") else FALLBACK_STD
        mean = mean if math.isfinite(mean) else 0.0
        draw = torch.randn(p.shape, generator=torch.Generator().manual_seed(_param_seed(seed, name)))
        p.copy_((mean + std * draw.double()).to(p.device, p.dtype))


def cascade(model, seed):
    """Yield ``(step, randomized model)`` top down, each step randomizing one more part (:func:`step_parameters`).

    One deep copy of ``model`` (which stays untouched) is randomized further at each step: the yielded model is the
    same object every time, so use it before asking for the next step. The draws depend on ``seed`` and the
    parameter's name only.
    """
    randomized = copy.deepcopy(model).eval()
    for step, named in step_parameters(randomized).items():
        randomize_parameters(named, seed)
        yield step, randomized


# --- running the checks on a batch -----------------------------------------------------------------------------------


class Explainers:
    """Every method's map on one model: ``explainers(images, target, ids, query)`` → ``{name: [B, H, W]}``.

    A method of :data:`FRESH_FAMILIES` (``random``) draws a new map for each ``query`` (seeded by the run's seed and
    the query, then per image as usual): the similarity of two unrelated maps, the chance level of every measure.
    With one draw per image it would show the same map for every class and model, which says nothing about them.
    """

    def __init__(self, methods, model, options):
        self.methods, self.model, self.options = methods, model, options

    def __enter__(self):
        self._stack, self._runners = ExitStack().__enter__(), {}
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)

    def _runner(self, method, query):
        fresh = method.family in FRESH_FAMILIES and query
        key = (method.name, query if fresh else 0)
        if key not in self._runners:
            options = replace(self.options, seed=image_seed(self.options.seed, 0, FRESH_DRAW_KEY, query)) if fresh \
                else self.options
            self._runners[key] = self._stack.enter_context(MethodRunner(method, self.model, options))
        return self._runners[key]

    def __call__(self, images, target, ids, query=0):
        return {m.name: self._runner(m, query)(images, target, ids)[1] for m in self.methods}


@dataclass(frozen=True)
class Settings:
    """The checks' settings: the model's patch size, the seed, noisy copies per image and their σ (normalised
    input units)."""

    patch: int
    seed: int = 0
    noise_samples: int = 3
    noise_std: float = 0.25


@dataclass
class Batch:
    """The readable images of a batch with what the checks compare: explained, runner-up and random other class."""

    images: torch.Tensor
    ids: list
    labels: list
    logits: torch.Tensor
    target: torch.Tensor
    runner_up: torch.Tensor = None
    random_other: torch.Tensor = None

    @classmethod
    def of(cls, images, ids, labels, forward, target_kind, seed):
        """``target_kind``: ``'pred'`` or ``'label'`` (then ``labels`` are the classes explained)."""
        logits = forward(images)
        target = logits.argmax(1) if target_kind == "pred" else torch.as_tensor(labels, device=logits.device)
        b = cls(images, list(ids), list(labels), logits, target)
        b.runner_up, b.random_other = other_classes(logits, target, b.ids, seed)
        return b

    def rows(self, name, test, step, measures, positions=None, **extra):
        """Per-image rows of one comparison (``positions``: the batch rows ``measures`` are for; default all)."""
        positions = range(len(self.ids)) if positions is None else positions
        pred = self.logits.argmax(1)
        out = []
        for j, k in enumerate(positions):
            row = dict(method=name, sample_idx=self.ids[k], label=int(self.labels[k]), target=int(self.target[k]),
                       predicted=int(pred[k]), test=test, step=step, other_class="", copies="", skipped="")
            row.update({key: (v[j] if isinstance(v, list) else v) for key, v in extra.items()})
            row.update({m: float(measures[m][j]) for m in MEASURES})
            out.append(row)
        return out


def class_rows(explain, b, clean, s):
    """The class check: the clean maps against the maps of the runner-up and of the random other class."""
    rows, maps = [], {}
    for query, (test, other) in enumerate((("class_runner_up", b.runner_up), ("class_random", b.random_other)), 1):
        maps[test] = explain(b.images, other, b.ids, query)
        for name, m in maps[test].items():
            rows += b.rows(name, test, "", similarity(clean[name], m, s.patch), other_class=other.tolist())
    return rows, maps


def noise_rows(explain, forward, b, clean, s):
    """The noise check: per image and method the mean of each measure over the kept noisy copies (``copies``);
    a copy whose prediction differs from the clean one is skipped (``skipped``). Images with no kept copy get a row
    with ``copies`` 0 and NaN measures, which :func:`summarize` leaves out."""
    pred = b.logits.argmax(1)
    names = [m.name for m in explain.methods]
    per = {n: {m: [[] for _ in b.ids] for m in MEASURES} for n in names}
    kept = [0] * len(b.ids)
    for k in range(s.noise_samples):
        noisy = noisy_copy(b.images, b.ids, s.seed, k, s.noise_std)
        same = (forward(noisy).argmax(1) == pred).nonzero().flatten().tolist()
        if not same:
            continue
        maps = explain(noisy[same], b.target[same], [b.ids[j] for j in same], 10 + k)
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
        rows += b.rows(name, "noise", "", means, copies=kept, skipped=[s.noise_samples - c for c in kept])
    return rows


def _nanmean(values):
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def randomization_rows(methods, options, model, b, clean, s):
    """The randomization check: per step of :func:`cascade` the clean maps against the randomized model's maps of
    the same classes. Returns ``(rows, {step: {name: maps}})``."""
    rows, maps = [], {}
    for k, (step, randomized) in enumerate(cascade(model, s.seed)):
        with Explainers(methods, randomized, options) as explain:
            maps[step] = explain(b.images, b.target, b.ids, 100 + k)
        for name, m in maps[step].items():
            rows += b.rows(name, "randomization", step, similarity(clean[name], m, s.patch))
    return rows, maps


def check_batch(methods, options, model, forward, b, s, keep=()):
    """Every check on one :class:`Batch`: ``(rows, figures)``; ``figures`` holds, for the sample indices in
    ``keep``, the image and every map compared (``{'original', 'class_runner_up', 'class_random', <step>...}``)."""
    with Explainers(methods, model, options) as explain:
        clean = explain(b.images, b.target, b.ids)
        rows, maps = class_rows(explain, b, clean, s)
        if s.noise_samples:
            rows += noise_rows(explain, forward, b, clean, s)
    steps, step_maps = randomization_rows(methods, options, model, b, clean, s)
    rows += steps
    maps = {"original": clean, **maps, **step_maps}
    figures = [{"sample_idx": i, "image": b.images[k].float().cpu(), "target": int(b.target[k]),
                "runner_up": int(b.runner_up[k]), "random_other": int(b.random_other[k]),
                "maps": {name: {col: maps[col][name][k].cpu() for col in maps} for name in clean}}
               for k, i in enumerate(b.ids) if i in keep]
    return rows, figures


# --- summaries and verdicts ------------------------------------------------------------------------------------------


def comparisons(steps):
    """The ``(test, step)`` pairs of a run, in report order."""
    return [("class_runner_up", ""), ("class_random", "")] + [("randomization", s) for s in steps] + [("noise", "")]


def summarize(rows, names, steps):
    """``sanity.csv``'s rows: per method, test, step and measure the mean of the defined values with its 95%
    interval and ``n``, and ``n_undefined`` (NaN: a constant or non-finite map). Noise rows without a kept copy are
    left out; pairs without rows are left out."""
    out = []
    for name in names:
        for test, step in comparisons(steps):
            mine = [r for r in rows if r["method"] == name and r["test"] == test and r["step"] == step
                    and r["copies"] != 0]
            if not mine:
                continue
            for measure in MEASURES:
                values = [r[measure] for r in mine]
                mean, half, n = mean_ci(values)
                out.append(dict(method=name, test=test, step=step, measure=measure, mean=mean, ci95=half, n=n,
                                n_undefined=len(values) - n))
    return out


def _find(summary, name, test, step, measure="abs_spearman"):
    return next((r for r in summary if (r["method"], r["test"], r["step"], r["measure"]) == (name, test, step,
                                                                                             measure)), None)


def verdicts(summary, names, steps):
    """Per method ``{'class': {...}, 'randomization': {...}}``: ``passed`` (None when undefined), ``borderline``
    (the 95% interval holds the threshold), the mean |ρ|, its 95% half-width, ``n``, ``n_undefined`` and the
    threshold."""
    out = {}
    for name in names:
        out[name] = {}
        for check, (test, step, threshold) in {"class": ("class_random", "", CLASS_THRESHOLD),
                                               "randomization": ("randomization", steps[-1],
                                                                 RANDOMIZATION_THRESHOLD)}.items():
            r = _find(summary, name, test, step) or dict(mean=math.nan, ci95=math.nan, n=0, n_undefined=0)
            passed = None if not math.isfinite(r["mean"]) else bool(r["mean"] < threshold)
            borderline = passed is not None and math.isfinite(r["ci95"]) and abs(r["mean"] - threshold) <= r["ci95"]
            out[name][check] = dict(passed=passed, borderline=borderline, abs_spearman=r["mean"], ci95=r["ci95"],
                                    n=r["n"], n_undefined=r["n_undefined"], threshold=threshold, test=test,
                                    step=step)
    return out


def _word(c):
    word = "n/a" if c["passed"] is None else "pass" if c["passed"] else "FAIL"
    return word + ("?" if c["borderline"] else "")


def verdict_lines(found):
    """The console's verdict table: one line per method with both checks' mean |ρ| ± 95% and pass or FAIL (``?``:
    borderline), and a note when a verdict is borderline."""
    heads = (f"class: |ρ| to a random class (pass < {CLASS_THRESHOLD:g})",
             f"randomization: |ρ| at the end (pass < {RANDOMIZATION_THRESHOLD:g})")
    lines = [f"{'method':<20} {heads[0]:<44} {heads[1]}"]
    for name, v in found.items():
        cells = []
        for check in ("class", "randomization"):
            c = v[check]
            undefined = f", {c['n_undefined']} undefined" if c["n_undefined"] else ""
            cells.append(f"{c['abs_spearman']:.3f} ± {c['ci95']:.3f} {_word(c):<5} (n={c['n']}{undefined})")
        lines.append(f"{name:<20} {cells[0]:<44} {cells[1]}")
    if any(c["borderline"] for v in found.values() for c in v.values()):
        lines.append("?: borderline, the 95% interval holds the threshold")
    return lines


def class_check(summary_entry):
    """``(mean |ρ| to a random other class, whether it passes)`` of a method scored by the evaluation or the sweep:
    its ``class_sensitivity`` is 1 − |ρ| (:func:`vitlrp.metrics.class_sensitivity`), the class check's statistic."""
    mean = summary_entry["class_sensitivity"]["mean"]
    rho = 1 - mean if math.isfinite(mean) else math.nan
    return rho, bool(rho < CLASS_THRESHOLD)


def check_model(model):
    """The checks need a classifier with at least two classes (a random other class); one UserError line else."""
    classes = model.heads[-1].out_features
    if classes < 2:
        raise UserError(f"the checkpoint's model has {classes} class; the class check needs at least two")


def table_lines(summary):
    """The console's table of means: ρ to the runner-up and to the random class, ρ after the first and the last
    randomization step, SSIM after the last, and the noise check's ρ and SSIM."""
    names = list(dict.fromkeys(r["method"] for r in summary))
    steps = list(dict.fromkeys(r["step"] for r in summary if r["test"] == "randomization"))
    cols = [("ρ runner-up", "class_runner_up", "", "spearman"), ("ρ random", "class_random", "", "spearman")]
    if steps:
        cols += [(f"ρ {steps[0]}", "randomization", steps[0], "spearman"),
                 (f"ρ {steps[-1]}", "randomization", steps[-1], "spearman"),
                 (f"SSIM {steps[-1]}", "randomization", steps[-1], "ssim")]
    cols += [("ρ noise", "noise", "", "spearman"), ("SSIM noise", "noise", "", "ssim")]
    width = max(12, *(len(c[0]) + 2 for c in cols))
    lines = [f"{'method':<20}" + "".join(f"{c[0]:>{width}}" for c in cols)]
    for name in names:
        cells = []
        for _, test, step, measure in cols:
            r = _find(summary, name, test, step, measure)
            cells.append(f"{r['mean']:>{width}.3f}" if r and math.isfinite(r["mean"]) else f"{'n/a':>{width}}")
        lines.append(f"{name:<20}" + "".join(cells))
    return lines

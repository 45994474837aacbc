"""Every sanity check on one batch of readable images.

Checks (one image, one method; the explained class is the prediction or the label):

- ``class_others`` / ``class_runner_up`` (Sixt et al. 2020, "When Explanations Lie: Why Many Modified BP
  Attributions Fail"): the map of the explained class against the maps of many other classes
  (:func:`.draws.compared_classes`: every other class of a dataset with at most 20, else the runner-up and
  ``other_classes`` seeded random ones), all from one forward (:func:`vitlrp.protocol.attribute_all`). An image's
  value is the mean over those classes; ``class_runner_up`` is the runner-up's alone. Rules that lean on positive
  weights (z⁺, αβ, large γ in the limit) converge to the same map for every class. SSIM is measured for the
  runner-up only (an SSIM per class would cost more than the maps).
- randomization (Adebayo et al. 2018; :mod:`.randomization`): the original map against the map of the same class
  on the model with parts of its parameters randomized, in three orders (the cascade top down, ``randomization``,
  and bottom up, and each step alone, ``randomization_independent``) and ``draws`` seeded weight draws. Binder et
  al. 2023 show that a top-down cascade keeps the scale of the activations and part of the input's structure, so it
  cannot rank methods finely; the independent order shows how little a map depends on any one block.
- ``emprt`` and ``smprt`` (Hedström et al. 2023; :mod:`.mprt`): the rise of the map's entropy once every parameter
  is randomized, and the similarity of noise-smoothed maps before and after.
- ``noise`` (the "higher γ, less noise" claim): seeded noisy copies of the model input (:func:`.noisy_copy`),
  their maps against the clean map; a copy whose prediction changes is skipped and counted.
  σ = 0.25 in normalised units (about 6% of a pixel's range) by default: at 0.05 every method but ``random`` keeps
  ρ ≥ 0.99 on the mini-CUB, nothing to tell apart; at 0.25 (200 images) 8 of 600 copies change the prediction and
  Input×Gradient (ρ 0.93) parts from AttnLRP (0.96 at every γ).

The randomization checks run on the images of ``Settings.randomized`` (all when None): they cost a map per state,
draw and method.
"""
import copy
from contextlib import ExitStack
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..protocol import attribute_all
from ..runtime import FRESH_DRAW_KEY, WEIGHT_DRAW_KEY, image_seed
from . import mprt
from .draws import ALL_CLASSES_UP_TO, compared_classes, noisy_copy
from .randomization import ORDERS, TESTS, Randomizer, plan, randomization_steps
from .similarity import ABS_PIXELS, LEVELS, MEASURES, SIGNED, Ranked, abs_rho_levels, similarity

ROW_FIELDS = ["method", "sample_idx", "label", "target", "predicted", "test", "step", "draw", "other_class",
              "copies", "skipped", *MEASURES, *SIGNED, ABS_PIXELS, "entropy_rise"]
FRESH_FAMILIES = ("baselines",)  # methods that draw their map: a fresh draw per query, the chance level


@dataclass(frozen=True)
class Settings:
    """The checks' settings: the model's patch size, the seed, noisy copies per image and their σ (normalised input
    units), the class check's other classes (``other_classes`` drawn beside the runner-up, every other class up to
    ``all_classes_up_to`` classes), the randomization's weight ``draws``, ``orders`` and images (``randomized``:
    their sample indices, None = all), and sMPRT's noisy copies and noise magnitude (a share of the image's range)."""

    patch: int
    seed: int = 0
    noise_samples: int = 3
    noise_std: float = 0.25
    other_classes: int = 10
    all_classes_up_to: int = ALL_CLASSES_UP_TO
    draws: int = 5
    orders: tuple = ORDERS
    randomized: frozenset = None
    smprt_samples: int = 8
    smprt_noise: float = 0.1


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
    """A :class:`~vitlrp.batch.Batch` with the classes the checks compare: the explained ``target`` and ``others``
    (``[B, M]``, the runner-up first)."""

    batch: object
    target: object
    others: object = None

    @classmethod
    def of(cls, b, target_mode, settings):
        target = b.targets(target_mode)
        s = settings
        return cls(b, target, compared_classes(b.logits, target, b.ids, s.seed, s.other_classes, s.all_classes_up_to))

    @property
    def runner_up(self):
        return self.others[:, 0]

    def logit_signs(self):
        """``[B, M]`` sign(f_c · f_c') of the plain model's logits (0 → +1)."""
        logits = self.batch.logits.float()
        f_c = logits.gather(1, self.target.view(-1, 1))
        sign = torch.sign(f_c * logits.gather(1, self.others))
        return torch.where(sign == 0, torch.ones_like(sign), sign).cpu().numpy()

    def rows(self, name, test, step, measures, **extra):
        """Per-image rows of one comparison (``positions`` in ``extra``: the rows ``measures`` are for)."""
        b = self.batch
        positions = extra.pop("positions", range(len(b.ids)))
        pred = b.logits.argmax(1)
        out = []
        for j, k in enumerate(positions):
            row = dict(method=name, sample_idx=b.ids[k], label=int(b.labels[k]), target=int(self.target[k]),
                       predicted=int(pred[k]), test=test, step=step, draw="", other_class="", copies="", skipped="")
            row.update({key: (v[j] if isinstance(v, list) else v) for key, v in extra.items()})
            row.update({m: float(v[j]) for m, v in measures.items()})
            out.append(row)
        return out


def query_maps(methods, x, target, ids, query=0):
    """``{name: relevance}`` of entered methods, those of one class sharing a forward
    (:func:`~vitlrp.protocol.attribute_all`). A method of :data:`FRESH_FAMILIES` (``random``) draws a new map for
    each ``query`` (seeded by the run's seed and the query, then per image as usual): the similarity of two
    unrelated maps, the chance level of every measure. With one draw per image it would show the same map for every
    model and noisy copy, which says nothing about them."""
    fresh = []
    for m in methods:
        if query and m.family in FRESH_FAMILIES:
            m = copy.copy(m)
            m.settings = replace(m.settings, seed=image_seed(m.settings.seed, 0, FRESH_DRAW_KEY, query))
        fresh.append(m)
    return {name: found[0].relevance for name, found in attribute_all(fresh, x, [target], ids).items()}


def class_maps(methods, c):
    """``(clean, others)``: each method's map of the explained class and its ``M`` maps of the other classes
    (``{name: [map per column of c.others]}``), all from one forward per method class
    (:func:`~vitlrp.protocol.attribute_all`)."""
    b = c.batch
    targets = [c.target] + [c.others[:, j] for j in range(c.others.shape[1])]
    found = attribute_all(methods, b.images, targets, b.ids)
    return ({n: r[0].relevance for n, r in found.items()}, {n: [a.relevance for a in r[1:]] for n, r in found.items()})


def method_groups(methods):
    """The methods in groups that share a forward (one class each), in order."""
    groups = {}
    for m in methods:
        groups.setdefault(type(m), []).append(m)
    return list(groups.values())


def class_similarities(clean, others, c, patch):
    """``({name: {measure: [B, M]}}, {name: {measure: [B]}})``: the ρ measures between each method's clean map and
    its map of each compared class (the logit-sign-corrected ρ included), and every measure (SSIM too) for the first
    compared class, the runner-up."""
    signs = c.logit_signs()
    out, first = {}, {}
    for name, maps in others.items():
        ref = Ranked(clean[name], patch)
        cols = [similarity(ref, m, patch, sign=signs[:, j], structure=j == 0) for j, m in enumerate(maps)]
        first[name] = cols[0]
        out[name] = {k: np.stack([col[k] for col in cols], 1) for k in cols[-1]}
    return out, first


def class_levels(clean, others, patch):
    """Per image, the mean over the compared classes of |ρ| at each level (``{level: [B] numpy}``) between the maps
    ``clean`` and each of the maps ``others`` of other classes (the sweep's class check: no SSIM, no sign)."""
    ref = Ranked(clean, patch)
    per = [abs_rho_levels(ref, m, patch) for m in others]
    return {level: _nanmean_rows(np.stack([p[level] for p in per], 1)) for level in LEVELS}


def class_rows(methods, c, s, progress=None):
    """The class check: ``(rows, clean maps, maps of the runner-up)``; rows of ``class_runner_up`` (the first
    compared class) and ``class_others`` (per image, each measure's mean over the compared classes).
    ``progress(share)`` is told each group of methods' share of the work."""
    rows, clean, runner_up = [], {}, {}
    listed = [" ".join(str(int(k)) for k in row) for row in c.others.tolist()]
    groups = method_groups(methods)
    for group in groups:
        maps, others = class_maps(group, c)
        sims_by_name, first = class_similarities(maps, others, c, s.patch)
        for name, sims in sims_by_name.items():
            rows += c.rows(name, "class_runner_up", "", first[name], other_class=c.runner_up.tolist())
            rows += c.rows(name, "class_others", "", {k: _nanmean_rows(v) for k, v in sims.items()},
                           other_class=listed)
        clean.update(maps)
        runner_up.update({n: m[0] for n, m in others.items()})
        if progress:
            progress(1 / len(groups))
    order = [m.name for m in methods]
    rows.sort(key=lambda r: (order.index(r["method"]), r["test"] != "class_runner_up"))
    return rows, clean, runner_up


def _nanmean_rows(values):
    """Per row of ``[B, M]`` the mean of the finite values (NaN for none)."""
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite.any(1), np.where(finite, values, 0).sum(1) / finite.sum(1), np.nan)


def noise_rows(methods, forward, c, clean, s):
    """The noise check: per image and method the mean of each measure over the kept noisy copies (``copies``);
    a copy whose prediction differs from the clean one is skipped (``skipped``). Images with no kept copy get a row
    with ``copies`` 0 and NaN measures, which :func:`~vitlrp.sanity.verdicts.summarize` leaves out."""
    b = c.batch
    pred = b.logits.argmax(1)
    names = [m.name for m in methods]
    per = {n: np.full((s.noise_samples, len(b.ids), len(MEASURES)), np.nan) for n in names}
    kept = [0] * len(b.ids)
    for k in range(s.noise_samples):
        noisy = noisy_copy(b.images, b.ids, s.seed, k, s.noise_std)
        same = (forward(noisy).argmax(1) == pred).nonzero().flatten().tolist()
        if not same:
            continue
        maps = query_maps(methods, noisy[same], c.target[same], [b.ids[j] for j in same], 10 + k)
        for name, m in maps.items():
            sim = similarity(clean[name][same], m, s.patch)
            per[name][k, same] = np.stack([sim[measure] for measure in MEASURES], 1)
        for pos in same:
            kept[pos] += 1
    rows = []
    for name in names:
        means = _nanmean_rows(per[name].transpose(1, 2, 0).reshape(-1, s.noise_samples)).reshape(len(b.ids), -1)
        rows += c.rows(name, "noise", "", {m: means[:, j] for j, m in enumerate(MEASURES)}, copies=kept,
                       skipped=[s.noise_samples - n for n in kept])
    return rows


def opened(stack, run, model):
    """The run's methods on ``model``, entered on ``stack``."""
    return [stack.enter_context(m.create(model, run.method_settings)) for m in run.methods]


def draw_seed(seed, draw):
    """The seed of weight draw ``draw`` of a run."""
    return image_seed(seed, draw, WEIGHT_DRAW_KEY)


def smoothed_maps(methods, x, c, s, query):
    """sMPRT's noise-smoothed maps of every method (:func:`.mprt.smoothed`): ``{name: [B, H, W]}``."""
    b = c.batch
    noise = mprt.seeded_noise(b.ids, s.seed)
    total = {}
    for k, noisy in enumerate(mprt.noisy_inputs(x, s.smprt_samples, s.smprt_noise, noise)):
        for name, m in query_maps(methods, noisy, c.target, b.ids, query + k).items():
            total[name] = total.get(name, 0) + m.double() / s.smprt_samples
    return total


def randomization_rows(run, c, clean, progress=None):
    """Every randomization check of a :class:`Compared` batch, for every weight draw: ``(rows, {step: {name: map}})``
    (the maps of the first draw's top-down cascade, for the figures). ``progress(share)`` is told each state's share
    of the work."""
    b, s = c.batch, run.settings
    steps = randomization_steps(run.model)
    states = plan(run.model, s.orders)
    full = frozenset(steps)
    if full not in dict(states):  # eMPRT and sMPRT need the fully randomized model
        states.append((full, []))
    rows, figure, refs = [], {}, {n: Ranked(m, s.patch) for n, m in clean.items()}
    work = s.draws * (len(states) + s.smprt_samples) + s.smprt_samples
    with ExitStack() as stack:
        smooth_clean = smoothed_maps(opened(stack, run, run.model), b.images, c, s, 1000)
    if progress:
        progress(s.smprt_samples / work)
    randomizer = Randomizer(run.model)
    for d in range(s.draws):
        for k, (state, labels) in enumerate(states):
            model = randomizer.state(state, draw_seed(s.seed, d))
            with ExitStack() as stack:
                methods = opened(stack, run, model)
                maps = query_maps(methods, b.images, c.target, b.ids, 100 + 100 * d + k)
                if state == full:
                    smooth = smoothed_maps(methods, b.images, c, s, 10_000 + 100 * d)
            for name, m in maps.items():
                sim = similarity(refs[name], m, s.patch)
                for order, step in labels:
                    rows += c.rows(name, TESTS[order], step, sim, draw=d)
                    if d == 0 and order == "top_down":
                        figure.setdefault(step, {})[name] = m
                if state == full:
                    rows += c.rows(name, "emprt", "", {"entropy_rise": mprt.entropy_rise(clean[name], m)}, draw=d)
                    rows += c.rows(name, "smprt", "", similarity(smooth_clean[name], smooth[name], s.patch,
                                                                   extra=(ABS_PIXELS,)), draw=d)
            if progress:
                progress((1 + (s.smprt_samples if state == full else 0)) / work)
    return rows, figure


def check_batch(run, c, keep=(), progress=None):
    """Every check on one :class:`Compared` batch: ``(rows, figures)``; ``figures`` holds, for the sample indices
    in ``keep``, the image and every map compared (``{'original', 'class_runner_up', <top-down step>...}``).
    ``progress(images)`` is told the batch's progress in images as the work goes on."""
    b, s = c.batch, run.settings
    chosen = [k for k, i in enumerate(b.ids) if s.randomized is None or i in s.randomized]
    # the share of the batch's work each part takes, in maps per image (a state or a copy costs one map)
    shares = np.array([1 + c.others.shape[1] + s.noise_samples,
                       len(chosen) / len(b.ids) * (s.draws * (len(plan(run.model, s.orders)) + 1 + s.smprt_samples)
                                                   + s.smprt_samples)])
    shares = shares / shares.sum() * len(b.ids)
    tell = progress or (lambda n: None)
    with ExitStack() as stack:
        methods = opened(stack, run, run.model)
        classes = (1 + c.others.shape[1]) / (1 + c.others.shape[1] + s.noise_samples)
        rows, clean, runner_up = class_rows(methods, c, s, lambda share: tell(share * classes * shares[0]))
        if s.noise_samples:
            rows += noise_rows(methods, run.forward, c, clean, s)
    tell((1 - classes) * shares[0])
    step_maps = {}
    if chosen and s.draws:
        sub = _subset(c, chosen)
        found, step_maps = randomization_rows(run, sub, {n: m[chosen] for n, m in clean.items()},
                                              lambda share: tell(share * shares[1]))
        rows += found
    elif not chosen:
        tell(shares[1])
    at = {i: j for j, i in enumerate(b.ids[k] for k in chosen)}
    figures = []
    for k, i in enumerate(b.ids):
        if i not in keep:
            continue
        maps = {name: {"original": clean[name][k].cpu(), "class_runner_up": runner_up[name][k].cpu()}
                for name in clean}
        for step, by_name in step_maps.items():
            for name, m in by_name.items():
                maps[name][step] = m[at[i]].cpu() if i in at else None
        figures.append({"sample_idx": i, "image": b.images[k].float().cpu(), "target": int(c.target[k]),
                        "runner_up": int(c.runner_up[k]), "maps": maps})
    return rows, figures


def _subset(c, positions):
    """The :class:`Compared` batch of the images at ``positions``."""
    b = c.batch
    raw_positions = [b.ok[k] for k in positions]
    sub = replace(b, ok=raw_positions, images=b.images[positions], labels=b.labels[positions],
                  ids=[b.ids[k] for k in positions], logits=b.logits[positions])
    return Compared(sub, c.target[positions], c.others[positions])

"""Summaries of the sanity checks' rows, and their verdicts from statistics.

Intervals (:func:`summarize`). Images are the unit. A class-check value of an image is the mean over the classes it
is compared with (the other classes are not independent units: they share the image), and the interval is Student's
t over the images. A randomization value is one per image and weight draw, and both are random factors: the
interval comes from a bootstrap that resamples images and draws independently (:func:`vitlrp.stats.crossed_interval`;
with one draw, t over the images). A verdict needs two images or more; with fewer it is "undecided".

Threshold verdicts (:func:`threshold_word`): **pass** when the upper end of the 95% interval of the mean |ρ| is below
the threshold, **fail** when the lower end is above it, **undecided** otherwise, **n/a** when no value is defined
(an empty map has no ranking: its ρ is undefined, which is no fail). Each level (patch, pixel) gets its word; the
check's word is fail when a level fails, pass when both pass, else undecided.

The threshold scales with the model's number of patches ``n``: two unrelated maps give ``ρ ≈ N(0, 1/(n − 1))``, so
the chance level of |ρ| is ``E|ρ| = √(2/π) / √(n − 1)`` (:func:`chance_abs_rho`: 0.115 for 49 patches, 0.057 for
196), and a threshold of :data:`CLASS_MULTIPLE` times it sits the same number of null standard deviations
(5·√(2/π) ≈ 4.0) above unrelated maps whatever the model. 5 × 0.115 = 0.58 on the 49-patch demo model, where 0.6 sat
above Input×Gradient's interval. The ``random`` method measures the chance level (its maps for two classes or two
models are unrelated draws): :func:`chance_check` holds the formula to it. docs/sanity.md gives the derivation.

Paired verdicts (:func:`paired_verdicts`), free of any constant: each method's per-image |ρ| against each gradient
baseline's (:data:`BASELINES`, Input×Gradient and the plain gradient, whose map for a class is that class's gradient)
on the same images and classes; two-sided Wilcoxon signed-rank tests, Holm-corrected over the methods per baseline
and level (:func:`vitlrp.stats.paired_table`). **fail** when its |ρ| is significantly above every baseline's (its
maps depend on the class, or on the parameters, less than any gradient's do), **pass** when it is significantly above
none, with enough images that a difference could have been detected at all (:func:`min_pairs`), **undecided**
otherwise.
"""
import math

import numpy as np

from ..errors import UserError
from ..families import family_of
from ..stats import ALPHA, crossed_interval, paired_table, t_interval
from .randomization import TESTS
from .similarity import ABS_PIXELS, LEVELS, MEASURES, SIGNED

CLASS_MULTIPLE = 5.0  # class check: pass below this many times the chance level of |ρ| (module docstring)
RANDOMIZATION_MULTIPLE = 5.0  # randomization check: the same, for the original vs the fully randomized model
BASELINES = ("input_x_gradient", "gradient")  # the paired verdicts' references
SUMMARY_FIELDS = ["method", "test", "step", "measure", "mean", "ci95", "n", "n_undefined", "draws"]
CHECKS = ("class", "class_paired", "randomization", "randomization_paired")
CLASS_TESTS = ("class_runner_up", "class_others")
MPRT_TESTS = ("emprt", "smprt")


def chance_abs_rho(n):
    """``E|ρ|`` of Spearman's ρ between two unrelated rankings of ``n`` items: ``√(2 / (π (n − 1)))``."""
    return math.sqrt(2 / (math.pi * (n - 1))) if n > 1 else math.nan


def measures_of(test):
    """The measures a test reports."""
    if test in CLASS_TESTS:  # SSIM for the runner-up only
        return MEASURES + SIGNED if test == "class_runner_up" else tuple(m for m in MEASURES if m != "ssim") + SIGNED
    return {"emprt": ("entropy_rise",), "smprt": MEASURES + (ABS_PIXELS,)}.get(test, MEASURES)


def comparisons(steps, orders=tuple(TESTS)):
    """The ``(test, step)`` pairs of a run, in report order (``steps``: top down)."""
    step_order = {"top_down": steps, "bottom_up": steps[::-1], "independent": steps}
    out = [("class_runner_up", ""), ("class_others", "")]
    out += [(TESTS[o], s) for o in TESTS if o in orders for s in step_order[o]]
    return out + [(t, "") for t in MPRT_TESTS] + [("noise", "")]


def _by_key(rows):
    out = {}
    for r in rows:
        out.setdefault((r["method"], r["test"], r["step"]), []).append(r)
    return out


def _interval(mine, measure):
    """``(mean, half-width, n, n_undefined, draws)`` of one comparison's rows (images × draws, module docstring)."""
    if mine and mine[0].get("draw", "") != "":
        draws = sorted({r["draw"] for r in mine})
        images = sorted({r["sample_idx"] for r in mine})
        at = {(r["sample_idx"], r["draw"]): r.get(measure, math.nan) for r in mine}
        matrix = np.array([[_num(at.get((i, d))) for d in draws] for i in images])
        mean, half, n = crossed_interval(matrix)
        return mean, half, n, len(images) - n, len(draws)
    values = [_num(r.get(measure)) for r in mine]
    mean, half, n = t_interval(values)
    return mean, half, n, len(values) - n, ""


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def summarize(rows, names, steps, orders=tuple(TESTS), pairs=None):
    """``sanity.csv``'s rows: per method, test, step and measure the mean of the defined values, its 95% half-width
    (module docstring), ``n`` (images), ``n_undefined`` (images whose value is undefined: a constant or non-finite
    map) and ``draws`` (weight draws, randomization tests only). Noise rows without a kept copy are left out;
    comparisons without rows are left out. ``pairs``: the ``(test, step)`` pairs summarized (default: the run's
    :func:`comparisons`)."""
    keyed = _by_key(r for r in rows if r.get("copies") != 0)
    out = []
    for name in names:
        for test, step in pairs if pairs is not None else comparisons(steps, orders):
            mine = keyed.get((name, test, step))
            if not mine:
                continue
            for measure in measures_of(test):
                mean, half, n, undefined, draws = _interval(mine, measure)
                out.append(dict(method=name, test=test, step=step, measure=measure, mean=mean, ci95=half, n=n,
                                n_undefined=undefined, draws=draws))
    return out


def find(summary, name, test, step="", measure="abs_spearman"):
    return next((r for r in summary if (r["method"], r["test"], r["step"], r["measure"]) == (name, test, step,
                                                                                            measure)), None)


def threshold_word(mean, half, threshold):
    """pass / fail / undecided / n/a of a mean ± half-width against ``threshold`` (module docstring); n/a also for a
    threshold of 1 or more (|ρ| cannot exceed it: with under 18 patches 5 × chance is above 1)."""
    if not math.isfinite(mean) or not threshold < 1:
        return "n/a"
    if not math.isfinite(half):
        return "undecided"
    return "pass" if mean + half < threshold else "fail" if mean - half > threshold else "undecided"


def combine(words):
    """One word for several levels: fail if any fails, pass if all pass, n/a if none is defined, else undecided."""
    words = list(words)
    if "fail" in words:
        return "fail"
    if all(w == "n/a" for w in words):
        return "n/a"
    return "pass" if all(w == "pass" for w in words) else "undecided"


def level_verdicts(summary, name, test, step, threshold):
    """``{level: {mean, ci95, low, high, n, n_undefined, verdict}}`` and the combined word of one comparison."""
    levels = {}
    for level, measure in LEVELS.items():
        r = find(summary, name, test, step, measure) or dict(mean=math.nan, ci95=math.nan, n=0, n_undefined=0)
        word = threshold_word(r["mean"], r["ci95"], threshold)
        levels[level] = dict(mean=r["mean"], ci95=r["ci95"], low=r["mean"] - r["ci95"], high=r["mean"] + r["ci95"],
                             n=r["n"], n_undefined=r["n_undefined"], verdict=word)
    return levels, combine(v["verdict"] for v in levels.values())


def full_step(steps, orders):
    """``(test, step)`` at which every parameter is randomized (the end of a cascade), or None without a cascade."""
    if "top_down" in orders:
        return TESTS["top_down"], steps[-1]
    if "bottom_up" in orders:
        return TESTS["bottom_up"], steps[0]
    return None


def threshold_verdicts(summary, names, steps, patches, orders=tuple(TESTS)):
    """Per method, the ``class`` and ``randomization`` threshold verdicts: ``verdict`` (the word), ``passed`` (True,
    False, or None when undecided or n/a), the patch level's ``abs_spearman`` and ``ci95`` (what the tables show),
    both ``levels``, ``threshold``, ``chance``, ``multiple``, ``n``, ``n_undefined``, ``test`` and ``step``."""
    chance = chance_abs_rho(patches)
    where = {"class": ("class_others", "", CLASS_MULTIPLE),
             "randomization": (*(full_step(steps, orders) or ("", "")), RANDOMIZATION_MULTIPLE)}
    out = {}
    for name in names:
        out[name] = {}
        for check, (test, step, multiple) in where.items():
            threshold = multiple * chance
            levels, word = level_verdicts(summary, name, test, step, threshold)
            patch = levels["patch"]
            out[name][check] = dict(verdict=word, passed={"pass": True, "fail": False}.get(word),
                                    abs_spearman=patch["mean"], ci95=patch["ci95"], levels=levels,
                                    threshold=threshold, chance=chance, multiple=multiple, n=patch["n"],
                                    n_undefined=patch["n_undefined"], test=test, step=step)
    return out


def min_pairs(comparisons, alpha=ALPHA):
    """The fewest pairs with which a two-sided Wilcoxon test, Holm-corrected over ``comparisons``, can reach
    ``alpha`` at all (its smallest p-value is ``2 / 2^n``)."""
    n = 1
    while comparisons * 2 / 2 ** n >= alpha:
        n += 1
    return n


def per_image(rows, test, measure, steps=None):
    """``{method: {sample_idx: value}}``: the mean over draws (and over ``steps``, when given) of ``measure`` in
    ``test``'s rows; an image whose values are not all defined is left out."""
    acc = {}
    for r in rows:
        if r["test"] == test and (steps is None or r["step"] in steps):
            acc.setdefault(r["method"], {}).setdefault(r["sample_idx"], []).append(_num(r.get(measure)))
    return {m: {i: float(np.mean(v)) for i, v in by.items() if np.isfinite(v).all()} for m, by in acc.items()}


def paired_verdict(scores, names, baselines=BASELINES):
    """``{method: {verdict, against: {baseline: above|below|same}, n}}`` from ``{method: {sample_idx: |ρ|}}`` (module
    docstring): Wilcoxon + Holm over the methods, per baseline; "n/a" when no baseline is among the methods."""
    refs = [b for b in baselines if scores.get(b)]
    out = {n: dict(verdict="n/a", against={}, n=0) for n in names}
    if not refs:
        return out
    for ref in refs:
        table = {m: {"v": scores[m]} for m in names if m in scores}
        rows = paired_table(table, ref, {"v": False}, n_boot=200)
        need = min_pairs(max(len(rows), 1))
        for r in rows:
            outcome = "same"
            if r["significant"]:
                outcome = "above" if r["mean_diff"] > 0 else "below"
            elif r["n_pairs"] < need:
                outcome = "too few"
            out[r["method"]]["against"][ref] = outcome
            out[r["method"]]["n"] = max(out[r["method"]]["n"], r["n_pairs"])
    for name, v in out.items():
        outcomes = list(v["against"].values())
        if not outcomes or name in refs:  # a baseline is a reference, not a candidate
            continue
        if all(o == "above" for o in outcomes):
            v["verdict"] = "fail"
        elif all(o in ("same", "below") for o in outcomes):
            v["verdict"] = "pass"
        else:
            v["verdict"] = "undecided"
    return out


def paired_verdicts(rows, names, steps, orders=tuple(TESTS)):
    """Per method the ``class_paired`` verdict (the class check's per-image |ρ|) and the ``randomization_paired``
    one (independent randomization: per image the mean |ρ| over the blocks and draws), each at both levels and
    combined: ``{method: {check: {verdict, levels: {level: {verdict, against, n}}}}}``."""
    blocks = [s for s in steps if s.startswith("block_")]
    sources = {"class_paired": ("class_others", None)}
    if "independent" in orders:
        sources["randomization_paired"] = (TESTS["independent"], blocks)
    out = {n: {} for n in names}
    for check, (test, only) in sources.items():
        levels = {level: paired_verdict(per_image(rows, test, measure, only), names)
                  for level, measure in LEVELS.items()}
        for n in names:
            mine = {level: levels[level][n] for level in LEVELS}
            out[n][check] = dict(verdict=combine(v["verdict"] for v in mine.values()), levels=mine,
                                 baselines=[b for b in BASELINES if b in names])
    return out


def verdicts(summary, rows, names, steps, patches, orders=tuple(TESTS)):
    """Every verdict of every method (:data:`CHECKS`)."""
    found = threshold_verdicts(summary, names, steps, patches, orders)
    for name, checks in paired_verdicts(rows, names, steps, orders).items():
        found[name].update(checks)
    return found


def chance_check(summary, patches):
    """The chance level of |ρ| by the formula, and as the ``random`` method measures it (the class check, patch
    level) when it ran: ``{patches, analytic, measured, ci95, agrees}`` (``agrees``: the formula lies in the
    measured 95% interval)."""
    analytic = chance_abs_rho(patches)
    r = find(summary, "random", "class_others")
    out = {"patches": patches, "analytic": analytic, "measured": None, "ci95": None, "agrees": None}
    if r and math.isfinite(r["mean"]):
        out.update(measured=r["mean"], ci95=r["ci95"], agrees=bool(abs(r["mean"] - analytic) <= r["ci95"])
                   if math.isfinite(r["ci95"]) else None)
    return out


WORDS = {"pass": "pass", "fail": "FAIL", "undecided": "undecided", "n/a": "n/a"}


def plus_minus(mean, half):
    """``0.52±0.03`` for the console; ``n/a`` for an undefined mean, ``±n/a`` for an undefined interval."""
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.2f}±{half:.2f}" if math.isfinite(half) else f"{mean:.2f}±n/a"


def _cell(v):
    levels = v["levels"]
    if not math.isfinite(levels["patch"]["mean"]):
        return f"{'n/a':<21} {WORDS[v['verdict']]:<9}"
    text = " / ".join(plus_minus(lv["mean"], lv["ci95"]) for lv in levels.values())
    return f"{text:<21} {WORDS[v['verdict']]:<9}"


def _paired_cell(v):
    if not v:
        return "n/a"
    marks = {"above": ">", "below": "<", "same": "=", "too few": "?"}  # "-": the baseline itself
    against = " ".join("".join(marks.get(lv["against"].get(b), "-") for lv in v["levels"].values())
                       for b in v["baselines"])
    return f"{WORDS[v['verdict']]:<9} {against}"


def verdict_lines(found):
    """The console's verdict table (lines of at most 120 columns): per method the class and randomization checks'
    mean |ρ| ± 95% at patch / pixel level and their words, and the paired verdicts."""
    any_v = next(iter(found.values()))
    t = any_v["class"]
    lines = [f"{'method':<18} {'class: |ρ| patch / pixel':<31} {'paired':<13} "
             f"{'randomization: |ρ| patch / pixel':<31} {'paired':<13}"]
    for name, v in found.items():
        lines.append(f"{name[:18]:<18} {_cell(v['class'])} {_paired_cell(v.get('class_paired')):<13} "
                     f"{_cell(v['randomization'])} {_paired_cell(v.get('randomization_paired')):<13}")
    refs = " then ".join(any_v.get("class_paired", {}).get("baselines", [])) or "none run"
    lines.append(f"pass: the 95% interval lies below {t['multiple']:g} × chance |ρ| = {t['threshold']:.3f} "
                 f"({_patches(t['chance'])}); fail: above it at a level.")
    lines.append(f"paired: vs {refs} at patch, pixel level (Wilcoxon + Holm): > above, < below, = alike, - itself;")
    lines.append("fail: above every baseline, pass: above none; randomization: independent, the mean over blocks.")
    return lines


def _patches(chance):
    n = round(2 / (math.pi * chance ** 2) + 1) if chance and math.isfinite(chance) else "?"
    return f"chance {chance:.3f} for {n} patches"


def patch_count(model):
    """The number of patches a model sees (the chance level's ``n``)."""
    family = family_of(model)
    return (family.image_size(model) // family.patch_size(model)) ** 2


def check_model(model):
    """The checks need a classifier with at least two classes and a ranking of at least three patches; one
    UserError line else."""
    classes = family_of(model).num_classes(model)
    if classes < 2:
        raise UserError(f"the checkpoint's model has {classes} class; the class check needs at least two")
    patches = patch_count(model)
    if patches < 3:
        raise UserError(f"the checkpoint's model sees each image as {patches} patch{'es' if patches > 1 else ''}: "
                        "the sanity checks rank patches and need at least 3 (use a smaller patch size or a larger "
                        "image size)")


def table_lines(summary):
    """The console's table of means (the patch level unless named): |ρ| to the runner-up and to the other classes,
    the sign-corrected ρ (patch, pixel), |ρ| and SSIM at the end of the top-down cascade, |ρ| under independent
    randomization (the mean over its steps), eMPRT, sMPRT (ρ of the absolute smoothed pixels), and the noise check's
    ρ and SSIM."""
    names = list(dict.fromkeys(r["method"] for r in summary))
    steps = list(dict.fromkeys(r["step"] for r in summary if r["test"] == "randomization"))
    cols = [("|ρ| run", "class_runner_up", "", "abs_spearman"), ("|ρ| oth", "class_others", "", "abs_spearman"),
            ("ρ·sgn", "class_others", "", "sign_spearman"), ("px ρ·sgn", "class_others", "", "pixel_sign_spearman")]
    if steps:
        cols += [("|ρ| end", "randomization", steps[-1], "abs_spearman"),
                 ("SSIM end", "randomization", steps[-1], "ssim")]
    cols += [("|ρ| ind", TESTS["independent"], None, "abs_spearman"), ("eMPRT", "emprt", "", "entropy_rise"),
             ("sMPRT", "smprt", "", "pixel_spearman_of_abs"), ("ρ noise", "noise", "", "spearman"),
             ("SSIM noi", "noise", "", "ssim")]
    width = 9  # 18 + 11 columns of 9: the table fits 120 columns
    lines = [f"{'method':<18}" + "".join(f"{c[0]:>{width}}" for c in cols)]
    for name in names:
        cells = []
        for _, test, step, measure in cols:
            if step is None:  # the mean over the steps of that test
                values = [r["mean"] for r in summary if (r["method"], r["test"], r["measure"]) == (name, test, measure)
                          and math.isfinite(r["mean"])]
                value = sum(values) / len(values) if values else math.nan
            else:
                r = find(summary, name, test, step, measure)
                value = r["mean"] if r else math.nan
            cells.append(f"{value:>{width}.3f}" if math.isfinite(value) else f"{'n/a':>{width}}")
        lines.append(f"{name[:18]:<18}" + "".join(cells))
    return lines

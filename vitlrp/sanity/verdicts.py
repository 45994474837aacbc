"""Summaries of the sanity checks' rows, and their verdicts.

Verdicts (:func:`verdicts`): the class check passes when the mean ``abs_spearman`` to the random other class is
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
"""
import math

from ..errors import UserError
from ..families import family_of
from ..metrics import mean_ci
from .similarity import MEASURES

CLASS_THRESHOLD = 0.6  # mean |ρ| to a random other class below this: the class check passes
RANDOMIZATION_THRESHOLD = 0.6  # mean |ρ| after the last randomization step below this: the randomization check passes
SUMMARY_FIELDS = ["method", "test", "step", "measure", "mean", "ci95", "n", "n_undefined"]
# each verdict: its name → (test, step or None for the last randomization step, threshold of the mean |ρ|)
CHECKS = {"class": ("class_random", "", CLASS_THRESHOLD), "randomization": ("randomization", None,
                                                                          RANDOMIZATION_THRESHOLD)}


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
    """Per method and check of :data:`CHECKS` (``{'class': {...}, 'randomization': {...}}``): ``passed`` (None when
    undefined), ``borderline`` (the 95% interval holds the threshold), the mean |ρ|, its 95% half-width, ``n``,
    ``n_undefined`` and the threshold."""
    out = {}
    for name in names:
        out[name] = {}
        for check, (test, step, threshold) in CHECKS.items():
            step = steps[-1] if step is None else step
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
    classes = family_of(model).num_classes(model)
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

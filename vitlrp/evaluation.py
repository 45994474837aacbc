"""Which attribution method explains best: per-image rows → summaries with confidence intervals, the best method per
metric, the paired comparison against a reference, and the console's tables. Rows come from
:meth:`vitlrp.scoring.Scorer.score`."""
import math
import textwrap

from . import metrics as M
from . import stats as S
from .whichgamma import HEADLINE

CONSOLE_WIDTH = 120  # the console's lines fit this many columns
# the console table's column heads: two lines of at most 8 characters, the second ending in the metric's direction
HEADS = {"lerf_minus_morf": ("LeRF −", "MoRF"), "morf_auc": ("MoRF", "AUC"), "lerf_auc": ("LeRF", "AUC"),
         "box_share": ("box", "share"), "pointing_game": ("pointing", "game"), "part_pointing": ("part", "point"),
         "rank_accuracy": ("rank", "acc."), "negative_share": ("negative", "share"), "gini": ("", "gini"),
         "roughness": ("rough-", "ness"), "class_sensitivity": ("class", "sens."), "road_morf_auc": ("ROAD", "MoRF"),
         "road_lerf_auc": ("ROAD", "LeRF"), "road_lerf_minus_morf": ("ROAD", "L − M")}


def row_fields(metrics=M.METRICS):
    """per_image.csv's columns for these metrics."""
    return ["method", "sample_idx", "label", "target", "predicted", "correct", *metrics,
            "relevance_sum", "explained_logit", "empty", "error"]


ROW_FIELDS = row_fields()


def active_metrics(road=False):
    """The metrics of an evaluation with or without ROAD (name → :class:`vitlrp.metrics.Metric`)."""
    return {**M.METRICS, **(M.ROAD_METRICS if road else {})}


def conclude(rows, names, metrics, reference, n_boot=5000, seed=0, unsigned=()):
    """What the rows say: ``{'summary', 'best', 'runner_up', 'paired'}`` (``paired`` empty when ``reference`` is not
    among ``names``). ``unsigned``: the methods whose maps cannot be negative (see :func:`summarize`)."""
    summary = summarize(rows, names, metrics, unsigned)
    best = best_methods(summary, metrics=metrics)
    paired = paired_comparison(rows, names, reference, n_boot, seed, metrics) if reference in names else []
    return {"summary": summary, "best": best, "runner_up": runner_up_tests(summary, rows, best), "paired": paired}


def boxless(rows):
    """Sorted ``sample_idx`` of the scored images without a usable box (their box metrics are NaN, not averaged)."""
    return sorted({r["sample_idx"] for r in rows if r.get("no_box")})


def class_check_line(summary):
    """The class dependence of every class-specific method in one line: its mean |ρ| to one random other class
    (1 − ``class_sensitivity``). An indicator without a verdict: one class per image and a fixed threshold flip
    verdicts; the sanity checks judge many classes with intervals."""
    rho = {m: 1 - s["class_sensitivity"]["mean"] for m, s in summary.items() if "class_sensitivity" in s}
    if not rho:
        return ""
    values = ", ".join(f"{m} {r:.2f}" if math.isfinite(r) else f"{m} n/a" for m, r in rho.items())
    return (f"class dependence, mean |ρ| to one random other class (lower: the map depends more on the class): "
            f"{values}; for verdicts run the sanity checks (many classes, 95% intervals)")


def warning_lines(rows, names, summary):
    """The console's closing notes: images without a box, unreadable images, non-finite and empty maps."""
    lines = []
    no_box = boxless(rows)
    if no_box:
        lines.append(f"warning: {len(no_box)} image(s) have no usable box (NaN, outside the image, negative size or "
                     f"cropped away); their box metrics are left out of the means: sample_idx {no_box}")
    unreadable = sorted({r["sample_idx"] for r in rows if r["error"] and not r["error"].startswith("non-finite")})
    if unreadable:
        lines.append(f"{len(unreadable)} image(s) could not be read; they are listed in per_image.csv with their "
                     "error")
    for name in names:
        bad = [r["sample_idx"] for r in rows if r["method"] == name and r["error"].startswith("non-finite")]
        if bad:
            lines.append(f"{name}: {len(bad)} image(s) got a non-finite map (NaN or inf), left out of its means "
                         f"(per_image.csv has the error): sample_idx {bad}")
        empty = summary[name]["n_empty"]
        if empty:
            lines.append(f"{name}: {empty} of {summary[name]['n_images']} map(s) were empty (every pixel the same, "
                         "no evidence): those images are left out of all its metrics (per_image.csv: empty=1)")
    return lines


def merge_ranks(gathered, methods):
    """Merge the ``(rows, curves)`` of every rank: rows sorted by method then image, curves concatenated."""
    rows = sorted((r for part, _ in gathered for r in part),
                  key=lambda r: (methods.index(r["method"]), r["sample_idx"]))
    curves = {name: {k: [t for _, part in gathered for t in part[name].get(k, [])]
                     for k in sorted(set().union(*(part[name] for _, part in gathered)))} for name in methods}
    return rows, curves


def summarize(rows, methods, metrics=M.METRICS, unsigned=()):
    """Per method and metric: mean, 95% CI half-width, n; plus the counts of failed images and of empty maps (left
    out of every metric) per method, and ``not_applicable``: the metrics that say nothing about it (a method in
    ``unsigned`` cannot give negative relevance, so its negative share is 0 by construction)."""
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        ok = [r for r in mine if not r["error"]]
        entry = {"n_images": len(ok), "n_failed": len(mine) - len(ok), "n_empty": sum(int(r["empty"]) for r in ok),
                 "not_applicable": [k for k, m in metrics.items() if m.signed_only and method in unsigned]}
        for metric in metrics:
            mean, half, n = M.mean_ci([r[metric] for r in ok])
            entry[metric] = {"mean": mean, "ci95": half, "n": n}
        summary[method] = entry
    return summary


def best_methods(summary, exclude=("random",), metrics=M.METRICS):
    """metric → (best method, its mean), by each metric's direction (``random`` is a reference, not a candidate)."""
    best = {}
    for metric, spec in metrics.items():
        cands = [(m, s[metric]["mean"]) for m, s in summary.items() if m not in exclude
                 and math.isfinite(s[metric]["mean"]) and metric not in s.get("not_applicable", ())]
        if cands:
            best[metric] = (max if spec.higher else min)(cands, key=lambda c: c[1])
    return best


def _heads(metric):
    """The two header lines of a metric's column (8 characters at most each)."""
    first, second = HEADS.get(metric, (metric[:8], metric[8:14]))
    return first, f"{second} {'↑' if M.ALL_METRICS.get(metric, M.METRICS.get(metric)).higher else '↓'}".strip()


def _column_blocks(names, first_width, width):
    """``names`` in runs whose columns (9 characters each) fit ``width`` beside the method column."""
    per_block = max(1, (width - first_width) // 9)
    return [names[i:i + per_block] for i in range(0, len(names), per_block)]


def table_lines(summary, metrics=M.METRICS, best=None, width=CONSOLE_WIDTH):
    """The console table: one row per method, the mean of each metric (the headline LeRF − MoRF first, ``*`` on the
    best of a column: ``best`` as :func:`best_methods` gives it), in blocks of columns that fit ``width``; then a
    legend. The 95% CIs are in summary.csv."""
    names = sorted(metrics, key=lambda m: m != HEADLINE)
    first = max([len("method")] + [len(m) for m in summary]) + 1
    lines = []
    for block in _column_blocks(names, first, width):
        heads = [_heads(n) for n in block]
        lines += [(" " * first + "".join(f"{h[0]:>8} " for h in heads)).rstrip(),
                  (f"{'method':<{first}}" + "".join(f"{h[1]:>8} " for h in heads)).rstrip()]
        lines.append("-" * len(lines[-1].rstrip()))
        for method, s in summary.items():
            cells = ""
            for n in block:
                value = ("n/a†" if n in s.get("not_applicable", ()) else f"{s[n]['mean']:.3f}"
                         if math.isfinite(s[n]["mean"]) else "n/a")
                cells += f"{value:>8}" + ("*" if (best or {}).get(n, (None,))[0] == method else " ")
            lines.append(f"{method:<{first}}{cells}".rstrip())
    legend = ("Means over the scored images (95% CIs: summary.csv); ↑/↓: higher/lower is better; LeRF − MoRF is the "
              "headline faithfulness score" + ("; * the best of a column (random is a reference, not a candidate)"
                                               if best else ""))
    unsigned = [m for m, s in summary.items() if s.get("not_applicable")]
    if unsigned:
        legend += f". † says nothing about {', '.join(unsigned)}: their maps cannot be negative"
    return lines + wrap(legend, width)


def wrap(text, width=CONSOLE_WIDTH):
    """``text`` as lines of at most ``width`` columns, continued with an indent."""
    return textwrap.wrap(text, width, subsequent_indent="  ", break_on_hyphens=False) or [""]


def per_image_scores(rows, methods, metrics=M.METRICS):
    """``{method: {metric: {sample_idx: value}}}`` of the rows that were scored (failed images left out)."""
    scores = {m: {k: {} for k in metrics} for m in methods}
    for r in rows:
        if not r["error"] and r["method"] in scores:
            for k in metrics:
                scores[r["method"]][k][r["sample_idx"]] = float(r[k])
    return scores


def paired_comparison(rows, methods, reference, n_boot=5000, seed=0, metrics=M.METRICS):
    """Every method minus ``reference`` per image, per metric (see :func:`vitlrp.stats.paired_table`)."""
    return S.paired_table(per_image_scores(rows, methods, metrics), reference, M.directions(metrics), n_boot, seed)


def runner_up_tests(summary, rows, best):
    """metric → ``(runner-up, mean difference best − runner-up, Wilcoxon p, whether the signed-rank test leans the
    same way as the mean)`` on the images both scored.

    The runner-up is the second best mean among the candidates :func:`best_methods` considered; metrics with a
    single candidate are left out. The runner-up is picked from the same data and the metrics are not corrected for
    each other: a descriptive check, not a confirmatory test.
    """
    scores = per_image_scores(rows, list(summary), list(best))
    out = {}
    for metric, (winner, _) in best.items():
        higher = M.ALL_METRICS[metric].higher
        cands = [(m, s[metric]["mean"]) for m, s in summary.items() if m != winner and m != "random"
                 and math.isfinite(s[metric]["mean"]) and metric not in s.get("not_applicable", ())]
        if not cands:
            continue
        runner = (max if higher else min)(cands, key=lambda c: c[1])[0]
        x, y, _ = S.paired_values(scores[winner][metric], scores[runner][metric])
        d = x - y
        mean = float(d.mean()) if len(d) else math.nan
        out[metric] = (runner, mean, S.wilcoxon_p(d), S.agrees(mean, d))
    return out


def best_line(metric, method, value, runner=None, alpha=S.ALPHA):
    """``best <metric> <method> <value> (direction)`` plus, when given, the paired test against the runner-up."""
    line = f"best {metric:<20} {method:<22} {value:.3f}  ({better(metric)} is better)"
    if runner is None:
        return line
    name, diff, p, _ = runner
    return f"{line}; vs runner-up {name}: {diff:+.3f}, Wilcoxon p={p:.2g}, {verdict(runner, alpha)}"


def verdict(runner, alpha=S.ALPHA):
    """What the paired test of a best method against its runner-up (``(name, diff, p, agrees)``) says."""
    _, _, p, agree = runner
    if not math.isfinite(p):
        return "untested"
    if p >= alpha:
        return "not significantly better"
    # a small p from many small losses and a few large wins says "different", not "better"
    return "significantly better" if agree else "but the signed-rank test leans to the runner-up: no verdict"


def best_lines(best, runner_up, alpha=S.ALPHA, width=CONSOLE_WIDTH):
    """The console's few lines on the best methods: the headline's best with its test against the runner-up, then
    the other metrics' best (``*`` in the table) grouped by what that test says (every figure: summary.json)."""
    lines = []
    if HEADLINE in best:
        method, value = best[HEADLINE]
        runner = runner_up.get(HEADLINE)
        test = (f"; vs runner-up {runner[0]} {runner[1]:+.3f}, Wilcoxon p={runner[2]:.2g}: {verdict(runner, alpha)}"
                if runner else "")
        lines += wrap(f"Most faithful (LeRF − MoRF, higher is better): {method} {value:.3f}{test}", width)
    groups = {}
    for metric, (method, _) in best.items():
        if metric != HEADLINE:
            said = verdict(runner_up[metric], alpha) if metric in runner_up else "untested (no runner-up)"
            groups.setdefault(said.removeprefix("but the signed-rank test leans to the runner-up: "), []).append(
                f"{metric} ({method})")
    if groups:
        lines += wrap("The best of every other metric against its runner-up (paired Wilcoxon; summary.json has the "
                      "figures): " + "; ".join(f"{said}: {', '.join(items)}" for said, items in groups.items()),
                      width)
    return lines


def better(metric):
    """``'higher'`` or ``'lower'``: which way ``metric`` is better."""
    return "higher" if M.ALL_METRICS[metric].higher else "lower"


def paired_pointer(rows, files, width=CONSOLE_WIDTH):
    """The console's pointer to the paired comparison in its files: how many differences are significant."""
    if not rows:
        return ["no paired comparison: no reference method"]
    ref = rows[0]["reference"]
    better_ = sum(1 for r in rows if r["significant"] and r["mean_diff"] * (1 if M.ALL_METRICS[r["metric"]].higher
                                                                           else -1) > 0)
    worse = sum(1 for r in rows if r["significant"]) - better_
    return wrap(f"paired against {ref} (per image, every method and metric; Holm-corrected Wilcoxon and bootstrap "
                f"CIs): {better_} differences significantly better than {ref}, {worse} worse, "
                f"{len(rows) - better_ - worse} neither, of {len(rows)}; every row: {', '.join(map(str, files))}",
                width)

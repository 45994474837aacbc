"""Which attribution method explains best: score batches of maps, summarise with confidence intervals."""
import math

import torch

from . import metrics as M
from . import stats as S
from .pipeline import nonfinite_error


def row_fields(metrics=M.METRICS):
    """per_image.csv's columns for these metrics."""
    return ["method", "sample_idx", "label", "target", "predicted", "correct", *metrics,
            "relevance_sum", "explained_logit", "error"]


ROW_FIELDS = row_fields()


def active_metrics(road=False):
    """metric → higher is better, for an evaluation with or without ROAD."""
    return {**M.METRICS, **(M.ROAD_METRICS if road else {})}


def score_batch(relevance, logits, target, batch, rows_ok, prob_fn, images, patch, steps, tolerance, start, end,
                road=None):
    """Metrics of one method on one batch; returns per-image dicts and the MoRF/LeRF curves.

    ``road``: a ``fill`` (:func:`vitlrp.metrics.road_fill`) to add the ROAD curves and metrics, or None.
    """
    size = relevance.shape[-1]
    boxes = batch["box"][rows_ok].to(relevance.device)
    mask = M.box_mask(boxes, size)
    rel = relevance.float()
    curves = M.perturbation_curves(prob_fn, images, M.patch_scores(rel, patch), patch, steps, start, end)
    morf, lerf = M.auc(curves["morf"]), M.auc(curves["lerf"])
    scores = {
        "box_share": M.box_share(rel, mask), "pointing_game": M.pointing_game(rel, mask),
        "part_pointing": M.part_pointing(rel, batch["parts"][rows_ok].to(rel.device), tolerance),
        "rank_accuracy": M.rank_accuracy(rel, mask), "negative_share": M.negative_share(rel),
        "gini": M.gini(rel), "morf_auc": morf, "lerf_auc": lerf, "lerf_minus_morf": lerf - morf,
    }
    if road is not None:
        rc = M.perturbation_curves(prob_fn, images, M.patch_scores(rel, patch), patch, steps, start, end, road)
        curves.update(road_morf=rc["morf"], road_lerf=rc["lerf"])
        r_morf, r_lerf = M.auc(rc["morf"]), M.auc(rc["lerf"])
        scores.update(road_morf_auc=r_morf, road_lerf_auc=r_lerf, road_lerf_minus_morf=r_lerf - r_morf)
    scores = {k: v.float().cpu() for k, v in scores.items()}
    sums = rel.double().sum((1, 2)).cpu()
    explained = logits.gather(1, target.view(-1, 1).to(logits.device)).squeeze(1).cpu()
    has_box = mask.flatten(1).any(1).cpu()  # False: NaN, outside the image, negative size or cropped away
    out, finite = [], []
    for k, row in enumerate(rows_ok):
        entry = dict(sample_idx=int(batch["index"][row]), label=int(batch["label"][row]), target=int(target[k]),
                     predicted=int(logits[k].argmax()))
        entry["correct"] = int(entry["predicted"] == entry["label"])
        error = nonfinite_error(relevance[k], logits[k])
        finite.append(not error)
        if error:  # a NaN map would score as NaN and silently drop out of the means
            out.append({**entry, "error": error})
            continue
        entry.update({name: float(v[k]) for name, v in scores.items()})
        entry.update(relevance_sum=float(sums[k]), explained_logit=float(explained[k]), error="",
                     no_box=not bool(has_box[k]))
        out.append(entry)
    keep = torch.tensor(finite, dtype=torch.bool)
    return out, {name: c[keep] for name, c in curves.items()}


def boxless(rows):
    """Sorted ``sample_idx`` of the scored images without a usable box (their box metrics are NaN, not averaged)."""
    return sorted({r["sample_idx"] for r in rows if r.get("no_box")})


def merge_ranks(gathered, methods):
    """Merge the ``(rows, curves)`` of every rank: rows sorted by method then image, curves concatenated."""
    rows = sorted((r for part, _ in gathered for r in part),
                  key=lambda r: (methods.index(r["method"]), r["sample_idx"]))
    curves = {name: {k: [t for _, part in gathered for t in part[name][k]] for k in c}
              for name, c in gathered[0][1].items()}
    return rows, curves


def summarize(rows, methods, metrics=M.METRICS):
    """Per method and metric: mean, 95% CI half-width, n; plus the count of failed images per method."""
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        ok = [r for r in mine if not r["error"]]
        entry = {"n_images": len(ok), "n_failed": len(mine) - len(ok)}
        for metric in metrics:
            mean, half, n = M.mean_ci([r[metric] for r in ok])
            entry[metric] = {"mean": mean, "ci95": half, "n": n}
        summary[method] = entry
    return summary


def best_methods(summary, exclude=("random",), metrics=M.METRICS):
    """metric → (best method, its mean), by each metric's direction (``random`` is a reference, not a candidate)."""
    best = {}
    for metric, higher in metrics.items():
        cands = [(m, s[metric]["mean"]) for m, s in summary.items()
                 if m not in exclude and math.isfinite(s[metric]["mean"])]
        if cands:
            best[metric] = (max if higher else min)(cands, key=lambda c: c[1])
    return best


def table_lines(summary, metrics=M.METRICS):
    """The console table: one row per method, mean ± CI per metric."""
    names = list(metrics)
    width = {n: max(17, len(n) + 1) for n in names}
    head = f"{'method':<22}" + "".join(f"{n:>{width[n]}}" for n in names)
    lines = [head, "-" * len(head)]
    for method, s in summary.items():
        cells = "".join((f"{s[n]['mean']:.3f} ±{s[n]['ci95']:<5.3f}" if math.isfinite(s[n]["mean"]) else "n/a")
                        .rjust(width[n]) for n in names)
        lines.append(f"{method:<22}{cells}")
    return lines


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
    return S.paired_table(per_image_scores(rows, methods, metrics), reference, metrics, n_boot, seed)


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
        higher = M.ALL_METRICS[metric]
        cands = [(m, s[metric]["mean"]) for m, s in summary.items()
                 if m != winner and m != "random" and math.isfinite(s[metric]["mean"])]
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
    line = f"best {metric:<20} {method:<22} {value:.3f}  ({'higher' if M.ALL_METRICS[metric] else 'lower'} is better)"
    if runner is None:
        return line
    name, diff, p, agree = runner
    if not math.isfinite(p):
        verdict = "untested"
    elif p >= alpha:
        verdict = "not significantly better"
    else:  # a small p from many small losses and a few large wins says "different", not "better"
        verdict = "significantly better" if agree else "but the signed-rank test leans to the runner-up: no verdict"
    return f"{line}; vs runner-up {name}: {diff:+.3f}, Wilcoxon p={p:.2g}, {verdict}"
    return f"{line}; vs runner-up {name}: {diff:+.3f}, Wilcoxon p={p:.2g}, {verdict}"


def paired_lines(rows, alpha=S.ALPHA):
    """The console's paired table: one line per metric and method (difference to the reference, CI, Holm p)."""
    if not rows:
        return []
    ref = rows[0]["reference"]
    lines = [f"paired against {ref} (method − {ref}, mean of per-image differences, bootstrap 95% CI, "
             f"Wilcoxon p Holm-corrected over methods; * p < {alpha} with the signed-rank test leaning the mean's "
             "way, ? p small but leaning the other way; W/T/L by the metric's direction)",
             f"{'metric':<20} {'method':<22} {'diff':>8} {'95% CI':>20} {'p (Holm)':>9}   W/T/L"]
    for r in rows:
        ci = f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        star = "*" if r["significant"] else "?" if r["p_holm"] < alpha else " "
        lines.append(f"{r['metric']:<20} {r['method']:<22} {r['mean_diff']:>+8.3f} {ci:>20} {r['p_holm']:>9.2g}{star}  "
                     f"{r['wins']}/{r['ties']}/{r['losses']}")
    return lines

"""Which attribution method explains best: score batches of maps, summarise with confidence intervals."""
import math

import torch

from . import metrics as M
from .pipeline import nonfinite_error

ROW_FIELDS = ["method", "sample_idx", "label", "target", "predicted", "correct", *M.METRICS,
              "relevance_sum", "explained_logit", "error"]


def score_batch(relevance, logits, target, batch, rows_ok, prob_fn, images, patch, steps, tolerance, start, end):
    """Metrics of one method on one batch; returns per-image dicts and the MoRF/LeRF curves."""
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


def summarize(rows, methods):
    """Per method and metric: mean, 95% CI half-width, n; plus the count of failed images per method."""
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        ok = [r for r in mine if not r["error"]]
        entry = {"n_images": len(ok), "n_failed": len(mine) - len(ok)}
        for metric in M.METRICS:
            mean, half, n = M.mean_ci([r[metric] for r in ok])
            entry[metric] = {"mean": mean, "ci95": half, "n": n}
        summary[method] = entry
    return summary


def best_methods(summary, exclude=("random",)):
    """metric → (best method, its mean), by each metric's direction (``random`` is a reference, not a candidate)."""
    best = {}
    for metric, higher in M.METRICS.items():
        cands = [(m, s[metric]["mean"]) for m, s in summary.items()
                 if m not in exclude and math.isfinite(s[metric]["mean"])]
        if cands:
            best[metric] = (max if higher else min)(cands, key=lambda c: c[1])
    return best


def table_lines(summary):
    """The console table: one row per method, mean ± CI per metric."""
    names = list(M.METRICS)
    head = f"{'method':<22}" + "".join(f"{n:>17}" for n in names)
    lines = [head, "-" * len(head)]
    for method, s in summary.items():
        cells = "".join(f"{s[n]['mean']:>10.3f} ±{s[n]['ci95']:<5.3f}" if math.isfinite(s[n]["mean"])
                        else f"{'n/a':>17}" for n in names)
        lines.append(f"{method:<22}{cells}")
    return lines

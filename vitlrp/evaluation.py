"""Which attribution method explains best: score batches of maps, summarise with confidence intervals, plot."""
import math

import torch

from . import metrics as M
from .fileio import save_figure

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
    out = []
    for k, row in enumerate(rows_ok):
        entry = {name: float(v[k]) for name, v in scores.items()}
        entry.update(sample_idx=int(batch["index"][row]), label=int(batch["label"][row]), target=int(target[k]),
                     predicted=int(logits[k].argmax()), relevance_sum=float(sums[k]),
                     explained_logit=float(explained[k]), error="")
        entry["correct"] = int(entry["predicted"] == entry["label"])
        out.append(entry)
    return out, curves


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


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves, steps, path):
    """Mean MoRF and LeRF curves per method."""
    plt = _plt()
    x = M.removal_fractions(steps)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind, title in ((axes[0], "morf", "most relevant first (lower is better)"),
                            (axes[1], "lerf", "least relevant first (higher is better)")):
        for method, c in curves.items():
            if len(c[kind]):
                ax.plot(x, torch.cat(c[kind]).mean(0).numpy(), marker="o", ms=3, label=method)
        ax.set(title=title, xlabel="fraction of patches removed", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("probability of the explained class")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_bars(summary, metric, path):
    """One bar per method with its 95% interval."""
    plt = _plt()
    methods = list(summary)
    means = [summary[m][metric]["mean"] for m in methods]
    errs = [summary[m][metric]["ci95"] if math.isfinite(summary[m][metric]["ci95"]) else 0 for m in methods]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(methods)), 3.6))
    ax.bar(range(len(methods)), means, yerr=errs, capsize=4, color="#4C72B0")
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    better = "higher" if M.METRICS[metric] else "lower"
    ax.set(title=f"{metric} ({better} is better)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_table(summary, path):
    """The methods ranked by LeRF − MoRF, with every metric, as a table figure."""
    plt = _plt()
    order = sorted(summary, key=lambda m: -summary[m]["lerf_minus_morf"]["mean"]
                   if math.isfinite(summary[m]["lerf_minus_morf"]["mean"]) else math.inf)
    cols = list(M.METRICS)
    cells = [[f"{summary[m][c]['mean']:.3f}" for c in cols] for m in order]
    fig, ax = plt.subplots(figsize=(1.25 * len(cols) + 2, 0.45 * len(order) + 1.2))
    ax.axis("off")
    t = ax.table(cellText=cells, rowLabels=order, colLabels=[c.replace("_", "\n") for c in cols], loc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.scale(1, 1.6)
    for (row, _), cell in t.get_celld().items():
        if row == 0:
            cell.set_height(cell.get_height() * 1.8)
    ax.set_title("methods ranked by LeRF − MoRF (higher is more faithful)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)

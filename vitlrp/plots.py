"""Every picture drawn with matplotlib: training curves and the evaluation's plots (PNG, written atomically).

The computing modules (training, evaluation, metrics) return numbers; this module turns them into figures. Each
PNG records the size of its smallest text in pixels (:data:`vitlrp.render.TEXT_PX`), which the page tests check.
"""
import math

import torch

from . import metrics as M
from .fileio import save_figure
from .holdout import best_row, picked_on
from .render import TEXT_PX


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, dpi=110):
    """Save and close ``fig``, with the size in pixels of its smallest visible text recorded in the PNG."""
    from matplotlib.text import Text

    fig.draw_without_rendering()  # tick labels get their text
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    for table in (a for ax in fig.axes for a in ax.tables):
        sizes += [c.get_text().get_fontsize() for c in table.get_celld().values() if c.get_text().get_text()]
    save_figure(fig, path, dpi=dpi, metadata={TEXT_PX: f"{min(sizes) * dpi / 72:.3g}"} if sizes else {})
    _plt().close(fig)


def perturbation_curves(curves, steps, path, title=""):
    """Mean MoRF and LeRF curves per method."""
    plt = _plt()
    x = M.removal_fractions(steps)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind, title in ((axes[0], "morf", "most relevant first (lower is better)"),
                            (axes[1], "lerf", "least relevant first (higher is better)")):
        for method, c in curves.items():
            if len(c.get(kind, [])):
                ax.plot(x, torch.cat(c[kind]).mean(0).numpy(), marker="o", ms=3, label=method)
        ax.set(title=title, xlabel="fraction of patches removed", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("probability of the explained class")
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi=110)


def metric_bars(summary, metric, path):
    """One bar per method with its 95% interval."""
    plt = _plt()
    methods = list(summary)
    means = [summary[m][metric]["mean"] for m in methods]
    errs = [summary[m][metric]["ci95"] if math.isfinite(summary[m][metric]["ci95"]) else 0 for m in methods]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(methods)), 3.6))
    ax.bar(range(len(methods)), means, yerr=errs, capsize=4, color="#4C72B0")
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    better = "higher" if M.ALL_METRICS[metric].higher else "lower"
    ax.set(title=f"{metric} ({better} is better)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path, dpi=110)


def _cell(entry, not_applicable):
    """A table figure's cell as the HTML table shows it: n/a† where the metric says nothing about the method, n/a
    without a finite mean."""
    if not_applicable:
        return "n/a†"
    mean = (entry or {}).get("mean")
    return f"{mean:.3f}" if isinstance(mean, (int, float)) and math.isfinite(mean) else "n/a"


def ranking_table(summary, path, metrics=M.METRICS):
    """The methods ranked by LeRF − MoRF (n/a last), with every metric, as a table figure (n/a† and n/a as in the
    HTML table); at most 12 inches wide so its text stays readable on a 1400 px page."""
    plt = _plt()

    def headline(m):
        mean = summary[m].get("lerf_minus_morf", {}).get("mean")
        return -mean if isinstance(mean, (int, float)) and math.isfinite(mean) else math.inf

    order = sorted(summary, key=headline)
    cols = list(metrics)
    cells = [[_cell(summary[m].get(c), c in summary[m].get("not_applicable", ())) for c in cols] for m in order]
    fig, ax = plt.subplots(figsize=(min(12.0, 0.85 * len(cols) + 2), 0.4 * len(order) + 1.3))
    ax.axis("off")
    t = ax.table(cellText=cells, rowLabels=order, colLabels=[c.replace("_", "\n") for c in cols], loc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.scale(1, 1.6)
    for (row, _), cell in t.get_celld().items():
        if row == 0:
            cell.set_height(cell.get_height() * 1.8)
    na = any("n/a†" in row for row in cells)
    ax.set_title("methods ranked by LeRF − MoRF (higher is more faithful)" + (
        "\nn/a†: the metric says nothing about a method whose maps cannot be negative" if na else ""), fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi=110)


def training_curves(rows, path):
    """Loss and accuracy per epoch from ``summary.csv`` rows, as one PNG; the validation curves when the run held
    out a validation split, and the best epoch marked."""
    plt = _plt()
    epochs = [int(r["epoch"]) for r in rows]
    val = picked_on(rows) == "val"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    # one colour per split in both panels: train C0, validation C1, test C2
    ax1.plot(epochs, [float(r["train_loss"]) for r in rows], "o-", color="C0", label="train")
    if val:
        ax1.plot(epochs, [float(r["val_loss"]) for r in rows], "o-", color="C1", label="validation")
    ax1.plot(epochs, [float(r["test_loss"]) for r in rows], "o-", color="C2", label="test")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    if val:
        ax2.plot(epochs, [100 * float(r["val_top1"]) for r in rows], "o-", color="C1", label="validation top-1")
    ax2.plot(epochs, [100 * float(r["top1"]) for r in rows], "o-", color="C2", label="test top-1")
    ax2.plot(epochs, [100 * float(r["top5"]) for r in rows], "s--", color="C2", alpha=0.6, label="test top-5")
    if rows:
        ax2.axvline(int(best_row(rows)["epoch"]), color="grey", ls=":", label=f"best (on {picked_on(rows)})")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy", ylim=(0, 100))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path, dpi=110)


def gamma_surface(values, cis, convs, rows, metric, best, marks, path):
    """One metric over the γ grid: Linear γ (rows; constants, then schedules) × conv γ (columns), best cell boxed.

    ``values`` / ``cis``: ``[rows][cols]`` means and 95% half-widths; ``best``: (row, col); ``marks``: label →
    (row, col) for the presets."""
    import numpy as np

    plt = _plt()
    v = np.array(values, dtype=float)
    higher = M.METRICS[metric].higher
    fig, ax = plt.subplots(figsize=(1.1 * len(convs) + 3.4, 0.62 * len(rows) + 1.8))
    im = ax.imshow(v, cmap="viridis" if higher else "viridis_r", aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label=f"{metric} ({'higher' if higher else 'lower'} is better)")
    for r in range(len(rows)):
        for c in range(len(convs)):
            text = "n/a" if not np.isfinite(v[r, c]) else f"{v[r, c]:.3f}\n±{cis[r][c]:.3f}" \
                if np.isfinite(cis[r][c]) else f"{v[r, c]:.3f}"
            ax.text(c, r, text, ha="center", va="center", fontsize=7.5, color="white",
                    path_effects=_outline())
    if best is not None:  # a sweep whose maps are all empty has no best cell
        r, c = best
        ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
    for label, (r, c) in marks.items():
        ax.text(c + 0.45, r - 0.42, label, ha="right", va="top", fontsize=7.5, color="orange",
                path_effects=_outline())
    n_const = sum(1 for lin in rows if ":" not in lin and "/" not in lin)
    if 0 < n_const < len(rows):
        ax.axhline(n_const - 0.5, color="white", lw=2)
    ax.set_xticks(range(len(convs)), [f"{g:g}" for g in convs])
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set(xlabel="Conv2d γ (patch embedding)", ylabel="Linear γ (constant, or per-block schedule)",
           title=f"{metric}: best cell boxed in red" + (", presets in orange" if marks else ""))
    fig.tight_layout()
    _save(fig, path, dpi=110)


def _outline():
    import matplotlib.patheffects as pe

    return [pe.withStroke(linewidth=1.5, foreground="black")]


def pareto_front(points, front, recommended, marks, path):
    """Faithfulness (LeRF − MoRF) against box share, coloured by negative share; the Pareto front ringed.

    ``points``: name → (lerf_minus_morf, box_share, negative_share); ``marks``: preset label → cell name."""
    plt = _plt()
    names = list(points)
    xs, ys, cs = zip(*(points[n] for n in names))
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    sc = ax.scatter(xs, ys, c=cs, cmap="magma_r", s=28, edgecolors="none", zorder=2)
    fig.colorbar(sc, ax=ax, label="negative share (lower is cleaner)")
    fx = [points[n][0] for n in front]
    fy = [points[n][1] for n in front]
    ax.scatter(fx, fy, s=90, facecolors="none", edgecolors="tab:blue", lw=1.5, zorder=3,
               label="Pareto-optimal (all three aims)")
    if recommended in points:  # a sweep may recommend nothing
        rx, ry, _ = points[recommended]
        ax.scatter([rx], [ry], marker="*", s=320, color="red", edgecolors="black", zorder=4,
                   label=f"recommended: {recommended}")
    ax.set(xlabel="LeRF − MoRF (faithfulness, higher is better)", ylabel="box share (localization, higher is better)",
           title="the γ grid: faithfulness vs localization vs cleanliness")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _preset_labels(ax, {label: points[name][:2] for label, name in marks.items() if name in points})  # laid out
    _save(fig, path, dpi=110)


def _preset_labels(ax, where, size=8):
    """Label the presets' points without overprinting: presets on one point (within 6 pt) share one label, and a
    label that would cover another moves up a line. ``where``: label → (x, y) in data units."""
    to_pt = 72 / ax.figure.dpi
    groups = []
    for label, xy in where.items():
        x, y = (v * to_pt for v in ax.transData.transform(xy))
        near = next((g for g in groups if abs(g[1] - x) < 6 and abs(g[2] - y) < 6), None)
        if near:
            near[0].append(label)
        else:
            groups.append([[label], x, y, xy])
    boxes = []  # (left, right, bottom, top) in points of the labels placed so far
    for labels, x, y, xy in sorted(groups, key=lambda g: (g[2], g[1])):
        text, dy = " / ".join(labels), 4
        width = 0.6 * size * len(text)
        while any(x + 4 < r and x + 4 + width > left and y + dy < t and y + dy + size * 1.2 > b
                  for left, r, b, t in boxes):
            dy += size * 1.3
        boxes.append((x + 4, x + 4 + width, y + dy, y + dy + size * 1.2))
        ax.annotate(text, xy, xytext=(4, dy), textcoords="offset points", fontsize=size, color="tab:green")


def shortcut_scores(summary, rows, path):
    """Left: ROC AUC of the mark share (followed vs not) per method, with its bootstrap interval.
    Right: the mark share of every swapped image, split by whether the model followed the mark."""
    plt = _plt()
    methods = list(summary)
    x = range(len(methods))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(10, 2.2 * len(methods)), 4.2))
    auc = [summary[m]["auc"] for m in methods]
    err = [[max(0.0, a - summary[m]["auc_low"]) if math.isfinite(summary[m]["auc_low"]) else 0 for m, a in
            zip(methods, auc)],
           [max(0.0, summary[m]["auc_high"] - a) if math.isfinite(summary[m]["auc_high"]) else 0 for m, a in
            zip(methods, auc)]]
    ax1.bar(x, auc, yerr=err, capsize=4, color="#4C72B0")
    ax1.axhline(0.5, color="gray", ls="--", lw=1, label="chance (a random map)")
    ax1.set_xticks(x, methods, rotation=30, ha="right")
    ax1.set(ylim=(0, 1.02), title="does the mark share tell when the model followed the mark?",
            ylabel="ROC AUC (95% bootstrap interval)")
    ax1.legend(fontsize=8, loc="lower right")
    gen = torch.Generator().manual_seed(0)
    for label, color, offset in ((1, "#C62828", 0.17), (0, "#1565C0", -0.17)):
        xs, ys = [], []
        for i, m in enumerate(methods):
            vals = [r["mark_share"] for r in rows if r["method"] == m and r.get("swapped") and r["followed"] == label
                    and math.isfinite(r["mark_share"])]
            xs += [i + offset + 0.1 * (float(j) - 0.5) for j in torch.rand(len(vals), generator=gen)]
            ys += vals
        ax2.scatter(xs, ys, s=7, alpha=0.5, color=color,
                    label="model followed the mark" if label else "model did not follow it")
    ax2.set_xticks(x, methods, rotation=30, ha="right")
    ax2.set(ylim=(-0.02, 1.02), title="swapped-mark test images", ylabel="share of positive relevance on the mark")
    ax2.legend(fontsize=8, loc="upper right")
    for ax in (ax1, ax2):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path, dpi=110)


def forest_plot(rows, path):
    """Per metric: each method's mean paired difference to the reference with its bootstrap 95% interval.

    ``rows`` from :func:`vitlrp.stats.paired_table`; a filled red marker means Holm-adjusted p < 0.05. A dashed line
    marks 0 (no difference); the title says which side is better.
    """
    plt = _plt()
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    ref = rows[0]["reference"]
    cols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.0 * cols, 0.32 * len(methods) * nrows + 1.1 * nrows + 0.8),
                             squeeze=False, layout="constrained")  # constrained: the title never covers a panel
    for ax, metric in zip(axes.flat, metrics):
        mine = {r["method"]: r for r in rows if r["metric"] == metric}
        for y, method in enumerate(methods):
            r = mine.get(method)
            if r is None or not math.isfinite(r["mean_diff"]):
                continue
            sig = r["significant"]
            ax.errorbar(r["mean_diff"], y, xerr=[[r["mean_diff"] - r["ci_low"]], [r["ci_high"] - r["mean_diff"]]],
                        fmt="o", ms=5, capsize=3, color="#C44E52" if sig else "#4C72B0",
                        mfc="#C44E52" if sig else "white")
        ax.axvline(0, color="0.4", ls="--", lw=1)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        ax.set_ylim(len(methods) - 0.5, -0.5)
        ax.set_title(f"{metric} ({'higher' if M.ALL_METRICS[metric].higher else 'lower'} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"method − {ref}, per-image paired difference (bootstrap 95% CI); red filled: Holm p < 0.05",
                 fontsize=10)
    _save(fig, path, dpi=110)


SANITY_PANELS = ("abs_spearman", "pixel_abs_spearman", "spearman", "ssim")  # the measures sanity_curves draws


def sanity_curves(summary, steps, thresholds, path, test="randomization",
                  title="cascading randomization, head first (left) to everything randomized (right)"):
    """Similarity of each method's original map to the map after each randomization step of ``test`` (mean and 95%
    interval), one panel per measure of :data:`SANITY_PANELS`; ``thresholds``: measure → the verdict's line drawn on
    that panel."""
    plt = _plt()
    measures = [m for m in SANITY_PANELS if any(r["measure"] == m and r["test"] == test for r in summary)]
    methods = list(dict.fromkeys(r["method"] for r in summary))
    cols = 2
    fig, axes = plt.subplots(math.ceil(len(measures) / cols), cols, figsize=(12, 3.8 * math.ceil(len(measures) / 2)),
                             squeeze=False, layout="constrained")
    x = list(range(len(steps)))
    for ax, measure in zip(axes.flat, measures):
        for method in methods:
            mine = {r["step"]: r for r in summary if (r["method"], r["test"], r["measure"]) == (method, test, measure)}
            mean = [mine[s]["mean"] if s in mine else math.nan for s in steps]
            half = [mine[s]["ci95"] if s in mine and math.isfinite(mine[s]["ci95"]) else 0.0 for s in steps]
            ax.errorbar(x, mean, yerr=half, marker="o", ms=3, capsize=2, label=method)
        if measure in thresholds:
            ax.axhline(thresholds[measure], color="0.3", ls="--", lw=1)
        ax.set_xticks(x, steps, rotation=45, ha="right", fontsize=8)
        signed = measure in ("spearman", "pixel_spearman")  # ρ may be negative; |ρ| and SSIM of |maps| hardly
        note = "\n(dashed: the verdict's threshold, read at the last step)" if measure in thresholds else ""
        ax.set(title=f"{measure}: original map vs randomized model's{note}", ylim=(-1.02 if signed else -0.02, 1.02))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(measures):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path, dpi=110)

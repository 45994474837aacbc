"""vitlrp.plots: the figures agree with the tables (n/a stays n/a), no text overprints other text, and every PNG
records its smallest text size (the page tests check it renders at >= 11 px)."""
import math

import pytest
from PIL import Image

from vitlrp import plots
from vitlrp.render import TEXT_PX


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plots module saves, drawn (not written): a list filled as they are made."""
    figures = []

    def keep(fig, path, **kwargs):
        fig.canvas.draw()
        figures.append((fig, kwargs))

    plt = plots._plt()
    monkeypatch.setattr(plots, "save_figure", keep)
    monkeypatch.setattr(plots, "_plt", lambda: _no_close(plt))
    yield figures
    for fig, _ in figures:
        plt.close(fig)


class _no_close:
    """pyplot, except that close leaves the figure for the test to read."""

    def __init__(self, plt):
        self.plt = plt

    def __getattr__(self, name):
        return (lambda fig=None: None) if name == "close" else getattr(self.plt, name)


def boxes(fig, texts):
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in texts]


def overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def entry(mean):
    return {"mean": mean, "ci95": 0.01, "n": 4}


def test_the_ranking_figure_shows_n_a_where_the_table_does(drawn):
    summary = {"gradcam": {"not_applicable": ["negative_share"], "negative_share": entry(0.0),
                           "lerf_minus_morf": entry(0.2)},
               "empty": {"not_applicable": [], "negative_share": entry(math.nan), "lerf_minus_morf": entry(math.nan)},
               "balanced": {"not_applicable": [], "negative_share": entry(0.02), "lerf_minus_morf": entry(0.4)}}
    plots.ranking_table(summary, "x.png", ["negative_share", "lerf_minus_morf"])
    fig, _ = drawn[0]
    cells = {k: c.get_text().get_text() for k, c in fig.axes[0].tables[0].get_celld().items()}
    rows = [cells[(r, -1)] for r in range(1, 4)]
    assert rows == ["balanced", "gradcam", "empty"]  # ranked by LeRF − MoRF, n/a last
    assert [cells[(r, 0)] for r in range(1, 4)] == ["0.020", "n/a†", "n/a"]
    assert [cells[(r, 1)] for r in range(1, 4)] == ["0.400", "0.200", "n/a"]


def test_the_forest_plots_title_does_not_cover_a_panel(drawn):
    rows = [{"metric": m, "method": f"method_{k}", "reference": "balanced", "mean_diff": 0.1 * k, "ci_low": 0.0,
             "ci_high": 0.2 * k + 0.1, "significant": k % 2 == 0}
            for m in ("box_share", "gini", "roughness", "lerf_auc", "morf_auc") for k in range(9)]
    plots.forest_plot(rows, "x.png")
    fig, _ = drawn[0]
    (title,) = boxes(fig, [fig._suptitle])
    for ax in fig.axes:
        if ax.axison:
            panel = ax.get_tightbbox(fig.canvas.get_renderer())
            assert not overlap(title, panel), ax.get_title()


def test_the_pareto_labels_never_overprint(drawn):
    points = {f"gamma:{c}:{lin}": (0.35 + 0.001 * c, 0.80 + 0.01 * lin, 0.1) for c in range(5) for lin in range(5)}
    points["gamma:10:1"] = points["gamma:100:1"] = (0.3532, 0.8111, 0.01)  # aggressive and very_aggressive
    points["gamma:1:0.5"] = (0.3532, 0.8121, 0.02)  # balanced, just above them
    marks = {"balanced": "gamma:1:0.5", "aggressive": "gamma:10:1", "very_aggressive": "gamma:100:1",
             "baseline": "gamma:0:0"}
    plots.pareto_front(points, ["gamma:4:4"], "gamma:4:4", marks, "x.png")
    fig, _ = drawn[0]
    labels = [t for t in fig.axes[0].texts if t.get_text()]
    assert sorted(t.get_text() for t in labels) == ["aggressive / very_aggressive", "balanced", "baseline"]
    placed = boxes(fig, labels)
    assert not any(overlap(a, b) for i, a in enumerate(placed) for b in placed[i + 1:])
    plots.pareto_front(points, ["gamma:4:4"], None, marks, "x.png")  # a sweep that recommends nothing: no star


def test_every_figure_records_its_smallest_text(tmp_path):
    plots.metric_bars({"a": {"gini": entry(0.5)}, "b": {"gini": entry(0.4)}}, "gini", tmp_path / "bar.png")
    with Image.open(tmp_path / "bar.png") as im:
        size = float(im.info[TEXT_PX])
    assert 10 < size < 20  # the tick labels: 10 pt at 110 dpi

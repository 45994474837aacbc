"""Which γ, answered by search: the conv × linear grid (plus per-depth schedules), its surfaces, its Pareto front,
the recommended cell, and ``best_gamma.json`` (written by ``scripts/sweep_gamma.py``, read by the other scripts).

Scoring reuses :mod:`vitlrp.evaluation`; the maps come from :meth:`vitlrp.explain.Explainer.explain_many`.
"""
import json
import math
from pathlib import Path

from . import metrics as M
from .errors import UserError
from .explain import check_gamma, lin_gamma_value, parse_schedule, schedule_text

# the three aims a recommended γ trades off: metric → True when higher is better
OBJECTIVES = {"lerf_minus_morf": True, "box_share": True, "negative_share": False}
RULE = ("the Pareto-optimal cell (faithfulness LeRF − MoRF, box share, negative share) with the smallest sum of its "
        "three ranks among all cells; ties go to the higher LeRF − MoRF")


def cell_name(conv_gamma, lin_gamma):
    """The method name of a cell, as ``evaluate_lrp.py`` METHODS accepts it: ``gamma:<conv>:<lin>``."""
    return f"gamma:{conv_gamma:g}:{schedule_text(lin_gamma)}"


def grid(conv_gammas, lin_gammas, schedules=()):
    """Cells as ``(conv γ, Linear γ text)``: every conv γ with every constant Linear γ, then with every schedule.

    Returns ``(cells, rows)``: ``rows`` are the Linear γ texts in surface order (constants first)."""
    convs = [check_gamma("CONV_GAMMAS value", c) for c in conv_gammas]
    rows = [schedule_text(check_gamma("LIN_GAMMAS value", g)) for g in lin_gammas]
    for s in schedules:
        kind, _ = parse_schedule(s, "SCHEDULES entry")
        if kind == "const":
            raise UserError(f"SCHEDULES entry {s!r} is a constant: put constants in LIN_GAMMAS")
        rows.append(schedule_text(s, "SCHEDULES entry"))
    if not convs or not rows:
        raise UserError("the sweep needs at least one CONV_GAMMAS value and one LIN_GAMMAS value or schedule")
    for what, values in (("CONV_GAMMAS", convs), ("LIN_GAMMAS + SCHEDULES", rows)):
        if len(set(values)) < len(values):
            raise UserError(f"{what} lists a value twice")
    return [(c, lin) for lin in rows for c in convs], rows


def surface(summary, convs, rows, metric, key="mean"):
    """``[len(rows)][len(convs)]`` values of one metric (rows: Linear γ, columns: conv γ)."""
    return [[summary[cell_name(c, lin)][metric][key] for c in convs] for lin in rows]


def best_cells(summary):
    """metric → best cell name by the metric's direction (NaN means never win)."""
    best = {}
    for metric, higher in M.METRICS.items():
        cands = [(name, s[metric]["mean"]) for name, s in summary.items() if math.isfinite(s[metric]["mean"])]
        if cands:
            best[metric] = (max if higher else min)(cands, key=lambda c: c[1])[0]
    return best


def _oriented(summary, name):
    """The objectives of a cell, each turned so that larger is better (NaN → -inf: never preferred)."""
    out = []
    for metric, higher in OBJECTIVES.items():
        v = summary[name][metric]["mean"]
        out.append(-math.inf if not math.isfinite(v) else (v if higher else -v))
    return out


def pareto_front(summary):
    """Names of the cells no other cell beats in every objective (at least as good in all, better in one)."""
    pts = {n: _oriented(summary, n) for n in summary}
    return [n for n, p in pts.items()
            if not any(all(a >= b for a, b in zip(q, p)) and any(a > b for a, b in zip(q, p))
                       for m, q in pts.items() if m != n)]


def rank_sums(summary):
    """cell → sum of its ranks (1 = best, ties share the lowest rank) over the objectives."""
    pts = {n: _oriented(summary, n) for n in summary}
    sums = dict.fromkeys(summary, 0)
    for i in range(len(OBJECTIVES)):
        for n in summary:
            sums[n] += 1 + sum(1 for q in pts.values() if q[i] > pts[n][i])
    return sums


def recommend(summary):
    """The recommended cell's name (:data:`RULE`)."""
    front, sums = pareto_front(summary), rank_sums(summary)
    return min(front, key=lambda n: (sums[n], -_oriented(summary, n)[0]))


def cell_rows(summary, cells, front, sums):
    """One CSV row per cell: its γ, whether it is on the Pareto front, its rank sum, every metric ± CI."""
    rows = []
    for conv, lin in cells:
        name = cell_name(conv, lin)
        s = summary[name]
        row = {"method": name, "conv_gamma": conv, "lin_gamma": lin, "schedule": parse_schedule(lin)[0] != "const",
               "pareto": name in front, "rank_sum": sums[name], "n_images": s["n_images"]}
        for metric in M.METRICS:
            row[metric], row[f"{metric}_ci95"] = s[metric]["mean"], s[metric]["ci95"]
        rows.append(row)
    return rows


CELL_FIELDS = ["method", "conv_gamma", "lin_gamma", "schedule", "pareto", "rank_sum", "n_images",
               *[f for m in M.METRICS for f in (m, f"{m}_ci95")]]


def _setting(cells, name):
    conv, lin = next((c, lin) for c, lin in cells if cell_name(c, lin) == name)
    return {"conv_gamma": conv, "lin_gamma": lin_gamma_value(lin), "method": name}


def best_gamma_doc(summary, cells, presets):
    """The content of ``best_gamma.json``: the recommended setting, the best per metric, the front, the presets."""
    rec = recommend(summary)
    front, sums = pareto_front(summary), rank_sums(summary)
    by_name = {cell_name(c, lin): (c, lin) for c, lin in cells}
    preset_rows = {}
    for preset, (conv, lin) in presets.items():
        name = cell_name(conv, lin)
        preset_rows[preset] = {"method": name, "in_grid": name in summary}
        if name in summary:
            preset_rows[preset].update(pareto=name in front, rank_sum=sums[name],
                                       **{m: summary[name][m]["mean"] for m in OBJECTIVES})
    return {
        "recommended": {**_setting(cells, rec), "rule": RULE, "rank_sum": sums[rec],
                        "scores": {m: summary[rec][m] for m in M.METRICS}},
        "best": {metric: {**_setting(cells, name), "mean": summary[name][metric]["mean"],
                          "ci95": summary[name][metric]["ci95"]} for metric, name in best_cells(summary).items()},
        "pareto": [n for n in by_name if n in front],
        "objectives": {m: ("higher" if h else "lower") + " is better" for m, h in OBJECTIVES.items()},
        "presets": preset_rows,
        "higher_is_better": M.METRICS,
    }


def read_gamma_file(spec, name="GAMMA_FILE"):
    """``(conv γ, Linear γ or schedule text)`` from ``best_gamma.json``; ``path#metric`` takes that metric's best
    cell instead of the recommended one."""
    path, _, pick = str(spec).partition("#")
    if Path(path).is_dir():
        inside = " (it holds one: pass that file)" if (Path(path) / "best_gamma.json").is_file() else ""
        raise UserError(f"{name} {path} is a folder, not a best_gamma.json file{inside}")
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{name} {path} does not exist", fix="gamma_file") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{name} {path} is not a readable best_gamma.json ({err})") from None
    try:
        entry = doc["recommended"] if pick in ("", "recommended") else doc["best"][pick]
        conv, lin = entry["conv_gamma"], entry["lin_gamma"]
    except (KeyError, TypeError):
        choices = ", ".join(["recommended", *doc.get("best", {})]) if isinstance(doc, dict) else "recommended"
        raise UserError(f"{name} {spec}: no setting {pick or 'recommended'!r} in it (choose {choices})") from None
    return check_gamma(f"{name} conv_gamma", conv), lin_gamma_value(lin, f"{name} lin_gamma")

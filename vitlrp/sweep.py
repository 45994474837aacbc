"""Which γ, answered by search: the conv × linear grid (plus per-depth schedules), its surfaces, its Pareto front,
the recommended cell, and ``best_gamma.json`` (written by ``scripts/sweep_gamma.py``, read by the other scripts).

A cell is a :class:`~vitlrp.gamma.GammaSpec`, named like a method (``gamma:<conv>:<lin>``). Scoring reuses
:mod:`vitlrp.evaluation`; the maps come from :meth:`vitlrp.explainer.Explainer.attribute_gammas`.
"""
import math

from . import evaluation as E
from . import metrics as M
from .errors import UserError
from .evaluation import best_methods
from .gamma import GammaSpec, check_gamma, parse_schedule, schedule_text
from .sanity.verdicts import CLASS_THRESHOLD, class_check

# the three aims a recommended γ trades off: metric → True when higher is better
OBJECTIVES = {"lerf_minus_morf": True, "box_share": True, "negative_share": False}
RULE = ("among the cells that pass the class check (mean |ρ| to a random other class below "
        f"{CLASS_THRESHOLD}), the Pareto-optimal cell (faithfulness LeRF − MoRF, box share, negative share) with "
        "the smallest sum of its three ranks; ties go to the higher LeRF − MoRF")


def grid(conv_gammas, lin_gammas, schedules=()):
    """Cells (:class:`~vitlrp.gamma.GammaSpec`): every conv γ with every constant Linear γ, then with every schedule.

    Returns ``(cells, rows)``: ``rows`` are the Linear γ texts in surface order (constants first)."""
    convs = [check_gamma("conv_gammas value", c) for c in conv_gammas]
    rows = [schedule_text(check_gamma("lin_gammas value", g)) for g in lin_gammas]
    for s in schedules:
        form, _ = parse_schedule(s, "schedules entry")
        if form == "const":
            raise UserError(f"schedules entry {s!r} is a constant: put constants in lin_gammas",
                            setting=("schedules", "lin_gammas"))
        rows.append(schedule_text(s, "schedules entry"))
    if not convs or not rows:
        raise UserError("the sweep needs at least one conv_gammas value and one lin_gammas value or schedule",
                        setting=("conv_gammas", "lin_gammas"))
    for what, values in (("conv_gammas", convs), ("lin_gammas + schedules", rows)):
        if len(set(values)) < len(values):
            raise UserError(f"{what} lists a value twice", setting=("conv_gammas", "lin_gammas", "schedules"))
    return [GammaSpec(c, lin) for lin in rows for c in convs], rows


def surface(summary, convs, rows, metric, key="mean"):
    """``[len(rows)][len(convs)]`` values of one metric (rows: Linear γ, columns: conv γ)."""
    return [[summary[GammaSpec(c, lin).name][metric][key] for c in convs] for lin in rows]


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


def cell_rows(summary, cells, front, sums, class_failed=()):
    """One CSV row per cell: its γ, whether it passes the class check and is on the Pareto front (of the cells that
    pass), its rank sum among them, every metric ± CI."""
    rows = []
    for cell in cells:
        name = cell.name
        s = summary[name]
        row = {"method": name, "conv_gamma": cell.conv, "lin_gamma": cell.lin_text, "schedule": cell.is_schedule,
               "class_check": "fail" if name in class_failed else "pass" if s["n_images"] else "",
               "pareto": name in front, "rank_sum": sums.get(name, ""), "n_images": s["n_images"]}
        for metric in M.METRICS:
            row[metric], row[f"{metric}_ci95"] = s[metric]["mean"], s[metric]["ci95"]
        rows.append(row)
    return rows


CELL_FIELDS = ["method", "conv_gamma", "lin_gamma", "schedule", "class_check", "pareto", "rank_sum", "n_images",
               *[f for m in M.METRICS for f in (m, f"{m}_ci95")]]


def _setting(cells, name):
    cell = next(c for c in cells if c.name == name)
    return {"conv_gamma": cell.conv, "lin_gamma": cell.lin, "method": name}


def best_gamma_doc(summary, cells, presets, class_failed=(), every_cell=None):
    """The content of ``best_gamma.json``: the recommended setting (with its sanity figures), the best per metric
    (both among the cells of ``summary``: those that pass the class check, unless none does), the front, the
    presets (their objectives from ``every_cell``'s summary, whether they pass or not), and the cells that failed the
    class check (``class_failed``)."""
    every_cell = every_cell or summary
    rec = recommend(summary)
    front, sums = pareto_front(summary), rank_sums(summary)
    rho, passed = class_check(summary[rec]) if "class_sensitivity" in summary[rec] else (math.nan, False)
    by_name = {c.name: c for c in cells}
    preset_rows = {}
    for preset, spec in presets.items():
        name = spec.name
        preset_rows[preset] = {"method": name, "in_grid": name in by_name,
                               "class_check": "fail" if name in class_failed else "pass" if name in summary else ""}
        if name in every_cell:
            preset_rows[preset].update(pareto=name in front, rank_sum=sums.get(name, ""),
                                       **{m: every_cell[name][m]["mean"] for m in OBJECTIVES})
    best = best_methods(summary, exclude=())
    return {
        "recommended": {**_setting(cells, rec), "rule": RULE, "rank_sum": sums[rec],
                        "scores": {m: summary[rec][m] for m in M.METRICS},
                        "sanity": {"class_abs_rho": rho, "passes_class_check": passed,
                                   "class_check_max_abs_rho": CLASS_THRESHOLD}},
        "class_check_failed": list(class_failed),
        "best": {metric: {**_setting(cells, name), "mean": summary[name][metric]["mean"],
                          "ci95": summary[name][metric]["ci95"]} for metric, (name, _) in best.items()},
        "pareto": [n for n in by_name if n in front],
        "objectives": {m: ("higher" if h else "lower") + " is better" for m, h in OBJECTIVES.items()},
        "presets": preset_rows,
        "higher_is_better": M.directions(M.METRICS),
    }


def conclude(rows, names, cells, n_sampled, presets):
    """What the sweep's rows say: the summary, the Pareto front and rank sums of the cells that scored, the
    recommendation (``doc``, the content of best_gamma.json), and the failures: images that failed in every cell
    (unreadable, or non-finite in all) and cells that failed on every image (left out of the front and the
    recommendation). Raises when no image was scored at all."""
    summary = E.summarize(rows, names)
    failed_cells = [n for n in names if summary[n]["n_images"] == 0]
    ok_by_image = {}
    for r in rows:
        ok_by_image[r["sample_idx"]] = ok_by_image.get(r["sample_idx"], False) or not r["error"]
    failed = sorted(i for i, ok in ok_by_image.items() if not ok)
    if len(failed_cells) == len(names):
        raise UserError("no image could be scored in any cell: every image was unreadable or gave a non-finite map "
                        "(see per-image errors above); nothing to recommend")
    scored = {n: s for n, s in summary.items() if n not in failed_cells}
    class_failed = [n for n, s in scored.items() if not class_check(s)[1]]
    candidates = {n: s for n, s in scored.items() if n not in class_failed} or scored  # none passes: say so below
    front, sums = pareto_front(candidates), rank_sums(candidates)
    named = {p: g.name for p, g in presets.items()}
    return {"summary": summary, "front": front, "sums": sums,
            "doc": best_gamma_doc(candidates, cells, presets, class_failed, summary), "presets": named,
            "failed": failed,
            "failed_cells": failed_cells, "class_failed": class_failed, "n_ok": n_sampled - len(failed)}


def failure_lines(found):
    """The console's notes on the class check and on images and cells that failed."""
    lines = []
    failed, n = found["class_failed"], len(found["summary"]) - len(found["failed_cells"])
    if failed:
        rec = found["doc"]["recommended"]
        lines.append(f"class check: {len(failed)} of {n} cells fail it (mean |ρ| to a random other class ≥ "
                     f"{CLASS_THRESHOLD}: their maps hardly depend on the class asked) and cannot be "
                     "recommended" + ("; NO cell passes, so the recommendation above fails it too"
                                      if not rec["sanity"]["passes_class_check"] else ""))
    if found["failed_cells"]:
        lines.append(f"warning: {len(found['failed_cells'])} cell(s) gave no finite map on any image and are left out "
                     f"of the front and the recommendation: {', '.join(found['failed_cells'])}")
    partly = [n for n, s in found["summary"].items()
              if s["n_failed"] > len(found["failed"]) and n not in found["failed_cells"]]
    if found["failed"]:
        lines.append(f"{len(found['failed'])} image(s) could not be read or gave a non-finite map in every cell; they "
                     "are listed in per_image.csv with their error")
    if partly:
        names = ", ".join(partly[:5]) + (" ..." if len(partly) > 5 else "")
        lines.append(f"{len(partly)} cell(s) gave non-finite maps on some images, left out of their means "
                     f"(cells.csv's n_images says how many each scored): {names}")
    return lines

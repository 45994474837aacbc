"""Which γ, answered by search: the conv × linear grid (plus per-depth schedules), its surfaces, its Pareto front,
the recommended cell, how firm that answer is, and ``best_gamma.json`` (written by ``scripts/sweep_gamma.py``, read by
the other scripts).

A cell is a :class:`~vitlrp.gamma.GammaSpec`, named like a method (``gamma:<conv>:<lin>``). Scoring reuses
:mod:`vitlrp.evaluation`; the maps come from :meth:`vitlrp.explainer.Explainer.attribute_gammas`.

The class check of a cell is the sanity checks' (:mod:`vitlrp.sanity.verdicts`): per image the mean |ρ| between its
map of the explained class and its maps of the other classes compared (``class_abs_rho``, patch level;
``class_pixel_abs_rho``, pixel level, where the Conv2d γ acts), a t interval over the images, and a verdict at each
level. A cell is a candidate under a rule (:func:`class_rules`) when it passes at both levels: under the default rule
its 95% interval lies below :data:`~vitlrp.sanity.verdicts.CLASS_MULTIPLE` × the chance |ρ|; the firmness table adds
fixed thresholds (:data:`FIXED_THRESHOLDS`) and the paired rule (not significantly above the gradient baselines).
"""
import math

from . import evaluation as E
from . import metrics as M
from .errors import UserError
from .evaluation import best_methods
from .gamma import GammaSpec, check_gamma, parse_schedule, schedule_text
from .sanity import verdicts as V
from .sanity.runner import class_levels
from .stats import t_interval

# the three aims a recommended γ trades off: metric → True when higher is better
OBJECTIVES = {"lerf_minus_morf": True, "box_share": True, "negative_share": False}
CLASS_COLUMNS = {"patch": "class_abs_rho", "pixel": "class_pixel_abs_rho"}  # per_image.csv's class-check values
FIXED_THRESHOLDS = (0.5, 0.6, 0.7)  # the firmness table's fixed thresholds of the mean |ρ|
PARETO = ("the Pareto-optimal cell (faithfulness LeRF − MoRF, box share, negative share) with the smallest sum of "
          "its three ranks; ties go to the higher LeRF − MoRF")
RULE = f"among the cells that pass the class check at patch and pixel level, {PARETO}"


def by_linear(cells):
    """The cells grouped by their Linear γ (and attention), in grid order: one forward serves each group."""
    groups = {}
    for c in cells:
        groups.setdefault((c.lin, c.attention), []).append(c)
    return list(groups.values())


def explain_cells(explainer, s, cells, others, patch):
    """The maps of every cell of a :class:`~vitlrp.scoring.Scorer`'s batch for scoring (``{name: (logits, map,
    map of the random other class)}``) and each cell's class-check values (``{name: {level: [B]}}``, against the
    classes ``others`` ``[B, M]``). One forward per Linear-γ group (:func:`by_linear`): a group's maps of every class
    are held at once, not the whole grid's."""
    targets = [s.target, s.other] + [others[:, j] for j in range(others.shape[1])]
    maps, values = {}, {}
    for group in by_linear(cells):
        for cell, found in zip(group, explainer.attribute_gammas(s.images, targets, group)):
            maps[cell.name] = (found[0].logits, found[0].relevance, found[1].relevance)
            values[cell.name] = class_levels(found[0].relevance, [f.relevance for f in found[2:]], patch)
    return maps, values


def baseline_values(model, s, others, patch, settings=None):
    """The class-check values of the gradient baselines (:data:`~vitlrp.sanity.verdicts.BASELINES`) on the same
    images and classes: ``{name: {level: [B]}}``, each from one forward."""
    from .methods import create_method

    targets = [s.target] + [others[:, j] for j in range(others.shape[1])]
    out = {}
    for name in V.BASELINES:
        with create_method(name, model, settings) as method:
            found = method.attribute_many(s.images, targets, s.ids)
        out[name] = class_levels(found[0].relevance, [f.relevance for f in found[1:]], patch)
    return out


def rule_text(label, passed):
    """The recommendation's rule in words, for the class-check rule ``label``; ``passed``: whether any cell passed
    it (else the recommendation is the best of all cells, and the text says so)."""
    if passed:
        return f"among the cells that pass the class check ({label}) at patch and pixel level, {PARETO}"
    return f"NO cell passes the class check ({label}); among all scored cells, {PARETO}"


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


def cell_rows(summary, cells, front, sums, verdicts):
    """One CSV row per cell: its γ, its class check (the default rule's word, patch and pixel |ρ|), whether it is on
    the Pareto front (of the candidates), its rank sum among them, the images it scored (empty maps not counted),
    every metric ± CI."""
    rows = []
    for cell in cells:
        name = cell.name
        s, v = summary[name], verdicts["cells"].get(name, {})
        row = {"method": name, "conv_gamma": cell.conv, "lin_gamma": cell.lin_text, "schedule": cell.is_schedule,
               "class_check": v.get("word", "n/a"), "class_abs_rho": v.get("patch", (math.nan,))[0],
               "class_pixel_abs_rho": v.get("pixel", (math.nan,))[0], "pareto": name in front,
               "rank_sum": sums.get(name, ""), "n_images": scored(s)}
        for metric in M.METRICS:
            row[metric], row[f"{metric}_ci95"] = s[metric]["mean"], s[metric]["ci95"]
        rows.append(row)
    return rows


CELL_FIELDS = ["method", "conv_gamma", "lin_gamma", "schedule", "class_check", "class_abs_rho", "class_pixel_abs_rho",
               "pareto", "rank_sum", "n_images", *[f for m in M.METRICS for f in (m, f"{m}_ci95")]]


def scored(entry):
    """The images a cell's maps were scored on: read, finite, and not empty (an empty map leaves every metric)."""
    return entry["n_images"] - entry.get("n_empty", 0)


def _setting(cells, name):
    cell = next(c for c in cells if c.name == name)
    return {"conv_gamma": cell.conv, "lin_gamma": cell.lin, "method": name}


def class_values(rows, names):
    """``{level: {cell: {sample_idx: mean |ρ|}}}`` of the rows' class-check columns (undefined values left out)."""
    out = {level: {n: {} for n in names} for level in CLASS_COLUMNS}
    for r in rows:
        for level, col in CLASS_COLUMNS.items():
            v = r.get(col)
            if r["method"] in out[level] and isinstance(v, (int, float)) and math.isfinite(v):
                out[level][r["method"]][r["sample_idx"]] = float(v)
    return out


def class_rules(rows, names, baseline_rows, patches):
    """The class check of every cell under every rule: ``{"cells": {cell: {word, patch, pixel}}`` (the default
    rule), ``"rules": [{label, threshold, words}]`` (the default, :data:`FIXED_THRESHOLDS`, the paired rule) and the
    chance level, threshold and baselines' figures."""
    values = class_values(rows + baseline_rows, names + list(V.BASELINES))
    stats = {n: {level: t_interval(list(values[level][n].values())) for level in CLASS_COLUMNS} for n in names}
    chance = V.chance_abs_rho(patches) if patches else math.nan
    default = V.CLASS_MULTIPLE * chance
    rules = [{"label": f"{V.CLASS_MULTIPLE:g} × chance |ρ| = {default:.3f}", "threshold": default}]
    rules += [{"label": f"|ρ| < {t:g}", "threshold": t} for t in FIXED_THRESHOLDS]
    for rule in rules:
        rule["words"] = {n: V.combine(V.threshold_word(m, h, rule["threshold"]) for m, h, _ in stats[n].values())
                         for n in names}
    paired = {level: V.paired_verdict(values[level], names + [b for b in V.BASELINES if values[level][b]])
              for level in CLASS_COLUMNS}
    refs = [b for b in V.BASELINES if values["patch"][b]]
    rules.append({"label": f"paired: not above {' or '.join(refs) or 'the gradient baselines (not run)'}",
                  "threshold": None, "words": {n: V.combine(paired[level][n]["verdict"] for level in CLASS_COLUMNS)
                                               if refs else "n/a" for n in names}, "available": bool(refs)})
    cells = {n: {"word": rules[0]["words"][n], **{level: stats[n][level] for level in CLASS_COLUMNS}} for n in names}
    baselines = {b: {level: t_interval(list(values[level][b].values()))[:2] for level in CLASS_COLUMNS} for b in refs}
    return {"cells": cells, "rules": rules, "chance": chance, "threshold": default, "patches": patches,
            "baselines": baselines}


def firmness(summary, verdicts, scored_cells):
    """The recommended cell under every rule of ``verdicts`` (None where no cell passes it), and whether they agree:
    ``{"table": [{rule, threshold, candidates, recommended}], "firm": bool, "line": one line saying so}``."""
    table = []
    for rule in verdicts["rules"]:
        cands = {n: summary[n] for n in scored_cells if rule["words"].get(n) == "pass"}
        table.append({"rule": rule["label"], "threshold": rule["threshold"], "candidates": len(cands),
                      "recommended": recommend(cands) if cands else None, "run": rule.get("available", True)})
    answers = {t["recommended"] for t in table if t["run"]}  # a rule whose baselines were not run says nothing
    firm = len(answers) == 1
    listing = "; ".join(f"{t['rule']}: {t['recommended'] or 'none'}" for t in table)
    line = (f"The answer does not change with the class-check rule ({listing})." if firm else
            f"The answer changes with the class-check rule: {listing}.")
    return {"table": table, "firm": firm, "line": line}


def best_gamma_doc(found, cells, presets):
    """The content of ``best_gamma.json`` from :func:`conclude`'s ``found``: the recommended setting (None when the
    sweep made none, ``why`` then says why) with its class check, the best per metric (among the candidates), the
    front, the presets (their objectives whether they pass or not), the cells that fail the class check, the
    firmness table and the class check's settings."""
    summary, candidates, v = found["summary"], found["candidates"], found["verdicts"]
    rec = found["recommended"]
    front, sums = found["front"], found["sums"]
    by_name = {c.name: c for c in cells}
    preset_rows = {}
    for preset, spec in presets.items():
        name = spec.name
        preset_rows[preset] = {"method": name, "in_grid": name in by_name,
                               "class_check": v["cells"][name]["word"] if name in v["cells"] else ""}
        if name in summary:
            preset_rows[preset].update(pareto=name in front, rank_sum=sums.get(name, ""),
                                       **{m: summary[name][m]["mean"] for m in OBJECTIVES})
    best = best_methods(candidates, exclude=()) if candidates else {}
    doc = {"recommended": None, "why": found["why"],
           "class_check_failed": [n for n, c in v["cells"].items() if c["word"] == "fail"],
           "class_check_undecided": [n for n, c in v["cells"].items() if c["word"] in ("undecided", "n/a")],
           "best": {metric: {**_setting(cells, name), "mean": summary[name][metric]["mean"],
                             "ci95": summary[name][metric]["ci95"], "passes_class_check": found["passed"]}
                    for metric, (name, _) in best.items()},
           "pareto": [n for n in by_name if n in front],
           "objectives": {m: ("higher" if h else "lower") + " is better" for m, h in OBJECTIVES.items()},
           "presets": preset_rows, "higher_is_better": M.directions(M.METRICS),
           "firmness": found["firmness"],
           "class_check": {"rule": "pass when the 95% interval (t over images) of the mean |ρ| to the other classes "
                                   "lies below the threshold at patch and at pixel level",
                           "chance_abs_rho": v["chance"], "patches": v["patches"], "multiple": V.CLASS_MULTIPLE,
                           "threshold": v["threshold"],
                           "baselines": {b: {level: {"mean": m, "ci95": h} for level, (m, h) in by.items()}
                                         for b, by in v["baselines"].items()}}}
    if rec:
        c = v["cells"][rec]
        doc["recommended"] = {**_setting(cells, rec), "rule": found["rule"], "rank_sum": sums[rec],
                              "scores": {m: summary[rec][m] for m in M.METRICS},
                              "sanity": {"class_abs_rho": c["patch"][0], "class_abs_rho_ci95": c["patch"][1],
                                         "class_pixel_abs_rho": c["pixel"][0],
                                         "class_pixel_abs_rho_ci95": c["pixel"][1], "class_verdict": c["word"],
                                         "passes_class_check": found["passed"],
                                         "class_check_max_abs_rho": v["threshold"]}}
    return doc


def conclude(rows, names, cells, n_sampled, presets, baseline_rows=(), patches=None):
    """What the sweep's rows say: the summary, the class check of every cell under every rule, the candidates (the
    cells that pass the default rule; all scored cells when none does), their Pareto front and rank sums, the
    recommendation (None when no cell scored any image: ``why`` says why), the firmness table, ``doc`` (the content of
    best_gamma.json), and the failures: images that failed in every cell (unreadable, or non-finite in all) and cells
    that scored no image (left out of the front and the recommendation)."""
    summary = E.summarize(rows, names)
    failed_cells = [n for n in names if scored(summary[n]) == 0]
    ok_by_image = {}
    for r in rows:
        if r["method"] in summary:
            ok_by_image[r["sample_idx"]] = ok_by_image.get(r["sample_idx"], False) or not r["error"]
    failed = sorted(i for i, ok in ok_by_image.items() if not ok)
    verdicts = class_rules(list(rows), list(names), list(baseline_rows), patches)
    scored_cells = [n for n in names if n not in failed_cells]
    passing = [n for n in scored_cells if verdicts["cells"][n]["word"] == "pass"]
    candidates = {n: summary[n] for n in (passing or scored_cells)}
    front, sums = (pareto_front(candidates), rank_sums(candidates)) if candidates else ([], {})
    label = verdicts["rules"][0]["label"]
    why = "" if candidates else ("no cell scored any image: every map was unreadable, non-finite or empty (all "
                                 "pixels equal), so no metric and no class check is defined")
    found = {"summary": summary, "front": front, "sums": sums, "candidates": candidates, "verdicts": verdicts,
             "recommended": recommend(candidates) if candidates else None, "passed": bool(passing),
             "rule": rule_text(label, bool(passing)), "why": why,
             "firmness": firmness(summary, verdicts, scored_cells), "presets": {p: g.name for p, g in presets.items()},
             "failed": failed, "failed_cells": failed_cells, "n_ok": n_sampled - len(failed),
             "n_scored": len({r["sample_idx"] for r in rows if r["method"] in summary and not r["error"]
                              and not int(r.get("empty") or 0)})}
    found["class_failed"] = [n for n in scored_cells if verdicts["cells"][n]["word"] == "fail"]
    found["doc"] = best_gamma_doc(found, cells, presets)
    return found


def failure_lines(found):
    """The console's notes on the class check and on images and cells that failed."""
    lines = []
    n = len(found["summary"]) - len(found["failed_cells"])
    words = [c["word"] for name, c in found["verdicts"]["cells"].items() if name not in found["failed_cells"]]
    if found["recommended"] and not found["passed"]:
        lines.append(f"class check: NO cell of {n} passes it ({words.count('fail')} fail, {words.count('undecided')} "
                     "undecided), so the recommendation above does not pass it either: its maps may hardly depend "
                     "on the class; reading it as a gamma file is refused unless forced")
    elif words.count("fail"):
        lines.append(f"class check: {words.count('fail')} of {n} cells fail it and {words.count('undecided')} are "
                     "undecided (their maps hardly depend on the class asked, or n images cannot tell); only cells "
                     "that pass can be recommended")
    if found["failed_cells"] and found["recommended"]:
        lines.append(f"warning: {len(found['failed_cells'])} cell(s) scored no image (every map unreadable, "
                     "non-finite or empty) and are left out of the front and the recommendation: "
                     f"{', '.join(found['failed_cells'][:8])}" + (" ..." if len(found["failed_cells"]) > 8 else ""))
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

"""Markdown tables of finished runs, read from their files (``scripts/report.py`` writes them into one page).

Each :class:`Section` says where its numbers come from and the command that made them; a run that is missing, did
not finish (its folder still marked incomplete), was made by another script or holds files the report cannot read
gives a section that says so instead of a table (:func:`guarded`); a stale run is marked (:func:`mark_stale`).
"""
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import identity
from .runfolder import incomplete_note, maker
from .whichgamma import read_verdict


@dataclass
class Section:
    """One results table: a heading, the source and its command, a header row and rows, notes below it."""

    title: str
    source: str = ""
    command: str = ""
    header: list = field(default_factory=list)
    table: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    missing: str = ""

    def lines(self):
        out = [f"## {self.title}", ""]
        if not self.table:
            return out + [f"Not shown: {self.missing}.", ""]
        out += [f"From `{self.source}`, made by `{self.command or 'an unrecorded command'}`.", ""]
        out += ["| " + " | ".join(_cell(c) for c in self.header) + " |", "|" + "---|" * len(self.header)]
        out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in self.table]
        return out + [""] + [n for note in self.notes for n in (note, "")]


def _cell(value):
    """A table cell: a | inside it (as in |ρ|) must not end the cell."""
    return str(value).replace("|", "\\|")


def _read(path, title):
    """``(document, None)`` of a finished run's JSON file, or ``(None, Section saying why not)``."""
    path = Path(path)
    if not path.is_file():
        return None, Section(title, missing=f"{path} does not exist")
    if incomplete_note(path.parent) is not None:
        return None, Section(title, missing=f"{path.parent} holds a run that did not finish")
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError) as err:
        return None, Section(title, missing=f"{path} cannot be read ({err})")


def _num(value, digits=3):
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _ci(entry):
    return f"{_num(entry.get('mean'))} ± {_num(entry.get('ci95'))}" if entry else "n/a"


EVAL_COLUMNS = ("box_share", "pointing_game", "rank_accuracy", "negative_share", "gini", "roughness",
                "class_sensitivity", "lerf_minus_morf")


def evaluation_section(folder, title="Which method explains best"):
    doc, missing = _read(Path(folder) / "summary.json", title)
    if missing:
        return missing
    header = ["method", "images", "empty", *EVAL_COLUMNS]
    rows = []
    for method, s in doc["methods"].items():
        cells = ["n/a†" if m in s.get("not_applicable", ()) else _ci(s.get(m)) for m in EVAL_COLUMNS]
        rows.append([method, s["n_images"], s.get("n_empty", 0), *cells])
    directions = doc.get("higher_is_better", {})
    best = "; ".join(f"{m}: {b['method']}" for m, b in doc.get("best", {}).items() if m in EVAL_COLUMNS)
    notes = ["Mean ± 95% interval over images. " + ", ".join(
        f"{m} {'↑' if directions.get(m) else '↓'}" for m in EVAL_COLUMNS) + ". † says nothing about a method whose "
        "maps cannot be negative. *empty*: maps with every pixel the same, left out of all the method's metrics.",
        f"Best per metric (random excluded): {best}."]
    return Section(title, f"{Path(folder) / 'summary.json'}", doc.get("config", {}).get("command", ""), header, rows,
                   notes)


def sanity_section(folder, title="Sanity checks"):
    doc, missing = _read(Path(folder) / "summary.json", title)
    if missing:
        return missing
    by_key = {(r["method"], r["test"], r["step"], r["measure"]): r for r in doc["summary"]}
    steps = list(dict.fromkeys(r["step"] for r in doc["summary"] if r["test"] == "randomization"))
    header = ["method", "|ρ| other classes (patch / pixel)", "class check", "paired", "|ρ| all randomized (patch / "
              "pixel)", "randomization check", "paired (independent)", "|ρ| independent", "eMPRT", "sMPRT",
              "noise ρ"]
    rows = []
    for method, v in doc["verdicts"].items():
        def get(test, step="", measure="abs_spearman"):
            return _ci(by_key.get((method, test, step, measure)))

        independent = [r["mean"] for k, r in by_key.items() if k[0] == method and k[1] == "randomization_independent"
                       and k[3] == "abs_spearman" and math.isfinite(r["mean"])]
        rows.append([method, f"{get('class_others')} / {get('class_others', measure='pixel_abs_spearman')}",
                     _verdict(v["class"]), _paired(v.get("class_paired")),
                     f"{get('randomization', steps[-1])} / {get('randomization', steps[-1], 'pixel_abs_spearman')}"
                     if steps else "n/a", _verdict(v["randomization"]), _paired(v.get("randomization_paired")),
                     _num(sum(independent) / len(independent)) if independent else "n/a",
                     get("emprt", measure="entropy_rise"), get("smprt", measure="pixel_spearman_of_abs"),
                     get("noise", measure="spearman")])
    t, chance = doc.get("thresholds", {}), doc.get("chance", {})
    notes = [f"|ρ|: Spearman's ρ, absolute, of the per-patch sums / of the pixels; mean ± 95% interval over "
             f"{doc.get('n_images', '?')} images (class: the mean over the other classes first) and, after "
             f"randomization, over {doc.get('n_randomized', '?')} images × weight draws. A check passes when the "
             f"interval lies below its threshold at both levels, fails when it lies above at one, else undecided "
             f"(class {_num(t.get('class'))}, randomization {_num(t.get('randomization'))}: "
             f"{t.get('class_multiple', '?')} × the chance |ρ| {_num(chance.get('analytic'))} of "
             f"{chance.get('patches', '?')} patches; `random` measured {_num(chance.get('measured'))}).",
             f"Paired: against {', '.join(doc.get('baselines', [])) or 'the gradient baselines'} on the same images "
             "and classes (Wilcoxon, Holm): fail when significantly above every baseline, pass when above none. "
             "eMPRT: the rise of the map's entropy once every parameter is randomized (higher: the map depended on "
             f"them); sMPRT: ρ of the noise-smoothed absolute maps before and after. Noise: σ = "
             f"{doc.get('noise', {}).get('std')} on the model input, {doc.get('noise', {}).get('copies_per_image')} "
             "copies per image."]
    return Section(title, f"{Path(folder) / 'summary.json'}", doc.get("config", {}).get("command", ""), header, rows,
                   notes)


def _verdict(check):
    """A sanity verdict as the page shows it (read by :func:`vitlrp.whichgamma.read_verdict`, the one reader)."""
    v = read_verdict(check)
    return ("**fail**" if v.word == "fail" else v.word) + ("?" if v.borderline else "")


def _paired(check):
    return _verdict(check) if isinstance(check, dict) and "verdict" in check else "n/a"


def sweep_section(folder, title="Which γ: the sweep"):
    doc, missing = _read(Path(folder) / "best_gamma.json", title)
    if missing:
        return missing
    rec = doc["recommended"]
    if not rec:
        return Section(title, missing=f"the sweep made no recommendation ({doc.get('why') or 'see its console'})")
    header = ["", "cell", "class check", "class |ρ| patch / pixel", "Pareto", "rank sum", "LeRF − MoRF", "box share",
              "negative share"]
    sanity = rec.get("sanity", {})
    rows = [["recommended", rec["method"], sanity.get("class_verdict") or ("pass" if sanity.get("passes_class_check")
                                                                          else "**fail**"),
             f"{_num(sanity.get('class_abs_rho'))} / {_num(sanity.get('class_pixel_abs_rho'))}", "yes",
             rec["rank_sum"], *(_num(rec["scores"][m]["mean"]) for m in ("lerf_minus_morf", "box_share",
                                                                        "negative_share"))]]
    for preset, p in doc.get("presets", {}).items():
        if p.get("in_grid"):
            rows.append([preset, p["method"], p.get("class_check", ""), "", "yes" if p.get("pareto") else "no",
                         p.get("rank_sum", ""), *(_num(p.get(m)) for m in
                                                  ("lerf_minus_morf", "box_share", "negative_share"))])
    failed = doc.get("class_check_failed", [])
    shown = ", ".join(failed[:8]) + (f" and {len(failed) - 8} more (cells.csv)" if len(failed) > 8 else "")
    notes = [f"Rule: {rec['rule']}.", f"{len(failed)} cell(s) fail the class check"
             + (f": {shown}." if failed else ".")]
    firmness = doc.get("firmness") or {}
    if firmness.get("table"):
        notes.append("How firm the answer is — the recommended cell under each class-check rule: " + "; ".join(
            f"{t['rule']}: {t['recommended'] or 'none'} ({t['candidates']} cells pass)" for t in firmness["table"])
            + (". The answer does not change." if firmness.get("firm") else ". **The answer changes with the rule.**"))
    return Section(title, f"{Path(folder) / 'best_gamma.json'}", doc.get("config", {}).get("command", ""), header,
                   rows, notes)


def shortcut_section(folder, title="Does the explanation show the shortcut?"):
    doc, missing = _read(Path(folder) / "summary.json", title)
    if missing:
        return missing
    if "shortcut" not in doc:
        return Section(title, missing=f"{folder} was not evaluated on a shortcut mini-CUB")
    header = ["method", "AUC [95% CI]", "mark share, followed", "mark share, not followed", "swapped images"]
    rows = [[m, f"{_num(s['auc'])} [{_num(s['auc_low'], 2)}, {_num(s['auc_high'], 2)}]",
             _num(s["mark_share_followed"]), _num(s["mark_share_not_followed"]), s["n_swapped"]]
            for m, s in doc["shortcut"].items()]
    notes = ["AUC: how well the map's share of positive relevance on the class mark tells the swapped images where "
             "the model followed the mark from those where it did not (0.5: not at all, 1: perfectly)."]
    return Section(title, f"{Path(folder) / 'summary.json'}", doc.get("config", {}).get("command", ""), header, rows,
                   notes)


def benchmark_section(path, title="Speed"):
    title = f"{title}: {path}"
    doc, missing = _read(path, title)
    if missing:
        return missing
    header = ["row", "images/s", "× Input×Gradient", "min cosine vs fp32 zennit", "peak MiB"]
    rows = [[name, _num(r["images_per_s"], 1), _num(r.get("x_input_x_gradient"), 2),
             _num(r.get("min_cosine_vs_fp32_zennit"), 4), _num(r.get("peak_mem_mib"), 0)]
            for name, r in doc["rows"].items() if "images_per_s" in r]
    if not rows:
        return Section(title, missing=f"{path} holds no measured rows")
    ratio = doc.get("fused_vs_input_x_gradient") or {}
    notes = [f"{doc.get('device')}, torch {doc.get('torch')}, {doc.get('model')} at {doc.get('image_size')} px, LRP "
             f"batch {doc.get('lrp_batch')}, measured {doc.get('date')}. Fused γ-LRP (fp32) reaches "
             f"{_num(ratio.get('fp32_percent_interleaved'), 0)}% of Input×Gradient's throughput (median of "
             f"{ratio.get('interleaved_pairs', '?')} interleaved pairs of calls); the ceiling this model allows, from "
             f"the FLOPs of its matrix products, is {_num(ratio.get('ceiling_percent'), 0)}%."]
    return Section(title, str(path), doc.get("config", {}).get("command", ""), header, rows, notes)


def guarded(build, path, script, title=None):
    """``build(path)`` (a section function), or a Section saying why not: ``path``'s folder was made by another
    script than ``script``, or its files are not what the section reads."""
    folder = Path(path) if Path(path).suffix == "" else Path(path).parent
    title = title or inspect.signature(build).parameters["title"].default
    made_by = maker(folder)
    if made_by and made_by != script:
        return Section(title, missing=f"{folder} holds the outputs of {made_by}, not of {script}")
    try:
        return build(path)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        return Section(title, missing=f"{folder} holds files this report does not understand ({type(err).__name__}: "
                                      f"{err})")


def mark_stale(sections, root):
    """Add a note to each section (``folder name → Section`` of the runs under ``root``) whose run is stale
    (:func:`vitlrp.identity.stale`); returns the console lines saying so."""
    found = identity.stale({sub: identity.read(Path(root) / sub) for sub in ["train", *sections]}, reference="train")
    lines = []
    for sub, reasons in found.items():
        if sub in sections and sections[sub].table:
            sections[sub].notes.insert(0, f"**Stale:** {'; '.join(reasons)}.")
        lines.append(f"warning: {Path(root) / sub} is stale: {'; '.join(reasons)}")
    return lines

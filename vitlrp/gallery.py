"""The page over a results folder (``build_gallery.py``): which γ to use and why, then each run's section, a table of
contents, links to every run's page and files. The pages of single runs are :mod:`vitlrp.pages`.

Every value from a file is escaped (:mod:`vitlrp.pages`). A section whose folder another script made, or whose files
the page cannot read, says so in one line, and a stale run (:mod:`vitlrp.identity`) is marked; the page is still
written.
"""
import csv
import json
from pathlib import Path

from . import identity
from . import whichgamma as W
from .fileio import write_text
from .holdout import best_row, picked_on
from .pages import LEGEND, config_block, esc, heatmap_cards, img, link, num, page
from .runfolder import MANIFEST, MARKER, incomplete_note, maker

# the files that tell one run's output folder (and what ran there) from a results folder holding several
_RUN_FILES = (("lrp_results.json", "a heatmap run"), ("pairs.json", "swapped-mark pairs"), ("cells.csv", "a γ sweep"),
              ("sanity.csv", "sanity checks"), ("summary.json", "an evaluation run"), ("summary.csv", "a training run"))
# the subfolders a results folder's page shows, each with the file that says its run's results are there
SECTIONS = {"train": "summary.csv", "lrp_samples": "lrp_results.json", "lrp_eval": "summary.json",
            "sanity": "sanity.csv", "sweep": "best_gamma.json", "pairs": "index.html"}
# the files of each run the page links to (where they exist), beside its own page
_FILES = {"train": ("summary.csv", "config.json"),
          "lrp_samples": ("index.html", "lrp_results.json", "predictions.csv", "predictions.json", "config.json",
                          "lrp_gamma_grid_overview.png"),
          "lrp_eval": ("summary.csv", "summary.json", "per_image.csv", "paired.csv", "shortcut_summary.csv",
                       "config.json"),
          "sanity": ("sanity.csv", "summary.json", "per_image_sanity.csv", "config.json"),
          "sweep": ("best_gamma.json", "cells.csv", "per_image.csv", "config.json"),
          "pairs": ("index.html", "pairs.json", "config.json")}


def _verdict_text(checks):
    """``class check FAIL (|ρ| 0.77), randomization pass (|ρ| 0.33)`` of a method's :class:`whichgamma.Verdict`s."""
    if not checks:
        return "sanity checks: not run on this setting"
    return ", ".join(f"<span class={'ok' if v.firm_pass else 'bad'}>{name} {esc(v.text())}</span> (|ρ| "
                     f"{num(v.value, '.2f')})" for name, v in (("class check", checks.get("class")),
                                                                 ("randomization", checks.get("randomization"))) if v)


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _as_dict(doc):
    return doc if isinstance(doc, dict) else {}


def _files_line(folder, sub, prefix):
    """Links to the run's page and its CSV/JSON files that exist."""
    found = [link(name, name, prefix) for name in _FILES.get(sub, ()) if (folder / name).is_file()]
    return [f"<p class=files>Files: {' · '.join(found)}</p>"] if found else []


def _training_section(train_dir, prefix):
    with open(train_dir / "summary.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    best = best_row(rows)
    config = _as_dict(_read_json(train_dir / "config.json"))
    parts = []
    if config.get("MODEL"):
        parts.append(f"<p>Model: {esc(config['MODEL'])} (initial weights: {esc(config.get('PRETRAINED', '?'))}).</p>")
    pct = lambda row, key: num(_float(row.get(key)), ".1%")  # noqa: E731
    if best and picked_on(rows) == "val":
        parts.append(f"<p>{len(rows)} epochs; best on val: epoch {esc(best['epoch'])} (val top-1 "
                     f"{pct(best, 'val_top1')}), test top-1 {pct(best, 'top1')} (top-5 {pct(best, 'top5')}).</p>")
    elif best:
        parts.append(f"<p>{len(rows)} epochs; best on test (no validation split was held out): epoch "
                     f"{esc(best['epoch'])}, test top-1 {pct(best, 'top1')} (top-5 {pct(best, 'top5')}).</p>")
    if (train_dir / "curves.png").exists():
        parts.append(img("curves.png", "training curves", prefix))
    if config:
        parts += ["<details><summary>training configuration</summary>", config_block(config), "</details>"]
    return parts


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _main_setting(results, config):
    """The method name of a heatmap run's main map: its preset, else the preset or cell of its γ pair."""
    first = next((r for r in results if isinstance(r, dict) and not r.get("error")), {})
    preset = first.get("preset") or config.get("PRESET")
    attn = "+attn" if first.get("gamma_attention", config.get("GAMMA_ATTENTION")) else ""
    if isinstance(preset, str) and preset in W.PRESETS:
        return preset + attn
    params = first.get("gamma_params") if isinstance(first.get("gamma_params"), dict) else config
    conv, lin = params.get("conv_gamma"), params.get("lin_gamma")
    if isinstance(conv, (int, float)) and isinstance(lin, (int, float)):
        same = [p for p, g in W.PRESETS.items() if g == (conv, lin)]
        return (same[0] if same else f"gamma:{conv:g}:{lin:g}") + attn
    return None


def _heatmap_section(lrp_dir, prefix, checked):
    results = _read_json(lrp_dir / "lrp_results.json")
    results = results if isinstance(results, list) else []
    config = _as_dict(_read_json(lrp_dir / "config.json"))
    predictions = _read_json(lrp_dir / "predictions.json")
    predictions = {p.get("sample_idx"): p for p in predictions if isinstance(p, dict)} \
        if isinstance(predictions, list) else {}
    setting = _main_setting(results, config)
    verdict = None
    if setting:
        checks = next((v for m, v in checked.items() if m == setting or W.same_setting(m, setting)), None)
        verdict = f"Main map: {esc(setting)}; {_verdict_text(checks)}."
    parts = [f"<p class=note>{esc(config.get('gamma_coverage', ''))}</p>", LEGEND,
             heatmap_cards(results, prefix, verdict, predictions)]
    if config:
        parts += ["<details><summary>heatmap configuration</summary>", config_block(config), "</details>"]
    return parts


def _mean_ci(entry):
    """``mean<br>± ci`` of a summary entry (two lines keep a wide table narrow); 'n/a' without a mean."""
    entry = _as_dict(entry)
    mean, ci = num(entry.get("mean")), num(entry.get("ci95"))
    return "n/a" if mean == "n/a" else mean + (f"<br><small class=ci>± {ci}</small>" if ci != "n/a" else "")


def _metric_head(metric, higher):
    return f"<th>{esc(metric).replace('_', '_<wbr>')} {'↑' if higher else '↓'}</th>"


def summary_table(summary):
    """HTML table of an evaluation summary: mean ± 95% CI per metric and method, the headline LeRF − MoRF first,
    n/a† where a metric says nothing about a method, and the count of empty maps."""
    higher = _as_dict(summary.get("higher_is_better"))
    methods = _as_dict(summary.get("methods"))
    metrics = [m for m in higher if any(m in _as_dict(s) for s in methods.values())]
    metrics.sort(key=lambda m: m != W.HEADLINE)  # the headline first: it never scrolls off
    rows = ["<tr><th>method</th>" + "".join(_metric_head(m, higher[m]) for m in metrics) + "<th>empty</th></tr>"]
    for method, s in methods.items():
        s = _as_dict(s)
        na = s.get("not_applicable") if isinstance(s.get("not_applicable"), list) else ()
        cells = "".join(f"<td>{'n/a†' if m in na else _mean_ci(s.get(m))}</td>" for m in metrics)
        rows.append(f"<tr><td>{esc(method)}</td>{cells}<td>{esc(s.get('n_empty', 0))}</td></tr>")
    return "<div class=scroll><table>" + "\n".join(rows) + "</table></div>"


def _evaluation_section(eval_dir, prefix):
    summary = _as_dict(_read_json(eval_dir / "summary.json"))
    if not isinstance(summary.get("methods"), dict):
        raise ValueError("summary.json holds no per-method results")
    best = _as_dict(summary.get("best"))
    parts = [f"<p>{esc(summary.get('n_images', '?'))} images of the {esc(summary.get('split', '?'))} split; mean ± 95% "
             "confidence interval; ↑ higher is better, ↓ lower is better; lerf_minus_morf (LeRF − MoRF) is the "
             f"headline faithfulness score. {esc(summary.get('perturbation_baseline', ''))}. <i>empty</i>: maps with "
             "every pixel the same, left out of all that method's metrics. n/a†: the metric says nothing about a "
             "method whose maps cannot be negative.</p>", summary_table(summary),
             "<p>" + "; ".join(f"best {esc(k)}: <b>{esc(_as_dict(v).get('method'))}</b> "
                               f"({num(_as_dict(v).get('mean'))})" for k, v in best.items()) + "</p>"]
    for name, alt in [("forest_paired.png", "every method minus the reference, image by image"),
                      ("curves_morf_lerf.png", "MoRF and LeRF curves"), ("ranking.png", "ranked table")]:
        if (eval_dir / name).exists():
            parts.append(img(name, alt, prefix))
    bars = [img(p.name, f"{p.stem[4:]} per method", prefix) for p in sorted(eval_dir.glob("bar_*.png"))]
    if bars:
        parts += ["<details><summary>every metric as bars</summary>", *bars, "</details>"]
    parts += ["<details><summary>evaluation configuration</summary>", config_block(summary.get("config", {})),
              "</details>"]
    return parts


def _shortcut_section(eval_dir, prefix):
    """The shortcut benchmark's AUC per method (a table) and its figure."""
    scores = _as_dict(_as_dict(_read_json(eval_dir / "summary.json")).get("shortcut"))
    rows = ["<tr><th>method</th><th>AUC [95% CI]</th><th>mark share, followed</th><th>mark share, not followed</th>"
            "<th>swapped images</th><th>followed the mark</th></tr>"]
    for method, s in scores.items():
        s = _as_dict(s)
        rows.append(f"<tr><td>{esc(method)}</td><td>{num(s.get('auc'))} [{num(s.get('auc_low'), '.2f')}, "
                    f"{num(s.get('auc_high'), '.2f')}]</td><td>{num(s.get('mark_share_followed'))}</td>"
                    f"<td>{num(s.get('mark_share_not_followed'))}</td><td>{esc(s.get('n_swapped', '?'))}</td>"
                    f"<td>{esc(s.get('n_followed', '?'))}</td></tr>")
    parts = ["<p>On test images whose class mark was swapped for another class's, does the share of positive "
             "relevance on the mark tell the images where the model followed the mark from those where it did not? "
             "AUC 0.5: not at all (a random map), 1: perfectly.</p>",
             "<div class=scroll><table>" + "\n".join(rows) + "</table></div>"]
    if (eval_dir / "shortcut.png").exists():
        parts.append(img("shortcut.png", "AUC of the mark share per method, and every swapped image's mark share",
                         prefix))
    return parts


def _sanity_section(folder, prefix):
    """The verdicts of the sanity checks and their figures."""
    doc = _as_dict(_read_json(folder / "summary.json"))
    if not isinstance(doc.get("verdicts"), dict):
        raise ValueError("summary.json holds no verdicts")
    rows = ["<tr><th>method</th><th>class check: |ρ| to a random class</th><th>randomization check: |ρ| at the "
            "end</th></tr>"]
    for method, v in W.verdicts(doc).items():
        rows.append(f"<tr><td>{esc(method)}</td>{_verdict_cell(v['class'])}{_verdict_cell(v['randomization'])}</tr>")
    t = _as_dict(doc.get("thresholds"))
    parts = [f"<p>Does each map depend on the class it explains and on the model's parameters? "
             f"{esc(doc.get('n_images', '?'))} images. A check passes when the 95% interval of the mean |ρ| lies "
             f"below its threshold (class {esc(t.get('class'))}, randomization {esc(t.get('randomization'))}), "
             "fails when it lies above, and is undecided when it holds the threshold.</p>",
             "<div class=scroll><table>" + "\n".join(rows) + "</table></div>"]
    figures = [("curves_randomization.png", "similarity to the original map as the model is randomized"),
               ("class_pairs.png", "the explained class's map beside the runner-up's")]
    figures += [(p.name, "cascading randomization, one image") for p in sorted(folder.glob("cascade_*.png"))]
    parts += [img(name, alt, prefix) for name, alt in figures if (folder / name).exists()]
    return parts


def _verdict_cell(v):
    value = "n/a" if v.value is None else f"{v.value:.3f}" + (f" ± {v.ci:.3f}" if v.ci is not None else "")
    return f"<td class={'ok' if v.firm_pass else 'bad'}>{value} {esc(v.text())}</td>"


def _sweep_section(folder, prefix):
    """The recommended γ, how it was chosen, the Pareto front and the surfaces."""
    doc = _as_dict(_read_json(folder / "best_gamma.json"))
    rec = _as_dict(doc.get("recommended"))
    sanity = _as_dict(rec.get("sanity"))
    failed = doc.get("class_check_failed") if isinstance(doc.get("class_check_failed"), list) else []
    if rec.get("method"):
        head = (f"<p>Recommended: <b>{esc(rec['method'])}</b> (Conv2d γ {esc(rec.get('conv_gamma'))}, Linear γ "
                f"{esc(rec.get('lin_gamma'))}); class check "
                f"{'passed' if sanity.get('passes_class_check') else '<span class=bad>failed</span>'} (|ρ| "
                f"{num(sanity.get('class_abs_rho'), '.2f')}). Rule: {esc(rec.get('rule', ''))}. ")
    else:
        head = "<p>Recommended: <b>n/a</b>: the sweep made no recommendation. "
    parts = [head + f"{len(failed)} cell(s) fail the class check. The Conv2d γ only moves relevance inside each patch, "
             "so these patch-level metrics hardly tell Conv2d γ values apart.</p>"]
    if (folder / "pareto.png").exists():
        parts.append(img("pareto.png", "Pareto front of the cells", prefix))
    parts += [img(p.name, p.stem.replace("_", " "), prefix) for p in sorted(folder.glob("surface_*.png"))]
    return parts


def _which_gamma(root, found, stale):
    """The answer first: the recommended γ and where it comes from, each γ setting's evidence, the links to it."""
    docs = {sub: _as_dict(_read_json(root / sub / name)) if sub in found else None
            for sub, name in (("lrp_eval", "summary.json"), ("sanity", "summary.json"), ("sweep", "best_gamma.json"))}
    sweep = None if "sweep" in stale else docs["sweep"]  # a sweep of another model recommends nothing here
    rec, rows = W.recommend(docs["lrp_eval"], docs["sanity"], sweep)
    if sweep is None and docs["sweep"] is not None:
        rec.why.insert(0, "The γ sweep is stale (see its section): its recommendation is not used.")
    if rec.name:
        conv, lin = W.gammas(rec.name) or ("?", "?")
        parts = [f"<p class=rec>Recommended: <b>{esc(rec.name)}</b> (Conv2d γ {esc(conv)}, Linear γ {esc(lin)}), "
                 f"from {esc(rec.source)}.</p>"]
    else:
        parts = ["<p class=rec>Recommended: <b>none</b> (see why below).</p>"]
    used = [s for s in ("lrp_eval", "sanity", "sweep") if s in stale]
    if used:
        parts.append(f"<p class=bad>Stale evidence: {esc(', '.join(s + '/' for s in used))} (see its section).</p>")
    parts.append("<ul class=why>" + "".join(f"<li>{esc(w)}</li>" for w in rec.why) + "</ul>")
    if rows:
        parts.append(_evidence_table(rows, rec.name, docs["sweep"] is not None))
    evidence = (("lrp_eval", "summary.csv"), ("sanity", "sanity.csv"), ("sweep", "best_gamma.json"),
                ("sweep", "cells.csv"))
    links = [link(f"{sub}/{name}", f"{sub}/{name}") for sub, name in evidence if (root / sub / name).is_file()]
    anchors = [f'<a href="#{a}">{h}</a>' for a, h, sub in (("evaluation", "evaluation", "lrp_eval"),
                                                            ("sanity", "sanity checks", "sanity"),
                                                            ("sweep", "γ sweep", "sweep")) if sub in found]
    if links or anchors:
        parts.append(f"<p class=files>Evidence: {' · '.join(anchors + links)}</p>")
    return parts


def _evidence_table(rows, recommended, with_sweep):
    head = ("<tr><th>γ setting</th><th>Conv2d γ</th><th>Linear γ</th><th>class check</th><th>randomization check</th>"
            "<th>LeRF − MoRF ↑ (evaluation)</th>" + ("<th>sweep: class check</th><th>sweep: LeRF − MoRF</th>"
                                                     if with_sweep else "") + "</tr>")
    out = [head]
    for r in rows:
        mark = " ★" if recommended and (r.name == recommended or W.same_setting(r.name, recommended)) else ""
        cells = [f"<td>{esc(r.name)}{mark}</td><td>{esc(r.conv)}</td><td>{esc(r.lin)}</td>"]
        for check in W.CHECKS:
            v = r.checks.get(check)
            cells.append(_verdict_cell(v) if v else "<td>not run</td>")
        mean, ci = r.faithfulness
        cells.append(f"<td>{num(mean)}" + (f" <small class=ci>± {num(ci)}</small>" if ci is not None else "")
                     + "</td>")
        if with_sweep:
            cells.append(f"<td>{esc(r.sweep_class or 'not in grid')}</td><td>{num(r.sweep_faithfulness)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return ("<div class=scroll><table>" + "\n".join(out) + "</table></div><p class=note>★ recommended. Sanity "
            "verdicts from sanity/: pass or FAIL when the 95% interval lies below or above the threshold, undecided "
            "when it holds it.</p>")


def incomplete_runs(results_dir):
    """``{'train': marker text, ...}`` for the training and explaining folders whose last run did not finish."""
    notes = {sub: incomplete_note(Path(results_dir) / sub) for sub in SECTIONS if sub != "pairs"}
    return {sub: note for sub, note in notes.items() if note is not None}


def run_folder_kind(folder, page_script=""):
    """What ``folder`` holds when it is one run's output folder (e.g. ``'a heatmap run'``), else None; a folder
    that ``page_script`` (the script that writes results pages) made is a results folder."""
    folder = Path(folder)
    kind = next((kind for name, kind in _RUN_FILES if (folder / name).is_file()), None)
    made_by = maker(folder)
    if kind is None and (made_by not in ("", page_script) or (folder / MARKER).exists()
                         or ((folder / MANIFEST).exists() and made_by != page_script)):
        kind = "one run's outputs" + (f" ({made_by})" if made_by else "")
    return kind


def _with_results(results_dir):
    return {sub for sub, name in SECTIONS.items() if (Path(results_dir) / sub / name).exists()}


def shown(results_dir):
    """The subfolders of ``results_dir`` its page shows (their results, or that their run did not finish)."""
    listed = _with_results(results_dir) | set(incomplete_runs(results_dir))
    return [sub for sub in SECTIONS if sub in listed]


def default_title(results_dir):
    """A page title naming the model the results folder's training run trained (``train/config.json``)."""
    model = _as_dict(_read_json(Path(results_dir) / "train" / "config.json")).get("MODEL")
    return f"{model if isinstance(model, str) and model else 'A ViT'} on CUB-200-2011: AttnLRP with the Gamma rule"


def stale_runs(root, subs):
    """``{sub: [reasons]}`` of the runs of ``subs`` whose checkpoint or dataset differs from the others' or whose
    checkpoint changed since (:func:`vitlrp.identity.stale`)."""
    return identity.stale({sub: identity.read(root / sub) for sub in subs}, reference="train")


def _misplaced(root, sub, makers):
    """Why ``root/sub`` is not the run the page expects there (another script than ``makers[sub]`` made it)."""
    made_by, expected = maker(root / sub), makers.get(sub)
    return f"{sub}/ holds the outputs of {made_by}, not of {expected}" if made_by and expected and \
        made_by != expected else ""


# the page's sections in order: subfolder, anchor, heading
_SECTION_ORDER = (("train", "training", "Training"), ("lrp_samples", "heatmaps", "Heatmaps"),
                  ("lrp_eval", "evaluation", "Evaluation"),
                  ("lrp_eval", "shortcut", "Shortcut: does the map show the mark?"),
                  ("sanity", "sanity", "Sanity checks"), ("sweep", "sweep", "Which γ: the sweep"),
                  ("pairs", "pairs", "Swapped-mark pairs"))


def _section(root, sub, anchor, checked):
    """The HTML parts of one section (without its heading), built from ``root/sub``."""
    folder, prefix = root / sub, f"{sub}/"
    if anchor == "shortcut":
        return _shortcut_section(folder, prefix)
    if sub == "pairs":
        return [f"<p>{link('pairs/index.html', 'each method on the same bird with its own and another class’s mark')}"
                "</p>"]
    build = {"train": _training_section, "lrp_eval": _evaluation_section, "sanity": _sanity_section,
             "sweep": _sweep_section}
    return _heatmap_section(folder, prefix, checked) if sub == "lrp_samples" else build[sub](folder, prefix)


def _has_shortcut(root):
    return "shortcut" in _as_dict(_read_json(root / "lrp_eval" / "summary.json"))


def _misplaced_runs(root, found, makers):
    """``{sub: note}`` of the subfolders another script made (taken out of ``found``: never read as this one's)."""
    notes = {}
    for sub in sorted(found):
        why = _misplaced(root, sub, makers)
        if why:
            notes[sub] = why + "; not shown: choose another folder for one of the two"
            found.discard(sub)
    return notes


def _sections(root, found, notes, stale, warn):
    """``(table of contents, HTML parts)`` of every section the folder has, in page order."""
    checked = W.verdicts(_as_dict(_read_json(root / "sanity" / "summary.json"))) if "sanity" in found else {}
    toc, out = [], []
    for sub, anchor, heading in _SECTION_ORDER:
        if sub in notes and anchor != "shortcut":
            toc.append((anchor, heading))
            out += [f"<h2 id={anchor}>{esc(heading)}</h2>", f"<p class=bad>{esc(notes[sub])}.</p>"]
        if sub not in found or (anchor == "shortcut" and not _has_shortcut(root)):
            continue
        try:
            parts = _section(root, sub, anchor, checked)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
            line = f"{sub}/ holds files this page does not understand ({type(err).__name__}: {err}); not shown"
            warn(f"warning: {root}/{line}")
            parts = [f"<p class=bad>{esc(line)}.</p>"]
        if anchor != "shortcut":
            flag = [f"<p class=bad>Stale: {esc('; '.join(stale[sub]))}.</p>"] if sub in stale else []
            parts = flag + parts + _files_line(root / sub, sub, f"{sub}/")
        toc.append((anchor, heading))
        out += [f"<h2 id={anchor}>{esc(heading)}</h2>", *parts]
    return toc, out


def write_results_gallery(results_dir, title="", warn=None, makers=None):
    """``index.html`` over a results folder holding any of ``train/``, ``lrp_samples/``, ``lrp_eval/``, ``sanity/``,
    ``sweep/``, ``pairs/`` (``title`` empty: :func:`default_title`). A run folder the page cannot read, one another
    script than ``makers[subfolder]`` made, and a stale run are named on the page and passed to ``warn`` (one line
    each)."""
    warn = warn or (lambda line: None)
    root = Path(results_dir)
    body = [f"<p class=bad>{esc(sub)}/ holds a run that did not finish ({esc(MARKER)}): {esc(note)}</p>"
            for sub, note in incomplete_runs(root).items()]
    found = _with_results(root)
    notes = _misplaced_runs(root, found, makers or {})
    for note in notes.values():
        warn(f"warning: {root}/{note}")
    stale = stale_runs(root, found)
    for sub, reasons in stale.items():
        warn(f"warning: {root / sub} is stale: {'; '.join(reasons)}")
    toc, sections = _sections(root, found, notes, stale, warn)
    if found & {"lrp_eval", "sanity", "sweep"}:
        body += ["<h2 id=which-gamma>Which γ?</h2>", *_which_gamma(root, found, stale)]
        toc.insert(0, ("which-gamma", "Which γ?"))
    body += sections or ["<p>Nothing here yet: no train/, lrp_samples/, lrp_eval/, sanity/ or sweep/ results.</p>"]
    path = root / "index.html"
    write_text(path, page(title or default_title(root), "\n".join(body), toc))
    return path



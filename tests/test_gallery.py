"""The HTML galleries, built from real script outputs: the answer (which γ) first, every run's section, links to every
page and file; rendered in headless Chromium (the DevTools protocol over a pipe, tests/browser.py) at 1400 px and 400
px: nothing overflows sideways at 1400 px, every picture loads and its text renders at >= 11 px, no console error,
every table-of-contents anchor resolves. Every value from a file is escaped; a folder the page does not understand,
one another script made, or a stale run is named on the page and the console, never a traceback."""
import csv
import io
import json
import os
import re
import shutil

import pytest
from browser import CHROMIUM, PAGE_FACTS, Browser
from conftest import run_script_inprocess
from PIL import Image

from vitlrp import whichgamma as W
from vitlrp.render import TEXT_PX
from vitlrp.runfolder import MANIFEST

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; "
                                                             ".ci/run installs it)")
MIN_TEXT_PX = 11  # the smallest text a picture may show at 1400 px


def ok(code, err):
    assert code == 0, err[-3000:]


@pytest.fixture(scope="module")
def results(trained_tiny, tmp_path_factory):
    """A demo-like results folder made by the real scripts: train/, lrp_samples/ (+ predictions, top-3),
    lrp_eval/, sanity/, sweep/, and its index.html."""
    root = tmp_path_factory.mktemp("results")
    shutil.copytree(trained_tiny["output_dir"], root / "train")
    common = ("--checkpoint-path", trained_tiny["checkpoint"], "--dataset-root", trained_tiny["dataset_root"],
              "--num-workers", "0", "--device", "cpu")
    ok(*run_script_inprocess("test_vit_forward", *common, "--num-samples", "3", "--compare-presets",
                             "baseline,balanced", "--compare-methods", "gradcam", "--output-dir",
                             root / "lrp_samples")[::2])
    ok(*run_script_inprocess("inspect_lrp_predictions", "--output-dir", root / "lrp_samples", "--device", "cpu",
                             "--top-k", "3")[::2])
    ok(*run_script_inprocess("evaluate_lrp", *common, "--num-images", "6", "--methods", "balanced,baseline,random",
                             "--perturb-steps", "2", "--output-dir", root / "lrp_eval")[::2])
    ok(*run_script_inprocess("sanity_checks", *common, "--num-images", "3", "--methods", "balanced,baseline,random",
                             "--noise-samples", "1", "--figure-images", "1", "--output-dir", root / "sanity")[::2])
    ok(*run_script_inprocess("sweep_gamma", *common, "--num-images", "3", "--conv-gammas", "0,1", "--lin-gammas",
                             "0,0.5", "--schedules", "", "--perturb-steps", "2", "--output-dir", root / "sweep")[::2])
    code, out, err = run_script_inprocess("build_gallery", "--results-dir", root)
    ok(code, err)
    assert "index.html" in out and "warning" not in out
    return root


@pytest.fixture(scope="module")
def shortcut_results(trained_tiny, tmp_path_factory):
    """A shortcut-like results folder: train/, lrp_eval/ on a shortcut mini-CUB (with its AUCs), pairs/."""
    from vitlrp.synthetic import make_synthetic_cub

    root = tmp_path_factory.mktemp("shortcut")
    data = make_synthetic_cub(root / "data" / "CUB_200_2011", 10, 4, seed=3, progress=False, shortcut_share=0.8)
    shutil.copytree(trained_tiny["output_dir"], root / "train")
    common = ("--checkpoint-path", trained_tiny["checkpoint"], "--dataset-root", data, "--num-workers", "0",
              "--device", "cpu", "--methods", "balanced,random")
    ok(*run_script_inprocess("evaluate_lrp", *common, "--num-images", "0", "--perturb-steps", "2",
                             "--output-dir", root / "lrp_eval")[::2])
    ok(*run_script_inprocess("shortcut_pairs", *common, "--num-pairs", "2", "--output-dir", root / "pairs")[::2])
    ok(*run_script_inprocess("build_gallery", "--results-dir", root)[::2])
    return root


def copy_of(results, tmp_path):
    """A copy of a results folder to change (the module's folder stays as the scripts wrote it)."""
    shutil.copytree(results, tmp_path / "copy")
    return tmp_path / "copy"


def html_of(folder):
    return (folder / "index.html").read_text(encoding="utf-8")


# --- what the page says -------------------------------------------------------------------------------------------
def test_the_answer_comes_first_and_every_section_has_an_anchor(results):
    html = html_of(results)
    headings = re.findall(r'<h2 id=([\w-]+)>([^<]+)</h2>', html)
    assert [h for _, h in headings] == ["Which γ?", "Training", "Heatmaps", "Evaluation", "Sanity checks",
                                        "Which γ: the sweep"]
    toc = re.search(r"<nav class=toc>(.*?)</nav>", html).group(1)
    assert re.findall(r'href="#([\w-]+)"', toc) == [a for a, _ in headings]
    docs = {name: json.loads((results / name).read_text()) for name in
            ("lrp_eval/summary.json", "sanity/summary.json", "sweep/best_gamma.json")}
    rec, rows = W.recommend(*docs.values())
    which = html.split("<h2 id=which-gamma>")[1].split("<h2 ")[0]
    if rec.name:  # the page says what the runs' files say, and where it comes from
        assert f"Recommended: <b>{rec.name}</b>" in which and f"from {rec.source}." in which
    else:
        assert "Recommended: <b>none</b>" in which and ("No recommendation" in which or "Not enough" in which)
    for row in rows:  # each γ setting's verdicts and faithfulness in one table
        assert re.search(rf"<tr><td>{re.escape(row.name)}( ★)?</td>", which)
    assert {"baseline", "balanced"} <= {r.name for r in rows} and "random" not in {r.name for r in rows}
    for name in ("lrp_eval/summary.csv", "sanity/sanity.csv", "sweep/best_gamma.json", "sweep/cells.csv"):
        assert f'href="{name}"' in which  # the evidence, one click away


def test_every_link_and_picture_resolves_and_every_file_shown_is_linked(results):
    html = html_of(results)
    targets = re.findall(r'(?:src|href)="([^"#][^"]*)"', html)
    for target in targets:
        assert not target.startswith(("/", "file:", "http")), target
        assert (results / target).is_file(), target
    for name in ("train/summary.csv", "lrp_samples/index.html", "lrp_samples/lrp_results.json",
                 "lrp_samples/predictions.csv", "lrp_eval/summary.csv", "lrp_eval/summary.json",
                 "lrp_eval/per_image.csv", "lrp_eval/paired.csv", "sanity/sanity.csv", "sanity/summary.json",
                 "sweep/best_gamma.json", "sweep/cells.csv"):
        assert f'href="{name}"' in html, name
    # the γ grids are in their cards; the overview of every grid is a link, not a second copy of them
    assert 'src="lrp_samples/lrp_gamma_grid_overview.png"' not in html
    assert 'href="lrp_samples/lrp_gamma_grid_overview.png"' in html


def test_heatmap_cards_carry_their_verdict_and_the_real_top_k(results):
    html = html_of(results)
    cards = re.findall(r"<div class=card>(.*?)</div>", html, re.S)
    explained = [r for r in json.loads((results / "lrp_samples" / "lrp_results.json").read_text()) if not r["error"]]
    assert len(cards) == len(explained) == 3
    verdicts = W.verdicts(json.loads((results / "sanity" / "summary.json").read_text()))["balanced"]
    for card in cards:  # the main map is balanced (γ 1 / 0.5): its verdicts, from sanity/, on the card
        assert "Main map: balanced;" in card
        assert f"class check {verdicts['class'].text()}</span>" in card
        assert f"randomization {verdicts['randomization'].text()}</span>" in card
        assert "top-3: " in card  # inspect_lrp_predictions.py --top-k 3, inside the card
    assert "top-5:" not in html
    assert "blue = negative relevance" in html and "red = positive" in html  # the colours explained


def test_the_evaluation_table_puts_the_headline_first_and_the_title_names_the_model(results):
    html = html_of(results)
    table = html.split("<h2 id=evaluation>")[1].split("</table>")[0]
    assert re.search(r"<tr><th>method</th><th>lerf_<wbr>minus_<wbr>morf ↑</th>", table)
    title = "vit_tiny on CUB-200-2011: AttnLRP with the Gamma rule"  # the fixture trained vit_tiny, from scratch
    assert f"<title>{title}</title>" in html and f"<h1 id=top>{title}</h1>" in html
    assert "<p>Model: vit_tiny (initial weights: none).</p>" in html
    assert html.count("<table>") == html.count("<div class=scroll><table>") > 0  # a wide table scrolls in its box


def test_the_evaluation_table_marks_what_says_nothing_and_counts_empty_maps():
    from vitlrp.gallery import summary_table

    entry = {"mean": 0.0, "ci95": 0.0, "n": 4}
    summary = {"higher_is_better": {"box_share": True, "negative_share": False},
               "methods": {"gradcam": {"n_empty": 2, "not_applicable": ["negative_share"], "box_share": entry,
                                       "negative_share": entry},
                           "balanced": {"n_empty": 0, "not_applicable": [], "box_share": entry,
                                        "negative_share": entry}}}
    html = summary_table(summary)
    cell = "0.000<br><small class=ci>± 0.000</small>"
    assert f"<tr><td>gradcam</td><td>{cell}</td><td>n/a†</td><td>2</td></tr>" in html
    assert f"<tr><td>balanced</td><td>{cell}</td><td>{cell}</td><td>0</td></tr>" in html


def test_the_shortcut_page_has_an_auc_table(shortcut_results):
    html = html_of(shortcut_results)
    section = html.split("<h2 id=shortcut>")[1].split("<h2 ")[0]
    scores = json.loads((shortcut_results / "lrp_eval" / "summary.json").read_text())["shortcut"]
    assert "<th>AUC [95% CI]</th>" in section
    for method, s in scores.items():
        auc = "n/a" if s["auc"] is None else f"{s['auc']:.3f}"
        assert f"<tr><td>{method}</td><td>{auc} [" in section
    assert 'src="lrp_eval/shortcut.png" alt="AUC of the mark share' in section
    assert 'href="pairs/index.html"' in html and 'href="lrp_eval/shortcut_summary.csv"' in html


# --- in a browser -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    with Browser(tmp_path_factory.mktemp("chromium-profile")) as b:
        yield b


def text_px(path):
    """The smallest text size a picture records (render.TEXT_PX), or None."""
    with Image.open(path) as im:
        value = im.info.get(TEXT_PX)
    return float(value) if value else None


def check_in_browser(browser, page, width):
    """Open ``page`` at ``width`` px; assert what a reader meets; return the page's facts."""
    errors = browser.open(page.resolve().as_uri(), width)
    facts = browser.evaluate(PAGE_FACTS)
    assert errors == [], f"{page} at {width} px: console errors {errors}"
    broken = [i["src"] for i in facts["images"] if not i["ok"]]
    assert facts["images"] and broken == [], f"{page} at {width} px: pictures not loaded {broken}"
    assert facts["missingAnchors"] == [], f"{page}: anchors without a target {facts['missingAnchors']}"
    if width >= 1400:
        assert facts["scrollWidth"] <= width and facts["wide"] == [] and facts["boxes"] == [], \
            f"{page} overflows sideways at {width} px: {facts['scrollWidth']} px, {facts['wide'][:5]}, {facts['boxes']}"
        for im in (i for i in facts["images"] if i["visible"]):
            size = text_px(page.parent / im["src"])
            assert size is not None, f"{im['src']} records no text size"
            shown = size * im["shown"] / im["natural"]
            assert shown >= MIN_TEXT_PX, f"{im['src']}: its smallest text renders at {shown:.1f} px at {width} px"
    return facts


@needs_chromium
@pytest.mark.parametrize("width", [1400, 400])
def test_the_demo_gallery_in_a_browser(browser, results, width):
    for page in (results / "index.html", results / "lrp_samples" / "index.html"):
        facts = check_in_browser(browser, page, width)
    assert check_in_browser(browser, results / "index.html", width)["toc"][0] == "#which-gamma"
    assert facts["images"]


@needs_chromium
@pytest.mark.parametrize("width", [1400, 400])
def test_the_shortcut_gallery_in_a_browser(browser, shortcut_results, width):
    facts = check_in_browser(browser, shortcut_results / "index.html", width)
    assert "#shortcut" in facts["toc"]
    check_in_browser(browser, shortcut_results / "pairs" / "index.html", width)


@needs_chromium
def test_the_recommendation_and_its_table_are_on_the_first_screen(browser, results):
    browser.open((results / "index.html").resolve().as_uri(), 1400, 1000)
    bottom = browser.evaluate("""(() => {
      const rec = document.querySelector('#which-gamma ~ .rec'), table = document.querySelector(
        '#which-gamma ~ div.scroll table');  // the first table after the heading: each γ setting's evidence
      return {rec: rec.getBoundingClientRect().bottom, table: table.getBoundingClientRect().bottom,
              height: window.innerHeight};
    })()""")
    assert bottom["rec"] <= bottom["height"] and bottom["table"] <= bottom["height"], bottom


@needs_chromium
def test_a_missing_picture_is_reported_by_the_page(browser, results, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(results / "lrp_samples", copy)
    victim = sorted(copy.glob("lrp_comparison_*.png"))[0]
    victim.unlink()
    errors = browser.open((copy / "index.html").resolve().as_uri(), 1400)
    assert errors and victim.name in " ".join(errors)  # the failed load is a console error
    assert browser.evaluate("document.documentElement.dataset.images").endswith("broken:1")
    assert victim.name in browser.evaluate("document.body.firstElementChild.textContent")


# --- every value from a file is escaped ---------------------------------------------------------------------------
PAYLOAD = "\"'><script>alert(1)</script><img src=x onerror=alert(2)>"
# the files the page reads, and the maps in them whose keys are data (method names): these keys are injected too
READ = {"train/summary.csv": (), "train/config.json": (), "lrp_samples/lrp_results.json": (),
        "lrp_samples/predictions.json": (), "lrp_samples/config.json": (),
        "lrp_eval/summary.json": ("methods", "best"), "lrp_eval/config.json": (),
        "sanity/summary.json": ("verdicts",), "sanity/config.json": (), "sweep/best_gamma.json": ("presets", "best"),
        "sweep/config.json": (), "lrp_eval/" + MANIFEST: ()}


def step(path, key, data_keys):
    """The path of ``key`` under ``path``: ``*`` for a list position or a key of a ``data_keys`` map (a method
    name), so one field of every method is one path."""
    return path + ("*" if key is None or (len(path) == 1 and path[0] in data_keys) else key,)


def leaves(doc, data_keys=(), path=()):
    """``(path, value)`` of every leaf of a JSON document (paths as :func:`step` makes them)."""
    if isinstance(doc, (dict, list)):
        for k, v in doc.items() if isinstance(doc, dict) else ((None, v) for v in doc):
            yield from leaves(v, data_keys, step(path, k, data_keys))
    else:
        yield path, doc


def inject(doc, where, path=(), data_keys=()):
    """``doc`` with every leaf whose path matches ``where(path, value)`` replaced by the value ``where`` returns,
    and the keys of the ``data_keys`` maps given the payload when ``where`` asks for it (``where((), key)``)."""
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            key = k + PAYLOAD if len(path) == 1 and path[0] in data_keys and where((), k) else k
            out[key] = inject(v, where, step(path, k, data_keys), data_keys)
        return out
    if isinstance(doc, list):
        return [inject(v, where, step(path, None, data_keys), data_keys) for v in doc]
    new = where(path, doc)
    return doc if new is None else new


def poison(folder, name, where, data_keys=()):
    path = folder / name
    if name.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        fields = list(rows[0])
        rows = [{k: (where((k,), v) if where((k,), v) is not None else v) for k, v in r.items()} for r in rows]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        path.write_text(buf.getvalue(), encoding="utf-8")
    else:
        path.write_text(json.dumps(inject(json.loads(path.read_text()), where, (), data_keys)), encoding="utf-8")


def assert_escaped(html):
    assert "<script>alert" not in html and "<img src=x" not in html and "onerror=alert(2)>" not in html


def test_every_text_field_of_every_file_the_page_reads_is_escaped(results, tmp_path):
    folder = copy_of(results, tmp_path)
    (folder / "sanity" / "RUN_INCOMPLETE.txt").write_text(PAYLOAD, encoding="utf-8")  # a marker's text is shown too
    for name, data_keys in READ.items():
        poison(folder, name, lambda path, v: v + PAYLOAD if isinstance(v, str) else None, data_keys)
    code, out, err = run_script_inprocess("build_gallery", "--results-dir", folder)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    html = html_of(folder)
    assert_escaped(html)
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") > 50  # shown, as text


def test_every_field_alone_even_a_number_may_hold_markup_and_the_page_still_builds(results, tmp_path):
    from vitlrp.gallery import write_results_gallery

    folder = copy_of(results, tmp_path)
    originals = {name: (folder / name).read_bytes() for name in READ}
    for name in READ:
        if name.endswith(".csv"):
            with open(folder / name, newline="", encoding="utf-8") as fh:
                paths = sorted({(k,) for k in next(csv.DictReader(fh))})
        else:
            paths = sorted({p for p, _ in leaves(json.loads(originals[name]), READ[name])}, key=str)
        for target in paths:  # one field (of every list entry and every method at once) holds the payload
            poison(folder, name, lambda path, v, target=target: PAYLOAD if path == target else None, READ[name])
            html = write_results_gallery(folder).read_text(encoding="utf-8")
            assert_escaped(html)
            (folder / name).write_bytes(originals[name])


def test_the_pages_of_one_run_escape_what_they_show(tmp_path):
    from vitlrp.pages import write_heatmap_gallery, write_shortcut_gallery

    record = {"sample_idx": PAYLOAD, "img_path": PAYLOAD, "label": 1, "target_class": PAYLOAD, "label_name": PAYLOAD,
              "target_name": PAYLOAD, "predicted_class": PAYLOAD, "predicted_name": PAYLOAD, "confidence": 0.5,
              "relevance_sum": 1.0, "explained_logit": 1.0, "files": {"comparison": PAYLOAD, "gamma_grid": PAYLOAD},
              "error": None}
    write_heatmap_gallery(tmp_path, [record, {**record, "error": PAYLOAD}], {"k": PAYLOAD}, PAYLOAD)
    assert_escaped(html_of(tmp_path))
    write_shortcut_gallery(tmp_path, [{"followed": True, "title": PAYLOAD, "file": PAYLOAD}], PAYLOAD, {"k": PAYLOAD})
    assert_escaped(html_of(tmp_path))


# --- folders the page does not understand, stale runs, no recommendation -----------------------------------------
def test_a_folder_the_page_does_not_understand_or_another_script_made_is_named_and_the_rest_shown(results, tmp_path):
    folder = copy_of(results, tmp_path)
    shutil.copy(folder / "sanity" / "summary.json", folder / "lrp_eval" / "summary.json")  # the overwrite
    manifest = json.loads((folder / "sweep" / MANIFEST).read_text())
    (folder / "sweep" / MANIFEST).write_text(json.dumps({**manifest, "script": "evaluate_lrp.py"}))
    code, out, err = run_script_inprocess("build_gallery", "--results-dir", folder)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    warnings = [ln for ln in out.splitlines() if ln.startswith("warning:")]
    assert warnings == [
        f"warning: {folder}/sweep/ holds the outputs of evaluate_lrp.py, not of sweep_gamma.py; not shown: choose "
        "another folder for one of the two",
        f"warning: {folder}/lrp_eval/ holds files this page does not understand (ValueError: summary.json holds no "
        "per-method results); not shown"]
    html = html_of(folder)
    assert "lrp_eval/ holds files this page does not understand" in html
    assert "sweep/ holds the outputs of evaluate_lrp.py, not of sweep_gamma.py" in html
    assert "<h2 id=sanity>Sanity checks</h2>" in html and "<h2 id=training>Training</h2>" in html


def test_a_stale_run_is_marked_on_the_page_and_the_console(results, tmp_path):
    folder = copy_of(results, tmp_path)
    config = json.loads((folder / "lrp_eval" / "config.json").read_text())
    (ckpt, sha), = config["identity"]["checkpoints"].items()
    assert sha == json.loads((folder / "sanity" / "config.json").read_text())["identity"]["checkpoints"][ckpt]
    config["identity"]["checkpoints"][ckpt] = "0" * 64  # as if made from an earlier model at the same path
    (folder / "lrp_eval" / "config.json").write_text(json.dumps(config))
    code, out, err = run_script_inprocess("build_gallery", "--results-dir", folder)
    assert code == 0, err
    reason = (f"lrp_eval: its checkpoint {ckpt} has changed since it ran (sha256 00000000 then, {sha[:8]} now; "
              "retrained?)")
    assert f"warning: {folder / 'lrp_eval'} is stale: {reason}" in out.splitlines()
    html = html_of(folder)
    assert f"<p class=bad>Stale: {reason}.</p>" in html.split("<h2 id=evaluation>")[1]
    assert "Stale evidence: lrp_eval/" in html.split("<h2 id=training>")[0]
    config = json.loads((folder / "sweep" / "config.json").read_text())
    config["identity"]["checkpoints"][ckpt] = "0" * 64
    (folder / "sweep" / "config.json").write_text(json.dumps(config))
    run_script_inprocess("build_gallery", "--results-dir", folder)
    which = html_of(folder).split("<h2 id=training>")[0]
    assert "The γ sweep is stale (see its section): its recommendation is not used." in which
    assert "from the γ sweep" not in which


def test_a_sweep_that_recommends_nothing_shows_n_a(results, tmp_path):
    folder = copy_of(results, tmp_path)
    doc = json.loads((folder / "sweep" / "best_gamma.json").read_text())
    doc["recommended"] = None
    doc["presets"] = {k: {**v, "lerf_minus_morf": None, "box_share": None} for k, v in doc["presets"].items()}
    (folder / "sweep" / "best_gamma.json").write_text(json.dumps(doc))
    code, out, err = run_script_inprocess("build_gallery", "--results-dir", folder)
    assert code == 0 and "warning" not in out, err[-3000:]
    html = html_of(folder)
    assert "Recommended: <b>n/a</b>: the sweep made no recommendation." in html
    assert "The γ sweep made no recommendation." in html.split("<h2 id=training>")[0]


# --- the results folder itself --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sub,kind,page", [("lrp_samples", "a heatmap run", True),
                                           ("lrp_eval", "an evaluation run", False),
                                           ("train", "a training run", False)])
def test_one_runs_folder_is_refused_and_its_page_kept(results, sub, kind, page):
    folder = results / sub
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    code, out, err = run_script_inprocess("build_gallery", "--results-dir", folder)
    own = f"its own page is {folder / 'index.html'}" if page else "it has no page of its own"
    assert code == 2 and out == "" and [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: RESULTS_DIR {folder} holds {kind}, not a results folder ({own}); pass the folder that holds it and "
        f"the other runs' folders: --results-dir {results}"]
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_the_page_is_the_gallery_scripts_and_no_run_writes_into_its_folder(results, untrained_tiny):
    assert json.loads((results / MANIFEST).read_text())["script"] == "build_gallery.py"
    code, _, err = run_script_inprocess("test_vit_forward", "--checkpoint-path", untrained_tiny["checkpoint"],
                                        "--dataset-root", untrained_tiny["dataset_root"], "--num-samples", "1",
                                        "--device", "cpu", "--num-workers", "0", "--output-dir", results)
    assert code == 2 and "holds the outputs of build_gallery.py, not of test_vit_forward.py" in err


def test_a_folder_with_nothing_to_show_says_so_and_gets_no_page(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, out, err = run_script_inprocess("build_gallery", "--results-dir", tmp_path)
    assert code == 2 and out == "" and [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: RESULTS_DIR {tmp_path} holds no results to show (none of train/, lrp_samples/, lrp_eval/, sanity/, "
        "sweep/, pairs/); run the pipeline first or pass the folder that holds them"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_gallery_script_errors_on_a_missing_folder(tmp_path):
    code, out, err = run_script_inprocess("build_gallery", "--results-dir", tmp_path / "nope")
    assert code == 2 and [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: RESULTS_DIR {tmp_path / 'nope'} does not exist; run the pipeline first or pass --results-dir"]


def test_gallery_script_on_a_file_or_an_unwritable_folder(tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("x")
    code, _, err = run_script_inprocess("build_gallery", "--results-dir", a_file)
    assert code == 2 and [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: RESULTS_DIR {a_file} is a file, not a folder; run the pipeline first or pass --results-dir"]
    if os.geteuid() == 0:
        pytest.skip("root ignores read-only permissions: the read-only case cannot be shown")
    locked = tmp_path / "locked"
    (locked / "train").mkdir(parents=True)
    (locked / "train" / "summary.csv").write_text("epoch,top1,top5\n")
    locked.chmod(0o555)
    try:
        code, _, err = run_script_inprocess("build_gallery", "--results-dir", locked)
        assert code == 2 and "Traceback" not in err
        assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
            f"error: cannot write to RESULTS_DIR {locked}: Permission denied; choose another folder"]
        assert not (locked / "index.html").exists()
    finally:
        locked.chmod(0o755)

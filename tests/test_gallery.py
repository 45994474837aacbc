"""The HTML galleries: built from real script outputs, rendered in headless Chromium, every picture loaded."""
import os
import re
import shutil
import subprocess

import pytest
from conftest import run_script_inprocess

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def render_dom(page, tmp_path):
    """The DOM of ``page`` after load in a 1280 px wide window, from headless Chromium (flags keep it off the closed
    network)."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--hide-scrollbars", "--window-size=1280,900",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--allow-file-access-from-files",
         "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def image_counts(dom):
    match = re.search(r'data-images="loaded:(\d+) broken:(\d+)"', dom)
    assert match, "the page's load check did not run"
    return int(match.group(1)), int(match.group(2))


def widths(dom):
    """(content width, window width) in CSS px, as the page measured them after load."""
    match = re.search(r'data-width="content:(\d+) window:(\d+)"', dom)
    assert match, "the page's load check did not run"
    return int(match.group(1)), int(match.group(2))


@pytest.fixture(scope="module")
def results(trained_tiny, tmp_path_factory):
    """A results folder made by the real scripts: train/, lrp_samples/ (+ predictions), lrp_eval/, index.html."""
    root = tmp_path_factory.mktemp("results")
    shutil.copytree(trained_tiny["output_dir"], root / "train")
    common = ("--checkpoint-path", trained_tiny["checkpoint"], "--dataset-root", trained_tiny["dataset_root"],
              "--num-workers", "0", "--device", "cpu")
    code, _, err = run_script_inprocess("test_vit_forward", *common, "--num-samples", "3",
                                        "--compare-presets", "baseline,balanced", "--output-dir", root / "lrp_samples")
    assert code == 0, err[-2000:]
    code, _, err = run_script_inprocess("inspect_lrp_predictions", "--output-dir", root / "lrp_samples",
                                        "--device", "cpu")
    assert code == 0, err[-2000:]
    code, _, err = run_script_inprocess("evaluate_lrp", *common, "--num-images", "6", "--methods", "balanced,random",
                                        "--perturb-steps", "2", "--output-dir", root / "lrp_eval")
    assert code == 0, err[-2000:]
    code, _, err = run_script_inprocess("sanity_checks", *common, "--num-images", "3", "--methods", "balanced,random",
                                        "--noise-samples", "1", "--figure-images", "1", "--output-dir", root / "sanity")
    assert code == 0, err[-2000:]
    code, _, err = run_script_inprocess("sweep_gamma", *common, "--num-images", "3", "--conv-gammas", "0,1",
                                        "--lin-gammas", "0,0.5", "--schedules", "", "--perturb-steps", "2",
                                        "--output-dir", root / "sweep")
    assert code == 0, err[-2000:]
    code, out, err = run_script_inprocess("build_gallery", "--results-dir", root)
    assert code == 0, err[-2000:]
    assert "index.html" in out
    return root


def test_gallery_links_are_relative_and_cover_every_section(results):
    html = (results / "index.html").read_text(encoding="utf-8")
    for heading in ("Training", "Heatmaps", "Evaluation", "Sanity checks", "Which γ: the sweep"):
        assert f"<h2>{heading}</h2>" in html
    for picture in ("lrp_eval/forest_paired.png", "sanity/curves_randomization.png", "sanity/class_pairs.png",
                    "sweep/pareto.png", "sweep/surface_box_share.png"):
        assert f'src="{picture}"' in html, picture
    assert "class check" in html and "Recommended: <b>gamma:" in html
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) >= 3 + 3 + 1 + 2  # curves, 3 comparisons, 3 grids, overview, eval plots
    for src in srcs:
        assert not src.startswith(("/", "file:", "http")), src
        assert (results / src).is_file(), src
    assert "top-5:" in html  # predictions from inspect_lrp_predictions.py
    assert "balanced" in html and "random" in html  # the evaluation table


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does it)")
def test_every_picture_loads_and_fits_the_page_in_headless_chromium(results, tmp_path):
    for page in (results / "index.html", results / "lrp_samples" / "index.html"):
        srcs = re.findall(r'<img src="([^"]+)"', page.read_text(encoding="utf-8"))
        dom = render_dom(page, tmp_path)
        loaded, broken = image_counts(dom)
        assert (loaded, broken) == (len(srcs), 0), page
        content, window = widths(dom)
        assert window == 1280 and content <= window, f"{page} scrolls sideways: {content} px in a {window} px window"


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does it)")
def test_a_missing_picture_is_reported_by_the_page(results, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(results / "lrp_samples", copy)
    victim = sorted(copy.glob("lrp_comparison_*.png"))[0]
    victim.unlink()
    dom = render_dom(copy / "index.html", tmp_path)
    loaded, broken = image_counts(dom)
    assert broken == 1 and loaded > 0
    assert "could not be loaded" in dom and victim.name in dom


def test_the_title_names_the_model_trained_and_wide_pictures_are_held_to_the_page(results):
    html = (results / "index.html").read_text(encoding="utf-8")
    title = "vit_tiny on CUB-200-2011: AttnLRP with the Gamma rule"  # the fixture trained vit_tiny, from scratch
    assert f"<title>{title}</title>" in html and f"<h1>{title}</h1>" in html and "ViT-B/16" not in html
    assert "<p>Model: vit_tiny (initial weights: none).</p>" in html
    from PIL import Image

    assert Image.open(results / "lrp_eval" / "ranking.png").width > 1280  # a picture wider than the window...
    assert "img{max-width:100%;height:auto}" in html  # ...shrinks to the page: every <img>, not only in cards
    assert html.count("<table>") == html.count("<div class=scroll><table>") > 0  # a wide table scrolls in its box


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


def test_the_evaluation_table_marks_what_says_nothing_and_counts_empty_maps():
    from vitlrp.gallery import summary_table

    entry = {"mean": 0.0, "ci95": 0.0, "n": 4}
    summary = {"higher_is_better": {"box_share": True, "negative_share": False},
               "methods": {"gradcam": {"n_empty": 2, "not_applicable": ["negative_share"], "box_share": entry,
                                       "negative_share": entry},
                           "balanced": {"n_empty": 0, "not_applicable": [], "box_share": entry,
                                        "negative_share": entry}}}
    html = summary_table(summary)
    assert "<tr><td>gradcam</td><td>2</td><td>0.000 ± 0.000</td><td>n/a†</td></tr>" in html
    assert "<tr><td>balanced</td><td>0</td><td>0.000 ± 0.000</td><td>0.000 ± 0.000</td></tr>" in html

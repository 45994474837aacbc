"""scripts/report.py: the results page is written from the runs' files, names their commands, and never shows a run
that is missing or unfinished."""
import json

from conftest import error_lines, run_script_inprocess

from vitlrp.runfolder import MARKER


def write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")


def entry(mean):
    return {"mean": mean, "ci95": 0.01, "n": 4}


def evaluation_doc():
    metrics = ("box_share", "pointing_game", "rank_accuracy", "negative_share", "gini", "roughness",
               "class_sensitivity", "lerf_minus_morf")
    methods = {"balanced": {"n_images": 4, "n_empty": 0, "not_applicable": [], **{m: entry(0.5) for m in metrics}},
               "gradcam": {"n_images": 4, "n_empty": 1, "not_applicable": ["negative_share"],
                           **{m: entry(0.25) for m in metrics}}}
    return {"methods": methods, "higher_is_better": {m: m != "negative_share" for m in metrics},
            "best": {"box_share": {"method": "balanced", "mean": 0.5}},
            "config": {"command": "python scripts/evaluate_lrp.py --num-images 4"}}


def test_the_page_holds_each_finished_run_with_its_command(tmp_path):
    results = tmp_path / "results"
    write(results / "lrp_eval" / "summary.json", evaluation_doc())
    write(results / "sweep" / "best_gamma.json", {"config": {"command": "python scripts/sweep_gamma.py"}})
    (results / "sweep" / MARKER).write_text("unfinished")  # a killed sweep: not shown as if it were a result
    out = tmp_path / "docs" / "results.md"
    code, stdout, stderr = run_script_inprocess("report", "--results-dir", results, "--shortcut-dir",
                                                tmp_path / "none", "--benchmark-files", tmp_path / "none.json",
                                                "--output-file", out)
    assert code == 0, stderr
    page = out.read_text(encoding="utf-8")
    assert "made by `python scripts/evaluate_lrp.py --num-images 4`" in page
    assert "| gradcam | 4 | 1 | 0.250 ± 0.010 | 0.250 ± 0.010 | 0.250 ± 0.010 | n/a† |" in page
    assert "holds a run that did not finish" in page and "made by `python scripts/sweep_gamma.py`" not in page
    assert "Not shown:" in page.split("## Sanity checks")[1].split("##")[0]
    assert "Written by `python scripts/report.py" in page


def test_nothing_to_report_is_one_line(tmp_path):
    code, _, stderr = run_script_inprocess("report", "--results-dir", tmp_path, "--shortcut-dir", tmp_path,
                                           "--benchmark-files", tmp_path / "none.json", "--output-file",
                                           tmp_path / "r.md")
    assert code == 2 and "no finished run under" in error_lines(stderr)[0]
    assert not (tmp_path / "r.md").exists()

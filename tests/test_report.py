"""scripts/report.py: the results page is written from the runs' files, names their commands, and never shows a run
that is missing or unfinished; a missing run stops it unless the user asks for a partial page; a stale run is
marked; a folder it does not understand is named, never a traceback."""
import json

from conftest import error_lines, run_script_inprocess

from vitlrp.runfolder import MANIFEST, MARKER


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
                                                "--output-file", out, "--partial", "true")
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


def sanity_doc():
    check = {"passed": True, "borderline": False, "abs_spearman": 0.3, "ci95": 0.05}
    return {"verdicts": {"balanced": {"class": check, "randomization": check}},
            "summary": [{"method": "balanced", "test": "randomization", "step": "head", "measure": "abs_spearman",
                         "mean": 0.3, "ci95": 0.05}],
            "thresholds": {"class": 0.6, "randomization": 0.6}, "config": {"command": "python scripts/sanity.py"}}


def sweep_doc():
    scores = {m: {"mean": 0.5, "ci95": 0.1} for m in ("lerf_minus_morf", "box_share", "negative_share")}
    return {"recommended": {"method": "gamma:1:0.5", "rank_sum": 3, "rule": "the rule", "scores": scores,
                            "sanity": {"passes_class_check": True}}, "config": {"command": "python scripts/sweep.py"}}


def full_results(tmp_path):
    """Every run report.py reads, finished: results/{lrp_eval,sanity,sweep}, shortcut/lrp_eval, a benchmark."""
    results, shortcut = tmp_path / "results", tmp_path / "shortcut"
    write(results / "lrp_eval" / "summary.json", evaluation_doc())
    write(results / "sanity" / "summary.json", sanity_doc())
    write(results / "sweep" / "best_gamma.json", sweep_doc())
    doc = evaluation_doc()
    doc["shortcut"] = {"balanced": {"auc": 0.8, "auc_low": 0.7, "auc_high": 0.9, "mark_share_followed": 0.4,
                                    "mark_share_not_followed": 0.2, "n_swapped": 20}}
    write(shortcut / "lrp_eval" / "summary.json", doc)
    write(tmp_path / "benchmark" / "benchmark.json", {"rows": {"input_x_gradient": {"images_per_s": 10.0}}})
    return ("--results-dir", results, "--shortcut-dir", shortcut, "--benchmark-files",
            tmp_path / "benchmark" / "benchmark.json", "--output-file", tmp_path / "r.md")


def test_a_missing_run_stops_the_report_naming_it_and_its_make_target_unless_partial(tmp_path):
    flags = full_results(tmp_path)
    code, _, stderr = run_script_inprocess("report", *flags)
    assert code == 0, stderr
    (tmp_path / "results" / "sweep" / "best_gamma.json").unlink()
    (tmp_path / "r.md").write_text("the tracked page", encoding="utf-8")
    code, _, stderr = run_script_inprocess("report", *flags[:-1], tmp_path / "r.md")
    assert code == 2 and error_lines(stderr) == [
        f"error: runs missing, so {tmp_path / 'r.md'} would lose their sections: Which γ: the sweep "
        f"({tmp_path / 'results' / 'sweep' / 'best_gamma.json'} does not exist: make sweep); run them, or pass "
        "--partial true to write the page without them"]
    assert (tmp_path / "r.md").read_text(encoding="utf-8") == "the tracked page"  # left as it was
    code, stdout, stderr = run_script_inprocess("report", *flags, "--partial", "true")
    assert code == 0 and "Which γ: the sweep: " in stdout and "does not exist" in stdout, stderr
    assert "Not shown:" in (tmp_path / "r.md").read_text(encoding="utf-8").split("## Which γ: the sweep")[1]


def test_the_make_target_of_each_missing_run(tmp_path):
    flags = full_results(tmp_path)
    for sub in ("lrp_eval", "sanity"):
        (tmp_path / "results" / sub / "summary.json").unlink()
    (tmp_path / "shortcut" / "lrp_eval" / "summary.json").unlink()
    b16 = tmp_path / "benchmark_vit_b16" / "benchmark.json"
    code, _, stderr = run_script_inprocess("report", *flags[:5], f"{flags[5]},{b16}", *flags[6:])
    (line,) = error_lines(stderr)
    assert code == 2 and "summary.json does not exist: make demo); Sanity checks (" in line
    assert "does not exist: make shortcut)" in line and f"{b16} does not exist: make bench-vit-b16)" in line


def test_a_folder_another_script_made_or_the_report_cannot_read_is_named_not_a_traceback(tmp_path):
    flags = full_results(tmp_path)
    results = tmp_path / "results"
    write(results / "sanity" / "summary.json", evaluation_doc())  # the case: an evaluation's summary.json
    write(results / "sweep" / MANIFEST, {"files": ["best_gamma.json"], "script": "evaluate_lrp.py"})
    code, stdout, stderr = run_script_inprocess("report", *flags, "--partial", "true")
    assert code == 0 and "Traceback" not in stderr, stderr
    assert f"Sanity checks: {results / 'sanity'} holds files this report does not understand (KeyError:" in stdout
    assert f"Which γ: the sweep: {results / 'sweep'} holds the outputs of evaluate_lrp.py, not of sweep_gamma.py" \
        in stdout


def test_a_stale_run_is_marked_on_the_page_and_the_console(tmp_path):
    flags = full_results(tmp_path)
    results = tmp_path / "results"
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"the first model")
    from vitlrp import identity

    recorded = identity.identify([ckpt])
    for sub in ("lrp_eval", "sanity", "sweep"):
        write(results / sub / "config.json", {"identity": recorded})
    ckpt.write_bytes(b"a retrained model")  # retrained at the same path: every run above is stale
    code, stdout, stderr = run_script_inprocess("report", *flags)
    assert code == 0, stderr
    page = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert page.count("**Stale:** ") == 3 and f"its checkpoint {ckpt.resolve()} has changed since it ran" in page
    warnings = [ln for ln in stdout.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 3 and all(" is stale: " in w for w in warnings)

"""The explaining scripts in bad cases: non-finite maps, two runs at once, killed runs, leftovers, disk full,
odd values, empty splits, other checkpoints. Each test reproduces the case a user met."""
import csv
import dataclasses
import errno
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, error_lines, run_script_inprocess

import vitlrp.explainer
import vitlrp.fileio
import vitlrp.render
from vitlrp.cub import load_cub
from vitlrp.gallery import write_results_gallery
from vitlrp.inputs import sample_indices
from vitlrp.runfolder import HOLDER, MANIFEST, MARKER, FolderLock

HEAT, EVAL, INSPECT = "test_vit_forward", "evaluate_lrp", "inspect_lrp_predictions"


def explain(trained, out, *flags, n=3, checkpoint=None, root=None):
    return run_script_inprocess(HEAT, "--checkpoint-path", checkpoint or trained["checkpoint"], "--dataset-root",
                                root or trained["dataset_root"], "--num-samples", n, "--batch-size", 4,
                                "--num-workers", 0, "--device", "cpu", "--output-dir", out, *flags)


def evaluate(trained, out, *flags, n=4, checkpoint=None, root=None):
    return run_script_inprocess(EVAL, "--checkpoint-path", checkpoint or trained["checkpoint"], "--dataset-root",
                                root or trained["dataset_root"], "--num-images", n, "--methods", "balanced,random",
                                "--perturb-steps", 2, "--batch-size", 4, "--num-workers", 0, "--device", "cpu",
                                "--output-dir", out, *flags)


def one_error(code, stderr, *words):
    errors = error_lines(stderr)
    assert code == 2 and len(errors) == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def results(out):
    return json.loads((Path(out) / "lrp_results.json").read_text(encoding="utf-8"))


def output_names(out):
    return {p.name for p in Path(out).iterdir() if not p.name.startswith(".")}


def expected_files(res, grid=False):
    names = {f for r in res for f in r["files"].values()}
    return names | {"lrp_results.json", "config.json", "index.html", "lrp_image_paths.txt"} | \
        ({"lrp_gamma_grid_overview.png"} if grid else set())


@pytest.fixture
def nan_for_second_image(monkeypatch):
    """Explainer maps whose second image is NaN: as a checkpoint with NaN weights or an overflow would give."""
    def broken(r):
        relevance = r.relevance.clone()
        if len(relevance) > 1:
            relevance[1, 0, 0] = math.nan
        return dataclasses.replace(r, relevance=relevance)

    real = vitlrp.explainer.Explainer.attribute

    def attribute(self, images, target=None, ids=None):
        return broken(real(self, images, target, ids))

    real_gammas = vitlrp.explainer.Explainer.attribute_gammas

    def gammas(self, images, targets, settings):  # what the evaluation's γ methods share a forward through
        out = real_gammas(self, images, targets, settings)
        return [[broken(r[0]), *r[1:]] for r in out]  # the explained class's map, not the other class's

    monkeypatch.setattr(vitlrp.explainer.Explainer, "attribute", attribute)
    monkeypatch.setattr(vitlrp.explainer.Explainer, "attribute_gammas", gammas)


@pytest.fixture(scope="module")
def finished(trained_tiny, tmp_path_factory):
    """A finished 2-sample heatmap run (for inspect)."""
    out = tmp_path_factory.mktemp("finished")
    code, _, stderr = explain(trained_tiny, out, n=2)
    assert code == 0, stderr[-2000:]
    return out


# --- 1. non-finite maps -------------------------------------------------------------------------------------
def test_nonfinite_map_is_a_per_sample_error(untrained_tiny, tmp_path, nan_for_second_image):
    out = tmp_path / "out"
    code, stdout, stderr = explain(untrained_tiny, out, n=3)
    assert code == 1, stderr[-2000:]
    text = (out / "lrp_results.json").read_text(encoding="utf-8")
    assert "NaN" not in text.replace("are NaN", "")  # valid JSON without NaN numbers
    res = json.loads(text)
    bad = [r for r in res if r["error"]]
    assert len(bad) == 1 and "non-finite map: 1 of" in bad[0]["error"] and bad[0]["files"] == {}
    assert not any(out.glob(f"*{bad[0]['sample_idx']:06d}*"))  # no picture of a broken map
    assert "✗ Failed: non-finite map" in stdout
    assert "Completed! Generated 2/3 samples (1 non-finite map, see lrp_results.json)" in stdout
    assert not (out / MARKER).exists()  # the run itself finished


def test_nonfinite_map_in_evaluation_is_a_per_image_error(untrained_tiny, tmp_path, nan_for_second_image):
    out = tmp_path / "out"
    code, stdout, stderr = evaluate(untrained_tiny, out, n=4)
    assert code == 1, stderr[-2000:]
    rows = list(csv.DictReader(open(out / "per_image.csv", encoding="utf-8")))
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["method"] == "balanced" and "non-finite" in bad[0]["error"]
    assert bad[0]["box_share"] == ""
    s = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert s["methods"]["balanced"]["n_images"] == 3 and s["methods"]["balanced"]["n_failed"] == 1
    assert s["methods"]["random"]["n_images"] == 4
    assert s["failed_images"] == [int(bad[0]["sample_idx"])] and s["n_failed"] == 1
    assert all(math.isfinite(s["methods"]["balanced"][m]["mean"]) for m in ("morf_auc", "lerf_auc", "gini"))
    assert "balanced: 1 image(s) got a non-finite map (NaN or inf)" in stdout


# --- 2. two runs at once ------------------------------------------------------------------------------------
def test_second_heatmap_run_into_a_busy_folder_stops(trained_tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "lrp_results.json").write_text("[]", encoding="utf-8")
    with FolderLock(out, "OUTPUT_DIR"):  # another run (a second open file: flock treats it as another holder)
        code, stdout, stderr = explain(trained_tiny, out)
    one_error(code, stderr, "is in use by another run", f"pid {os.getpid()}", f"host {socket.gethostname()}",
              "started ")
    assert (out / "lrp_results.json").read_text(encoding="utf-8") == "[]"  # the other run's folder untouched
    assert not (out / MARKER).exists() and "Processing" not in stdout


def test_evaluation_into_a_busy_folder_stops(trained_tiny, tmp_path):
    out = tmp_path / "out"
    with FolderLock(out, "OUTPUT_DIR"):
        code, _, stderr = evaluate(trained_tiny, out)
    one_error(code, stderr, "OUTPUT_DIR", "is in use by another run", f"pid {os.getpid()}")
    assert not (out / "summary.json").exists()


def test_lock_of_a_killed_run_is_taken_over_with_a_note(trained_tiny, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from vitlrp.runfolder import FolderLock\n"
         f"with FolderLock({str(out)!r}):\n    print('locked', flush=True); time.sleep(60)"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, stderr = explain(trained_tiny, out, n=1)
        one_error(code, stderr, f"pid {holder.pid}")
        holder.send_signal(signal.SIGKILL)  # killed: it never releases the lock itself
        holder.wait()
    finally:
        holder.kill()
        holder.stdout.close()
    code, _, stderr = explain(trained_tiny, out, n=1)
    assert code == 0, stderr[-2000:]
    assert f"note: a run that did not end cleanly (pid {holder.pid}" in stderr
    assert not (out / HOLDER).exists()  # released


# --- 3. killed runs and leftovers of older runs -------------------------------------------------------------
def test_folder_holds_only_the_last_runs_files_or_says_it_is_incomplete(trained_tiny, tmp_path, monkeypatch):
    out = tmp_path / "results" / "lrp_samples"
    code, _, stderr = explain(trained_tiny, out, "--compare-presets", "baseline,balanced", n=3)
    assert code == 0, stderr[-2000:]
    code, _, stderr = run_script_inprocess(INSPECT, "--output-dir", out, "--device", "cpu")
    assert code == 0, stderr[-2000:]
    (out / "my_notes.txt").write_text("mine", encoding="utf-8")  # a user's files are never touched
    (out / "my_plot.png").write_bytes(b"png")

    calls = []
    real_save = vitlrp.render.save_png

    def dying_save(image, path):  # killed halfway through a run with other gammas
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_save(image, path)

    monkeypatch.setattr(vitlrp.render, "save_png", dying_save)
    code, _, stderr = explain(trained_tiny, out, "--preset", "aggressive", n=1)
    monkeypatch.undo()
    assert code == 130
    marker = (out / MARKER).read_text(encoding="utf-8")
    assert "This folder is incomplete" in marker and "To finish, run again: python" in marker
    assert "--preset aggressive" in marker
    assert not (out / "index.html").exists() and not (out / "lrp_results.json").exists()
    code, _, stderr = run_script_inprocess(INSPECT, "--output-dir", out, "--device", "cpu")
    one_error(code, stderr, "did not finish", MARKER)
    page = write_results_gallery(out.parent).read_text(encoding="utf-8")
    assert "lrp_samples/ holds a run that did not finish" in page

    code, _, stderr = explain(trained_tiny, out, "--preset", "aggressive", n=1)  # a smaller re-run
    assert code == 0, stderr[-2000:]
    res = results(out)
    assert len(res) == 1 and res[0]["preset"] == "aggressive"
    assert output_names(out) == expected_files(res) | {"my_notes.txt", "my_plot.png"}
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["PRESET"] == "aggressive"
    assert "did not finish" not in write_results_gallery(out.parent).read_text(encoding="utf-8")


def test_evaluation_folder_keeps_only_its_last_run(trained_tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text('{"files": ["bar_old_metric.png", "summary.json"]}', encoding="utf-8")
    (out / "bar_old_metric.png").write_bytes(b"png")  # an older run's output name
    (out / "summary.json").write_text("{}", encoding="utf-8")
    (out / "notes.md").write_text("mine", encoding="utf-8")
    monkeypatch.setattr("vitlrp.evaluation.summarize", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    code, _, _ = evaluate(trained_tiny, out, n=2)
    monkeypatch.undo()
    assert code == 130 and (out / MARKER).exists() and not (out / "summary.json").exists()
    code, _, stderr = evaluate(trained_tiny, out, n=2)
    assert code == 0, stderr[-2000:]
    assert not (out / MARKER).exists() and not (out / "bar_old_metric.png").exists()
    assert (out / "notes.md").exists() and (out / "summary.json").stat().st_size > 2


@pytest.mark.parametrize("where", ["", "."])
def test_a_heatmap_run_never_writes_into_a_folder_of_the_users(trained_tiny, tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    mine = {"predictions.csv": "mine", "lrp_notes.txt": "notes", "config.json": '{"mine": 1}', "index.html": "<p>"}
    for name, text in mine.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    code, stdout, stderr = explain(trained_tiny, where, n=1)
    one_error(code, stderr, *(["--output-dir is empty: give a folder"] if where == "" else [
        "OUTPUT_DIR . holds files this project did not write (config.json, index.html, lrp_notes.txt, "
        "predictions.csv): choose a new or empty folder"]))
    assert {p.name: p.read_text(encoding="utf-8") for p in tmp_path.iterdir()} == mine and "Processing" not in stdout


# --- 4. inspect -----------------------------------------------------------------------------------------------
def test_inspect_refuses_a_checkpoint_of_other_classes(trained_tiny, finished, tmp_path):
    ckpt = torch.load(trained_tiny["checkpoint"], map_location="cpu", weights_only=True)
    ckpt["class_names"] = [f"Other bird {i}" for i in range(len(ckpt["class_names"]))]
    torch.save(ckpt, tmp_path / "other.pt")
    before = (finished / "predictions.json").read_bytes() if (finished / "predictions.json").exists() else None
    code, _, stderr = run_script_inprocess(INSPECT, "--output-dir", finished, "--checkpoint-path",
                                           tmp_path / "other.pt", "--device", "cpu")
    one_error(code, stderr, "other classes", "other.pt")
    after = (finished / "predictions.json").read_bytes() if (finished / "predictions.json").exists() else None
    assert before == after


@pytest.mark.parametrize("k", ["0", "-3"])
def test_inspect_top_k_below_one_is_one_line(finished, k):
    code, _, stderr = run_script_inprocess(INSPECT, "--output-dir", finished, "--top-k", k, "--device", "cpu")
    one_error(code, stderr, f"TOP_K must be at least 1, got {k}")


def test_inspect_from_another_folder_finds_the_recorded_checkpoint(trained_tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(trained_tiny["checkpoint"].parent)
    out = tmp_path / "out"
    code, _, stderr = explain(trained_tiny, out, n=1, checkpoint=trained_tiny["checkpoint"].name)  # relative
    assert code == 0, stderr[-2000:]
    assert results(out)[0]["checkpoint"] == str(trained_tiny["checkpoint"].resolve())
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_script_inprocess(INSPECT, "--output-dir", out, "--device", "cpu")
    assert code == 0, stderr[-2000:]


# --- 5. boxes that cannot be used, empty splits ---------------------------------------------------------------
def test_unusable_boxes_are_named(trained_tiny, tmp_path):
    root = Path(shutil.copytree(trained_tiny["dataset_root"], tmp_path / "CUB_200_2011",
                                ignore=shutil.ignore_patterns("images")))
    (root / "images").symlink_to(Path(trained_tiny["dataset_root"]) / "images")
    ann = load_cub(root)
    test_rows = ann.split_indices("test")
    drawn = [test_rows[i] for i in sample_indices(len(test_rows), 6, 0)]
    broken = {int(ann.image_ids[drawn[0]]): "nan nan nan nan", int(ann.image_ids[drawn[1]]): "5000 5000 10 10",
              int(ann.image_ids[drawn[2]]): "10 10 -5 -5"}
    lines = (root / "bounding_boxes.txt").read_text().splitlines()
    (root / "bounding_boxes.txt").write_text("\n".join(
        f"{ln.split()[0]} {broken[int(ln.split()[0])]}" if int(ln.split()[0]) in broken else ln for ln in lines) + "\n")
    out = tmp_path / "out"
    code, stdout, stderr = evaluate(trained_tiny, out, n=6, root=root)
    assert code == 0, stderr[-2000:]
    s = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    expected = sorted(sample_indices(len(test_rows), 6, 0)[:3])
    assert s["images_without_box"] == expected
    assert s["methods"]["balanced"]["box_share"]["n"] == 3
    assert "warning: 3 image(s) have no usable box" in stdout and str(expected) in stdout


def test_empty_split_is_an_error(untrained_tiny, tmp_path):
    root = Path(shutil.copytree(untrained_tiny["dataset_root"], tmp_path / "CUB_200_2011",
                                ignore=shutil.ignore_patterns("images")))
    (root / "images").symlink_to(Path(untrained_tiny["dataset_root"]) / "images")
    split = root / "train_test_split.txt"
    split.write_text("".join(f"{ln.split()[0]} 1\n" for ln in split.read_text().splitlines()))  # no test images
    code, stdout, stderr = explain(untrained_tiny, tmp_path / "heat", n=0, root=root)
    one_error(code, stderr, "the test split has no images")
    assert "Generated 0/0" not in stdout
    code, _, stderr = evaluate(untrained_tiny, tmp_path / "eval", n=0, root=root)
    one_error(code, stderr, "the test split has no images")


# --- 6. values are checked before any slow work ---------------------------------------------------------------
@pytest.mark.parametrize("script, flags, message", [
    (EVAL, ("--batch-size", "0"), "BATCH_SIZE must be positive, got 0"),
    (EVAL, ("--num-workers", "-1"), "NUM_WORKERS must be >= 0"),
    (HEAT, ("--num-workers", "-1"), "NUM_WORKERS must be >= 0"),
])
def test_values_are_checked_before_the_checkpoint_loads(trained_tiny, tmp_path, script, flags, message):
    # the checkpoint does not exist: a value error that comes first was checked before any loading
    run = evaluate if script == EVAL else explain
    code, _, stderr = run(trained_tiny, tmp_path / "out", *flags, checkpoint=tmp_path / "missing.pt")
    one_error(code, stderr, message)


def test_perturb_steps_are_bounded_by_the_patches(trained_tiny, tmp_path):
    code, stdout, stderr = evaluate(trained_tiny, tmp_path / "out", "--perturb-steps", "100000")
    one_error(code, stderr, "PERTURB_STEPS must be at most the number of patches (49), got 100000")
    assert not (tmp_path / "out").exists()


# --- 7. disk full ---------------------------------------------------------------------------------------------
def test_disk_full_is_one_line_and_leaves_the_folder_marked(untrained_tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = []

    def full_disk(path, data):
        calls.append(path)
        with vitlrp.fileio.atomic_path(path) as tmp:
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            tmp.write_bytes(data)

    monkeypatch.setattr(vitlrp.render, "write_bytes", full_disk)
    code, _, stderr = explain(untrained_tiny, out, n=2)
    line = one_error(code, stderr, "disk full while writing", str(calls[2]), "MiB free", MARKER)
    assert "[Errno" not in line
    assert (out / MARKER).exists() and not (out / "lrp_results.json").exists()
    assert not list(out.glob(".*.tmp"))


# --- 8. inspect reads what the folder holds under its lock --------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("[1]", ["entry 0 is 1, not a sample"]),
    ('[{"sample_idx": 1}]', ["entry 0 lacks a valid img_path, label"]),
    ("{}", ["holds no list of samples (it holds {})"]),
    ("[]", ["holds no list of samples"]),
])
def test_inspect_says_what_is_wrong_with_a_hand_edited_results_file(tmp_path, text, words):
    (tmp_path / "lrp_results.json").write_text(text, encoding="utf-8")
    code, stdout, stderr = run_script_inprocess(INSPECT, "--output-dir", tmp_path, "--device", "cpu")
    one_error(code, stderr, "lrp_results.json", *words)
    assert stdout == "" and not (tmp_path / "predictions.json").exists()


def test_inspect_reads_the_results_under_the_lock(finished, tmp_path, monkeypatch):
    out = Path(shutil.copytree(finished, tmp_path / "lrp_samples"))
    first = results(out)[:1]
    real_enter = FolderLock.__enter__

    def heatmap_run_ends_just_before(self):  # a smaller heatmap run finishes while inspect loads
        (out / "lrp_results.json").write_text(json.dumps(first), encoding="utf-8")
        return real_enter(self)

    monkeypatch.setattr(FolderLock, "__enter__", heatmap_run_ends_just_before)
    code, _, stderr = run_script_inprocess(INSPECT, "--output-dir", out, "--device", "cpu")
    assert code == 0, stderr[-2000:]
    rows = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert [r["sample_idx"] for r in rows] == [first[0]["sample_idx"]]
    listed = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["files"]
    assert {"predictions.json", "predictions.csv"} <= set(listed)  # the next heatmap run may replace them

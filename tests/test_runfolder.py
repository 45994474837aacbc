"""vitlrp.runfolder and the atomic writes under it: whose files a run may replace or remove, an empty folder path,
a full disk, the leftovers of a killed run. Each test reproduces the case a user met."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections import namedtuple

import pytest
import torch
from conftest import REPO_ROOT, TINY_TRAIN_FLAGS

import vitlrp.fileio
import vitlrp.runfolder
from vitlrp.errors import UserError
from vitlrp.fileio import atomic_path, ensure_writable_dir, torch_save, write_text
from vitlrp.heatmaps import OUTPUT_NAMES
from vitlrp.runfolder import HOLDER, LOCK, MANIFEST, MARKER, FolderLock, RunFolder

USERS = {"predictions.csv": "mine", "lrp_notes.txt": "notes", "config.json": '{"mine": 1}', "index.html": "<p>mine",
         "my_plot.png": "png"}  # the last matches no output name of a heatmap run


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def users_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in USERS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def a_run(folder, written, owned=OUTPUT_NAMES, **kwargs):
    """A heatmap-like run that writes ``written`` (name → text) and finishes."""
    with RunFolder(folder, "OUTPUT_DIR", owned, **kwargs) as run:
        for name, text in written.items():
            write_text(folder / name, text)
        run.finish(written)


# --- whose files a run may touch ------------------------------------------------------------------------------
@pytest.mark.parametrize("where", [".", "sub"])
def test_a_folder_of_the_users_is_refused_and_left_as_it_was(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    folder = users_folder(tmp_path / where)
    before = snapshot(folder)
    with pytest.raises(UserError) as info:
        a_run(where, {"lrp_results.json": "[]", "config.json": "{}", "index.html": "<p>run"})
    assert str(info.value) == (f"OUTPUT_DIR {where} holds files this project did not write (config.json, index.html, "
                               "lrp_notes.txt, predictions.csv): choose a new or empty folder (or move those files "
                               "away)")
    assert snapshot(folder) == before  # nothing written, not even the lock


def test_an_empty_folder_path_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(users_folder(tmp_path))
    before = snapshot(tmp_path)
    for make in (lambda: RunFolder("", "OUTPUT_DIR", OUTPUT_NAMES), lambda: FolderLock("", "OUTPUT_DIR"),
                 lambda: ensure_writable_dir("", "OUTPUT_DIR")):
        with pytest.raises(UserError, match="^OUTPUT_DIR is empty: give a folder$"):
            make()
    assert snapshot(tmp_path) == before


def test_a_run_folder_replaces_only_its_own_files(tmp_path):
    out = tmp_path / "out"
    a_run(out, {"lrp_results.json": "[1]", "lrp_heatmap_000001.png": "a", "config.json": "{}"})
    assert json.loads((out / MANIFEST).read_text())["files"] == ["config.json", "lrp_heatmap_000001.png",
                                                                  "lrp_results.json"]
    (out / "lrp_notes.txt").write_text("notes", encoding="utf-8")  # the user's, under a name the run owns
    (out / "my_plot.png").write_text("png", encoding="utf-8")
    before = snapshot(out)
    with pytest.raises(UserError, match=r"holds files this project did not write \(lrp_notes.txt\)"):
        a_run(out, {"lrp_results.json": "[2]"})
    assert snapshot(out) == before

    (out / "lrp_notes.txt").unlink()
    a_run(out, {"lrp_results.json": "[2]"})  # a smaller re-run: the first run's heatmap and config go
    assert {p.name for p in out.iterdir()} == {"lrp_results.json", "my_plot.png", LOCK, MANIFEST}
    assert json.loads((out / MANIFEST).read_text())["files"] == ["lrp_results.json"]


def test_files_recorded_under_the_lock_count_as_the_projects(tmp_path):
    out = tmp_path / "out"
    a_run(out, {"lrp_results.json": "[1]"})
    with FolderLock(out, "OUTPUT_DIR") as lock:  # as inspect_lrp_predictions.py writes into a heatmap folder
        lock.refuse_foreign(["predictions.*"])
        lock.record(["predictions.json"])
        write_text(out / "predictions.json", "[]")
    a_run(out, {"lrp_results.json": "[2]"})  # not refused; the stale predictions go
    assert not (out / "predictions.json").exists()


def test_a_killed_runs_unlisted_files_are_the_projects(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with RunFolder(out, "OUTPUT_DIR", OUTPUT_NAMES):
            write_text(out / "lrp_heatmap_000007.png", "half a run")
            raise KeyboardInterrupt
    assert (out / MARKER).exists()
    a_run(out, {"lrp_results.json": "[]"})
    assert not (out / "lrp_heatmap_000007.png").exists() and not (out / MARKER).exists()


def test_a_folder_with_a_lock_but_no_list_is_not_taken_as_the_projects(tmp_path):
    out = users_folder(tmp_path / "out")
    (out / LOCK).touch()  # a lock file alone says nothing about whose the other files are
    before = snapshot(out)
    with pytest.raises(UserError, match=r"holds files this project did not write \(config.json, index.html"):
        a_run(out, {"lrp_results.json": "[]", "config.json": "{}"})
    assert snapshot(out) == before


def test_overwrite_takes_the_users_files_as_replaceable(tmp_path):
    out = users_folder(tmp_path / "out")
    a_run(out, {"config.json": "{}"}, overwrite=True)
    assert {p.name for p in out.iterdir()} == {"config.json", "my_plot.png", LOCK, MANIFEST}


def test_the_marker_names_the_command_quoted(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["scripts/test_vit_forward.py", "--output-dir", "my results/run 1"])
    with RunFolder(tmp_path / "out", "OUTPUT_DIR", OUTPUT_NAMES):
        text = (tmp_path / "out" / MARKER).read_text(encoding="utf-8")
    assert "run again: python scripts/test_vit_forward.py --output-dir 'my results/run 1'\n" in text


# --- a full disk ----------------------------------------------------------------------------------------------
def open_fds():
    return len(os.listdir("/proc/self/fd"))


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_when_taking_the_lock_is_one_line_and_releases_it(tmp_path, monkeypatch):
    out = tmp_path / "out"
    fds = open_fds()

    def holder_fails(path, obj):
        with atomic_path(path):
            no_space()

    monkeypatch.setattr(vitlrp.runfolder, "write_json", holder_fails)
    with pytest.raises(UserError, match=rf"^disk full while writing {out / HOLDER} \(.* MiB free\); free some "
                                        r"space and run again$"):
        FolderLock(out, "OUTPUT_DIR").__enter__()
    monkeypatch.undo()
    assert open_fds() == fds and not (out / HOLDER).exists() and not list(out.glob(".*.tmp"))
    with FolderLock(out, "OUTPUT_DIR"):  # released: this process may take it again
        pass


def test_a_full_disk_when_marking_the_folder_keeps_the_last_results(tmp_path, monkeypatch):
    out = tmp_path / "out"
    a_run(out, {"lrp_results.json": "[1]"})

    def marker_fails(path, text):
        with atomic_path(path):
            no_space()

    monkeypatch.setattr(vitlrp.runfolder, "write_text", marker_fails)
    with pytest.raises(UserError, match=f"disk full while writing {out / MARKER}"):
        RunFolder(out, "OUTPUT_DIR", OUTPUT_NAMES, clear_first=("lrp_results.json",)).__enter__()
    assert (out / "lrp_results.json").read_text() == "[1]"  # the marker comes first: no half-cleared folder
    assert not (out / HOLDER).exists() and not list(out.glob(".*.tmp"))
    with FolderLock(out, "OUTPUT_DIR"):  # released
        pass


FULL = namedtuple("usage", "total used free")(2**30, 2**30, 0)


@pytest.mark.parametrize("message", ["[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534",
                                     "basic_ios::clear: iostream error"])
def test_torch_save_into_a_full_disk_is_one_line(tmp_path, monkeypatch, message):
    path = tmp_path / "vit_cub_last.pt"
    path.write_bytes(b"the previous checkpoint")

    def save(obj, f, *args, **kwargs):  # what torch 2.x does when the disk fills up mid-file
        open(f, "wb").write(b"half a checkpoint")
        raise RuntimeError(message)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(vitlrp.fileio.shutil, "disk_usage", lambda p: FULL)
    with pytest.raises(UserError) as info:
        torch_save(path, {"w": torch.zeros(3)}, "checkpoint")
    assert str(info.value).startswith(f"cannot write the checkpoint {path} (No space left on device: 0.0 MiB free")
    assert "left as it was" in str(info.value)
    assert path.read_bytes() == b"the previous checkpoint" and not list(tmp_path.glob(".*.tmp"))

    monkeypatch.setattr(vitlrp.fileio.shutil, "disk_usage", lambda p: FULL._replace(free=2**30))
    with pytest.raises(RuntimeError, match="iostream|unexpected pos"):  # space left: not taken for a full disk
        torch_save(path, {"w": torch.zeros(3)}, "checkpoint")


# --- what a killed run leaves ---------------------------------------------------------------------------------
def test_a_killed_runs_temporary_files_are_removed_with_a_note(tmp_path, capsys):
    out = tmp_path / "ck"
    out.mkdir()
    (out / ".vit_cub_last.pt.k3j_9xq2.tmp").write_bytes(bytes(2**20))  # killed inside torch.save
    (out / ".write-test.abcdefgh.tmp").touch()
    keep = [".my.tmp", "notes.tmp", ".vit_cub_last.pt.TOOLONG99.tmp"]  # not names of the atomic writes
    for name in keep:
        (out / name).touch()
    with FolderLock(out, "CHECKPOINT_DIR"):
        pass
    assert sorted(p.name for p in out.iterdir()) == sorted(keep + [LOCK])  # a lock alone starts no list
    err = capsys.readouterr().err
    assert err.startswith("note: removed 2 temporary file(s) (1.0 MiB) that a killed run left in CHECKPOINT_DIR")
    assert ".vit_cub_last.pt.k3j_9xq2.tmp" in err


def start_run(tmp_path, out, how=""):
    """A script that takes ``out`` as a RunFolder (marker ``how`` if given), starts an atomic write and waits to be
    signalled; returns (process, script path) once it is writing."""
    script = tmp_path / "longrun.py"
    script.write_text(
        "import time\nfrom vitlrp import cli\nfrom vitlrp.fileio import atomic_path\n"
        "from vitlrp.runfolder import RunFolder\n"
        "def main(cfg):\n"
        f"    with RunFolder({str(out)!r}, 'OUTPUT_DIR', ['*.pt']) as run, atomic_path({str(out / 'x.pt')!r}) as tmp:\n"
        f"        if {how!r}:\n"
        f"            run.mark(how={how!r})\n"
        "        tmp.write_bytes(b'half'); print('writing', flush=True); time.sleep(60)\n"
        "cli.run(main, {})\n", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.stdout.readline().strip() == "writing"
    return proc, script


@pytest.mark.parametrize("sig,code,said", [(signal.SIGINT, 130, "interrupted"),
                                           (signal.SIGTERM, 143, "interrupted (SIGTERM)")])
def test_an_interrupted_run_says_how_to_finish_and_leaves_the_folder_marked_unlocked_and_clean(tmp_path, sig, code,
                                                                                              said):
    out = tmp_path / "out"
    proc, script = start_run(tmp_path, out)
    try:
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    how = f"To finish, run again: python {script}"
    assert proc.returncode == code
    assert stderr == f"{said}\nOUTPUT_DIR {out} is incomplete (see {MARKER}). {how}\n"
    assert (out / MARKER).read_text(encoding="utf-8").endswith(f"\n{how}\n")  # the console says what the marker says
    assert not (out / HOLDER).exists() and not list(out.glob(".*.tmp"))
    with FolderLock(out, "OUTPUT_DIR"):  # released
        pass


def test_ctrl_c_prints_the_how_to_finish_the_run_gave_its_marker(tmp_path):
    out = tmp_path / "out"
    how = "Its checkpoints are in ck; to continue from the last one, run: python train.py --resume true"
    proc, _ = start_run(tmp_path, out, how)
    try:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and stderr == f"interrupted\nOUTPUT_DIR {out} is incomplete (see {MARKER}). {how}\n"


def test_ctrl_c_in_training_prints_the_command_that_resumes_it(mini_cub, tmp_path):
    out, ck = tmp_path / "train", tmp_path / "ck"
    with open(tmp_path / "stderr.txt", "w+", encoding="utf-8") as err:  # a file: progress bars never fill a pipe
        proc = subprocess.Popen(
            [sys.executable, "scripts/train_vit_cub.py", "--dataset-root", str(mini_cub), *TINY_TRAIN_FLAGS,
             "--epochs", "50", "--checkpoint-dir", str(ck), "--output-dir", str(out)], cwd=REPO_ROOT,
            stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        try:
            assert any(line.startswith("epoch 1/50 ") for line in proc.stdout)  # a checkpoint to resume from is saved
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=120)
        finally:
            proc.kill()
        err.seek(0)
        stderr = err.read()
    how = (out / MARKER).read_text(encoding="utf-8").splitlines()[-1]
    assert how.startswith(f"Its checkpoints are in {ck}; to continue from the last one, run: python "
                          "scripts/train_vit_cub.py ") and how.endswith(" --resume true")
    assert proc.returncode == 130 and stderr.endswith(f"\ninterrupted\nOUTPUT_DIR {out} is incomplete (see {MARKER}). "
                                                      f"{how}\n")


def test_a_killed_run_never_blocks_the_folder_and_its_leftovers_go(tmp_path, capsys):
    out = tmp_path / "out"
    proc, script = start_run(tmp_path, out)
    try:
        with pytest.raises(UserError, match=rf"^OUTPUT_DIR {out} is in use by another run \(pid {proc.pid} on host "
                                            rf"{socket.gethostname()}, started .*, {script.name}\); wait for it"):
            FolderLock(out, "OUTPUT_DIR").__enter__()
        proc.send_signal(signal.SIGKILL)  # no clean-up runs: the holder record and a temporary file stay
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert (out / HOLDER).exists() and len(list(out.glob(".*.tmp"))) == 1
    with RunFolder(out, "OUTPUT_DIR", ["*.pt"]) as run:
        run.finish([])
    err = capsys.readouterr().err
    assert f"note: a run that did not end cleanly (pid {proc.pid} on host {socket.gethostname()}" in err
    assert f"{script.name}) held {out}; taking over" in err and "removed 1 temporary file(s)" in err
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK, MANIFEST])  # no holder, marker or temporary file


# --- one folder, one script ---------------------------------------------------------------------------------------
def made_by(folder, script, files=("summary.json",)):
    """A folder that ``script`` made (as its list records it), holding ``files``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        (folder / name).write_text("{}", encoding="utf-8")
    (folder / MANIFEST).write_text(json.dumps({"script": script, "files": list(files)}), encoding="utf-8")
    return folder


def test_a_run_folder_records_its_script_and_another_script_is_refused_in_one_line(tmp_path):
    out = tmp_path / "eval"
    a_run(out, {"summary.json": "{}"}, owned=["summary.json", "config.json"], script="evaluate_lrp.py")
    assert json.loads((out / MANIFEST).read_text())["script"] == "evaluate_lrp.py"
    before = snapshot(out)
    for overwrite in (False, True):  # overwrite is about the user's files; another script's folder stays refused
        with pytest.raises(UserError) as info:
            a_run(out, {"summary.json": "{}"}, owned=["summary.json"], script="sanity_checks.py", overwrite=overwrite)
        assert str(info.value) == (f"OUTPUT_DIR {out} holds the outputs of evaluate_lrp.py, not of sanity_checks.py: "
                                   "choose another OUTPUT_DIR (each script writes a folder of its own)")
        assert snapshot(out) == before
    a_run(out, {"summary.json": "[1]"}, owned=["summary.json"], script="evaluate_lrp.py")  # its own script: fine
    with FolderLock(out, "OUTPUT_DIR") as lock:  # a file recorded beside the run's keeps the folder's script
        lock.record(["notes.json"], script="other.py")
    assert json.loads((out / MANIFEST).read_text())["script"] == "evaluate_lrp.py"


def test_a_list_written_before_lists_named_their_script_is_told_by_its_files(tmp_path):
    out = tmp_path / "old"
    out.mkdir()  # an evaluation folder listed by an older version: no script named
    (out / MANIFEST).write_text(json.dumps({"files": ["config.json", "paired.csv", "per_image.csv", "summary.json"]}))
    assert vitlrp.runfolder.maker(out) == ""
    with pytest.raises(UserError) as info:  # a sweep writes per_image.csv and config.json, never paired.csv
        RunFolder(out, "OUTPUT_DIR", ["cells.csv", "per_image.csv", "config.json"], script="sweep_gamma.py").__enter__()
    assert str(info.value) == (f"OUTPUT_DIR {out} holds the outputs of another script (paired.csv, summary.json), not "
                               "of sweep_gamma.py: choose another OUTPUT_DIR (each script writes a folder of its own)")
    owned = ["config.json", "paired.csv", "per_image.csv", "summary.json"]
    a_run(out, {"summary.json": "{}"}, owned=owned, script="evaluate_lrp.py")  # its own files: taken, and named now
    assert vitlrp.runfolder.maker(out) == "evaluate_lrp.py"


@pytest.fixture(scope="module")
def shortcut_cub_10(tmp_path_factory):
    """A shortcut mini-CUB with the mini-CUB's 10 classes, 2 images each (shortcut_pairs.py needs its marks)."""
    from vitlrp.synthetic import make_synthetic_cub

    return make_synthetic_cub(tmp_path_factory.mktemp("sc") / "CUB_200_2011", 10, 2, seed=3, progress=False,
                              shortcut_share=0.8)


SCRIPT_FLAGS = {  # each script's flags for a quick run on the untrained tiny model; {ckpt} {data} {sc}: filled in
    "train_vit_cub": ["--dataset-root", "{data}", *TINY_TRAIN_FLAGS, "--epochs", "1", "--checkpoint-dir", "{tmp}/ck"],
    "test_vit_forward": ["--checkpoint-path", "{ckpt}", "--dataset-root", "{data}", "--num-samples", "1",
                         "--num-workers", "0", "--device", "cpu"],
    "inspect_lrp_predictions": ["--device", "cpu"],
    "evaluate_lrp": ["--checkpoint-path", "{ckpt}", "--dataset-root", "{data}", "--num-images", "1", "--methods",
                     "random", "--reference", "", "--num-workers", "0", "--device", "cpu"],
    "sanity_checks": ["--checkpoint-path", "{ckpt}", "--dataset-root", "{data}", "--num-images", "1", "--methods",
                      "random", "--num-workers", "0", "--device", "cpu"],
    "sweep_gamma": ["--checkpoint-path", "{ckpt}", "--dataset-root", "{data}", "--num-images", "1", "--num-workers",
                    "0", "--device", "cpu"],
    "shortcut_pairs": ["--checkpoint-path", "{ckpt}", "--dataset-root", "{sc}", "--methods", "random", "--num-pairs",
                       "1", "--num-workers", "0", "--device", "cpu"],
    "benchmark": ["--device", "cpu", "--run", "input_x_gradient"],
}


@pytest.mark.parametrize("name", list(SCRIPT_FLAGS))
def test_every_script_refuses_a_folder_another_script_made(name, untrained_tiny, shortcut_cub_10, tmp_path):
    from conftest import error_lines, run_script_inprocess

    other = "sanity_checks.py" if name == "evaluate_lrp" else "evaluate_lrp.py"
    out = made_by(tmp_path / "theirs", other, ("summary.json", "lrp_results.json"))
    before = snapshot(out)
    fill = {"{ckpt}": str(untrained_tiny["checkpoint"]), "{data}": str(untrained_tiny["dataset_root"]),
            "{sc}": str(shortcut_cub_10), "{tmp}": str(tmp_path)}
    flags = [fill.get(f, f.replace("{tmp}", str(tmp_path))) for f in SCRIPT_FLAGS[name]]
    code, _, err = run_script_inprocess(name, *flags, "--output-dir", out)
    mine = "test_vit_forward.py" if name == "inspect_lrp_predictions" else f"{name}.py"  # inspect adds to its folder
    assert code == 2 and error_lines(err) == [
        f"error: OUTPUT_DIR {out} holds the outputs of {other}, not of {mine}: choose another OUTPUT_DIR (each script "
        "writes a folder of its own)"], err[-2000:]
    assert snapshot(out) == before

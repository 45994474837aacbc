"""scripts/train_vit_cub.py and vitlrp.training / vitlrp.models: what a user of the training script sees.

Accuracy on the mini-CUB, checkpoints that round-trip with ``weights_only=True``, bit-exact resume, offline
ImageNet weights, torchrun on the CPU, one-line errors for bad input, and a clean stop on a non-finite loss.
Everything runs on the CPU, seeded; the mechanics tests use ``vit_tiny`` at 32 px.
"""
import csv
import json
import os
import re
import subprocess
import sys
import time
import urllib.error

import pytest
import torch
from conftest import REPO_ROOT, error_lines, run_script_inprocess
from PIL import Image

import vitlrp.models as models
from vitlrp.cub import CUBDataset, load_cub
from vitlrp.errors import UserError
from vitlrp.models import build_vit, load_checkpoint, load_pretrained, model_from_checkpoint, weights_preprocessing
from vitlrp.preprocess import Preprocessing
from vitlrp.runfolder import LOCK, MANIFEST
from vitlrp.training import SUMMARY_FIELDS

# Tiny settings for the mechanics tests (about half a second per epoch on the mini-CUB).
TINY32 = ("--model", "vit_tiny", "--pretrained", "none", "--batch-size", "32", "--lr", "1e-3", "--warmup-epochs", "1",
          "--num-workers", "0", "--device", "cpu", "--image-size", "32")
# summary.csv columns that do not depend on timing
DETERMINISTIC = ("epoch", "lr", "train_loss", "test_loss", "top1", "top5")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train(dataset, out, *flags):
    """Run the training script in-process; writes out/ck and out/train. Returns (code, stdout, stderr)."""
    return run_script_inprocess("train_vit_cub", "--dataset-root", dataset, "--checkpoint-dir", out / "ck",
                                "--output-dir", out / "train", *flags)


def read_summary(out_dir):
    with open(out_dir / "summary.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def model_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def epoch_lines(stdout):
    return [line for line in stdout.splitlines() if re.match(r"epoch \d+/\d+ ", line)]


def stray_files(folder):
    """Temporary files an interrupted atomic write would leave behind."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] if folder.exists() else []


# --- 1. accuracy and what a run writes --------------------------------------------------------------------
def test_trained_tiny_reaches_90_percent_and_writes_its_outputs(trained_tiny):
    out = trained_tiny["output_dir"]
    fields, rows = read_summary(out)
    assert fields == SUMMARY_FIELDS
    assert [int(r["epoch"]) for r in rows] == list(range(1, 16))
    top1 = [float(r["top1"]) for r in rows]
    assert all(0 <= t <= 1 for t in top1) and all(0 <= float(r["top5"]) <= 1 for r in rows)
    assert all(float(r["top5"]) >= float(r["top1"]) for r in rows)
    assert max(top1) >= 0.90, f"best test top-1 {max(top1):.3f} on the mini-CUB"
    assert float(rows[-1]["lr"]) == 0  # the cosine schedule ends at zero

    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["MODEL"] == "vit_tiny" and config["EPOCHS"] == 15 and config["world_size"] == 1
    assert config["preprocessing"] == weights_preprocessing("none", 112).to_dict()
    png = out / "curves.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200

    lines = epoch_lines(trained_tiny["stdout"])
    assert [int(re.match(r"epoch (\d+)/15 ", line).group(1)) for line in lines] == list(range(1, 16))
    assert "Finished. Best test top-1" in trained_tiny["stdout"]

    # the best checkpoint is the first epoch with the best top-1; last is the final epoch
    best, last = (torch.load(trained_tiny[k], weights_only=True) for k in ("checkpoint", "last"))
    assert best["epoch"] == top1.index(max(top1)) + 1 and last["epoch"] == 15
    assert best["best_acc"] == pytest.approx(max(top1), abs=1e-5) == last["best_acc"]
    assert stray_files(trained_tiny["checkpoint"].parent) == [] and stray_files(out) == []


# --- 2. checkpoint round trip -----------------------------------------------------------------------------
PLAIN = (str, int, float, bool, type(None))


def assert_plain(obj, where="ckpt"):
    """Only tensors, str, int, float, bool, None and list/tuple/dict of those (str or int keys)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, int)), f"{where}: key {k!r} of type {type(k).__name__}"
            assert_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            assert_plain(v, f"{where}[{i}]")
    else:
        assert isinstance(obj, (torch.Tensor,) + PLAIN), f"{where} is a {type(obj).__name__}"


@pytest.mark.parametrize("which", ["checkpoint", "last"])
def test_checkpoint_loads_with_weights_only_and_holds_plain_types(trained_tiny, which):
    ckpt = torch.load(trained_tiny[which], map_location="cpu", weights_only=True)
    assert_plain(ckpt)
    assert ckpt["arch"] == "vit_tiny" and ckpt["image_size"] == 112 and ckpt["num_classes"] == 10
    assert ckpt["class_names"] == load_cub(trained_tiny["dataset_root"]).class_names
    assert set(ckpt["summary_row"]) == set(SUMMARY_FIELDS)
    assert "config" in ckpt
    # the last checkpoint carries the training state --resume needs; the best one only the model (half the size)
    for key in ("optimizer", "scheduler", "scaler"):
        assert (key in ckpt) == (which == "last")
    assert load_checkpoint(trained_tiny[which])["epoch"] == ckpt["epoch"]


def test_model_from_checkpoint_reproduces_the_trained_model(trained_tiny):
    ckpt = load_checkpoint(trained_tiny["checkpoint"])
    model, prep = model_from_checkpoint(ckpt)
    assert not model.training
    assert_same_weights(model.state_dict(), ckpt["model"])

    # same preprocessing as the training run: the checkpoint's dict, config.json's, and the weights' own
    config = json.loads((trained_tiny["output_dir"] / "config.json").read_text(encoding="utf-8"))
    assert prep == Preprocessing.from_dict(ckpt["preprocessing"])
    assert prep.to_dict() == ckpt["preprocessing"] == config["preprocessing"]
    assert prep == weights_preprocessing("none", 112)

    # identical outputs to a model built by hand from the same state, on a fixed input
    reference = build_vit("vit_tiny", 10, 112)
    reference.load_state_dict(ckpt["model"])
    reference.eval()
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))

    # the eval transform of an image is what the test split feeds the model, and the rebuilt model scores
    # exactly the top-1 that summary.csv recorded for the best epoch
    ann = load_cub(trained_tiny["dataset_root"])
    test_set = CUBDataset(ann, "test", prep)
    first = prep.eval_transform()(Image.open(test_set.image_path(0)).convert("RGB"))
    assert first.shape == (3, 112, 112) and torch.equal(first, test_set[0]["image"])
    hits = 0
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(test_set, batch_size=32):
            hits += (model(batch["image"]).argmax(1) == batch["label"]).sum().item()
    _, rows = read_summary(trained_tiny["output_dir"])
    assert f"{hits / len(test_set):.5f}" == rows[ckpt["epoch"] - 1]["top1"]


# --- 3. resume and loader workers -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_a(mini_cub, tmp_path_factory):
    """3 epochs of vit_tiny at 32 px, uninterrupted."""
    out = tmp_path_factory.mktemp("run_a")
    code, stdout, stderr = train(mini_cub, out, *TINY32, "--epochs", "3")
    assert code == 0, stderr[-2000:]
    return out


def deterministic(rows):
    return [{k: r[k] for k in DETERMINISTIC} for r in rows]


def test_resume_after_stop_is_bit_identical_to_an_uninterrupted_run(mini_cub, run_a, tmp_path):
    code, stdout, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "3", "--stop-after", "2")
    assert code == 0, stderr[-2000:]
    assert len(epoch_lines(stdout)) == 2 and "Stopped after epoch 2 (resume with --resume true)" in stdout
    assert [r["epoch"] for r in read_summary(tmp_path / "train")[1]] == ["1", "2"]

    code, stdout, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "3", "--resume", "true")
    assert code == 0, stderr[-2000:]
    assert "resuming after epoch 2" in stdout
    assert [line.split()[1] for line in epoch_lines(stdout)] == ["3/3"]

    fields, rows = read_summary(tmp_path / "train")
    assert fields == SUMMARY_FIELDS and [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert deterministic(rows) == deterministic(read_summary(run_a / "train")[1])
    for name in ("vit_cub_last.pt", "vit_cub_best.pt"):
        assert_same_weights(model_state(tmp_path / "ck" / name), model_state(run_a / "ck" / name))
    assert torch.load(tmp_path / "ck" / "vit_cub_last.pt", weights_only=True)["epoch"] == 3


def test_resume_restores_a_summary_row_lost_in_a_crash(mini_cub, run_a, tmp_path):
    code, _, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "3", "--stop-after", "2")
    assert code == 0, stderr[-2000:]
    summary = tmp_path / "train" / "summary.csv"
    lines = summary.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) == 3  # header + epochs 1, 2
    lost = dict(zip(SUMMARY_FIELDS, next(csv.reader([lines[-1]]))))
    summary.write_text("".join(lines[:-1]), encoding="utf-8")  # the crash came after the checkpoint

    code, _, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "3", "--resume", "true")
    assert code == 0, stderr[-2000:]
    _, rows = read_summary(tmp_path / "train")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[1] == lost  # restored from the checkpoint, timing columns included
    assert deterministic(rows) == deterministic(read_summary(run_a / "train")[1])
    assert_same_weights(model_state(tmp_path / "ck" / "vit_cub_last.pt"), model_state(run_a / "ck" / "vit_cub_last.pt"))


def test_resume_with_another_recipe_is_refused(mini_cub, run_a, tmp_path):
    import shutil

    shutil.copytree(run_a / "ck", tmp_path / "ck")
    before = (tmp_path / "ck" / "vit_cub_last.pt").read_bytes()
    code, stdout, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "5", "--resume", "true")
    assert code == 2 and stdout == ""
    (line,) = error_lines(stderr)
    assert "EPOCHS=5" in line and "EPOCHS=3" in line and "--checkpoint-dir" in line
    assert (tmp_path / "ck" / "vit_cub_last.pt").read_bytes() == before


def test_number_of_loader_workers_does_not_change_the_result(mini_cub, tmp_path):
    states = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        flags = [f for f in TINY32] + ["--epochs", "1"]
        flags[flags.index("--num-workers") + 1] = str(workers)
        code, _, stderr = train(mini_cub, out, *flags)
        assert code == 0, stderr[-2000:]
        states[workers] = model_state(out / "ck" / "vit_cub_last.pt")
    assert_same_weights(states[0], states[2])


# --- 4. offline pretrained weights ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit_b_16_file(tmp_path_factory):
    """A random ImageNet-shaped vit_b_16 state dict at $TORCH_HOME/hub/checkpoints/vit_b_16-c867db91.pth."""
    import torchvision

    torch_home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        path = models.weights_file("IMAGENET1K_V1")
    assert path == torch_home / "hub" / "checkpoints" / "vit_b_16-c867db91.pth"
    torch.manual_seed(123)
    state = torchvision.models.vit_b_16().state_dict()
    for value in state.values():  # torchvision zero-initialises some tensors; make them all distinctive
        value.add_(torch.randn_like(value) * 0.01)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return torch_home, path, state


@pytest.fixture
def no_network(monkeypatch):
    """Every way torchvision could download weights raises URLError; returns the list of attempted URLs."""
    import torch.hub
    import torchvision.models._api as tv_api

    attempts = []

    def refuse(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse)
    return attempts


def assert_encoder_loaded(model, state, skip=()):
    ours = model.state_dict()
    for key, value in state.items():
        if key.startswith("heads.") or key in skip:
            continue
        assert torch.equal(ours[key], value), key


def test_imagenet_weights_load_from_torch_home_without_network(vit_b_16_file, no_network, monkeypatch):
    torch_home, path, state = vit_b_16_file
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    torch.manual_seed(0)
    model = build_vit("vit_b_16", 200)
    head = {k: v.clone() for k, v in model.heads.state_dict().items()}
    assert load_pretrained(model, "IMAGENET1K_V1") is model
    assert no_network == []
    assert_encoder_loaded(model, state)
    assert model.heads.head.weight.shape == (200, 768)
    for key, value in model.heads.state_dict().items():  # the fresh 200-way head, not ImageNet's
        assert torch.equal(value, head[key]), key

    # another input size: the position embeddings are interpolated (class token's kept), the rest is loaded
    model = build_vit("vit_b_16", 200, 384)
    load_pretrained(model, "IMAGENET1K_V1")
    pos = model.encoder.pos_embedding
    assert pos.shape == (1, 1 + 24 * 24, 768) and state["encoder.pos_embedding"].shape == (1, 1 + 14 * 14, 768)
    assert torch.equal(pos[:, :1], state["encoder.pos_embedding"][:, :1])
    assert_encoder_loaded(model, state, skip={"encoder.pos_embedding"})


def test_pretrained_accepts_a_local_state_dict_file(vit_b_16_file, no_network):
    _, path, state = vit_b_16_file
    model = load_pretrained(build_vit("vit_b_16", 200), str(path))
    assert no_network == []
    assert_encoder_loaded(model, state)
    # a file for another architecture is a one-line error, not a load_state_dict traceback
    with pytest.raises(UserError) as info:
        load_pretrained(build_vit("vit_tiny", 200), str(path))
    message = str(info.value)
    assert "do not fit" in message and "768)" in message and "128)" in message and "\n" not in message


def test_missing_imagenet_weights_without_network_is_one_line_naming_the_file(tmp_path, no_network, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    expected = tmp_path / "empty_home" / "hub" / "checkpoints" / "vit_b_16-c867db91.pth"
    assert models.weights_file("IMAGENET1K_V1") == expected
    with pytest.raises(UserError) as info:
        models.pretrained_state_dict("IMAGENET1K_V1")
    message = str(info.value)
    assert "\n" not in message and str(expected) in message and "TORCH_HOME" in message, message
    assert no_network  # it did try the download before giving up
    with pytest.raises(UserError) as info:
        models.pretrained_state_dict(str(tmp_path / "nope.pth"))
    assert "nope.pth" in str(info.value)


def test_a_folder_as_pretrained_file_is_named_a_folder(tmp_path):
    with pytest.raises(UserError) as info:
        models.pretrained_state_dict(str(tmp_path))
    assert str(info.value) == f"weights file {tmp_path} is a folder, not a file: pass the file itself"


def test_script_without_weights_or_network_stops_with_one_error(cub_fixture, tmp_path, no_network, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    code, stdout, stderr = train(cub_fixture(), tmp_path, "--model", "vit_b_16", "--pretrained", "IMAGENET1K_V1",
                                 "--image-size", "32", "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
                                 "--device", "cpu")
    errors = error_lines(stderr)
    assert code == 2 and len(errors) == 1, stderr[-2000:]
    assert "vit_b_16-c867db91.pth" in errors[0] and "TORCH_HOME" in errors[0]
    assert not list((tmp_path / "ck").glob("*.pt")) and "epoch 1/1" not in stdout


# --- 5. torchrun on the CPU -------------------------------------------------------------------------------
def test_torchrun_two_cpu_processes(mini_cub, run_a, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(REPO_ROOT / "scripts" / "train_vit_cub.py"), "--dataset-root", str(mini_cub), *TINY32,
           "--epochs", "2", "--checkpoint-dir", str(out / "ck"), "--output-dir", str(out / "train")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # logs once, from rank 0
    assert proc.stdout.count("Using device: cpu x2 processes") == 1, proc.stdout
    assert [line.split()[1] for line in epoch_lines(proc.stdout)] == ["1/2", "2/2"], proc.stdout
    assert proc.stdout.count("Finished.") == 1
    # rank 0 alone writes: one summary with one row per epoch, both checkpoints, nothing else
    assert sorted(p.name for p in (out / "ck").iterdir()) == [LOCK, "vit_cub_best.pt", "vit_cub_last.pt"]
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted([LOCK, MANIFEST, "config.json", "curves.png",
                                                                         "summary.csv"])
    fields, rows = read_summary(out / "train")
    assert fields == SUMMARY_FIELDS and [r["epoch"] for r in rows] == ["1", "2"]
    assert json.loads((out / "train" / "config.json").read_text(encoding="utf-8"))["world_size"] == 2
    assert load_checkpoint(out / "ck" / "vit_cub_last.pt")["epoch"] == 2

    # BATCH_SIZE is the global batch: epoch 1 (same warmup) matches the single-process run up to float noise
    single = read_summary(run_a / "train")[1][0]
    assert float(rows[0]["train_loss"]) == pytest.approx(float(single["train_loss"]), abs=2e-3)
    assert float(rows[0]["top1"]) == pytest.approx(float(single["top1"]), abs=0.011)


# --- 6. bad input: exit code 2, one error line, before any work -------------------------------------------
@pytest.fixture(scope="module")
def script_flags():
    code, stdout, _ = run_script_inprocess("train_vit_cub", "--help")
    assert code == 0
    flags = set(re.findall(r"^\s+(--[a-z0-9-]+) ", stdout, flags=re.M))
    assert {"--epochs", "--resume", "--checkpoint-dir", "--pretrained"} <= flags
    return flags


def _afile(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    return tmp_path / "afile" / "ckpts"


BAD_INPUTS = {
    # name: (extra flags (callables get tmp_path), substrings of the message)
    "dataset_missing": (["--dataset-root", lambda t: t / "no_such" / "CUB_200_2011"],
                        [lambda t: str(t / "no_such" / "CUB_200_2011"), "scripts/download_cub.py"]),
    "epochs_0": (["--epochs", "0"], ["EPOCHS", "0"]),
    "batch_size_negative": (["--batch-size", "-1"], ["BATCH_SIZE", "-1"]),
    "lr_0": (["--lr", "0"], ["LR"]),
    "cuda_unavailable": (["--device", "cuda"], ["CUDA", "--device cpu"]),
    "checkpoint_dir_unwritable": (["--checkpoint-dir", _afile], ["CHECKPOINT_DIR", lambda t: str(t / "afile")]),
    "tiny_with_imagenet_weights": (["--pretrained", "IMAGENET1K_V1"], ["vit_tiny", "--pretrained none"]),
    "resume_without_checkpoint": (["--resume", "true"], [lambda t: str(t / "ck" / "vit_cub_last.pt"), "--resume"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_before_any_work(case, mini_cub, tmp_path, script_flags):
    if case == "cuda_unavailable" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    extra, needles = BAD_INPUTS[case]
    extra = [str(f(tmp_path)) if callable(f) else f for f in extra]
    flags = ["--dataset-root", mini_cub, "--checkpoint-dir", tmp_path / "ck", "--output-dir", tmp_path / "train",
             *TINY32, "--epochs", "2"]
    for i in range(0, len(extra), 2):  # a later flag overrides; keep the list readable by replacing in place
        if extra[i] in flags:
            flags[flags.index(extra[i]) + 1] = extra[i + 1]
        else:
            flags += extra[i:i + 2]
    start = time.perf_counter()
    code, stdout, stderr = run_script_inprocess("train_vit_cub", *flags)
    elapsed = time.perf_counter() - start

    errors = error_lines(stderr)
    assert code == 2 and len(errors) == 1, (code, stderr[-2000:])
    message = errors[0]
    for needle in needles:
        needle = needle(tmp_path) if callable(needle) else needle
        assert needle in message, (needle, message)
    # every flag the message suggests exists
    assert set(re.findall(r"(?<![\w/.-])--[a-z][a-z0-9-]*", message.replace(str(tmp_path), ""))) <= script_flags
    # before any work: nothing printed, no checkpoint, no summary, fast
    assert stdout == "" and "epoch 1/2" not in stderr
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("summary.csv"))
    assert elapsed < 15, f"took {elapsed:.1f}s to fail"


# --- 7. non-finite loss -----------------------------------------------------------------------------------
def test_exploding_learning_rate_stops_with_a_loss_error_and_no_checkpoint(mini_cub, tmp_path):
    flags = [f for f in TINY32] + ["--epochs", "2"]
    flags[flags.index("--lr") + 1] = "1e30"
    code, stdout, stderr = train(mini_cub, tmp_path, *flags)
    errors = error_lines(stderr)
    assert code == 2 and len(errors) == 1, stderr[-2000:]
    assert "loss" in errors[0] and "epoch 1" in errors[0] and re.search(r"\b(nan|inf)\b", errors[0]), errors[0]
    assert not list((tmp_path / "ck").glob("*.pt")) and not (tmp_path / "train" / "summary.csv").exists()
    assert epoch_lines(stdout) == []


class NaNLoss(torch.nn.CrossEntropyLoss):
    def forward(self, input, target):
        return super().forward(input, target) * float("nan")


def test_nan_loss_after_resume_keeps_the_last_good_checkpoint(mini_cub, tmp_path, monkeypatch):
    code, _, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "3", "--stop-after", "1")
    assert code == 0, stderr[-2000:]
    ck = tmp_path / "ck"
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    assert sorted(before) == [LOCK, "vit_cub_best.pt", "vit_cub_last.pt"]  # the lock stays, released (empty)
    summary_before = (tmp_path / "train" / "summary.csv").read_text(encoding="utf-8")

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", NaNLoss)  # the script builds its criterion from torch.nn
    code, stdout, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "3", "--resume", "true")
    errors = error_lines(stderr)
    assert code == 2 and len(errors) == 1, stderr[-2000:]
    assert "loss became nan" in errors[0] and "epoch 2" in errors[0] and str(ck / "vit_cub_last.pt") in errors[0]
    assert "resuming after epoch 1" in stdout and epoch_lines(stdout) == []
    # nothing written for the NaN epoch: checkpoints byte-identical, summary still ends at epoch 1
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before
    assert (tmp_path / "train" / "summary.csv").read_text(encoding="utf-8") == summary_before
    assert load_checkpoint(ck / "vit_cub_last.pt")["epoch"] == 1

"""scripts/train_vit_cub.py and vitlrp.training / vitlrp.models: what a user of the training script sees.

Accuracy on the mini-CUB, checkpoints that round-trip with ``weights_only=True``, bit-exact resume, the validation
split that picks the best epoch, the table of torchvision ViTs and their offline ImageNet weights, torchrun on the CPU,
one-line errors for bad input, and a clean stop on a non-finite loss. Everything runs on the CPU, seeded; the
mechanics tests use ``vit_tiny`` at 32 px; the large ViTs are only built on the ``meta`` device (shapes, no memory).
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, error_lines, run_script_inprocess
from PIL import Image

import vitlrp.models as models
from vitlrp import cli
from vitlrp.cub import CUBDataset, load_cub
from vitlrp.errors import UserError
from vitlrp.models import (
    ARCHS,
    build_vit,
    check_pretrained,
    load_pretrained,
    model_from_checkpoint,
    read_checkpoint,
    weights_preprocessing,
)
from vitlrp.preprocess import Preprocessing
from vitlrp.runfolder import LOCK, MANIFEST
from vitlrp.training import SUMMARY_FIELDS

# Tiny settings for the mechanics tests (about half a second per epoch on the mini-CUB).
TINY32 = ("--model", "vit_tiny", "--pretrained", "none", "--batch-size", "32", "--lr", "1e-3", "--warmup-epochs", "1",
          "--num-workers", "0", "--device", "cpu", "--image-size", "32")
# summary.csv columns that do not depend on timing
DETERMINISTIC = ("epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5", "test_loss", "top1", "top5")
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
    assert config["preprocessing"] == weights_preprocessing("vit_tiny", "none", 112).to_dict()
    assert config["VAL_FRACTION"] == 0 and config["val_images"] == 0
    png = out / "curves.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200

    lines = epoch_lines(trained_tiny["stdout"])
    assert [int(re.match(r"epoch (\d+)/15 ", line).group(1)) for line in lines] == list(range(1, 16))
    # VAL_FRACTION 0: every training image is trained on, and the run says the best epoch is picked on the test split
    assert "Dataset: 200 train / 0 validation / 200 test images" in trained_tiny["stdout"]
    assert all(r[k] == "" for r in rows for k in ("val_loss", "val_top1", "val_top5"))
    assert "note: VAL_FRACTION is 0: the best epoch is picked on the test split" in trained_tiny["stderr"]
    best_epoch = top1.index(max(top1)) + 1
    assert (f"Finished. Best test top-1 {max(top1):.2%} at epoch {best_epoch} (picked on the test split)"
            in trained_tiny["stdout"])

    # the best checkpoint is the first epoch with the best top-1; last is the final epoch
    best, last = (torch.load(trained_tiny[k], weights_only=True) for k in ("checkpoint", "last"))
    assert best["epoch"] == best_epoch and last["epoch"] == 15
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
    assert "config" in ckpt and ckpt["val_split"] == {"fraction": 0.0, "seed": 0, "image_ids": []}
    # the last checkpoint carries the training state --resume needs; the best one only the model (half the size)
    for key in ("optimizer", "scheduler", "scaler"):
        assert (key in ckpt) == (which == "last")
    assert read_checkpoint(trained_tiny[which])["epoch"] == ckpt["epoch"]


def test_model_from_checkpoint_reproduces_the_trained_model(trained_tiny):
    ckpt = read_checkpoint(trained_tiny["checkpoint"])
    model, prep = model_from_checkpoint(ckpt)
    assert not model.training
    assert_same_weights(model.state_dict(), ckpt["model"])

    # same preprocessing as the training run: the checkpoint's dict, config.json's, and the weights' own
    config = json.loads((trained_tiny["output_dir"] / "config.json").read_text(encoding="utf-8"))
    assert prep == Preprocessing.from_dict(ckpt["preprocessing"])
    assert prep.to_dict() == ckpt["preprocessing"] == config["preprocessing"]
    assert prep == weights_preprocessing("vit_tiny", "none", 112)

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
    last = torch.load(tmp_path / "ck" / "vit_cub_last.pt", weights_only=True)
    assert last["epoch"] == 3
    # the resumed run held out the very images the first part held out (and the uninterrupted run)
    assert last["val_split"] == torch.load(run_a / "ck" / "vit_cub_last.pt", weights_only=True)["val_split"]
    assert len(last["val_split"]["image_ids"]) == 20


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


# --- 3b. the validation split that picks the best epoch ----------------------------------------------------
def test_validation_split_is_stratified_seeded_and_within_the_training_images(mini_cub):
    from vitlrp.holdout import held_out_positions, make_split

    ann = load_cub(mini_cub)
    train_rows = ann.split_indices("train")
    split = make_split(ann, 0.1, seed=0)
    val_rows = train_rows[split.val]
    # stratified: 2 of each class's 20 training images; disjoint from the images trained on, together all of them
    assert sorted(np.bincount(ann.labels[val_rows], minlength=10).tolist()) == [2] * 10
    assert not set(split.val) & set(split.train) and sorted([*split.val, *split.train]) == list(range(200))
    assert split.record == {"fraction": 0.1, "seed": 0, "image_ids": sorted(ann.image_ids[val_rows].tolist())}
    # seeded: the same seed holds out the same images, another seed others
    assert make_split(ann, 0.1, seed=0).record == split.record
    assert make_split(ann, 0.1, seed=1).record["image_ids"] != split.record["image_ids"]
    assert make_split(ann, 0.0, seed=0).val.tolist() == [] and split.picks_on == "val"

    # per class round(fraction x n) rounded half up, at least 1 from 2 images on, never the class's last image
    labels = [0] * 1 + [1] * 2 + [2] * 5 + [3] * 15 + [4] * 25
    counts = lambda f: np.bincount(np.asarray(labels)[held_out_positions(labels, f, 0)], minlength=5).tolist()  # noqa: E731
    assert counts(0.1) == [0, 1, 1, 2, 3]  # 0.5 -> 1, 1.5 -> 2, 2.5 -> 3
    assert counts(0.9) == [0, 1, 4, 14, 23]


def _rows_read(monkeypatch):
    """Record which rows of images.txt the datasets read: ``{'augmented': set, 'scored_train': set}``."""
    from torchvision import transforms as T

    from vitlrp.cub import CUBDataset as Dataset

    read, get = {"augmented": set(), "scored_train": set()}, Dataset.__getitem__

    def logged(self, index):
        if isinstance(self.transform.transforms[0], T.RandomResizedCrop):
            read["augmented"].add(int(self.rows[index]))
        elif self.split == "train":
            read["scored_train"].add(int(self.rows[index]))
        return get(self, index)

    monkeypatch.setattr(Dataset, "__getitem__", logged)
    return read


def test_held_out_images_are_never_trained_on_and_pick_the_best_epoch(mini_cub, tmp_path, monkeypatch):
    read = _rows_read(monkeypatch)
    code, stdout, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "2")
    assert code == 0, stderr[-2000:]
    ann = load_cub(mini_cub)
    last = read_checkpoint(tmp_path / "ck" / "vit_cub_last.pt")
    held_out = {int(r) for r in np.flatnonzero(np.isin(ann.image_ids, last["val_split"]["image_ids"]))}
    assert len(held_out) == 20 and all(ann.is_train[r] for r in held_out)
    assert read["augmented"] == set(ann.split_indices("train").tolist()) - held_out  # trained on: all the others
    assert read["scored_train"] == held_out  # scored after each epoch as the validation split
    assert "Dataset: 180 train / 20 validation / 200 test images" in stdout and "VAL_FRACTION is 0" not in stderr

    _, rows = read_summary(tmp_path / "train")
    val = [float(r["val_top1"]) for r in rows]
    assert all(0 <= v <= 1 and abs(v * 20 - round(v * 20)) < 1e-6 for v in val)  # hits among 20 images
    best = read_checkpoint(tmp_path / "ck" / "vit_cub_best.pt")
    assert best["epoch"] == val.index(max(val)) + 1 and best["best_acc"] == pytest.approx(max(val), abs=1e-5)
    assert best["val_split"] == last["val_split"]
    lines = epoch_lines(stdout)
    assert all(f"val top-1 {v:.2%}" in line for v, line in zip(val, lines))
    chosen = rows[best["epoch"] - 1]
    assert (f"Finished. Best val top-1 {max(val):.2%} at epoch {best['epoch']} (picked on the validation split), "
            f"its test top-1 {float(chosen['top1']):.2%}") in stdout


def test_resume_with_another_val_fraction_or_from_an_older_checkpoint_is_refused(mini_cub, run_a, tmp_path):
    shutil.copytree(run_a / "ck", tmp_path / "ck")
    code, stdout, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "3", "--resume", "true",
                                 "--val-fraction", "0.2")
    (line,) = error_lines(stderr)
    assert code == 2 and "VAL_FRACTION=0.2" in line and "VAL_FRACTION=0.1" in line and stdout == ""

    # a checkpoint from before the split existed picked its best epoch on the test split: VAL_FRACTION 0 goes on
    last = torch.load(tmp_path / "ck" / "vit_cub_last.pt", weights_only=True)
    del last["val_split"], last["config"]["VAL_FRACTION"]
    torch.save(last, tmp_path / "ck" / "vit_cub_last.pt")
    code, _, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "3", "--resume", "true")
    (line,) = error_lines(stderr)
    assert code == 2 and "VAL_FRACTION=0.1" in line and "VAL_FRACTION=0.0" in line


def test_gallery_says_the_best_epoch_was_picked_on_val(run_a, trained_tiny, tmp_path):
    from vitlrp.gallery import write_results_gallery

    _, rows = read_summary(run_a / "train")
    best = max(rows, key=lambda r: float(r["val_top1"]))
    for name, source in (("val", run_a / "train"), ("test", trained_tiny["output_dir"])):
        root = tmp_path / name
        shutil.copytree(source, root / "train")
        write_results_gallery(root)
        page = (root / "index.html").read_text(encoding="utf-8")
        if name == "val":
            assert (f"best on val: epoch {best['epoch']} (val top-1 {float(best['val_top1']):.1%}), test top-1 "
                    f"{float(best['top1']):.1%}") in page
        else:
            assert "best on test (no validation split was held out)" in page and "best on val" not in page


# --- 4. the table of models and their offline ImageNet weights --------------------------------------------
TORCHVISION_VITS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")


def test_every_torchvision_vit_is_in_the_table_with_its_own_weights():
    """Built on the meta device (shapes only): the patch embedding, the parameter count torchvision states for each
    weights, their files, input sizes and preprocessing."""
    import torchvision
    from torchvision.models import get_model_weights

    from vitlrp.gammarule import gamma_rules

    assert set(ARCHS) == {*TORCHVISION_VITS, "vit_tiny"}
    for arch, spec in ARCHS.items():
        with torch.device("meta"):
            model = build_vit(arch, 200)
        conv, size, grid = model.conv_proj, spec.image_size, spec.image_size // spec.patch_size
        assert conv.kernel_size == conv.stride == (spec.patch_size,) * 2 == (model.patch_size,) * 2, arch
        with gamma_rules({conv: 1.0}):  # the fused Gamma rule takes the patch embedding and keeps its patch grid
            assert conv(torch.empty(1, 3, size, size, device="meta")).shape == (1, model.hidden_dim, grid, grid)
        assert model.image_size == spec.image_size and model.heads.head.out_features == 200
        if arch == "vit_tiny":
            assert models.weights_names(arch) == []
            continue
        enum = get_model_weights(arch)
        assert models.weights_names(arch) == [w.name for w in enum]
        assert spec.builder is getattr(torchvision.models, arch)
        for weights in enum:
            size = weights.meta["min_size"][0]
            assert models.default_image_size(arch, weights.name) == size
            with torch.device("meta"):
                imagenet = build_vit(arch, 1000, size)
            assert sum(p.numel() for p in imagenet.parameters()) == weights.meta["num_params"], (arch, weights.name)
            assert models.weights_file(arch, weights.name).name == weights.url.rsplit("/", 1)[1]
            t = weights.transforms()
            prep = weights_preprocessing(arch, weights.name, size)
            assert (prep.crop_size, prep.resize_size) == (t.crop_size[0], t.resize_size[0]), (arch, weights.name)
            assert (prep.interpolation, prep.mean, prep.std) == (t.interpolation.value, tuple(t.mean), tuple(t.std))
    # torchvision's documented sizes: SWAG_E2E at 384 (B/16), 512 (L/16), 518 (H/14); L/16's V1 resizes to 242
    assert models.default_image_size("vit_b_16", "IMAGENET1K_SWAG_E2E_V1") == 384
    assert models.default_image_size("vit_l_16", "IMAGENET1K_SWAG_E2E_V1") == 512
    assert models.default_image_size("vit_h_14", "IMAGENET1K_SWAG_E2E_V1") == 518
    assert weights_preprocessing("vit_l_16", "IMAGENET1K_V1", 224).resize_size == 242
    assert weights_preprocessing("vit_h_14", "IMAGENET1K_SWAG_E2E_V1", 518).interpolation == "bicubic"
    assert models.check_image_size("vit_h_14", 518) == 518
    with pytest.raises(UserError, match="image_size 240 must be a multiple of vit_b_32's patch size 32"):
        build_vit("vit_b_32", 10, 224 + 16)


def test_pretrained_names_are_checked_against_the_chosen_model(tmp_path):
    for arch in TORCHVISION_VITS:
        for name in models.weights_names(arch):
            assert check_pretrained(arch, name) == name
    assert check_pretrained("vit_h_14", "none") == "none"
    (tmp_path / "w.pth").write_bytes(b"")
    assert check_pretrained("vit_tiny", str(tmp_path / "w.pth")) == str(tmp_path / "w.pth")  # read later

    cases = {  # (arch, name): what the one line says
        ("vit_h_14", "IMAGENET1K_V1"): "vit_h_14 has no weights IMAGENET1K_V1 (they belong to vit_b_16, vit_b_32, "
                                       "vit_l_16, vit_l_32): choose one of vit_h_14's IMAGENET1K_SWAG_E2E_V1, "
                                       "IMAGENET1K_SWAG_LINEAR_V1, none or a weights file",
        ("vit_b_32", "IMAGENET1K_SWAG_E2E_V1"): "vit_b_32 has no weights IMAGENET1K_SWAG_E2E_V1 (they belong to "
                                                "vit_b_16, vit_l_16, vit_h_14): choose one of vit_b_32's "
                                                "IMAGENET1K_V1, none or a weights file",
        ("vit_tiny", "IMAGENET1K_V1"): "vit_tiny has no ImageNet weights (IMAGENET1K_V1 belong to vit_b_16, "
                                       "vit_b_32, vit_l_16, vit_l_32): choose none or a weights file",
        ("vit_l_32", "imagenet"): "pretrained 'imagenet' is neither a weights name of vit_l_32 nor an existing file: "
                                  "choose one of vit_l_32's IMAGENET1K_V1, none or a weights file",
    }
    for (arch, name), message in cases.items():
        with pytest.raises(UserError) as info:
            check_pretrained(arch, name)
        assert str(info.value) == message


@pytest.fixture(scope="module")
def vit_b_32_file(tmp_path_factory):
    """A random ImageNet-shaped vit_b_32 state dict at $TORCH_HOME/hub/checkpoints/vit_b_32-d86f8d99.pth (ViT-B/32:
    the cheapest real ViT to run, 49 patches at 224 px)."""
    torch_home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        path = models.weights_file("vit_b_32", "IMAGENET1K_V1")
    assert path == torch_home / "hub" / "checkpoints" / "vit_b_32-d86f8d99.pth"
    torch.manual_seed(123)
    state = build_vit("vit_b_32", 1000).state_dict()
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


def test_imagenet_weights_load_from_torch_home_without_network(vit_b_32_file, no_network, monkeypatch):
    torch_home, path, state = vit_b_32_file
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    torch.manual_seed(0)
    model = build_vit("vit_b_32", 200)
    head = {k: v.clone() for k, v in model.heads.state_dict().items()}
    assert load_pretrained(model, "vit_b_32", "IMAGENET1K_V1") is model
    assert no_network == []
    assert_encoder_loaded(model, state)
    assert model.heads.head.weight.shape == (200, 768) and model.conv_proj.weight.shape == (768, 3, 32, 32)
    for key, value in model.heads.state_dict().items():  # the fresh 200-way head, not ImageNet's
        assert torch.equal(value, head[key]), key

    # another input size: the position embeddings are interpolated (class token's kept), the rest is loaded
    model = build_vit("vit_b_32", 200, 384)
    load_pretrained(model, "vit_b_32", "IMAGENET1K_V1")
    pos = model.encoder.pos_embedding
    assert pos.shape == (1, 1 + 12 * 12, 768) and state["encoder.pos_embedding"].shape == (1, 1 + 7 * 7, 768)
    assert torch.equal(pos[:, :1], state["encoder.pos_embedding"][:, :1])
    assert_encoder_loaded(model, state, skip={"encoder.pos_embedding"})


def test_pretrained_accepts_a_local_state_dict_file(vit_b_32_file, no_network):
    _, path, state = vit_b_32_file
    model = load_pretrained(build_vit("vit_b_32", 200), "vit_b_32", str(path))
    assert no_network == []
    assert_encoder_loaded(model, state)
    # a file for another architecture is a one-line error, not a load_state_dict traceback
    with pytest.raises(UserError) as info:
        load_pretrained(build_vit("vit_tiny", 200), "vit_tiny", str(path))
    message = str(info.value)
    assert "do not fit" in message and "768)" in message and "128)" in message and "\n" not in message
    # the same width with another patch size (ViT-B/32's file for ViT-B/16) is refused too
    with torch.device("meta"):
        b16 = build_vit("vit_b_16", 200)
    with pytest.raises(UserError, match=r"conv_proj.weight has shape \(768, 3, 32, 32\), the model expects "
                                        r"\(768, 3, 16, 16\)"):
        load_pretrained(b16, "vit_b_16", str(path))


def test_missing_imagenet_weights_without_network_is_one_line_naming_the_file(tmp_path, no_network, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    expected = tmp_path / "empty_home" / "hub" / "checkpoints" / "vit_h_14_swag-80465313.pth"
    assert models.weights_file("vit_h_14", "IMAGENET1K_SWAG_E2E_V1") == expected
    with pytest.raises(UserError) as info:
        models.pretrained_state_dict("vit_h_14", "IMAGENET1K_SWAG_E2E_V1")
    message = str(info.value)
    assert "\n" not in message and str(expected) in message and "TORCH_HOME" in message, message
    assert no_network  # it did try the download before giving up
    with pytest.raises(UserError) as info:
        models.pretrained_state_dict("vit_b_16", str(tmp_path / "nope.pth"))
    assert "nope.pth" in str(info.value)


def test_a_folder_as_pretrained_file_is_named_a_folder(tmp_path):
    with pytest.raises(UserError) as info:
        models.pretrained_state_dict("vit_b_16", str(tmp_path))
    assert str(info.value) == f"weights file {tmp_path} is a folder, not a file: pass the file itself"


def test_script_without_weights_or_network_stops_with_one_error(cub_fixture, tmp_path, no_network, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    code, stdout, stderr = train(cub_fixture(), tmp_path, "--model", "vit_b_16", "--pretrained", "IMAGENET1K_V1",
                                 "--image-size", "32", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "2",
                                 "--num-workers", "0", "--device", "cpu", "--val-fraction", "0")
    errors = error_lines(stderr)
    assert code == 2 and len(errors) == 1, stderr[-2000:]
    assert "vit_b_16-c867db91.pth" in errors[0] and "TORCH_HOME" in errors[0]
    assert not (tmp_path / "ck").exists() and "epoch 1/1" not in stdout  # refused before any folder is made


# --- 5. torchrun on the CPU -------------------------------------------------------------------------------
@pytest.mark.slow
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
    assert read_checkpoint(out / "ck" / "vit_cub_last.pt")["epoch"] == 2

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


def test_help_lists_the_models_and_their_weights():
    code, stdout, _ = run_script_inprocess("train_vit_cub", "--help")
    assert code == 0
    line = {flag: next(ln for ln in stdout.splitlines() if ln.strip().startswith(flag + " "))
            for flag in ("--model", "--pretrained", "--val-fraction")}
    assert all(arch in line["--model"] for arch in ARCHS), line["--model"]
    names = {name for arch in ARCHS for name in models.weights_names(arch)}
    assert names == {"IMAGENET1K_V1", "IMAGENET1K_SWAG_E2E_V1", "IMAGENET1K_SWAG_LINEAR_V1"}
    assert all(name in line["--pretrained"] for name in names) and "none" in line["--pretrained"]
    assert "default: 0.1" in line["--val-fraction"] and "test split" in line["--val-fraction"]
    # which model has which weights: the docstring above the flags
    text = " ".join(stdout.split())
    for archs in (("vit_b_16", "vit_l_16"), ("vit_b_32", "vit_l_32"), ("vit_h_14",)):
        assert f"{' and '.join(archs)}: {', '.join(models.weights_names(archs[0]))};" in text, archs


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
    "tiny_with_imagenet_weights": (["--pretrained", "IMAGENET1K_V1"], ["vit_tiny has no ImageNet weights", "none"]),
    "h14_with_v1_weights": (["--model", "vit_h_14", "--image-size", "224", "--pretrained", "IMAGENET1K_V1"],
                            ["vit_h_14 has no weights IMAGENET1K_V1",
                             "IMAGENET1K_SWAG_E2E_V1, IMAGENET1K_SWAG_LINEAR_V1"]),
    "b32_with_swag_weights": (["--model", "vit_b_32", "--image-size", "224", "--pretrained", "IMAGENET1K_SWAG_E2E_V1"],
                              ["vit_b_32's IMAGENET1K_V1, none or a weights file"]),
    "pretrained_file_missing": (["--pretrained", lambda t: t / "no_such.pth"], ["no_such.pth", "is no existing file"]),
    "same_folders": (["--output-dir", lambda t: t / "ck"], ["--checkpoint-dir and --output-dir are the same folder"]),
    "batch_larger_than_the_training_images": (["--batch-size", "500"], ["BATCH_SIZE 500", "180 training images",
                                                                        "20 held out", "--batch-size 180"]),
    "warmup_longer_than_the_run": (["--warmup-epochs", "3"], ["WARMUP_EPOCHS 3", "EPOCHS 2", "--warmup-epochs 2"]),
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
    code, stdout, stderr = run_script_inprocess("train_vit_cub", *flags)

    errors = error_lines(stderr)
    assert code == 2 and len(errors) == 1, (code, stderr[-2000:])
    message = errors[0]
    for needle in needles:
        needle = needle(tmp_path) if callable(needle) else needle
        assert needle in message, (needle, message)
    # every flag the message suggests exists
    assert set(re.findall(r"(?<![\w/.-])--[a-z][a-z0-9-]*", message.replace(str(tmp_path), ""))) <= script_flags
    # before any work: nothing printed, no checkpoint, no summary
    assert stdout == "" and "epoch 1/2" not in stderr
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("summary.csv"))


# --- 7. non-finite loss -----------------------------------------------------------------------------------
def test_exploding_learning_rate_stops_with_a_loss_error_and_no_checkpoint(mini_cub, tmp_path):
    flags = [f for f in TINY32] + ["--epochs", "2", "--weight-decay", "0"]  # else LR x WEIGHT_DECAY is refused
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
    assert read_checkpoint(ck / "vit_cub_last.pt")["epoch"] == 1


# --- 8. the device ------------------------------------------------------------------------------------------
def test_a_cuda_device_this_machine_lacks_is_one_line(monkeypatch):
    from vitlrp.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cuda") == torch.device("cuda")
    message = r"^device=cuda:2 but this machine has 2 CUDA devices: cuda:0 to cuda:1$"
    with pytest.raises(UserError, match=message) as info:
        resolve_device("cuda:2")
    assert cli.message(info.value, {"DEVICE"}) == "DEVICE=cuda:2 but this machine has 2 CUDA devices: cuda:0 to cuda:1"
    with pytest.raises(UserError, match=r"^unknown device 'cuda:x': use auto, cuda, cuda:N or cpu$"):
        resolve_device("cuda:x")

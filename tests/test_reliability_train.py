"""Reliability of training, checkpoints and flags: nothing lost, nothing misleading.

Each test reproduces one bad case a user can meet: a diverging run, a second run into the same checkpoint folder,
an unreadable JPEG, a damaged or foreign checkpoint file, odd flag values, a full disk, a flag that is not a
setting. Tiny settings: vit_tiny at 32 px, one or two epochs on the hand-written CUB or the mini-CUB.
"""
import errno
import json
import math
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, error_lines, run_script_inprocess
from test_training import TINY32, epoch_lines, read_summary, stray_files, train

import vitlrp.models
from vitlrp import cli, fileio
from vitlrp.cub import CUBDataset, load_cub
from vitlrp.errors import UserError
from vitlrp.gallery import incomplete_runs
from vitlrp.holdout import make_split
from vitlrp.models import FORMAT, build_vit, model_from_checkpoint, pretrained_state_dict, read_checkpoint
from vitlrp.preprocess import Preprocessing
from vitlrp.runfolder import HOLDER, LOCK, MARKER, FolderLock
from vitlrp.training import Optimization, evaluate, train_one_epoch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def one_epoch(mini_cub, tmp_path_factory):
    """One epoch of vit_tiny at 32 px on the mini-CUB (EPOCHS=3, stopped after 1); its out folder (ck/, train/)."""
    out = tmp_path_factory.mktemp("one_epoch")
    code, _, stderr = train(mini_cub, out, *TINY32, "--epochs", "3", "--stop-after", "1")
    assert code == 0, stderr[-2000:]
    return out


def copy_run(src, dst):
    shutil.copytree(src / "ck", dst / "ck")
    shutil.copytree(src / "train", dst / "train")
    return {p.name: p.read_bytes() for p in (dst / "ck").iterdir()}


def one_error(code, stderr):
    errors = error_lines(stderr)
    assert code == 2 and len(errors) == 1, (code, stderr[-2000:])
    assert "Traceback" not in stderr
    return errors[0]


# --- 1. divergence ------------------------------------------------------------------------------------------
def test_diverging_learning_rate_writes_no_checkpoint_and_says_so(mini_cub, tmp_path):
    flags = list(TINY32) + ["--epochs", "2", "--weight-decay", "0"]  # else LR x WEIGHT_DECAY is refused up front
    flags[flags.index("--lr") + 1] = "1e6"
    code, stdout, stderr = train(mini_cub, tmp_path, *flags)
    message = one_error(code, stderr)
    assert "epoch 1" in message and "no checkpoint of this run was written" in message and "--lr" in message
    assert not list(tmp_path.rglob("*.pt")) and epoch_lines(stdout) == []


def test_weights_that_turn_nan_in_the_last_step_are_not_saved(mini_cub, one_epoch, tmp_path, monkeypatch):
    """The loss of a step is finite, the update it makes is not: the weights check after the epoch catches it."""
    before = copy_run(one_epoch, tmp_path)
    summary_before = (tmp_path / "train" / "summary.csv").read_text(encoding="utf-8")
    steps_per_epoch = math.ceil(len(make_split(load_cub(mini_cub), 0.1, 0).train) / 32)  # TINY32 holds out 10%
    step, calls = torch.optim.AdamW.step, []

    def poisoned_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == steps_per_epoch:  # the last step of the resumed epoch
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned_step)
    code, stdout, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "3", "--resume", "true")
    message = one_error(code, stderr)
    ck = tmp_path / "ck"
    assert "weights became NaN or infinite" in message and "epoch 2" in message
    assert f"{ck / 'vit_cub_last.pt'} holds epoch 1" in message
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before
    assert (tmp_path / "train" / "summary.csv").read_text(encoding="utf-8") == summary_before


def write_checkpoint(path, state=None, **overrides):
    model = build_vit("vit_tiny", 3, 32)
    ckpt = {"format": FORMAT, "arch": "vit_tiny", "image_size": 32, "num_classes": 3, "class_names": ["a", "b", "c"],
            "preprocessing": Preprocessing.for_size(32).to_dict(), "model": state or model.state_dict()}
    ckpt.update(overrides)
    for key in [k for k, v in overrides.items() if v is None]:
        del ckpt[key]
    torch.save(ckpt, path)
    return path


def test_checkpoint_with_nan_weights_is_refused_by_loader_and_rebuilder(tmp_path):
    state = build_vit("vit_tiny", 3, 32).state_dict()
    state["heads.head.bias"][1] = float("inf")
    path = write_checkpoint(tmp_path / "nan.pt", state)
    with pytest.raises(UserError, match=r"NaN or infinite weights .*heads\.head\.bias.*diverged"):
        read_checkpoint(path)
    with pytest.raises(UserError, match="NaN or infinite"):
        model_from_checkpoint(torch.load(path, weights_only=True))
    with pytest.raises(UserError, match="NaN or infinite"):
        pretrained_state_dict("vit_tiny", str(path))


# --- 4. what a checkpoint file is ---------------------------------------------------------------------------
def _jpeg(path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(path, format="JPEG")


class Pickled:
    pass


BAD_FILES = {
    # name: (make(path), substring of the message)
    "empty": (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    "text": (lambda p: p.write_text("epoch 3, top-1 0.81\n"), "is a text file"),
    "jpeg": (_jpeg, "is a JPEG image"),
    "random_bytes": (lambda p: p.write_bytes(bytes(range(7, 200))), "is not a PyTorch file (it begins with the bytes"),
    "truncated": (lambda p: (torch.save({"a": torch.ones(3)}, p), p.write_bytes(p.read_bytes()[:100])),
                  "cannot be read"),
    "pickled_object": (lambda p: torch.save({"x": Pickled()}, p), "pickled Python objects"),
    "bare_state_dict": (lambda p: torch.save(build_vit("vit_tiny", 3, 32).state_dict(), p), "bare state dict"),
    "no_class_names": (lambda p: write_checkpoint(p, class_names=None), "lacks class_names"),
    "wrong_arch": (lambda p: write_checkpoint(p, arch="vit_b_16"), "do not fit its own vit_b_16"),
    "unknown_arch": (lambda p: write_checkpoint(p, arch="resnet50"), "unknown arch 'resnet50'"),
    "bad_preprocessing": (lambda p: write_checkpoint(p, preprocessing={"crop_size": 32}),
                          "unusable preprocessing settings (KeyError: 'resize_size')"),
    "wrong_shapes": (lambda p: write_checkpoint(p, image_size=48, preprocessing=Preprocessing.for_size(48).to_dict()),
                     "encoder.pos_embedding has shape (1, 5, 128)"),
    # fields that disagree with each other: each was a torchvision assertion or a traceback in explain and evaluate
    "crop_differs_from_image_size": (lambda p: write_checkpoint(p, preprocessing=Preprocessing(48, 56).to_dict()),
                                     "crops its inputs to 48 px (preprocessing.crop_size) but its model takes 32 px"),
    "resize_below_crop": (lambda p: write_checkpoint(p, preprocessing={"crop_size": 32, "resize_size": 16}),
                          "need 0 < crop_size <= resize_size (a smaller resize pads the crop with black)"),
    "two_channel_mean": (lambda p: write_checkpoint(p, preprocessing={"crop_size": 32, "resize_size": 36,
                                                                       "mean": [0.5, 0.5]}),
                         "mean and std need one value per RGB channel, got 2 and 3"),
    "zero_std": (lambda p: write_checkpoint(p, preprocessing={"crop_size": 32, "resize_size": 36, "std": [1, 0, 1]}),
                 "std finite and positive"),
    "head_of_another_class_count": (lambda p: write_checkpoint(p, num_classes=4, class_names=list("abcd")),
                                    "heads.head.weight has shape (3, 128), the model expects (4, 128)"),
    "no_classes": (lambda p: write_checkpoint(p, num_classes=0, class_names=[]), "a classifier needs at least one"),
    "class_names_not_text": (lambda p: write_checkpoint(p, class_names=[1, 2, 3]), "class names that are not text"),
    "size_off_the_patch_grid": (lambda p: write_checkpoint(p, image_size=40,
                                                           preprocessing=Preprocessing.for_size(40).to_dict()),
                                "describes no buildable model (image_size 40 must be a multiple of vit_tiny's patch"),
    "image_size_a_bool": (lambda p: write_checkpoint(p, image_size=True), "lacks image_size"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_checkpoint_file_is_one_line_saying_what_it_is(case, tmp_path):
    make, needle = BAD_FILES[case]
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(UserError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert needle in message and str(path) in message and "\n" not in message, message


def test_a_folder_passed_as_checkpoint_names_the_file_inside(tmp_path):
    write_checkpoint(tmp_path / "vit_cub_best.pt")
    with pytest.raises(UserError, match=re.escape(f"is a folder, not a checkpoint file: pass the file, e.g. "
                                                  f"{tmp_path / 'vit_cub_best.pt'}")):
        read_checkpoint(tmp_path)


def test_scripts_say_what_a_bad_checkpoint_is(mini_cub, tmp_path):
    """--resume, --pretrained PATH and an explaining script's --checkpoint-path share the loader."""
    text = tmp_path / "notes.pt"
    text.write_text("not weights\n")
    code, _, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "1", "--pretrained", text)
    assert f"weights file {text} is a text file" in one_error(code, stderr)

    (tmp_path / "ck").mkdir(exist_ok=True)
    (tmp_path / "ck" / "vit_cub_last.pt").write_bytes(b"")
    code, _, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "1", "--resume", "true")
    assert "is empty (0 bytes)" in one_error(code, stderr)

    code, _, stderr = run_script_inprocess("test_vit_forward", "--checkpoint-path", tmp_path / "ck",
                                           "--dataset-root", mini_cub, "--output-dir", tmp_path / "lrp",
                                           "--device", "cpu", "--num-workers", "0")
    assert "is a folder" in one_error(code, stderr)

    # a crop that is not the model's input size: one line from the explaining and the evaluating script, before
    # torchvision's assertion in the model's forward
    crop = write_checkpoint(tmp_path / "crop.pt", preprocessing=Preprocessing(48, 56).to_dict())
    for script in ("test_vit_forward", "evaluate_lrp"):
        code, _, stderr = run_script_inprocess(script, "--checkpoint-path", crop, "--dataset-root", mini_cub,
                                               "--output-dir", tmp_path / script, "--device", "cpu",
                                               "--num-workers", "0")
        assert "crops its inputs to 48 px" in one_error(code, stderr)
        assert not (tmp_path / script).exists()


def test_resume_from_a_best_checkpoint_without_training_state_is_refused(mini_cub, one_epoch, tmp_path):
    copy_run(one_epoch, tmp_path)
    shutil.copy(tmp_path / "ck" / "vit_cub_best.pt", tmp_path / "ck" / "vit_cub_last.pt")
    code, _, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "3", "--resume", "true")
    assert "holds no training state (optimizer" in one_error(code, stderr)

    # training state of the wrong kind (an epoch as text) is refused the same way, not a traceback later
    last = torch.load(one_epoch / "ck" / "vit_cub_last.pt", weights_only=True)
    torch.save({**last, "epoch": "1"}, tmp_path / "ck" / "vit_cub_last.pt")
    code, _, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "3", "--resume", "true")
    assert "holds no training state (epoch)" in one_error(code, stderr)


def test_resume_on_another_dataset_with_the_same_classes_is_refused(mini_cub, one_epoch, tmp_path):
    """The class names match, the split does not: --resume true would continue silently on other images."""
    copy_run(one_epoch, tmp_path)
    other = Path(shutil.copytree(mini_cub, tmp_path / "other" / "CUB_200_2011"))
    split = (other / "train_test_split.txt").read_text(encoding="utf-8").splitlines()
    first_test = next(i for i, line in enumerate(split) if line.endswith(" 0"))
    split[first_test] = split[first_test][:-1] + "1"  # one test image moves to the training split
    (other / "train_test_split.txt").write_text("\n".join(split) + "\n", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}
    code, _, stderr = train(other, tmp_path, *TINY32, "--epochs", "3", "--resume", "true")
    message = one_error(code, stderr)
    assert message.startswith(f"error: --resume true on {other}, but {tmp_path / 'ck' / 'vit_cub_last.pt'} was "
                              "trained on another dataset (its annotation files differ") and str(mini_cub) in message
    assert {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()} == before


# --- 2. a fresh run into a folder that holds checkpoints --------------------------------------------------
def test_a_fresh_run_does_not_overwrite_checkpoints_without_being_told(mini_cub, one_epoch, tmp_path):
    before = copy_run(one_epoch, tmp_path)
    code, stdout, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "1", "--seed", "1")
    message = one_error(code, stderr)
    assert "--resume true" in message and "--checkpoint-dir" in message and "--overwrite true" in message
    assert stdout == "" and {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()} == before

    code, stdout, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "1", "--seed", "1", "--overwrite", "true")
    assert code == 0, stderr[-2000:]
    after = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}
    assert after.keys() == before.keys()
    assert all(after[k] != before[k] for k in after if k.endswith(".pt"))  # the lock file stays, empty
    assert read_checkpoint(tmp_path / "ck" / "vit_cub_last.pt")["config"]["SEED"] == 1


# --- 3. unreadable JPEGs ------------------------------------------------------------------------------------
def test_unreadable_images_are_skipped_and_counted(cub_fixture, tmp_path):
    root = cub_fixture(corrupt=(1, 2))  # image 1 is in the train split, image 2 in the test split
    # one training image per class: nothing to hold out
    code, stdout, stderr = train(root, tmp_path, *TINY32, "--batch-size", "2", "--epochs", "2", "--val-fraction", "0")
    assert code == 0, stderr[-2000:]
    assert "warning: skipped 1 unreadable train and 1 test image(s) in each epoch" in stdout
    assert stdout.count("warning: skipped") == 1 and len(epoch_lines(stdout)) == 2
    assert "1 train and 1 test images were unreadable and skipped" in stdout
    _, rows = read_summary(tmp_path / "train")
    assert [r["skipped_images"] for r in rows] == ["2", "2"]
    # the accuracy counts the 2 readable test images only: it is 0, 1/2 or 1
    assert all(float(r["top1"]) in (0.0, 0.5, 1.0) for r in rows)
    assert read_checkpoint(tmp_path / "ck" / "vit_cub_best.pt")["epoch"] in (1, 2)


def test_a_split_where_no_image_is_readable_is_one_error(cub_fixture, tmp_path):
    root = cub_fixture(corrupt=(2, 4, 6))  # every test image
    code, _, stderr = train(root, tmp_path, *TINY32, "--batch-size", "2", "--epochs", "1", "--val-fraction", "0")
    assert "no test image" in one_error(code, stderr)
    assert not list(tmp_path.rglob("*.pt"))


def _loader(ann, prep, batch_size=4):
    dataset = CUBDataset(ann, "train", prep, report_errors=True)
    return dataset, torch.utils.data.DataLoader(dataset, batch_size=batch_size)


def test_evaluate_and_training_step_leave_unreadable_rows_out_exactly(cub_fixture):
    """A batch with an unreadable row gives the same figures and update as the batch without that row."""
    from conftest import CUB_IMAGES

    all_train = [dict(spec, train=True) for spec in CUB_IMAGES]
    prep = Preprocessing.for_size(32)
    bad = load_cub(cub_fixture(images=all_train, corrupt=(3,)))
    torch.manual_seed(0)
    model = build_vit("vit_tiny", 3, 32)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)
    keep = [i for i in range(len(all_train)) if i != 2]
    good_set = torch.utils.data.Subset(CUBDataset(bad, "train", prep, report_errors=True), keep)
    _, bad_loader = _loader(bad, prep, batch_size=6)
    clean_loader = torch.utils.data.DataLoader(good_set, batch_size=5)
    cpu = torch.device("cpu")
    got, want = (evaluate(model, ld, cpu, None, progress=False) for ld in (bad_loader, clean_loader))
    assert got["skipped"] == 1 and got["count"] == 5 and want["skipped"] == 0 and len(got["errors"]) == 1
    for key in ("loss", "top1", "top5"):
        assert got[key] == pytest.approx(want[key], abs=1e-6)

    weights = []
    for loader in (bad_loader, clean_loader):
        m = build_vit("vit_tiny", 3, 32)
        m.load_state_dict(model.state_dict())
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        stats = train_one_epoch(m, loader, Optimization(opt, sched, torch.amp.GradScaler("cpu", enabled=False),
                                                        torch.nn.CrossEntropyLoss()), cpu, progress=False)
        assert stats["seen"] == 5
        weights.append(m.state_dict())
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], atol=1e-5, rtol=1e-4)


# --- 5. odd values, empty splits, a full disk ---------------------------------------------------------------
@pytest.mark.parametrize("flags,needle", [
    (["--num-workers", "-1"], "NUM_WORKERS must be 0 or more, got -1"),
    (["--image-size", "-16"], "IMAGE_SIZE must be 0 or more, got -16"),
    (["--grad-clip", "nan"], "GRAD_CLIP must be a finite number, got nan"),
    (["--lr", "inf"], "LR must be a finite number, got inf"),
    (["--stop-after", "-1"], "STOP_AFTER must be 0 or more, got -1"),
    (["--seed", "-3"], "--seed must be an integer from 0 to 4294967295 (2**32 - 1), got -3"),
    (["--overwrite", "true", "--resume", "true"], "choose one"),
    (["--image-size", "33"], "IMAGE_SIZE 33 must be a multiple of vit_tiny's patch size 16"),
    (["--image-size", "4096"], "IMAGE_SIZE must be between 1 and 2048 px, got 4096"),
    # enormous values: each was a traceback or an endless run
    (["--seed", "99999999999999999999"], "--seed must be an integer from 0 to 4294967295 (2**32 - 1)"),
    (["--epochs", "99999999999999999999"], "EPOCHS must be at most 10000"),
    (["--batch-size", "99999999999999999999"], "BATCH_SIZE 99999999999999999999 is larger than the 180 training"),
    (["--warmup-epochs", "99999999999999999999"], "WARMUP_EPOCHS 99999999999999999999 is longer than the run"),
    (["--lr", "1", "--weight-decay", "1"], "LR x WEIGHT_DECAY is 1: AdamW would shrink every weight to zero"),
    (["--val-fraction", "1"], "VAL_FRACTION must be in [0, 1), got 1.0"),
    (["--val-fraction", "-0.1"], "VAL_FRACTION must be in [0, 1), got -0.1"),
    (["--val-fraction", "nan"], "VAL_FRACTION must be a finite number, got nan"),
])
def test_odd_values_are_one_error_line_before_any_work(flags, needle, mini_cub, tmp_path):
    code, stdout, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "1", *flags)
    assert needle in one_error(code, stderr) and stdout == ""
    assert list(tmp_path.iterdir()) == []  # no checkpoint or output folder, no lock file


def test_a_dataset_too_small_to_hold_out_images_is_one_line(cub_fixture, tmp_path):
    code, stdout, stderr = train(cub_fixture(), tmp_path, *TINY32, "--batch-size", "2", "--epochs", "1")
    message = one_error(code, stderr)
    assert "VAL_FRACTION 0.1 holds out no image" in message and "no class has 2 training images" in message
    assert "VAL_FRACTION to 0" in message and stdout == "" and list(tmp_path.iterdir()) == [tmp_path / "cub0"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_split_is_one_error_line_before_any_work(split, cub_fixture, tmp_path):
    from conftest import CUB_IMAGES

    images = [dict(spec, train=split == "test") for spec in CUB_IMAGES]
    code, stdout, stderr = train(cub_fixture(images=images), tmp_path, *TINY32, "--epochs", "1")
    assert f"the {split} split" in one_error(code, stderr) and "is empty" in stderr and stdout == ""


def test_a_full_disk_keeps_the_previous_checkpoint(mini_cub, one_epoch, tmp_path, monkeypatch):
    before = copy_run(one_epoch, tmp_path)

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    code, _, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "3", "--resume", "true")
    message = one_error(code, stderr)
    ck = tmp_path / "ck"
    # the first file the epoch writes: its best checkpoint when it is a new best, else the last one
    assert re.search(rf"cannot write the checkpoint {re.escape(str(ck))}.vit_cub_(best|last)\.pt \(No space left on "
                     r"device\)", message), message
    assert "left as it was" in message
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before and stray_files(ck) == []


def test_write_json_is_strict_json():
    text = []
    fileio.write_text, original = (lambda path, t: text.append(t)), fileio.write_text
    try:
        fileio.write_json("x.json", {"a": float("nan"), "b": [1.5, float("-inf")], "c": {"d": float("inf")}})
    finally:
        fileio.write_text = original
    assert json.loads(text[0], parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}")) == {
        "a": None, "b": [1.5, None], "c": {"d": None}}


# --- 8. paths recorded resolved -----------------------------------------------------------------------------
def test_config_records_resolved_paths(one_epoch, mini_cub):
    config = json.loads((one_epoch / "train" / "config.json").read_text(encoding="utf-8"))
    for name in ("DATASET_ROOT", "CHECKPOINT_DIR", "OUTPUT_DIR"):
        assert Path(config[name]).is_absolute(), (name, config[name])
    assert config["DATASET_ROOT"] == str(Path(mini_cub).resolve())
    assert read_checkpoint(one_epoch / "ck" / "vit_cub_last.pt")["config"]["CHECKPOINT_DIR"] == config["CHECKPOINT_DIR"]


def test_resume_with_a_relative_checkpoint_dir_matches_the_recorded_absolute_one(mini_cub, one_epoch, tmp_path,
                                                                                 monkeypatch):
    copy_run(one_epoch, tmp_path)
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run_script_inprocess("train_vit_cub", "--dataset-root", mini_cub, "--checkpoint-dir", "ck",
                                                "--output-dir", "train", *TINY32, "--epochs", "3", "--stop-after", "1",
                                                "--resume", "true")
    assert code == 0, stderr[-2000:]
    assert "resuming after epoch 1" in stdout


# --- 6. only the constants block becomes flags ------------------------------------------------------------
def block_constants(path):
    """UPPER_CASE names assigned at the start of a line before the script's first import (read independently)."""
    names = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if re.match(r"(import|from) ", line):
            break
        match = re.match(r"([A-Z][A-Z0-9_]*)\s*=", line)
        if match:
            names.append(match.group(1))
    return names


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO_ROOT / "scripts").glob("*.py")))
def test_help_lists_exactly_the_constants_block(script):
    import runpy

    ns = runpy.run_path(str(REPO_ROOT / "scripts" / script), run_name="help_check")
    flags = re.findall(r"^  --([a-z0-9-]+) ", cli.help_text(ns), flags=re.M)
    assert flags == [n.lower().replace("_", "-") for n in block_constants(REPO_ROOT / "scripts" / script)]


@pytest.mark.parametrize("flag", ["--recipe", "--summary-fields", "--archs", "--weights"])
def test_tables_after_the_imports_are_not_flags(flag, mini_cub, tmp_path):
    code, _, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "1", flag, "")
    assert f"unknown flag {flag}" in one_error(code, stderr)


# --- two runs at once, a killed run -------------------------------------------------------------------------
def test_a_second_run_into_a_busy_checkpoint_dir_is_refused_and_a_stale_lock_taken_over(mini_cub, tmp_path):
    ck = tmp_path / "ck"
    with FolderLock(ck, "CHECKPOINT_DIR"):  # another run holds the folder (flock: refused even in this process)
        code, stdout, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "1")
    assert "is in use by another run" in one_error(code, stderr) and f"pid {os.getpid()}" in stderr
    assert stdout == "" and not list(ck.glob("*.pt"))

    (ck / HOLDER).write_text(json.dumps({"pid": 999999, "host": "gone"}))  # left by a killed run
    code, _, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "1")
    assert code == 0, stderr[-2000:]
    assert "taking over" in stderr
    assert sorted(p.name for p in ck.glob("*.pt")) == ["vit_cub_best.pt", "vit_cub_last.pt"]


def test_a_run_that_ends_just_before_this_one_takes_the_lock_keeps_its_checkpoints(mini_cub, one_epoch, tmp_path,
                                                                                 monkeypatch):
    """The checkpoint folder is checked under its lock: what a run finishing meanwhile wrote is seen."""
    take = FolderLock.__enter__

    def another_run_ends_first(self):
        if self.what == "CHECKPOINT_DIR":
            shutil.copytree(one_epoch / "ck", self.path, dirs_exist_ok=True)
        return take(self)

    monkeypatch.setattr(FolderLock, "__enter__", another_run_ends_first)
    code, stdout, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "1")
    assert "already holds vit_cub_best.pt and vit_cub_last.pt" in one_error(code, stderr) and stdout == ""
    assert all((tmp_path / "ck" / p.name).read_bytes() == p.read_bytes() for p in (one_epoch / "ck").iterdir())


# --- 9. the output folder (config.json, summary.csv, curves.png) ---------------------------------------------
def test_a_second_run_into_a_busy_output_dir_is_refused(mini_cub, tmp_path):
    out = tmp_path / "train"
    with FolderLock(out, "OUTPUT_DIR"):  # a run with other checkpoints writes this OUTPUT_DIR
        code, stdout, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "1")
    message = one_error(code, stderr)
    assert f"OUTPUT_DIR {out} is in use by another run" in message and epoch_lines(stdout) == []
    assert not list((tmp_path / "ck").glob("*.pt")) and [p.name for p in out.iterdir()] == [LOCK]


def continue_command(folder):
    """The command RUN_INCOMPLETE.txt gives to continue the run, as the flags after the script."""
    marker = (folder / MARKER).read_text(encoding="utf-8")
    command = shlex.split(marker.split("to continue from the last one, run: ")[1])
    assert command[:2] == ["python", str(REPO_ROOT / "scripts" / "train_vit_cub.py")], command
    return marker, command[2:]


def test_a_stopped_run_says_it_paused_and_how_to_go_on(one_epoch):
    marker, flags = continue_command(one_epoch / "train")
    assert "stopped after epoch 1 of 3 as asked (--stop-after 1)" in marker
    assert flags[-2:] == ["--resume", "true"] and "--stop-after" not in flags
    assert "train" in incomplete_runs(one_epoch)  # the gallery flags it


def test_a_kill_between_the_best_and_the_last_checkpoint_loses_no_best_epoch(mini_cub, one_epoch, tmp_path,
                                                                               monkeypatch):
    """Killed after the first checkpoint of an epoch that is a new best: the resumed run still saves that best."""
    copy_run(one_epoch, tmp_path)
    save = vitlrp.models.save_checkpoint

    def killed_after_one_save(path, *args, **meta):
        save(path, *args, **meta)
        if meta["epoch"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(vitlrp.models, "save_checkpoint", killed_after_one_save)
    code, _, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "3", "--resume", "true")
    monkeypatch.undo()
    assert code == 130, stderr[-2000:]
    marker, flags = continue_command(tmp_path / "train")
    assert "was killed or failed before its end" in marker

    code, stdout, stderr = run_script_inprocess("train_vit_cub", *flags)
    assert code == 0, stderr[-2000:]
    _, rows = read_summary(tmp_path / "train")
    val = [float(r["val_top1"]) for r in rows]
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and val.index(max(val)) == 2  # epoch 3 is the best on val
    best = read_checkpoint(tmp_path / "ck" / "vit_cub_best.pt")
    assert best["epoch"] == 3 and {k: str(v) for k, v in best["summary_row"].items()} == rows[2]
    assert f"Best val top-1 {max(val):.2%} at epoch 3 (picked on the validation split), its test top-1 " \
           f"{float(rows[2]['top1']):.2%}" in stdout
    assert incomplete_runs(tmp_path) == {}


def test_resume_rebuilds_its_own_summary_not_another_runs(mini_cub, one_epoch, tmp_path):
    """Run C paused; run D (other checkpoints) wrote the same OUTPUT_DIR; C resumed shows only C's epochs."""
    copy_run(one_epoch, tmp_path)
    out = tmp_path / "train"
    _, c_rows = read_summary(out)
    c_checkpoints = json.loads((out / "config.json").read_text(encoding="utf-8"))["CHECKPOINT_DIR"]
    code, _, stderr = run_script_inprocess("train_vit_cub", "--dataset-root", mini_cub, "--checkpoint-dir",
                                           tmp_path / "ck_d", "--output-dir", out, *TINY32, "--epochs", "2",
                                           "--seed", "1")
    assert code == 0, stderr[-2000:]
    assert f"note: {out} holds the outputs of another training run (checkpoints: {c_checkpoints})" in stderr
    _, d_rows = read_summary(out)
    assert [r["epoch"] for r in d_rows] == ["1", "2"] and d_rows[0] != c_rows[0] and not (out / MARKER).exists()

    code, _, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "3", "--resume", "true")
    assert code == 0, stderr[-2000:]
    assert f"note: {out / 'summary.csv'} held epochs that are not this run's" in stderr
    _, rows = read_summary(out)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and rows[0] == c_rows[0]
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["CHECKPOINT_DIR"] == \
        str((tmp_path / "ck").resolve())
    assert not (out / MARKER).exists()


@pytest.mark.parametrize("name", ["config.json", "summary.csv"])
def test_a_full_disk_in_the_output_folder_is_one_line(name, mini_cub, tmp_path, monkeypatch):
    write_text = fileio.write_text

    def disk_full(path, text):
        if Path(path).name != name:
            return write_text(path, text)
        with fileio.atomic_path(path) as tmp:
            tmp.write_text(text[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio, "write_text", disk_full)
    code, _, stderr = train(mini_cub, tmp_path, *TINY32, "--epochs", "1")
    out = tmp_path / "train"
    message = one_error(code, stderr)
    assert f"disk full while writing {out / name}" in message and MARKER in message
    assert (out / MARKER).exists() and not (out / name).exists() and stray_files(out) == []

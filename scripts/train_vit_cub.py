"""Fine-tune a ViT (torchvision's, timm's or Hugging Face's) on CUB-200-2011; writes checkpoints/vit_cub_best.pt and
vit_cub_last.pt.

The best epoch is picked on a validation split held out from the training images (VAL_FRACTION), not on the test
split that the explaining scripts use. Weights per model (PRETRAINED): vit_b_16 and vit_l_16: IMAGENET1K_V1,
IMAGENET1K_SWAG_E2E_V1, IMAGENET1K_SWAG_LINEAR_V1; vit_b_32 and vit_l_32: IMAGENET1K_V1; vit_h_14:
IMAGENET1K_SWAG_E2E_V1, IMAGENET1K_SWAG_LINEAR_V1; vit_tiny: none; timm:<name> and hf:<Hub id or folder>: default
(their library's own weights, what an unset PRETRAINED means for them), none or a file (hf: also a folder).
Preprocessing comes from the weights (timm, Hugging Face: from the model's configuration).
Several GPUs: torchrun --nproc_per_node=N scripts/train_vit_cub.py (DDP; BATCH_SIZE is the global batch).
"""
# --- configuration (each constant is also a flag: --epochs 30, --lr 5e-5, ...) ---
DATASET_ROOT = "dataset/raw/CUB_200_2011"  # folder holding images.txt
MODEL = "vit_b_16"  # vit_b_16, vit_b_32, vit_l_16, vit_l_32, vit_h_14, vit_tiny (CPU), timm:<name>, hf:<Hub id|folder>
PRETRAINED = "IMAGENET1K_V1"  # IMAGENET1K_V1, IMAGENET1K_SWAG_E2E_V1, IMAGENET1K_SWAG_LINEAR_V1, default, none, a file
IMAGE_SIZE = 0  # model input size; 0 = the weights' own (224; 384 for vit_b_16 SWAG_E2E, 518 for vit_h_14 SWAG_E2E)
EPOCHS = 20  # full passes over the train split
BATCH_SIZE = 64  # global batch, split over processes under torchrun
LR = 1e-4  # AdamW peak learning rate
WEIGHT_DECAY = 0.05  # AdamW decoupled weight decay (not on biases, norms, tokens)
WARMUP_EPOCHS = 2  # linear warmup, then cosine decay to zero
LABEL_SMOOTHING = 0.1  # cross-entropy label smoothing
GRAD_CLIP = 1.0  # clip the gradient norm; 0 = off
AMP = "auto"  # auto (bf16 on CUDA, none on CPU), bf16, fp16, none
COMPILE = False  # torch.compile the model (faster on a GPU after a minute of compiling)
NUM_WORKERS = 8  # JPEG decoding processes per GPU
VAL_FRACTION = 0.1  # share of each class's training images held out to pick the best epoch; 0 = pick on the test split
SEED = 0  # model init, shuffling, augmentation, the validation split (and the label permutation)
PERMUTE_LABELS = False  # train on a seeded permutation of the training labels (Adebayo's data randomization test)
DEVICE = "auto"  # auto, cuda, cpu
CHECKPOINT_DIR = "checkpoints"  # vit_cub_best.pt and vit_cub_last.pt go here
RESUME = False  # continue from CHECKPOINT_DIR/vit_cub_last.pt
OVERWRITE = False  # start afresh in a CHECKPOINT_DIR that already holds checkpoints, replacing them
STOP_AFTER = 0  # stop after this many epochs in this run (0 = run to EPOCHS); continue with --resume true
OUTPUT_DIR = "results/train"  # config.json, summary.csv, curves.png
# -------------------------------------------------------------------------------------
import contextlib
import csv
import json
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from vitlrp import cli, plots
from vitlrp.cub import CUBDataset, load_cub
from vitlrp.errors import UserError
from vitlrp.fileio import append_csv_row, write_csv, write_json
from vitlrp.holdout import best_row, make_split, split_from_record
from vitlrp.identity import dataset_sha256, identify, short
from vitlrp.identity import record as record_identity
from vitlrp.models import (
    DEFAULT_WEIGHTS,
    build_model,
    check_arch,
    check_classes,
    check_image_size,
    check_pretrained,
    default_image_size,
    load_pretrained,
    read_checkpoint,
    save_checkpoint,
    split_model,
    weights_names,
    weights_preprocessing,
)
from vitlrp.runfolder import FolderLock, RunFolder
from vitlrp.runtime import Distributed, resolve_device, seed_everything
from vitlrp.sanity.datarand import permute_labels
from vitlrp.training import SUMMARY_FIELDS, NonFiniteLoss, Recipe, Trainer, summary_row

# every name this script writes into OUTPUT_DIR (a finished run removes older runs' files of these names only)
OUTPUT_NAMES = ("config.json", "summary.csv", "curves.png")
MAX_EPOCHS = 10_000  # fine-tuning on CUB takes tens of epochs: more is a typo, not a run
# A resumed run continues the same optimisation: these settings must match the checkpoint's.
RECIPE = ("MODEL", "PRETRAINED", "IMAGE_SIZE", "EPOCHS", "BATCH_SIZE", "LR", "WEIGHT_DECAY", "WARMUP_EPOCHS",
          "LABEL_SMOOTHING", "GRAD_CLIP", "AMP", "VAL_FRACTION", "SEED", "PERMUTE_LABELS")
# the value a setting had before checkpoints recorded it: those runs picked the best epoch on the test split and
# trained on the true labels
RECIPE_BEFORE = {"VAL_FRACTION": 0.0, "PERMUTE_LABELS": False}


def _check_range(cfg, name, low, high=None, why=""):
    value = getattr(cfg, name)
    if value < low:
        raise UserError(f"{name} must be {'a positive integer' if low == 1 else '0 or more'}, got {value}")
    if high is not None and value > high:
        raise UserError(f"{name} must be at most {high}{why}, got {value}")


def check_numbers(cfg):
    """The numeric settings: ranges, finiteness, and settings that contradict each other."""
    _check_range(cfg, "EPOCHS", 1, MAX_EPOCHS, " (fine-tuning takes tens of epochs)")
    _check_range(cfg, "BATCH_SIZE", 1)
    _check_range(cfg, "WARMUP_EPOCHS", 0)
    if cfg.WARMUP_EPOCHS > cfg.EPOCHS:
        raise UserError(f"WARMUP_EPOCHS {cfg.WARMUP_EPOCHS} is longer than the run (EPOCHS {cfg.EPOCHS}): the learning "
                        f"rate would never reach LR; pass --warmup-epochs {cfg.EPOCHS} or less")
    for name in ("IMAGE_SIZE", "NUM_WORKERS", "STOP_AFTER"):
        _check_range(cfg, name, 0)
    for name in ("LR", "WEIGHT_DECAY", "LABEL_SMOOTHING", "GRAD_CLIP", "VAL_FRACTION"):
        if not math.isfinite(getattr(cfg, name)):
            raise UserError(f"{name} must be a finite number, got {getattr(cfg, name)}")
    if not cfg.LR > 0:
        raise UserError(f"LR must be positive, got {cfg.LR}")
    if cfg.WEIGHT_DECAY < 0 or not 0 <= cfg.LABEL_SMOOTHING < 1 or cfg.GRAD_CLIP < 0:
        raise UserError("WEIGHT_DECAY and GRAD_CLIP must be >= 0 and LABEL_SMOOTHING in [0, 1)")
    if cfg.LR * cfg.WEIGHT_DECAY >= 1:  # AdamW multiplies every weight by 1 - LR * WEIGHT_DECAY at each step
        raise UserError(f"LR x WEIGHT_DECAY is {cfg.LR * cfg.WEIGHT_DECAY:g}: AdamW would shrink every weight to zero "
                        "or flip its sign at each step; lower --lr or --weight-decay so that their product is below 1")
    if not 0 <= cfg.VAL_FRACTION < 1:
        raise UserError(f"VAL_FRACTION must be in [0, 1), got {cfg.VAL_FRACTION}")


def check_config(cfg, dist):
    """Every setting, before any folder or file is touched (the dataset's own limits: check_against_data)."""
    check_numbers(cfg)
    check_arch(cfg.MODEL)
    if split_model(cfg.MODEL)[0] != "torchvision" and "PRETRAINED" not in cli.given(cfg):
        cfg.PRETRAINED = DEFAULT_WEIGHTS  # torchvision's weights name means nothing to a timm or HF model
    if cfg.IMAGE_SIZE:
        check_image_size(cfg.MODEL, cfg.IMAGE_SIZE)
    if not cfg.RESUME:  # a resumed run does not read them (and must name the same, see RECIPE)
        check_pretrained(cfg.MODEL, cfg.PRETRAINED)
    if cfg.AMP.lower() not in ("auto", "bf16", "fp16", "none"):
        raise UserError(f"AMP must be auto, bf16, fp16 or none, got {cfg.AMP!r}")
    if cfg.BATCH_SIZE % dist.world_size:
        raise UserError(f"BATCH_SIZE {cfg.BATCH_SIZE} must be divisible by the {dist.world_size} processes")
    if cfg.RESUME and cfg.OVERWRITE:
        raise UserError("--resume true continues the checkpoints, --overwrite true replaces them: choose one")
    if Path(cfg.CHECKPOINT_DIR).resolve() == Path(cfg.OUTPUT_DIR).resolve():
        raise UserError(f"--checkpoint-dir and --output-dir are the same folder {cfg.OUTPUT_DIR}: each run locks "
                        "both, so give them different folders")


def check_against_data(cfg, ann):
    """The dataset's limits on the settings; returns the validation split (seeded, stratified)."""
    for split in ("train", "test"):
        if not len(ann.split_indices(split)):
            raise UserError(f"the {split} split of {cfg.DATASET_ROOT} is empty (train_test_split.txt marks no "
                            f"image as {split}); training needs images in both splits")
    split = make_split(ann, cfg.VAL_FRACTION, cfg.SEED)
    if cfg.BATCH_SIZE > len(split.train):
        held = f" ({len(split.val)} held out for validation)" if len(split.val) else ""
        raise UserError(f"BATCH_SIZE {cfg.BATCH_SIZE} is larger than the {len(split.train)} training images of "
                        f"{cfg.DATASET_ROOT}{held}: pass --batch-size {len(split.train)} or less")
    return split


def check_checkpoint_dir(cfg, ckpt_dir, last_path):
    """Refuse to resume without a last checkpoint, or to start afresh over an earlier run's checkpoints."""
    if cfg.RESUME and not last_path.is_file():
        raise UserError(f"--resume true but {last_path} does not exist: pass the --checkpoint-dir of the run "
                        "to continue, or start afresh without --resume")
    existing = [p.name for p in (ckpt_dir / "vit_cub_best.pt", last_path) if p.exists()]
    if not cfg.RESUME and not cfg.OVERWRITE and existing:
        raise UserError(f"{ckpt_dir} already holds {' and '.join(existing)} from an earlier run: continue it with "
                        "--resume true, write this run to another --checkpoint-dir, or replace them with "
                        "--overwrite true")


def recorded_config(cfg):
    """The configuration as written to config.json and the checkpoints: paths resolved, so they stay meaningful."""
    config = cli.config_dict(cfg)
    for name in ("DATASET_ROOT", "CHECKPOINT_DIR", "OUTPUT_DIR"):
        config[name] = str(Path(config[name]).resolve())
    family, inner = split_model(cfg.MODEL)
    if family == "hf" and Path(inner).is_dir():  # a folder, not a Hub id
        config["MODEL"] = f"hf:{Path(inner).resolve()}"
    if config["PRETRAINED"] not in weights_names(cfg.MODEL) and config["PRETRAINED"].lower() != "none":
        config["PRETRAINED"] = str(Path(config["PRETRAINED"]).resolve())
    return config


def _on_disk(saved_epoch, last_path, best_path, earlier):
    """What the checkpoint folder holds after a diverged epoch, said truthfully."""
    if saved_epoch is None:
        return "no checkpoint of this run was written" + (
            f" ({last_path.parent} still holds the earlier run's)" if earlier else "")
    return (f"nothing of this epoch was saved: {last_path} holds epoch {saved_epoch}, {best_path} the best epoch "
            "up to it")


def _check_same_recipe(cfg, resume, path):
    saved, now = resume.get("config", {}), recorded_config(cfg)
    for name in RECIPE:
        was = saved.get(name, RECIPE_BEFORE.get(name))
        if name in saved or name in RECIPE_BEFORE:
            if was != now[name] and was != getattr(cfg, name):
                raise UserError(f"--resume true with {name}={getattr(cfg, name)!r}, but {path} was trained with "
                                f"{name}={was!r}; use the same settings (or start a new run in another "
                                "--checkpoint-dir)")


def _read_rows(path):
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        return []


def resumed_rows(resume, summary_path, last_path):
    """The summary rows of the resumed run, from its last checkpoint: never another run's rows left in summary.csv.

    Also restores a row a crash lost (killed after saving the checkpoint, before appending the row).
    """
    as_text = [{k: str(r.get(k, "")) for k in SUMMARY_FIELDS} for r in resume.get("summary_rows",
                                                                                   [resume["summary_row"]])]
    if "summary_rows" not in resume:  # written before checkpoints carried the whole history
        print(f"note: {last_path} holds only the summary row of its epoch {resume['epoch']}; {summary_path} "
              "restarts there", file=sys.stderr)
    on_disk = [{k: r.get(k) or "" for k in SUMMARY_FIELDS} for r in _read_rows(summary_path)]
    if on_disk and on_disk != as_text[:len(on_disk)]:
        print(f"note: {summary_path} held epochs that are not this run's (another run wrote into this OUTPUT_DIR); "
              f"rewritten from {last_path}", file=sys.stderr)
    return as_text


def continue_command():
    """This command with --resume true (and without --overwrite and --stop-after): it continues the run."""
    args, rest = [], sys.argv[1:]
    while rest:
        flag, eq, _ = rest[0].partition("=")
        step = 1 if eq or len(rest) == 1 else 2
        if flag not in ("--resume", "--overwrite", "--stop-after"):
            args += rest[:step]
        rest = rest[step:]
    return shlex.join(["python", sys.argv[0], *args, "--resume", "true"])


def mark_resumable(run, ckpt_dir, why=None):
    """RUN_INCOMPLETE.txt saying how to continue from the last checkpoint (the run's own command would restart)."""
    run.mark(why, f"Its checkpoints are in {ckpt_dir}; to continue from the last one, run: {continue_command()}")


def _earlier_run_note(out_dir, ckpt_dir):
    """A note when a fresh run is about to replace the outputs of a run with other checkpoints."""
    if not (out_dir / "summary.csv").exists():
        return
    try:
        earlier = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))["CHECKPOINT_DIR"]
    except (OSError, ValueError, KeyError, TypeError):
        earlier = "unknown"
    if earlier != str(ckpt_dir.resolve()):
        print(f"note: {out_dir} holds the outputs of another training run (checkpoints: {earlier}); this run "
              "replaces them", file=sys.stderr)


def load_resume(cfg, ann, last_path):
    """The last checkpoint, checked: same classes, training state present, same recipe."""
    resume = read_checkpoint(last_path)
    check_classes(resume, ann.class_names, cfg.DATASET_ROOT, fix="resume on the dataset it was trained on "
                  "(--dataset-root) or start afresh in another --checkpoint-dir")
    kinds = {"optimizer": dict, "scheduler": dict, "scaler": dict, "epoch": int, "best_acc": (int, float),
             "summary_row": dict}
    missing = [k for k, kind in kinds.items() if not isinstance(resume.get(k), kind) or isinstance(resume[k], bool)]
    if missing or resume["epoch"] < 1:
        raise UserError(f"{last_path} holds no training state ({', '.join(missing or ['epoch'])}): --resume true "
                        "needs the vit_cub_last.pt this script writes")
    _check_same_recipe(cfg, resume, last_path)
    was, now = resume.get("dataset_sha256"), dataset_sha256(cfg.DATASET_ROOT)
    if isinstance(was, str) and was != now:  # same class names, other images, labels or split (older checkpoints:
        # no record, no check)
        raise UserError(f"--resume true on {cfg.DATASET_ROOT}, but {last_path} was trained on another dataset (its "
                        f"annotation files differ: sha256 {short(was)} then, {short(now)} now; it was trained on "
                        f"{resume.get('config', {}).get('DATASET_ROOT', '?')}): resume on the dataset it was trained "
                        "on (--dataset-root), or start afresh in another --checkpoint-dir")
    return resume


def initial_model(cfg, num_classes):
    """The seeded model before training and its preprocessing: ImageNet (or file) weights unless resuming (the
    checkpoint's replace them), a small random head."""
    image_size = cfg.IMAGE_SIZE or default_image_size(cfg.MODEL, cfg.PRETRAINED)
    seed_everything(cfg.SEED)
    model = build_model(cfg.MODEL, num_classes, image_size)
    if cfg.PRETRAINED.lower() == "none" and split_model(cfg.MODEL)[0] == "torchvision":
        # torchvision zero-initialises the head; from scratch a small random head trains faster (timm and Hugging
        # Face draw theirs already)
        torch.nn.init.trunc_normal_(model.heads.head.weight, std=0.02)
    elif not cfg.RESUME:
        load_pretrained(model, cfg.MODEL, cfg.PRETRAINED)
    return model, weights_preprocessing(cfg.MODEL, cfg.PRETRAINED, image_size)


def take_checkpoint_dir(cfg, dist, held, ann, paths):
    """Lock CHECKPOINT_DIR for this run (released when ``held`` closes); the checked last checkpoint to resume."""
    if dist.is_main:
        held.enter_context(FolderLock(paths["ckpt"], "CHECKPOINT_DIR"))  # one run at a time writes checkpoints
    check_checkpoint_dir(cfg, paths["ckpt"], paths["last"])  # again under the lock: a run that ended meanwhile
    return load_resume(cfg, ann, paths["last"]) if cfg.RESUME else None


def datasets(ann, split, preprocessing):
    """The images trained on (augmented) and those scored after every epoch: ``val`` (when held out) and ``test``."""
    # an unreadable image is skipped and reported, not a traceback after an epoch of work
    train = CUBDataset(ann, "train", preprocessing, train_augment=True, report_errors=True)
    scored = {"test": CUBDataset(ann, "test", preprocessing, report_errors=True)}
    if len(split.val):
        held_out = CUBDataset(ann, "train", preprocessing, report_errors=True)
        scored = {"val": torch.utils.data.Subset(held_out, split.val.tolist()), **scored}
    return torch.utils.data.Subset(train, split.train.tolist()), scored


def recipe(cfg):
    return Recipe(cfg.EPOCHS, cfg.BATCH_SIZE, cfg.LR, cfg.WEIGHT_DECAY, cfg.WARMUP_EPOCHS, cfg.LABEL_SMOOTHING,
                  cfg.GRAD_CLIP, cfg.AMP, cfg.SEED, cfg.NUM_WORKERS, cfg.COMPILE)


def open_output_dir(cfg, held, paths, resume):
    """Take OUTPUT_DIR once the run can start (a refused run leaves it as it was); mark it resumable when resuming."""
    if resume is None:
        _earlier_run_note(paths["out"], paths["ckpt"])
    # a fresh run's folder must not show the older run's epochs while it is incomplete
    run = held.enter_context(RunFolder(paths["out"], "OUTPUT_DIR", OUTPUT_NAMES,
                                       clear_first=() if resume is not None else ("summary.csv", "curves.png"),
                                       overwrite=cfg.OVERWRITE))
    if resume is not None:
        mark_resumable(run, paths["ckpt"])
    return run


def start_outputs(cfg, dist, trainer, split, paths, resume, preprocessing, ann):
    """config.json, the resumed run's summary rows (and curves) and the console header; returns the rows."""
    out, rows = paths["out"], []
    write_json(out / "config.json", {**recorded_config(cfg), "world_size": dist.world_size,
                                     "preprocessing": preprocessing.to_dict(), "device": str(trainer.device),
                                     "val_images": len(split.val), "identity": identify([], cfg.DATASET_ROOT)})
    if resume is not None:
        rows = resumed_rows(resume, out / "summary.csv", paths["last"])
        write_csv(out / "summary.csv", rows, SUMMARY_FIELDS)
        plots.training_curves(rows, out / "curves.png")
    print(f"Using device: {trainer.device}" + (f" x{dist.world_size} processes" if dist.enabled else ""))
    print(f"Dataset: {len(split.train)} train / {len(split.val)} validation / {len(ann.split_indices('test'))} test "
          f"images, {ann.num_classes} classes")
    print(f"Model: {cfg.MODEL} ({cfg.PRETRAINED}), input {preprocessing.crop_size}px, AMP {trainer.dtype or 'none'}"
          + (f", resuming after epoch {resume['epoch']}" if resume else ""))
    if cfg.PERMUTE_LABELS:
        print(f"Labels: the {len(split.train) + len(split.val)} training labels permuted (seed {cfg.SEED}): the test "
              "accuracy should stay at chance")
    if not len(split.val):
        print("note: VAL_FRACTION is 0: the best epoch is picked on the test split, the split the explaining scripts "
              "then score (pass --val-fraction 0.1 to hold out training images instead)", file=sys.stderr)
    return rows


def epoch_figures(cfg, dist, trainer, epoch, on_disk):
    """Train and score one epoch; a non-finite loss or an unreadable split is one line saying what is on disk."""
    try:
        figures = trainer.epoch(epoch, progress=dist.is_main)
    except NonFiniteLoss as err:
        raise UserError(f"{err} in epoch {epoch}; stopped, {on_disk()} (try a lower --lr or --amp bf16)") from None
    for name, count, errors in (("train", figures["seen"], figures["errors"]),
                                *((n, figures[n]["count"], figures[n]["errors"]) for n in ("val", "test")
                                  if n in figures)):
        if not count:
            raise UserError(f"no {name} image of {cfg.DATASET_ROOT} could be read (e.g. {errors[:1]}); "
                            "`python scripts/download_cub.py --verify true` lists the unreadable files")
    return figures


def _skipped(figures):
    """``[(split, unreadable images)]`` of an epoch: train, validation (when held out), test."""
    return [("train", figures["skipped"])] + [(name, figures[key]["skipped"]) for key, name in
                                              (("val", "validation"), ("test", "test")) if key in figures]


def _and(parts):
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def warn_skipped(figures):
    """Say once how many unreadable images each epoch leaves out, and the first one's message."""
    first = figures["errors"] + [e for n in ("val", "test") for e in figures.get(n, {}).get("errors", [])]
    counts = _and([f"{n} unreadable train" if s == "train" else f"{n} {s}" for s, n in _skipped(figures)])
    print(f"warning: skipped {counts} image(s) in each epoch (left out of the loss and the accuracy)"
          + (f": {first[0]}" if first else ""))


@dataclass
class Setup:
    """What a run trains on and writes to: the dataset's annotations, its split, the preprocessing and the paths."""

    ann: object
    split: object
    preprocessing: object
    paths: dict


def save_epoch(cfg, trainer, setup, row, rows, is_best, best_acc):
    """The epoch's checkpoints: the best one first (killed in between, the resumed run repeats this epoch and saves
    its best again; the other way round last.pt's best_acc would count a best epoch best.pt never got)."""
    ann, preprocessing, paths = setup.ann, setup.preprocessing, setup.paths
    meta = dict(epoch=row["epoch"], best_acc=best_acc, config=recorded_config(cfg), summary_row=row,
                val_split=setup.split.record, dataset_sha256=dataset_sha256(cfg.DATASET_ROOT))
    if is_best:
        save_checkpoint(paths["best"], trainer.model, cfg.MODEL, ann.class_names, preprocessing, **meta)
    # the last checkpoint carries the training state --resume needs and the run's summary rows; the best one only
    # what a model needs
    save_checkpoint(paths["last"], trainer.model, cfg.MODEL, ann.class_names, preprocessing, **meta,
                    summary_rows=rows, **trainer.state())


def epoch_line(cfg, row, figures, is_best):
    val = f"  val top-1 {figures['val']['top1']:.2%}" if "val" in figures else ""
    return (f"epoch {row['epoch']}/{cfg.EPOCHS}  train loss {float(row['train_loss']):.3f}{val}  "
            f"test loss {figures['test']['loss']:.3f}  top-1 {figures['test']['top1']:.2%}  "
            f"top-5 {figures['test']['top5']:.2%}  {float(row['train_img_per_s']):.0f} img/s  "
            f"{row['epoch_seconds']}s" + ("  *best*" if is_best else ""))


def train_epochs(cfg, dist, trainer, setup, run, rows, resume):
    """Train to the last epoch of this run, writing checkpoints, summary rows and curves after each epoch;
    returns the last epoch and the figures of the last epoch trained (None if none was)."""
    split, paths = setup.split, setup.paths
    start = resume["epoch"] + 1 if resume is not None else 1
    last_epoch = cfg.EPOCHS if not cfg.STOP_AFTER else min(cfg.EPOCHS, start - 1 + cfg.STOP_AFTER)
    best_acc = resume["best_acc"] if resume is not None else -1.0
    saved_epoch = resume["epoch"] if resume is not None else None  # the epoch the last checkpoint on disk holds
    earlier = resume is None and (paths["last"].exists() or paths["best"].exists())  # an older run's (--overwrite)
    figures = None
    for epoch in range(start, last_epoch + 1):
        figures = epoch_figures(cfg, dist, trainer, epoch,
                                lambda: _on_disk(saved_epoch, paths["last"], paths["best"], earlier))
        row = summary_row(epoch, figures)
        is_best = figures[split.picks_on]["top1"] > best_acc
        best_acc = max(best_acc, figures[split.picks_on]["top1"])
        if dist.is_main:
            if epoch == start and row["skipped_images"] != "0":
                warn_skipped(figures)
            rows.append(row)
            save_epoch(cfg, trainer, setup, row, rows, is_best, best_acc)
            if resume is None and epoch == start:  # from now on --resume true continues this run
                mark_resumable(run, paths["ckpt"])
            append_csv_row(paths["out"] / "summary.csv", row, SUMMARY_FIELDS)
            plots.training_curves(rows, paths["out"] / "curves.png")
            print(epoch_line(cfg, row, figures, is_best))
        saved_epoch = epoch
        dist.barrier()
    return last_epoch, figures


def report_end(cfg, run, paths, rows, last_epoch, figures):
    """Finish OUTPUT_DIR (or mark a run stopped by STOP_AFTER as paused) and print the best epoch's figures."""
    if last_epoch == cfg.EPOCHS:
        record_identity(paths["out"] / "config.json", identify([paths["best"], paths["last"]], cfg.DATASET_ROOT))
        run.finish(["config.json", "summary.csv"] + (["curves.png"] if rows else []))
        done = "Finished"
    else:  # a pause, not a failure: the folder says which epochs it holds and how to go on
        mark_resumable(run, paths["ckpt"], f"This run stopped after epoch {last_epoch} of {cfg.EPOCHS} as asked "
                                           f"(--stop-after {cfg.STOP_AFTER}): summary.csv and curves.png show those "
                                           "epochs.")
        done = f"Stopped after epoch {last_epoch} (resume with --resume true)"
    best = best_row(rows)
    if best is None:
        picked = "no epoch trained"
    elif best["val_top1"]:
        picked = (f"Best val top-1 {float(best['val_top1']):.2%} at epoch {best['epoch']} (picked on the validation "
                  f"split), its test top-1 {float(best['top1']):.2%}")
    else:
        picked = f"Best test top-1 {float(best['top1']):.2%} at epoch {best['epoch']} (picked on the test split)"
    counts = _skipped(figures) if figures else []
    skipped = (f"; {_and([f'{n} {s}' for s, n in counts])} images were unreadable and skipped"
               if sum(n for _, n in counts) else "")
    print(f"{done}. {picked}; checkpoints: {paths['best']}, {paths['last']}{skipped}")


def main(cfg):
    dist = Distributed()
    check_config(cfg, dist)
    device = dist.init(resolve_device(cfg.DEVICE))
    ann = load_cub(cfg.DATASET_ROOT)
    if cfg.PERMUTE_LABELS:  # the data randomization test's model: the images keep their place, not their class
        ann = permute_labels(ann, cfg.SEED)
    split = check_against_data(cfg, ann)
    paths = {"ckpt": Path(cfg.CHECKPOINT_DIR), "out": Path(cfg.OUTPUT_DIR)}
    paths.update(last=paths["ckpt"] / "vit_cub_last.pt", best=paths["ckpt"] / "vit_cub_best.pt")
    check_checkpoint_dir(cfg, paths["ckpt"], paths["last"])  # before reading (or downloading) the weights
    model, preprocessing = initial_model(cfg, ann.num_classes)
    with contextlib.ExitStack() as held:  # releases the folders' locks however the run ends
        resume = take_checkpoint_dir(cfg, dist, held, ann, paths)
        if resume is not None:  # the run goes on holding out the images it held out
            split = split_from_record(ann, resume.get("val_split", {"fraction": 0, "seed": cfg.SEED,
                                                                   "image_ids": []}), paths["last"])
        train_set, scored = datasets(ann, split, preprocessing)
        trainer = Trainer(model.to(device), train_set, scored, recipe(cfg), dist, device, resume)
        run = open_output_dir(cfg, held, paths, resume) if dist.is_main else None
        rows = start_outputs(cfg, dist, trainer, split, paths, resume, preprocessing, ann) if dist.is_main else []
        setup = Setup(ann, split, preprocessing, paths)
        last_epoch, figures = train_epochs(cfg, dist, trainer, setup, run, rows, resume)
        if dist.is_main:
            report_end(cfg, run, paths, rows, last_epoch, figures)
    dist.close()
    return 0


if __name__ == "__main__":
    cli.run(main, globals())

"""Fine-tune a torchvision ViT on CUB-200-2011; writes checkpoints/vit_cub_best.pt and vit_cub_last.pt.

Several GPUs: torchrun --nproc_per_node=N scripts/train_vit_cub.py (DDP; BATCH_SIZE is the global batch).
"""
# --- configuration (each constant is also a flag: --epochs 30, --lr 5e-5, ...) ---
DATASET_ROOT = "dataset/raw/CUB_200_2011"  # folder holding images.txt
MODEL = "vit_b_16"  # vit_b_16, or vit_tiny (a small ViT for CPU runs and the demo)
PRETRAINED = "IMAGENET1K_V1"  # IMAGENET1K_V1, IMAGENET1K_SWAG_LINEAR_V1, IMAGENET1K_SWAG_E2E_V1, none, or a file
IMAGE_SIZE = 0  # model input size; 0 = the weights' own (224, or 384 for SWAG_E2E)
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
SEED = 0  # model init, shuffling and augmentation
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
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from vitlrp import cli, plots
from vitlrp.cub import CUBDataset, load_cub
from vitlrp.errors import UserError
from vitlrp.fileio import append_csv_row, ensure_writable_dir, write_csv, write_json
from vitlrp.models import (
    WEIGHTS,
    build_vit,
    check_arch,
    check_classes,
    check_image_size,
    default_image_size,
    load_checkpoint,
    load_pretrained,
    save_checkpoint,
    weights_preprocessing,
)
from vitlrp.runfolder import FolderLock, RunFolder
from vitlrp.runtime import Distributed, resolve_device, seed_everything
from vitlrp.training import (
    SUMMARY_FIELDS,
    EpochSampler,
    NonFiniteLoss,
    ShardSampler,
    WarmupCosine,
    amp_dtype,
    evaluate,
    make_loader,
    make_optimizer,
    train_one_epoch,
)

# every name this script writes into OUTPUT_DIR (a finished run removes older runs' files of these names only)
OUTPUT_NAMES = ("config.json", "summary.csv", "curves.png")


def check_config(cfg, dist):
    for name in ("EPOCHS", "BATCH_SIZE"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    for name in ("IMAGE_SIZE", "WARMUP_EPOCHS", "NUM_WORKERS", "STOP_AFTER"):  # SEED: cli checks every seed
        if getattr(cfg, name) < 0:
            raise UserError(f"{name} must be 0 or more, got {getattr(cfg, name)}")
    for name in ("LR", "WEIGHT_DECAY", "LABEL_SMOOTHING", "GRAD_CLIP"):
        if not math.isfinite(getattr(cfg, name)):
            raise UserError(f"{name} must be a finite number, got {getattr(cfg, name)}")
    if not cfg.LR > 0:
        raise UserError(f"LR must be positive, got {cfg.LR}")
    if cfg.WEIGHT_DECAY < 0 or not 0 <= cfg.LABEL_SMOOTHING < 1 or cfg.GRAD_CLIP < 0 or cfg.WARMUP_EPOCHS < 0:
        raise UserError("WEIGHT_DECAY, GRAD_CLIP and WARMUP_EPOCHS must be >= 0 and LABEL_SMOOTHING in [0, 1)")
    check_arch(cfg.MODEL)
    if cfg.IMAGE_SIZE:
        check_image_size(cfg.MODEL, cfg.IMAGE_SIZE)
    if cfg.MODEL != "vit_b_16" and cfg.PRETRAINED in WEIGHTS:
        raise UserError(f"{cfg.MODEL} has no ImageNet weights: pass --pretrained none")
    if cfg.AMP.lower() not in ("auto", "bf16", "fp16", "none"):
        raise UserError(f"AMP must be auto, bf16, fp16 or none, got {cfg.AMP!r}")
    if cfg.BATCH_SIZE % dist.world_size:
        raise UserError(f"BATCH_SIZE {cfg.BATCH_SIZE} must be divisible by the {dist.world_size} processes")
    if cfg.RESUME and cfg.OVERWRITE:
        raise UserError("--resume true continues the checkpoints, --overwrite true replaces them: choose one")


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
    if config["PRETRAINED"] not in WEIGHTS and config["PRETRAINED"].lower() != "none":
        config["PRETRAINED"] = str(Path(config["PRETRAINED"]).resolve())
    return config


# A resumed run continues the same optimisation: these settings must match the checkpoint's.
RECIPE = ("MODEL", "PRETRAINED", "IMAGE_SIZE", "EPOCHS", "BATCH_SIZE", "LR", "WEIGHT_DECAY", "WARMUP_EPOCHS",
          "LABEL_SMOOTHING", "GRAD_CLIP", "AMP", "SEED")


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
        if name in saved and saved[name] != now[name] and saved[name] != getattr(cfg, name):
            raise UserError(f"--resume true with {name}={getattr(cfg, name)!r}, but {path} was trained with "
                            f"{name}={saved[name]!r}; use the same settings (or start a new run in another "
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
    as_text = [{k: str(v) for k, v in r.items()} for r in resume.get("summary_rows", [resume["summary_row"]])]
    if "summary_rows" not in resume:  # written before checkpoints carried the whole history
        print(f"note: {last_path} holds only the summary row of its epoch {resume['epoch']}; {summary_path} "
              "restarts there", file=sys.stderr)
    on_disk = _read_rows(summary_path)
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
    resume = load_checkpoint(last_path)
    check_classes(resume, ann.class_names, cfg.DATASET_ROOT, fix="resume on the dataset it was trained on "
                  "(--dataset-root) or start afresh in another --checkpoint-dir")
    missing = [k for k in ("optimizer", "scheduler", "scaler", "epoch", "best_acc") if k not in resume]
    if missing:
        raise UserError(f"{last_path} holds no training state ({', '.join(missing)}): --resume true needs the "
                        "vit_cub_last.pt this script writes")
    _check_same_recipe(cfg, resume, last_path)
    return resume


def initial_model(cfg, num_classes, image_size, pretrained):
    """The seeded model before training: ImageNet (or file) weights unless resuming, a small random head."""
    seed_everything(cfg.SEED)
    model = build_vit(cfg.MODEL, num_classes, image_size)
    if pretrained and cfg.PRETRAINED.lower() != "none":
        load_pretrained(model, cfg.PRETRAINED)
    elif cfg.PRETRAINED.lower() == "none":
        # torchvision zero-initialises the head; from scratch a small random head trains faster
        torch.nn.init.trunc_normal_(model.heads.head.weight, std=0.02)
    return model


def main(cfg):
    with contextlib.ExitStack() as held:  # releases the folders' locks however the run ends
        return train(cfg, held)


def train(cfg, held):
    dist = Distributed()
    check_config(cfg, dist)
    device = dist.init(resolve_device(cfg.DEVICE))
    ann = load_cub(cfg.DATASET_ROOT)
    for split in ("train", "test"):
        if not len(ann.split_indices(split)):
            raise UserError(f"the {split} split of {cfg.DATASET_ROOT} is empty (train_test_split.txt marks no "
                            f"image as {split}); training needs images in both splits")
    ckpt_dir, out_dir = Path(cfg.CHECKPOINT_DIR), Path(cfg.OUTPUT_DIR)
    last_path, best_path = ckpt_dir / "vit_cub_last.pt", ckpt_dir / "vit_cub_best.pt"
    if dist.is_main:
        held.enter_context(FolderLock(ckpt_dir, "CHECKPOINT_DIR"))  # one run at a time writes checkpoints
        ensure_writable_dir(out_dir, "OUTPUT_DIR")
    check_checkpoint_dir(cfg, ckpt_dir, last_path)  # under the lock: a run that ended meanwhile is seen
    resume = load_resume(cfg, ann, last_path) if cfg.RESUME else None
    image_size = cfg.IMAGE_SIZE or default_image_size(cfg.MODEL, cfg.PRETRAINED)
    preprocessing = weights_preprocessing(cfg.PRETRAINED, image_size)
    model = initial_model(cfg, ann.num_classes, image_size, pretrained=resume is None).to(device)
    dtype = amp_dtype(cfg.AMP, device)
    run = None
    if dist.is_main:  # entered once the run can start: a refused one leaves OUTPUT_DIR as it was
        if resume is None:
            _earlier_run_note(out_dir, ckpt_dir)
        # a fresh run's folder must not show the older run's epochs while it is incomplete
        run = held.enter_context(RunFolder(out_dir, "OUTPUT_DIR", OUTPUT_NAMES,
                                           clear_first=() if resume is not None else ("summary.csv", "curves.png"),
                                           overwrite=cfg.OVERWRITE))
        if resume is not None:
            mark_resumable(run, ckpt_dir)

    # an unreadable image is skipped and reported, not a traceback after an epoch of work
    train_set = CUBDataset(ann, "train", preprocessing, train_augment=True, report_errors=True)
    test_set = CUBDataset(ann, "test", preprocessing, report_errors=True)
    workers = min(cfg.NUM_WORKERS, os.cpu_count() or 1)
    sampler = EpochSampler(len(train_set), cfg.SEED, shuffle=True, rank=dist.rank, world=dist.world_size)
    per_rank = cfg.BATCH_SIZE // dist.world_size
    train_loader = make_loader(train_set, per_rank, workers, device, sampler=sampler, seeded=True)
    test_loader = make_loader(test_set, per_rank, workers, device,
                              sampler=ShardSampler(len(test_set), dist.rank, dist.world_size))

    optimizer = make_optimizer(model, cfg.LR, cfg.WEIGHT_DECAY)
    steps = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(cfg.WARMUP_EPOCHS * steps,
                                                                          cfg.EPOCHS * steps))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.LABEL_SMOOTHING)
    start_epoch, best_acc = 1, -1.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        start_epoch, best_acc = resume["epoch"] + 1, resume["best_acc"]
    train_model = model
    if dist.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.COMPILE:
        train_model = torch.compile(train_model)

    summary_path = out_dir / "summary.csv"
    rows = []
    if dist.is_main:
        write_json(out_dir / "config.json", {**recorded_config(cfg), "world_size": dist.world_size,
                                             "preprocessing": preprocessing.to_dict(), "device": str(device)})
        if resume is not None:
            rows = resumed_rows(resume, summary_path, last_path)
            write_csv(summary_path, rows, SUMMARY_FIELDS)
            plots.training_curves(rows, out_dir / "curves.png")
        print(f"Using device: {device}" + (f" x{dist.world_size} processes" if dist.enabled else ""))
        print(f"Dataset: {len(train_set)} train / {len(test_set)} test images, {ann.num_classes} classes")
        print(f"Model: {cfg.MODEL} ({cfg.PRETRAINED}), input {image_size}px, AMP {dtype or 'none'}"
              + (f", resuming after epoch {start_epoch - 1}" if resume else ""))

    last_epoch = cfg.EPOCHS if not cfg.STOP_AFTER else min(cfg.EPOCHS, start_epoch - 1 + cfg.STOP_AFTER)
    saved_epoch = resume["epoch"] if resume is not None else None  # the epoch the last checkpoint on disk holds
    earlier = resume is None and (last_path.exists() or best_path.exists())  # an earlier run's, with --overwrite
    skipped = (0, 0)
    for epoch in range(start_epoch, last_epoch + 1):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        try:
            stats = train_one_epoch(train_model, train_loader, optimizer, scheduler, scaler, criterion, device,
                                    dtype, cfg.GRAD_CLIP, desc=f"epoch {epoch}/{cfg.EPOCHS}",
                                    progress=dist.is_main)
        except NonFiniteLoss as err:
            raise UserError(f"{err} in epoch {epoch}; stopped, " + _on_disk(saved_epoch, last_path, best_path, earlier)
                            + " (try a lower --lr or --amp bf16)") from None
        loss_sum, seen, train_skipped = dist.all_reduce_sum(
            [stats["train_loss"] * stats["seen"], stats["seen"], len(stats["errors"])], device)
        if not seen:
            raise UserError(f"no train image of {cfg.DATASET_ROOT} could be read (e.g. {stats['errors'][:1]}); "
                            "`python scripts/download_cub.py --verify true` lists the unreadable files")
        metrics = evaluate(model, test_loader, device, dtype, dist, progress=dist.is_main)
        if not metrics["count"]:
            raise UserError(f"no test image of {cfg.DATASET_ROOT} could be read (e.g. {metrics['errors'][:1]}); "
                            "`python scripts/download_cub.py --verify true` lists the unreadable files")
        skipped = (int(train_skipped), metrics["skipped"])
        row = {"epoch": epoch, "lr": f"{stats['lr']:.6g}", "train_loss": f"{loss_sum / seen:.5f}",
               "test_loss": f"{metrics['test_loss']:.5f}", "top1": f"{metrics['top1']:.5f}",
               "top5": f"{metrics['top5']:.5f}", "train_img_per_s": f"{stats['train_img_per_s'] * dist.world_size:.1f}",
               "epoch_seconds": f"{time.perf_counter() - t0:.1f}", "skipped_images": str(sum(skipped))}
        is_best = metrics["top1"] > best_acc
        best_acc = max(best_acc, metrics["top1"])
        if dist.is_main:
            if sum(skipped) and epoch == start_epoch:
                first = (stats["errors"] + metrics["errors"])[:1]
                print(f"warning: skipped {skipped[0]} unreadable train and {skipped[1]} test image(s) in each epoch "
                      f"(left out of the loss and the accuracy){': ' + first[0] if first else ''}")
            meta = dict(epoch=epoch, best_acc=best_acc, config=recorded_config(cfg), summary_row=row)
            # best before last: killed in between, the resumed run repeats this epoch (same batches) and saves
            # its best again; the other way round last.pt's best_acc would count a best epoch best.pt never got
            if is_best:
                save_checkpoint(best_path, model, cfg.MODEL, ann.class_names, preprocessing, **meta)
            rows.append(row)
            # the last checkpoint carries the training state --resume needs and the run's summary rows; the best
            # one only what a model needs
            save_checkpoint(last_path, model, cfg.MODEL, ann.class_names, preprocessing, **meta,
                            summary_rows=rows, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            scaler=scaler.state_dict())
            if resume is None and epoch == start_epoch:  # from now on --resume true continues this run
                mark_resumable(run, ckpt_dir)
            append_csv_row(summary_path, row, SUMMARY_FIELDS)
            plots.training_curves(rows, out_dir / "curves.png")
            print(f"epoch {epoch}/{cfg.EPOCHS}  train loss {float(row['train_loss']):.3f}  "
                  f"test loss {metrics['test_loss']:.3f}  top-1 {metrics['top1']:.2%}  top-5 {metrics['top5']:.2%}  "
                  f"{float(row['train_img_per_s']):.0f} img/s  {row['epoch_seconds']}s"
                  + ("  *best*" if is_best else ""))
        saved_epoch = epoch
        dist.barrier()
    if dist.is_main:
        if last_epoch == cfg.EPOCHS:
            run.finish(["config.json", "summary.csv"] + (["curves.png"] if rows else []))
        else:  # a pause, not a failure: the folder says which epochs it holds and how to go on
            mark_resumable(run, ckpt_dir, f"This run stopped after epoch {last_epoch} of {cfg.EPOCHS} as asked "
                                          f"(--stop-after {cfg.STOP_AFTER}): summary.csv and curves.png show those "
                                          "epochs.")
        done = ("Finished" if last_epoch == cfg.EPOCHS
                else f"Stopped after epoch {last_epoch} (resume with --resume true)")
        print(f"{done}. Best test top-1 {best_acc:.2%}; checkpoints: {best_path}, {last_path}"
              + (f"; {skipped[0]} train and {skipped[1]} test images were unreadable and skipped" if sum(skipped)
                 else ""))
    dist.close()
    return 0


if __name__ == "__main__":
    cli.run(main, globals())

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
STOP_AFTER = 0  # stop after this many epochs in this run (0 = run to EPOCHS); continue with --resume true
OUTPUT_DIR = "results/train"  # config.json, summary.csv, curves.png
# -------------------------------------------------------------------------------------
import os
import time
from pathlib import Path

import torch

from vitlrp import cli, plots
from vitlrp.cub import CUBDataset, load_cub
from vitlrp.errors import UserError
from vitlrp.fileio import append_csv_row, ensure_writable_dir, write_csv, write_json
from vitlrp.models import (
    ARCHS,
    WEIGHTS,
    build_vit,
    default_image_size,
    load_checkpoint,
    load_pretrained,
    save_checkpoint,
    weights_preprocessing,
)
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


def check_config(cfg, dist):
    for name in ("EPOCHS", "BATCH_SIZE"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    if not cfg.LR > 0:
        raise UserError(f"LR must be positive, got {cfg.LR}")
    if cfg.WEIGHT_DECAY < 0 or not 0 <= cfg.LABEL_SMOOTHING < 1 or cfg.GRAD_CLIP < 0 or cfg.WARMUP_EPOCHS < 0:
        raise UserError("WEIGHT_DECAY, GRAD_CLIP and WARMUP_EPOCHS must be >= 0 and LABEL_SMOOTHING in [0, 1)")
    if cfg.MODEL not in ARCHS:
        raise UserError(f"unknown MODEL {cfg.MODEL!r}: choose one of {', '.join(ARCHS)}")
    if cfg.MODEL != "vit_b_16" and cfg.PRETRAINED in WEIGHTS:
        raise UserError(f"{cfg.MODEL} has no ImageNet weights: pass --pretrained none")
    if cfg.AMP.lower() not in ("auto", "bf16", "fp16", "none"):
        raise UserError(f"AMP must be auto, bf16, fp16 or none, got {cfg.AMP!r}")
    if cfg.BATCH_SIZE % dist.world_size:
        raise UserError(f"BATCH_SIZE {cfg.BATCH_SIZE} must be divisible by the {dist.world_size} processes")


def main(cfg):
    dist = Distributed()
    check_config(cfg, dist)
    device = dist.init(resolve_device(cfg.DEVICE))
    ann = load_cub(cfg.DATASET_ROOT)
    ckpt_dir, out_dir = Path(cfg.CHECKPOINT_DIR), Path(cfg.OUTPUT_DIR)
    last_path, best_path = ckpt_dir / "vit_cub_last.pt", ckpt_dir / "vit_cub_best.pt"
    if cfg.RESUME and not last_path.is_file():
        raise UserError(f"--resume true but {last_path} does not exist: pass the --checkpoint-dir of the run "
                        "to continue, or start afresh without --resume")
    if dist.is_main:
        ensure_writable_dir(ckpt_dir, "CHECKPOINT_DIR")
        ensure_writable_dir(out_dir, "OUTPUT_DIR")
    resume = load_checkpoint(last_path) if cfg.RESUME else None
    if resume is not None and resume["class_names"] != ann.class_names:
        raise UserError(f"{last_path} was trained on other classes than {cfg.DATASET_ROOT}")
    if resume is not None:
        _check_same_recipe(cfg, resume, last_path)

    image_size = cfg.IMAGE_SIZE or default_image_size(cfg.MODEL, cfg.PRETRAINED)
    preprocessing = weights_preprocessing(cfg.PRETRAINED, image_size)
    seed_everything(cfg.SEED)
    model = build_vit(cfg.MODEL, ann.num_classes, image_size)
    if resume is None and cfg.PRETRAINED.lower() != "none":
        load_pretrained(model, cfg.PRETRAINED)
    elif cfg.PRETRAINED.lower() == "none":
        # torchvision zero-initialises the head; from scratch a small random head trains faster
        torch.nn.init.trunc_normal_(model.heads.head.weight, std=0.02)
    model.to(device)
    dtype = amp_dtype(cfg.AMP, device)

    train_set = CUBDataset(ann, "train", preprocessing, train_augment=True)
    test_set = CUBDataset(ann, "test", preprocessing)
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
        write_json(out_dir / "config.json", {**cli.config_dict(cfg), "world_size": dist.world_size,
                                             "preprocessing": preprocessing.to_dict(), "device": str(device)})
        if resume is not None:
            rows = _summary_until(summary_path, resume)
        elif summary_path.exists():
            summary_path.unlink()
        print(f"Using device: {device}" + (f" x{dist.world_size} processes" if dist.enabled else ""))
        print(f"Dataset: {len(train_set)} train / {len(test_set)} test images, {ann.num_classes} classes")
        print(f"Model: {cfg.MODEL} ({cfg.PRETRAINED}), input {image_size}px, AMP {dtype or 'none'}"
              + (f", resuming after epoch {start_epoch - 1}" if resume else ""))

    last_epoch = cfg.EPOCHS if not cfg.STOP_AFTER else min(cfg.EPOCHS, start_epoch - 1 + cfg.STOP_AFTER)
    for epoch in range(start_epoch, last_epoch + 1):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        try:
            stats = train_one_epoch(train_model, train_loader, optimizer, scheduler, scaler, criterion, device,
                                    dtype, cfg.GRAD_CLIP, desc=f"epoch {epoch}/{cfg.EPOCHS}",
                                    progress=dist.is_main)
        except NonFiniteLoss as err:
            raise UserError(f"{err} in epoch {epoch}; stopped, {last_path} keeps the last good epoch "
                            "(try a lower --lr or --amp bf16)") from None
        loss_sum, seen = dist.all_reduce_sum([stats["train_loss"] * stats["seen"], stats["seen"]], device)
        metrics = evaluate(model, test_loader, device, dtype, dist, progress=dist.is_main)
        row = {"epoch": epoch, "lr": f"{stats['lr']:.6g}", "train_loss": f"{loss_sum / seen:.5f}",
               "test_loss": f"{metrics['test_loss']:.5f}", "top1": f"{metrics['top1']:.5f}",
               "top5": f"{metrics['top5']:.5f}", "train_img_per_s": f"{stats['train_img_per_s'] * dist.world_size:.1f}",
               "epoch_seconds": f"{time.perf_counter() - t0:.1f}"}
        is_best = metrics["top1"] > best_acc
        best_acc = max(best_acc, metrics["top1"])
        if dist.is_main:
            state = dict(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                         scaler=scaler.state_dict(), epoch=epoch, best_acc=best_acc, config=cli.config_dict(cfg),
                         summary_row=row)
            save_checkpoint(last_path, model, cfg.MODEL, ann.class_names, preprocessing, **state)
            if is_best:
                save_checkpoint(best_path, model, cfg.MODEL, ann.class_names, preprocessing, **state)
            append_csv_row(summary_path, row, SUMMARY_FIELDS)
            rows.append(row)
            plots.training_curves(rows, out_dir / "curves.png")
            print(f"epoch {epoch}/{cfg.EPOCHS}  train loss {float(row['train_loss']):.3f}  "
                  f"test loss {metrics['test_loss']:.3f}  top-1 {metrics['top1']:.2%}  top-5 {metrics['top5']:.2%}  "
                  f"{float(row['train_img_per_s']):.0f} img/s  {row['epoch_seconds']}s"
                  + ("  *best*" if is_best else ""))
        dist.barrier()
    if dist.is_main:
        done = ("Finished" if last_epoch == cfg.EPOCHS
                else f"Stopped after epoch {last_epoch} (resume with --resume true)")
        print(f"{done}. Best test top-1 {best_acc:.2%}; checkpoints: {best_path}, {last_path}")
    dist.close()
    return 0


# A resumed run continues the same optimisation: these settings must match the checkpoint's.
RECIPE = ("MODEL", "PRETRAINED", "IMAGE_SIZE", "EPOCHS", "BATCH_SIZE", "LR", "WEIGHT_DECAY", "WARMUP_EPOCHS",
          "LABEL_SMOOTHING", "GRAD_CLIP", "AMP", "SEED")


def _check_same_recipe(cfg, resume, path):
    saved = resume.get("config", {})
    for name in RECIPE:
        if name in saved and saved[name] != getattr(cfg, name):
            raise UserError(f"--resume true with {name}={getattr(cfg, name)!r}, but {path} was trained with "
                            f"{name}={saved[name]!r}; use the same settings (or start a new run in another "
                            "--checkpoint-dir)")


def _summary_until(path, resume):
    """summary.csv rows up to the resumed epoch (a row the crash lost is restored from the checkpoint)."""
    import csv

    rows = []
    if path.exists():
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= resume["epoch"]]
    if not rows or int(rows[-1]["epoch"]) < resume["epoch"]:
        rows.append(resume["summary_row"])
    write_csv(path, rows, SUMMARY_FIELDS)
    return rows


if __name__ == "__main__":
    cli.run(main, globals())

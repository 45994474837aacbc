"""The fine-tuning loop: optimizer, schedule, deterministic sampling, one epoch of training, evaluation, and the
:class:`Trainer` that holds them for a run and steps it one epoch at a time.

Determinism: every training item is augmented under its own seed, derived from (seed, epoch, position), and
the shuffling of epoch ``e`` depends only on (seed, e). So a resumed run, a run with another number of
loader workers, and an uninterrupted run see the same batches (bit-identical on the CPU).
"""
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from .families import forward_logits

# one row per epoch; the val_* columns are empty when no validation split is held out (VAL_FRACTION 0)
SUMMARY_FIELDS = ["epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5", "test_loss", "top1", "top5",
                  "train_img_per_s", "epoch_seconds", "skipped_images"]


class NonFiniteLoss(RuntimeError):
    pass


class WarmupCosine:
    """Linear warmup for ``warmup`` steps, then cosine decay to zero at ``total`` steps (a LambdaLR factor)."""

    def __init__(self, warmup, total):
        self.warmup, self.total = int(warmup), max(int(total), 1)

    def __call__(self, step):
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


# the tokens and position embeddings of torchvision's, timm's and Hugging Face's ViTs (class, register and
# distillation tokens): no weight decay on them, as on biases and norms
NO_DECAY = ("class_token", "pos_embedding", "cls_token", "reg_token", "dist_token", "pos_embed", "position_embeddings",
            "distillation_token")


def make_optimizer(model, lr, weight_decay):
    """AdamW; no weight decay on biases, norms, the tokens and position embeddings (:data:`NO_DECAY`)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(NO_DECAY) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


class EpochSampler(Sampler):
    """Yields ``(index, item_seed)``; the order of epoch ``e`` depends only on ``(seed, e)``.

    With several processes each rank takes every ``world``-th item (padded, like DistributedSampler).
    """

    def __init__(self, n, seed, shuffle=True, rank=0, world=1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return math.ceil(self.n / self.world)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        seeds = rng.integers(0, 2**62, size=self.n)
        pad = len(self) * self.world - self.n
        order = np.concatenate([order, order[:pad]])
        for i in order[self.rank::self.world]:
            yield int(i), int(seeds[i])


class SeededItems(Dataset):
    """Apply a dataset's random augmentation under the seed the sampler hands out with each index."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def make_loader(dataset, batch_size, num_workers, device, sampler=None, seeded=False, persistent=True):
    """The project's DataLoader: no shuffling (samplers decide the order), pinned memory on CUDA, prefetching.

    ``seeded``: apply each item's augmentation under the seed the sampler hands out (see :class:`EpochSampler`).
    ``persistent``: keep the workers between epochs (a loader that is iterated once need not).
    """
    kwargs = {}
    if num_workers > 0:
        kwargs = dict(persistent_workers=persistent, prefetch_factor=4)
    return DataLoader(SeededItems(dataset) if seeded else dataset, batch_size=batch_size, sampler=sampler,
                      shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda", **kwargs)


class ShardSampler(Sampler):
    """Rank ``r`` of ``w`` takes items ``r, r+w, ...`` once each (no padding, so sums over ranks are exact)."""

    def __init__(self, n, rank=0, world=1):
        self.indices = list(range(rank, n, world))

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def amp_dtype(amp, device):
    """``'auto'`` → bf16 on CUDA, none on the CPU."""
    amp = amp.lower()
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def readable_rows(batch, device):
    """A bool mask of the batch rows whose image loaded (``CUBDataset(report_errors=True)``), or None if all did.

    None keeps the common case on exactly the code path of a clean dataset (bit-identical results).
    """
    errors = batch.get("error")
    if not errors or not any(errors):
        return None
    return torch.tensor([not e for e in errors], device=device)


def _failed(batch):
    return [e for e in batch.get("error", ()) if e]


def weights_finite(model):
    """True when every parameter and buffer of ``model`` is finite (one device sync)."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


@dataclass(frozen=True)
class Optimization:
    """What a training step needs besides the model and the batch: optimizer, schedule, gradient scaler, loss, the
    gradient-norm clip (0 = off) and the autocast dtype (None = off)."""

    optimizer: object
    scheduler: object
    scaler: object
    criterion: object
    grad_clip: float = 0.0
    dtype: object = None


def train_one_epoch(model, loader, opt, device, desc="train", progress=True, check_every=10):
    """One pass over ``loader`` with the :class:`Optimization` ``opt``; returns ``{'train_loss', 'train_img_per_s',
    'lr', 'seen', 'errors'}`` (this rank's).

    Rows whose image failed to load (an ``error`` field) are left out of the loss; their messages are in
    ``errors``. The batch still runs forward and backward (so DDP ranks stay in step), a batch of only failed
    rows with a zero loss. Raises :class:`NonFiniteLoss` when the loss or, after the epoch, a weight becomes NaN or
    infinite (the loss is checked every ``check_every`` steps to avoid a device sync per step).
    """
    optimizer, scheduler, scaler, criterion, grad_clip, dtype = (
        opt.optimizer, opt.scheduler, opt.scaler, opt.criterion, opt.grad_clip, opt.dtype)
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    seen, errors, start = 0, [], time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False)
    for step, batch in enumerate(bar):
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        ok = readable_rows(batch, device)
        errors += _failed(batch)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if ok is None:
                loss = criterion(forward_logits(model, images), labels)
            else:
                logits = forward_logits(model, images)
                loss = criterion(logits[ok], labels[ok]) if ok.any() else logits.sum() * 0.0
                labels = labels[ok]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if len(labels):
            loss_sum += loss.detach().double() * len(labels)
            seen += len(labels)
        if (step + 1) % check_every == 0 or step + 1 == len(loader):
            mean = loss_sum.item() / max(seen, 1)
            if not math.isfinite(mean):
                raise NonFiniteLoss(f"the training loss became {mean} at step {step + 1}")
            bar.set_postfix(loss=f"{mean:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                            img_s=f"{seen / (time.perf_counter() - start):.0f}")
    if not weights_finite(model):  # the last steps' updates can overflow after the last loss check
        raise NonFiniteLoss("the weights became NaN or infinite at the end of the epoch")
    elapsed = time.perf_counter() - start
    return {"train_loss": loss_sum.item() / max(seen, 1), "train_img_per_s": seen / elapsed,
            "lr": scheduler.get_last_lr()[0], "seen": seen, "errors": errors}


@torch.no_grad()
def evaluate(model, loader, device, dtype, dist=None, progress=True, desc="eval"):
    """Top-1, top-5 and mean ``loss`` over ``loader`` (summed over ranks when ``dist`` is given).

    Rows whose image failed to load are left out of every figure; ``skipped`` counts them (over ranks), ``errors``
    holds this rank's messages and ``count`` the images scored.
    """
    model.eval()
    totals = [0.0, 0.0, 0.0, 0.0, 0.0]  # loss sum, top-1 hits, top-5 hits, count, skipped
    errors = []
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        ok = readable_rows(batch, device)
        errors += _failed(batch)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = forward_logits(model, images).float()
        if ok is not None:
            totals[4] += len(labels) - int(ok.sum())
            logits, labels = logits[ok], labels[ok]
            if not len(labels):
                continue
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        totals[0] += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        totals[1] += (top[:, 0] == labels).sum().item()
        totals[2] += (top == labels[:, None]).any(1).sum().item()
        totals[3] += len(labels)
    if dist is not None:
        totals = dist.all_reduce_sum(totals, device)
    n = max(totals[3], 1)
    return {"loss": totals[0] / n, "top1": totals[1] / n, "top5": totals[2] / n, "count": int(totals[3]),
            "skipped": int(totals[4]), "errors": errors}


@dataclass(frozen=True)
class Recipe:
    """How a run trains: the settings a resumed run must share with the run it continues (and the workers)."""

    epochs: int
    batch_size: int  # global: split over the processes
    lr: float
    weight_decay: float
    warmup_epochs: int
    label_smoothing: float
    grad_clip: float
    amp: str
    seed: int
    num_workers: int = 0  # per process, at most the CPU count
    compile: bool = False


class Trainer:
    """One run's model, loaders, optimizer, schedule and scaler; :meth:`epoch` trains one epoch and evaluates.

    ``eval_sets``: name → dataset scored after every epoch (e.g. ``val`` and ``test``). ``resume``: a last
    checkpoint whose model and training state are restored before the model is wrapped (DDP, torch.compile).
    """

    def __init__(self, model, train_set, eval_sets, recipe, dist, device, resume=None):
        self.model, self.recipe, self.dist, self.device = model, recipe, dist, device
        self.dtype = amp_dtype(recipe.amp, device)
        workers, per_rank = min(recipe.num_workers, os.cpu_count() or 1), recipe.batch_size // dist.world_size
        self.sampler = EpochSampler(len(train_set), recipe.seed, shuffle=True, rank=dist.rank, world=dist.world_size)
        self.train_loader = make_loader(train_set, per_rank, workers, device, sampler=self.sampler, seeded=True)
        self.eval_loaders = {name: make_loader(data, per_rank, workers, device,
                                               sampler=ShardSampler(len(data), dist.rank, dist.world_size))
                             for name, data in eval_sets.items()}
        self.optimizer = make_optimizer(model, recipe.lr, recipe.weight_decay)
        steps = len(self.train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(recipe.warmup_epochs * steps, recipe.epochs * steps))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        if resume is not None:
            model.load_state_dict(resume["model"])
            for part in ("optimizer", "scheduler", "scaler"):
                getattr(self, part).load_state_dict(resume[part])
        self.train_model = model
        if dist.enabled:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if recipe.compile:
            self.train_model = torch.compile(self.train_model)

    def state(self):
        """The training state a last checkpoint carries for a resumed run."""
        return {part: getattr(self, part).state_dict() for part in ("optimizer", "scheduler", "scaler")}

    def epoch(self, epoch, progress=True):
        """Train epoch ``epoch`` (1-based), then score every eval set. Figures over all processes: ``lr``,
        ``train_loss``, ``seen``, ``skipped`` (unreadable training images), ``errors`` (this rank's messages),
        ``img_per_s``, ``seconds`` and per eval set the dict of :func:`evaluate`. Raises :class:`NonFiniteLoss`."""
        start = time.perf_counter()
        self.sampler.set_epoch(epoch)
        opt = Optimization(self.optimizer, self.scheduler, self.scaler, self.criterion, self.recipe.grad_clip,
                           self.dtype)
        stats = train_one_epoch(self.train_model, self.train_loader, opt, self.device,
                                desc=f"epoch {epoch}/{self.recipe.epochs}", progress=progress)
        loss_sum, seen, skipped = self.dist.all_reduce_sum(
            [stats["train_loss"] * stats["seen"], stats["seen"], len(stats["errors"])], self.device)
        scores = {name: evaluate(self.model, loader, self.device, self.dtype, self.dist, progress, desc=name)
                  for name, loader in self.eval_loaders.items()}
        return {"lr": stats["lr"], "train_loss": loss_sum / max(seen, 1), "seen": int(seen), "skipped": int(skipped),
                "errors": stats["errors"], "img_per_s": stats["train_img_per_s"] * self.dist.world_size,
                "seconds": time.perf_counter() - start, **scores}


def summary_row(epoch, figures):
    """The ``summary.csv`` row of an epoch's :meth:`Trainer.epoch` figures (val columns empty without ``val``)."""
    val, test = figures.get("val"), figures["test"]
    skipped = figures["skipped"] + test["skipped"] + (val["skipped"] if val else 0)
    return {"epoch": epoch, "lr": f"{figures['lr']:.6g}", "train_loss": f"{figures['train_loss']:.5f}",
            "val_loss": f"{val['loss']:.5f}" if val else "", "val_top1": f"{val['top1']:.5f}" if val else "",
            "val_top5": f"{val['top5']:.5f}" if val else "", "test_loss": f"{test['loss']:.5f}",
            "top1": f"{test['top1']:.5f}", "top5": f"{test['top5']:.5f}",
            "train_img_per_s": f"{figures['img_per_s']:.1f}", "epoch_seconds": f"{figures['seconds']:.1f}",
            "skipped_images": str(skipped)}

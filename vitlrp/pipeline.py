"""Steps the explaining scripts share: checkpoint + dataset with checks, the seeded sample, batches, methods."""
import random
from dataclasses import dataclass

import torch
from torch.utils.data import Subset

from . import peers
from .cub import CUBDataset, load_cub
from .errors import UserError
from .explain import (
    DTYPES,
    PRESETS,
    SCHEDULE_HELP,
    Explainer,
    check_gamma,
    encoder_blocks,
    input_x_gradient,
    lin_gamma_value,
    schedule_values,
)
from .models import check_classes, load_checkpoint, model_from_checkpoint
from .training import make_loader


def load_model_and_split(checkpoint_path, dataset_root, split, device, annotations=False):
    """``(checkpoint, model on device, dataset)``; every mismatch is a one-line UserError before any work."""
    ckpt = load_checkpoint(checkpoint_path)
    ann = load_cub(dataset_root)
    check_classes(ckpt, ann.class_names, dataset_root)
    model, preprocessing = model_from_checkpoint(ckpt)
    dataset = CUBDataset(ann, split, preprocessing, annotations=annotations, report_errors=True)
    return ckpt, model.to(device), dataset


def check_run_options(cfg):
    """The options every explaining script shares: ``TARGET``, ``DTYPE``, ``IMPL``, ``BATCH_SIZE``, ``NUM_WORKERS``."""
    if cfg.TARGET not in ("pred", "label"):
        raise UserError(f"TARGET must be pred or label, got {cfg.TARGET!r}")
    if cfg.DTYPE not in DTYPES:
        raise UserError(f"DTYPE must be one of {', '.join(DTYPES)}, got {cfg.DTYPE!r}")
    if cfg.IMPL not in ("fused", "zennit"):
        raise UserError(f"IMPL must be fused or zennit, got {cfg.IMPL!r}")
    if cfg.BATCH_SIZE <= 0:
        raise UserError(f"BATCH_SIZE must be positive, got {cfg.BATCH_SIZE}")
    if cfg.NUM_WORKERS < 0:
        raise UserError(f"NUM_WORKERS must be >= 0 (0 = decode in this process), got {cfg.NUM_WORKERS}")


def check_scoring_options(cfg):
    """The scoring options of the evaluation and the sweep: ``PERTURB_STEPS``, ``PART_TOLERANCE_PX``."""
    if cfg.PERTURB_STEPS < 2:
        raise UserError(f"PERTURB_STEPS must be at least 2, got {cfg.PERTURB_STEPS}")
    if cfg.PART_TOLERANCE_PX < 0:
        raise UserError(f"PART_TOLERANCE_PX must be >= 0, got {cfg.PART_TOLERANCE_PX}")


def check_perturb_steps_fit(steps, model):
    """More MoRF/LeRF steps than the model has patches would repeat curve points and only cost time."""
    patches = (model.image_size // model.patch_size) ** 2
    if steps > patches:
        raise UserError(f"PERTURB_STEPS must be at most the number of patches ({patches}), got {steps}")


def check_schedules_fit(named_schedules, model):
    """Every Linear-γ schedule ``(name, spec)`` that lists values must give one per encoder block of ``model``:
    checked once the model is known and before any output, not when the first batch is explained."""
    blocks = max(len(encoder_blocks(model)), 1)
    for name, spec in named_schedules:
        schedule_values(spec, blocks, name)


def lrp_schedules(methods):
    """``(name, Linear-γ spec)`` of the γ methods among ``methods``, for :func:`check_schedules_fit`."""
    return [(f"method {m.name!r}: its Linear γ", m.lin_gamma) for m in methods if m.kind == "lrp"]


def sample_indices(n_total, n, seed, what="NUM_SAMPLES", split="test"):
    """``random.seed(seed)`` then ``n`` distinct indices (``n = 0``: all, in order); same images whatever else."""
    if n < 0:
        raise UserError(f"{what} must be >= 0, got {n}")
    if n_total == 0:
        raise UserError(f"the {split} split has no images; check the dataset's train_test_split.txt or choose "
                        "another split")
    if n > n_total:
        raise UserError(f"{what}={n} is larger than the {split} split ({n_total} images); use at most {n_total} "
                        "or 0 for all")
    if n == 0:
        return list(range(n_total))
    random.seed(seed)
    return random.sample(range(n_total), n)


def loader(dataset, indices, batch_size, num_workers, device):
    """Batches of ``dataset[indices]`` in that order (one pass)."""
    return make_loader(Subset(dataset, indices), batch_size, num_workers, device, persistent=False)


def model_in(model, dtype, device):
    """``(model in dtype, forward)``: a pure-``dtype`` copy when not fp32, and a no-grad forward to fp32 logits."""
    plain = model if dtype == torch.float32 else model.to(dtype)

    @torch.no_grad()
    def forward(images):
        return plain(images.to(device, dtype)).float()

    return plain, forward


def failed_rows(batch, names):
    """One error row per method name for every sample of ``batch`` that could not be read."""
    return [{"method": n, "sample_idx": int(batch["index"][i]), "label": int(batch["label"][i]), "error": err}
            for i, err in enumerate(batch["error"]) if err for n in names]


@dataclass
class ScoringBatch:
    """The readable samples of a batch, their target class and what the perturbation curves start and end at."""

    ok: list  # positions in the batch of the readable samples
    images: torch.Tensor = None
    target: torch.Tensor = None
    prob: object = None  # images -> probability of the target class
    start: torch.Tensor = None  # ... with nothing removed
    end: torch.Tensor = None  # ... with everything removed

    @classmethod
    def of(cls, batch, forward, target_kind, device):
        ok = [i for i, err in enumerate(batch["error"]) if not err]
        if not ok:
            return cls(ok)
        images = batch["image"][ok].to(device)
        target = forward(images).argmax(1) if target_kind == "pred" else batch["label"][ok].to(device)

        def prob(x):
            return forward(x).softmax(1).gather(1, target.view(-1, 1)).squeeze(1)

        return cls(ok, images, target, prob, prob(images), prob(torch.zeros_like(images)))


def nonfinite_error(relevance, logits):
    """The error message of a sample whose map or logits hold NaN or inf (e.g. NaN weights, an overflow), else ''."""
    bad = int((~torch.isfinite(relevance)).sum())
    if bad == 0 and bool(torch.isfinite(logits).all()):
        return ""
    what = f"{bad} of {relevance.numel()} relevance values" if bad else "the logits"
    return (f"non-finite map: {what} are NaN or inf (broken weights or an overflow; try DTYPE=fp32 or a smaller "
            "gamma, and check the checkpoint)")


@dataclass(frozen=True)
class Method:
    """An attribution method by name: a γ setting (``kind='lrp'``), ``input_x_gradient``, ``random`` or a peer
    method of :mod:`vitlrp.peers` (``kind`` = its name)."""

    name: str
    kind: str
    conv_gamma: float = 0.0
    lin_gamma: float = 0.0  # or a per-block schedule's text (vitlrp.explain.parse_schedule)
    gamma_attention: bool = False


METHOD_HELP = ("a preset (" + ", ".join(PRESETS) + "), gamma:<conv>:<lin> (<lin> may be a per-block schedule: "
               + SCHEDULE_HELP + "), either with +attn (γ on the attention projections too), input_x_gradient, "
               "random, or a peer method (" + ", ".join(peers.PEERS) + ")")


def parse_methods(names, what):
    """Several method names (``what``: the list's name, for the message); a name given twice is refused."""
    methods = [parse_method(m) for m in names]
    if len({m.name for m in methods}) < len(methods):
        raise UserError(f"{what} lists a method twice")
    return methods


def parse_method(name):
    """``'balanced'``, ``'gamma:1:0.5'``, ``'gamma:1:linear:0.5:0'``, ``'balanced+attn'``, ``'input_x_gradient'``,
    ``'random'``, ``'gae'`` ... → Method."""
    base, attn = (name[:-5], True) if name.endswith("+attn") else (name, False)
    if base in PRESETS:
        return Method(name, "lrp", *PRESETS[base], attn)
    if base.startswith("gamma:"):
        parts = base.split(":")
        try:
            conv, lin = float(parts[1]), ":".join(parts[2:])
            if len(parts) < 3:
                raise ValueError
        except (ValueError, IndexError):
            raise UserError(f"method {name!r} must look like gamma:<conv>:<lin>, e.g. gamma:1:0.5") from None
        lin = lin_gamma_value(lin, f"method {name!r} lin gamma")
        return Method(name, "lrp", check_gamma(f"{name} conv gamma", conv), lin, attn)
    if base in ("input_x_gradient", "random", *peers.PEERS) and not attn:
        peers.check_available(base)  # a peer whose package is missing is a config error, found before any work
        return Method(name, base)
    raise UserError(f"unknown method {name!r}: use {METHOD_HELP}")


class MethodRunner:
    """Context manager computing ``(logits, relevance)`` of one Method for batches (explainer entered once)."""

    def __init__(self, method, model, dtype=torch.float32, impl="zennit", seed=0):
        self.method, self.model, self.dtype, self.impl = method, model, dtype, impl
        self.generator = torch.Generator().manual_seed(seed)
        self.explainer = None

    def __enter__(self):
        if self.method.kind == "lrp":
            self.explainer = Explainer(self.model, self.method.conv_gamma, self.method.lin_gamma,
                                       self.method.gamma_attention, self.dtype, self.impl).__enter__()
        elif self.method.kind in peers.PEERS:
            peers.check_available(self.method.kind)  # a missing package stops the run before any work
        return self

    def __exit__(self, *exc):
        if self.explainer is not None:
            self.explainer.__exit__(*exc)
        return False

    def __call__(self, images, target):
        if self.method.kind == "lrp":
            return self.explainer(images, target)
        param = next(self.model.parameters())  # a bf16 model needs bf16 inputs (DTYPE=bf16)
        images_in = images.to(param.device, param.dtype)
        if self.method.kind == "input_x_gradient":
            return input_x_gradient(self.model, images_in, target)
        if self.method.kind in peers.PEERS:
            return peers.explain_batch(self.method.kind, self.model, images_in, target, self.generator)
        with torch.no_grad():
            logits = self.model(images_in).float()
        size = images.shape[-2:]
        return logits, torch.randn((len(images), *size), generator=self.generator)

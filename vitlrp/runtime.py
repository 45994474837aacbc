"""Devices, dtypes, seeding, and the few distributed helpers the scripts share."""
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError


def resolve_device(name):
    """``'auto'`` → CUDA when available, else CPU; ``'cuda'`` without CUDA is a one-line error."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={name} but CUDA is not available to torch {torch.__version__} "
                            "(check the driver and that torch is a CUDA build)", fix="cpu", setting="device")
        try:
            device = torch.device(name)
        except RuntimeError:  # e.g. cuda:x
            raise UserError(f"unknown device {name!r}: use auto, cuda, cuda:N or cpu", setting="device") from None
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:  # else a CUDA error once the model moves there
            raise UserError(f"device={name} but this machine has {count} CUDA devices: cuda:0 to cuda:{count - 1}",
                            setting="device")
        return device
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device {name!r}: use auto, cuda, cuda:N or cpu", setting="device")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the explaining scripts' dtype setting


# the key of each kind of per-image draw (image_seed's third number), so that no two kinds share a seed; the
# tie-breaks between patches of equal relevance take the image's seed without a key
ROAD_NOISE_KEY, OTHER_CLASS_KEY, INPUT_NOISE_KEY, FRESH_DRAW_KEY, RANDOM_MAP_KEY, SMOOTHGRAD_KEY = 1, 2, 3, 4, 5, 6
CLASS_SET_KEY, WEIGHT_DRAW_KEY, SMOOTHING_NOISE_KEY = 7, 8, 9  # the sanity checks' classes, weights, sMPRT noise


def image_seed(seed, sample_idx, *more):
    """The seed of one image's random draws: a function of the run's seed and the image alone (and ``more`` keys),
    so results do not depend on batching, on the other methods, or on how torchrun shards the images."""
    return int(np.random.SeedSequence([int(seed), int(sample_idx), *map(int, more)]).generate_state(1)[0])


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Distributed:
    """Rank/world of a ``torchrun`` launch (a single process otherwise)."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def init(self, device):
        """Join the process group (NCCL on CUDA, gloo on CPU); return the device this rank uses."""
        if not self.enabled:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def shard(self, items):
        """This rank's share of ``items``: every ``world_size``-th, starting at its rank."""
        return list(items)[self.rank::self.world_size]

    def all_reduce_sum(self, values, device):
        """Sum a list of numbers over all ranks."""
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if self.enabled:
            dist.all_reduce(t)
        return t.tolist()

    def all_gather_objects(self, obj):
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def close(self):
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

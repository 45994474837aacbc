"""Cascading top-down randomization (Adebayo et al. 2018) of a ViT's parameters (the steps are the family's).

Randomization of a parameter (:func:`randomize_parameters`): every parameter of a step, whatever module holds it
(the attention's ``in_proj_weight``/``in_proj_bias``, the class token, the position embedding, the LayerNorms),
is replaced by a seeded Gaussian draw with the original tensor's mean and standard deviation: the learned
structure goes, the scale stays (so activations neither vanish nor explode). A constant tensor (torchvision's
zero-initialised head, a fresh LayerNorm or class token) has no spread to copy: a weight matrix then gets the
standard deviation ``1/√fan_in``, any other tensor :data:`FALLBACK_STD`, around its value, so a randomized head is
never all zero. Resetting a LayerNorm to weight 1 and bias 0 (what ``reset_parameters`` does) would not randomize
it, so it is drawn like every other parameter. The final encoder LayerNorm goes with the ``head`` step: it reads
the last block's output, as the head does.
"""
import copy
import math
import zlib

import numpy as np
import torch

from ..families import family_of

FALLBACK_STD = 0.02  # spread of a randomized constant tensor that is not a weight matrix (torchvision's std of the
#                      position embedding)


def randomization_steps(model):
    """The cascade's steps, top down: ``head``, ``block_{L-1}`` … ``block_0``, ``embedding``."""
    return ["head"] + [f"block_{i}" for i in reversed(range(len(family_of(model).blocks(model))))] + ["embedding"]


def step_parameters(model):
    """``{step: [(name, parameter)]}`` in the order of :func:`randomization_steps`; every parameter is in one step.
    The partition is the model's family's (``family.step_parameters``: torchvision, timm, Hugging Face)."""
    return family_of(model).step_parameters(model)


def _param_seed(seed, name):
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(1)[0])


@torch.no_grad()
def randomize_parameters(named, seed):
    """Replace each ``(name, parameter)`` in place by ``N(mean, std²)`` of its own values, seeded by ``seed`` and its
    name; a constant tensor gets ``1/√fan_in`` (a weight matrix) or :data:`FALLBACK_STD` as its spread."""
    for name, p in named:
        values = p.detach().double()
        mean = float(values.mean())
        std = float(values.std()) if p.numel() > 1 else 0.0
        if not (math.isfinite(std) and std > 0):
            std = 1 / math.sqrt(p[0].numel()) if p.dim() >= 2 and name.endswith("weight") else FALLBACK_STD
        mean = mean if math.isfinite(mean) else 0.0
        draw = torch.randn(p.shape, generator=torch.Generator().manual_seed(_param_seed(seed, name)))
        p.copy_((mean + std * draw.double()).to(p.device, p.dtype))


def cascade(model, seed):
    """Yield ``(step, randomized model)`` top down, each step randomizing one more part (:func:`step_parameters`).

    One deep copy of ``model`` (which stays untouched) is randomized further at each step: the yielded model is the
    same object every time, so use it before asking for the next step. The draws depend on ``seed`` and the
    parameter's name only.
    """
    randomized = copy.deepcopy(model).eval()
    for step, named in step_parameters(randomized).items():
        randomize_parameters(named, seed)
        yield step, randomized

"""Randomization of a model's parameters (Adebayo et al. 2018) in three orders, over seeded weight draws;
the steps are the model family's.

Orders (:data:`ORDERS`), each a list of states built on :func:`randomization_steps` and :func:`step_parameters`:

- ``top_down``: the cascade from the head down (``head``, ``block_{L-1}`` … ``block_0``, ``embedding``), each step
  randomizing one more part; Adebayo's order;
- ``bottom_up``: the cascade from the embedding up; Hedström et al. 2023 recommend it, because a cascade that
  starts at the head destroys the output first and hides how much each lower part matters;
- ``independent``: one step at a time, the rest intact. Relevance in a ViT flows along the residual path, so a map
  that survives the randomization of one block shows that block's parameters barely shape it.

States that two orders share (the head alone; the embedding alone; everything) are computed once
(:func:`plan`). :class:`Randomizer` moves one copy of the model from state to state, redrawing or restoring only
the parts that change; a draw's values depend on its seed and the parameter's name only, so every state of one
draw sees the same random values.

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


ORDERS = ("top_down", "bottom_up", "independent")
TESTS = {"top_down": "randomization", "bottom_up": "randomization_bottom_up",
         "independent": "randomization_independent"}  # the sanity checks' test name of each order


def order_states(model, order):
    """``[(step, set of the steps randomized)]`` of one order (:data:`ORDERS`), named by the step each state adds."""
    steps = randomization_steps(model)
    if order == "independent":
        return [(s, frozenset([s])) for s in steps]
    if order not in ("top_down", "bottom_up"):
        raise ValueError(f"unknown randomization order {order!r}: use {', '.join(ORDERS)}")
    steps = steps if order == "top_down" else steps[::-1]
    return [(s, frozenset(steps[:k + 1])) for k, s in enumerate(steps)]


def plan(model, orders=ORDERS):
    """The distinct states of ``orders``, in the order they are reached: ``[(set of steps randomized, [(order,
    step), ...])]``; a state two orders share appears once, labelled for both."""
    out = {}
    for order in orders:
        for step, state in order_states(model, order):
            out.setdefault(state, []).append((order, step))
    return list(out.items())


class Randomizer:
    """One deep copy of ``model`` (which stays untouched), moved between states: :meth:`state` randomizes the steps
    of a state with a draw's seed and restores the others from the original values."""

    def __init__(self, model):
        self.model = copy.deepcopy(model).eval()
        self.steps = step_parameters(self.model)
        self.original = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        self.current, self.seed = set(), None

    @torch.no_grad()
    def state(self, randomized, seed):
        """The copy with exactly the steps ``randomized`` drawn under ``seed``, the rest original."""
        if seed != self.seed:
            self._restore(self.current)
            self.seed = seed
        for step in set(randomized) - self.current:
            randomize_parameters(self.steps[step], seed)
        self._restore(self.current - set(randomized))
        self.current = set(randomized)
        return self.model

    def _restore(self, steps):
        for step in steps:
            for name, p in self.steps[step]:
                p.copy_(self.original[name])
        self.current -= set(steps)


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

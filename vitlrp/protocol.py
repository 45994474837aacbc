"""The method protocol: a :class:`Method` explains a batch with ``attribute(x, target)`` (an :class:`Attribution`)
and several choices of class with ``attribute_many(x, targets)``, sharing a forward where it can; the
:class:`MethodSettings` every method may read; and the small helpers the methods share."""
from dataclasses import dataclass

import torch

from .errors import UserError
from .families import family_of, forward_logits, lrp_active
from .gammarule import DEFAULT_IMPL, IMPLS


@dataclass(frozen=True)
class MethodSettings:
    """Settings every method may read: the model copy's dtype, the Gamma rule's implementation, the seed, and the
    sampling methods' costs (Integrated Gradients' steps, SmoothGrad's noisy copies, rows per forward)."""

    dtype: torch.dtype = torch.float32
    impl: str = DEFAULT_IMPL
    seed: int = 0
    ig_steps: int = 32
    smoothgrad_samples: int = 32
    rows_per_pass: int = 64

    def __post_init__(self):
        if self.impl not in IMPLS:
            raise UserError(f"impl must be one of {', '.join(IMPLS)}, got {self.impl!r}", setting="impl")
        for name in ("ig_steps", "smoothgrad_samples", "rows_per_pass"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}", setting=name)


@dataclass(frozen=True)
class Attribution:
    """One method's answer for a batch: ``logits`` ``[B, C]``, the pixel ``relevance`` ``[B, H, W]`` and the
    ``target`` ``[B]`` classes it explains."""

    logits: torch.Tensor
    relevance: torch.Tensor
    target: torch.Tensor


class Method:
    """An attribution method on one model, a context manager (``with`` opens what it holds, e.g. hooks or a model
    copy). A subclass computes ``(logits, relevance)`` in :meth:`compute`; registration (:func:`register`) gives it
    its ``family`` and ``summary``; its traits are class attributes:

    - ``packages``: ``(import name, distribution)`` pairs it needs;
    - ``patched``: it runs on LXT's patched model (else on the plain model, never inside the patches);
    - ``signed``: its maps can be negative (else a negative share says nothing about it);
    - ``class_specific``: False when the map is the same whatever class is asked.

    ``ids`` are the images' sample indices (default: their positions): methods that draw random numbers seed them
    per image, so results do not depend on batching or on how torchrun shards the images.
    """

    family = ""
    summary = ""
    packages = ()
    patched = False
    signed = True
    class_specific = True

    def __init__(self, model, settings=None):
        self.model = model
        self.settings = settings or MethodSettings()
        self.name = getattr(self, "name", "") or type(self).__name__

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def compute(self, x, target, ids):
        """``(logits, relevance)`` of images ``x`` for ``target`` (None: the predicted classes)."""
        raise NotImplementedError

    def attribute(self, x, target=None, ids=None):
        """The :class:`Attribution` of images ``x`` ``[B, 3, H, W]`` for ``target`` (one class per row, one class
        for all, or None for the predicted ones)."""
        if lrp_active():
            raise RuntimeError(f"{self.name} must run on the plain model, not inside the LRP patches")
        param = next(self.model.parameters())  # a bf16 model needs bf16 inputs
        x = x.to(param.device, param.dtype)
        ids = list(range(len(x))) if ids is None else [int(i) for i in ids]
        try:
            logits, relevance = self.compute(x, target, ids)
        except (UserError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as err:
            if not self.packages:
                raise
            # a package's failure is one line for the user, with the package's own words
            raise UserError(f"method {self.name} failed: {type(err).__name__}: {err}") from err
        logits = logits.detach().float()
        return Attribution(logits, relevance.detach().float(), target_index(logits, target).reshape(-1))

    def attribute_many(self, x, targets, ids=None):
        """One :class:`Attribution` per choice of classes in ``targets`` (a class-independent method computes its
        map once)."""
        if not self.class_specific:
            one = self.attribute(x, targets[0], ids)
            return [Attribution(one.logits, one.relevance, target_index(one.logits, t).reshape(-1))
                    for t in targets]
        return [self.attribute(x, t, ids) for t in targets]

    @classmethod
    def attribute_together(cls, methods, x, targets, ids=None):
        """:meth:`attribute_many` of several methods of this class on one batch (a class whose methods can share
        a forward does so here); a list per method."""
        return [m.attribute_many(x, targets, ids) for m in methods]


def attribute_all(methods, x, targets, ids=None):
    """``{name: [Attribution per choice of classes]}`` of entered methods on one batch, in the order given; methods
    of one class run together (:meth:`Method.attribute_together`: every γ-LRP method shares one forward)."""
    by_class = {}
    for m in methods:
        by_class.setdefault(type(m), []).append(m)
    out = {}
    for cls, group in by_class.items():
        for m, results in zip(group, cls.attribute_together(group, x, targets, ids)):
            out[m.name] = results
    return {m.name: out[m.name] for m in methods}


def input_times_grad(x, grad, dtype=torch.float32):
    """``[B, H, W]`` relevance: input × gradient summed over colour channels, in ``dtype``."""
    return (x.detach().to(dtype) * grad.to(dtype)).sum(1)


def target_index(logits, target):
    """``[B, 1]`` class indices for ``gather``: ``None`` = the argmax, a single class is used for every row."""
    if target is None:
        return logits.argmax(1, keepdim=True)
    target = torch.as_tensor(target, device=logits.device).reshape(-1)
    if target.numel() == 1:
        target = target.expand(logits.shape[0])
    if target.numel() != logits.shape[0]:
        raise ValueError(f"target has {target.numel()} entries for a batch of {logits.shape[0]}")
    return target.reshape(-1, 1)


def upsample_patches(patch_maps, model):
    """``[B, tokens]`` patch scores (row-major on the patch grid) → ``[B, H, W]`` by bilinear interpolation (each
    patch value sits at its patch centre)."""
    family = family_of(model)
    size = family.image_size(model)
    grid = size // family.patch_size(model)
    maps = patch_maps.float().reshape(-1, 1, grid, grid)
    return torch.nn.functional.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def plain_logits_and_targets(model, images, target):
    """Logits of the plain model (no graph) and the ``[B]`` classes to explain (``None``: the predicted ones)."""
    with torch.no_grad():
        logits = forward_logits(model, images)
    return logits, target_index(logits, target).reshape(-1)

"""What the sanity checks compare, drawn per image so that results do not depend on batching or sharding: the
classes a map is compared across (:func:`compared_classes`: every other class of a small dataset, else the runner-up
and seeded random others), a seeded random other class (the evaluation's ``class_sensitivity``), and seeded noisy
copies of the input."""
import math

import numpy as np
import torch

from ..runtime import CLASS_SET_KEY, INPUT_NOISE_KEY, OTHER_CLASS_KEY, image_seed

ALL_CLASSES_UP_TO = 20  # a dataset with at most this many classes is compared across all of them


def other_classes(logits, target, ids, seed):
    """``(runner_up, random_other)``, each ``[B]`` long: the class with the highest logit other than ``target``, and
    a class other than ``target`` drawn uniformly, seeded by ``image_seed(seed, sample_idx, OTHER_CLASS_KEY)`` (the
    same whatever the batch or the shard)."""
    n = logits.shape[1]
    if n < 2:
        raise ValueError("the class check needs a model with at least two classes")
    target = target.reshape(-1).to(logits.device)
    masked = logits.detach().float().scatter(1, target.view(-1, 1), -math.inf)
    draws = [int(np.random.default_rng(image_seed(seed, i, OTHER_CLASS_KEY)).integers(n - 1)) for i in ids]
    others = torch.tensor(draws, device=logits.device)
    return masked.argmax(1), others + (others >= target).long()


def compared_classes(logits, target, ids, seed, k, all_up_to=ALL_CLASSES_UP_TO):
    """``[B, M]`` classes each map is compared with, the runner-up (the highest logit other than ``target``) first:
    every other class (``M = C - 1``) when the model has at most ``all_up_to`` classes, else the runner-up and ``k``
    other classes drawn without replacement, seeded per image (``image_seed(seed, i, CLASS_SET_KEY)``), ``M = k + 1``
    (fewer when the model has fewer classes). The same whatever the batch or the shard."""
    n = logits.shape[1]
    if n < 2:
        raise ValueError("the class check needs a model with at least two classes")
    target = target.reshape(-1).to(logits.device)
    runner_up = logits.detach().float().scatter(1, target.view(-1, 1), -math.inf).argmax(1)
    rows = []
    for t, r, i in zip(target.tolist(), runner_up.tolist(), ids):
        rest = [c for c in range(n) if c not in (t, r)]
        if n > all_up_to:
            rng = np.random.default_rng(image_seed(seed, i, CLASS_SET_KEY))
            rest = sorted(rng.choice(rest, size=min(k, len(rest)), replace=False).tolist())
        rows.append([r, *rest])
    return torch.tensor(rows, dtype=torch.long, device=logits.device).reshape(len(rows), -1)


def noisy_copy(images, ids, seed, copy_index, std):
    """``images + std · ε`` with ``ε ~ N(0, 1)`` seeded per image and copy
    (``image_seed(seed, i, INPUT_NOISE_KEY, k)``)."""
    noise = torch.stack([torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(
        image_seed(seed, i, INPUT_NOISE_KEY, copy_index))) for i in ids])
    return images + std * noise.to(images.device, images.dtype)

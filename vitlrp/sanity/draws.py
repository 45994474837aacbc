"""What the sanity checks compare, drawn per image so that results do not depend on batching or sharding: the
runner-up class, a seeded random other class (also the evaluation's ``class_sensitivity``), and seeded noisy
copies of the input."""
import math

import numpy as np
import torch

from ..runtime import INPUT_NOISE_KEY, OTHER_CLASS_KEY, image_seed


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


def noisy_copy(images, ids, seed, copy_index, std):
    """``images + std · ε`` with ``ε ~ N(0, 1)`` seeded per image and copy
    (``image_seed(seed, i, INPUT_NOISE_KEY, k)``)."""
    noise = torch.stack([torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(
        image_seed(seed, i, INPUT_NOISE_KEY, copy_index))) for i in ids])
    return images + std * noise.to(images.device, images.dtype)

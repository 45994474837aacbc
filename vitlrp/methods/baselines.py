"""Reference maps that explain nothing: ``random`` (seeded Gaussian noise per image and class), the chance level of
every metric."""
import torch

from ..explain import target_index
from ..runtime import RANDOM_MAP_KEY, image_seed
from . import register


def random_maps(model, images, target, ids, method, options):
    """Logits of the plain model and one ``N(0, 1)`` map per image, seeded by the run's seed, the image and the class
    explained: the same map whatever the batch or the shard, another map for another class (so its class
    sensitivity is the chance level, not zero)."""
    with torch.no_grad():
        logits = model(images)
    classes = target_index(logits, target).reshape(-1).tolist()
    size = images.shape[-2:]
    maps = [torch.randn(size, generator=torch.Generator().manual_seed(image_seed(options.seed, i, RANDOM_MAP_KEY, c)))
            for i, c in zip(ids, classes)]
    return logits, torch.stack(maps)


register("random", "baselines", "a seeded random map per image and class (the chance level of every metric)",
         function=random_maps)

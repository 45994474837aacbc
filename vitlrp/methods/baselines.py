"""Reference maps that explain nothing: ``random`` (seeded Gaussian noise per image), the chance level of every
metric."""
import torch

from ..runtime import image_seed
from . import register


def random_maps(model, images, target, ids, method, options):
    """Logits of the plain model and one ``N(0, 1)`` map per image, seeded by the run's seed and the image."""
    with torch.no_grad():
        logits = model(images)
    size = images.shape[-2:]
    maps = [torch.randn(size, generator=torch.Generator().manual_seed(image_seed(options.seed, i))) for i in ids]
    return logits, torch.stack(maps)


register("random", "baselines", "a seeded random map per image (the chance level of every metric)",
         function=random_maps, class_specific=False)

"""Reference maps that explain nothing: ``random`` (seeded Gaussian noise per image and class), the chance level of
every metric."""
import torch

from ..families import forward_logits
from ..protocol import Method, target_index
from ..runtime import RANDOM_MAP_KEY, image_seed
from .registry import register


@register("random", "baselines", "a seeded random map per image and class (the chance level of every metric)")
class RandomMaps(Method):
    """Logits of the plain model and one ``N(0, 1)`` map per image, seeded by the run's seed, the image and the class
    explained: the same map whatever the batch or the shard, another map for another class (so its class
    sensitivity is the chance level, not zero)."""

    def compute(self, x, target, ids):
        with torch.no_grad():
            logits = forward_logits(self.model, x)
        classes = target_index(logits, target).reshape(-1).tolist()
        size = x.shape[-2:]
        seed = self.settings.seed
        maps = [torch.randn(size, generator=torch.Generator().manual_seed(image_seed(seed, i, RANDOM_MAP_KEY, c)))
                for i, c in zip(ids, classes)]
        return logits, torch.stack(maps)

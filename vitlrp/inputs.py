"""What an explaining script works on: the checkpoint's model with the dataset split it explains, the seeded sample
of images, and their batches."""
import random

from torch.utils.data import Subset

from .cub import CUBDataset, load_cub
from .errors import UserError
from .models import check_classes, model_from_checkpoint, read_checkpoint
from .training import make_loader


def load_model_and_split(checkpoint_path, dataset_root, split, device, annotations=False):
    """``(checkpoint, model on device, dataset)``; every mismatch is a one-line UserError before any work."""
    ckpt = read_checkpoint(checkpoint_path)
    ann = load_cub(dataset_root)
    check_classes(ckpt, ann.class_names, dataset_root)
    model, preprocessing = model_from_checkpoint(ckpt)
    dataset = CUBDataset(ann, split, preprocessing, annotations=annotations, report_errors=True)
    return ckpt, model.to(device), dataset


def sample_indices(n_total, n, seed, what="num_images", split="test"):
    """``random.seed(seed)`` then ``n`` distinct indices (``n = 0``: all, in order); same images whatever else
    (``what``: the caller's name of ``n``, the errors' setting)."""
    if n < 0:
        raise UserError(f"{what} must be >= 0, got {n}", setting=what)
    if n_total == 0:
        raise UserError(f"the {split} split has no images; check the dataset's train_test_split.txt or choose "
                        "another split")
    if n > n_total:
        raise UserError(f"{what}={n} is larger than the {split} split ({n_total} images); use at most {n_total} "
                        "or 0 for all", setting=what)
    if n == 0:
        return list(range(n_total))
    random.seed(seed)
    return random.sample(range(n_total), n)


def loader(dataset, indices, batch_size, num_workers, device):
    """Batches of ``dataset[indices]`` in that order (one pass)."""
    return make_loader(Subset(dataset, indices), batch_size, num_workers, device, persistent=False)

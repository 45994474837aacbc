"""What an explaining script works on: the checkpoint's model with the dataset split it explains, the seeded sample
of images, and their batches; or image files of the user's own, without labels."""
import random
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from .cub import CUBDataset, load_cub
from .errors import UserError
from .models import check_classes, model_from_checkpoint, read_checkpoint
from .preprocess import open_rgb
from .training import make_loader

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what a folder of the user's images contributes (any case)


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


def image_files(inputs, what="images", skip=None):
    """The files ``inputs`` name, in order: a file as given, a folder as its JPEG and PNG files (by
    :data:`IMAGE_SUFFIXES`, any depth, sorted), leaving out what lies under ``skip`` (the run's own output folder).
    A path that does not exist, and inputs that hold no file, are one UserError line (``what``: the setting)."""
    skip = Path(skip).resolve() if skip else None
    files = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                           and not (skip and p.resolve().is_relative_to(skip)))
            if not found:
                raise UserError(f"{what}: the folder {path} holds no JPEG or PNG file", setting=what)
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"{what}: {path} does not exist", setting=what)
    if not files:
        raise UserError(f"{what} is empty: name image files or folders of them", setting=what)
    return files


class ImageFiles(Dataset):
    """Image files as model inputs, without labels: items as :class:`~vitlrp.cub.CUBDataset`'s with
    ``report_errors`` (``image``, ``index``: the position in ``paths``, ``error``: why a file could not be read, with
    a zero image), and ``label`` -1."""

    def __init__(self, paths, preprocessing):
        self.paths, self.preprocessing = [Path(p) for p in paths], preprocessing
        self.transform = preprocessing.eval_transform()

    def __len__(self):
        return len(self.paths)

    def image_path(self, index):
        return self.paths[index]

    def __getitem__(self, index):
        item = {"label": -1, "index": int(index), "error": ""}
        try:
            item["image"] = self.transform(open_rgb(self.paths[index]))
        except OSError as err:
            # open_rgb names the file; the caller's line names it already
            item["error"] = "not a readable image: " + str(err).removeprefix(f"cannot read image {self.paths[index]}: ")
            size = self.preprocessing.crop_size
            item["image"] = torch.zeros(3, size, size)
        return item

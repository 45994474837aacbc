"""torchvision ViTs for CUB: building, ImageNet weights (offline-aware), and checkpoints.

A checkpoint is a dict of plain types and tensors only, so it loads with ``torch.load(weights_only=True)``:
``arch``, ``image_size``, ``num_classes``, ``class_names``, ``preprocessing``, ``model`` (state dict),
optionally ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``best_acc``, ``config``, ``summary_row``.
"""
import os
import pickle
from pathlib import Path
from urllib.parse import urlparse

import torch
from torchvision.models import ViT_B_16_Weights
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from .errors import UserError
from .fileio import torch_save
from .preprocess import Preprocessing

FORMAT = "vitlrp-checkpoint/1"
# vit_b_16 is torchvision's ViT-B/16; vit_tiny is a small VisionTransformer for CPU runs, tests and the demo.
ARCHS = {
    "vit_b_16": dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072, image_size=224),
    "vit_tiny": dict(patch_size=16, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=256, image_size=112),
}
WEIGHTS = {w.name: w for w in ViT_B_16_Weights}


def build_vit(arch, num_classes, image_size=0):
    """A randomly initialised torchvision ``VisionTransformer`` (zero-initialised head, as torchvision does)."""
    if arch not in ARCHS:
        raise UserError(f"unknown MODEL {arch!r}: choose one of {', '.join(ARCHS)}")
    spec = dict(ARCHS[arch])
    spec["image_size"] = int(image_size or spec["image_size"])
    if spec["image_size"] % spec["patch_size"]:
        raise UserError(f"IMAGE_SIZE {spec['image_size']} must be a multiple of the patch size {spec['patch_size']}")
    return VisionTransformer(num_classes=num_classes, **spec)


def default_image_size(arch, pretrained):
    if pretrained in WEIGHTS:
        return WEIGHTS[pretrained].meta["min_size"][0]
    return ARCHS[arch]["image_size"]


def weights_preprocessing(pretrained, image_size):
    """The preprocessing the chosen weights were trained with, scaled to ``image_size``."""
    if pretrained in WEIGHTS:
        t = WEIGHTS[pretrained].transforms()
        crop, resize = t.crop_size[0], t.resize_size[0]
        return Preprocessing(image_size, int(round(image_size * resize / crop)), t.interpolation.value,
                             tuple(t.mean), tuple(t.std))
    return Preprocessing.for_size(image_size)


def weights_file(name):
    """Where torchvision keeps the weights ``name``: ``$TORCH_HOME/hub/checkpoints/<file name of the URL>``."""
    url = WEIGHTS[name].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def pretrained_state_dict(pretrained):
    """The ImageNet state dict for a weights name (cached file first, else download), or from a file path."""
    if pretrained in WEIGHTS:
        path = weights_file(pretrained)
        if not path.is_file():
            try:
                return WEIGHTS[pretrained].get_state_dict(progress=True, check_hash=True)
            except Exception as err:  # no network, proxy, hash mismatch: all end the same way for the user
                raise UserError(f"cannot download {pretrained} weights from {WEIGHTS[pretrained].url} ({err}); "
                                f"put that file at {path} (or set TORCH_HOME) or pass --pretrained PATH") from None
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise UserError(f"PRETRAINED {pretrained!r} is neither a weights name ({', '.join(WEIGHTS)}, none) "
                            "nor an existing file")
    state = _load(path, "weights file")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of our checkpoints
    return state


def load_pretrained(model, pretrained):
    """Load ImageNet (or file) weights into ``model`` except the classifier head; adapt position embeddings."""
    state = {k: v for k, v in pretrained_state_dict(pretrained).items() if not k.startswith("heads.")}
    pos = state.get("encoder.pos_embedding")
    own_pos = model.encoder.pos_embedding
    if pos is not None and pos.shape != own_pos.shape and pos.ndim == 3 and pos.shape[-1] == own_pos.shape[-1]:
        state = interpolate_embeddings(model.image_size, model.patch_size, state)
    own = model.state_dict()
    shape = lambda v: tuple(getattr(v, "shape", ()))  # noqa: E731
    wrong = [k for k, v in state.items() if k in own and shape(v) != shape(own[k])]
    if wrong:  # another architecture (e.g. a vit_b_16 file for vit_tiny): load_state_dict would raise a traceback
        k = wrong[0]
        raise UserError(f"weights {pretrained} do not fit this model: {k} has shape {shape(state[k])}, the "
                        f"model expects {shape(own[k])} ({len(wrong)} tensors differ)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("heads.")]
    if missing or unexpected:
        raise UserError(f"weights {pretrained} do not fit this model: missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}")
    return model


def _load(path, what):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{what} {path} holds pickled Python objects and was refused (only tensors and plain "
                        "types are loaded); re-save it as a state dict") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError(f"{what} {path} cannot be read ({str(err).splitlines()[0]}); it may be truncated") from None


def unwrap(model):
    """The plain module behind DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path, model, arch, class_names, preprocessing, **extra):
    """Write a checkpoint atomically (temp file, then ``os.replace``)."""
    model = unwrap(model)
    ckpt = {"format": FORMAT, "arch": arch, "image_size": int(model.image_size),
            "num_classes": len(class_names), "class_names": list(class_names),
            "preprocessing": preprocessing.to_dict(), "model": model.state_dict(), **extra}
    torch_save(path, ckpt)


def load_checkpoint(path):
    """Load a checkpoint with ``weights_only=True``; clear one-line errors for every way it can be wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: train one with `python scripts/train_vit_cub.py` "
                        "or pass --checkpoint-path")
    ckpt = _load(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint written by scripts/train_vit_cub.py")
    return ckpt


def model_from_checkpoint(ckpt):
    """Rebuild ``(model, preprocessing)`` from a loaded checkpoint, in eval mode on the CPU."""
    model = build_vit(ckpt["arch"], ckpt["num_classes"], ckpt["image_size"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), Preprocessing.from_dict(ckpt["preprocessing"])


def check_classes(ckpt, class_names, where):
    """Refuse a checkpoint trained on other classes than the dataset at ``where``."""
    if list(ckpt["class_names"]) != list(class_names):
        raise UserError(f"the checkpoint was trained on {ckpt['num_classes']} classes that do not match the "
                        f"{len(class_names)} classes of {where}; use the dataset it was trained on "
                        "(--dataset-root) or another --checkpoint-path")

"""torchvision ViTs for CUB: the table of models, building, ImageNet weights (offline-aware), and checkpoints.

A checkpoint is a dict of plain types and tensors only, so it loads with ``torch.load(weights_only=True)``:
``arch``, ``image_size``, ``num_classes``, ``class_names``, ``preprocessing``, ``model`` (state dict),
optionally ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``best_acc``, ``config``, ``val_split``,
``summary_row`` (that epoch's ``summary.csv`` row) and ``summary_rows`` (the last checkpoint: every row of the run up
to it).
"""
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision.models as tvm
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from .errors import UserError
from .fileio import torch_save
from .preprocess import Preprocessing

FORMAT = "vitlrp-checkpoint/1"


@dataclass(frozen=True)
class Arch:
    """A model this package builds: torchvision's builder (or a VisionTransformer spec), its patch size (the patch
    embedding's kernel and stride), its input size without pretrained weights and torchvision's weights enum."""

    patch_size: int
    image_size: int
    builder: object = None  # torchvision.models.vit_*; None: VisionTransformer(**spec)
    weights: object = None  # torchvision's weights enum, or None (no ImageNet weights)
    spec: dict = field(default_factory=dict)


ARCHS = {
    "vit_b_16": Arch(16, 224, tvm.vit_b_16, tvm.ViT_B_16_Weights),
    "vit_b_32": Arch(32, 224, tvm.vit_b_32, tvm.ViT_B_32_Weights),
    "vit_l_16": Arch(16, 224, tvm.vit_l_16, tvm.ViT_L_16_Weights),
    "vit_l_32": Arch(32, 224, tvm.vit_l_32, tvm.ViT_L_32_Weights),
    "vit_h_14": Arch(14, 224, tvm.vit_h_14, tvm.ViT_H_14_Weights),
    # a small VisionTransformer for CPU runs, tests and the demo
    "vit_tiny": Arch(16, 112, spec=dict(num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=256)),
}
# Larger inputs are a typo: a ViT's attention memory grows with the fourth power of the side (ViT-B/16 at 2048 px
# needs about 13 GB per image and layer for the attention weights alone).
MAX_IMAGE_SIZE = 2048


def check_arch(arch, name="model"):
    """Refuse an architecture name this project cannot build (``name``: what the user calls the value)."""
    if arch not in ARCHS:
        raise UserError(f"unknown {name} {arch!r}: choose one of {', '.join(ARCHS)}", setting=name)
    return arch


def weights_names(arch):
    """The names of ``arch``'s own torchvision weights (IMAGENET1K_V1, IMAGENET1K_SWAG_E2E_V1, ...), maybe none."""
    weights = ARCHS[check_arch(arch)].weights
    return [w.name for w in weights] if weights is not None else []


def _weights(arch, name):
    """``arch``'s torchvision weights called ``name``, or None when ``name`` is not one of them."""
    return ARCHS[arch].weights[name] if name in weights_names(arch) else None


def check_pretrained(arch, pretrained):
    """Refuse a ``pretrained`` value that is not ``none``, one of ``arch``'s own weights names or an existing file."""
    own = weights_names(arch)
    if pretrained.lower() == "none" or pretrained in own or Path(pretrained).is_file():
        return pretrained
    if Path(pretrained).is_dir():
        raise UserError(f"weights file {pretrained} is a folder, not a file: pass the file itself",
                        setting="pretrained")
    owners = ", ".join(a for a in ARCHS if pretrained in weights_names(a))
    choose = f"choose one of {arch}'s {', '.join(own)}, none or a weights file" if own else (
        "choose none or a weights file")
    if owners:
        what = (f"{arch} has no weights {pretrained} (they belong to {owners})" if own
                else f"{arch} has no ImageNet weights ({pretrained} belong to {owners})")
    else:
        what = (f"pretrained {pretrained!r} is neither a weights name of {arch} nor an existing file" if own
                else f"pretrained {pretrained!r} is no existing file, and {arch} has no ImageNet weights")
    raise UserError(f"{what}: {choose}", setting="pretrained")


def check_image_size(arch, image_size=0):
    """The input size ``arch`` is built at (``0``: its own); refuse one above :data:`MAX_IMAGE_SIZE` or off the
    patch grid."""
    spec = ARCHS[check_arch(arch)]
    size = int(image_size or spec.image_size)
    if not 0 < size <= MAX_IMAGE_SIZE:
        raise UserError(f"image_size must be between 1 and {MAX_IMAGE_SIZE} px, got {size}", setting="image_size")
    if size % spec.patch_size:
        raise UserError(f"image_size {size} must be a multiple of {arch}'s patch size {spec.patch_size}",
                        setting="image_size")
    return size


def build_vit(arch, num_classes, image_size=0):
    """A randomly initialised torchvision ``VisionTransformer`` (zero-initialised head, as torchvision does)."""
    spec, size = ARCHS[check_arch(arch)], check_image_size(arch, image_size)
    if spec.builder is not None:
        return spec.builder(weights=None, num_classes=num_classes, image_size=size)
    return VisionTransformer(image_size=size, patch_size=spec.patch_size, num_classes=num_classes, **spec.spec)


def default_image_size(arch, pretrained):
    """The input size of ``arch``'s weights ``pretrained`` (their ``min_size``: 384 for vit_b_16's SWAG_E2E), else
    ``arch``'s own."""
    weights = _weights(arch, pretrained)
    return weights.meta["min_size"][0] if weights is not None else ARCHS[check_arch(arch)].image_size


def weights_preprocessing(arch, pretrained, image_size):
    """The preprocessing ``arch``'s weights ``pretrained`` were trained with (their transforms: resize, crop,
    interpolation, mean and std), scaled to ``image_size``; ImageNet's standard one for ``none`` or a file."""
    weights = _weights(arch, pretrained)
    if weights is None:
        return Preprocessing.for_size(image_size)
    t = weights.transforms()
    crop, resize = t.crop_size[0], t.resize_size[0]
    return Preprocessing(image_size, int(round(image_size * resize / crop)), t.interpolation.value,
                         tuple(t.mean), tuple(t.std))


def weights_file(arch, name):
    """Where torchvision keeps ``arch``'s weights ``name``: ``$TORCH_HOME/hub/checkpoints/<file name of the URL>``."""
    url = ARCHS[arch].weights[name].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def pretrained_state_dict(arch, pretrained):
    """The state dict of ``arch``'s weights ``pretrained`` (the cached file first, else a download), or of a file."""
    weights = _weights(arch, check_pretrained(arch, pretrained))
    path = weights_file(arch, pretrained) if weights is not None else Path(pretrained)
    if weights is not None and not path.is_file():
        try:
            return weights.get_state_dict(progress=True, check_hash=True)
        except Exception as err:  # no network, proxy, hash mismatch: all end the same way for the user
            raise UserError(f"cannot download {arch} {pretrained} weights from {weights.url} ({err}); put that file "
                            f"at {path} (or set TORCH_HOME)", fix="pretrained_file") from None
    state = _load(path, "weights file")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of our checkpoints
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"weights file {path} holds no state dict (a dict of tensors)")
    bad = non_finite_tensors(state)
    if bad:
        raise UserError(f"weights file {path} holds NaN or infinite weights ({len(bad)} tensors, e.g. {bad[0]})")
    return state


def load_pretrained(model, arch, pretrained):
    """Load ``arch``'s ImageNet (or a file's) weights into ``model`` except the classifier head; position embeddings
    are interpolated to the model's input size."""
    state = {k: v for k, v in pretrained_state_dict(arch, pretrained).items() if not k.startswith("heads.")}
    pos = state.get("encoder.pos_embedding")
    own_pos = model.encoder.pos_embedding
    if pos is not None and pos.shape != own_pos.shape and pos.ndim == 3 and pos.shape[-1] == own_pos.shape[-1]:
        try:
            state = interpolate_embeddings(model.image_size, model.patch_size, state)
        except ValueError as err:  # a token count that is no square grid plus the class token
            raise UserError(f"weights {pretrained} do not fit this model: encoder.pos_embedding has shape "
                            f"{_shape(pos)} ({_first_line(err)})") from None
    problem = _fit_problem(state, model.state_dict(), strict=False)
    if problem:  # another architecture (e.g. a vit_b_16 file for vit_tiny): load_state_dict would raise a traceback
        raise UserError(f"weights {pretrained} do not fit this model: {problem}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("heads.")]
    if missing or unexpected:
        raise UserError(f"weights {pretrained} do not fit this model: missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}")
    return model


_MAGIC = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"\x89HDF", "an HDF5 (Keras) file"),
          (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"))


def _not_torch(path):
    """Why ``path`` is plainly not a file ``torch.save`` wrote (e.g. 'is empty (0 bytes)'), or None if it may be one."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head:
        return "is empty (0 bytes)"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch's zip format; the legacy pickle format
        return None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return f"is {kind}"
    if len(head) > 8 and head[8:9] == b"{" and b'"dtype"' in head:
        return "is a safetensors file (load it with safetensors and re-save it with torch.save)"
    if b"\x00" not in head:
        try:
            head[:-4].decode("utf-8") if len(head) == 4096 else head.decode("utf-8")
            return "is a text file"
        except UnicodeDecodeError:
            pass
    return f"is not a PyTorch file (it begins with the bytes {head[:8].hex(' ')})"


def _first_line(err):
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _load(path, what):
    """``torch.load(weights_only=True)``; every way a file can be wrong is one UserError saying what the file is."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file: pass the file itself")
    try:
        problem = _not_torch(path)
    except OSError as err:
        raise UserError(f"{what} {path} cannot be read ({err.strerror or err})") from None
    if problem:
        raise UserError(f"{what} {path} {problem}; expected a file written by torch.save") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{what} {path} holds pickled Python objects and was refused (only tensors and plain "
                        "types are loaded); re-save it as a state dict") from None
    except (RuntimeError, EOFError, OSError, KeyError, IndexError, ValueError) as err:
        raise UserError(f"{what} {path} cannot be read ({_first_line(err)}); it may be truncated") from None


def _shape(value):
    return tuple(getattr(value, "shape", ()))


def _fit_problem(state, own, strict=True):
    """Why ``state`` does not load into a model whose state dict is ``own`` (one phrase), or None."""
    wrong = [k for k, v in state.items() if k in own and _shape(v) != _shape(own[k])]
    if wrong:
        k = wrong[0]
        return (f"{k} has shape {_shape(state[k])}, the model expects {_shape(own[k])} "
                f"({len(wrong)} tensors differ)")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    return None


def non_finite_tensors(state):
    """Names of the floating-point tensors in ``state`` holding NaN or infinite values."""
    return [k for k, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def unwrap(model):
    """The plain module behind DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path, model, arch, class_names, preprocessing, **extra):
    """Write a checkpoint atomically (streamed to a temp file, then ``os.replace``)."""
    model = unwrap(model)
    ckpt = {"format": FORMAT, "arch": arch, "image_size": int(model.image_size),
            "num_classes": len(class_names), "class_names": list(class_names),
            "preprocessing": preprocessing.to_dict(), "model": model.state_dict(), **extra}
    torch_save(path, ckpt, "checkpoint")


def read_checkpoint(path):
    """Load a checkpoint with ``weights_only=True``; clear one-line errors for every way it can be wrong.

    Refused: a missing file or a folder, a file that is not a checkpoint, one whose metadata or weight shapes do not
    describe a model this package builds, and one whose weights hold NaN or infinite values (a diverged run).
    """
    path = Path(path)
    if path.is_dir():
        inside = [p.name for p in (path / "vit_cub_best.pt", path / "vit_cub_last.pt") if p.is_file()]
        raise UserError(f"checkpoint {path} is a folder, not a checkpoint file: pass the file"
                        + (f", e.g. {path / inside[0]}" if inside else ""))
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found", fix="checkpoint")
    ckpt = _load(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
            raise UserError(f"{path} is a bare state dict, not a checkpoint of this package", fix="state_dict")
        raise UserError(f"{path} is not a checkpoint of this package", fix="checkpoint_source")
    problem = _checkpoint_problem(ckpt)
    if problem:
        raise UserError(f"checkpoint {path} {problem[0]}", fix=problem[1])
    return ckpt


def _metadata_problem(ckpt):
    """Why a checkpoint's metadata describes no model this package builds (one phrase), or None."""
    need = {"arch": str, "image_size": int, "num_classes": int, "class_names": list, "preprocessing": dict,
            "model": dict}
    absent = [k for k, kind in need.items() if not isinstance(ckpt.get(k), kind) or isinstance(ckpt.get(k), bool)]
    if absent:
        return f"lacks {', '.join(absent)} (or holds the wrong type there); it was not written by this package"
    if ckpt["arch"] not in ARCHS:
        return f"names an unknown arch {ckpt['arch']!r} (known: {', '.join(ARCHS)})"
    if ckpt["num_classes"] < 1:
        return f"says num_classes {ckpt['num_classes']}: a classifier needs at least one class"
    if len(ckpt["class_names"]) != ckpt["num_classes"]:
        return f"names {len(ckpt['class_names'])} classes but says num_classes {ckpt['num_classes']}"
    if not all(isinstance(c, str) for c in ckpt["class_names"]):
        return "holds class names that are not text"
    try:
        prep = Preprocessing.from_dict(ckpt["preprocessing"])
    except (KeyError, TypeError, ValueError) as err:
        return f"holds unusable preprocessing settings ({type(err).__name__}: {_first_line(err)})"
    if prep.crop_size != ckpt["image_size"]:  # the model would refuse every input (torchvision asserts the size)
        return (f"crops its inputs to {prep.crop_size} px (preprocessing.crop_size) but its model takes "
                f"{ckpt['image_size']} px (image_size); it was not written by this package")
    return None


def _checkpoint_problem(ckpt):
    """Why a checkpoint dict cannot be rebuilt into a usable model, as ``(phrase, fix key or None)``, or None."""
    problem = _metadata_problem(ckpt)
    if problem:
        return problem, None
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            own = build_vit(ckpt["arch"], ckpt["num_classes"], ckpt["image_size"]).state_dict()
    except (UserError, ValueError, RuntimeError, AssertionError) as err:
        return f"describes no buildable model ({_first_line(err)})", None
    problem = _fit_problem(ckpt["model"], own)
    if problem:
        return f"holds weights that do not fit its own {ckpt['arch']} at {ckpt['image_size']} px: {problem}", None
    bad = non_finite_tensors(ckpt["model"])
    if bad:
        return (f"holds NaN or infinite weights ({len(bad)} tensors, e.g. {bad[0]}): the training run diverged",
                "diverged")
    return None


def model_from_checkpoint(ckpt):
    """Rebuild ``(model, preprocessing)`` from a loaded checkpoint, in eval mode on the CPU."""
    problem = _checkpoint_problem(ckpt)
    if problem:
        raise UserError(f"the checkpoint {problem[0]}", fix=problem[1])
    model = build_vit(ckpt["arch"], ckpt["num_classes"], ckpt["image_size"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), Preprocessing.from_dict(ckpt["preprocessing"])


def check_classes(ckpt, class_names, where, fix="classes"):
    """Refuse a checkpoint trained on other classes than the dataset at ``where`` (``fix``: the way out)."""
    if list(ckpt["class_names"]) != list(class_names):
        raise UserError(f"the checkpoint was trained on {ckpt['num_classes']} classes that do not match the "
                        f"{len(class_names)} classes of {where}", fix=fix)

"""The models this package trains and explains, and their checkpoints: torchvision's ViTs (the table of models,
building, ImageNet weights, offline-aware) and, by name prefix, timm's (``timm:<name>``, :mod:`vitlrp.timm_models`)
and Hugging Face's (``hf:<Hub id or folder>``, :mod:`vitlrp.hf_models`).

A checkpoint is a dict of plain types and tensors only, so it loads with ``torch.load(weights_only=True)``:
``arch`` (the model's name as given: ``vit_b_16``, ``timm:deit_small_patch16_224``, ``hf:google/vit-base-...``),
``family`` (``torchvision``, ``timm``, ``hf``; absent in older checkpoints: torchvision), ``build`` (timm and Hugging
Face: what rebuilds the architecture offline, the timm name and ``create_model`` arguments or the configuration dict),
``image_size``, ``num_classes``, ``class_names``, ``preprocessing``, ``model`` (state dict), optionally
``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``best_acc``, ``config``, ``val_split``,
``summary_row`` (that epoch's ``summary.csv`` row) and ``summary_rows`` (the last checkpoint: every row of the run up
to it).
"""
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision.models as tvm
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from . import hf_models, timm_models
from .errors import UserError
from .families import family_of, unwrap
from .fileio import torch_save
from .preprocess import Preprocessing
from .weights import first_line, fit_problem, load_file, non_finite_tensors, shape_of, state_dict_file

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


SOURCES = {"timm": timm_models, "hf": hf_models}  # the families built by name prefix (timm:, hf:)
DEFAULT_WEIGHTS = "default"  # timm and Hugging Face models: the named model's own weights, from its library's loader


def split_model(name):
    """``(family, name within it)``: ``'timm:x'`` → ``('timm', 'x')``, ``'hf:y'`` → ``('hf', 'y')``, anything else →
    ``('torchvision', name)``."""
    for family, source in SOURCES.items():
        if name.startswith(source.PREFIX):
            return family, name[len(source.PREFIX):]
    return "torchvision", name


def check_arch(arch, name="model"):
    """Refuse a model name this project cannot build (``name``: what the user calls the value): a torchvision name
    of the table, ``timm:<name>`` or ``hf:<Hub id or folder>``."""
    family, inner = split_model(arch)
    if family != "torchvision":
        SOURCES[family].check_name(inner)
        return arch
    if arch not in ARCHS:
        raise UserError(f"unknown {name} {arch!r}: choose one of {', '.join(ARCHS)}, timm:<timm model name> or "
                        "hf:<Hugging Face Hub id or folder>", setting=name)
    return arch


def weights_names(arch):
    """The names of ``arch``'s own weights: torchvision's (IMAGENET1K_V1, IMAGENET1K_SWAG_E2E_V1, ..., maybe none),
    ``default`` for a timm or Hugging Face model (its library's own)."""
    if split_model(arch)[0] != "torchvision":
        return [DEFAULT_WEIGHTS]
    weights = ARCHS[check_arch(arch)].weights
    return [w.name for w in weights] if weights is not None else []


def _weights(arch, name):
    """``arch``'s torchvision weights called ``name``, or None when ``name`` is not one of them."""
    return ARCHS[arch].weights[name] if name in weights_names(arch) else None


def check_pretrained(arch, pretrained):
    """Refuse a ``pretrained`` value that is not ``none``, one of ``arch``'s own weights names or an existing file
    (for a Hugging Face model also a folder written by ``save_pretrained``)."""
    own = weights_names(arch)
    family = split_model(arch)[0]
    if family != "torchvision":
        if pretrained.lower() == "none" or pretrained in own or Path(pretrained).is_file() or (
                family == "hf" and Path(pretrained).is_dir()):
            return pretrained
        where = "a weights file or a save_pretrained folder" if family == "hf" else "a weights file"
        raise UserError(f"pretrained {pretrained!r} is no weights name of {arch} and no existing file: choose "
                        f"{DEFAULT_WEIGHTS} (its own weights), none or {where}", setting="pretrained")
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


def _own_sizes(arch):
    """``(image size, patch size)`` of ``arch`` as built without an image size."""
    family, inner = split_model(arch)
    if family == "torchvision":
        spec = ARCHS[check_arch(arch)]
        return spec.image_size, spec.patch_size
    if family == "hf":  # the configuration says it
        config = hf_models.config_of(inner)
        return int(config.image_size), int(config.patch_size)
    with torch.device("meta"):  # the architecture only: no memory, no weights
        model = SOURCES[family].build(inner, 2)
    return family_of(model).image_size(model), family_of(model).patch_size(model)


def check_image_size(arch, image_size=0):
    """The input size ``arch`` is built at (``0``: its own); refuse one above :data:`MAX_IMAGE_SIZE` or off the
    patch grid."""
    own, patch = _own_sizes(arch)
    size = int(image_size or own)
    if not 0 < size <= MAX_IMAGE_SIZE:
        raise UserError(f"image_size must be between 1 and {MAX_IMAGE_SIZE} px, got {size}", setting="image_size")
    if size % patch:
        raise UserError(f"image_size {size} must be a multiple of {arch}'s patch size {patch}", setting="image_size")
    return size


def build_vit(arch, num_classes, image_size=0):
    """A randomly initialised torchvision ``VisionTransformer`` (zero-initialised head, as torchvision does)."""
    if split_model(arch)[0] != "torchvision":
        raise UserError(f"{arch} is no torchvision model: this builds the model table only ({', '.join(ARCHS)})",
                        setting="model")
    spec, size = ARCHS[check_arch(arch)], check_image_size(arch, image_size)
    if spec.builder is not None:
        return spec.builder(weights=None, num_classes=num_classes, image_size=size)
    return VisionTransformer(image_size=size, patch_size=spec.patch_size, num_classes=num_classes, **spec.spec)


def build_model(arch, num_classes, image_size=0):
    """A randomly initialised model of any family by name: :func:`build_vit` for torchvision's, timm's or Hugging
    Face's own initialisation for ``timm:``/``hf:`` names."""
    family, inner = split_model(arch)
    if family == "torchvision":
        return build_vit(arch, num_classes, image_size)
    return SOURCES[family].build(inner, num_classes, check_image_size(arch, image_size))


def default_image_size(arch, pretrained):
    """The input size of ``arch``'s weights ``pretrained`` (their ``min_size``: 384 for vit_b_16's SWAG_E2E), else
    ``arch``'s own."""
    if split_model(arch)[0] != "torchvision":
        return _own_sizes(arch)[0]
    weights = _weights(arch, pretrained)
    return weights.meta["min_size"][0] if weights is not None else ARCHS[check_arch(arch)].image_size


def weights_preprocessing(arch, pretrained, image_size):
    """The preprocessing ``arch``'s weights ``pretrained`` were trained with (their transforms: resize, crop,
    interpolation, mean and std), scaled to ``image_size``; ImageNet's standard one for ``none`` or a file. A timm
    or Hugging Face model: its library's configuration (whatever ``pretrained``)."""
    family, inner = split_model(arch)
    if family != "torchvision":
        return SOURCES[family].preprocessing(inner, image_size)
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
    return state_dict_file(path)


def load_pretrained(model, arch, pretrained):
    """Load ``arch``'s ImageNet (or a file's) weights into ``model`` except the classifier head; position embeddings
    are interpolated to the model's input size (timm and Hugging Face models: their module's loader)."""
    family, inner = split_model(arch)
    if family != "torchvision":
        return SOURCES[family].load_pretrained(model, inner, pretrained)
    state = {k: v for k, v in pretrained_state_dict(arch, pretrained).items() if not k.startswith("heads.")}
    pos = state.get("encoder.pos_embedding")
    own_pos = model.encoder.pos_embedding
    if pos is not None and pos.shape != own_pos.shape and pos.ndim == 3 and pos.shape[-1] == own_pos.shape[-1]:
        try:
            state = interpolate_embeddings(model.image_size, model.patch_size, state)
        except ValueError as err:  # a token count that is no square grid plus the class token
            raise UserError(f"weights {pretrained} do not fit this model: encoder.pos_embedding has shape "
                            f"{shape_of(pos)} ({first_line(err)})") from None
    problem = fit_problem(state, model.state_dict(), strict=False)
    if problem:  # another architecture (e.g. a vit_b_16 file for vit_tiny): load_state_dict would raise a traceback
        raise UserError(f"weights {pretrained} do not fit this model: {problem}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("heads.")]
    if missing or unexpected:
        raise UserError(f"weights {pretrained} do not fit this model: missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}")
    return model


def save_checkpoint(path, model, arch, class_names, preprocessing, **extra):
    """Write a checkpoint atomically (streamed to a temp file, then ``os.replace``)."""
    model = unwrap(model)
    family, inner = split_model(arch)
    if family_of(model).name != family:
        raise ValueError(f"a {family_of(model).name} model saved under the {family} name {arch!r}")
    build = {} if family == "torchvision" else {"build": SOURCES[family].record(model, inner)}
    ckpt = {"format": FORMAT, "arch": arch, "family": family, **build,
            "image_size": int(family_of(model).image_size(model)),
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
    ckpt = load_file(path, "checkpoint")
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
    family = split_model(ckpt["arch"])[0]
    if family == "torchvision" and ckpt["arch"] not in ARCHS:
        return f"names an unknown arch {ckpt['arch']!r} (known: {', '.join(ARCHS)}, timm:..., hf:...)"
    if ckpt.get("family", "torchvision") != family:
        return f"says family {ckpt.get('family')!r} for the model {ckpt['arch']!r}; it was not written by this package"
    if family != "torchvision" and not (isinstance(ckpt.get("build"), dict) and isinstance(
            ckpt["build"].get("name"), str)):
        return f"lacks what rebuilds its {family} model (build); it was not written by this package"
    if ckpt["num_classes"] < 1:
        return f"says num_classes {ckpt['num_classes']}: a classifier needs at least one class"
    if len(ckpt["class_names"]) != ckpt["num_classes"]:
        return f"names {len(ckpt['class_names'])} classes but says num_classes {ckpt['num_classes']}"
    if not all(isinstance(c, str) for c in ckpt["class_names"]):
        return "holds class names that are not text"
    try:
        prep = Preprocessing.from_dict(ckpt["preprocessing"])
    except (KeyError, TypeError, ValueError) as err:
        return f"holds unusable preprocessing settings ({type(err).__name__}: {first_line(err)})"
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
            model = _rebuild(ckpt)
    except ImportError as err:
        return f"holds a {ckpt['family']} model, and its package cannot be imported ({first_line(err)})", None
    except (UserError, ValueError, RuntimeError, AssertionError, KeyError, TypeError) as err:
        return f"describes no buildable model ({first_line(err)})", None
    size = family_of(model).image_size(model)
    if size != ckpt["image_size"]:
        return (f"says image_size {ckpt['image_size']} but its model takes {size} px; it was not written by this "
                "package"), None
    problem = fit_problem(ckpt["model"], model.state_dict())
    if problem:
        return f"holds weights that do not fit its own {ckpt['arch']} at {ckpt['image_size']} px: {problem}", None
    bad = non_finite_tensors(ckpt["model"])
    if bad:
        return (f"holds NaN or infinite weights ({len(bad)} tensors, e.g. {bad[0]}): the training run diverged",
                "diverged")
    return None


def _rebuild(ckpt):
    """The checkpoint's architecture, randomly initialised (no download: timm's name and arguments, Hugging Face's
    configuration dict)."""
    family = split_model(ckpt["arch"])[0]
    if family == "torchvision":
        return build_vit(ckpt["arch"], ckpt["num_classes"], ckpt["image_size"])
    return SOURCES[family].rebuild(ckpt["build"])


def model_from_checkpoint(ckpt):
    """Rebuild ``(model, preprocessing)`` from a loaded checkpoint, in eval mode on the CPU."""
    problem = _checkpoint_problem(ckpt)
    if problem:
        raise UserError(f"the checkpoint {problem[0]}", fix=problem[1])
    model = _rebuild(ckpt)
    model.load_state_dict(ckpt["model"])
    return model.eval(), Preprocessing.from_dict(ckpt["preprocessing"])


def check_classes(ckpt, class_names, where, fix="classes"):
    """Refuse a checkpoint trained on other classes than the dataset at ``where`` (``fix``: the way out)."""
    if list(ckpt["class_names"]) != list(class_names):
        raise UserError(f"the checkpoint was trained on {ckpt['num_classes']} classes that do not match the "
                        f"{len(class_names)} classes of {where}", fix=fix)

"""timm's ViTs as models of this package (``timm:<name>``, e.g. ``timm:vit_base_patch16_224.augreg_in21k_ft_in1k``):
checking the name, building, rebuilding a checkpoint's model offline, ImageNet weights and preprocessing.

A checkpoint records ``{"name": ..., "kwargs": {...}}``: ``timm.create_model(name, **kwargs)`` rebuilds the
architecture without a download (timm's model configs are code). Weights (``pretrained``): ``default`` (timm's own
loader, from the Hugging Face Hub or timm's URL, with timm's head removal and position-embedding resampling), ``none``
or a weights file (a state dict saved by ``torch.save`` or a safetensors file such as the Hub's
``model.safetensors``; timm's checkpoint filter maps it onto the model). timm is imported only by these functions.
"""
import importlib

import torch

from .errors import UserError
from .families import FAMILIES
from .families.timm import check_supported
from .preprocess import Preprocessing
from .weights import first_line, fit_problem, state_dict_file

PREFIX = "timm:"


def _timm():
    import timm

    return timm


def check_name(name):
    """Refuse a name timm does not know or whose model the explainer does not cover; returns the name."""
    if not name or not _timm().is_model(name):
        raise UserError(f"unknown timm model {name!r}: timm.list_models('vit_*') lists timm's ViTs", setting="model")
    with torch.device("meta"):  # the architecture only: no memory, no weights
        model = build(name, 2)
    if not any(f.name == "timm" and f.matches(model) for f in FAMILIES):
        raise UserError(f"timm model {name!r} is a {type(model).__name__}, not a VisionTransformer: the explainer "
                        "covers timm's VisionTransformer family (vit_*, deit_*, deit3_*, ...)", setting="model")
    check_supported(model)
    return name


def build(name, num_classes, image_size=0):
    """A randomly initialised timm model (timm's own init) with ``num_classes`` outputs at ``image_size`` (0: its
    own)."""
    kwargs = {"num_classes": int(num_classes), **({"img_size": int(image_size)} if image_size else {})}
    return _timm().create_model(name, pretrained=False, **kwargs)


def record(model, name):
    """What rebuilds ``model`` offline: the name and ``create_model``'s arguments."""
    size = model.patch_embed.img_size
    return {"name": name, "kwargs": {"num_classes": int(model.num_classes), "img_size": [int(s) for s in size]}}


def rebuild(rec):
    """The (randomly initialised) model a :func:`record` describes."""
    kwargs = dict(rec["kwargs"])
    if isinstance(kwargs.get("img_size"), list):
        kwargs["img_size"] = tuple(kwargs["img_size"])
    return _timm().create_model(rec["name"], pretrained=False, **kwargs)


def preprocessing(name, image_size):
    """The preprocessing of timm's configuration of ``name`` (mean, std, interpolation, crop share) at
    ``image_size``."""
    from timm.data import resolve_data_config

    with torch.device("meta"):
        cfg = resolve_data_config({}, model=build(name, 2))
    interpolation = cfg["interpolation"] if cfg["interpolation"] in ("bilinear", "bicubic", "nearest") else "bicubic"
    resize = max(image_size, int(round(image_size / cfg.get("crop_pct", 0.875))))
    return Preprocessing(image_size, resize, interpolation, tuple(cfg["mean"]), tuple(cfg["std"]))


def _filter_fn(model):
    """timm's checkpoint filter for the model's module (ViT's or DeiT's): key names, position embeddings."""
    module = importlib.import_module(type(model).__module__)
    return getattr(module, "checkpoint_filter_fn", None) or importlib.import_module(
        "timm.models.vision_transformer").checkpoint_filter_fn


def _where(cfg):
    hub = cfg.get("hf_hub_id")
    return f"https://huggingface.co/{hub}" if hub else cfg.get("url") or "timm's model hub"


def load_pretrained(model, name, pretrained):
    """Load timm's weights of ``name`` (``pretrained='default'``) or a file's into ``model``, its head excepted."""
    if pretrained == "default":
        from timm.models import load_pretrained as timm_load

        try:
            timm_load(model, num_classes=model.num_classes, filter_fn=_filter_fn(model))
        except Exception as err:  # no network, no cache: all end the same way for the user
            raise UserError(f"cannot download timm's weights of {name} from {_where(model.pretrained_cfg)} "
                            f"({type(err).__name__}: {first_line(err)}); download its model.safetensors (or "
                            "pytorch_model.bin) from there", fix="pretrained_download") from None
        return model
    state = _filter_fn(model)(state_dict_file(pretrained), model)
    own = model.state_dict()
    heads = [k for k in own if k.split(".")[0] in ("head", "head_dist")]
    state = {k: v for k, v in state.items() if not (k in heads and v.shape != own[k].shape)}
    problem = fit_problem(state, own, strict=False)
    missing, unexpected = model.load_state_dict(state, strict=False) if not problem else ([], [])
    missing = [k for k in missing if k not in heads]
    if problem or missing or unexpected:
        raise UserError(f"weights {pretrained} do not fit timm's {name}: "
                        f"{problem or f'missing {missing[:3]}, unexpected {unexpected[:3]}'}", setting="pretrained")
    return model

"""Hugging Face's ViT and DeiT image classifiers as models of this package (``hf:<Hub id or folder>``, e.g.
``hf:google/vit-base-patch16-224`` or a folder written by ``save_pretrained``): checking the name, building,
rebuilding a checkpoint's model offline, pretrained weights and preprocessing.

The configuration comes from the folder's ``config.json`` or the Hub (online, or transformers' cache); the model is
``ViTForImageClassification`` (``model_type`` vit) or ``DeiTForImageClassification`` (deit) built from it with this
run's classes and image size. A checkpoint records ``{"name": ..., "config": config.to_dict()}``, enough to rebuild
it offline. Weights (``pretrained``): ``default`` (the named model's own, by ``from_pretrained``), ``none``, another
folder or Hub id, or a weights file; the classifier is replaced and the position embeddings are resampled to the
image size (bicubic). transformers is imported only by these functions.
"""
import json
from pathlib import Path

from .errors import UserError
from .families import family_of
from .families.hf import check_supported
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .weights import first_line, fit_problem, resample_positions, state_dict_file

PREFIX = "hf:"
CLASSES = {"vit": "ViTForImageClassification", "deit": "DeiTForImageClassification"}
HEADS = ("classifier", "cls_classifier", "distillation_classifier")


def _where(name):
    return f"folder {name}" if Path(name).is_dir() else f"https://huggingface.co/{name}"


def _offline(name, err, what):
    return UserError(f"cannot load {what} of {name} from {_where(name)} ({type(err).__name__}: {first_line(err)}); "
                     "save the model with save_pretrained into a folder (config.json and its weights) and name that "
                     "folder", fix="hf_folder")


def config_of(name):
    """The transformers configuration of a folder's ``config.json`` or a Hub id."""
    from transformers import AutoConfig

    if not name:
        raise UserError("hf: needs a Hub id or a folder, e.g. hf:google/vit-base-patch16-224", setting="model")
    if name.startswith(("/", ".")) and not Path(name).is_dir():  # a path, not a Hub id
        raise UserError(f"folder {name} not found: name a folder written by save_pretrained, or a Hub id",
                        setting="model")
    if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
        raise UserError(f"folder {name} holds no config.json: save a model there with save_pretrained",
                        setting="model")
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise _offline(name, err, "the configuration") from None
    if config.model_type not in CLASSES:
        raise UserError(f"hf:{name} is a {config.model_type!r} model; supported: "
                        f"{', '.join(f'{t} ({c})' for t, c in CLASSES.items())}", setting="model")
    return config


def _from_config(config):
    import transformers

    model = getattr(transformers, CLASSES[config.model_type])(config)
    check_supported(model)
    return model


def check_name(name):
    """Refuse a folder or Hub id whose configuration cannot be read or is no ViT/DeiT; returns the name."""
    config_of(name)
    return name


def build(name, num_classes, image_size=0):
    """A randomly initialised classifier of ``name``'s configuration with ``num_classes`` labels at
    ``image_size`` (0: its own)."""
    config = config_of(name)
    config.num_labels = int(num_classes)
    if image_size:
        config.image_size = int(image_size)
    return _from_config(config)


def record(model, name):
    """What rebuilds ``model`` offline: the name and the configuration as a dict."""
    return {"name": name, "config": model.config.to_dict()}


def rebuild(rec):
    """The (randomly initialised) model a :func:`record` describes."""
    from transformers import CONFIG_MAPPING

    return _from_config(CONFIG_MAPPING[rec["config"]["model_type"]].from_dict(rec["config"]))


def preprocessing(name, image_size):
    """The mean, std and resampling of ``name``'s ``preprocessor_config.json`` when its folder has one, else
    ImageNet's; resize and centre crop as for torchvision (256/224)."""
    path = Path(name) / "preprocessor_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    interpolation = {2: "bilinear", 3: "bicubic", 0: "nearest"}.get(cfg.get("resample"), "bilinear")
    return Preprocessing(image_size, int(round(image_size * 256 / 224)), interpolation,
                         tuple(cfg.get("image_mean", IMAGENET_MEAN)), tuple(cfg.get("image_std", IMAGENET_STD)))


def _pretrained_state(name, pretrained):
    """The state dict of ``pretrained``: ``default`` (``name``'s own), a folder or Hub id, or a weights file."""
    source = name if pretrained == "default" else pretrained
    if Path(source).is_file():
        return state_dict_file(source)
    config = config_of(source)
    import transformers

    try:
        loaded = getattr(transformers, CLASSES[config.model_type]).from_pretrained(source)
    except (OSError, ValueError) as err:
        raise _offline(source, err, "the weights") from None
    return loaded.state_dict()


def load_pretrained(model, name, pretrained):
    """Load pretrained weights into ``model`` except its classifier(s); position embeddings resampled to its
    image size."""
    family = family_of(model)
    state = {k: v for k, v in _pretrained_state(name, pretrained).items() if k.split(".")[0] not in HEADS}
    own = model.state_dict()
    key = next((k for k in own if k.endswith("embeddings.position_embeddings")), None)
    if key in state and state[key].shape != own[key].shape:
        grid = family.image_size(model) // family.patch_size(model)
        try:
            state[key] = resample_positions(state[key], family.prefix_tokens(model), grid)
        except ValueError as err:
            raise UserError(f"weights {pretrained} do not fit hf:{name}: {err}", setting="pretrained") from None
    problem = fit_problem(state, own, strict=False)
    missing, unexpected = model.load_state_dict(state, strict=False) if not problem else ([], [])
    missing = [k for k in missing if k.split(".")[0] not in HEADS]
    if problem or missing or unexpected:
        raise UserError(f"weights {pretrained} do not fit hf:{name}: "
                        f"{problem or f'missing {missing[:3]}, unexpected {unexpected[:3]}'}", setting="pretrained")
    return model

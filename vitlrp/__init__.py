"""vitlrp: explain Vision Transformers with AttnLRP + zennit's Gamma rule, and measure which γ explains best.

The public API (``import vitlrp``; see docs/api.md)::

    model = vitlrp.build_model("vit_tiny", num_classes=10)      # or vitlrp.load_checkpoint(path).model
    result = vitlrp.explain(model, images, method="balanced")   # result.relevance: [B, H, W]
    scores = vitlrp.score(model, images, result, result.target)  # {metric: [B]}

Method names are strings (:func:`list_methods`): the presets, ``gamma:<conv>:<lin>[+attn]``, ``input_x_gradient``,
``integrated_gradients``, ``smoothgrad``, ``gradcam``, ``rollout``, ``gae``, ``random``. :class:`Explainer` is the
γ-LRP method itself (a context manager with ``attribute`` / ``attribute_many``), :class:`GammaSpec` its setting.

The modules behind it, one concept each:

- ``families``    model families (torchvision's, timm's, Hugging Face's ViTs): AttnLRP's rules, the attention
  swap, blocks, γ modules, sizes, logits, randomization steps, what Grad-CAM/rollout/GAE need
- ``gamma``       γ settings (:class:`GammaSpec`): presets, per-block schedules, names, best_gamma.json
- ``gammarule``   an exact, faster implementation of zennit's generalized Gamma rule
- ``explainer``   the γ-LRP method (:class:`Explainer`): one forward for many γ settings and classes
- ``cost``        what γ-LRP costs: matrix products and the FLOP ceiling against Input×Gradient
- ``protocol``    the method protocol: ``Method`` (``attribute``, ``attribute_many``), ``MethodSettings``
- ``methods``     the registry and every method by name, one file per family
- ``batch``       the one batch type: readable rows, the class each map explains
- ``metrics``     the table of metrics; ``scoring`` every method's maps of a batch scored together
- ``evaluation``  summaries, the best method per metric, paired comparisons; ``stats`` their statistics
- ``sanity``      the sanity checks: similarity, class draws, randomization, the batch runner, verdicts
- ``sweep``       the γ search; ``shortcut`` the Clever-Hans test
- ``models``      models by name and checkpoints (``timm_models``, ``hf_models``: ``timm:``/``hf:`` names;
  ``weights``: weights files read safely); ``training``, ``holdout`` the fine-tuning loop and its split
- ``preprocess``, ``cub``, ``synthetic``, ``download``   model input, the CUB layout, the mini-CUB, fetching CUB
- ``cli``, ``errors``, ``fileio``, ``runfolder``, ``runtime``, ``step``, ``checks``, ``inputs``   the scripts'
  plumbing: flags and one-line errors, atomic writes, output folders, devices and seeds, sharded steps, settings
- ``heatmaps``, ``predict``, ``render``, ``plots``, ``gallery``, ``report``   files, pictures, figures, HTML, tables
"""
import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
# name → (module, attribute): imported on first use, so that `from vitlrp import cli` (every script's first import)
# stays light and torch is imported only by what needs it
_EXPORTS = {
    "Checkpoint": ("api", "Checkpoint"), "build_model": ("api", "build_model"), "explain": ("api", "explain"),
    "load_checkpoint": ("api", "load_checkpoint"), "score": ("api", "score"), "UserError": ("errors", "UserError"),
    "Explainer": ("explainer", "Explainer"), "GammaSpec": ("gamma", "GammaSpec"), "PRESETS": ("gamma", "PRESETS"),
    "Attribution": ("protocol", "Attribution"), "Method": ("protocol", "Method"),
    "MethodSettings": ("protocol", "MethodSettings"), "create_method": ("methods", "create_method"),
    "list_methods": ("methods", "list_methods"), "METRICS": ("metrics", "ALL_METRICS"),
}
__all__ = ["METRICS", "PRESETS", "Attribution", "Checkpoint", "Explainer", "GammaSpec", "Method", "MethodSettings",
           "UserError", "build_model", "create_method", "explain", "list_methods", "load_checkpoint", "score"]

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ imports each name when it is first asked for
    from .api import Checkpoint, build_model, explain, load_checkpoint, score
    from .errors import UserError
    from .explainer import Explainer
    from .gamma import PRESETS, GammaSpec
    from .methods import create_method, list_methods
    from .metrics import ALL_METRICS as METRICS
    from .protocol import Attribution, Method, MethodSettings


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vitlrp' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})

"""Model families: the registry (:mod:`vitlrp.families.registry`: :data:`FAMILIES`, :func:`register_family`,
:func:`family_of`) and the built-in families, imported here in lookup order (each registers itself): torchvision's
ViT, timm's ``VisionTransformer``, Hugging Face's ViT and DeiT classifiers. The timm and Hugging Face family
modules never import their library: a model of theirs exists only once the caller has imported it."""
# isort: off
from . import torchvision, timm, hf  # noqa: F401  (each registers its family, in lookup order)
# isort: on
from .registry import FAMILIES, family_of, forward_logits, lrp_active, register_family, unwrap

__all__ = ["FAMILIES", "family_of", "forward_logits", "lrp_active", "register_family", "unwrap"]

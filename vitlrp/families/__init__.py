"""Model families: the registry (:mod:`vitlrp.families.registry`: :data:`FAMILIES`, :func:`register_family`,
:func:`family_of`) and the built-in families, imported here in lookup order (each registers itself)."""
from . import torchvision  # noqa: F401  (registers the torchvision family)
from .registry import FAMILIES, family_of, lrp_active, register_family

__all__ = ["FAMILIES", "family_of", "lrp_active", "register_family"]

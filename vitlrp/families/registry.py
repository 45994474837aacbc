"""The registry of model families: every architecture-specific thing the explainer needs comes from one family
object, found by the model's type (:func:`family_of`). No architecture code lives here.

A family provides ``name``, ``matches(model)``, ``lrp_patched(model)`` and ``attention_as_linear(model)`` (context
managers), ``blocks(model)``, ``gamma_modules(model, attention)``, ``patch_embedding(model)``, ``image_size(model)``,
``patch_size(model)``, ``num_classes(model)``, ``logits(output)`` and ``lrp_active()`` (whether its patches are in
place now); :mod:`vitlrp.families.torchvision` is the reference.
"""
from ..errors import UserError

FAMILIES = []  # registration order = lookup order


def register_family(family):
    """Register a family (usable as a class decorator: the class is instantiated); a name registered twice is an
    error. Returns what it was given."""
    obj = family() if isinstance(family, type) else family
    if any(f.name == obj.name for f in FAMILIES):
        raise ValueError(f"model family {obj.name!r} is registered twice")
    FAMILIES.append(obj)
    return family


def family_of(model):
    """The first registered family whose ``matches(model)`` is True; a UserError naming the supported ones else."""
    for family in FAMILIES:
        if family.matches(model):
            return family
    raise UserError(f"{type(model).__name__} is no model of a supported family ({', '.join(f.name for f in FAMILIES)})"
                    "; the explainer needs one of their vision transformers")


def lrp_active():
    """Whether any family's LRP patches are in place now (the plain-model methods refuse to run inside them)."""
    return any(f.lrp_active() for f in FAMILIES)

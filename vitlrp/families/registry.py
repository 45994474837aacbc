"""The registry of model families: every architecture-specific thing the explainer needs comes from one family
object, found by the model's type (:func:`family_of`). No architecture code lives here.

A family provides ``name``, ``matches(model)``, ``lrp_patched(model)`` and ``attention_as_linear(model)`` (context
managers), ``blocks(model)``, ``gamma_modules(model, attention)``, ``patch_embedding(model)``, ``image_size(model)``,
``patch_size(model)``, ``num_classes(model)``, ``logits(output)`` and ``lrp_active()`` (whether its patches are in
place now); for the other methods and checks also ``step_parameters(model)`` (the sanity checks' randomization
steps, :func:`partition_steps`), ``prefix_tokens(model)`` and ``class_token(model)`` (the tokens before the patch
grid; whether the first is a class token), ``gradcam_layer(model)`` and ``attention_layers(model)`` (rollout, GAE).
:mod:`vitlrp.families.torchvision` is the reference.
"""
import torch

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


def square_size(value, what, family):
    """``value`` (an int or a pair) as one int; a :class:`~vitlrp.errors.UserError` when not square."""
    value = (value, value) if isinstance(value, int) else tuple(value)
    if value[0] != value[1]:
        raise UserError(f"{family} model with a non-square {what} {value}: only square images are supported")
    return value[0]


def unwrap(model):
    """The plain module behind DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def forward_logits(model, x):
    """The ``[B, classes]`` logits of ``model(x)``: the output itself when it is a tensor (torchvision, timm, any
    plain classifier), else what the model's family reads from it (Hugging Face's output object)."""
    out = model(x)
    return out if torch.is_tensor(out) else family_of(unwrap(model)).logits(out)


def partition_steps(model, blocks, embedding, head):
    """``{step: [(name, parameter)]}`` of the randomization cascade, top down: ``head``, ``block_{L-1}`` …
    ``block_0``, ``embedding``. ``blocks``: the encoder blocks; ``embedding`` and ``head``: the modules and
    parameters of those steps (None entries skipped). Every parameter lies in exactly one step (else a ValueError)."""
    owner = {}
    for step, parts in [("embedding", embedding), ("head", head)] + [(f"block_{i}", [b]) for i, b in
                                                                     enumerate(blocks)]:
        for part in parts:
            params = [part] if isinstance(part, torch.nn.Parameter) else [] if part is None else part.parameters()
            owner.update({id(p): step for p in params})
    steps = {s: [] for s in ["head", *(f"block_{i}" for i in reversed(range(len(blocks)))), "embedding"]}
    for name, p in model.named_parameters():
        if id(p) not in owner:
            raise ValueError(f"parameter {name} of {type(model).__name__} belongs to no randomization step")
        steps[owner[id(p)]].append((name, p))
    return steps


def other_norms(model):
    """A problem line for every normalisation module that is not a LayerNorm (the recipe's identity rule covers
    LayerNorm only)."""
    for name, m in model.named_modules():
        if "Norm" in type(m).__name__ and not isinstance(m, torch.nn.LayerNorm):
            yield f"{name} is a {type(m).__name__} (supported normalisation: LayerNorm)"


def refuse_first(problems, family, model):
    """A :class:`~vitlrp.errors.UserError` naming the first of ``problems`` (the parts the recipe does not cover)."""
    problem = next(problems, None)
    if problem:
        raise UserError(f"{family} model {type(model).__name__}: {problem}; AttnLRP's recipe does not cover it")

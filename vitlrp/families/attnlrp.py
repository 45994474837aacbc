"""LXT's AttnLRP rules (its torchvision recipe, CP-LRP variant) attached to module *instances* of one model.

LXT patches classes for the whole process (``nn.LayerNorm``, ``nn.GELU``, ``nn.MultiheadAttention``). timm's
``LayerNorm`` overrides ``forward`` in a subclass, Hugging Face's GELU is its own class and neither library's
attention is ``nn.MultiheadAttention``, so the families here set the same rules on the instances instead, with
LXT's own functions:

- LayerNorm: ``lxt.efficient.patches.layer_norm_forward`` (the identity rule: the std is detached);
- the MLP's element-wise activation: ``lxt.efficient.patches.non_linear_forward`` (the identity rule);
- CP-LRP: the query and key are detached (``lxt.efficient.rules.stop_gradient``) by a forward pre-hook on the
  first module that receives them, so no relevance flows through the softmax or the QKᵀ product.

With query and key detached, the attention probabilities are constants in the backward and the AV product is
linear in V: LXT's torchvision recipe applies no uniform (÷2) rule there, and neither does this one. Residual
adds, LayerScale, the class/register tokens, pooling and the position embedding are linear and get the plain
gradient (LRP-0 in the Input×Gradient form). The instance attributes and hooks are removed on exit (also on an
error); entering again for the same model while patched only counts depth.

:class:`ClassPatch` is the other kind, for LXT's own class patches (torchvision's classes, and
:data:`ZENNIT`: zennit's ``BasicHook`` in LXT's Input×Gradient convention, which every family's ``impl='zennit'``
needs): active only inside :meth:`ClassPatch.applied`, restored on exit.
"""
import types
import weakref
from contextlib import contextmanager

_MISSING = object()
_depth = weakref.WeakKeyDictionary()  # model → how many lrp_patched blocks are open for it


class ClassPatch:
    """A patch of class attributes for the whole process that LXT applies without an undo: ``targets()`` lists the
    ``(class, attribute)`` pairs it rewrites, ``apply()`` applies it. Active only inside :meth:`applied` (nestable:
    an inner block only counts depth); the saved attributes are restored on exit, also after an error."""

    def __init__(self, targets, apply):
        self.targets, self.apply, self.depth = targets, apply, 0

    @property
    def active(self):
        return self.depth > 0

    @contextmanager
    def applied(self):
        if self.depth:
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
            return
        saved = [(cls, name, cls.__dict__.get(name, _MISSING)) for cls, name in self.targets()]
        self.depth = 1
        try:
            self.apply()
            yield
        finally:
            for cls, name, value in saved:
                if value is _MISSING:
                    if name in cls.__dict__:
                        delattr(cls, name)
                else:
                    setattr(cls, name, value)
            self.depth = 0


def _zennit_targets():
    from zennit.core import BasicHook

    return [(BasicHook, "forward"), (BasicHook, "backward")]


def _patch_zennit():
    from lxt.efficient import monkey_patch_zennit  # slow import (transformers): only when explaining

    monkey_patch_zennit()


# zennit's hooks in LXT's Input×Gradient convention (the Explainer's impl='zennit', whatever the family)
ZENNIT = ClassPatch(_zennit_targets, _patch_zennit)


def _set(module, attr, value, saved):
    saved.append((module, attr, module.__dict__.get(attr, _MISSING)))
    setattr(module, attr, value)


@contextmanager
def instance_rules(model, layer_norms, activations, query_key_inputs):
    """AttnLRP on ``model`` inside the block: the identity rule on each of ``layer_norms`` (``nn.LayerNorm``) and
    ``activations`` (element-wise modules), the inputs of ``query_key_inputs`` detached (CP-LRP)."""
    if model in _depth:
        _depth[model] += 1
        try:
            yield
        finally:
            _depth[model] -= 1
        return
    from lxt.efficient.patches import layer_norm_forward, non_linear_forward
    from lxt.efficient.rules import stop_gradient

    def detach_first(module, args):
        return (stop_gradient(args[0]), *args[1:])

    def unique(modules):  # a module shared by two blocks gets its rule once (twice would wrap it in itself)
        return list({id(m): m for m in modules}.values())

    saved, handles = [], []
    _depth[model] = 1
    try:
        for m in unique(layer_norms):
            _set(m, "forward", types.MethodType(layer_norm_forward, m), saved)
        for m in unique(activations):
            _set(m, "original_forward", m.forward, saved)
            _set(m, "forward", types.MethodType(non_linear_forward, m), saved)
        for m in unique(query_key_inputs):  # prepended: runs before any hook of a Gamma rule on the same module
            handles.append(m.register_forward_pre_hook(detach_first, prepend=True))
        yield
    finally:
        for h in handles:
            h.remove()
        for m, attr, old in reversed(saved):
            if old is _MISSING:
                delattr(m, attr)
            else:
                setattr(m, attr, old)
        del _depth[model]


def patched_now(model):
    """Whether :func:`instance_rules` is active for ``model``."""
    return model in _depth


def patched_models():
    """The models :func:`instance_rules` is active for now."""
    return list(_depth)

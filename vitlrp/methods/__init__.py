"""Every attribution method by name, each a class registered once in the file of its family.

=============  ==========================================================================
``lrp``        AttnLRP + the Gamma rule (:class:`vitlrp.explainer.Explainer`): the presets, ``gamma:<conv>:<lin>``,
               ``+attn``
``gradients``  ``input_x_gradient``, ``integrated_gradients`` (Captum), ``smoothgrad`` (Captum)
``cam``        ``gradcam`` (pytorch-grad-cam)
``attention``  ``rollout``, ``gae``
``baselines``  ``random``
=============  ==========================================================================

The protocol is :mod:`vitlrp.protocol`'s (:class:`Method`: ``attribute(x, target)``, ``attribute_many(x,
targets)``), the registry :mod:`vitlrp.methods.registry`'s (:func:`register`, :func:`create_method`). The family
modules are imported here in the order ``--help`` lists them; each registers its methods.
"""
# isort: off
from . import lrp, gradients, cam, attention, baselines  # noqa: F401  (each registers its methods, in this order)
# isort: on
from ..protocol import Attribution, Method, MethodSettings, attribute_all
from .registry import (
    REGISTRY,
    MethodChoice,
    check_available,
    choices,
    create_method,
    help_text,
    list_methods,
    names,
    parse_method,
    parse_methods,
    register,
    unregister,
)

__all__ = ["REGISTRY", "Attribution", "Method", "MethodChoice", "MethodSettings", "attribute_all", "check_available",
           "choices", "create_method", "help_text", "list_methods", "names", "parse_method", "parse_methods",
           "register", "unregister"]

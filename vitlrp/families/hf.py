"""The Hugging Face family: transformers' ``ViTForImageClassification``, ``DeiTForImageClassification`` and
``DeiTForImageClassificationWithTeacher`` (the distilled DeiT: the mean of its two heads, both linear).

Recipe (:mod:`vitlrp.families.attnlrp`, LXT's torchvision recipe rule for rule): every ``nn.LayerNorm``
(``layernorm_before``/``layernorm_after``, the final ``layernorm``) gets the identity rule, as does each block's
``intermediate_act_fn``; the inputs of the ``query`` and ``key`` projections are detached (CP-LRP), whichever
attention function (eager, sdpa) the config selects. The attention's ``query``/``key``/``value`` and
``attention.output.dense`` are called ``nn.Linear`` modules: the Gamma rule goes on them only with
``attention=True`` (and acts on value and output alone, since query and key receive no relevance).

transformers is never imported here (it is slow to import): a model of this family exists only once the caller
has imported it.
"""
import sys
from contextlib import nullcontext

from torch import nn

from .attnlrp import instance_rules, patched_models
from .registry import other_norms, partition_steps, refuse_first, register_family, square_size

_CLASSES = {
    "transformers.models.vit.modeling_vit": ("ViTForImageClassification",),
    "transformers.models.deit.modeling_deit": ("DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
}


def _layers(model):
    return list(model.base_model.encoder.layer)


def _problems(model):
    """What the recipe does not cover, first found first (lazily)."""
    if model.base_model.pooler is not None:
        yield "a pooler (a Linear and tanh on the class token) that the classifier does not use"
    for i, layer in enumerate(_layers(model)):
        if not isinstance(layer.intermediate.intermediate_act_fn, nn.Module):
            yield f"layer {i}'s activation is a plain function (give config.hidden_act as a name, e.g. 'gelu')"
    yield from other_norms(model)


def check_supported(model):
    """A :class:`~vitlrp.errors.UserError` naming the first part the recipe does not cover."""
    refuse_first(_problems(model), "Hugging Face", model)


def _attention(attn, x):
    """The self-attention's probabilities ``[B, heads, N, N]`` and its context output computed from them."""
    b, n, _ = x.shape
    h, d = attn.num_attention_heads, attn.attention_head_size

    def heads(t):
        return t.view(b, n, h, d).transpose(1, 2)

    a = (heads(attn.query(x)) @ heads(attn.key(x)).transpose(-1, -2) * attn.scaling).softmax(-1)
    return a, (a @ heads(attn.value(x))).transpose(1, 2).reshape(b, n, h * d)


@register_family
class HuggingFaceViT:
    """transformers' ViT and DeiT image classifiers (see the module docstring)."""

    name = "hf"

    def matches(self, model):
        """Whether ``model`` is one of the Hugging Face image classifiers above."""
        for module_name, class_names in _CLASSES.items():
            module = sys.modules.get(module_name)
            if module is not None and isinstance(model, tuple(getattr(module, c) for c in class_names)):
                return True
        return False

    def lrp_patched(self, model):
        """AttnLRP's rules on this model inside the block (see the module docstring); restored on exit."""
        check_supported(model)
        layers = _layers(model)
        return instance_rules(
            model,
            layer_norms=[m for m in model.modules() if isinstance(m, nn.LayerNorm)],
            activations=[layer.intermediate.intermediate_act_fn for layer in layers],
            query_key_inputs=[m for layer in layers for m in (layer.attention.attention.query,
                                                              layer.attention.attention.key)])

    def lrp_active(self):
        return any(self.matches(m) for m in patched_models())

    def attention_as_linear(self, model):
        """A no-op: the attention's projections are called ``nn.Linear`` modules already."""
        return nullcontext()

    def blocks(self, model):
        return _layers(model)

    def gamma_modules(self, model, attention):
        """name → module for the Gamma rule: the patch embedding, the MLP linears, the classifier(s); the attention's
        query/key/value and output projections only with ``attention``."""
        parts = ["intermediate.dense", "output.dense"]
        if attention:
            parts += ["attention.attention.query", "attention.attention.key", "attention.attention.value",
                      "attention.output.dense"]
        chosen = {id(self.patch_embedding(model))}
        chosen.update(id(layer.get_submodule(p)) for layer in _layers(model) for p in parts)
        chosen.update(id(m) for m in model.children() if isinstance(m, nn.Linear))  # classifier(s)
        return {n: m for n, m in model.named_modules() if id(m) in chosen}

    def patch_embedding(self, model):
        return model.base_model.embeddings.patch_embeddings.projection

    def image_size(self, model):
        return square_size(model.config.image_size, "image size", "Hugging Face")

    def patch_size(self, model):
        return square_size(model.config.patch_size, "patch size", "Hugging Face")

    def num_classes(self, model):
        return model.config.num_labels

    def logits(self, output):
        """The ``[B, classes]`` logits of the model's output object."""
        return output.logits

    def step_parameters(self, model):
        """The sanity checks' randomization steps: the embeddings (patch projection, class and distillation tokens,
        position embedding) first; the final LayerNorm goes with the classifier(s)."""
        head = [m for m in model.children() if isinstance(m, nn.Linear)] + [model.base_model.layernorm]
        return partition_steps(model, self.blocks(model), [model.base_model.embeddings], head)

    def prefix_tokens(self, model):
        """Tokens before the patch grid: the class token (and DeiT's distillation token)."""
        grid = self.image_size(model) // self.patch_size(model)
        return model.base_model.embeddings.position_embeddings.shape[1] - grid * grid

    def class_token(self, model):
        return True

    def gradcam_layer(self, model):
        return _layers(model)[-1].layernorm_before

    def attention_layers(self, model):
        return [(layer.attention.attention, _attention) for layer in _layers(model)]

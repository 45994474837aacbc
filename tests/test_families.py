"""vitlrp.families: AttnLRP + the Gamma rule for timm's ViTs and Hugging Face's ViT/DeiT, through the public entry
point (``vitlrp.explain(model, x, target=..., method=...)`` finds the family by the model's type), equal to the
torchvision path where an equivalent torchvision model exists, on the CPU with tiny seeded models (the full
ViT-B/16 is slow).
"""
import contextlib
import os
import subprocess
import sys

import pytest
import torch
from test_explain import images, randomize, rel_err, tiny_vit
from torch import nn

import vitlrp
from vitlrp.errors import UserError
from vitlrp.families import FAMILIES, convert, family_of
from vitlrp.families.attnlrp import instance_rules, patched_now
from vitlrp.families.timm import TimmViT as TimmFamily
from vitlrp.gamma import PRESETS, GammaSpec
from vitlrp.methods import MethodSettings

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402
from transformers import (  # noqa: E402
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMPLS = ("fused", "zennit")
SMALL = dict(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=5)
TIMM_SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, num_classes=5,
                  weight_init="jax")  # xavier-uniform linears, as torchvision: timm's default (std 0.02) is small
HF_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                patch_size=8, num_labels=5, layer_norm_eps=1e-6, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, initializer_range=0.15)


def cosine(a, b):
    """The smallest per-image cosine similarity of two [B, H, W] maps."""
    return nn.functional.cosine_similarity(a.double().flatten(1), b.double().flatten(1)).min().item()


def method_name(gammas, attention=False):
    """The method name of a ``(conv, lin)`` setting (a preset's name when it is one)."""
    preset = next((p for p, g in PRESETS.items() if GammaSpec(*g) == GammaSpec(*gammas)), None)
    return (preset + "+attn" * attention) if preset else GammaSpec(*gammas, attention).name


def explain(model, x, target, gammas, attention=False, impl="fused"):
    """``(logits, relevance)`` through the public entry point, in the model's dtype."""
    settings = MethodSettings(next(model.parameters()).dtype, impl)
    result = vitlrp.explain(model, x, target=target, method=method_name(gammas, attention), settings=settings)
    return result.logits, result.relevance


@contextlib.contextmanager
def looked_up_first(family):
    """``family`` first in the registry's lookup order inside the block (a recipe with a rule left out)."""
    FAMILIES.insert(0, family)
    try:
        yield
    finally:
        FAMILIES.remove(family)


def randomize_family_model(model, seed=0):
    """Random biases, tokens, LayerNorm affines, positive LayerScale and head (inits leave many of them 0 or 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if name.endswith(".gamma"):  # timm's LayerScale: positive, so that folding it keeps the rule's signs
                p.copy_(0.3 + 0.1 * noise.abs())
            elif "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith("bias") or "token" in name:
                p.copy_(0.05 * noise)
            elif name.split(".")[0] in ("head", "head_dist", "classifier", "cls_classifier",
                                        "distillation_classifier") and name.endswith("weight"):
                p.copy_(0.1 * noise)
    return model.eval()


def zero_absorbers(model):
    """No biases, no tokens, no position embedding: nothing but the input carries relevance."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "token" in name or "pos" in name or "position" in name:
                p.zero_()
    return model


def timm_vit(seed=0, **kwargs):
    torch.manual_seed(seed)
    return randomize_family_model(TimmViT(**{**TIMM_SMALL, **kwargs}), seed)


def hf_model(cls=ViTForImageClassification, config=ViTConfig, seed=0, **kwargs):
    torch.manual_seed(seed)
    return randomize_family_model(cls(config(**{**HF_SMALL, **kwargs})), seed)


@pytest.fixture(scope="module")
def copies():
    """A random torchvision ViT (random head and biases) and its timm and Hugging Face copies."""
    tv = tiny_vit(seed=3, **SMALL)
    return tv, convert.timm_from_torchvision(tv), convert.hf_from_torchvision(tv)


# --- equal to the torchvision path ------------------------------------------------------------------------
@pytest.mark.parametrize("size", [dict(image_size=32, patch_size=8), dict(image_size=64, patch_size=16)])
def test_copied_weights_give_the_same_logits(size):
    tv = tiny_vit(seed=4, **{**SMALL, **size})
    x = images(3, seed=5, size=size["image_size"])
    copies = convert.timm_from_torchvision(tv), convert.hf_from_torchvision(tv)
    with torch.no_grad():
        expected = tv(x)
        for model in copies:
            diff = (family_of(model).logits(model(x)) - expected).abs().max().item()
            print(f"{family_of(model).name} {size}: max |logit diff| = {diff:.1e}")
            assert diff <= 1e-5
    assert [family_of(m).name for m in (tv, *copies)] == ["torchvision", "timm", "hf"]
    assert [f.name for f in FAMILIES if f.matches(tv)] == ["torchvision"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("attention", [False, True], ids=["default", "+attn"])
def test_every_preset_map_equals_the_torchvision_map(copies, impl, attention):
    tv, timm_model, hf_vit = copies
    x, target = images(3, seed=6), torch.tensor([1, 4, 0])
    maps = {}
    for preset, gammas in PRESETS.items():
        expected = maps[preset] = explain(tv, x, target, gammas, attention, impl)[1]
        for model in (timm_model, hf_vit):
            logits, relevance = explain(model, x, target, gammas, attention, impl)
            cos, err = cosine(relevance, expected), rel_err(relevance, expected)
            print(f"{family_of(model).name} {preset}{'+attn' * attention} {impl}: cosine {cos:.7f}, "
                  f"max |diff| / max |R| = {err:.1e}")
            assert cos >= 0.9999 and relevance.abs().sum() > 0
    # the presets give clearly different maps, so agreeing on each is not agreeing on one map
    assert cosine(maps["baseline"], maps["very_aggressive"]) < 0.99


def test_per_block_schedules_reach_the_same_blocks(copies):
    tv, timm_model, hf_vit = copies
    x, target = images(2, seed=7), torch.tensor([2, 3])
    for schedule in ("2/0", "0/2"):
        expected = explain(tv, x, target, (1.0, schedule), True)[1]
        for model in (timm_model, hf_vit):
            assert cosine(explain(model, x, target, (1.0, schedule), True)[1], expected) >= 0.9999


@pytest.mark.parametrize("method", ["input_x_gradient", "gradcam", "rollout", "gae"])
def test_the_other_methods_give_the_torchvision_map(copies, method):
    """Input×Gradient, Grad-CAM (the family's last-block LayerNorm and prefix tokens), rollout and GAE (the family's
    recomputed attention) on the copies: the torchvision maps."""
    tv, *others = copies
    x, target = images(3, seed=24), torch.tensor([2, 0, 4])
    expected = vitlrp.explain(tv, x, target=target, method=method).relevance
    assert expected.abs().sum() > 0
    for model in others:
        relevance = vitlrp.explain(model, x, target=target, method=method).relevance
        assert cosine(relevance, expected) >= 0.9999, (family_of(model).name, method)


def test_scores_of_the_copies_equal_torchvision_s_without_the_patch_token_shortcut(copies):
    """The perturbation curves skip the patch embedding for torchvision's ViT only (``ModelForward.patch_tokens``);
    the timm and Hugging Face copies perturb the images themselves and score the same maps the same."""
    from vitlrp.scoring import ModelForward

    tv, *others = copies
    x = images(3, seed=25)
    maps = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(26))
    expected = vitlrp.score(tv, x, maps, None)
    assert ModelForward(tv, torch.float32, torch.device("cpu")).patch_tokens(x) is not None
    for model in others:
        assert ModelForward(model, torch.float32, torch.device("cpu")).patch_tokens(x) is None
        for metric, values in vitlrp.score(model, x, maps, None).items():
            torch.testing.assert_close(values, expected[metric], rtol=0, atol=1e-5, msg=metric)


def test_the_randomization_steps_are_the_same_parts(copies):
    """The sanity checks' cascade (``family.step_parameters``): the same steps, each holding the same number of
    weights in all three (HF splits the packed in_proj into query, key and value)."""
    from vitlrp.sanity.randomization import randomization_steps, step_parameters

    sizes = [{step: sum(p.numel() for _, p in named) for step, named in step_parameters(m).items()} for m in copies]
    assert sizes[0] == sizes[1] == sizes[2] and list(sizes[0]) == randomization_steps(copies[0])
    assert list(sizes[0]) == ["head", "block_1", "block_0", "embedding"]
    for model in (timm_vit(reg_tokens=2, init_values=0.1, pre_norm=True), _distilled(), hf_model(),
                  HF_VARIANTS["deit-distilled"]()):
        named = [p for ps in step_parameters(model).values() for _, p in ps]
        assert len(named) == len(list(model.parameters())) == len({id(p) for p in named}), type(model).__name__


# --- conservation -----------------------------------------------------------------------------------------
def _sum_ratios(model, attention, impl):
    x = images(3, seed=10, dtype=torch.float64)
    ratios = []
    for gammas in ((0.0, 0.0), (1.0, 0.5), (10.0, 1.0)):
        logits, relevance = explain(model, x, None, gammas, attention, impl)
        ratios.append(relevance.sum((1, 2)) / logits.max(1).values)
    return torch.stack(ratios)


CONSERVING = {
    "timm": lambda: timm_vit(seed=11),
    "hf-vit": lambda: hf_model(seed=12),
    "hf-deit-distilled": lambda: hf_model(DeiTForImageClassificationWithTeacher, DeiTConfig, seed=13),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("attention", [False, True], ids=["default", "+attn"])
@pytest.mark.parametrize("kind", list(CONSERVING))
def test_relevance_is_conserved_when_nothing_absorbs_it(kind, attention, impl):
    """As tests/test_explain.py shows for torchvision: no biases, tokens or position embedding, and the map sums to
    the explained logit (query/key detached and LayerNorm's std held: the network is linear in its input)."""
    model = zero_absorbers(CONSERVING[kind]().double())
    ratios = _sum_ratios(model, attention, impl)
    assert (ratios - 1).abs().max() < 2e-4, ratios.tolist()


def test_conservation_detects_a_missing_rule():
    """The sum property is not automatic: without CP-LRP's detach, LayerNorm's or GELU's identity rule it fails (by
    0.77, 1.1 and 0.38 here)."""
    model = zero_absorbers(timm_vit(seed=11).double())
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    acts = [blk.mlp.act for blk in model.blocks]
    qk = [m for blk in model.blocks for m in (blk.attn.q_norm, blk.attn.k_norm)]
    for rules in ((norms, acts, []), ([], acts, qk), (norms, [], qk)):
        with looked_up_first(MissingRule(rules)):
            ratios = _sum_ratios(model, False, "fused")
        assert (ratios - 1).abs().max() > 1e-2, ratios.tolist()
    assert (_sum_ratios(model, False, "fused") - 1).abs().max() < 2e-4  # the registry's timm recipe again


class MissingRule(TimmFamily):
    """timm's recipe with one kind of rule left out (the other two lists of :func:`instance_rules` given)."""

    name = "timm_missing_rule"

    def __init__(self, rules):
        self.rules = rules

    def lrp_patched(self, model):
        return instance_rules(model, *self.rules)


# --- timm's features ---------------------------------------------------------------------------------------
def _unfused(model):
    for blk in model.blocks:
        blk.attn.fused_attn = False
    return model


def _shared_activation(model):
    for blk in model.blocks:  # one GELU module called by every block: its rule must be set once
        blk.mlp.act = model.blocks[0].mlp.act
    return model


def _distilled(**kwargs):
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    return randomize_family_model(VisionTransformerDistilled(**{**TIMM_SMALL, **kwargs}), 0)


# none of these has a torchvision equivalent; what each test below proves for them is said there
TIMM_VARIANTS = {
    "avg-pool": lambda: timm_vit(class_token=False, global_pool="avg"),  # fc_norm after the mean of the tokens
    "layerscale": lambda: timm_vit(init_values=0.1, no_embed_class=True),  # deit3_*'s layout
    "registers": lambda: timm_vit(reg_tokens=4, no_embed_class=True),  # vit_*_reg4_*'s layout
    "qk-norm": lambda: timm_vit(qk_norm=True),
    "unfused-attention": lambda: _unfused(timm_vit()),
    "pre-norm": lambda: timm_vit(pre_norm=True),  # CLIP's layout: a LayerNorm before the blocks
    "post-norm": lambda: timm_vit(block_fn=timm.models.vision_transformer.ResPostBlock),
    "deit-distilled": _distilled,  # the class and distillation tokens' heads, averaged
    "shared-activation": lambda: _shared_activation(timm_vit()),
}


@pytest.mark.parametrize("kind", list(TIMM_VARIANTS))
def test_timm_variants_explain_with_unchanged_logits_and_gamma_acting(kind):
    """Each variant: the patched forward gives the plain logits, fused and zennit give the same maps (float64,
    i.e. the rules sit on the same modules), and γ changes the map."""
    model = TIMM_VARIANTS[kind]()
    x, target = images(2, seed=14), torch.tensor([1, 2])
    with torch.no_grad():
        plain = model(x)
        with family_of(model).lrp_patched(model):
            patched = model(x)
    torch.testing.assert_close(patched, plain, rtol=0, atol=1e-6)
    maps = {}
    for impl in IMPLS:
        logits, maps[impl] = explain(model.double(), x.double(), target, (1.0, 0.5), True, impl)
        model.float()
        torch.testing.assert_close(logits.float(), plain, rtol=0, atol=1e-6)
    err = rel_err(maps["fused"], maps["zennit"])
    base = explain(model, x, target, (0.0, 0.0))[1]
    cos = cosine(base, explain(model, x, target, (10.0, 1.0))[1])
    print(f"{kind}: fused vs zennit (float64) {err:.1e}; cosine γ=0 vs aggressive {cos:.3f}")
    assert err < 1e-10 and base.abs().sum() > 0 and cos < 0.99


@pytest.mark.parametrize("kind", list(TIMM_VARIANTS))
def test_timm_variants_conserve_relevance(kind):
    """Conservation with every variant's extra part in place: the rules leave no nonlinearity on the relevance
    path (avg pooling, fc_norm, LayerScale, registers, qk-norm, pre-/post-norm, the distilled heads)."""
    model = zero_absorbers(TIMM_VARIANTS[kind]().double())
    ratios = torch.cat([_sum_ratios(model, attention, "fused") for attention in (False, True)])
    assert (ratios - 1).abs().max() < 2e-4, ratios.tolist()


def test_layerscale_folded_into_the_weights_gives_the_same_map():
    """A positive LayerScale is a per-row scale of the linear before it: folding it into ``proj``/``fc2`` gives the
    plain timm ViT (which equals torchvision's), and the same map for every preset."""
    scaled = timm_vit(seed=15, init_values=0.1)
    plain = timm_vit(seed=16)
    state = dict(scaled.state_dict())
    for i in range(len(scaled.blocks)):
        for ls, linear in (("ls1", "attn.proj"), ("ls2", "mlp.fc2")):
            scale = state.pop(f"blocks.{i}.{ls}.gamma")
            state[f"blocks.{i}.{linear}.weight"] = state[f"blocks.{i}.{linear}.weight"] * scale[:, None]
            state[f"blocks.{i}.{linear}.bias"] = state[f"blocks.{i}.{linear}.bias"] * scale
    plain.load_state_dict(state)
    x, target = images(2, seed=17), torch.tensor([0, 4])
    for gammas in PRESETS.values():
        assert cosine(explain(scaled, x, target, gammas, True)[1], explain(plain, x, target, gammas, True)[1]) \
            >= 0.9999


def test_no_embed_class_equals_a_zero_class_position():
    """``no_embed_class`` leaves the class token without a position embedding: the same as a zero row for it."""
    without = timm_vit(seed=18, no_embed_class=True)
    with_row = timm_vit(seed=18)
    state = dict(without.state_dict())
    state["pos_embed"] = torch.cat([torch.zeros(1, 1, state["pos_embed"].shape[-1]), state["pos_embed"]], 1)
    with_row.load_state_dict(state)
    x, target = images(2, seed=19), torch.tensor([3, 1])
    for gammas in ((0.0, 0.0), (10.0, 1.0)):
        a, b = explain(without, x, target, gammas, True)[1], explain(with_row, x, target, gammas, True)[1]
        assert rel_err(a, b) < 1e-5


def test_fused_and_unfused_attention_give_the_same_map():
    model = timm_vit(seed=20, qk_norm=True)
    x, target = images(2, seed=21), torch.tensor([2, 2])
    fused = explain(model, x, target, (1.0, 0.5), True)[1]
    unfused = explain(_unfused(model), x, target, (1.0, 0.5), True)[1]
    assert rel_err(unfused, fused) < 1e-5


# --- Hugging Face: DeiT and the attention functions ---------------------------------------------------------
HF_VARIANTS = {
    "vit-eager": lambda: hf_model(attn_implementation="eager"),
    "deit": lambda: hf_model(DeiTForImageClassification, DeiTConfig),
    "deit-distilled": lambda: hf_model(DeiTForImageClassificationWithTeacher, DeiTConfig),
}


@pytest.mark.parametrize("kind", list(HF_VARIANTS))
def test_hf_variants_explain_with_unchanged_logits_and_gamma_acting(kind):
    """DeiT (and its distilled two-head variant) have a distillation token torchvision's ViT lacks: no copy to
    compare with, so the same checks as for timm's variants, conservation included."""
    model = HF_VARIANTS[kind]()
    x, target = images(2, seed=22), torch.tensor([1, 3])
    with torch.no_grad():
        plain = model(x).logits
        with family_of(model).lrp_patched(model):
            torch.testing.assert_close(model(x).logits, plain, rtol=0, atol=1e-6)
    maps = {impl: explain(model.double(), x.double(), target, (1.0, 0.5), True, impl)[1] for impl in IMPLS}
    ratios = torch.cat([_sum_ratios(zero_absorbers(model), attention, "fused") for attention in (False, True)])
    model.float()
    base = explain(HF_VARIANTS[kind](), x, target, (0.0, 0.0))[1]
    cos = cosine(base, explain(HF_VARIANTS[kind](), x, target, (10.0, 1.0))[1])
    assert rel_err(maps["fused"], maps["zennit"]) < 1e-10 and cos < 0.99
    assert (ratios - 1).abs().max() < 2e-4, ratios.tolist()


def test_hf_eager_and_sdpa_attention_give_the_same_map(copies):
    hf_vit = copies[2]
    eager = convert.hf_from_torchvision(copies[0])
    eager.config._attn_implementation = "eager"
    x, target = images(2, seed=23), torch.tensor([0, 1])
    a, b = explain(hf_vit, x, target, (1.0, 0.5), True)[1], explain(eager, x, target, (1.0, 0.5), True)[1]
    assert rel_err(a, b) < 1e-5


# --- where γ acts -----------------------------------------------------------------------------------------
def test_gamma_modules_are_torchvision_s_layers():
    model = timm_vit(reg_tokens=2)
    timm_family, hf_family = family_of(model), family_of(hf_model())
    mlp = {f"blocks.{i}.mlp.fc{j}" for i in range(2) for j in (1, 2)}
    attn = {f"blocks.{i}.attn.{p}" for i in range(2) for p in ("qkv", "proj")}
    assert set(timm_family.gamma_modules(model, False)) == {"patch_embed.proj", "head"} | mlp
    assert set(timm_family.gamma_modules(model, True)) == {"patch_embed.proj", "head"} | mlp | attn
    assert "head_dist" in timm_family.gamma_modules(_distilled(), False)
    layer = "vit.encoder.layer.{}."
    mlp = {layer.format(i) + p for i in range(2) for p in ("intermediate.dense", "output.dense")}
    attn = {layer.format(i) + p for i in range(2) for p in ("attention.attention.query", "attention.attention.key",
                                                              "attention.attention.value", "attention.output.dense")}
    model = hf_model()
    assert set(hf_family.gamma_modules(model, False)) == {"vit.embeddings.patch_embeddings.projection",
                                                          "classifier"} | mlp
    assert set(hf_family.gamma_modules(model, True)) - set(hf_family.gamma_modules(model, False)) == attn
    heads = {"cls_classifier", "distillation_classifier"}
    assert heads <= set(hf_family.gamma_modules(HF_VARIANTS["deit-distilled"](), False))
    assert [(f.image_size(m), f.patch_size(m), f.num_classes(m)) for f, m in
            ((timm_family, timm_vit()), (hf_family, model))] == [(32, 8, 5)] * 2
    assert len(timm_family.blocks(timm_vit())) == len(hf_family.blocks(model)) == 2


# --- the patches are undone --------------------------------------------------------------------------------
def _class_state():
    from timm.layers import Attention, LayerNorm, Mlp
    from transformers.activations import GELUActivation
    from transformers.models.deit.modeling_deit import DeiTSelfAttention
    from transformers.models.vit import modeling_vit
    from zennit.core import BasicHook

    classes = (nn.GELU, nn.LayerNorm, nn.MultiheadAttention, LayerNorm, Attention, Mlp, GELUActivation,
               modeling_vit.ViTSelfAttention, DeiTSelfAttention, BasicHook)
    state = {(c.__name__, k): v for c in classes for k, v in vars(c).items()
             if k in ("forward", "original_forward", "backward")}
    state["vit attention functions"] = (modeling_vit.eager_attention_forward,
                                        dict(modeling_vit.ALL_ATTENTION_FUNCTIONS))
    return state


def _assert_plain_instances(model):
    for name, module in model.named_modules():
        assert not {"forward", "original_forward"} & set(module.__dict__), name
        assert not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks), name


def _logits_and_input_grad(model, x):
    x = x.clone().requires_grad_(True)
    logits = family_of(model).logits(model(x))
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    return logits.detach(), grad


RESTORED = {
    "timm": lambda: timm_vit(seed=24, init_values=0.1, reg_tokens=2, qk_norm=True),
    "hf-vit": lambda: hf_model(seed=25),
    "hf-deit-distilled": lambda: hf_model(DeiTForImageClassificationWithTeacher, DeiTConfig, seed=26),
}


@pytest.mark.parametrize("kind", list(RESTORED))
def test_patches_are_undone_after_the_block_nested_and_on_errors(kind):
    model, x = RESTORED[kind](), images(2, seed=27)
    family, classes = family_of(model), _class_state()
    before = _logits_and_input_grad(model, x)
    with family.lrp_patched(model):
        patched = _logits_and_input_grad(model, x)
        assert not torch.allclose(patched[1], before[1])  # the rules change the gradient: they are in place
        with family.lrp_patched(model):  # nested: the inner exit leaves the outer block patched
            pass
        assert patched_now(model) and torch.equal(_logits_and_input_grad(model, x)[1], patched[1])
    assert not patched_now(model)
    with pytest.raises(KeyError, match="inside"):
        with family.lrp_patched(model):
            raise KeyError("inside the block")

    def explode(module, args):
        raise RuntimeError("boom in the forward")

    handle = family.blocks(model)[1].register_forward_pre_hook(explode)
    for impl in IMPLS:  # fails mid-forward with patches, rules (fused or zennit hooks) and LXT's zennit patch on
        with pytest.raises(RuntimeError, match="boom"):
            explain(model, x, None, (1.0, 0.5), True, impl)
    handle.remove()
    _assert_plain_instances(model)
    assert _class_state() == classes
    after = _logits_and_input_grad(model, x)
    assert all(torch.equal(a, b) for a, b in zip(after, before))


# --- what is not covered: one clear line ------------------------------------------------------------------
def _unsupported_models():
    from timm.layers import SwiGLU

    yield timm_vit(global_pool="map"), "global_pool='map'"
    yield timm_vit(norm_layer="rmsnorm"), "RmsNorm"
    yield timm_vit(mlp_layer=SwiGLU), "SwiGLU"
    yield timm_vit(block_fn=timm.models.vision_transformer.ParallelScalingBlock), "ParallelScalingBlock"
    yield hf_model(hidden_act=nn.functional.gelu), "plain function"


def test_unsupported_parts_are_one_clear_error_and_leave_nothing_patched():
    x = images(1, seed=28)
    for model, message in _unsupported_models():
        with pytest.raises(UserError, match=message) as err:
            explain(model, x, None, (1.0, 0.5))
        assert "\n" not in str(err.value) and "not cover" in str(err.value)
        _assert_plain_instances(model)


def test_the_torchvision_path_needs_neither_timm_nor_transformers(tmp_path):
    """timm made unimportable: a torchvision model is built, found, trained on, saved, loaded and explained by a
    plain method and by γ-LRP; transformers is first imported by LXT itself (its package imports it), when the
    LRP patches are first applied, and timm never."""
    code = ("import sys\n"
            "sys.modules['timm'] = None  # any import of timm fails from here on\n"
            "import torch, vitlrp\n"
            "from vitlrp.families import family_of, forward_logits\n"
            "from vitlrp.models import save_checkpoint\n"
            "from vitlrp.preprocess import Preprocessing\n"
            "model = vitlrp.build_model('vit_tiny', 5, 32)\n"
            "x = torch.randn(2, 3, 32, 32)\n"
            "forward_logits(model.train(), x).sum().backward()\n"
            f"save_checkpoint({str(tmp_path / 'c.pt')!r}, model, 'vit_tiny', list('abcde'),"
            " Preprocessing.for_size(32))\n"
            f"model = vitlrp.load_checkpoint({str(tmp_path / 'c.pt')!r}).model\n"
            "assert family_of(model).name == 'torchvision'\n"
            "vitlrp.explain(model, x, method='input_x_gradient')\n"
            "before = 'transformers' in sys.modules\n"
            "vitlrp.explain(model, x, method='balanced+attn')\n"
            "print(before, 'transformers' in sys.modules, sys.modules['timm'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False True None"


# --- the real size ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit_b16():
    """A random ViT-B/16 (224 px, 12 blocks, random head and biases) and its timm and Hugging Face copies."""
    from vitlrp.models import build_vit

    torch.manual_seed(0)
    tv = randomize(build_vit("vit_b_16", 200), seed=0, bias_std=0.02)
    return tv, convert.timm_from_torchvision(tv), convert.hf_from_torchvision(tv)


def _b16_maps_agree(vit_b16, settings, impl):
    tv, *copies = vit_b16
    x, target = images(1, seed=2, size=224), torch.tensor([7])
    for preset, attention in settings:
        reference = explain(tv, x, target, PRESETS[preset], attention, impl)[1]
        for model in copies:
            relevance = explain(model, x, target, PRESETS[preset], attention, impl)[1]
            cos, err = cosine(relevance, reference), rel_err(relevance, reference)
            print(f"ViT-B/16 {family_of(model).name} {preset}{'+attn' * attention} {impl}: cosine {cos:.7f}, "
                  f"max |diff| / max |R| = {err:.1e}")
            assert cos >= 0.9999


EVERY_SETTING = [(preset, attention) for attention in (False, True) for preset in PRESETS]


@pytest.mark.slow
def test_vit_b16_copies_give_the_torchvision_logits_and_maps(vit_b16):
    """Full ViT-B/16: logits to 1e-5; every preset's map, +attn included, equal to torchvision's (cosine >= 0.9999)
    with the fused rule, and with zennit's hooks for the strongest setting (all of zennit's: the opt-in test)."""
    tv, *copies = vit_b16
    x = images(1, seed=2, size=224)
    with torch.no_grad():
        expected = tv(x)
        for model in copies:
            diff = (family_of(model).logits(model(x)) - expected).abs().max().item()
            print(f"ViT-B/16 {family_of(model).name}: max |logit diff| = {diff:.1e}")
            assert diff <= 1e-5
    _b16_maps_agree(vit_b16, EVERY_SETTING, "fused")
    _b16_maps_agree(vit_b16, [("very_aggressive", True)], "zennit")


@pytest.mark.optin
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("VITLRP_SLOW"), reason="slow (5 min on 2 busy cores): set VITLRP_SLOW=1")
def test_vit_b16_every_setting_with_zennit(vit_b16):
    _b16_maps_agree(vit_b16, EVERY_SETTING, "zennit")

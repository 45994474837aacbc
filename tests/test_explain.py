"""vitlrp.explainer / vitlrp.gammarule: AttnLRP (LXT) + zennit's Gamma rule on torchvision ViTs, on the CPU.

Models are tiny and seeded. torchvision zero-initialises the classifier head (a fresh model's logits are 0 and
so is every relevance), so the helpers below give the head and every bias random values.
"""
import contextlib
import textwrap

import pytest
import torch
from conftest import run_script
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torchvision.models.vision_transformer import VisionTransformer

from vitlrp import cost, gammarule
from vitlrp.errors import UserError
from vitlrp.explainer import Explainer
from vitlrp.families import FAMILIES, register_family
from vitlrp.families.torchvision import lxt_patched
from vitlrp.gamma import PRESETS, GammaSpec, check_gamma
from vitlrp.heatmaps import coverage_line
from vitlrp.methods import MethodSettings
from vitlrp.models import build_vit

TINY = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5)
IMPLS = ("zennit", "fused")


def randomize(model, seed=0, bias_std=0.05, head_std=0.1):
    """Random head, random biases, random class token (torchvision leaves them zero or ~0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or name == "class_token":
                p.copy_(torch.randn(p.shape, generator=gen) * bias_std)
        model.heads.head.weight.copy_(torch.randn(model.heads.head.weight.shape, generator=gen) * head_std)
    return model.eval()


def explainer(model, conv=1.0, lin=0.5, attention=False, dtype=torch.float32, impl="fused"):
    """The γ-LRP method with the gammas, attention, dtype and implementation given (the tests' short form)."""
    return Explainer(model, GammaSpec(conv, lin, attention), MethodSettings(dtype, impl))


def run(ex, x, target=None):
    """``(logits, relevance)`` of an entered Explainer."""
    r = ex.attribute(x, target)
    return r.logits, r.relevance


def many(ex, x, target, settings, also=()):
    """``(logits, relevance [K, B, H, W], *[K, B, H, W] per further choice of classes)`` of several ``(conv, lin)``
    settings from :meth:`Explainer.attribute_gammas`."""
    results = ex.attribute_gammas(x, [target, *also], settings)
    maps = [torch.stack([r[t].relevance for r in results]) for t in range(1 + len(also))]
    return (results[0][0].logits, *maps)


def tiny_vit(seed=0, dtype=torch.float32, **kwargs):
    torch.manual_seed(seed)
    return randomize(VisionTransformer(**{**TINY, **kwargs}), seed).to(dtype)


def images(n=3, seed=1, size=32, dtype=torch.float32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rel_err(a, b):
    """Largest absolute difference relative to the largest |b|."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def pearson(a, b):
    """Per-image Pearson correlation of two [B, H, W] maps."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def plain_patched_relevance(model, x, target):
    """Input×Gradient of the LXT-patched model without any Gamma rule (call inside lxt_patched())."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), x)
    return logits.detach(), (x * grad).sum(1).detach()


# --- forward unchanged ------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gamma_attention", [False, True], ids=["mha", "attn-linear"])
def test_forward_logits_unchanged_by_the_rules(impl, gamma_attention):
    model, x = tiny_vit(), images()
    with torch.no_grad():
        unpatched = model(x)
    with lxt_patched():
        with torch.no_grad():
            patched = model(x)
        with explainer(model, 1.0, 0.5, gamma_attention, impl=impl) as ex:
            logits, relevance = run(ex, x)
    assert relevance.shape == (3, 32, 32) and relevance.abs().sum() > 0
    if gamma_attention:
        # LinearAttention computes the same attention through nn.Linear + scaled_dot_product_attention
        torch.testing.assert_close(logits, patched, rtol=1e-5, atol=1e-5)
    else:
        # the composite / fused functions run the very same F.linear / F.conv2d: bit-identical logits
        assert torch.equal(logits, patched)
    torch.testing.assert_close(logits, unpatched, rtol=1e-5, atol=1e-5)


# --- presets, gamma = 0, batching, bf16, conservation -----------------------------------------------------
class TwoLayer(nn.Module):
    """A two-layer model: a patch-embedding conv (4 px patches of an 8 px image, kernel = stride) and a Linear over
    the flattened tokens. With ``head_is_attention`` the toy family treats the Linear as an attention projection:
    γ reaches it only with ``GammaSpec.attention``, as torchvision's attention projections."""

    def __init__(self, seed=0, classes=3, dim=5, head_is_attention=False):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv, self.head = nn.Conv2d(3, dim, 4, stride=4), nn.Linear(dim * 4, classes)
        self.head_is_attention = head_is_attention
        with torch.no_grad():
            for p in self.parameters():  # both signs everywhere, biases included
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.ndim == 1 else 1.0))
        self.double().eval()

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))


class ToyFamily:
    """The model-family seam for :class:`TwoLayer`: LXT's zennit patch (the Input×Gradient convention), no blocks."""

    name = "toy_two_layer"

    def matches(self, model):
        return isinstance(model, TwoLayer)

    def lrp_patched(self, model):
        return lxt_patched()

    def lrp_active(self):
        return False

    def attention_as_linear(self, model):
        return contextlib.nullcontext()

    def blocks(self, model):
        return []

    def gamma_modules(self, model, attention):
        return {"conv": model.conv, **({"head": model.head} if attention or not model.head_is_attention else {})}

    def patch_embedding(self, model):
        return model.conv

    def image_size(self, model):
        return 8

    def patch_size(self, model):
        return 4

    def num_classes(self, model):
        return model.head.out_features

    def logits(self, output):
        return output


@pytest.fixture
def toy_family():
    family = ToyFamily()
    register_family(family)
    yield family
    FAMILIES.remove(family)


def gamma_rule(x, weight, bias, relevance, gamma, eps=1e-6):
    """zennit's generalized Gamma rule for ``z = x Wᵀ + b`` written out: the input relevance ``[N, in]`` of the
    output relevance ``[N, out]``. Positive outputs share it in proportion to ``x(W + γW⁺)`` for ``x > 0`` and
    ``x(W + γW⁻)`` for ``x < 0`` over ``z + γ(x⁺W⁺ᵀ + x⁻W⁻ᵀ + b⁺)``, negative outputs with ``W⁺`` and ``W⁻`` swapped
    (and ``b⁻``); zennit's stabilizer adds ``ε·sign`` to each denominator."""
    z = x @ weight.T + bias
    xp, xn, wp, wn = x.clamp(min=0), x.clamp(max=0), weight.clamp(min=0), weight.clamp(max=0)

    def share(mask, d):
        return torch.where(mask, relevance / (d + ((d == 0).to(d) + d.sign()) * eps), torch.zeros_like(d))

    s_pos = share(z > 0, z + gamma * (xp @ wp.T + xn @ wn.T + bias.clamp(min=0)))
    s_neg = share(z < 0, z + gamma * (xp @ wn.T + xn @ wp.T + bias.clamp(max=0)))
    return (x * ((s_pos + s_neg) @ weight) + gamma * (xp * (s_pos @ wp + s_neg @ wn) + xn * (s_pos @ wn + s_neg @ wp)))


@torch.no_grad()
def replica_map(model, x, target, conv_gamma, head_gamma):
    """The pixel relevance of :class:`TwoLayer` by hand: ``R = z_target`` at the head, the Gamma rule at the head
    (``head_gamma`` None: no rule there, i.e. input × gradient), then at each patch of the conv; channels summed."""
    b, dim = len(x), model.conv.out_channels
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(b, 4, 48)  # [B, 2·2, 3·4·4]
    tokens = model.conv(x).flatten(1)  # [B, D·4], channel-major
    logits = model.head(tokens)
    top = torch.zeros_like(logits).scatter(1, target.view(-1, 1), logits.gather(1, target.view(-1, 1)))
    if head_gamma is None:
        at_tokens = tokens * (nn.functional.one_hot(target, logits.shape[1]).to(tokens) @ model.head.weight)
    else:
        at_tokens = gamma_rule(tokens, model.head.weight, model.head.bias, top, head_gamma)
    at_tokens = at_tokens.view(b, dim, 4).transpose(1, 2)  # [B, 2·2 patches, D]
    w, bias = model.conv.weight.reshape(dim, 48), model.conv.bias
    at_pixels = torch.stack([gamma_rule(patches[:, k], w, bias, at_tokens[:, k], conv_gamma) for k in range(4)], 1)
    pixels = at_pixels.view(b, 2, 2, 3, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, 8, 8)
    return pixels.sum(1)


def toy_images(n=4, seed=1):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_equals_a_hand_written_replica_on_a_two_layer_model(toy_family, impl, preset):
    """Each preset's map is the Gamma rule written out by hand with that preset's Conv2d γ and Linear γ (float64):
    the maps of the presets differ exactly as their γ say, not merely 'clearly'."""
    model, x, target = TwoLayer(seed=2), toy_images(), torch.tensor([0, 2, 1, 1])
    with Explainer(model, preset, MethodSettings(torch.float64, impl)) as ex:
        r = ex.attribute(x, target)
        assert ex.gamma_layers() == {"conv": "Conv2d", "head": "Linear"}
    conv, lin = PRESETS[preset]
    expected = replica_map(model, x, target, conv, lin)
    assert expected.abs().amax() > 0
    torch.testing.assert_close(r.relevance, expected, rtol=0, atol=1e-9 * float(expected.abs().amax()))
    if preset != "baseline":  # the replica tells the presets apart: another γ is another map
        other = replica_map(model, x, target, 0.0, 0.0)
        assert (r.relevance - other).abs().amax() > 1e-3 * float(other.abs().amax())


@pytest.mark.parametrize("impl", IMPLS)
def test_gamma_zero_is_the_plain_patched_gradient(impl):
    model, x = tiny_vit(dtype=torch.float64), images(dtype=torch.float64)
    target = torch.tensor([3, 1, 4])
    with lxt_patched():
        _, plain = plain_patched_relevance(model, x, target)
    with explainer(model, 0.0, 0.0, dtype=torch.float64, impl=impl) as ex:
        _, relevance = run(ex, x, target)
    assert relevance.dtype == torch.float64
    # With γ = 0 the Gamma rule is LRP-0, i.e. the plain gradient, except for zennit's stabilizer: each layer
    # divides by z + 1e-6·sign(z) instead of z, a relative change of 1e-6/|z| that reaches ~1e-3 where a
    # pre-activation of this random model is ~1e-3. In float64 nothing else differs, hence the tolerance.
    err = rel_err(relevance, plain)
    print(f"{impl}: gamma=0 vs plain patched Input×Gradient, max |diff| / max |R| = {err:.2e}")
    assert err < 2e-3
    with explainer(model, 0.25, 0.25, dtype=torch.float64, impl=impl) as ex:
        assert rel_err(run(ex, x, target)[1], plain) > 0.05  # the tolerance above does not hide γ > 0


@pytest.mark.parametrize("impl", IMPLS)
def test_batched_maps_equal_per_image_maps(impl):
    model, x = tiny_vit(), images(4)
    target = torch.tensor([0, 4, 2, 2])
    with explainer(model, 1.0, 0.5, impl=impl) as ex:
        _, batched = run(ex, x, target)
        single = torch.cat([run(ex, x[i:i + 1], target[i:i + 1])[1] for i in range(len(x))])
    err = rel_err(batched, single)
    print(f"{impl}: batched vs per-image, max |diff| / max |R| = {err:.1e}")
    torch.testing.assert_close(batched, single, rtol=0, atol=2e-6 * single.abs().max().item())


# every preset, γ = 0 on one layer alone (the patch embedding; the first block), and a γ barely above 0
FIDELITY_SETTINGS = (*PRESETS, "gamma:0:0.5", "gamma:1:0/0.5", "gamma:1:0.001")
# Cosine of each map to the fp32 fused map. fp32: fused and zennit are the same rule (identical in float64), so only
# float32 rounding (~1e-7 per step) separates them (measured 1 - cos < 1e-7). bf16: 8 significant bits, ~0.4% per
# rounding, compounded over the layers and largest where γ is large (measured >= 0.992 at `aggressive`, >= 0.997
# elsewhere; >= 0.994 on a 4-block, 64 px model). A map whose denominators cancel (zennit's re-runs in bf16, before
# they ran in float32: 0.03-0.13 at every setting with a γ = 0 or 0.001 here) falls far under the bound.
COSINE_BOUND = {torch.float32: 1 - 1e-5, torch.bfloat16: 0.98}


@pytest.fixture(scope="module")
def fp32_fused_maps():
    model, x, target = tiny_vit(), images(4), torch.tensor([0, 1, 2, 3])
    refs = {}
    for name in FIDELITY_SETTINGS:
        with Explainer(model, name, MethodSettings(impl="fused")) as ex:
            refs[name] = ex.attribute(x, target)
    return model, x, target, refs


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_maps_match_the_fp32_fused_map_at_every_setting(fp32_fused_maps, impl, dtype):
    """Every (implementation × dtype × preset, γ = 0 on a single layer, a tiny γ) gives the fp32 fused map within
    the dtype's rounding (:data:`COSINE_BOUND`); the logits too."""
    model, x, target, refs = fp32_fused_maps
    cosines = {}
    for name in FIDELITY_SETTINGS:
        with Explainer(model, name, MethodSettings(dtype, impl)) as ex:
            r = ex.attribute(x, target)
            assert next(ex.lrp_model.parameters()).dtype == dtype
        assert r.relevance.dtype == torch.float32 and torch.isfinite(r.relevance).all()
        cosines[name] = torch.nn.functional.cosine_similarity(r.relevance.flatten(1).double(),
                                                              refs[name].relevance.flatten(1).double()).min().item()
        torch.testing.assert_close(r.logits, refs[name].logits, rtol=0.05, atol=0.05)
    assert next(model.parameters()).dtype == torch.float32  # the dtype copy leaves the model alone
    print(f"{impl} {dtype}: min cosine to the fp32 fused map " + ", ".join(f"{n} {c:.7f}" for n, c in cosines.items()))
    low = {n: round(c, 5) for n, c in cosines.items() if c < COSINE_BOUND[dtype]}
    assert not low, f"cosine below {COSINE_BOUND[dtype]}: {low}"


def test_relevance_sum_is_finite_and_tracks_the_logit():
    model, x = tiny_vit(), images()
    with explainer(model, 1.0, 0.5, impl="fused") as ex:
        logits, relevance = run(ex, x)
    explained = logits.max(1).values
    ratio = relevance.sum((1, 2)) / explained
    print(f"random tiny ViT with biases: sum(R) / logit = {[round(r, 3) for r in ratio.tolist()]}")
    assert torch.isfinite(relevance).all() and (relevance.abs().sum((1, 2)) > 0).all()
    # biases, the class token and the position embedding absorb relevance: not conserved, but of the same order
    assert ((ratio > 0.1) & (ratio < 3)).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gamma_attention", [False, True], ids=["mha", "attn-linear"])
def test_relevance_is_conserved_when_nothing_absorbs_it(impl, gamma_attention):
    """No biases, no class token, no position embedding: with the attention weights and the LayerNorm scale
    held constant (CP-LRP / LXT's identity rules) the ViT is linear in its input, and LRP (LRP-0 and the Gamma
    rule alike) gives back exactly the explained logit, up to zennit's 1e-6 stabilizer."""
    model = tiny_vit(dtype=torch.float64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or name in ("class_token", "encoder.pos_embedding"):
                p.zero_()
    x = images(dtype=torch.float64)
    for gammas in ((0.0, 0.0), (1.0, 0.5), (10.0, 1.0)):
        with explainer(model, *gammas, gamma_attention, torch.float64, impl) as ex:
            logits, relevance = run(ex, x)
        ratio = relevance.sum((1, 2)) / logits.max(1).values
        assert (ratio - 1).abs().max() < 2e-4, (gammas, ratio.tolist())


# --- the reference: LXT's own torchvision ViT recipe ------------------------------------------------------
REFERENCE = textwrap.dedent('''\
    """LXT's documented recipe for torchvision's ViT, in a fresh process (its patch is permanent there)."""
    import sys

    import torch
    import torchvision
    from torch import nn
    from torchvision.models.vision_transformer import VisionTransformer
    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from zennit.composites import LayerMapComposite
    from zennit.rules import Gamma

    monkey_patch(torchvision.models.vision_transformer)
    monkey_patch_zennit()
    data = torch.load(sys.argv[1], weights_only=True)
    results = []
    for conv_gamma, lin_gamma in data["gammas"]:  # one model per setting: the composite stays registered
        model = VisionTransformer(**data["kwargs"])
        model.load_state_dict(data["state"])
        model.eval()
        LayerMapComposite([(nn.Conv2d, Gamma(conv_gamma)), (nn.Linear, Gamma(lin_gamma))]).register(model)
        x = data["x"].clone()
        y = model(x.requires_grad_())
        y[range(len(x)), data["target"]].sum().backward()
        R = (x * x.grad).sum(1)
        results.append({"relevance": R.detach(), "logits": y.detach()})
    torch.save(results, sys.argv[2])
''')


def test_maps_equal_lxt_reference_recipe(tmp_path):
    model, x = tiny_vit(seed=3), images(3, seed=4)
    target = torch.tensor([4, 0, 2])
    gammas = [(1.0, 0.5), (10.0, 1.0), (0.0, 0.0)]
    child = tmp_path / "lxt_reference.py"
    child.write_text(REFERENCE, encoding="utf-8")
    torch.save({"kwargs": TINY, "state": model.state_dict(), "x": x, "target": target, "gammas": gammas},
               tmp_path / "in.pt")
    proc = run_script(child, tmp_path / "in.pt", tmp_path / "out.pt")
    assert proc.returncode == 0, proc.stderr[-2000:]
    refs = torch.load(tmp_path / "out.pt", weights_only=True)
    assert len(refs) == len(gammas)
    for (conv, lin), ref in zip(gammas, refs):
        assert ref["relevance"].abs().sum() > 0
        for impl in IMPLS:
            with explainer(model, conv, lin, impl=impl) as ex:
                logits, relevance = run(ex, x, target)
            err = rel_err(relevance, ref["relevance"])
            print(f"gamma {conv:g}/{lin:g} {impl}: vs LXT reference, max |diff| / max |R| = {err:.1e} "
                  f"(bit-identical: {torch.equal(relevance, ref['relevance'])})")
            assert torch.equal(logits, ref["logits"])
            if impl == "zennit":
                assert err < 1e-6  # the same hooks on the same model: bit-identical in practice
            else:
                # fused: same formula, other float32 rounding. At γ = 0 zennit divides g·z by the *recomputed*
                # (x⁺W + b) + x⁻W, the fused rule by z itself; where z nearly cancels to 0 the two roundings
                # differ by more, so that case gets a looser (still float32-level) bound.
                assert err < (1e-5 if conv or lin else 1e-4)


# --- fused Gamma rule vs zennit's hooks -------------------------------------------------------------------
def _layer_and_input(kind, gen):
    if kind == "linear":
        layer, x = nn.Linear(12, 7), torch.randn(5, 3, 12, generator=gen)
    else:  # ViT's patch embedding: kernel = stride
        layer, x = nn.Conv2d(3, 6, 4, stride=4), torch.randn(2, 3, 8, 8, generator=gen)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.5)
    return layer.double(), x.double()  # x has positive and negative entries, the bias both signs


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("gamma", [0.0, 0.25, 1.0, 100.0])
def test_fused_gamma_equals_zennit_on_a_single_layer(kind, gamma):
    from zennit.composites import LayerMapComposite
    from zennit.rules import Gamma

    gen = torch.Generator().manual_seed(int(gamma * 4) + (kind == "conv"))
    layer, x = _layer_and_input(kind, gen)
    with torch.no_grad():
        grad_out = torch.randn(layer(x).shape, generator=gen, dtype=torch.float64)
    with lxt_patched():  # LXT's BasicHook patch: zennit in the Input×Gradient convention
        xz = x.clone().requires_grad_(True)
        with LayerMapComposite([(nn.Conv2d, Gamma(gamma)), (nn.Linear, Gamma(gamma))]).context(layer):
            z_ref = layer(xz)
            (g_ref,) = torch.autograd.grad(z_ref, xz, grad_out)
    xf = x.clone().requires_grad_(True)
    with gammarule.gamma_rules({layer: gamma}):
        z = layer(xf)
        (g,) = torch.autograd.grad(z, xf, grad_out)
    assert "forward" not in layer.__dict__  # the fused forward is removed again
    assert torch.equal(z, z_ref)
    err = rel_err(g, g_ref)
    # γ = 0 with a bias: zennit's denominator is the recomputed (x⁺W + b) + x⁻W, ours z; rounding near z = 0
    assert err < (1e-11 if gamma == 0 else 1e-13), err


@pytest.mark.parametrize("gamma_attention", [False, True], ids=["mha", "attn-linear"])
def test_fused_equals_zennit_on_a_whole_vit_in_float64(gamma_attention):
    model, x = tiny_vit(seed=5, dtype=torch.float64), images(3, seed=6, dtype=torch.float64)
    target = torch.tensor([1, 3, 0])
    maps = {}
    for impl in IMPLS:
        with explainer(model, 1.0, 0.5, gamma_attention, torch.float64, impl) as ex:
            logits, maps[impl] = run(ex, x, target)
    assert maps["fused"].dtype == torch.float64
    err = rel_err(maps["fused"], maps["zennit"])
    print(f"attention={gamma_attention}: fused vs zennit in float64, max |diff| / max |R| = {err:.1e}")
    assert err < 1e-12

def test_fused_weight_cache_follows_changed_weights():
    """|W| is cached for as long as an Explainer is open: changed weights still give the new model's map, whether
    changed in place inside the context (version counter) or behind autograd's back between two contexts."""
    model, x = tiny_vit(seed=7, dtype=torch.float64), images(2, seed=8, dtype=torch.float64)
    target = torch.tensor([1, 2])
    fc = model.encoder.layers[1].mlp[0]

    def zennit_map():
        with explainer(model, 1.0, 0.5, True, torch.float64, "zennit") as ref:
            return run(ref, x, target)[1]

    with explainer(model, 1.0, 0.5, True, torch.float64, "fused") as ex:
        first = run(ex, x, target)[1]
        entries = len(ex._abs_weights)
        assert entries > 0 and rel_err(first, zennit_map()) < 1e-12
        with torch.no_grad():
            fc.weight.mul_(-2.0)  # in place: the cached |W| of this layer is stale now
        inside = run(ex, x, target)[1]
        assert len(ex._abs_weights) == entries  # one entry per weight and bias, not one per call
    assert ex._abs_weights is None  # dropped with the context
    assert rel_err(inside, first) > 1e-2 and rel_err(inside, zennit_map()) < 1e-12
    fc.weight.data.copy_(fc.weight.data.flip(0))  # a write the version counter does not see ...
    with explainer(model, 1.0, 0.5, True, torch.float64, "fused") as ex:
        between = run(ex, x, target)[1]  # ... yet a new context starts with an empty cache
    assert rel_err(between, inside) > 1e-2 and rel_err(between, zennit_map()) < 1e-12



class ProductCounter(TorchDispatchMode):
    """FLOPs of the matrix products and convolutions torch runs (its FLOP counter's formulas, without its module
    tracker, which does not support ``autograd.grad``)."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._overloadpacket in flop_registry:
            self.flops += flop_registry[func._overloadpacket](*args, **(kwargs or {}), out_val=out)
        return out


@pytest.mark.parametrize("gamma_attention", [False, True], ids=["mha", "attn-linear"])
def test_flop_ceiling_counts_the_products_autograd_runs(gamma_attention):
    """The benchmark's ceiling counts, from the model's shapes, exactly the matrix products torch runs in
    Input×Gradient (no weight gradients) and in the fused γ-LRP (4 per γ layer, none for query and key). Torch's
    formulas do not cover the CPU's fused attention kernel, so the attention's share is left out of the comparison."""
    from vitlrp.methods.gradients import input_x_gradient

    model, x = tiny_vit(seed=2), images(2, seed=3)
    with explainer(model, 1.0, 0.5, gamma_attention, impl="fused") as ex:
        layers = ex.gamma_layers()
        with ProductCounter() as lrp:
            run(ex, x, None)
    with ProductCounter() as ixg:
        input_x_gradient(model, x)
    ceiling = cost.flop_ceiling(model, layers)
    assert ceiling["gamma_layers"] == (10 if gamma_attention else 6)  # conv, 2 x (fc1, fc2 [, v, out]), head
    assert ixg.flops == 2 * (ceiling["input_x_gradient_flops"] - ceiling["attention_flops"])
    assert lrp.flops == 2 * (ceiling["fused_gamma_lrp_flops"] - ceiling["attention_flops"])
    assert 0.5 < ceiling["ratio"] < 1


# --- the LXT patch is process-global only while explaining ------------------------------------------------
def _patch_state():
    from zennit.core import BasicHook

    state = {(cls.__name__, name): cls.__dict__.get(name)
             for cls in (nn.LayerNorm, nn.GELU, nn.MultiheadAttention) for name in ("forward", "original_forward")}
    state.update({("BasicHook", name): BasicHook.__dict__[name] for name in ("forward", "backward")})
    return state


def _train_grads(model, x, y):
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("impl", IMPLS)
def test_lxt_patch_restored_after_explaining_and_after_errors(impl):
    model, x = tiny_vit(seed=7), images(4, seed=8)
    y = torch.tensor([0, 1, 2, 3])
    original = _patch_state()
    assert original[("LayerNorm", "original_forward")] is None  # nothing patched to begin with
    grads_before = _train_grads(model, x, y)
    with lxt_patched():
        assert nn.LayerNorm.forward is not original[("LayerNorm", "forward")]
        grads_patched = _train_grads(model, x, y)
    assert _patch_state() == original
    # the patch changes gradients (LayerNorm's std, GELU, attention), so equal gradients below mean "restored"
    assert any(not torch.allclose(a, b) for a, b in zip(grads_before, grads_patched))

    seen = []
    spy = model.heads.head.register_forward_pre_hook(lambda m, a: seen.append(nn.LayerNorm.forward))
    with explainer(model, 1.0, 0.5, attention=True, impl=impl) as ex:
        run(ex, x)
        spy.remove()
        assert seen and seen[-1] is not original[("LayerNorm", "forward")]  # patched while explaining
        assert _patch_state() == original  # ... and only then
        with pytest.raises(KeyError, match="inside the block"):
            raise KeyError("inside the block")
    with pytest.raises(ZeroDivisionError):
        with explainer(model, 1.0, 0.5, attention=True, impl=impl) as ex:
            run(ex, x)
            1 / 0
    assert _patch_state() == original

    def explode(module, args):
        raise RuntimeError("boom in the forward")

    handle = model.encoder.layers[1].mlp.register_forward_pre_hook(explode)
    with explainer(model, 1.0, 0.5, attention=True, impl=impl) as ex:
        with pytest.raises(RuntimeError, match="boom"):
            run(ex, x)  # fails mid-forward: patches, attention swap, rules and hooks must all be undone
    handle.remove()
    assert _patch_state() == original
    for name, module in model.named_modules():
        assert "forward" not in module.__dict__, name
        assert not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks), name
    assert all(type(blk.self_attention) is nn.MultiheadAttention for blk in model.encoder.layers)

    # training works as before: same gradients, and a step changes the weights
    model.train()
    assert all(torch.equal(a, b) for a, b in zip(grads_before, _train_grads(model, x, y)))
    before = model.heads.head.weight.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, model.heads.head.weight)
    with lxt_patched():  # and the patch can be applied again (no depth counter left behind)
        assert nn.LayerNorm.forward is not original[("LayerNorm", "forward")]
    assert _patch_state() == original


def test_explainer_call_leaves_inputs_alone_and_broadcasts_one_target():
    model, x = tiny_vit(), images()
    with explainer(model, impl="fused") as ex:
        _, by_row = run(ex, x, torch.tensor([2, 2, 2]))
        assert not x.requires_grad  # the caller's tensor is not turned into a grad-requiring leaf
        _, one = run(ex, x, 2)
        assert torch.equal(one, by_row)
        assert (one.abs().sum((1, 2)) > 0).all()
        with pytest.raises(ValueError, match="2 entries"):
            run(ex, x, torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match="with"):
        run(ex, x)


# --- where γ acts -----------------------------------------------------------------------------------------
def test_gamma_layers_lists_where_gamma_acts():
    model = tiny_vit()
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(TINY["num_layers"])]
    base = {"conv_proj": "Conv2d", "heads.head": "Linear"}
    base.update({f"{b}.mlp.{j}": "Linear" for b in blocks for j in (0, 3)})
    with explainer(model, 1.0, 0.5, attention=False) as ex:
        assert ex.gamma_layers() == base
        assert "attention projections get LRP-0" in coverage_line(ex)
    # out_proj is torch's NonDynamicallyQuantizableLinear, an nn.Linear subclass
    attn = {f"{b}.self_attention.{p}": "Linear" for b in blocks for p in ("v_proj", "out_proj")}
    with explainer(model, 1.0, 0.5, attention=True, impl="fused") as ex:
        # q/k are detached in CP-LRP: they carry no relevance, so the rule never acts on them
        layers = ex.gamma_layers()
        assert set(layers) == set(base) | set(attn)
        assert all(layers[n] == t or (t == "Linear" and layers[n].endswith("Linear"))
                   for n, t in {**base, **attn}.items())
        assert "attention projections (value + output" in coverage_line(ex)


@pytest.mark.parametrize("impl", IMPLS)
def test_gamma_attention_puts_the_linear_gamma_on_the_projections_and_nothing_else(toy_family, impl):
    """With ``attention`` the Linear γ reaches the family's attention projections, and only that changes: on a
    two-layer model whose Linear the family calls an attention projection, the map without ``attention`` is the
    replica with no rule there (input × gradient), with it the replica with the Linear γ; the logits stay."""
    model, x, target = TwoLayer(seed=3, head_is_attention=True), toy_images(seed=4), torch.tensor([1, 0, 2, 2])
    out = {}
    for attention in (False, True):
        with Explainer(model, GammaSpec(1.0, 0.5, attention), MethodSettings(torch.float64, impl)) as ex:
            out[attention] = ex.attribute(x, target)
            assert set(ex.gamma_layers()) == ({"conv", "head"} if attention else {"conv"})
    for attention, head_gamma in ((False, None), (True, 0.5)):
        expected = replica_map(model, x, target, 1.0, head_gamma)
        torch.testing.assert_close(out[attention].relevance, expected, rtol=0,
                                   atol=1e-9 * float(expected.abs().amax()))
    assert torch.equal(out[True].logits, out[False].logits)


@pytest.mark.parametrize("impl", IMPLS)
def test_gamma_attention_leaves_the_logits_and_at_gamma_zero_the_map(impl):
    """On torchvision's ViT the routed attention computes the same logits, and at γ = 0 the same map: the value and
    output projections then get LRP-0, their gradient up to zennit's 1e-6 stabilizer (see
    test_gamma_zero_is_the_plain_patched_gradient)."""
    model, x = tiny_vit(), images()
    target = torch.tensor([0, 1, 2])
    out = {}
    for ga in (False, True):
        with explainer(model, 1.0, 0.5, ga, impl=impl) as ex:
            out[ga] = run(ex, x, target)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-5)
    with explainer(model, 0.0, 0.0, True, impl=impl) as ex:
        routed = run(ex, x, target)[1]
    with explainer(model, 0.0, 0.0, False, impl=impl) as ex:
        plain = run(ex, x, target)[1]
    torch.testing.assert_close(routed, plain, rtol=0, atol=2e-3 * plain.abs().max().item())


# --- γ validation -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf"), -float("inf"), True, False, "1", None, [1]])
def test_check_gamma_rejects_bad_values(bad):
    with pytest.raises(UserError, match="CONV_GAMMA must be a finite number >= 0"):
        check_gamma("CONV_GAMMA", bad)
    with pytest.raises(UserError):
        explainer(nn.Linear(1, 1), conv=bad)


def test_check_gamma_accepts_and_the_presets_are_the_seeds():
    assert check_gamma("LIN_GAMMA", 0) == 0.0 and isinstance(check_gamma("LIN_GAMMA", 3), float)
    assert check_gamma("LIN_GAMMA", 0.25) == 0.25
    assert PRESETS["balanced"] == (1.0, 0.5) and PRESETS["aggressive"] == (10.0, 1.0)
    with pytest.raises(UserError, match="impl must be one of fused, zennit, got 'fast'"):
        explainer(nn.Linear(1, 1), impl="fast")


# --- the real size (in make test: the one real-size ViT-B/16 LRP test, seconds) ---------------------------
def test_vit_b16_real_size_on_cpu():
    torch.manual_seed(0)
    model = randomize(build_vit("vit_b_16", 200), seed=0, bias_std=0.02)
    x = images(1, seed=2, size=224)
    with explainer(model, 1.0, 0.5, impl="fused") as ex:
        logits, relevance = run(ex, x)
    assert logits.shape == (1, 200) and relevance.shape == (1, 224, 224)
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    print(f"ViT-B/16: sum(R) = {relevance.sum():.3g} for logit {logits.max():.3g}")
    # fused vs zennit at real width (768 / 3072, 197 tokens, 224 px) on the first two of the 12 blocks:
    # zennit's five-fold re-evaluation of all twelve would take most of a minute on a CPU
    model.encoder.layers = model.encoder.layers[:2]
    maps = {}
    for impl in IMPLS:
        with explainer(model, 1.0, 0.5, impl=impl) as ex:
            maps[impl] = run(ex, x, logits.argmax(1))[1]
    err = rel_err(maps["fused"], maps["zennit"])
    print(f"ViT-B/16 (2 blocks): fused vs zennit, max |diff| / max |R| = {err:.1e}")
    assert err < 1e-4


def test_conv_gamma_moves_relevance_within_patches_not_between_them():
    """The patch embedding maps each patch on its own and the Gamma rule conserves each output's relevance up to
    what the bias absorbs: the per-patch sums (what MoRF/LeRF and every patch-level metric see) hardly depend on the
    Conv2d γ, while the pixels inside each patch do. Patch-level faithfulness cannot rank Conv2d γ values."""
    from vitlrp import metrics as M

    model, x = tiny_vit(), images(4)
    with explainer(model, impl="fused") as ex:
        _, maps = many(ex, x, None, [(0.0, 0.5), (1.0, 0.5), (100.0, 0.5)])
    patches = [M.patch_scores(m, 8) for m in maps]
    for k in (1, 2):
        assert pearson(patches[0][:, :, None], patches[k][:, :, None]).min() > 0.99
        assert (M.spearman(patches[0], patches[k]) > 0.97).all()  # nearly the same removal order
        assert pearson(maps[0], maps[k]).max() < 0.9  # the pixel maps differ

"""vitlrp.methods: the registry, and Grad-CAM, attention rollout, GAE, Integrated Gradients, SmoothGrad and random
on tiny ViTs, on the CPU.

The references below are written independently of vitlrp.methods: an explicit per-image forward of torchvision's
ViT (attention spelled out, so that A and ∇A are plain tensors), then loops over images and blocks.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, error_lines, run_script_inprocess
from test_explain import images, tiny_vit
from torch import nn

from vitlrp import methods
from vitlrp.errors import UserError
from vitlrp.methods import Method, MethodSettings, create_method, parse_method
from vitlrp.methods.attention import attention_recorded
from vitlrp.methods.registry import requirement

PLAIN = [n for n in methods.names() if n != "gamma"]  # every method of the plain model
TARGET = torch.tensor([0, 3, 1])


def explain(name, model, x, target, seed=0, ids=None):
    """``(logits, maps)`` of a method by name, as the scripts run it."""
    with create_method(name, model, MethodSettings(seed=seed)) as method:
        r = method.attribute(x, target, ids)
        return r.logits, r.relevance


# --- an explicit forward of one image ----------------------------------------------------------------------------


def explicit_forward(model, img):
    """One image ``[3, H, W]`` through the ViT with attention written out; returns logits, per-block attention
    ``[heads, N, N]`` (requiring grad) and the last block's ``ln_1`` output ``[1, N, D]`` (requiring grad)."""
    x = model._process_input(img[None])
    x = torch.cat([model.class_token, x], 1) + model.encoder.pos_embedding
    probs, ln1_last = [], None
    for blk in model.encoder.layers:
        y = blk.ln_1(x)
        ln1_last = y
        mha = blk.self_attention
        e, h = y.shape[-1], mha.num_heads
        q, k, v = (y[0] @ w.T + b for w, b in zip(mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3)))
        q, k, v = (t.reshape(-1, h, e // h).transpose(0, 1) for t in (q, k, v))  # [heads, N, d]
        a = torch.softmax(q @ k.transpose(1, 2) / (e // h) ** 0.5, dim=-1)
        probs.append(a)
        out = (a @ v).transpose(0, 1).reshape(-1, e) @ mha.out_proj.weight.T + mha.out_proj.bias
        x = x + out[None]
        x = x + blk.mlp(blk.ln_2(x))
    logits = model.heads(model.encoder.ln(x)[:, 0])[0]
    return logits, probs, ln1_last


def to_pixels(token_map, model):
    g = model.image_size // model.patch_size
    return F.interpolate(token_map.reshape(1, 1, g, g), size=(model.image_size,) * 2, mode="bilinear",
                         align_corners=False)[0, 0]


def reference_maps(model, x, target):
    """Per image: GAE, rollout and Grad-CAM by loops over blocks, from the explicit forward."""
    out = {"gae": [], "rollout": [], "gradcam": [], "logits": []}
    for img, t in zip(x, target.tolist()):
        logits, probs, ln1 = explicit_forward(model, img)
        for a in probs:
            a.retain_grad()
        ln1.retain_grad()
        logits[t].backward()
        n = probs[0].shape[-1]
        gae_r, roll_r = torch.eye(n), torch.eye(n)
        for a in probs:
            a_bar = (a.grad * a).clamp(min=0).mean(0)
            gae_r = gae_r + a_bar @ gae_r
            joint = a.detach().mean(0) + torch.eye(n)
            roll_r = (joint / joint.sum(1, keepdim=True)) @ roll_r
        feats, grads = ln1[0, 1:].detach(), ln1.grad[0, 1:]  # patch tokens × channels
        cam = (feats * grads.mean(0)).sum(1).clamp(min=0)
        out["gae"].append(to_pixels(gae_r[0, 1:], model))
        out["rollout"].append(to_pixels(roll_r[0, 1:], model))
        out["gradcam"].append(to_pixels(cam, model))
        out["logits"].append(logits.detach())
    return {k: torch.stack(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def model_x():
    return tiny_vit(num_layers=3), images()


@pytest.fixture(scope="module")
def reference(model_x):
    model, x = model_x
    return reference_maps(model, x, TARGET)


# --- the science ------------------------------------------------------------------------------------------------


def test_explicit_forward_is_the_model(model_x, reference):
    model, x = model_x
    with torch.no_grad():
        torch.testing.assert_close(reference["logits"], model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gae", "rollout", "gradcam"])
def test_patch_methods_match_the_per_image_reference(model_x, reference, name):
    model, x = model_x
    _, maps = explain(name, model, x, TARGET)
    assert maps.shape == (3, 32, 32) and maps.dtype == torch.float32
    assert reference[name].abs().amax((1, 2)).min() > 0  # no all-zero map: the comparison means something
    torch.testing.assert_close(maps, reference[name], rtol=1e-4, atol=1e-6)


def test_gae_depends_on_the_target_and_rollout_does_not(model_x):
    model, x = model_x
    other = torch.tensor([2, 2, 2])
    assert not torch.allclose(explain("gae", model, x, TARGET)[1],
                              explain("gae", model, x, other)[1])
    assert torch.equal(explain("rollout", model, x, TARGET)[1],
                       explain("rollout", model, x, other)[1])


def test_recording_attention_leaves_the_logits_bit_identical(model_x):
    model, x = model_x
    with torch.no_grad():
        plain = model(x)
        with attention_recorded(model, with_grad=False) as probs:
            recorded = model(x)
    assert torch.equal(recorded, plain) and len(probs) == 3
    # the recorded probabilities are torchvision's own (need_weights=True, per head)
    blk = model.encoder.layers[0]
    with torch.no_grad():
        y = blk.ln_1(torch.cat([model.class_token.expand(3, -1, -1), model._process_input(x)], 1)
                     + model.encoder.pos_embedding)
        _, own = blk.self_attention(y, y, y, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(probs[0], own, rtol=1e-5, atol=1e-6)
    with torch.enable_grad():
        plain_g = model(x.clone().requires_grad_(True))
        with attention_recorded(model, with_grad=True):
            recorded_g = model(x.clone().requires_grad_(True))
    assert torch.equal(recorded_g, plain_g)
    for name in ("rollout", "gae", "gradcam", "integrated_gradients", "smoothgrad"):
        logits, _ = explain(name, model, x, TARGET)
        torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(explain("rollout", model, x, TARGET)[0], plain)
    assert torch.equal(explain("gae", model, x, TARGET)[0], plain_g.detach())
    assert not model.encoder.layers[0].self_attention._forward_hooks  # hooks removed


def test_integrated_gradients_completeness(model_x):
    model, x = model_x
    logits, maps = explain("integrated_gradients", model, x, TARGET)
    with torch.no_grad():
        gap = model(x).gather(1, TARGET.view(-1, 1))[:, 0] - model(torch.zeros_like(x)).gather(
            1, TARGET.view(-1, 1))[:, 0]
    # Σ attribution = f(x) - f(baseline): the zero baseline, up to the path integral's error
    torch.testing.assert_close(maps.sum((1, 2)), gap, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("name", ["smoothgrad", "random"])
def test_random_draws_are_seeded_per_image_and_leave_the_global_rng_alone(model_x, name):
    model, x = model_x
    state = torch.get_rng_state()
    a = explain(name, model, x, TARGET, seed=5, ids=[10, 11, 12])[1]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, explain(name, model, x, TARGET, seed=5, ids=[10, 11, 12])[1])
    assert not torch.equal(a, explain(name, model, x, TARGET, seed=6, ids=[10, 11, 12])[1])
    # an image's map depends on the image's id, not on its place in the batch (sharding, batch size)
    swapped = explain(name, model, x[[1, 0, 2]], TARGET[[1, 0, 2]], seed=5, ids=[11, 10, 12])[1]
    assert torch.equal(swapped[[1, 0, 2]], a)
    if name == "smoothgrad":
        assert (a >= 0).all() and a.sum() > 0  # averaged |∇|, channels summed


@pytest.mark.parametrize("name", PLAIN)
def test_batch_equals_per_sample(model_x, name):
    model, x = model_x
    _, batch = explain(name, model, x, TARGET, ids=[3, 4, 5])
    single = torch.cat([explain(name, model, x[i:i + 1], TARGET[i:i + 1], ids=[3 + i])[1] for i in range(len(x))])
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-6)


def test_target_none_is_the_predicted_class(model_x):
    model, x = model_x
    with torch.no_grad():
        pred = model(x).argmax(1)
    for name in ("gae", "gradcam", "integrated_gradients"):
        assert torch.equal(explain(name, model, x, None)[1], explain(name, model, x, pred)[1])


# --- plumbing --------------------------------------------------------------------------------------------------


def test_lxt_patches_are_off_while_the_peers_run(model_x):
    model, x = model_x
    originals = {cls: cls.forward for cls in (nn.GELU, nn.LayerNorm, nn.MultiheadAttention)}
    seen = []

    def probe(module, args):
        seen.append(all(cls.forward is fwd for cls, fwd in originals.items()))

    handles = [m.register_forward_pre_hook(probe) for m in model.modules()
               if isinstance(m, (nn.GELU, nn.LayerNorm, nn.MultiheadAttention))]
    try:
        with create_method("baseline", model) as lrp:
            lrp.attribute(x, TARGET)  # LXT patched the classes during this call
            assert seen and not all(seen)  # the probe does see patches when they are there
            for name in PLAIN:
                seen.clear()
                with create_method(name, model) as method:
                    method.attribute(x, TARGET)
                assert seen and all(seen), name
    finally:
        for h in handles:
            h.remove()


def test_inside_lxt_patched_is_refused(model_x):
    from vitlrp.families.torchvision import lxt_patched

    model, x = model_x
    with lxt_patched(), pytest.raises(RuntimeError, match="plain model"):
        explain("rollout", model, x, TARGET)


def test_missing_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # import captum.attr now raises ImportError
    with pytest.raises(UserError, match=r"method smoothgrad needs the captum package.*pip install captum"):
        parse_method("smoothgrad")
    parse_method("rollout")  # no package needed


def test_a_missing_package_is_named_with_the_pin_of_vitlrps_metadata(monkeypatch):
    """The pins live in pyproject.toml alone: the message reads them from the installed package's metadata."""
    monkeypatch.setattr("importlib.metadata.requires", lambda dist: ["torch==2.14.1", "captum==0.9.0",
                                                                     "grad-cam==1.5.7; extra == 'x'"])
    assert requirement("captum") == "captum==0.9.0" and requirement("grad-cam") == "grad-cam==1.5.7"
    assert requirement("nosuch") == "nosuch"


def test_failing_package_is_one_line(model_x, monkeypatch):
    model, x = model_x

    def broken(*args, **kwargs):
        raise RuntimeError("something inside the package")

    monkeypatch.setattr("captum.attr.IntegratedGradients.attribute", broken)
    with pytest.raises(UserError, match="method integrated_gradients failed: RuntimeError: something inside"):
        explain("integrated_gradients", model, x, TARGET)


def test_parse_method_knows_every_registered_method():
    for name in PLAIN:
        assert parse_method(name).entry.name == name and parse_method(name).family != "lrp"
        with pytest.raises(UserError):
            parse_method(name + "+attn")


# --- the scripts ------------------------------------------------------------------------------------------------


def eval_flags(trained, out, **extra):
    args = ["--checkpoint-path", trained["checkpoint"], "--dataset-root", trained["dataset_root"],
            "--num-workers", "0", "--device", "cpu", "--output-dir", out, "--num-images", "4", "--perturb-steps", "2"]
    for key, value in {"methods": ",".join(PLAIN), "reference": "", **extra}.items():
        args += ["--" + key.replace("_", "-"), value]
    return [str(a) for a in args]


@pytest.fixture(scope="module")
def peer_eval(trained_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_peers")
    code, stdout, stderr = run_script_inprocess("evaluate_lrp", *eval_flags(trained_tiny, out, batch_size=4))
    assert code == 0, stderr[-3000:]
    return out, stdout


def read_rows(path):
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_evaluate_scores_every_plain_method(peer_eval):
    out, stdout = peer_eval
    rows = read_rows(out / "per_image.csv")
    summary = json.loads((out / "summary.json").read_text())
    for name in PLAIN:
        mine = [r for r in rows if r["method"] == name]
        assert len(mine) == 4 and all(r["error"] == "" for r in mine), name
        assert 0 <= summary["methods"][name]["box_share"]["mean"] <= 1
        assert name in stdout


@pytest.mark.slow
def test_evaluate_under_torchrun_matches_one_process(trained_tiny, peer_eval, tmp_path):
    out, _ = peer_eval
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(REPO_ROOT / "scripts" / "evaluate_lrp.py"), *eval_flags(trained_tiny, tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cpu x2" in proc.stdout
    two, one = read_rows(tmp_path / "ddp" / "per_image.csv"), read_rows(out / "per_image.csv")
    for name in PLAIN:  # random draws are seeded per image: sharding changes nothing
        a = [r for r in two if r["method"] == name]
        b = [r for r in one if r["method"] == name]
        assert [r["sample_idx"] for r in a] == [r["sample_idx"] for r in b], name
        for ra, rb in zip(a, b):
            for field in ("box_share", "pointing_game", "rank_accuracy", "morf_auc", "relevance_sum"):
                assert float(ra[field]) == pytest.approx(float(rb[field]), rel=1e-4, abs=1e-5), (name, field)


def test_evaluate_missing_package_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    # METHODS is checked before the checkpoint and the dataset are read (neither exists here)
    nowhere = {"checkpoint": tmp_path / "none.pt", "dataset_root": tmp_path / "none"}
    code, _, stderr = run_script_inprocess("evaluate_lrp", *eval_flags(nowhere, tmp_path / "out",
                                                                       methods="random,gradcam"))
    assert code == 2
    errors = error_lines(stderr)
    assert len(errors) == 1 and "gradcam needs the grad-cam package" in errors[0], stderr
    assert not (tmp_path / "out").exists()  # found while parsing METHODS, before any work


def test_heatmap_grid_takes_any_method(trained_tiny, tmp_path):
    out = tmp_path / "samples"
    code, _, stderr = run_script_inprocess(
        "test_vit_forward", "--checkpoint-path", trained_tiny["checkpoint"], "--dataset-root",
        trained_tiny["dataset_root"], "--num-samples", "2", "--num-workers", "0", "--device", "cpu",
        "--compare-presets", "balanced", "--compare-methods", "gae,gradcam,rollout",
        "--output-dir", out)
    assert code == 0, stderr[-3000:]
    results = json.loads((out / "lrp_results.json").read_text())
    assert len(results) == 2
    for r in results:
        assert (out / r["files"]["gamma_grid"]).is_file()
    assert (out / "lrp_gamma_grid_overview.png").is_file()
    code, _, stderr = run_script_inprocess(
        "test_vit_forward", "--checkpoint-path", trained_tiny["checkpoint"], "--dataset-root",
        trained_tiny["dataset_root"], "--num-samples", "2", "--num-workers", "0", "--device", "cpu",
        "--compare-methods", "gae,nosuch", "--output-dir", tmp_path / "bad")
    assert code == 2 and "nosuch" in error_lines(stderr)[0]


# --- the registry -----------------------------------------------------------------------------------------------


class CentreMap(Method):
    """A toy method: all relevance on the central quarter of the image."""

    signed = False
    class_specific = False

    def compute(self, images, target, ids):
        with torch.no_grad():
            logits = self.model(images)
        size = images.shape[-1]
        maps = torch.zeros(len(images), size, size)
        maps[:, size // 4:3 * size // 4, size // 4:3 * size // 4] = 1.0
        return logits, maps


def test_a_method_registered_in_one_place_reaches_help_and_a_run(trained_tiny, tmp_path):
    methods.register("toy_centre", "baselines", "a toy: the central quarter of the image")(CentreMap)
    try:
        code, stdout, _ = run_script_inprocess("evaluate_lrp", "--help")
        assert code == 0 and "toy_centre: a toy: the central quarter of the image" in stdout
        code, stdout, stderr = run_script_inprocess(
            "evaluate_lrp", *eval_flags(trained_tiny, tmp_path, methods="toy_centre,random", reference="random"))
        assert code == 0, stderr[-3000:]
        rows = [r for r in read_rows(tmp_path / "per_image.csv") if r["method"] == "toy_centre"]
        assert len(rows) == 4 and all(r["error"] == "" for r in rows)
        assert all(float(r["negative_share"]) == 0 for r in rows)  # the toy's map has no negative relevance
        with pytest.raises(ValueError, match="registered twice"):
            methods.register("toy_centre", "baselines", "again")(CentreMap)
    finally:
        methods.unregister("toy_centre")
    with pytest.raises(UserError, match="unknown method 'toy_centre'"):
        parse_method("toy_centre")


def test_the_same_method_under_two_names_is_refused():
    with pytest.raises(UserError, match=r"METHODS lists the same method twice \('balanced' and 'gamma:1:0\.5'\)"):
        methods.parse_methods(["balanced", "random", "gamma:1:0.5"], "METHODS")
    with pytest.raises(UserError, match="METHODS lists 'gae' twice"):
        methods.parse_methods(["gae", "gae"], "METHODS")
    assert len(methods.parse_methods(["balanced", "balanced+attn", "gamma:1:0.25"], "METHODS")) == 3


def test_attn_with_linear_gamma_zero_says_it_changes_nothing(capsys):
    """+attn puts the Linear γ on the attention projections: at a Linear γ of 0 (a number, or a schedule of zeros)
    that is LRP-0, their gradient, as without it; the scripts' method lists say so, once per such name."""
    moot = ["baseline+attn", "gamma:1:0+attn", "gamma:1:0/0+attn", "gamma:1:linear:0:0+attn"]
    methods.parse_methods(moot + ["balanced+attn", "gamma:1:linear:0.5:0+attn", "baseline"], "METHODS")
    notes = capsys.readouterr().err.splitlines()
    assert notes == [f"note: +attn changes nothing in {name}: it puts the Linear γ on the attention projections, but "
                     "that γ is 0, so they get LRP-0, their plain gradient, as without it (same maps)" for name in moot]
    code, _, err = run_script_inprocess("test_vit_forward", "--gamma-attention", "true", "--lin-gamma", "0",
                                        "--checkpoint-path", "missing.pt")
    assert code == 2 and err.startswith("note: GAMMA_ATTENTION changes nothing in gamma:1:0+attn: ")


def test_methods_together_equal_separate_runs(model_x):
    """γ methods share one forward (and backwards) in attribute_all, the gradient methods one forward for every
    class; the maps equal each method run on its own."""
    model, x = model_x
    chosen = methods.parse_methods(["baseline", "balanced", "aggressive", "very_aggressive", "balanced+attn",
                                    "random", "gae", "input_x_gradient", "gradient"], "METHODS")
    other = torch.tensor([1, 0, 4])
    opened = [m.create(model, MethodSettings(seed=2)) for m in chosen]
    for m in opened:
        m.__enter__()
    out = methods.attribute_all(opened, x, [TARGET, other], ids=[5, 6, 7])
    assert list(out) == [m.name for m in chosen]
    for m in chosen:
        results = out[m.name]
        assert len(results) == 2
        for target, joint in zip((TARGET, other), results):
            alone_logits, alone = explain(m.name, model, x, target, seed=2, ids=[5, 6, 7])
            assert torch.equal(joint.target, target)
            torch.testing.assert_close(joint.relevance, alone, rtol=1e-4, atol=1e-6 * float(alone.abs().max()))
            torch.testing.assert_close(joint.logits, alone_logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("script", ["evaluate_lrp", "test_vit_forward", "shortcut_pairs", "sanity_checks"])
def test_the_sampling_methods_costs_are_settings_of_every_script_that_runs_them(script):
    code, stdout, _ = run_script_inprocess(script, "--help")
    assert code == 0 and all(flag in stdout for flag in ("--ig-steps", "--smoothgrad-samples", "--rows-per-pass"))


def test_ig_steps_and_smoothgrad_samples_reach_the_methods(model_x):
    model, x = model_x
    few, many = (explain_with(model, x, "integrated_gradients", MethodSettings(ig_steps=n)) for n in (2, 32))
    assert not torch.allclose(few, many)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, TARGET.view(-1, 1))[:, 0]
    assert (many.sum((1, 2)) - gap).abs().mean() < (few.sum((1, 2)) - gap).abs().mean()  # more steps, closer
    one, two = (explain_with(model, x, "smoothgrad", MethodSettings(smoothgrad_samples=n)) for n in (1, 2))
    assert not torch.allclose(one, two)


def explain_with(model, x, name, settings):
    with create_method(name, model, settings) as method:
        return method.attribute(x, TARGET, [0, 1, 2]).relevance

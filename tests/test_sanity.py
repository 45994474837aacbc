"""vitlrp.sanity and scripts/sanity_checks.py: the similarity measures against their definitions, the class check on
a linear model whose answer is known, cascading randomization (every parameter, the caller's model untouched,
seeded), the noise check, and the script's files, console verdicts and errors."""
import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import error_lines, run_script_inprocess
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from test_explain import TINY, images, tiny_vit
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from vitlrp.batch import Batch
from vitlrp.methods import MethodSettings, parse_methods
from vitlrp.models import build_vit, save_checkpoint
from vitlrp.preprocess import Preprocessing
from vitlrp.sanity import draws, randomization
from vitlrp.sanity import runner as S
from vitlrp.sanity import similarity as SIM
from vitlrp.sanity import verdicts as V

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def batch_of(model, x):
    """A :class:`~vitlrp.sanity.runner.Compared` batch of ``x`` (sample indices 0.., labels 0) and the forward."""
    def forward(v):
        with torch.no_grad():
            return model(v).float()

    n = len(x)
    raw = {"image": x, "label": torch.zeros(n, dtype=torch.long), "index": torch.arange(n), "error": [""] * n}
    return S.Compared.of(Batch.of(raw, x.device, forward), "pred", 0), forward


def opened(names, model, settings=None):
    """Entered methods by name (the tests' models need no exit)."""
    return [m.create(model, settings).__enter__() for m in parse_methods(names, "METHODS")]


def mean_of(rows, test, measure="abs_spearman", step=""):
    values = [r[measure] for r in rows if r["test"] == test and r["step"] == step]
    return sum(values) / len(values)


# --- the measures ------------------------------------------------------------------------------------------------


def test_similarity_measures_follow_their_definitions():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 32, 32, generator=gen), torch.randn(4, 32, 32, generator=gen)
    b = b + a  # related maps: every measure clearly above zero
    sim = SIM.similarity(a, b, 8)
    sums_a, sums_b = (m.reshape(4, 4, 8, 4, 8).sum((2, 4)).flatten(1).numpy() for m in (a, b))
    for k in range(4):
        assert sim["spearman"][k] == pytest.approx(spearmanr(sums_a[k], sums_b[k]).statistic)
        assert sim["spearman_of_abs"][k] == pytest.approx(spearmanr(abs(sums_a[k]), abs(sums_b[k])).statistic)
        na, nb = (abs(m[k].numpy().astype(np.float64)) / abs(m[k].numpy()).max() for m in (a, b))
        assert sim["ssim"][k] == pytest.approx(structural_similarity(na, nb, data_range=1.0))
    assert np.array_equal(sim["abs_spearman"], abs(sim["spearman"]))
    assert (sim["spearman"] > 0.3).all() and (sim["ssim"] > 0.1).all()

    same, negated = SIM.similarity(a, 3 * a, 8), SIM.similarity(a, -a, 8)
    for m in SIM.MEASURES:
        assert same[m] == pytest.approx(np.ones(4))
    assert negated["spearman"] == pytest.approx(-np.ones(4))  # the same structure, sign flipped
    assert negated["abs_spearman"] == pytest.approx(np.ones(4)) and negated["ssim"] == pytest.approx(np.ones(4))


def test_constant_or_broken_maps_are_undefined_counted_not_zero():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(3, 16, 16, generator=gen)
    b = torch.stack([torch.zeros(16, 16), torch.full((16, 16), 2.0), a[2].clone()])
    b[2, 0, 0] = math.nan
    sim = SIM.similarity(a, b, 4)
    assert np.isnan(sim["spearman"]).all() and np.isnan(sim["spearman_of_abs"]).all()
    assert np.isfinite(sim["ssim"][:2]).all() and np.isnan(sim["ssim"][2])  # SSIM has no ranking to lose
    rows = [dict(method="m", test="class_random", step="", copies="", **{k: float(sim[k][i]) for k in SIM.MEASURES})
            for i in range(3)]
    rows.append(dict(method="m", test="class_random", step="", copies="",
                     **{k: float(v[0]) for k, v in SIM.similarity(a[:1], a[:1], 4).items()}))
    summary = {r["measure"]: r for r in V.summarize(rows, ["m"], ["head"])}
    assert summary["spearman"]["n"] == 1 and summary["spearman"]["n_undefined"] == 3
    assert summary["spearman"]["mean"] == pytest.approx(1.0)
    assert summary["ssim"]["n"] == 3 and summary["ssim"]["n_undefined"] == 1


def test_random_maps_have_chance_level_class_similarity():
    """The random baseline draws a fresh map per query: its class similarity is the chance level of |ρ| for 64
    patches, √(2 / (π · 63)) ≈ 0.10, and its SSIM is near zero."""
    model, x = tiny_vit(patch_size=4), images(n=24)
    c, _ = batch_of(model, x)
    methods = opened(["random"], model)
    clean = S.query_maps(methods, x, c.target, c.batch.ids)
    rows, maps = S.class_rows(methods, c, clean, S.Settings(patch=4))
    again = S.query_maps(methods, x, c.target, c.batch.ids)["random"]
    assert torch.equal(again, clean["random"])  # the same query, the same (seeded) maps
    assert not torch.equal(maps["class_random"]["random"], clean["random"])
    chance = math.sqrt(2 / (math.pi * 63))
    for test in ("class_runner_up", "class_random"):
        assert mean_of(rows, test) == pytest.approx(chance, abs=0.04)
        assert abs(mean_of(rows, test, "spearman")) < 0.12
        assert mean_of(rows, test, "ssim") < 0.1


class TwoHalves(nn.Module):
    """A linear classifier of 32 px images: class 0 sums the left half of the image, class 1 twice the right half
    (disjoint pixels)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, 2, bias=False)
        left = torch.zeros(3, 32, 32)
        left[..., :16] = 1
        with torch.no_grad():
            self.linear.weight.copy_(torch.stack([left.flatten(), 2 * (1 - left).flatten()]))

    def forward(self, x):
        return self.linear(x.flatten(1))


def test_class_check_on_a_linear_model_with_disjoint_classes():
    """Input×Gradient's maps are x on the left half (class 0) and 2x on the right half (class 1). With m patches a
    half and distinct patch sums, their ranks give ρ = -(m³/2) / (Σ_{a=1..m} (a - ½)² + m³/4) exactly: -256/298
    for m = 8. The check measures it through the whole path (classes, explainer, patch sums, ranks)."""
    model = TwoHalves()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2)) + 0.1
    c, _ = batch_of(model, x)
    assert c.target.tolist() == [1, 1, 1]  # the right half counts twice
    assert c.runner_up.tolist() == c.random_other.tolist() == [0, 0, 0]
    methods = opened(["input_x_gradient"], model)
    clean = S.query_maps(methods, x, c.target, c.batch.ids)
    rows, maps = S.class_rows(methods, c, clean, S.Settings(patch=8))
    assert torch.equal(maps["class_runner_up"]["input_x_gradient"][..., 16:], torch.zeros(3, 32, 16))
    m = 8
    expected = -(m ** 3 / 2) / (sum((a - 0.5) ** 2 for a in range(1, m + 1)) + m ** 3 / 4)
    assert expected == pytest.approx(-256 / 298)
    assert len(rows) == 6
    for r in rows:
        assert r["spearman"] == pytest.approx(expected) and r["spearman_of_abs"] == pytest.approx(expected)
        assert r["other_class"] == 0 and r["target"] == 1


# --- the classes compared, the noise ---------------------------------------------------------------------------


def test_other_classes_runner_up_and_seeded_random_class_independent_of_batching():
    logits = torch.randn(40, 7, generator=torch.Generator().manual_seed(3))
    target, ids = logits.argmax(1), list(range(100, 140))
    runner_up, other = draws.other_classes(logits, target, ids, seed=5)
    assert torch.equal(runner_up, logits.topk(2, 1).indices[:, 1])
    assert (other != target).all() and other.min() >= 0 and other.max() < 7
    assert len(set(other.tolist())) == 7  # every class drawn: 6 other classes per row, 40 rows
    halves = [draws.other_classes(logits[s], target[s], ids[s], seed=5)[1] for s in (slice(0, 13), slice(13, 40))]
    assert torch.equal(torch.cat(halves), other)
    assert not torch.equal(draws.other_classes(logits, target, ids, seed=6)[1], other)
    label = torch.zeros(40, dtype=torch.long)  # explaining another class than the prediction
    assert (draws.other_classes(logits, label, ids, 5)[0] != 0).all()


def test_noisy_copies_are_seeded_per_image_and_copy():
    x, ids = images(n=4), [7, 3, 9, 1]
    one = draws.noisy_copy(x, ids, 0, 0, 0.05)
    assert torch.equal(draws.noisy_copy(x[2:], ids[2:], 0, 0, 0.05), one[2:])
    assert not torch.equal(draws.noisy_copy(x, ids, 0, 1, 0.05), one)
    assert (one - x).std().item() == pytest.approx(0.05, rel=0.1)


def test_noise_check_skips_and_counts_copies_whose_prediction_changes():
    model, x = tiny_vit(), images(n=6)
    c, forward = batch_of(model, x)
    methods = opened(["input_x_gradient"], model)
    clean = S.query_maps(methods, x, c.target, c.batch.ids)
    small = S.noise_rows(methods, forward, c, clean, S.Settings(8, 0, 3, 0.01))
    large = S.noise_rows(methods, forward, c, clean, S.Settings(8, 0, 3, 30.0))
    assert [r["copies"] for r in small] == [3] * 6 and all(r["skipped"] == 0 for r in small)
    assert min(r["spearman"] for r in small) > 0.95
    assert any(r["skipped"] > 0 for r in large)
    assert all(r["copies"] + r["skipped"] == 3 for r in large)
    assert all(math.isnan(r["spearman"]) for r in large if r["copies"] == 0)


# --- cascading randomization -----------------------------------------------------------------------------------


def test_every_parameter_is_randomized_top_down_and_the_caller_model_is_untouched():
    model = VisionTransformer(**TINY).eval()  # torchvision's own init: zero head, zero class token
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert not before["heads.head.weight"].any() and not before["class_token"].any()
    seen = {}
    for step, randomized in randomization.cascade(model, seed=0):
        now = dict(randomized.named_parameters())
        seen[step] = {n for n in now if not torch.equal(now[n], before[n])}
    assert list(seen) == ["head", "block_1", "block_0", "embedding"] == randomization.randomization_steps(model)
    assert seen["head"] == {"heads.head.weight", "heads.head.bias", "encoder.ln.weight", "encoder.ln.bias"}
    block1 = {n for n in before if n.startswith("encoder.layers.encoder_layer_1.")}
    assert seen["block_1"] == seen["head"] | block1
    assert "encoder.layers.encoder_layer_1.self_attention.in_proj_weight" in block1  # no reset_parameters for it
    assert {"class_token", "encoder.pos_embedding", "conv_proj.weight"} <= seen["embedding"] - seen["block_0"]
    assert seen["embedding"] == set(before)  # at the end every parameter is redrawn
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_randomized_values_keep_each_tensor_scale_and_a_zero_head_is_not_zero():
    model = tiny_vit()
    *_, (_, randomized) = randomization.cascade(model, seed=0)
    old, new = dict(model.named_parameters()), dict(randomized.named_parameters())
    name = "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"
    assert new[name].std().item() == pytest.approx(old[name].std().item(), rel=0.1)
    assert abs(torch.corrcoef(torch.stack([new[name].flatten(), old[name].flatten()]))[0, 1]) < 0.1
    fresh = VisionTransformer(**TINY)
    for step, m in randomization.cascade(fresh, seed=0):
        head = m.heads.head.weight
        assert head.std().item() == pytest.approx(1 / math.sqrt(TINY["hidden_dim"]), rel=0.2)
        assert m.encoder.ln.weight.std() > 0  # a LayerNorm is redrawn, not reset to weight 1 and bias 0
        break


def test_cascade_is_seeded():
    model = tiny_vit()
    runs = [[{n: p.clone() for n, p in m.named_parameters()} for _, m in randomization.cascade(model, seed)]
            for seed in (0, 0, 1)]
    for a, b in zip(runs[0], runs[1]):
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(runs[0][-1]["class_token"], runs[2][-1]["class_token"])


def test_randomizing_the_model_changes_input_x_gradient():
    model, x = tiny_vit(patch_size=4), images(n=8)
    c, forward = batch_of(model, x)
    clean = S.query_maps(opened(["input_x_gradient"], model), x, c.target, c.batch.ids)
    run = S.CheckRun(parse_methods(["input_x_gradient"], "METHODS"), MethodSettings(), model, forward,
                     S.Settings(patch=4))
    rows, maps = S.randomization_rows(run, c, clean)
    assert list(maps) == randomization.randomization_steps(model)
    for step, m in maps.items():
        assert not torch.allclose(m["input_x_gradient"], clean["input_x_gradient"]), step
    assert mean_of(rows, "randomization", step="head") < 0.9
    assert mean_of(rows, "randomization", step="embedding") < 0.3
    assert mean_of(rows, "randomization", "ssim", step="embedding") < 0.3


def test_verdicts_follow_the_thresholds_and_report_the_numbers():
    rows, names = [], ["good", "same_map", "edge"]
    for name, cls, rnd, jitter in (("good", 0.1, 0.2, 0.05), ("same_map", 0.9, 0.95, 0.05),
                                   ("edge", V.CLASS_THRESHOLD - 0.02, 0.2, 0.3)):
        for i, sign in enumerate((-1, 1)):
            base = dict(method=name, sample_idx=i, copies="")
            rows.append({**base, "test": "class_random", "step": "",
                         **dict.fromkeys(SIM.MEASURES, cls + sign * jitter)})
            rows.append({**base, "test": "randomization", "step": "embedding",
                         **dict.fromkeys(SIM.MEASURES, rnd + sign * jitter)})
    summary = V.summarize(rows, names, ["head", "embedding"])
    found = V.verdicts(summary, names, ["head", "embedding"])
    assert found["good"]["class"]["passed"] and found["good"]["randomization"]["passed"]
    assert found["same_map"]["class"]["passed"] is False and found["same_map"]["randomization"]["passed"] is False
    assert found["same_map"]["class"]["abs_spearman"] == pytest.approx(0.9)
    assert found["good"]["class"]["n"] == 2 and found["good"]["class"]["threshold"] == V.CLASS_THRESHOLD
    assert found["edge"]["class"]["passed"] and found["edge"]["class"]["borderline"]  # the interval holds 0.6
    assert not found["good"]["class"]["borderline"] and not found["same_map"]["class"]["borderline"]
    lines = V.verdict_lines(found)
    assert lines[1].split()[:3] == ["good", "0.100", "±"] and lines[1].count(" pass ") == 2
    assert lines[2].count(" FAIL ") == 2
    assert " pass? " in lines[3] and lines[-1].startswith("?: borderline")


# --- the script ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(mini_cub, tmp_path_factory):
    """An untrained vit_tiny at 64 px (16 patches) with a random head, for the mini-CUB's ten classes."""
    from vitlrp.cub import load_cub

    torch.manual_seed(0)
    model = build_vit("vit_tiny", 10, 64)
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("sanity_ckpt") / "vit_cub_best.pt"
    save_checkpoint(path, model, "vit_tiny", load_cub(mini_cub).class_names, Preprocessing.for_size(64))
    return path


def script_flags(ckpt, root, out, **extra):
    args = ["--checkpoint-path", ckpt, "--dataset-root", root, "--num-workers", "0", "--device", "cpu",
            "--output-dir", out]
    for key, value in extra.items():
        args += ["--" + key.replace("_", "-"), value]
    return args


def test_script_writes_tables_figures_and_console_verdicts(tiny_checkpoint, mini_cub, tmp_path):
    out = tmp_path / "sanity"
    code, stdout, stderr = run_script_inprocess("sanity_checks", *script_flags(
        tiny_checkpoint, mini_cub, out, num_images=5, batch_size=3, noise_samples=2, figure_images=2,
        methods="balanced,input_x_gradient,random,rollout"))
    assert code == 0, stderr[-3000:]
    names = ["balanced", "input_x_gradient", "random", "rollout"]
    steps = ["head"] + [f"block_{i}" for i in (3, 2, 1, 0)] + ["embedding"]
    with open(out / "sanity.csv", encoding="utf-8") as fh:
        summary = list(csv.DictReader(fh))
    assert list(summary[0])[:7] == ["method", "test", "step", "measure", "mean", "ci95", "n"]
    keys = [(r["method"], r["test"], r["step"], r["measure"]) for r in summary]
    assert keys == [(n, t, s, m) for n in names for t, s in V.comparisons(steps) for m in SIM.MEASURES]
    with open(out / "per_image_sanity.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 * len(names) * (2 + len(steps) + 1)
    assert {r["sample_idx"] for r in rows} == {r["sample_idx"] for r in rows if r["test"] == "noise"}
    for r in summary:  # the means are the per-image means of the defined values
        values = [float(x[r["measure"]]) for x in rows if (x["method"], x["test"], x["step"]) == (
            r["method"], r["test"], r["step"]) and x["copies"] != "0" and math.isfinite(float(x[r["measure"]]))]
        assert int(r["n"]) == len(values)
        if values:
            assert float(r["mean"]) == pytest.approx(sum(values) / len(values), abs=1e-9)
    rollout = [float(r["spearman"]) for r in rows if r["method"] == "rollout" and r["test"].startswith("class")]
    assert rollout == pytest.approx([1.0] * 10)  # the same map for every class, as rollout is meant to be

    doc = json.loads((out / "summary.json").read_text())
    assert doc["n_images"] == 5 and doc["thresholds"]["class"] == V.CLASS_THRESHOLD
    assert doc["verdicts"]["rollout"]["class"]["passed"] is False
    assert doc["verdicts"]["random"]["class"]["passed"] is True
    assert json.loads((out / "config.json").read_text())["NOISE_SAMPLES"] == 2
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len([p for p in pngs if p.startswith("cascade_")]) == 2
    assert {"class_pairs.png", "curves_randomization.png"} <= set(pngs)
    assert all((out / p).read_bytes()[:8] == PNG_SIGNATURE for p in pngs)
    assert not (out / "RUN_INCOMPLETE.txt").exists()

    lines = stdout.splitlines()
    for name in names:
        verdict = next(line for line in lines if line.startswith(name + " ") and ("pass" in line or "FAIL" in line))
        v = doc["verdicts"][name]
        assert f"{v['class']['abs_spearman']:.3f}" in verdict and f"{v['randomization']['abs_spearman']:.3f}" in verdict
    assert lines[-1] == f"Output directory: {out}"


@pytest.mark.parametrize("flag, value, message", [
    ("noise_std", "0", "error: NOISE_STD must be a positive number, got 0.0"),
    ("methods", "balanced,nonsense", "error: unknown method 'nonsense'"),
])
def test_bad_input_is_one_line_before_any_output(tiny_checkpoint, mini_cub, tmp_path, flag, value, message):
    out = tmp_path / "out"
    code, _, stderr = run_script_inprocess("sanity_checks", *script_flags(tiny_checkpoint, mini_cub, out,
                                                                          **{flag: value}))
    assert code == 2
    assert len(error_lines(stderr)) == 1 and error_lines(stderr)[0].startswith(message)
    assert not out.exists()


def test_caller_model_is_untouched_by_a_whole_batch_of_checks():
    model, x = tiny_vit(), images(n=2)
    before = copy.deepcopy(model.state_dict())
    c, forward = batch_of(model, x)
    run = S.CheckRun(parse_methods(["balanced", "input_x_gradient"], "METHODS"), MethodSettings(), model, forward,
                     S.Settings(8, 0, 1, 0.05))
    rows, figures = S.check_batch(run, c, keep={1})
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert [f["sample_idx"] for f in figures] == [1]
    assert set(figures[0]["maps"]["balanced"]) == {"original", "class_runner_up", "class_random", "head", "block_1",
                                                   "block_0", "embedding"}
    assert len(rows) == 2 * 2 * (2 + 4 + 1)

"""scripts/test_vit_forward.py and scripts/inspect_lrp_predictions.py: what the user runs and sees.

All runs use the session's vit_tiny trained on the mini-CUB (``trained_tiny``) on the CPU, in-process (a
subprocess costs ~8 s of imports each).
"""
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, error_lines, run_script_inprocess

from vitlrp.cub import CUBDataset, load_cub
from vitlrp.explainer import Explainer
from vitlrp.gamma import GammaSpec
from vitlrp.inputs import load_model_and_split
from vitlrp.methods import MethodSettings
from vitlrp.models import read_checkpoint
from vitlrp.preprocess import Preprocessing
from vitlrp.runfolder import MANIFEST, MARKER

SCRIPT = "test_vit_forward"
N = 6
SEED_KEYS = {"sample_idx", "img_path", "label", "target_class", "gamma_params", "files"}
ADDED_KEYS = {"predicted_class", "predicted_name", "label_name", "confidence", "explained_logit", "relevance_sum",
              "dtype", "preset", "gamma_layers", "preprocessing"}
PER_SAMPLE = ("lrp_heatmap_{:06d}.png", "lrp_overlay_{:06d}.png", "lrp_comparison_{:06d}.png",
              "lrp_relevance_raw_{:06d}.pt")


def explain(trained, out, *flags, n=N, batch_size=4):
    return run_script_inprocess(SCRIPT, "--checkpoint-path", trained["checkpoint"], "--dataset-root",
                                trained["dataset_root"], "--num-samples", n, "--batch-size", batch_size,
                                "--num-workers", 0, "--device", "cpu", "--output-dir", out, *flags)


def results(out):
    return json.loads((Path(out) / "lrp_results.json").read_text(encoding="utf-8"))


def raw(out, idx):
    return torch.load(Path(out) / f"lrp_relevance_raw_{idx:06d}.pt", weights_only=True)


def expected_indices(n):
    random.seed(42)
    return random.sample(range(200), n)


def pearson(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def model_and_data(trained_tiny):
    """(model, test split) of the trained checkpoint, for recomputing maps with a fresh Explainer."""
    _, model, dataset = load_model_and_split(trained_tiny["checkpoint"], trained_tiny["dataset_root"], "test",
                                             torch.device("cpu"))
    return model, dataset


def fresh_maps(model_and_data, indices, targets, conv_gamma=1.0, lin_gamma=0.5, impl="fused"):
    model, dataset = model_and_data
    x = torch.stack([dataset[i]["image"] for i in indices])
    with Explainer(model, GammaSpec(conv_gamma, lin_gamma), MethodSettings(impl=impl)) as ex:
        return ex.attribute(x, torch.tensor(targets)).relevance


@pytest.fixture(scope="module")
def default_run(trained_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("lrp_default")
    code, stdout, stderr = explain(trained_tiny, out, "--compare-presets", "baseline,balanced")
    assert code == 0, stderr[-3000:]
    return {"out": out, "stdout": stdout, "stderr": stderr, "results": results(out)}


@pytest.fixture(scope="module")
def aggressive_run(trained_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("lrp_aggressive")
    code, stdout, stderr = explain(trained_tiny, out, "--preset", "aggressive")
    assert code == 0, stderr[-3000:]
    return {"out": out, "stdout": stdout, "results": results(out)}


# --- the default run --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_match_one(default_run, trained_tiny, tmp_path):
    """torchrun shards the samples; rank 0 writes the JSON and the page over all of them, nothing is left marked."""
    from conftest import run_torchrun

    proc = run_torchrun(SCRIPT, "--checkpoint-path", trained_tiny["checkpoint"], "--dataset-root",
                        trained_tiny["dataset_root"], "--num-samples", N, "--batch-size", 4, "--num-workers", 0,
                        "--device", "cpu", "--output-dir", tmp_path, "--compare-presets", "baseline,balanced")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x2 processes" in proc.stdout and not (tmp_path / "RUN_INCOMPLETE.txt").exists()
    two, one = results(tmp_path), default_run["results"]
    assert [r["sample_idx"] for r in two] == [r["sample_idx"] for r in one]
    for a, b in zip(two, one):
        assert a["target_class"] == b["target_class"] and a["files"] == b["files"]
        assert a["relevance_sum"] == pytest.approx(b["relevance_sum"], rel=1e-4, abs=1e-6)
        assert all((tmp_path / f).is_file() for f in a["files"].values())
    assert (tmp_path / "lrp_gamma_grid_overview.png").is_file() and (tmp_path / "index.html").is_file()


def test_console_shows_the_seed_lines(default_run):
    lines = default_run["stdout"].splitlines()
    for line in ("Using device: cpu", "Using Gamma rule: Conv2d gamma=1.0, Linear gamma=0.5", "Dataset size: 200",
                 f"Will generate LRP for {N} samples", "Model loaded successfully.",
                 f"Completed! Generated {N}/{N} samples", "Gamma parameters: Conv2d=1.0, Linear=0.5"):
        assert line in lines, line
    assert any(line.startswith("Output directory: ") for line in lines)
    # one line per sample carrying the seed's lines: [i/N] Processing sample_idx=..., ✓ Target class, ✓ Saved
    samples = [line for line in lines if line.startswith("[")]
    assert len(samples) == N and samples[0].startswith("[1/6] Processing sample_idx=")
    for line, r in zip(samples, default_run["results"]):
        idx = r["sample_idx"]
        assert line == (f"[{samples.index(line) + 1}/{N}] Processing sample_idx={idx} ... ✓ Target class: "
                        f"{r['target_class']} (label: {r['label']}) ✓ Saved: lrp_overlay_{idx:06d}.png, "
                        f"lrp_comparison_{idx:06d}.png")
    assert len(lines) <= N + 15  # no block of lines per sample
    assert "Gamma rule acts on 10 layers" in default_run["stdout"]
    assert not error_lines(default_run["stderr"])


def test_files_written_for_every_sample(default_run):
    out = default_run["out"]
    indices = expected_indices(N)
    for idx in indices:
        for pattern in PER_SAMPLE + ("lrp_gamma_grid_{:06d}.png",):
            assert (out / pattern.format(idx)).stat().st_size > 0, pattern.format(idx)
    for name in ("lrp_gamma_grid_overview.png", "lrp_results.json", "config.json", "index.html"):
        assert (out / name).stat().st_size > 0, name
    paths = (out / "lrp_image_paths.txt").read_text(encoding="utf-8").splitlines()
    assert paths == [r["img_path"] for r in default_run["results"]] and len(paths) == N
    assert all(Path(p).is_file() for p in paths)
    assert not list(out.glob(".*.tmp"))  # no leftovers of the atomic writes
    html = (out / "index.html").read_text(encoding="utf-8")
    assert all(f"lrp_comparison_{idx:06d}.png" in html for idx in indices)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert (config["conv_gamma"], config["lin_gamma"], config["NUM_SAMPLES"]) == (1.0, 0.5, N)


def test_results_json_keys_and_values(default_run, trained_tiny):
    res = default_run["results"]
    assert isinstance(res, list) and len(res) == N
    names = read_checkpoint(trained_tiny["checkpoint"])["class_names"]
    for entry in res:
        assert SEED_KEYS | ADDED_KEYS <= set(entry), (SEED_KEYS | ADDED_KEYS) - set(entry)
        idx = entry["sample_idx"]
        assert entry["gamma_params"] == {"conv_gamma": 1.0, "lin_gamma": 0.5}
        assert entry["files"] == {"heatmap": f"lrp_heatmap_{idx:06d}.png", "overlay": f"lrp_overlay_{idx:06d}.png",
                                  "comparison": f"lrp_comparison_{idx:06d}.png",
                                  "relevance_raw": f"lrp_relevance_raw_{idx:06d}.pt",
                                  "gamma_grid": f"lrp_gamma_grid_{idx:06d}.png"}
        assert entry["target_class"] == entry["predicted_class"]  # TARGET=pred
        assert entry["label_name"] == names[entry["label"]]
        assert entry["predicted_name"] == names[entry["predicted_class"]]
        assert 0 < entry["confidence"] <= 1 and entry["error"] is None
        assert (entry["dtype"], entry["preset"]) == ("fp32", "")
        assert "conv_proj" in entry["gamma_layers"] and "heads.head" in entry["gamma_layers"]
        assert entry["preprocessing"]["crop_size"] == 112
        assert Path(entry["img_path"]).is_absolute()


def test_sampled_indices_follow_the_seed_whatever_the_gammas(default_run, aggressive_run):
    indices = expected_indices(N)
    assert [r["sample_idx"] for r in default_run["results"]] == indices
    assert [r["sample_idx"] for r in aggressive_run["results"]] == indices
    assert [r["img_path"] for r in aggressive_run["results"]] == [r["img_path"] for r in default_run["results"]]


def test_raw_relevance_is_the_explainers_map(default_run, model_and_data):
    res = default_run["results"]
    maps = [raw(default_run["out"], r["sample_idx"]) for r in res]
    for r, m in zip(res, maps):
        assert m.dtype == torch.float32 and m.shape == (112, 112)
        # one map's worth of storage, not the whole batch the map was a view of
        assert m.untyped_storage().nbytes() == 112 * 112 * 4
        assert float(m.double().sum()) == pytest.approx(r["relevance_sum"], rel=1e-9, abs=1e-12)
    again = fresh_maps(model_and_data, [r["sample_idx"] for r in res], [r["target_class"] for r in res])
    for m, a in zip(maps, again):
        torch.testing.assert_close(m, a, rtol=0, atol=1e-5 * a.abs().max().item())


def test_relevance_sum_tracks_the_explained_logit(default_run):
    ratios = [r["relevance_sum"] / r["explained_logit"] for r in default_run["results"]]
    print("sum(R) / explained logit per sample:", [round(x, 3) for x in ratios])
    assert all(r["explained_logit"] > 0 for r in default_run["results"])
    assert all(0.3 < x < 1.5 for x in ratios)


def test_preset_overrides_gammas_and_changes_maps(default_run, aggressive_run):
    assert "Using Gamma rule: Conv2d gamma=10.0, Linear gamma=1.0 (preset aggressive)" in aggressive_run["stdout"]
    for a, d in zip(aggressive_run["results"], default_run["results"]):
        assert a["gamma_params"] == {"conv_gamma": 10.0, "lin_gamma": 1.0} and a["preset"] == "aggressive"
        assert a["gamma_source"] == "PRESET aggressive" and d["gamma_source"] == "CONV_GAMMA, LIN_GAMMA"
        assert a["target_class"] == d["target_class"]
        ra, rd = raw(aggressive_run["out"], a["sample_idx"]), raw(default_run["out"], d["sample_idx"])
        assert ((ra - rd).norm() / rd.norm()).item() > 0.05


def test_balanced_relevance_lies_in_the_evidence_box(trained_tiny, model_and_data):
    """The mini-CUB's class evidence is only inside each box; the explanation should put its relevance there."""
    model, _ = model_and_data
    ckpt = read_checkpoint(trained_tiny["checkpoint"])
    ds = CUBDataset(load_cub(trained_tiny["dataset_root"]), "test", Preprocessing.from_dict(ckpt["preprocessing"]),
                    annotations=True)
    random.seed(0)
    indices = random.sample(range(len(ds)), 20)
    items = [ds[i] for i in indices]
    x = torch.stack([it["image"] for it in items])
    with Explainer(model, "balanced") as ex:
        r = ex.attribute(x)
    logits, relevance = r.logits, r.relevance
    size = relevance.shape[-1]
    centre = torch.arange(size) + 0.5  # pixel i covers [i, i + 1)
    shares, areas = [], []
    for it, r in zip(items, relevance):
        x0, y0, x1, y1 = it["box"].tolist()
        inside = ((centre[None, :] >= x0) & (centre[None, :] < x1) & (centre[:, None] >= y0) & (centre[:, None] < y1))
        pos = r.clamp(min=0)
        shares.append(float(pos[inside].sum() / pos.sum()))
        areas.append(float(inside.float().mean()))
    share, area = sum(shares) / len(shares), sum(areas) / len(areas)
    accuracy = float((logits.argmax(1) == torch.tensor([it["label"] for it in items])).float().mean())
    print(f"balanced: mean share of positive relevance inside the box {share:.3f} (min {min(shares):.3f}); "
          f"box area share {area:.3f}; accuracy on these 20: {accuracy:.2f}")
    assert share > 0.5 and share > area + 0.15


# --- inspect ----------------------------------------------------------------------------------------------
def test_inspect_predictions_match_the_explain_step(default_run):
    out = default_run["out"]
    code, stdout, stderr = run_script_inprocess("inspect_lrp_predictions", "--output-dir", out, "--device", "cpu")
    assert code == 0, stderr[-2000:]
    assert "true species" in stdout and "predicted species" in stdout
    summary = [line for line in stdout.splitlines() if "correct" in line and f"/{N} correct" in line]
    assert len(summary) == 1
    assert "warning" not in stdout
    preds = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    res = default_run["results"]
    assert [p["sample_idx"] for p in preds] == [r["sample_idx"] for r in res]
    assert [p["predicted_class"] for p in preds] == [r["predicted_class"] for r in res]
    for p, r in zip(preds, res):
        assert p["predicted_name"] == r["predicted_name"] and p["label_name"][:30] in stdout
        assert p["confidence"] == pytest.approx(r["confidence"], abs=1e-4)
    correct = sum(p["correct"] for p in preds)
    assert summary[0].startswith(f"{correct}/{N} correct")
    csv_lines = (out / "predictions.csv").read_text(encoding="utf-8").splitlines()
    assert csv_lines[0].startswith("sample_idx,label,label_name,predicted_class") and len(csv_lines) == N + 1


@pytest.mark.parametrize("under", [False, True])
def test_inspect_a_file_as_output_dir_is_not_an_unfinished_run(tmp_path, under):
    """It said the folder held an unfinished run (the marker could not be read below a file)."""
    blocker = tmp_path / "lrp_results.json"
    blocker.write_text("[]", encoding="utf-8")
    out = blocker / "run" if under else blocker
    code, stdout, stderr = run_script_inprocess("inspect_lrp_predictions", "--output-dir", out, "--device", "cpu")
    expected = (f"error: {out / 'lrp_results.json'} not found: run `python scripts/test_vit_forward.py` first (or pass "
                "--output-dir with the folder of a finished run)" if under
                else f"error: OUTPUT_DIR {blocker} is a file, not a folder: give the folder of the run")
    assert code == 2 and error_lines(stderr) == [expected] and "Traceback" not in stderr, stderr
    assert blocker.read_text(encoding="utf-8") == "[]" and sorted(tmp_path.iterdir()) == [blocker]


# --- dtype and implementation -----------------------------------------------------------------------------
def test_bf16_run_on_cpu(trained_tiny, tmp_path, model_and_data):
    code, stdout, stderr = explain(trained_tiny, tmp_path, "--dtype", "bf16", n=2)
    assert code == 0, stderr[-2000:]
    res = results(tmp_path)
    assert [r["sample_idx"] for r in res] == expected_indices(2) and all(r["dtype"] == "bf16" for r in res)
    fp32 = fresh_maps(model_and_data, [r["sample_idx"] for r in res], [r["target_class"] for r in res])
    corr = [pearson(raw(tmp_path, r["sample_idx"]), f) for r, f in zip(res, fp32)]
    print("trained vit_tiny, bf16 vs fp32 map Pearson:", [round(c, 5) for c in corr])
    assert all(raw(tmp_path, r["sample_idx"]).dtype == torch.float32 for r in res)
    assert min(corr) >= 0.99


def test_zennit_impl_gives_the_fused_maps(trained_tiny, tmp_path, default_run):
    code, stdout, stderr = explain(trained_tiny, tmp_path, "--impl", "zennit", n=2)
    assert code == 0, stderr[-2000:]
    fused = {r["sample_idx"]: r for r in default_run["results"]}
    errs = []
    for r in results(tmp_path):
        assert r["impl"] == "zennit" and r["target_class"] == fused[r["sample_idx"]]["target_class"]
        a, b = raw(tmp_path, r["sample_idx"]), raw(default_run["out"], r["sample_idx"])
        errs.append(float((a - b).abs().max() / b.abs().max()))
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item())
    print("trained vit_tiny, zennit vs fused raw maps, max |diff| / max |R|:", [f"{e:.1e}" for e in errs])


# --- bad input: one line, exit 2, nothing written ---------------------------------------------------------
class SomeClass:
    """Not a tensor or a plain type: a weights-only load must refuse it."""


def _checkpoint_variant(trained, tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "pickled":
        torch.save({"format": "vitlrp-checkpoint/1", "obj": SomeClass()}, path)
    elif kind == "other_classes":
        ckpt = torch.load(trained["checkpoint"], map_location="cpu", weights_only=True)
        ckpt["class_names"] = [f"Other bird {i}" for i in range(len(ckpt["class_names"]))]
        torch.save(ckpt, path)
    else:
        return tmp_path / "missing" / "vit_cub_best.pt"
    return path


@pytest.mark.parametrize("kind, message", [
    ("missing", "scripts/train_vit_cub.py"),
    ("pickled", "pickled"),
    ("other_classes", "do not match"),
])
def test_bad_checkpoint_is_one_line(untrained_tiny, tmp_path, kind, message):
    out = tmp_path / "out"
    ckpt = _checkpoint_variant(untrained_tiny, tmp_path, kind)
    code, stdout, stderr = run_script_inprocess(SCRIPT, "--checkpoint-path", ckpt, "--dataset-root",
                                                untrained_tiny["dataset_root"], "--output-dir", out,
                                                "--num-workers", 0)
    errors = error_lines(stderr)
    assert code == 2 and len(errors) == 1, stderr
    assert message in errors[0] and "Traceback" not in stderr
    assert not (out / "lrp_results.json").exists()


@pytest.mark.parametrize("flags, message", [
    (("--conv-gamma", "-1"), "CONV_GAMMA must be a finite number >= 0"),
    (("--lin-gamma", "nan"), "LIN_GAMMA must be a finite number"),
    (("--conv-gamma", "abc"), "--conv-gamma expects a number"),
    (("--num-samples", "1000"), "larger than the test split (200 images)"),
    (("--preset", "nosuch"), "unknown PRESET 'nosuch'"),
    (("--compare-presets", "balanced,nosuch"), "unknown preset(s) in COMPARE_PRESETS: nosuch"),
    (("--dtype", "fp16"), "DTYPE must be one of"),
    (("--preset", "aggressive", "--conv-gamma", "3"), "PRESET aggressive and CONV_GAMMA 3.0 both set the gammas"),
    (("--preset", "aggressive", "--lin-gamma", "0.5"), "PRESET aggressive and LIN_GAMMA 0.5 both set the gammas"),
    (("--preset", "balanced", "--lin-gamma-schedule", "linear:0.5:0"), "PRESET balanced and LIN_GAMMA_SCHEDULE"),
    (("--lin-gamma", "0.3", "--lin-gamma-schedule", "linear:0.5:0"), "LIN_GAMMA_SCHEDULE linear:0.5:0 both set"),
    (("--preset", "balanced", "--gamma-file", "best_gamma.json"), "GAMMA_FILE best_gamma.json and PRESET balanced"),
    (("--compare-presets", "balanced", "--compare-methods", "balanced"), "lists 'balanced' twice"),
])
def test_bad_flags_are_one_line(untrained_tiny, tmp_path, flags, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "lrp_results.json").write_text("[]", encoding="utf-8")  # an older run: a refused run leaves it alone
    code, stdout, stderr = explain(untrained_tiny, out, *flags)
    errors = error_lines(stderr)
    assert code == 2 and len(errors) == 1, stderr
    assert message in errors[0]
    assert "Traceback" not in stderr and "Processing" not in stdout
    assert (out / "lrp_results.json").read_text(encoding="utf-8") == "[]"
    assert not list(out.glob("lrp_*.png"))


def test_unwritable_output_dir_is_one_line(untrained_tiny, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    code, stdout, stderr = explain(untrained_tiny, blocker / "out", n=2)
    errors = error_lines(stderr)
    assert code == 2 and len(errors) == 1, stderr
    assert "cannot write to OUTPUT_DIR" in errors[0] and str(blocker / "out") in errors[0]


# --- unreadable images, interrupted runs ------------------------------------------------------------------
def test_unreadable_image_is_skipped_and_reported(trained_tiny, tmp_path):
    root = Path(shutil.copytree(trained_tiny["dataset_root"], tmp_path / "cub" / "CUB_200_2011"))
    shutil.copy(trained_tiny["checkpoint"], tmp_path / "ckpt.pt")
    indices = expected_indices(4)
    ds = CUBDataset(load_cub(root), "test", Preprocessing.for_size(112))
    broken = indices[1]
    Path(ds.image_path(broken)).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" + bytes(100))
    out = tmp_path / "out"
    code, stdout, stderr = run_script_inprocess(
        SCRIPT, "--checkpoint-path", tmp_path / "ckpt.pt", "--dataset-root", root, "--num-samples", 4,
        "--batch-size", 4, "--num-workers", 0, "--device", "cpu", "--output-dir", out)
    assert code == 1, stderr[-2000:]
    assert "✗ Skipped: cannot read image" in stdout and Path(ds.image_path(broken)).name in stdout
    assert "Completed! Generated 3/4 samples (1 unreadable, see lrp_results.json)" in stdout
    res = results(out)
    assert [r["sample_idx"] for r in res] == indices
    bad = [r for r in res if r.get("error")]
    assert [r["sample_idx"] for r in bad] == [broken] and "cannot read image" in bad[0]["error"]
    for r in res:
        if r["sample_idx"] != broken:
            assert r["error"] is None
            assert all((out / f.format(r["sample_idx"])).is_file() for f in PER_SAMPLE)
    assert not any(out.glob(f"*{broken:06d}*"))
    assert len((out / "lrp_image_paths.txt").read_text(encoding="utf-8").splitlines()) == 3
    assert "skipped" in (out / "index.html").read_text(encoding="utf-8")


def test_empty_maps_are_warned_not_ticked(mini_cub, tmp_path):
    """A model whose head is zero (torchvision's init) explains nothing: every map is all zero. Each sample's line
    says so instead of a bare ✓, a closing warning counts them, the records and the page mark them."""
    from vitlrp.models import build_vit, save_checkpoint

    torch.manual_seed(0)
    model = build_vit("vit_tiny", 10)
    assert not model.heads.head.weight.any()
    save_checkpoint(tmp_path / "zero_head.pt", model, "vit_tiny", load_cub(mini_cub).class_names,
                    Preprocessing.for_size(model.image_size))
    out = tmp_path / "out"
    code, stdout, stderr = run_script_inprocess(
        SCRIPT, "--checkpoint-path", tmp_path / "zero_head.pt", "--dataset-root", mini_cub, "--num-samples", 2,
        "--num-workers", 0, "--device", "cpu", "--output-dir", out)
    assert code == 0, stderr[-2000:]
    samples = [line for line in stdout.splitlines() if line.startswith("[")]
    assert len(samples) == 2 and all("⚠ Target class: " in s and s.endswith(
        "⚠ empty map (every pixel the same: no evidence)") and "✓ Target" not in s for s in samples), samples
    ids = [r["sample_idx"] for r in results(out)]
    assert (f"warning: 2 of 2 map(s) are empty (every pixel the same: no evidence, e.g. a model whose logits do not "
            f"depend on the image); their pictures are blank: {ids}") in stdout.splitlines()
    assert all(r["empty_map"] is True and r["relevance_sum"] == 0 for r in results(out))
    assert (out / "index.html").read_text(encoding="utf-8").count("empty map: every pixel the same") == 2


def test_interrupted_run_leaves_no_stale_results_and_a_rerun_completes(trained_tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text('{"files": ["lrp_results.json"]}', encoding="utf-8")  # an earlier run's folder
    (out / "lrp_results.json").write_text('[{"sample_idx": 1, "stale": true}]', encoding="utf-8")
    import vitlrp.render

    calls = []
    real_save = vitlrp.render.save_png

    def dying_save(image, path):  # the process "dies" on the third picture
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_save(image, path)

    monkeypatch.setattr(vitlrp.render, "save_png", dying_save)
    code, stdout, stderr = explain(trained_tiny, out, n=3, batch_size=2)
    assert code == 130 and f"interrupted\nOUTPUT_DIR {out} is incomplete (see {MARKER}). To finish, run again: " \
                           "python " in stderr  # how to finish, as the marker says
    assert not (out / "lrp_results.json").exists()  # the old results are gone: the folder is not complete
    monkeypatch.undo()

    code, stdout, stderr = explain(trained_tiny, out, n=3, batch_size=2)
    assert code == 0, stderr[-2000:]
    for idx in expected_indices(3)[:1]:  # delete some of a finished run, as a kill during a re-run would
        (out / f"lrp_overlay_{idx:06d}.png").unlink()
    (out / "lrp_results.json").unlink()
    code, stdout, stderr = explain(trained_tiny, out, n=3, batch_size=2)
    assert code == 0, stderr[-2000:]
    res = results(out)
    assert [r["sample_idx"] for r in res] == expected_indices(3) and not any("stale" in r for r in res)
    for idx in expected_indices(3):
        assert all((out / f.format(idx)).is_file() for f in PER_SAMPLE)
    assert not list(out.glob(".*.tmp"))


def test_the_accuracy_line_names_only_the_groups_there_are():
    import runpy

    line = runpy.run_path(str(REPO_ROOT / "scripts" / "inspect_lrp_predictions.py"), run_name="inspect")[
        "accuracy_line"]
    right, wrong = {"correct": True, "confidence": 0.9}, {"correct": False, "confidence": 0.4}
    assert line([right, right]) == "2/2 correct (100.0%); mean confidence 90.0%"  # no 'wrong nan%'
    assert line([wrong]) == "0/1 correct (0.0%); mean confidence 40.0%"
    assert line([right, wrong]) == "1/2 correct (50.0%); mean confidence 65.0% (correct 90.0%, wrong 40.0%)"
    assert line([]) == "0/0 correct (no readable sample)"

"""scripts/evaluate_lrp.py end to end on the trained vit_tiny + synthetic mini-CUB, and the method plumbing."""
import csv
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, error_lines, run_script_inprocess
from PIL import Image
from torch import nn

from vitlrp import evaluation as E
from vitlrp.cub import load_cub
from vitlrp.errors import UserError
from vitlrp.gamma import GammaSpec
from vitlrp.inputs import sample_indices
from vitlrp.methods import create_method, parse_method
from vitlrp.metrics import METRICS
from vitlrp.models import model_from_checkpoint, read_checkpoint

SCRIPT = "evaluate_lrp"
MAIN_METHODS = ["balanced", "baseline", "input_x_gradient", "random"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def flags(trained, out, root=None, **extra):
    args = ["--checkpoint-path", trained["checkpoint"], "--dataset-root", root or trained["dataset_root"],
            "--num-workers", "0", "--device", "cpu", "--output-dir", out]
    for key, value in extra.items():
        args += ["--" + key.replace("_", "-"), value]
    return args


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def by_method(rows, method):
    return [r for r in rows if r["method"] == method]


def linked_copy(src, dst):
    """A copy of a CUB folder whose files are hard links to ``src``'s (unlink before changing one!); not symbolic
    links: an image that is a link leading out of images/ is refused."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def run(trained, out, root=None, **extra):
    if "reference" not in extra and "balanced" not in str(extra.get("methods", "balanced")).split(","):
        extra["reference"] = ""  # REFERENCE must be among METHODS
    code, stdout, stderr = run_script_inprocess(SCRIPT, *flags(trained, out, root, **extra))
    return code, stdout, stderr


@pytest.fixture(scope="module")
def main_run(trained_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_main")
    code, stdout, stderr = run(trained_tiny, out, num_images=40, methods=",".join(MAIN_METHODS), perturb_steps=4,
                               batch_size=20)
    assert code == 0, stderr[-3000:]
    return {"out": out, "stdout": stdout, "stderr": stderr, "rows": read_rows(out / "per_image.csv"),
            "summary": json.loads((out / "summary.json").read_text())}


@pytest.fixture(scope="module")
def small_run(trained_tiny, tmp_path_factory):
    """8 images, one process: γ given as numbers, +attn, and the preset (also the reference of the DDP run)."""
    out = tmp_path_factory.mktemp("eval_small")
    code, stdout, stderr = run(trained_tiny, out, num_images=8, methods="balanced,gamma:1:0.25,balanced+attn",
                               perturb_steps=2, batch_size=8)
    assert code == 0, stderr[-3000:]
    return {"out": out, "stdout": stdout, "rows": read_rows(out / "per_image.csv")}


# --- outputs ---------------------------------------------------------------------------------------------------


def test_output_files(main_run, trained_tiny):
    out, rows = main_run["out"], main_run["rows"]
    with open(out / "per_image.csv", encoding="utf-8") as fh:
        assert next(csv.reader(fh)) == E.ROW_FIELDS
    for method in MAIN_METHODS:
        mine = by_method(rows, method)
        assert len(mine) == 40, method
        assert len({r["sample_idx"] for r in mine}) == 40
        assert all(r["error"] == "" for r in mine)
        assert all(math.isfinite(float(r[m])) for r in mine for m in ("box_share", "morf_auc", "lerf_auc"))
    assert len(rows) == 40 * len(MAIN_METHODS)

    summary_rows = read_rows(out / "summary.csv")
    assert list(summary_rows[0]) == ["method", "metric", "mean", "ci95", "n"]
    assert [(r["method"], r["metric"]) for r in summary_rows] == [(m, k) for m in MAIN_METHODS for k in METRICS]

    s = main_run["summary"]
    assert {"n_images", "methods", "best", "config", "perturbation_baseline", "checkpoint"} <= set(s)
    assert s["n_images"] == 40 and s["n_failed"] == 0
    assert list(s["methods"]) == MAIN_METHODS
    assert s["checkpoint"] == str(trained_tiny["checkpoint"])
    assert s["config"]["METHODS"] == MAIN_METHODS and s["config"]["PERTURB_STEPS"] == 4
    assert "0" in s["perturbation_baseline"]
    assert all(b["method"] != "random" for b in s["best"].values())
    for r in summary_rows:  # the CSV and the JSON agree, and the means are the per-image means
        entry = s["methods"][r["method"]][r["metric"]]
        assert float(r["mean"]) == pytest.approx(entry["mean"]) and int(r["n"]) == entry["n"]
        values = [float(x[r["metric"]]) for x in by_method(rows, r["method"]) if math.isfinite(float(x[r["metric"]]))]
        assert entry["mean"] == pytest.approx(sum(values) / len(values), abs=1e-6)
    assert s["methods"]["balanced"]["box_share"]["n"] == 40

    config = json.loads((out / "config.json").read_text())
    assert config["METHODS"] == MAIN_METHODS and config["world_size"] == 1
    pngs = ["curves_morf_lerf.png", "ranking.png", "forest_paired.png"] + [f"bar_{m}.png" for m in METRICS]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name
        with Image.open(out / name) as img:
            img.verify()
    assert sorted(p.name for p in out.glob("*.png")) == sorted(pngs)


def test_console_is_a_table_and_a_few_lines_within_120_columns(main_run):
    """The table of means (headline first, * the best of a column), the headline's best with its test against the
    runner-up, the other metrics' best grouped by that test, one pointer to the paired statistics, the class check,
    the output folder: every line at most 120 columns, no line per paired comparison."""
    lines = main_run["stdout"].rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 120 and len(lines) <= 40
    assert lines[-1].startswith("Output directory:") and str(main_run["out"]) in lines[-1]
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert lines[header - 1].split()[:2] == ["LeRF", "−"] and lines[header].split()[1:3] == ["MoRF", "↑"]
    rows = lines[header + 2:header + 2 + len(MAIN_METHODS)]
    assert [line.split()[0] for line in rows] == MAIN_METHODS
    summary, best = main_run["summary"]["methods"], main_run["summary"]["best"]
    for line in rows:  # the headline's mean first, * on the best of the column
        method, headline = line.split()[:2]
        assert headline.rstrip("*") == f"{summary[method]['lerf_minus_morf']['mean']:.3f}"
        assert headline.endswith("*") == (best["lerf_minus_morf"]["method"] == method)
    text = " ".join(line.strip() for line in lines)
    b = best["lerf_minus_morf"]
    assert (f"Most faithful (LeRF − MoRF, higher is better): {b['method']} {b['mean']:.3f}; vs runner-up "
            f"{b['runner_up']} {b['diff_to_runner_up']:+.3f}, Wilcoxon p={b['p_wilcoxon_vs_runner_up']:.2g}: ") in text
    for metric, b in best.items():
        if metric != "lerf_minus_morf":
            assert f"{metric} ({b['method']})" in text
    paired = read_rows(main_run["out"] / "paired.csv")
    significant = [r for r in paired if r["significant"] == "True"]
    better = sum((float(r["mean_diff"]) > 0) == METRICS[r["metric"]].higher for r in significant)
    worse, neither = len(significant) - better, len(paired) - len(significant)
    assert (f"{better} differences significantly better than balanced, {worse} worse, {neither} neither, of "
            f"{len(paired)}; every row: {main_run['out'] / 'paired.csv'}, forest_paired.png") in text
    assert not any(line.startswith(("box_share ", "lerf_minus_morf ")) for line in lines)  # no paired rows
    dependence = [line for line in lines if line.startswith("class dependence, mean |ρ| to one random other class")]
    assert len(dependence) == 1 and "pass" not in dependence[0] and "fail" not in dependence[0]
    rho = 1 - main_run["summary"]["methods"]["balanced"]["class_sensitivity"]["mean"]
    assert f"balanced {rho:.2f}" in dependence[0]


def test_balanced_beats_random_on_the_mini_cub(main_run):
    s = main_run["summary"]["methods"]
    names = ("box_share", "pointing_game", "lerf_minus_morf", "morf_auc", "lerf_auc")
    print()
    for method in MAIN_METHODS:
        print(f"mini-CUB 40 images  {method:<17}" + "  ".join(
            f"{k} {s[method][k]['mean']:.3f}±{s[method][k]['ci95']:.3f}" for k in names))
    bal, rnd = s["balanced"], s["random"]
    assert bal["box_share"]["mean"] > rnd["box_share"]["mean"] + 0.2
    assert bal["pointing_game"]["mean"] > rnd["pointing_game"]["mean"] + 0.2
    assert bal["lerf_minus_morf"]["mean"] > 0.1
    assert bal["lerf_minus_morf"]["mean"] > rnd["lerf_minus_morf"]["mean"] + 0.15
    assert bal["morf_auc"]["mean"] < rnd["morf_auc"]["mean"]


def test_paired_csv_matches_per_image_differences(main_run):
    """paired.csv (and summary.json) against differences recomputed here from per_image.csv."""
    from scipy.stats import wilcoxon

    out, rows = main_run["out"], main_run["rows"]
    paired = read_rows(out / "paired.csv")
    others = [m for m in MAIN_METHODS if m != "balanced"]
    assert [(r["metric"], r["method"]) for r in paired] == [(k, m) for k in METRICS for m in others]
    assert all(r["reference"] == "balanced" for r in paired)
    assert main_run["summary"]["paired"]["reference"] == "balanced"
    assert len(main_run["summary"]["paired"]["rows"]) == len(paired)
    ref = {r["sample_idx"]: r for r in by_method(rows, "balanced")}
    for p in paired:
        d = [float(r[p["metric"]]) - float(ref[r["sample_idx"]][p["metric"]]) for r in by_method(rows, p["method"])]
        kept = [x for x in d if math.isfinite(x)]
        assert int(p["n_pairs"]) == len(kept) and int(p["n_dropped"]) == len(d) - len(kept)
        assert float(p["mean_diff"]) == pytest.approx(sum(kept) / len(kept), abs=1e-6)
        assert float(p["ci_low"]) <= float(p["mean_diff"]) <= float(p["ci_high"])
        sign = 1 if METRICS[p["metric"]].higher else -1
        assert int(p["wins"]) == sum(sign * x > 0 for x in kept) and int(p["ties"]) == sum(x == 0 for x in kept)
        if any(x != 0 for x in kept):
            assert float(p["p_wilcoxon"]) == pytest.approx(wilcoxon(kept).pvalue, rel=1e-6)
        assert float(p["p_holm"]) >= float(p["p_wilcoxon"])
        assert (p["significant"] == "True") == (float(p["p_holm"]) < 0.05 and p["agrees"] == "True")
    random_box = next(p for p in paired if p["method"] == "random" and p["metric"] == "box_share")
    assert random_box["significant"] == "True" and float(random_box["ci_high"]) < 0  # random localizes worse
    lines = main_run["stdout"].splitlines()
    assert any(line.startswith("paired against balanced") for line in lines)


def test_reference_not_among_methods_is_one_line_before_any_work(untrained_tiny, tmp_path):
    code, stdout, stderr = run(untrained_tiny, tmp_path / "out", num_images=4, methods="baseline,random",
                               reference="balanced")
    assert code == 2
    assert error_lines(stderr) == ["error: REFERENCE 'balanced' is not among METHODS (baseline, random): set it to "
                                   "one of them, or leave it empty for no paired comparison"]
    assert not (tmp_path / "out").exists()


def test_default_reference_missing_from_methods_takes_the_first_gamma_method(untrained_tiny, tmp_path):
    """REFERENCE left at its default (balanced) while METHODS lacks it: the first γ method of METHODS, or none."""
    flags_ = flags(untrained_tiny, tmp_path / "gamma", num_images=2, methods="random,gamma:100:0,baseline",
                   perturb_steps=2, bootstrap_samples=100)
    code, stdout, stderr = run_script_inprocess(SCRIPT, *flags_)
    assert code == 0, stderr[-2000:]
    assert ("REFERENCE balanced (the default) is not among METHODS: the methods are compared with gamma:100:0, "
            "their first γ method (--reference chooses another)") in stdout.splitlines()
    summary = json.loads((tmp_path / "gamma" / "summary.json").read_text())
    assert summary["paired"]["reference"] == "gamma:100:0" and summary["config"]["REFERENCE"] == "gamma:100:0"
    assert {r["reference"] for r in read_rows(tmp_path / "gamma" / "paired.csv")} == {"gamma:100:0"}

    code, stdout, stderr = run_script_inprocess(SCRIPT, *flags(untrained_tiny, tmp_path / "none", num_images=1,
                                                               methods="random", perturb_steps=2))
    assert code == 0, stderr[-2000:]
    assert ("REFERENCE balanced (the default) is not among METHODS: no γ method there, so no paired comparison "
            "(--reference chooses another)") in stdout.splitlines()
    assert json.loads((tmp_path / "none" / "summary.json").read_text())["paired"]["reference"] is None


def test_empty_reference_means_no_paired_comparison(trained_tiny, tmp_path):
    code, stdout, stderr = run(trained_tiny, tmp_path, num_images=4, methods="baseline,random", perturb_steps=2,
                               batch_size=4, reference="")
    assert code == 0, stderr[-2000:]
    assert "no paired comparison: no reference method" in stdout.splitlines()
    assert not (tmp_path / "paired.csv").exists() and not (tmp_path / "forest_paired.png").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["paired"]["reference"] is None


def test_road_adds_its_metrics_curves_and_paired_rows(trained_tiny, tmp_path):
    code, stdout, stderr = run(trained_tiny, tmp_path, num_images=6, methods="balanced,random", perturb_steps=3,
                               batch_size=6, road=True)
    assert code == 0, stderr[-2000:]
    road = ["road_morf_auc", "road_lerf_auc", "road_lerf_minus_morf"]
    rows = read_rows(tmp_path / "per_image.csv")
    assert list(rows[0]) == E.row_fields({**METRICS, **dict.fromkeys(road)})
    for r in rows:
        assert float(r["road_lerf_minus_morf"]) == pytest.approx(float(r["road_lerf_auc"]) - float(r["road_morf_auc"]),
                                                                 abs=1e-5)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert all(k in s["methods"]["balanced"] for k in road) and "ROAD" in s["perturbation_baseline"]
    assert [r["metric"] for r in s["paired"]["rows"]][-3:] == road
    assert (tmp_path / "curves_road.png").read_bytes()[:8] == PNG_SIGNATURE
    assert all((tmp_path / f"bar_{k}.png").exists() for k in road)
    lines = stdout.splitlines()
    assert "road_lerf_minus_morf (" in " ".join(lines) and max(len(line) for line in lines) <= 120
    assert sum(line.startswith("method") for line in lines) == 2  # 14 columns: two blocks that fit 120 columns


# --- methods ---------------------------------------------------------------------------------------------------


def test_gamma_and_attn_methods_run(small_run):
    rows = small_run["rows"]
    for method in ("balanced", "gamma:1:0.25", "balanced+attn"):
        mine = by_method(rows, method)
        assert len(mine) == 8 and all(r["error"] == "" for r in mine), method
        assert all(math.isfinite(float(r["box_share"])) for r in mine)
    # another Linear γ gives other maps (their relevance sums differ)
    assert [r["relevance_sum"] for r in by_method(rows, "balanced")] != \
        [r["relevance_sum"] for r in by_method(rows, "gamma:1:0.25")]


def test_balanced_and_its_gamma_pair_are_one_method(untrained_tiny, tmp_path):
    code, _, stderr = run(untrained_tiny, tmp_path / "out", methods="balanced,gamma:1:0.5", num_images=4)
    assert code == 2
    assert error_lines(stderr) == ["error: METHODS lists the same method twice ('balanced' and 'gamma:1:0.5'): name "
                                   "each method once"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("methods, named", [
    ("balanced,no_such_method", "no_such_method"),
    ("gamma:x:1", "gamma:x:1"),
    ("gamma:1", "gamma:1"),
    ("gamma:1:-0.5", "gamma:1:-0.5"),
    ("input_x_gradient+attn", "input_x_gradient+attn"),
    ("balanced,balanced", "twice"),
])
def test_bad_methods_are_one_error_line(untrained_tiny, tmp_path, methods, named):
    code, stdout, stderr = run(untrained_tiny, tmp_path / "out", methods=methods, num_images=4)
    assert code == 2
    errors = error_lines(stderr)
    assert len(errors) == 1 and named in errors[0], stderr
    assert not (tmp_path / "out" / "per_image.csv").exists()


def test_parse_method():
    assert parse_method("gamma:1:0.5").params == GammaSpec(1.0, 0.5, False)
    assert parse_method("balanced+attn").params == GammaSpec(1.0, 0.5, True)
    assert parse_method("gamma:0:2+attn").params.attention is True
    assert parse_method("gamma:1:linear:0.5:0").params.lin == "linear:0.5:0"
    assert parse_method("input_x_gradient").family == "gradients"
    assert parse_method("random").family == "baselines"
    for bad in ("gamma:x:1", "gamma:1:2:3", "gamma::1", "random+attn", "Balanced", ""):
        with pytest.raises(UserError):
            parse_method(bad)


# --- bad inputs ------------------------------------------------------------------------------------------------


def test_num_images_larger_than_the_split(untrained_tiny, tmp_path):
    code, _, stderr = run(untrained_tiny, tmp_path / "out", num_images=201, methods="random")
    assert code == 2
    errors = error_lines(stderr)
    assert len(errors) == 1 and "NUM_IMAGES=201" in errors[0] and "200" in errors[0], stderr


@pytest.mark.parametrize("missing, named", [("bounding_boxes.txt", "bounding_boxes.txt"),
                                            ("parts/part_locs.txt", "part_locs.txt")])
def test_missing_annotation_file(untrained_tiny, tmp_path, missing, named):
    # the checkpoint's classes are the mini-CUB's, so the folder is a copy of it with one file taken away
    root = linked_copy(untrained_tiny["dataset_root"], tmp_path / "CUB_200_2011")
    (root / missing).unlink()
    code, _, stderr = run(untrained_tiny, tmp_path / "out", root, num_images=4, methods="random")
    assert code == 2
    errors = error_lines(stderr)
    assert len(errors) == 1 and named in errors[0], stderr


# --- failures, seeds, several processes --------------------------------------------------------------------------


def test_unreadable_image_is_counted_and_reported(trained_tiny, main_run, tmp_path):
    root = linked_copy(trained_tiny["dataset_root"], tmp_path / "CUB_200_2011")
    ann = load_cub(root)
    idx = sample_indices(len(ann.split_indices("test")), 40, 0)[3]
    path = ann.image_path(ann.split_indices("test")[idx])
    path.unlink()  # a link to the shared mini-CUB's file: replace it, never write through it
    path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg " + bytes(64))

    out = tmp_path / "out"
    code, stdout, stderr = run(trained_tiny, out, root, num_images=40, methods="random,input_x_gradient",
                               perturb_steps=2, batch_size=20)
    assert code == 1, stderr[-2000:]
    assert "1 image(s) could not be read" in stdout
    assert stdout.rstrip().splitlines()[-1].startswith("Output directory:")
    rows = read_rows(out / "per_image.csv")
    for method in ("random", "input_x_gradient"):
        mine = by_method(rows, method)
        assert len(mine) == 40
        bad = [r for r in mine if r["error"]]
        assert [int(r["sample_idx"]) for r in bad] == [idx] and path.name in bad[0]["error"]
        assert bad[0]["box_share"] == ""
    s = json.loads((out / "summary.json").read_text())
    assert s["n_images"] == 39 and s["n_failed"] == 1 and s["n_sampled"] == 40
    for method in ("random", "input_x_gradient"):
        assert s["methods"][method]["n_images"] == 39 and s["methods"][method]["n_failed"] == 1
        assert s["methods"][method]["box_share"]["n"] == 39
    # the same SEED draws the same images whatever the methods (the failed one included)
    assert {r["sample_idx"] for r in rows} == {r["sample_idx"] for r in main_run["rows"]}


def test_input_x_gradient_runs_on_the_unpatched_model(trained_tiny):
    model, _ = model_from_checkpoint(read_checkpoint(trained_tiny["checkpoint"]))
    x = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([1, 4])

    def torch_own_forwards():
        return all(cls.forward.__module__.startswith("torch.nn.")
                   for cls in (nn.LayerNorm, nn.GELU, nn.MultiheadAttention))

    assert torch_own_forwards()
    xg = x.clone().requires_grad_(True)
    model(xg).gather(1, target.view(-1, 1)).sum().backward()
    plain = (xg.detach() * xg.grad).sum(1)

    ixg = create_method("input_x_gradient", model)
    with ixg:
        outside = ixg.attribute(x, target).relevance
    with create_method("baseline", model) as lrp:
        lrp_map = lrp.attribute(x, target).relevance
        assert torch_own_forwards()  # LXT's patches are gone between batches
        with ixg:
            inside = ixg.attribute(x, target).relevance
    assert torch_own_forwards()
    assert torch.equal(inside, outside)
    torch.testing.assert_close(outside, plain, rtol=1e-5, atol=1e-7)
    # and the LRP map really is a different computation (else the comparison above proves nothing)
    assert not torch.allclose(lrp_map, outside, rtol=1e-2, atol=1e-4)


@pytest.mark.slow
def test_two_processes_match_one(trained_tiny, small_run, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(REPO_ROOT / "scripts" / "evaluate_lrp.py"),
           *map(str, flags(trained_tiny, out, num_images=8, methods="balanced,random", perturb_steps=2,
                           reference="balanced"))]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cpu x2" in proc.stdout
    rows = read_rows(out / "per_image.csv")
    single = by_method(small_run["rows"], "balanced")
    for method in ("balanced", "random"):
        mine = by_method(rows, method)
        assert sorted(int(r["sample_idx"]) for r in mine) == sorted(int(r["sample_idx"]) for r in single), method
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    # rank 0 and rank 1 scored half each; every value equals the one-process run's
    for a, b in zip(by_method(rows, "balanced"), single):
        assert a["sample_idx"] == b["sample_idx"]
        for field in E.ROW_FIELDS[1:-1]:
            assert float(a[field]) == pytest.approx(float(b[field]), abs=1e-5, nan_ok=True), field


def test_best_line_gives_no_verdict_when_the_rank_test_leans_the_other_way():
    from vitlrp import evaluation as E

    assert E.best_line("box_share", "a", 0.5, ("b", 0.04, 1e-5, True)).endswith(", significantly better")
    assert E.best_line("box_share", "a", 0.5, ("b", 0.04, 1e-5, False)).endswith("leans to the runner-up: no verdict")
    assert E.best_line("box_share", "a", 0.5, ("b", 0.04, 0.2, True)).endswith("not significantly better")

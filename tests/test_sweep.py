"""The γ sweep: per-block schedules, one forward for many γ settings, surfaces / Pareto / best_gamma.json, and
scripts/sweep_gamma.py end to end (with its file read back by the heatmap and evaluation scripts)."""
import csv
import json
import math

import pytest
import torch
from conftest import error_lines, run_script_inprocess
from test_explain import explainer, images, rel_err, run, tiny_vit
from test_explain import many as explain_many
from torch import nn

from vitlrp import gammarule
from vitlrp import sweep as S
from vitlrp.errors import UserError
from vitlrp.families.torchvision import lxt_patched
from vitlrp.gamma import GammaSpec, parse_schedule, schedule_text, schedule_values
from vitlrp.metrics import METRICS


# --- schedules --------------------------------------------------------------------------------------------
def test_schedule_values_and_text():
    assert schedule_values(0.5, 3) == [0.5, 0.5, 0.5]
    assert schedule_values("linear:0.5:0", 3) == [0.5, 0.25, 0.0]
    assert schedule_values("linear:0:1", 1) == [0.0]
    assert schedule_values("geometric:1:0.01", 3) == pytest.approx([1.0, 0.1, 0.01])
    assert schedule_values("0.3/0.2/0.1", 3) == [0.3, 0.2, 0.1]
    assert schedule_values([0.3, 0.2], 2) == [0.3, 0.2]
    assert schedule_text("linear:0.50:0") == "linear:0.5:0" and schedule_text(1.0) == "1"
    assert parse_schedule("0.25") == ("const", (0.25,))
    for bad, words in (("linear:1", "not a γ schedule"), ("cosine:1:0", "not a γ schedule"), ("0.1/-1", ">= 0"),
                       ("geometric:0:1", "values > 0"), ("", "not a γ schedule"), ("nan", ">= 0")):
        with pytest.raises(UserError, match=words):
            parse_schedule(bad)
    with pytest.raises(UserError, match="lists 2 values but the model has 3 encoder blocks"):
        schedule_values("0.1/0.2", 3)


@pytest.mark.parametrize("impl", ["zennit", "fused"])
def test_a_schedule_equals_per_module_gammas_set_by_hand(impl):
    """Explainer with linear:1:0 on 3 blocks == the rule set by hand: block γ 1, 0.5, 0; head 0; conv 0.25."""
    from zennit.composites import NameMapComposite
    from zennit.rules import Gamma

    model, x = tiny_vit(seed=3, dtype=torch.float64, num_layers=3), images(3, seed=4, dtype=torch.float64)
    target = torch.tensor([0, 2, 4])
    with explainer(model, 0.25, "linear:1:0", dtype=torch.float64, impl=impl) as ex:
        _, maps = run(ex, x, target)
    by_hand = {"conv_proj": 0.25, "heads.head": 0.0}
    for i, g in enumerate((1.0, 0.5, 0.0)):
        block = f"encoder.layers.encoder_layer_{i}"  # out_proj is never called as a module (F.linear): no effect
        by_hand.update({f"{block}.mlp.0": g, f"{block}.mlp.3": g, f"{block}.self_attention.out_proj": g})
    modules = dict(model.named_modules())
    assert {n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))} == set(by_hand)
    xr = x.clone().requires_grad_(True)
    with lxt_patched():
        if impl == "zennit":
            rules = NameMapComposite([((name,), Gamma(g)) for name, g in by_hand.items()]).context(model)
        else:
            rules = gammarule.gamma_rules({modules[name]: g for name, g in by_hand.items()})
        with rules:
            (grad,) = torch.autograd.grad(model(xr).gather(1, target[:, None]).sum(), xr)
    ref = (x * grad).sum(1)
    err = rel_err(maps, ref)
    print(f"{impl}: schedule vs per-module γ by hand, max |diff| / max |R| = {err:.1e}")
    assert err < 1e-13
    with explainer(model, 0.25, 0.5, dtype=torch.float64, impl=impl) as ex:  # and a schedule is not a constant
        assert rel_err(run(ex, x, target)[1], ref) > 1e-3


# --- one forward, many γ ----------------------------------------------------------------------------------
SETTINGS = [(c, lin) for lin in (0.0, 0.5, "linear:1:0", "0.2/0.1/0") for c in (0.0, 1.0, 100.0)]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_shared_forward_maps_equal_separate_runs(dtype, tol):
    model, x = tiny_vit(seed=5, dtype=dtype, num_layers=3), images(3, seed=6, dtype=dtype)
    target = torch.tensor([1, 3, 0])
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    with explainer(model, dtype=dtype, impl="fused") as ex:
        logits, many = explain_many(ex, x, target, SETTINGS)
    hook.remove()
    assert len(calls) == 1 and many.shape == (len(SETTINGS), 3, 32, 32)  # one forward for 12 settings
    for k, (conv, lin) in enumerate(SETTINGS):
        with explainer(model, conv, lin, dtype=dtype, impl="fused") as ex:
            ref_logits, ref = run(ex, x, target)
        assert torch.equal(logits, ref_logits)
        assert rel_err(many[k], ref) < tol, (conv, lin, rel_err(many[k], ref))
    assert rel_err(many[0], many[-1]) > 1e-2  # the settings do differ


def test_zennit_explain_many_falls_back_to_separate_runs():
    model, x = tiny_vit(seed=5, num_layers=3), images(2, seed=6)
    with explainer(model, 1.0, 0.5, impl="zennit") as ex:
        _, many = explain_many(ex, x, None, SETTINGS[:4])
        assert ex.gamma == GammaSpec(1.0, 0.5)  # its own setting is untouched
    with explainer(model, *SETTINGS[3], impl="zennit") as ex:
        assert torch.equal(many[3], run(ex, x, None)[1])


# --- surfaces, Pareto front, recommendation ---------------------------------------------------------------
def sweep_rows(values, rho=None, n=12):
    """per_image rows of ``n`` images per cell whose metrics equal ``values``: name → {metric: value} (others 0.5),
    and whose class-check |ρ| (both levels) is ``rho[name]`` (0.1 by default: well below 5 × chance for 49 patches)
    plus a small per-image jitter."""
    rho = rho or {}
    return [{"method": name, "sample_idx": i, "error": "", "empty": 0, **{m: v.get(m, 0.5) for m in METRICS},
             "class_abs_rho": rho.get(name, 0.1) + 0.01 * (i % 3), "class_pixel_abs_rho": rho.get(name, 0.1)
             + 0.01 * (i % 2)} for name, v in values.items() for i in range(n)]


def test_grid_surface_pareto_and_recommendation():
    cells, rows = S.grid([0, 1], [0, 0.5], ["linear:0.5:0"])
    assert rows == ["0", "0.5", "linear:0.5:0"] and len(cells) == 6
    assert cells[0] == GammaSpec(0.0, 0.0) and cells[-1] == GammaSpec(1.0, "linear:0.5:0")
    assert cells[-1].name == "gamma:1:linear:0.5:0"
    values = {"gamma:0:0": (0.5, 0.8, 0.3), "gamma:1:0": (0.4, 0.9, 0.1), "gamma:0:0.5": (0.3, 0.7, 0.4),
              "gamma:1:0.5": (0.45, 0.85, 0.05), "gamma:0:linear:0.5:0": (0.5, 0.8, 0.3),
              "gamma:1:linear:0.5:0": (0.2, 0.6, 0.5)}
    found = S.conclude(sweep_rows({n: dict(zip(S.OBJECTIVES, v)) for n, v in values.items()}), list(values), cells,
                       12, {"baseline": GammaSpec(0.0, 0.0), "other": GammaSpec(10.0, 1.0)}, patches=49)
    summary = found["summary"]
    surf = S.surface(summary, [0.0, 1.0], rows, "box_share")
    assert surf == [[pytest.approx(v) for v in row] for row in [[0.8, 0.9], [0.7, 0.85], [0.8, 0.6]]]
    assert S.surface(summary, [0.0, 1.0], rows, "box_share", "ci95") == [[pytest.approx(0.0)] * 2] * 3
    front = S.pareto_front(summary)
    # gamma:0:0.5 and gamma:1:linear are dominated; the two equal cells do not dominate each other
    assert set(front) == {"gamma:0:0", "gamma:1:0", "gamma:1:0.5", "gamma:0:linear:0.5:0"}
    sums = S.rank_sums(summary)
    assert sums["gamma:1:0.5"] == 3 + 2 + 1 and sums["gamma:0:0"] == 1 + 3 + 3 and sums["gamma:1:0"] == 4 + 1 + 2
    assert S.recommend(summary) == "gamma:1:0.5"
    doc = found["doc"]
    assert doc["recommended"]["conv_gamma"] == 1.0 and doc["recommended"]["lin_gamma"] == 0.5
    assert doc["best"]["box_share"]["method"] == "gamma:1:0"
    assert doc["best"]["negative_share"]["method"] == "gamma:1:0.5"
    assert doc["presets"]["baseline"]["pareto"] and not doc["presets"]["other"]["in_grid"]
    assert doc["firmness"]["firm"] and {t["recommended"] for t in doc["firmness"]["table"][:4]} == {"gamma:1:0.5"}


def test_the_recommendation_passes_the_class_check_and_says_how_firm_it_is():
    good = {"lerf_minus_morf": 0.3, "box_share": 0.7, "negative_share": 0.2}
    shiny = {"lerf_minus_morf": 0.5, "box_share": 0.9, "negative_share": 0.0}
    middling = {"lerf_minus_morf": 0.4, "box_share": 0.8, "negative_share": 0.1}
    cells = [GammaSpec(0.0, "0"), GammaSpec(1.0, "0"), GammaSpec(0.5, "0")]
    names = [c.name for c in cells]
    rows = sweep_rows({"gamma:0:0": good, "gamma:1:0": shiny, "gamma:0.5:0": middling},
                      {"gamma:0:0": 0.3, "gamma:1:0": 0.8, "gamma:0.5:0": 0.57})
    found = S.conclude(rows, names, cells, 12, {"baseline": GammaSpec.preset("baseline")}, patches=49)
    # the class-insensitive cell dominates every objective and still is not recommended
    assert found["class_failed"] == ["gamma:1:0"] and found["front"] == ["gamma:0:0"]
    rec = found["doc"]["recommended"]
    assert rec["method"] == "gamma:0:0" and rec["sanity"]["passes_class_check"]
    assert rec["sanity"]["class_abs_rho"] == pytest.approx(0.31) and rec["sanity"]["class_verdict"] == "pass"
    assert rec["rule"].startswith("among the cells that pass the class check (5 × chance |ρ| = 0.576)")
    assert found["doc"]["class_check_failed"] == ["gamma:1:0"]
    table = {t["rule"]: t["recommended"] for t in found["doc"]["firmness"]["table"]}
    # |ρ| 0.575-0.58: its interval holds 0.576, passes below 0.6 and 0.7: the answer depends on the threshold
    assert table["|ρ| < 0.5"] == "gamma:0:0" and table["|ρ| < 0.6"] == "gamma:0.5:0" == table["|ρ| < 0.7"]
    assert not found["firmness"]["firm"] and found["firmness"]["line"].startswith("The answer changes with")
    rows_csv = S.cell_rows(found["summary"], cells, found["front"], found["sums"], found["verdicts"])
    assert [r["class_check"] for r in rows_csv] == ["pass", "fail", "undecided"] and rows_csv[1]["rank_sum"] == ""
    assert any("1 of 3 cells fail it" in line for line in S.failure_lines(found))
    # when no cell passes, the best of all is named, marked as failing, and the rule says so
    found = S.conclude(sweep_rows({"gamma:1:0": shiny}, {"gamma:1:0": 0.8}), ["gamma:1:0"], cells[1:2], 12, {},
                       patches=49)
    rec = found["doc"]["recommended"]
    assert not rec["sanity"]["passes_class_check"] and "among the cells that pass" not in rec["rule"]
    assert rec["rule"].startswith("NO cell passes the class check")
    assert any("NO cell of 1 passes it" in line for line in S.failure_lines(found))


def test_a_cell_that_fails_on_every_image_is_reported_not_fatal():
    rows = sweep_rows({"gamma:0:0": {}}, n=4)
    rows += [{"method": "gamma:1:0", "sample_idx": i, "error": "non-finite map: ...", "empty": 0} for i in range(4)]
    found = S.conclude(rows, ["gamma:0:0", "gamma:1:0"], [GammaSpec(0.0, "0"), GammaSpec(1.0, "0")], 4, {},
                       patches=49)
    assert found["failed_cells"] == ["gamma:1:0"] and found["failed"] == [] and found["n_ok"] == 4
    assert found["doc"]["recommended"]["method"] == "gamma:0:0"
    assert any("scored no image" in line and "gamma:1:0" in line for line in S.failure_lines(found))
    none = S.conclude(rows[4:], ["gamma:1:0"], [GammaSpec(1.0, "0")], 4, {}, patches=49)
    assert none["recommended"] is None and none["doc"]["recommended"] is None and "no cell scored" in none["why"]


def test_a_sweep_whose_maps_are_all_empty_recommends_nothing():
    """Empty maps (a zero head): no metric and no ρ is defined; n counts no image, the class check is n/a, not
    fail, and there is no recommendation."""
    rows = [{"method": n, "sample_idx": i, "error": "", "empty": 1, **dict.fromkeys(METRICS, math.nan),
             "class_abs_rho": math.nan, "class_pixel_abs_rho": math.nan} for n in ("gamma:0:0", "gamma:1:0")
            for i in range(3)]
    cells = [GammaSpec(0.0, "0"), GammaSpec(1.0, "0")]
    found = S.conclude(rows, [c.name for c in cells], cells, 3, {}, patches=49)
    assert found["recommended"] is None and found["doc"]["recommended"] is None
    assert found["doc"]["class_check_failed"] == [] and found["n_scored"] == 0
    csv_rows = S.cell_rows(found["summary"], cells, found["front"], found["sums"], found["verdicts"])
    assert [(r["n_images"], r["class_check"]) for r in csv_rows] == [(0, "n/a"), (0, "n/a")]


def write_gamma_file(path, **changes):
    doc = {"recommended": {"conv_gamma": 1.0, "lin_gamma": "linear:0.5:0", "sanity": {"passes_class_check": True}},
           "best": {"box_share": {"conv_gamma": 100.0, "lin_gamma": 0.0}}, **changes}
    path.write_text(json.dumps(doc))
    return path


def test_read_gamma_file(tmp_path):
    path = write_gamma_file(tmp_path / "best_gamma.json")
    assert GammaSpec.from_file(path) == GammaSpec(1.0, "linear:0.5:0")
    assert GammaSpec.from_file(f"{path}#box_share") == GammaSpec(100.0, 0.0)
    with pytest.raises(UserError, match="choose recommended, box_share"):
        GammaSpec.from_file(f"{path}#gini")
    with pytest.raises(UserError, match="missing.json does not exist") as info:
        GammaSpec.from_file(tmp_path / "missing.json")
    assert info.value.fix == "gamma_file"
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not a readable best_gamma.json"):
        GammaSpec.from_file(tmp_path / "bad.json")
    (tmp_path / "run#3").mkdir()
    hashed = write_gamma_file(tmp_path / "run#3" / "best_gamma.json", best=[1, 2])
    assert GammaSpec.from_file(hashed) == GammaSpec(1.0, "linear:0.5:0")  # a '#' in a path is part of the path
    with pytest.raises(UserError, match=r"no setting 'box_share' in it \(choose recommended\)"):
        GammaSpec.from_file(f"{hashed}#box_share")  # "best": [1, 2] is no table of settings: one line, no traceback


@pytest.mark.parametrize("doc, words", [
    ([1, 2], "is not a best_gamma.json (it holds a JSON list, not an object)"),
    ({"recommended": {"conv_gamma": 1.0}}, "its recommended entry has no lin_gamma (a best_gamma.json written by"),
    ({"recommended": [1, 2]}, "its recommended entry is not an object with conv_gamma and lin_gamma"),
    ({"recommended": None, "why": "no cell scored any image"}, "holds no recommendation: the sweep made none (no cell"),
    ({"recommended": {"conv_gamma": 1.0, "lin_gamma": 0.5, "sanity": {"passes_class_check": False,
                                                                      "class_verdict": "undecided"}}},
     "its recommended setting gamma:1:0.5 did not pass the sweep's class check (undecided): its maps may hardly "
     "depend on the class; set gamma_file_force to true to use it anyway"),
    ({"recommended": {"conv_gamma": 1.0, "lin_gamma": 0.5}, "checkpoint_sha256": "ab" * 32, "checkpoint": "/x.pt"},
     "was made for another checkpoint (/x.pt), sha256 abababab, not "),
])
def test_a_bad_or_unsafe_gamma_file_is_one_line(tmp_path, doc, words):
    path = tmp_path / "best_gamma.json"
    path.write_text(json.dumps(doc))
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    with pytest.raises(UserError) as info:
        GammaSpec.from_file(path, checkpoint=ckpt)
    assert words in str(info.value) and "\n" not in str(info.value)
    if "force" in words:  # the user may insist
        assert GammaSpec.from_file(path, checkpoint=ckpt, force=True) == GammaSpec(1.0, 0.5)


def test_a_gamma_file_of_another_checkpoint_path_is_refused_without_a_hash(tmp_path):
    path = write_gamma_file(tmp_path / "best_gamma.json", checkpoint=str(tmp_path / "other.pt"))
    with pytest.raises(UserError, match=f"was made for the checkpoint {tmp_path / 'other.pt'}, not"):
        GammaSpec.from_file(path, checkpoint=tmp_path / "this.pt")
    assert GammaSpec.from_file(path, checkpoint=tmp_path / "other.pt") == GammaSpec(1.0, "linear:0.5:0")


def test_a_folder_as_gamma_file_is_named_a_folder(tmp_path):
    folder = tmp_path / "sweep"
    folder.mkdir()
    with pytest.raises(UserError) as info:
        GammaSpec.from_file(folder)
    assert str(info.value) == f"gamma_file {folder} is a folder, not a best_gamma.json file"
    (folder / "best_gamma.json").write_text("{}")
    with pytest.raises(UserError, match=r"is a folder, not a best_gamma.json file \(it holds one: pass that file\)"):
        GammaSpec.from_file(f"{folder}#box_share")


# --- the script, end to end -------------------------------------------------------------------------------
CONVS, LINS, SCHED = ["0", "10"], ["0", "1"], ["linear:1:0"]


def sweep(trained, out, *flags):
    return run_script_inprocess(
        "sweep_gamma", "--checkpoint-path", trained["checkpoint"], "--dataset-root", trained["dataset_root"],
        "--num-images", 8, "--batch-size", 4, "--num-workers", 0, "--device", "cpu", "--perturb-steps", 3,
        "--conv-gammas", ",".join(CONVS), "--lin-gammas", ",".join(LINS), "--schedules", ",".join(SCHED),
        "--output-dir", out, *flags)


@pytest.fixture(scope="module")
def sweep_run(trained_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    code, stdout, stderr = sweep(trained_tiny, out)
    assert code == 0, stderr[-3000:]
    return {"out": out, "stdout": stdout, "doc": json.loads((out / "best_gamma.json").read_text())}


@pytest.mark.slow
def test_two_processes_match_one(sweep_run, trained_tiny, tmp_path):
    """torchrun shards the images over the ranks; rank 0 merges: the same cells, the same recommendation."""
    from conftest import run_torchrun

    proc = run_torchrun("sweep_gamma", "--checkpoint-path", trained_tiny["checkpoint"], "--dataset-root",
                        trained_tiny["dataset_root"], "--num-images", 8, "--batch-size", 4, "--num-workers", 0,
                        "--device", "cpu", "--perturb-steps", 3, "--conv-gammas", ",".join(CONVS), "--lin-gammas",
                        ",".join(LINS), "--schedules", ",".join(SCHED), "--output-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cpu x2" in proc.stdout and not (tmp_path / "RUN_INCOMPLETE.txt").exists()
    read = lambda out: {c["method"]: c for c in csv.DictReader(open(out / "cells.csv", newline=""))}  # noqa: E731
    one, two = read(sweep_run["out"]), read(tmp_path)
    assert list(one) == list(two)
    for name, cell in one.items():
        for metric in METRICS:
            assert float(two[name][metric]) == pytest.approx(float(cell[metric]), abs=1e-5, nan_ok=True), metric
    doc = json.loads((tmp_path / "best_gamma.json").read_text())
    assert doc["recommended"]["method"] == sweep_run["doc"]["recommended"]["method"] and doc["n_images"] == 8


def test_sweep_writes_surfaces_csv_and_best_gamma(sweep_run, trained_tiny):
    out, doc = sweep_run["out"], sweep_run["doc"]
    for metric in METRICS:
        assert (out / f"surface_{metric}.png").stat().st_size > 0
    assert (out / "pareto.png").stat().st_size > 0
    with open(out / "cells.csv", newline="") as fh:
        cells = list(csv.DictReader(fh))
    assert [c["method"] for c in cells] == ["gamma:0:0", "gamma:10:0", "gamma:0:1", "gamma:10:1",
                                            "gamma:0:linear:1:0", "gamma:10:linear:1:0"]
    assert all(int(c["n_images"]) == 8 for c in cells)
    assert sum(c["pareto"] == "True" for c in cells) == len(doc["pareto"]) >= 1
    rec = doc["recommended"]
    by_name = {c["method"]: c for c in cells}
    passing = [c["method"] for c in cells if c["class_check"] == "pass"]
    # 8 images: the class check's intervals are wide; the rule says whether any cell passed
    assert rec["method"] in doc["pareto"] and rec["sanity"]["passes_class_check"] == bool(passing)
    assert rec["rule"] == S.rule_text(doc["firmness"]["table"][0]["rule"], bool(passing))
    assert rec["sanity"]["class_verdict"] == by_name[rec["method"]]["class_check"]
    assert sorted(doc["class_check_failed"]) == sorted(c["method"] for c in cells if c["class_check"] == "fail")
    candidates = [c for c in cells if c["method"] in (passing or by_name)]
    for metric, best in doc["best"].items():  # the best per metric is the extreme of the candidates
        col = [float(c[metric]) for c in candidates if math.isfinite(float(c[metric]))]
        assert float(by_name[best["method"]][metric]) == (max if METRICS[metric].higher else min)(col)
    assert doc["n_images"] == 8 and doc["presets"]["baseline"]["in_grid"]
    assert doc["presets"]["aggressive"]["method"] == "gamma:10:1" and doc["presets"]["aggressive"]["in_grid"]
    assert [t["rule"] for t in doc["firmness"]["table"]] == ["5 × chance |ρ| = 0.576", "|ρ| < 0.5", "|ρ| < 0.6",
                                                             "|ρ| < 0.7", "paired: not above input_x_gradient or "
                                                             "gradient"]
    assert doc["class_check"]["patches"] == 49 and set(doc["class_check"]["baselines"]) == {"input_x_gradient",
                                                                                            "gradient"}
    from vitlrp.identity import file_sha256

    assert doc["checkpoint_sha256"] == file_sha256(trained_tiny["checkpoint"])
    with open(out / "per_image.csv", newline="") as fh:
        per_image = list(csv.DictReader(fh))
    assert {r["method"] for r in per_image} == set(by_name) | {"input_x_gradient", "gradient"}
    assert all(0 <= float(r["class_abs_rho"]) <= 1 for r in per_image)
    stdout = sweep_run["stdout"]
    assert f"Recommended γ: {rec['method']}" in stdout and doc["firmness"]["line"] in stdout
    assert "Maps: " in stdout and "metrics: " in stdout


def test_a_gamma_file_that_failed_the_class_check_is_refused_unless_forced(sweep_run, trained_tiny, tmp_path):
    """The sweep's file with its recommendation marked as failing the class check (as a sweep where no cell passes
    writes it) is refused in one line by every script that reads it, sanity_checks.py included, until
    --gamma-file-force true; a passing one is refused for another checkpoint."""
    doc = json.loads(json.dumps(sweep_run["doc"]))
    doc["recommended"]["sanity"]["passes_class_check"] = False
    path = tmp_path / "best_gamma.json"
    path.write_text(json.dumps(doc))
    common = ("--checkpoint-path", trained_tiny["checkpoint"], "--dataset-root", trained_tiny["dataset_root"],
              "--num-workers", 0, "--device", "cpu", "--gamma-file", path)
    code, _, err = run_script_inprocess("test_vit_forward", *common, "--output-dir", tmp_path / "h")
    assert code == 2 and len(error_lines(err)) == 1 and "did not pass the sweep's class check" in error_lines(err)[0]
    assert "set GAMMA_FILE_FORCE to true" in error_lines(err)[0] and not (tmp_path / "h").exists()
    flags = ("--num-images", 2, "--methods", "input_x_gradient", "--draws", 0, "--noise-samples", 0,
             "--figure-images", 0, "--output-dir", tmp_path / "s")
    code, _, err = run_script_inprocess("sanity_checks", *common, *flags)
    assert code == 2 and "did not pass the sweep's class check" in error_lines(err)[0]
    code, stdout, err = run_script_inprocess("sanity_checks", *common, *flags, "--gamma-file-force", "true")
    assert code == 0, err[-2000:]
    assert f"GAMMA_FILE {path}: its γ is {doc['recommended']['method']}, added to METHODS" in stdout
    checked = json.loads((tmp_path / "s" / "summary.json").read_text())["verdicts"]
    assert set(checked) == {"input_x_gradient", doc["recommended"]["method"]}
    doc["recommended"]["sanity"]["passes_class_check"] = True
    path.write_text(json.dumps(doc))
    code, _, err = run_script_inprocess("evaluate_lrp", "--checkpoint-path", trained_tiny["last"], *common[2:],
                                        "--output-dir", tmp_path / "e")
    assert code == 2 and "was made for another checkpoint" in error_lines(err)[0] and not (tmp_path / "e").exists()


def test_sweep_cells_equal_evaluate_lrp_on_the_same_images(sweep_run, trained_tiny, tmp_path):
    """best_gamma.json into evaluate_lrp.py: its recommended cell scores the same as in the sweep."""
    rec = sweep_run["doc"]["recommended"]["method"]
    code, _, err = run_script_inprocess(
        "evaluate_lrp", "--checkpoint-path", trained_tiny["checkpoint"], "--dataset-root", trained_tiny["dataset_root"],
        "--num-images", 8, "--batch-size", 4, "--num-workers", 0, "--device", "cpu", "--perturb-steps", 3,
        "--methods", "gamma:0:linear:1:0", "--gamma-file", sweep_run["out"] / "best_gamma.json", "--gamma-file-force",
        "true", "--reference", "", "--output-dir", tmp_path)
    assert code == 0, err[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())["methods"]
    with open(sweep_run["out"] / "cells.csv", newline="") as fh:
        cells = {c["method"]: c for c in csv.DictReader(fh)}
    assert set(summary) == {"gamma:0:linear:1:0", rec} or (rec == "gamma:0:linear:1:0" and len(summary) == 1)
    for method in summary:
        for metric in METRICS:
            a, b = summary[method][metric]["mean"], float(cells[method][metric])
            assert a == pytest.approx(b, abs=1e-5) or (math.isnan(a) and math.isnan(b)), (method, metric)


def test_best_gamma_file_drives_the_heatmap_script(sweep_run, trained_tiny, tmp_path):
    doc = sweep_run["doc"]
    for pick, entry in (("", doc["recommended"]), ("#box_share", doc["best"]["box_share"])):
        out = tmp_path / (pick.strip("#") or "rec")
        code, stdout, err = run_script_inprocess(
            "test_vit_forward", "--checkpoint-path", trained_tiny["checkpoint"], "--dataset-root",
            trained_tiny["dataset_root"], "--num-samples", 2, "--num-workers", 0, "--device", "cpu",
            "--gamma-file", f"{sweep_run['out'] / 'best_gamma.json'}{pick}", "--gamma-file-force", "true",
            "--output-dir", out)
        assert code == 0, err[-3000:]
        config = json.loads((out / "config.json").read_text())
        assert (config["conv_gamma"], config["lin_gamma"]) == (entry["conv_gamma"], entry["lin_gamma"])
        assert f"Conv2d gamma={float(entry['conv_gamma'])}, Linear gamma={entry['lin_gamma']} (from " in stdout
        # the record says where the γ came from, and no preset's name beside the file's γ
        results = json.loads((out / "lrp_results.json").read_text())
        assert all(r["gamma_source"].startswith("GAMMA_FILE ") and r["preset"] == "" for r in results)
        assert config["gamma_source"] == results[0]["gamma_source"]


def test_heatmap_script_takes_a_schedule(trained_tiny, tmp_path):
    code, stdout, err = run_script_inprocess(
        "test_vit_forward", "--checkpoint-path", trained_tiny["checkpoint"], "--dataset-root",
        trained_tiny["dataset_root"], "--num-samples", 1, "--num-workers", 0, "--device", "cpu",
        "--lin-gamma-schedule", "linear:0.5:0", "--output-dir", tmp_path)
    assert code == 0, err[-3000:]
    entry = json.loads((tmp_path / "lrp_results.json").read_text())[0]
    assert entry["gamma_params"] == {"conv_gamma": 1.0, "lin_gamma": "linear:0.5:0"}
    assert "linear:0.5:0 per block: 0.5/0.333/0.167/0, head 0" in stdout  # vit_tiny has 4 blocks


@pytest.mark.parametrize("flags,words", [
    (("--schedules", "linear:1"), "SCHEDULES entry 'linear:1' is not a γ schedule"),
    (("--schedules", "0.5"), "is a constant: put constants in LIN_GAMMAS"),
    (("--conv-gammas", "0,0"), "CONV_GAMMAS lists a value twice"),
    (("--lin-gammas", "-1"), "LIN_GAMMAS value must be a finite number >= 0"),
])
def test_bad_grids_are_one_error_line(untrained_tiny, tmp_path, flags, words):
    code, _, err = sweep(untrained_tiny, tmp_path / "o", *flags)
    assert code == 2 and len(error_lines(err)) == 1 and words in error_lines(err)[0], err[-500:]
    assert not (tmp_path / "o" / "best_gamma.json").exists()


@pytest.mark.parametrize("script,flags,words", [
    ("evaluate_lrp", ("--methods", "gamma:1:0.5/0.2", "--num-images", 4, "--reference", ""),
     "method 'gamma:1:0.5/0.2': its Linear γ lists 2 values"),
    ("test_vit_forward", ("--lin-gamma-schedule", "0.5/0.2"), "LIN_GAMMA_SCHEDULE lists 2 values"),
    ("test_vit_forward", ("--compare-methods", "gamma:1:0.5/0.2/0.1"), "its Linear γ lists 3 values"),
    ("sweep_gamma", ("--schedules", "0.5/0.2"), "SCHEDULES entry '0.5/0.2' lists 2 values"),
])
def test_a_schedule_of_the_wrong_length_stops_before_any_output(untrained_tiny, tmp_path, script, flags, words):
    """vit_tiny has 4 encoder blocks: a list of 2 or 3 values is refused once the model is loaded, before the
    output folder exists (not as an incomplete folder after the first batch)."""
    code, _, err = run_script_inprocess(
        script, "--checkpoint-path", untrained_tiny["checkpoint"], "--dataset-root", untrained_tiny["dataset_root"],
        "--num-workers", 0, "--device", "cpu", *flags, "--output-dir", tmp_path / "o")
    assert code == 2 and words in error_lines(err)[0] and "4 encoder blocks" in error_lines(err)[0], err[-500:]
    assert not (tmp_path / "o").exists()


def test_missing_gamma_file_is_one_error_line(untrained_tiny, tmp_path):
    code, _, err = run_script_inprocess(
        "test_vit_forward", "--checkpoint-path", untrained_tiny["checkpoint"], "--dataset-root",
        untrained_tiny["dataset_root"], "--gamma-file", tmp_path / "nope.json", "--output-dir", tmp_path / "o")
    assert code == 2 and "run `python scripts/sweep_gamma.py` first" in error_lines(err)[0]

"""scripts/benchmark.py runs on the CPU at small sizes and writes every row to its JSON."""
import json
import math

from conftest import run_script_inprocess

from vitlrp import methods

# what the speed issue asks the benchmark to measure, and every other registered method (as the registry lists them)
EXPECTED_ROWS = ["one_by_one", "lrp_zennit_fp32", "lrp_zennit_bf16", "lrp_fused_fp32", "lrp_fused_bf16",
                 "input_x_gradient", *[n for n in methods.names() if n not in ("gamma", "input_x_gradient", "random")],
                 "explain_jpeg", "train_fp32", "train_bf16", "train_bf16_compile", "train_jpeg", "gamma_sweep",
                 "class_check"]


def test_benchmark_runs_every_row_on_the_cpu(tmp_path):
    code, out, err = run_script_inprocess(
        "benchmark", "--device", "cpu", "--image-size", "32", "--lrp-batch", "2", "--train-batch", "4",
        "--one-by-one-images", "1", "--jpeg-images", "4", "--num-workers", "0", "--output-dir", tmp_path)
    assert code == 0, err[-3000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["device"] == "cpu" and report["torch"] and report["model"] == "vit_tiny"
    rows = report["rows"]
    assert list(rows) == EXPECTED_ROWS
    assert "skipped" in rows["train_bf16_compile"]  # torch.compile only on CUDA unless asked
    timed = {k: r for k, r in rows.items() if "skipped" not in r}
    for name, r in timed.items():
        assert r["images_per_s"] > 0 and math.isfinite(r["images_per_s"]), name
        assert r["x_one_by_one"] == r["images_per_s"] / rows["one_by_one"]["images_per_s"]
        assert r["x_input_x_gradient"] == r["images_per_s"] / rows["input_x_gradient"]["images_per_s"]
    # fidelity at every preset, at γ = 0 on one layer alone and at a γ barely above 0, not only where it is timed
    settings = ["baseline", "conservative", "balanced", "aggressive", "very_aggressive", "gamma:0:0.5",
                "gamma:1:linear:0.5:0", "gamma:1:0.001"]
    for name, bound in (("lrp_zennit_fp32", 0.9999), ("lrp_fused_fp32", 0.9999),  # the same maps
                        ("lrp_zennit_bf16", 0.98), ("lrp_fused_bf16", 0.98)):  # bf16's rounding (test_explain.py)
        cosines = rows[name]["cosine_vs_fp32_zennit"]
        assert list(cosines) == settings and min(cosines.values()) > bound, (name, cosines)
        assert rows[name]["min_cosine_vs_fp32_zennit"] == min(cosines.values())
        assert cosines[rows[name]["lowest_cosine_at"]] == min(cosines.values())
    assert rows["explain_jpeg"]["cub_test_split_seconds"] > 0
    sweep = rows["gamma_sweep"]  # 49 γ cells vs one method: both ratios measured (how fast is the benchmark's job)
    assert sweep["cells"] == 49 and sweep["ratio_maps"] > 0 and sweep["ratio_maps_and_metrics"] > 0
    check = rows["class_check"]  # the explained class, the runner-up and 10 seeded ones, from one forward per method
    assert check["classes"] == 12 and check["bound"] == 0.8 * 12
    assert set(check["methods"]) == {"balanced", "input_x_gradient", "gradient"}
    assert all(v["ratio"] > 0 and v["rounds"] == 3 and v["class_check_s"] > 0 for v in check["methods"].values())
    ratio = check["methods"]["balanced"]["ratio"]
    assert f"class_check: 12 classes from one shared forward cost balanced {ratio:.1f}x" in out
    # the fused rule against Input×Gradient, as a percentage, beside the ceiling from the model's FLOPs
    ceiling, versus = report["ceiling"], report["fused_vs_input_x_gradient"]
    assert ceiling["gamma_layers"] == 10 and 0 < ceiling["ratio"] < 1  # conv, 4 x (fc1, fc2), head
    assert ceiling["fused_gamma_lrp_flops"] > ceiling["input_x_gradient_flops"] > ceiling["forward_flops"] > 0
    assert versus["ceiling_percent"] == 100 * ceiling["ratio"]
    assert versus["fp32_percent"] == 100 * rows["lrp_fused_fp32"]["x_input_x_gradient"]
    assert versus["interleaved_pairs"] == 3 and versus["fp32_percent_interleaved"] > 0  # steadier on a busy machine
    assert (f"fused γ-LRP vs Input×Gradient, throughput: {versus['fp32_percent']:.0f}% fp32, "
            f"{versus['bf16_percent']:.0f}% bf16 (rows); {versus['fp32_percent_interleaved']:.0f}% fp32 (median of 3 "
            "interleaved pairs of calls)") in out
    assert f"ceiling for this model: {versus['ceiling_percent']:.0f}% (matrix products per image" in out
    for name in EXPECTED_ROWS:
        assert name in out  # the printed table
    assert "x 1-by-1" in out and "x IxG" in out


def test_benchmark_rejects_an_unknown_row(tmp_path):
    code, _, err = run_script_inprocess("benchmark", "--device", "cpu", "--run", "nope", "--output-dir", tmp_path)
    assert code == 2 and "unknown RUN row(s) nope" in err

"""Which γ, answered by search: every Conv2d γ × Linear γ cell (and per-depth Linear γ schedules) scored with every
metric of evaluate_lrp.py, as surfaces, a Pareto front, a CSV and best_gamma.json (which the other scripts read).

One forward per batch serves every cell (the rule acts only in the backward; IMPL=fused).
Several GPUs: torchrun --nproc_per_node=N scripts/sweep_gamma.py (each rank sweeps a shard; rank 0 merges).
"""
# --- configuration (each constant is also a flag: --num-images 50, --conv-gammas 0,1,10, ...) ---
CHECKPOINT_PATH = "checkpoints/vit_cub_best.pt"  # written by scripts/train_vit_cub.py
DATASET_ROOT = "dataset/raw/CUB_200_2011"  # folder holding images.txt, bounding_boxes.txt and parts/
SPLIT = "test"  # train, test or all
NUM_IMAGES = 200  # images drawn with random.seed(SEED); 0 = the whole split
SEED = 0  # which images (the same draw as evaluate_lrp.py with the same seed), and the per-image tie-breaks
CONV_GAMMAS = [0.0, 0.1, 0.25, 0.5, 1.0, 10.0, 100.0]  # γ of the patch embedding (columns of the surfaces)
LIN_GAMMAS = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0]  # constant γ of every Linear layer (rows)
SCHEDULES = ["linear:0.5:0", "linear:0:0.5", "geometric:1:0.01", "geometric:0.01:1"]  # per-block Linear γ (rows)
TARGET = "pred"  # explain the predicted class (pred) or the true class (label)
OTHER_CLASSES = 10  # class check: random other classes beside the runner-up (all others when the model has <= 20)
PERTURB_STEPS = 10  # MoRF/LeRF curve points (patches removed in this many equal steps)
PART_TOLERANCE_PX = 15  # part pointing game radius, in model-input pixels
ROWS_PER_PASS = 64  # at most this many perturbed images per forward
BATCH_SIZE = 32  # images explained at once (every cell shares their forward)
DTYPE = "fp32"  # fp32 or bf16 (LRP on a pure-bf16 model copy; perturbation forwards in bf16 too)
IMPL = "fused"  # fused (one forward for all cells) or zennit (a forward per cell; same maps)
DEVICE = "auto"  # auto, cuda, cpu
NUM_WORKERS = 4  # JPEG decoding processes
OUTPUT_DIR = "results/sweep"  # cells.csv, per_image.csv, best_gamma.json, surface_<metric>.png, pareto.png
# -------------------------------------------------------------------------------------------------
import time
from pathlib import Path

from tqdm import tqdm

from vitlrp import cli, plots
from vitlrp import evaluation as E
from vitlrp import sweep as S
from vitlrp.checks import check_perturb_steps_fit, check_run_options, check_schedules_fit, check_scoring_options
from vitlrp.explainer import Explainer
from vitlrp.families import family_of
from vitlrp.fileio import write_csv, write_json
from vitlrp.gamma import PRESETS, GammaSpec
from vitlrp.identity import file_sha256
from vitlrp.inputs import load_model_and_split, loader, sample_indices
from vitlrp.methods import MethodSettings
from vitlrp.metrics import METRICS
from vitlrp.runtime import DTYPES
from vitlrp.sanity import verdicts as V
from vitlrp.sanity.draws import compared_classes
from vitlrp.scoring import ScoreSettings, ScoringRun, model_in, score_batches
from vitlrp.step import Step, run_step

# every name this script writes into OUTPUT_DIR (a finished run removes older runs' files of these names only)
OUTPUT_NAMES = ("cells.csv", "per_image.csv", "config.json", "best_gamma.json", "pareto.png", "surface_*.png")


def check_config(cfg):
    cells, rows = S.grid(cfg.CONV_GAMMAS, cfg.LIN_GAMMAS, cfg.SCHEDULES)
    check_run_options(cfg)
    check_scoring_options(cfg)
    return cells, rows


def main(cfg):
    cells, rows_lin = check_config(cfg)
    # no best_gamma.json of an older run while this one works
    step = Step(cfg.DEVICE, cfg.OUTPUT_DIR, "OUTPUT_DIR", OUTPUT_NAMES, ("best_gamma.json",))
    return run_step(step, lambda state: prepare(cfg, state, rows_lin), lambda state: sweep(cfg, state, cells),
                    lambda state, parts: finish(cfg, state, cells, rows_lin, parts))


def prepare(cfg, state, rows_lin):
    """The model, the split and the sampled images, checked before the folder is taken."""
    ckpt, model, dataset = load_model_and_split(cfg.CHECKPOINT_PATH, cfg.DATASET_ROOT, cfg.SPLIT, state.device,
                                                annotations=True)
    indices = sample_indices(len(dataset), cfg.NUM_IMAGES, cfg.SEED, split=cfg.SPLIT)
    check_perturb_steps_fit(cfg.PERTURB_STEPS, model)
    check_schedules_fit([(f"SCHEDULES entry {lin!r}", lin) for lin in rows_lin], model)
    return {"model": model, "dataset": dataset, "indices": indices}


def finish(cfg, state, cells, rows_lin, parts):
    """Merge the ranks' rows, conclude, write and report; the exit status (1 when images failed or the sweep could
    recommend nothing)."""
    names = [c.name for c in cells]
    rows, _ = E.merge_ranks([(r, {n: {} for n in names}) for r, _, _ in parts], names)
    baselines = [r for _, _, part in parts for r in part]
    seconds = {k: sum(s[k] for _, s, _ in parts) for k in parts[0][1]}
    found = S.conclude(rows, names, cells, len(state.data["indices"]), {p: GammaSpec.preset(p) for p in PRESETS},
                       baselines, V.patch_count(state.data["model"]))
    write_outputs(cfg, state, cells, rows_lin, rows + baselines, found, seconds)
    print_report(cfg, state.run.path, cells, found, seconds)
    return 1 if found["failed"] or not found["recommended"] else 0


def sweep(cfg, state, cells):
    """Every cell's rows on this rank's shard (with their class-check values), the gradient baselines' class-check
    rows, and the seconds spent on maps and metrics."""
    model, dataset, indices = (state.data[k] for k in ("model", "dataset", "indices"))
    dist, device = state.dist, state.device
    names = [c.name for c in cells]
    if dist.is_main:
        print(f"Sweeping {len(cfg.CONV_GAMMAS)} conv γ × {len(cells) // len(cfg.CONV_GAMMAS)} Linear γ settings = "
              f"{len(cells)} cells on {len(indices)} {cfg.SPLIT} images of {cfg.DATASET_ROOT} "
              f"({device}{f' x{dist.world_size}' if dist.enabled else ''}, {cfg.DTYPE}, {cfg.IMPL})")
    dtype = DTYPES[cfg.DTYPE]
    plain, forward = model_in(model, dtype, device)
    patch = family_of(model).patch_size(model)
    settings = ScoreSettings(patch, cfg.PERTURB_STEPS, cfg.PART_TOLERANCE_PX, seed=cfg.SEED,
                             rows_per_pass=cfg.ROWS_PER_PASS)
    shard, seconds, held, baselines = state.shard(indices), {"maps": 0.0, "metrics": 0.0}, {}, []
    with Explainer(plain, cells[0], MethodSettings(dtype, cfg.IMPL)) as explainer, \
            tqdm(total=len(shard), desc="sweep", unit="img", disable=not dist.is_main) as bar:
        def explain(s):
            t0 = time.perf_counter()
            others = compared_classes(s.batch.logits, s.target, s.ids, cfg.SEED, cfg.OTHER_CLASSES)
            maps, held["cells"] = S.explain_cells(explainer, s, cells, others, patch)
            held["baselines"] = S.baseline_values(plain, s, others, patch, MethodSettings(dtype))
            seconds["maps"] += time.perf_counter() - t0
            return maps

        def add_class_values(s, maps, scored):
            for name, values in held["cells"].items():
                for k, row in enumerate(scored[name]):
                    row.update({col: float(values[level][k]) for level, col in S.CLASS_COLUMNS.items()})
            baselines.extend({"method": b, "sample_idx": i, "error": "", **{col: float(values[level][k]) for level,
                              col in S.CLASS_COLUMNS.items()}} for b, values in held["baselines"].items()
                             for k, i in enumerate(s.ids))

        t_all = time.perf_counter()
        rows, _ = score_batches(loader(dataset, shard, cfg.BATCH_SIZE, cfg.NUM_WORKERS, device),
                                ScoringRun(forward, cfg.TARGET, device, settings, METRICS), explain, names,
                                extra=add_class_values, progress=bar)
        seconds["metrics"] = time.perf_counter() - t_all - seconds["maps"]  # scoring and decoding
    return rows, seconds, baselines


def write_outputs(cfg, state, cells, rows_lin, rows, found, seconds):
    run, summary, doc = state.run, found["summary"], found["doc"]
    out = run.path
    write_csv(out / "cells.csv", S.cell_rows(summary, cells, found["front"], found["sums"], found["verdicts"]),
              S.CELL_FIELDS)
    write_csv(out / "per_image.csv", rows, E.ROW_FIELDS + list(S.CLASS_COLUMNS.values()))
    convs = list(dict.fromkeys(c.conv for c in cells))
    where = {GammaSpec(c, lin).name: (r, k) for r, lin in enumerate(rows_lin) for k, c in enumerate(convs)}
    marks = {p: where[n] for p, n in found["presets"].items() if n in where}
    rec = (doc["recommended"] or {}).get("method")
    for metric in METRICS:
        best = doc["best"].get(metric, {}).get("method", rec)
        plots.gamma_surface(S.surface(summary, convs, rows_lin, metric), S.surface(summary, convs, rows_lin, metric,
                            "ci95"), convs, rows_lin, metric, where.get(best), marks, out / f"surface_{metric}.png")
    points = {n: tuple(summary[n][m]["mean"] for m in S.OBJECTIVES) for n in summary}
    plots.pareto_front(points, found["front"], rec, found["presets"], out / "pareto.png")
    write_json(out / "config.json", {**cli.config_dict(cfg, identity=True), "device": str(state.device),
                                     "cells": len(cells), "seconds": seconds})
    write_json(out / "best_gamma.json", {
        **doc, "n_images": found["n_ok"], "n_scored": found["n_scored"], "n_failed": len(found["failed"]),
        "failed_cells": found["failed_cells"], "split": cfg.SPLIT,
        "checkpoint": str(Path(cfg.CHECKPOINT_PATH).resolve()), "checkpoint_sha256": file_sha256(cfg.CHECKPOINT_PATH),
        "dataset_root": str(cfg.DATASET_ROOT), "target": cfg.TARGET, "config": cli.config_dict(cfg)})
    run.finish(["cells.csv", "per_image.csv", "config.json", "best_gamma.json", "pareto.png"]
               + [f"surface_{metric}.png" for metric in METRICS])


def print_report(cfg, out, cells, found, seconds):
    summary, doc, front, sums = found["summary"], found["doc"], found["front"], found["sums"]
    rec = found["recommended"]
    print()
    print(f"Maps: {seconds['maps']:.1f} s for {len(cells)} cells and the class check; metrics: "
          f"{seconds['metrics']:.1f} s")
    if not rec:
        for line in S.failure_lines(found):
            print(line)
        print(f"No recommendation: {found['why']}")
        print(f"Output directory: {out}")
        return
    for metric, b in doc["best"].items():
        print(E.best_line(metric, b["method"], b["mean"]) + f"  ± {b['ci95']:.3f}")
    print(f"Pareto front ({', '.join(S.OBJECTIVES)}): {len(front)} of {len(cells)} cells")
    print(f"{'':<16}{'cell':<22}" + "".join(f"{m:>17}" for m in S.OBJECTIVES) + f"{'ranks':>6}  front  class |ρ| px")
    verdicts = found["verdicts"]["cells"]
    for label, name in [("recommended", rec), *found["presets"].items()]:
        if name in summary and name not in found["failed_cells"]:
            vals = "".join(f"{summary[name][m]['mean']:>10.3f} ±{summary[name][m]['ci95']:<5.3f}" for m in S.OBJECTIVES)
            v = verdicts[name]
            print(f"{label:<16}{name:<22}{vals}{sums.get(name, '-'):>6}  {'yes' if name in front else 'no':<5}  "
                  f"{v['word']:<9} {v['patch'][0]:.2f} {v['pixel'][0]:.2f}")
    print(f"Recommended γ: {rec} (rule: {found['rule']})")
    print(found["firmness"]["line"])
    print("Note: the Conv2d γ only moves relevance inside each patch, so the patch-level metrics hardly tell Conv2d γ "
          "values apart; the class check judges it at pixel level too (class |ρ| px)")
    if found["passed"]:
        print(f"Use it: python scripts/test_vit_forward.py --gamma-file {out / 'best_gamma.json'}")
    for line in S.failure_lines(found):
        print(line)
    print(f"Output directory: {out}")


if __name__ == "__main__":
    cli.run(main, globals())

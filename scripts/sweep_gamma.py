"""Which γ, answered by search: every Conv2d γ × Linear γ cell (and per-depth Linear γ schedules) scored with every
metric of evaluate_lrp.py, as surfaces, a Pareto front, a CSV and best_gamma.json (which the other scripts read).

One forward per batch serves every cell (the rule acts only in the backward; IMPL=fused).
"""
# --- configuration (each constant is also a flag: --num-images 50, --conv-gammas 0,1,10, ...) ---
CHECKPOINT_PATH = "checkpoints/vit_cub_best.pt"  # written by scripts/train_vit_cub.py
DATASET_ROOT = "dataset/raw/CUB_200_2011"  # folder holding images.txt, bounding_boxes.txt and parts/
SPLIT = "test"  # train, test or all
NUM_IMAGES = 200  # images drawn with random.seed(SEED); 0 = the whole split
SEED = 0  # which images (the same draw as evaluate_lrp.py with the same seed)
CONV_GAMMAS = [0.0, 0.1, 0.25, 0.5, 1.0, 10.0, 100.0]  # γ of the patch embedding (columns of the surfaces)
LIN_GAMMAS = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0]  # constant γ of every Linear layer (rows)
SCHEDULES = ["linear:0.5:0", "linear:0:0.5", "geometric:1:0.01", "geometric:0.01:1"]  # per-block Linear γ (rows)
TARGET = "pred"  # explain the predicted class (pred) or the true class (label)
PERTURB_STEPS = 10  # MoRF/LeRF curve points (patches removed in this many equal steps)
PART_TOLERANCE_PX = 15  # part pointing game radius, in model-input pixels
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
from vitlrp.errors import UserError
from vitlrp.explain import DTYPES, PRESETS, Explainer
from vitlrp.fileio import write_csv, write_json
from vitlrp.metrics import METRICS
from vitlrp.pipeline import (
    ScoringBatch,
    check_perturb_steps_fit,
    check_run_options,
    check_schedules_fit,
    check_scoring_options,
    failed_rows,
    load_model_and_split,
    loader,
    model_in,
    sample_indices,
)
from vitlrp.runfolder import RunFolder
from vitlrp.runtime import resolve_device

# every name this script writes into OUTPUT_DIR (a finished run removes older runs' files of these names only)
OUTPUT_NAMES = ("cells.csv", "per_image.csv", "config.json", "best_gamma.json", "pareto.png", "surface_*.png")


def check_config(cfg):
    cells, rows = S.grid(cfg.CONV_GAMMAS, cfg.LIN_GAMMAS, cfg.SCHEDULES)
    check_run_options(cfg)
    check_scoring_options(cfg)
    return cells, rows


def main(cfg):
    cells, rows_lin = check_config(cfg)
    device = resolve_device(cfg.DEVICE)
    ckpt, model, dataset = load_model_and_split(cfg.CHECKPOINT_PATH, cfg.DATASET_ROOT, cfg.SPLIT, device,
                                                annotations=True)
    indices = sample_indices(len(dataset), cfg.NUM_IMAGES, cfg.SEED, "NUM_IMAGES", cfg.SPLIT)
    check_perturb_steps_fit(cfg.PERTURB_STEPS, model)
    check_schedules_fit([(f"SCHEDULES entry {lin!r}", lin) for lin in rows_lin], model)
    # the folder is complete again only when this run ends: no best_gamma.json of an older run meanwhile
    with RunFolder(cfg.OUTPUT_DIR, "OUTPUT_DIR", OUTPUT_NAMES, clear_first=("best_gamma.json",)) as run:
        return sweep(cfg, run, model, dataset, indices, cells, rows_lin, device)


def sweep(cfg, run, model, dataset, indices, cells, rows_lin, device):
    out = run.path
    names = [S.cell_name(c, lin) for c, lin in cells]
    print(f"Sweeping {len(cfg.CONV_GAMMAS)} conv γ × {len(rows_lin)} Linear γ settings = {len(cells)} cells on "
          f"{len(indices)} {cfg.SPLIT} images of {cfg.DATASET_ROOT} ({device}, {cfg.DTYPE}, {cfg.IMPL})")
    dtype, patch = DTYPES[cfg.DTYPE], model.patch_size
    plain, forward = model_in(model, dtype, device)

    rows, seconds = [], {"maps": 0.0, "metrics": 0.0}
    bar = tqdm(total=len(indices) * len(cells), desc="cells x images", unit="map")
    with Explainer(plain, dtype=dtype, impl=cfg.IMPL) as explainer:
        for batch in loader(dataset, indices, cfg.BATCH_SIZE, cfg.NUM_WORKERS, device):
            rows += failed_rows(batch, names)
            b = ScoringBatch.of(batch, forward, cfg.TARGET, device)
            if b.ok:
                t0 = time.perf_counter()
                m_logits, maps = explainer.explain_many(b.images, b.target, cells)
                t1 = time.perf_counter()
                for name, relevance in zip(names, maps):
                    scored, _ = E.score_batch(relevance, m_logits, b.target, batch, b.ok, b.prob, b.images, patch,
                                              cfg.PERTURB_STEPS, cfg.PART_TOLERANCE_PX, b.start, b.end)
                    rows += [{"method": name, **r} for r in scored]
                    bar.update(len(b.ok))
                seconds["maps"] += t1 - t0
                seconds["metrics"] += time.perf_counter() - t1
            bar.update((len(batch["error"]) - len(b.ok)) * len(cells))
    bar.close()

    summary = E.summarize(rows, names)
    # an unreadable image fails every cell, a non-finite map only its cell: count images, not rows
    failed = len({r["sample_idx"] for r in rows if r["error"]})
    if failed == len(indices):
        raise UserError("no image could be read: nothing to score (see the errors above)")
    front, sums = S.pareto_front(summary), S.rank_sums(summary)
    marks = {p: S.cell_name(*g) for p, g in PRESETS.items()}
    doc = S.best_gamma_doc(summary, cells, PRESETS)
    rec = doc["recommended"]["method"]

    write_csv(out / "cells.csv", S.cell_rows(summary, cells, front, sums), S.CELL_FIELDS)
    write_csv(out / "per_image.csv", rows, E.ROW_FIELDS)
    convs = [c for c, _ in cells[:len(cfg.CONV_GAMMAS)]]
    where = {S.cell_name(c, lin): (r, k) for r, lin in enumerate(rows_lin) for k, c in enumerate(convs)}
    for metric in METRICS:
        best = doc["best"].get(metric, {}).get("method", rec)
        plots.gamma_surface(S.surface(summary, convs, rows_lin, metric), S.surface(summary, convs, rows_lin, metric,
                            "ci95"), convs, rows_lin, metric, where[best],
                            {p: where[n] for p, n in marks.items() if n in where}, out / f"surface_{metric}.png")
    points = {n: tuple(summary[n][m]["mean"] for m in S.OBJECTIVES) for n in names}
    plots.pareto_front(points, front, rec, marks, out / "pareto.png")
    n_ok = len(indices) - failed
    write_json(out / "config.json", {**cli.config_dict(cfg), "device": str(device), "cells": len(cells),
                                     "seconds": seconds})
    write_json(out / "best_gamma.json", {
        **doc, "n_images": n_ok, "n_failed": failed, "split": cfg.SPLIT,
        "checkpoint": str(Path(cfg.CHECKPOINT_PATH).resolve()),
        "dataset_root": str(cfg.DATASET_ROOT), "target": cfg.TARGET, "config": cli.config_dict(cfg)})
    run.finish(["cells.csv", "per_image.csv", "config.json", "best_gamma.json", "pareto.png"]
               + [f"surface_{metric}.png" for metric in METRICS])

    print()
    print(f"Maps: {seconds['maps']:.1f} s for {len(cells)} cells; metrics: {seconds['metrics']:.1f} s")
    for metric, b in doc["best"].items():
        print(f"best {metric:<16} {b['method']:<26} {b['mean']:.3f} ± {b['ci95']:.3f}  "
              f"({'higher' if METRICS[metric] else 'lower'} is better)")
    print(f"Pareto front ({', '.join(S.OBJECTIVES)}): {len(front)} of {len(cells)} cells")
    head = f"{'':<16}{'cell':<26}" + "".join(f"{m:>17}" for m in S.OBJECTIVES) + f"{'rank sum':>10}  pareto"
    print(head)
    for label, name in [("recommended", rec), *marks.items()]:
        if name in summary:
            vals = "".join(f"{summary[name][m]['mean']:>10.3f} ±{summary[name][m]['ci95']:<5.3f}" for m in S.OBJECTIVES)
            print(f"{label:<16}{name:<26}{vals}{sums[name]:>10}  {'yes' if name in front else 'no'}")
    print(f"Recommended γ: {rec} (rule: {S.RULE})")
    print(f"Use it: python scripts/test_vit_forward.py --gamma-file {out / 'best_gamma.json'}")
    if failed:
        print(f"{failed} image(s) could not be read or gave a non-finite map in some cell; they are listed in "
              "per_image.csv with their error (cells.csv's n_images says how many each cell scored)")
    print(f"Output directory: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main, globals())

"""Which γ setting explains best, in numbers: faithfulness (patch removal) and CUB localization (box, parts).

On a shortcut mini-CUB (make_synthetic_cub.py --shortcut-share 0.8) it also scores whether each map shows the
class mark where the model really followed it (shortcut_summary.csv, shortcut.png; see vitlrp/shortcut.py).

Several GPUs: torchrun --nproc_per_node=N scripts/evaluate_lrp.py (each rank scores a shard; rank 0 merges).
"""
# --- configuration (each constant is also a flag: --num-images 0, --methods balanced,random, ...) ---
CHECKPOINT_PATH = "checkpoints/vit_cub_best.pt"  # written by scripts/train_vit_cub.py
DATASET_ROOT = "dataset/raw/CUB_200_2011"  # folder holding images.txt, bounding_boxes.txt and parts/
SPLIT = "test"  # train, test or all
NUM_IMAGES = 500  # images drawn with random.seed(SEED); 0 = the whole split
SEED = 0  # which images
METHODS = [  # presets, gamma:<conv>:<lin> (<lin> may be a schedule: gamma:1:linear:0.5:0), <preset>+attn, peers ...
    "baseline", "conservative", "balanced", "aggressive", "very_aggressive", "input_x_gradient", "random"]
GAMMA_FILE = ""  # best_gamma.json of scripts/sweep_gamma.py: adds its recommended γ (FILE#metric: that best) to METHODS
REFERENCE = "balanced"  # the method every other is compared with, image by image (paired.csv, forest_paired.png)
BOOTSTRAP_SAMPLES = 5000  # resamples of the paired bootstrap interval (seeded by SEED)
TARGET = "pred"  # explain the predicted class (pred) or the true class (label)
PERTURB_STEPS = 10  # MoRF/LeRF curve points (patches removed in this many equal steps)
ROAD = False  # also ROAD: the same removals filled by noisy linear imputation (exact sparse solve on the CPU, slow)
PART_TOLERANCE_PX = 15  # part pointing game radius, in model-input pixels
BATCH_SIZE = 32  # images scored at once
DTYPE = "fp32"  # fp32 or bf16 (LRP on a pure-bf16 model copy; perturbation forwards in bf16 too)
IMPL = "fused"  # fused or zennit (same maps)
DEVICE = "auto"  # auto, cuda, cpu
NUM_WORKERS = 4  # JPEG decoding processes
OUTPUT_DIR = "results/lrp_eval"  # per_image.csv, summary.csv/json, PNG plots
# -------------------------------------------------------------------------------------------------
from contextlib import ExitStack
from pathlib import Path

import torch
from tqdm import tqdm

from vitlrp import cli, plots
from vitlrp import evaluation as E
from vitlrp import shortcut as SC
from vitlrp import stats as ST
from vitlrp.errors import UserError
from vitlrp.explain import DTYPES
from vitlrp.fileio import write_csv, write_json
from vitlrp.metrics import road_fill
from vitlrp.pipeline import (
    MethodRunner,
    ScoringBatch,
    check_perturb_steps_fit,
    check_run_options,
    check_schedules_fit,
    check_scoring_options,
    failed_rows,
    load_model_and_split,
    loader,
    lrp_schedules,
    model_in,
    parse_methods,
    sample_indices,
)
from vitlrp.runfolder import RunFolder
from vitlrp.runtime import Distributed, resolve_device
from vitlrp.sweep import cell_name, read_gamma_file

# every name this script writes into OUTPUT_DIR (a finished run removes older runs' files of these names only)
OUTPUT_NAMES = ("per_image.csv", "summary.csv", "summary.json", "config.json", "curves_morf_lerf.png", "bar_*.png",
                "ranking.png", "shortcut_summary.csv", "shortcut.png", "paired.csv", "forest_paired.png",
                "curves_road.png")


def check_config(cfg):
    if not cfg.METHODS and not cfg.GAMMA_FILE:
        raise UserError("METHODS is empty: name at least one method")
    names = list(cfg.METHODS)
    if cfg.GAMMA_FILE:
        name = cell_name(*read_gamma_file(cfg.GAMMA_FILE))
        names += [name] if name not in names else []
    methods = parse_methods(names, "METHODS")
    check_run_options(cfg)
    check_scoring_options(cfg)
    if cfg.BOOTSTRAP_SAMPLES < 100:
        raise UserError(f"BOOTSTRAP_SAMPLES must be at least 100, got {cfg.BOOTSTRAP_SAMPLES}")
    return methods


def main(cfg):
    methods = check_config(cfg)
    dist = Distributed()
    device = dist.init(resolve_device(cfg.DEVICE))
    ckpt, model, dataset = load_model_and_split(cfg.CHECKPOINT_PATH, cfg.DATASET_ROOT, cfg.SPLIT, device,
                                                annotations=True)
    indices = sample_indices(len(dataset), cfg.NUM_IMAGES, cfg.SEED, "NUM_IMAGES", cfg.SPLIT)
    check_perturb_steps_fit(cfg.PERTURB_STEPS, model)
    check_schedules_fit(lrp_schedules(methods), model)
    with ExitStack() as folder:  # rank 0 alone writes OUTPUT_DIR
        run = folder.enter_context(RunFolder(cfg.OUTPUT_DIR, "OUTPUT_DIR", OUTPUT_NAMES, ("summary.json",))) \
            if dist.is_main else None
        return evaluate(cfg, run, dist, device, methods, model, dataset, indices)


def evaluate(cfg, run, dist, device, methods, model, dataset, indices):
    out = run.path if run else Path(cfg.OUTPUT_DIR)
    marks = SC.load_marks(dataset.ann)
    if marks is not None and cfg.TARGET != "pred" and dist.is_main:
        print("The dataset has shortcut marks, but their scores ask what the prediction rested on: use --target pred")
    marks = SC.split_marks(marks, dataset) if marks is not None and cfg.TARGET == "pred" else None
    if dist.is_main:
        print(f"Evaluating {len(methods)} methods on {len(indices)} {cfg.SPLIT} images of {cfg.DATASET_ROOT} "
              f"({device}{f' x{dist.world_size}' if dist.enabled else ''}, {cfg.DTYPE})")
    dtype, patch = DTYPES[cfg.DTYPE], model.patch_size
    plain, forward = model_in(model, dtype, device)

    metrics = E.active_metrics(cfg.ROAD)
    kinds = ["morf", "lerf"] + (["road_morf", "road_lerf"] if cfg.ROAD else [])
    shard = indices[dist.rank::dist.world_size]
    rows, curves = [], {m.name: {k: [] for k in kinds} for m in methods}
    # the same noise sequence for every method (common random numbers: it cancels in the paired differences)
    roads = {m.name: road_fill(torch.Generator().manual_seed(cfg.SEED + dist.rank)) if cfg.ROAD else None
             for m in methods}
    bars = [tqdm(total=len(shard), desc=f"{m.name:<18}", unit="img", position=i, disable=not dist.is_main)
            for i, m in enumerate(methods)]
    with ExitStack() as stack:
        runners = [stack.enter_context(MethodRunner(m, plain, dtype, cfg.IMPL, seed=cfg.SEED + dist.rank))
                   for m in methods]
        for batch in loader(dataset, shard, cfg.BATCH_SIZE, cfg.NUM_WORKERS, device):
            rows += failed_rows(batch, [m.name for m in methods])
            b = ScoringBatch.of(batch, forward, cfg.TARGET, device)
            for m, runner, bar in zip(methods, runners, bars):
                if b.ok:
                    m_logits, relevance = runner(b.images, b.target)
                    scored, c = E.score_batch(relevance, m_logits, b.target, batch, b.ok, b.prob, b.images, patch,
                                              cfg.PERTURB_STEPS, cfg.PART_TOLERANCE_PX, b.start, b.end,
                                              roads[m.name])
                    if marks is not None:
                        extra = SC.score_batch(relevance, marks["box"][batch["index"][b.ok]])
                        for k, r in enumerate(scored):
                            r.update({name: float(v[k]) for name, v in extra.items()})
                    rows += [{"method": m.name, **r} for r in scored]
                    for k in kinds:
                        curves[m.name][k].append(c[k])
                bar.update(len(batch["error"]))
    for bar in bars:
        bar.close()

    gathered = dist.all_gather_objects((rows, curves))
    if not dist.is_main:
        dist.close()
        return 0
    names = [m.name for m in methods]
    rows, curves = E.merge_ranks(gathered, names)
    summary = E.summarize(rows, names, metrics)
    shortcut = None
    if marks is not None:
        shortcut = SC.summarize(SC.annotate_rows(rows, marks), names, seed=cfg.SEED)
        write_csv(out / "shortcut_summary.csv", [{"method": m, **shortcut[m]} for m in names], SC.CSV_FIELDS)
        plots.shortcut_scores(shortcut, rows, out / "shortcut.png")
    write_csv(out / "per_image.csv", rows, E.row_fields(metrics) + (SC.ROW_FIELDS if marks is not None else []))
    write_csv(out / "summary.csv", [{"method": m, "metric": k, **summary[m][k]} for m in names for k in metrics],
              ["method", "metric", "mean", "ci95", "n"])
    best = E.best_methods(summary, metrics=metrics)
    failed = sorted({r["sample_idx"] for r in rows if r["error"]})  # unreadable, or a non-finite map of a method
    no_box = E.boxless(rows)
    runner_up = E.runner_up_tests(summary, rows, best)
    if cfg.REFERENCE in names:
        paired = E.paired_comparison(rows, names, cfg.REFERENCE, cfg.BOOTSTRAP_SAMPLES, cfg.SEED, metrics)
        write_csv(out / "paired.csv", paired, ST.PAIRED_FIELDS)
        paired_note = f"paired against REFERENCE {cfg.REFERENCE}: {out / 'paired.csv'}, {out / 'forest_paired.png'}"
    else:
        paired = []
        paired_note = (f"no paired comparison: REFERENCE {cfg.REFERENCE!r} is not among METHODS "
                       f"({', '.join(names)}); set it to one of them")
    write_json(out / "summary.json", {
        "n_images": len(indices) - len(failed), "n_failed": len(failed), "n_sampled": len(indices),
        "failed_images": failed, "images_without_box": no_box,
        "split": cfg.SPLIT, "checkpoint": str(cfg.CHECKPOINT_PATH),
        "dataset_root": str(cfg.DATASET_ROOT), "config": cli.config_dict(cfg),
        "perturbation_baseline": "removed patches are set to 0 after normalization (the mean colour)"
                                 + ("; road_*: filled by noisy linear imputation (ROAD)" if cfg.ROAD else ""),
        "higher_is_better": metrics, "methods": summary,
        "best": {k: {"method": m, "mean": v, **({"runner_up": runner_up[k][0], "diff_to_runner_up": runner_up[k][1],
                                                 "p_wilcoxon_vs_runner_up": runner_up[k][2],
                                                 "rank_test_agrees": runner_up[k][3]} if k in runner_up else {})}
                 for k, (m, v) in best.items()},
        "paired": {"reference": cfg.REFERENCE if paired else None, "alpha": ST.ALPHA,
                   "bootstrap_samples": cfg.BOOTSTRAP_SAMPLES, "rows": paired},
        **({"shortcut": shortcut} if shortcut else {}),
    })
    plots.perturbation_curves(curves, cfg.PERTURB_STEPS, out / "curves_morf_lerf.png")
    if cfg.ROAD:
        plots.perturbation_curves({m: {"morf": c["road_morf"], "lerf": c["road_lerf"]} for m, c in curves.items()},
                                  cfg.PERTURB_STEPS, out / "curves_road.png", "ROAD: removed patches imputed")
    for metric in metrics:
        plots.metric_bars(summary, metric, out / f"bar_{metric}.png")
    plots.ranking_table(summary, out / "ranking.png", metrics)
    if paired:
        plots.forest_plot(paired, out / "forest_paired.png")
    write_json(out / "config.json", {**cli.config_dict(cfg), "device": str(device), "world_size": dist.world_size})
    run.finish(["per_image.csv", "summary.csv", "summary.json", "config.json", "curves_morf_lerf.png", "ranking.png"]
               + [f"bar_{metric}.png" for metric in metrics] + (["paired.csv", "forest_paired.png"] if paired else [])
               + (["curves_road.png"] if cfg.ROAD else [])
               + (["shortcut_summary.csv", "shortcut.png"] if shortcut else []))

    print()
    for line in E.table_lines(summary, metrics):
        print(line)
    if shortcut:
        print()
        for line in SC.table_lines(shortcut):
            print(line)
    print()
    for line in E.paired_lines(paired):
        print(line)
    print(paired_note)
    print()
    for metric, (method, value) in best.items():
        print(E.best_line(metric, method, value, runner_up.get(metric)))
    if no_box:
        print(f"warning: {len(no_box)} image(s) have no usable box (NaN, outside the image, negative size or cropped "
              f"away); their box metrics are left out of the means: sample_idx {no_box}")
    unreadable = sorted({r["sample_idx"] for r in rows if r["error"] and not r["error"].startswith("non-finite")})
    if unreadable:
        print(f"{len(unreadable)} image(s) could not be read; they are listed in per_image.csv with their error")
    for name in names:
        bad = [r["sample_idx"] for r in rows if r["method"] == name and r["error"].startswith("non-finite")]
        if bad:
            print(f"{name}: {len(bad)} image(s) got a non-finite map (NaN or inf), left out of its means "
                  f"(per_image.csv has the error): sample_idx {bad}")
    print(f"Output directory: {out}")
    dist.close()
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main, globals())

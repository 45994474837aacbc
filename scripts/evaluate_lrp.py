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
SEED = 0  # which images, and every random draw (random maps, SmoothGrad's noise, ties, ROAD), per image
METHODS = [  # presets, gamma:<conv>:<lin> (<lin> may be a schedule: gamma:1:linear:0.5:0), <preset>+attn, ...
    "baseline", "conservative", "balanced", "aggressive", "very_aggressive", "input_x_gradient", "random"]
GAMMA_FILE = ""  # best_gamma.json of scripts/sweep_gamma.py: adds its recommended γ (FILE#metric: that best) to METHODS
GAMMA_FILE_FORCE = False  # use GAMMA_FILE's γ even if it failed the sweep's class check or was made for another model
REFERENCE = "balanced"  # the method every other is compared with, image by image (paired.csv); empty = no comparison
BOOTSTRAP_SAMPLES = 5000  # resamples of the paired bootstrap interval (seeded by SEED)
TARGET = "pred"  # explain the predicted class (pred) or the true class (label)
PERTURB_STEPS = 10  # MoRF/LeRF curve points (patches removed in this many equal steps)
ROAD = False  # also ROAD: the same removals filled by noisy linear imputation (exact sparse solve on the CPU, slow)
PART_TOLERANCE_PX = 15  # part pointing game radius, in model-input pixels
IG_STEPS = 32  # integrated_gradients: points on the path from the baseline (Gauss-Legendre rule)
SMOOTHGRAD_SAMPLES = 32  # smoothgrad: noisy copies per image
ROWS_PER_PASS = 64  # at most this many images per forward (IG, SmoothGrad, the perturbed images of the curves)
BATCH_SIZE = 32  # images scored at once
DTYPE = "fp32"  # fp32 or bf16 (LRP on a pure-bf16 model copy; perturbation forwards in bf16 too)
IMPL = "fused"  # fused or zennit (same maps)
DEVICE = "auto"  # auto, cuda, cpu
NUM_WORKERS = 4  # JPEG decoding processes
OUTPUT_DIR = "results/lrp_eval"  # per_image.csv, summary.csv/json, PNG plots
# -------------------------------------------------------------------------------------------------
from contextlib import ExitStack

from tqdm import tqdm

from vitlrp import cli, methods, plots
from vitlrp import evaluation as E
from vitlrp import shortcut as SC
from vitlrp import stats as ST
from vitlrp.checks import (
    add_gamma_file,
    check_perturb_steps_fit,
    check_run_options,
    check_schedules_fit,
    check_scoring_options,
    method_settings,
)
from vitlrp.errors import UserError
from vitlrp.families import family_of
from vitlrp.fileio import write_csv, write_json
from vitlrp.inputs import load_model_and_split, loader, sample_indices
from vitlrp.methods import lrp
from vitlrp.metrics import directions
from vitlrp.runtime import DTYPES
from vitlrp.scoring import ScoreSettings, ScoringRun, model_in, score_batches
from vitlrp.step import Step, run_step

# every name this script writes into OUTPUT_DIR (a finished run removes older runs' files of these names only)
OUTPUT_NAMES = ("per_image.csv", "summary.csv", "summary.json", "config.json", "curves_morf_lerf.png", "bar_*.png",
                "ranking.png", "shortcut_summary.csv", "shortcut.png", "paired.csv", "forest_paired.png",
                "curves_road.png")


def check_config(cfg):
    """The methods to score, with every setting checked before any work."""
    if not cfg.METHODS and not cfg.GAMMA_FILE:
        raise UserError("METHODS is empty: name at least one method")
    chosen, line = add_gamma_file(cfg, methods.parse_methods(list(cfg.METHODS), "METHODS"))
    if line:
        print(line)
    check_run_options(cfg)
    check_scoring_options(cfg)
    if cfg.BOOTSTRAP_SAMPLES < 100:
        raise UserError(f"BOOTSTRAP_SAMPLES must be at least 100, got {cfg.BOOTSTRAP_SAMPLES}")
    choose_reference(cfg, chosen)
    return chosen


def choose_reference(cfg, chosen):
    """REFERENCE must be among the methods when the user named it; left at its default while METHODS lacks it, the
    first γ method of METHODS takes its place (or none), and the console says so."""
    names = [m.name for m in chosen]
    if not cfg.REFERENCE or cfg.REFERENCE in names:
        return
    if "REFERENCE" in cli.given(cfg):
        raise UserError(f"REFERENCE {cfg.REFERENCE!r} is not among METHODS ({', '.join(names)}): set it to one of "
                        "them, or leave it empty for no paired comparison")
    first = next((m.name for m in chosen if m.family == "lrp"), "")
    print(f"REFERENCE {cfg.REFERENCE} (the default) is not among METHODS: "
          + (f"the methods are compared with {first}, their first γ method" if first
             else "no γ method there, so no paired comparison") + " (--reference chooses another)")
    cfg.REFERENCE = first


def main(cfg):
    chosen = check_config(cfg)
    step = Step(cfg.DEVICE, cfg.OUTPUT_DIR, "OUTPUT_DIR", OUTPUT_NAMES, ("summary.json",))
    return run_step(step, lambda state: prepare(cfg, state, chosen), lambda state: score(cfg, state, chosen),
                    lambda state, parts: finish(cfg, state, chosen, parts))


def prepare(cfg, state, chosen):
    """The model, the split, the sampled images and the shortcut marks, checked before the folder is taken."""
    ckpt, model, dataset = load_model_and_split(cfg.CHECKPOINT_PATH, cfg.DATASET_ROOT, cfg.SPLIT, state.device,
                                                annotations=True)
    indices = sample_indices(len(dataset), cfg.NUM_IMAGES, cfg.SEED, split=cfg.SPLIT)
    check_perturb_steps_fit(cfg.PERTURB_STEPS, model)
    check_schedules_fit(lrp.schedules(chosen), model)
    return {"model": model, "dataset": dataset, "indices": indices, "marks": shortcut_marks(cfg, dataset, state)}


def finish(cfg, state, chosen, parts):
    """Merge the ranks' rows, conclude, write and report; the exit status."""
    names = [m.name for m in chosen]
    rows, curves = E.merge_ranks(parts, names)
    marks = state.data["marks"]
    found = E.conclude(rows, names, E.active_metrics(cfg.ROAD), cfg.REFERENCE, cfg.BOOTSTRAP_SAMPLES,
                       cfg.SEED, unsigned={m.name for m in chosen if not m.cls.signed})
    shortcut = SC.summarize(SC.annotate_rows(rows, marks), names, seed=cfg.SEED) if marks else None
    write_outputs(cfg, state, names, rows, curves, found, shortcut)
    print_report(cfg, state.run.path, rows, names, found, shortcut)
    return 1 if any(r["error"] for r in rows) else 0


def shortcut_marks(cfg, dataset, state):
    """The mark boxes of a shortcut mini-CUB (None for a plain CUB folder, or when the true class is explained)."""
    marks = SC.load_marks(dataset.ann)
    if marks is not None and cfg.TARGET != "pred":
        if state.is_main:
            print("The dataset has shortcut marks, but their scores ask what the prediction rested on: use "
                  "--target pred")
        return None
    return SC.split_marks(marks, dataset) if marks is not None else None


def score(cfg, state, chosen):
    """Every method's rows and curves on this rank's shard."""
    model, dataset, indices, marks = (state.data[k] for k in ("model", "dataset", "indices", "marks"))
    dist, device = state.dist, state.device
    if dist.is_main:
        print(f"Evaluating {len(chosen)} methods on {len(indices)} {cfg.SPLIT} images of {cfg.DATASET_ROOT} "
              f"({device}{f' x{dist.world_size}' if dist.enabled else ''}, {cfg.DTYPE})")
    plain, forward = model_in(model, DTYPES[cfg.DTYPE], device)
    patch = family_of(model).patch_size(model)
    settings = ScoreSettings(patch, cfg.PERTURB_STEPS, cfg.PART_TOLERANCE_PX, cfg.ROAD, cfg.SEED, cfg.ROWS_PER_PASS)
    shard = state.shard(indices)
    names = [m.name for m in chosen]
    run = ScoringRun(forward, cfg.TARGET, device, settings, E.active_metrics(cfg.ROAD))
    with ExitStack() as stack, tqdm(total=len(shard), desc="score", unit="img", disable=not dist.is_main) as bar:
        opened = [stack.enter_context(m.create(plain, method_settings(cfg))) for m in chosen]

        def explain(s):  # each method's maps for the explained class and for a random other class
            return {name: (r[0].logits, r[0].relevance, r[1].relevance) for name, r in
                    methods.attribute_all(opened, s.images, [s.target, s.other], s.ids).items()}

        def mark_scores(s, maps, rows):  # the share of each map on the shortcut mark (not of an empty map)
            for name, (_, relevance, *_) in maps.items():
                extra = SC.score_batch(relevance, marks["box"][s.ids])
                for k, r in enumerate(rows[name]):
                    r.update({key: float("nan") if r.get("empty") else float(v[k]) for key, v in extra.items()})

        return score_batches(loader(dataset, shard, cfg.BATCH_SIZE, cfg.NUM_WORKERS, device), run, explain, names,
                             mark_scores if marks else None, bar)


def write_outputs(cfg, state, names, rows, curves, found, shortcut):
    run, metrics = state.run, E.active_metrics(cfg.ROAD)
    out = run.path
    summary, paired = found["summary"], found["paired"]
    write_csv(out / "per_image.csv", rows, E.row_fields(metrics) + (SC.ROW_FIELDS if shortcut else []))
    write_csv(out / "summary.csv", [{"method": m, "metric": k, **summary[m][k]} for m in names for k in metrics],
              ["method", "metric", "mean", "ci95", "n"])
    if paired:
        write_csv(out / "paired.csv", paired, ST.PAIRED_FIELDS)
        plots.forest_plot(paired, out / "forest_paired.png")
    if shortcut:
        write_csv(out / "shortcut_summary.csv", [{"method": m, **shortcut[m]} for m in names], SC.CSV_FIELDS)
        plots.shortcut_scores(shortcut, rows, out / "shortcut.png")
    write_json(out / "summary.json", summary_doc(cfg, rows, state.data["indices"], found, shortcut))
    plots.perturbation_curves(curves, cfg.PERTURB_STEPS, out / "curves_morf_lerf.png")
    if cfg.ROAD:
        plots.perturbation_curves({m: {"morf": c["road_morf"], "lerf": c["road_lerf"]} for m, c in curves.items()},
                                  cfg.PERTURB_STEPS, out / "curves_road.png", "ROAD: removed patches imputed")
    for metric in metrics:
        plots.metric_bars(summary, metric, out / f"bar_{metric}.png")
    plots.ranking_table(summary, out / "ranking.png", metrics)
    write_json(out / "config.json", {**cli.config_dict(cfg, identity=True), "device": str(state.device),
                                     "world_size": state.dist.world_size})
    run.finish(["per_image.csv", "summary.csv", "summary.json", "config.json", "curves_morf_lerf.png", "ranking.png"]
               + [f"bar_{metric}.png" for metric in metrics] + (["paired.csv", "forest_paired.png"] if paired else [])
               + (["curves_road.png"] if cfg.ROAD else [])
               + (["shortcut_summary.csv", "shortcut.png"] if shortcut else []))


def summary_doc(cfg, rows, indices, found, shortcut):
    """summary.json: counts, the settings, every method's means, the best per metric and the paired rows."""
    failed = sorted({r["sample_idx"] for r in rows if r["error"]})  # unreadable, or a non-finite map of a method
    runner_up = found["runner_up"]
    return {
        "n_images": len(indices) - len(failed), "n_failed": len(failed), "n_sampled": len(indices),
        "failed_images": failed, "images_without_box": E.boxless(rows),
        "split": cfg.SPLIT, "checkpoint": str(cfg.CHECKPOINT_PATH),
        "dataset_root": str(cfg.DATASET_ROOT), "config": cli.config_dict(cfg),
        "perturbation_baseline": "removed patches are set to 0 after normalization (the mean colour)"
                                 + ("; road_*: filled by noisy linear imputation (ROAD)" if cfg.ROAD else ""),
        "empty_maps": "an image whose map has every pixel the same (no evidence) is left out of all of that method's "
                      "metrics; n_empty counts them per method",
        "higher_is_better": directions(E.active_metrics(cfg.ROAD)), "methods": found["summary"],
        "best": {k: {"method": m, "mean": v, **({"runner_up": runner_up[k][0], "diff_to_runner_up": runner_up[k][1],
                                                 "p_wilcoxon_vs_runner_up": runner_up[k][2],
                                                 "rank_test_agrees": runner_up[k][3]} if k in runner_up else {})}
                 for k, (m, v) in found["best"].items()},
        "paired": {"reference": cfg.REFERENCE if found["paired"] else None, "alpha": ST.ALPHA,
                   "bootstrap_samples": cfg.BOOTSTRAP_SAMPLES, "rows": found["paired"]},
        **({"shortcut": shortcut} if shortcut else {}),
    }


def print_report(cfg, out, rows, names, found, shortcut):
    """The console's closing report: a table that fits 120 columns and a few lines (the details are in the files)."""
    summary, metrics = found["summary"], E.active_metrics(cfg.ROAD)
    print()
    for line in E.table_lines(summary, metrics, found["best"]) + ([""] + SC.table_lines(shortcut) if shortcut else []):
        print(line)
    print()
    for line in E.best_lines(found["best"], found["runner_up"]):
        print(line)
    for line in E.paired_pointer(found["paired"], [out / "paired.csv", "forest_paired.png"]):
        print(line)
    for text in [E.class_check_line(summary)] + E.warning_lines(rows, names, summary):
        for line in E.wrap(text) if text else []:
            print(line)
    print(f"Output directory: {out}")


if __name__ == "__main__":
    cli.run(main, globals(), help_notes=methods.help_text)

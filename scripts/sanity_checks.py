"""Do the maps depend on what they claim to explain? The sanity checks of vitlrp/sanity/ for every method:

- class: the map of the explained class against the runner-up's and a seeded random other class's (Sixt et al.);
- randomization: cascading top-down randomization of the model's parameters, head first (Adebayo et al.);
- noise: maps of noisy copies of the input whose prediction does not change, against the clean map.

Each comparison is measured by Spearman's ρ of the per-patch sums, ρ of their absolute values, SSIM and |ρ|; a
verdict per method says whether its maps pass the class and randomization checks (thresholds:
vitlrp/sanity/verdicts.py).

Several GPUs: torchrun --nproc_per_node=N scripts/sanity_checks.py (each rank checks a shard; rank 0 merges).
"""
# --- configuration (each constant is also a flag: --num-images 50, --methods balanced,random, ...) ---
CHECKPOINT_PATH = "checkpoints/vit_cub_best.pt"  # written by scripts/train_vit_cub.py
DATASET_ROOT = "dataset/raw/CUB_200_2011"  # folder holding images.txt
SPLIT = "test"  # train, test or all
NUM_IMAGES = 100  # images drawn with random.seed(SEED), as evaluate_lrp.py draws them; 0 = the whole split
SEED = 0  # which images, the random other class, the noise, the randomized weights, the random maps
METHODS = [  # presets, gamma:<conv>:<lin> (<lin> may be a schedule: gamma:1:linear:0.5:0), <preset>+attn, ...
    "baseline", "conservative", "balanced", "aggressive", "very_aggressive", "input_x_gradient", "random"]
TARGET = "pred"  # explain the predicted class (pred) or the true class (label)
NOISE_SAMPLES = 3  # noisy copies per image for the noise check; 0 = no noise check
NOISE_STD = 0.25  # σ of the noise on the model input, in normalised units (≈ 6% of a pixel's [0, 1] range)
FIGURE_IMAGES = 3  # images shown in cascade_<idx>.png and class_pairs.png (the first ones drawn)
IG_STEPS = 32  # integrated_gradients: points on the path from the baseline (Gauss-Legendre rule)
SMOOTHGRAD_SAMPLES = 32  # smoothgrad: noisy copies per image
ROWS_PER_PASS = 64  # at most this many images per forward (IG, SmoothGrad)
BATCH_SIZE = 32  # images checked at once
DTYPE = "fp32"  # fp32 or bf16 (LRP on a pure-bf16 model copy; forwards in bf16 too)
IMPL = "fused"  # fused or zennit (same maps)
DEVICE = "auto"  # auto, cuda, cpu
NUM_WORKERS = 4  # JPEG decoding processes
OUTPUT_DIR = "results/sanity"  # sanity.csv, per_image_sanity.csv, summary.json, PNG figures
# -------------------------------------------------------------------------------------------------
import math

from tqdm import tqdm

from vitlrp import cli, methods, plots, render
from vitlrp.batch import Batch
from vitlrp.checks import check_run_options, check_schedules_fit, method_settings
from vitlrp.errors import UserError
from vitlrp.families import family_of
from vitlrp.fileio import write_csv, write_json
from vitlrp.inputs import load_model_and_split, loader, sample_indices
from vitlrp.methods import lrp
from vitlrp.runtime import DTYPES
from vitlrp.sanity import randomization as R
from vitlrp.sanity import runner as S
from vitlrp.sanity import verdicts as V
from vitlrp.scoring import model_in
from vitlrp.step import Step, run_step

# every name this script writes into OUTPUT_DIR (a finished run removes older runs' files of these names only)
OUTPUT_NAMES = ("sanity.csv", "per_image_sanity.csv", "summary.json", "config.json", "curves_randomization.png",
                "cascade_*.png", "class_pairs.png")


def check_config(cfg):
    """The methods to check, with every setting checked before any work."""
    if not cfg.METHODS:
        raise UserError("METHODS is empty: name at least one method")
    chosen = methods.parse_methods(list(cfg.METHODS), "METHODS")
    check_run_options(cfg)
    if cfg.NOISE_SAMPLES < 0:
        raise UserError(f"NOISE_SAMPLES must be >= 0 (0 = no noise check), got {cfg.NOISE_SAMPLES}")
    if not (math.isfinite(cfg.NOISE_STD) and cfg.NOISE_STD > 0):
        raise UserError(f"NOISE_STD must be a positive number, got {cfg.NOISE_STD}")
    if cfg.FIGURE_IMAGES < 0:
        raise UserError(f"FIGURE_IMAGES must be >= 0, got {cfg.FIGURE_IMAGES}")
    return chosen


def main(cfg):
    chosen = check_config(cfg)
    step = Step(cfg.DEVICE, cfg.OUTPUT_DIR, "OUTPUT_DIR", OUTPUT_NAMES, ("summary.json",))
    return run_step(step, lambda state: prepare(cfg, state, chosen), lambda state: check(cfg, state, chosen),
                    lambda state, parts: finish(cfg, state, chosen, parts))


def prepare(cfg, state, chosen):
    """The model, the split and the sampled images, checked before the folder is taken."""
    ckpt, model, dataset = load_model_and_split(cfg.CHECKPOINT_PATH, cfg.DATASET_ROOT, cfg.SPLIT, state.device)
    indices = sample_indices(len(dataset), cfg.NUM_IMAGES, cfg.SEED, split=cfg.SPLIT)
    check_schedules_fit(lrp.schedules(chosen), model)
    V.check_model(model)
    return {"model": model, "dataset": dataset, "indices": indices, "steps": R.randomization_steps(model)}


def finish(cfg, state, chosen, parts):
    """Merge the ranks' rows in sample order, summarize, judge, write and report; the exit status."""
    indices, steps = state.data["indices"], state.data["steps"]
    order = {i: k for k, i in enumerate(indices)}  # the rows in sample order, whatever the shards
    rows = sorted((r for g in parts for r in g[0]), key=lambda r: order[r["sample_idx"]])
    figures = sorted((f for g in parts for f in g[1]), key=lambda f: order[f["sample_idx"]])
    failed = sorted(e for g in parts for e in g[2])
    names = [m.name for m in chosen]
    summary = V.summarize(rows, names, steps)
    found = V.verdicts(summary, names, steps)
    write_outputs(cfg, state, names, rows, summary, found, figures, failed)
    print_report(state.run.path, rows, summary, found, failed, cfg.NOISE_SAMPLES)
    return 1 if failed else 0


def check(cfg, state, chosen):
    """Every check on this rank's shard: ``(rows, figures, failed)``; ``failed``: ``(sample_idx, error)`` of the
    images that could not be read."""
    model, dataset, indices = (state.data[k] for k in ("model", "dataset", "indices"))
    dist, device = state.dist, state.device
    if dist.is_main:
        print(f"Sanity checks of {len(chosen)} methods on {len(indices)} {cfg.SPLIT} images of {cfg.DATASET_ROOT} "
              f"({device}{f' x{dist.world_size}' if dist.enabled else ''}, {cfg.DTYPE}; "
              f"{len(state.data['steps'])} randomization steps, {cfg.NOISE_SAMPLES} noisy copies)")
    plain, forward = model_in(model, DTYPES[cfg.DTYPE], device)
    run = S.CheckRun(chosen, method_settings(cfg), plain, forward,
                     S.Settings(family_of(model).patch_size(model), cfg.SEED, cfg.NOISE_SAMPLES, cfg.NOISE_STD))
    keep, shard = set(indices[:cfg.FIGURE_IMAGES]), state.shard(indices)
    rows, figures, failed = [], [], []
    with tqdm(total=len(shard), desc="sanity", unit="img", disable=not dist.is_main) as bar:
        for batch in loader(dataset, shard, cfg.BATCH_SIZE, cfg.NUM_WORKERS, device):
            b = Batch.of(batch, device, forward)
            failed += [(i, err) for i, _, err in b.failed()]
            if b.ok:
                found, shown = S.check_batch(run, S.Compared.of(b, cfg.TARGET, cfg.SEED), keep)
                rows += found
                figures += shown
            bar.update(len(b))
    return rows, figures, failed


def write_outputs(cfg, state, names, rows, summary, found, figures, failed):
    run, steps = state.run, state.data["steps"]
    out = run.path
    write_csv(out / "per_image_sanity.csv", rows, S.ROW_FIELDS)
    write_csv(out / "sanity.csv", summary, V.SUMMARY_FIELDS)
    write_json(out / "summary.json", summary_doc(cfg, rows, summary, found, failed, len(state.data["indices"])))
    plots.sanity_curves(summary, steps, {"abs_spearman": V.RANDOMIZATION_THRESHOLD}, out / "curves_randomization.png")
    written = write_figures(out, state.data["dataset"].preprocessing, names, steps, rows, figures)
    write_json(out / "config.json", {**cli.config_dict(cfg, identity=True), "device": str(state.device),
                                     "world_size": state.dist.world_size})
    run.finish(["per_image_sanity.csv", "sanity.csv", "summary.json", "curves_randomization.png", "config.json"]
               + written)


def write_figures(out, prep, names, steps, rows, figures):
    """``cascade_<idx>.png`` per figure image and ``class_pairs.png``; returns the names written."""
    rho = {(r["method"], r["sample_idx"], r["test"], r["step"]): r["spearman"] for r in rows}
    written = []
    for f in figures:
        i = f["sample_idx"]
        image = prep.denormalize(f["image"]).permute(1, 2, 0).numpy()
        table = [(n, [f["maps"][n][c] for c in ["original", *steps]],
                  ["original"] + [f"{s} ρ={rho[(n, i, 'randomization', s)]:.2f}" for s in steps]) for n in names]
        name = f"cascade_{i:06d}.png"
        render.save_png(render.cascade_grid(image, f"#{i}: class {f['target']} explained; cascading randomization "
                                                   "head first, ρ of the patch sums to the original map", table),
                        out / name)
        written.append(name)
    if figures:
        images = [prep.denormalize(f["image"]).permute(1, 2, 0).numpy() for f in figures]
        table = [(n, [f["maps"][n][c] for f in figures for c in ("original", "class_runner_up")],
                  [cap for f in figures for cap in (f"#{f['sample_idx']} class {f['target']}",
                                                     f"runner-up {f['runner_up']} ρ="
                                                     f"{rho[(n, f['sample_idx'], 'class_runner_up', '')]:.2f}")])
                 for n in names]
        render.save_png(render.class_pair_grid(images, table), out / "class_pairs.png")
        written.append("class_pairs.png")
    return written


def summary_doc(cfg, rows, summary, found, failed, n_sampled):
    """summary.json: counts, the settings, the verdicts and every summary row."""
    noise = [r for r in rows if r["test"] == "noise"]
    per_image = {r["sample_idx"]: r for r in noise}  # the copies kept are the same for every method
    return {
        "n_images": n_sampled - len(failed), "n_failed": len(failed), "n_sampled": n_sampled,
        "failed_images": [{"sample_idx": i, "error": e} for i, e in failed],
        "split": cfg.SPLIT, "checkpoint": str(cfg.CHECKPOINT_PATH), "dataset_root": str(cfg.DATASET_ROOT),
        "config": cli.config_dict(cfg),
        "measures": {"spearman": "Spearman's rho of the per-patch sums", "spearman_of_abs": "Spearman's rho of the "
                     "absolute per-patch sums", "ssim": "SSIM of the max-normalised absolute maps (input resolution)",
                     "abs_spearman": "|rho| of the per-patch sums (the verdicts' statistic)",
                     "undefined": "rho of a constant map is undefined: NaN, counted in n_undefined, not in the mean"},
        "thresholds": {"class": V.CLASS_THRESHOLD, "randomization": V.RANDOMIZATION_THRESHOLD},
        "verdicts": found,
        "noise": {"copies_per_image": cfg.NOISE_SAMPLES, "std": cfg.NOISE_STD,
                  "copies_skipped": sum(r["skipped"] for r in per_image.values()),
                  "images_without_kept_copy": sorted(i for i, r in per_image.items() if r["copies"] == 0)},
        "summary": summary,
    }


def print_report(out, rows, summary, found, failed, noise_samples):
    print()
    for line in V.verdict_lines(found):
        print(line)
    print()
    for line in V.table_lines(summary):
        print(line)
    noise = {r["sample_idx"]: r for r in rows if r["test"] == "noise"}
    if noise_samples:
        skipped = sum(r["skipped"] for r in noise.values())
        print(f"noise: {skipped} of {noise_samples * len(noise)} noisy copies skipped (their prediction changed)")
    undefined = sum(r["n_undefined"] for r in summary)
    if undefined:
        print(f"{undefined} similarity values are undefined (a constant map has no ranking): counted as n_undefined "
              "in sanity.csv, left out of the means")
    if failed:
        print(f"{len(failed)} images could not be read: {', '.join(str(i) for i, _ in failed[:10])}"
              + (" ..." if len(failed) > 10 else ""))
    print(f"Output directory: {out}")


if __name__ == "__main__":
    cli.run(main, globals(), help_notes=methods.help_text)

"""Do the maps depend on what they claim to explain? The sanity checks of vitlrp/sanity/ for every method:

- class: the map of the explained class against the maps of many other classes, all from one forward (every other
  class of a dataset with at most 20, else the runner-up and OTHER_CLASSES seeded ones; Sixt et al.);
- randomization: the model's parameters randomized top down, bottom up and one part at a time, over DRAWS weight
  draws (Adebayo et al.), with eMPRT and sMPRT (Hedström et al.);
- noise: maps of noisy copies of the input whose prediction does not change, against the clean map.

Each comparison is measured at patch level (Spearman's ρ of the per-patch sums) and at pixel level (ρ of the pixels,
SSIM); a verdict per method says pass, fail or undecided from the 95% interval (threshold: a multiple of the chance
|ρ| for the model's number of patches), and a paired verdict compares it with the gradient baselines
(vitlrp/sanity/verdicts.py).

Several GPUs: torchrun --nproc_per_node=N scripts/sanity_checks.py (each rank checks a shard; rank 0 merges).
"""
# --- configuration (each constant is also a flag: --num-images 50, --methods balanced,random, ...) ---
CHECKPOINT_PATH = "checkpoints/vit_cub_best.pt"  # written by scripts/train_vit_cub.py
DATASET_ROOT = "dataset/raw/CUB_200_2011"  # folder holding images.txt
SPLIT = "test"  # train, test or all
NUM_IMAGES = 100  # images drawn with random.seed(SEED), as evaluate_lrp.py draws them; 0 = the whole split
SEED = 0  # which images, the other classes, the noise, the randomized weights, the random maps
METHODS = [  # presets, gamma:<conv>:<lin> (<lin> may be a schedule: gamma:1:linear:0.5:0), <preset>+attn, ...
    "baseline", "conservative", "balanced", "aggressive", "very_aggressive", "input_x_gradient", "gradient", "random"]
GAMMA_FILE = ""  # best_gamma.json of scripts/sweep_gamma.py: adds its recommended γ (FILE#metric: that best) to METHODS
GAMMA_FILE_FORCE = False  # use GAMMA_FILE's γ even if it failed the sweep's class check or was made for another model
TARGET = "pred"  # explain the predicted class (pred) or the true class (label)
OTHER_CLASSES = 10  # class check: random other classes beside the runner-up (all others when the model has <= 20)
DRAWS = 5  # randomization: seeded weight draws (intervals over draws and images); 0 = no randomization checks
ORDERS = ["top_down", "bottom_up", "independent"]  # randomization orders: the two cascades, one part at a time
RANDOMIZATION_IMAGES = 0  # the first this many images get the randomization checks (the costly part); 0 = all
SMPRT_SAMPLES = 8  # sMPRT: noisy copies averaged per map
SMPRT_NOISE = 0.1  # sMPRT: noise σ as a share of each image's value range (Quantus's default)
NOISE_SAMPLES = 3  # noisy copies per image for the noise check; 0 = no noise check
NOISE_STD = 0.25  # σ of the noise on the model input, in normalised units (≈ 6% of a pixel's [0, 1] range)
FIGURE_IMAGES = 3  # images shown in cascade_<idx>.png and class_pairs.png (the first ones drawn)
IG_STEPS = 32  # integrated_gradients: points on the path from the baseline (Gauss-Legendre rule)
SMOOTHGRAD_SAMPLES = 32  # smoothgrad: noisy copies per image
ROWS_PER_PASS = 64  # at most this many images per forward (IG, SmoothGrad)
BATCH_SIZE = 16  # images checked at once
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
from vitlrp.checks import add_gamma_file, check_run_options, check_schedules_fit, method_settings
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
from vitlrp.step import Step, in_sample_order, run_step

# every name this script writes into OUTPUT_DIR (a finished run removes older runs' files of these names only)
OUTPUT_NAMES = ("sanity.csv", "per_image_sanity.csv", "summary.json", "config.json", "curves_*.png", "cascade_*.png",
                "class_pairs.png")


def check_config(cfg):
    """The methods to check, with every setting checked before any work."""
    if not cfg.METHODS and not cfg.GAMMA_FILE:
        raise UserError("METHODS is empty: name at least one method")
    chosen, line = add_gamma_file(cfg, methods.parse_methods(list(cfg.METHODS), "METHODS"))
    if line:
        print(line)
    check_run_options(cfg)
    for name, low, why in (("NOISE_SAMPLES", 0, "0 = no noise check"), ("FIGURE_IMAGES", 0, ""),
                           ("DRAWS", 0, "0 = no randomization checks"), ("OTHER_CLASSES", 1, ""),
                           ("RANDOMIZATION_IMAGES", 0, "0 = all"), ("SMPRT_SAMPLES", 1, "")):
        if getattr(cfg, name) < low:
            raise UserError(f"{name} must be >= {low}{f' ({why})' if why else ''}, got {getattr(cfg, name)}")
    for name in ("NOISE_STD", "SMPRT_NOISE"):
        if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) > 0):
            raise UserError(f"{name} must be a positive number, got {getattr(cfg, name)}")
    unknown = [o for o in cfg.ORDERS if o not in R.ORDERS]
    if unknown or not cfg.ORDERS or len(set(cfg.ORDERS)) < len(cfg.ORDERS):
        raise UserError(f"ORDERS must list some of {', '.join(R.ORDERS)}, each once; got {','.join(cfg.ORDERS)}")
    return chosen


def main(cfg):
    chosen = check_config(cfg)
    step = Step(cfg.DEVICE, cfg.OUTPUT_DIR, "OUTPUT_DIR", OUTPUT_NAMES, ("summary.json",))
    return run_step(step, lambda state: prepare(cfg, state, chosen), lambda state: check(cfg, state, chosen),
                    lambda state, parts: finish(cfg, state, chosen, parts))


def prepare(cfg, state, chosen):
    """The model, the split and the sampled images, checked before the folder is taken."""
    ckpt, model, dataset = load_model_and_split(cfg.CHECKPOINT_PATH, cfg.DATASET_ROOT, cfg.SPLIT, state.device)
    V.check_model(model)
    indices = sample_indices(len(dataset), cfg.NUM_IMAGES, cfg.SEED, split=cfg.SPLIT)
    check_schedules_fit(lrp.schedules(chosen), model)
    return {"model": model, "dataset": dataset, "indices": indices, "steps": R.randomization_steps(model),
            "patches": V.patch_count(model), "classes": family_of(model).num_classes(model)}


def settings(cfg, state):
    """The checks' :class:`~vitlrp.sanity.runner.Settings` of this run."""
    indices = state.data["indices"]
    randomized = frozenset(indices[:cfg.RANDOMIZATION_IMAGES]) if cfg.RANDOMIZATION_IMAGES else None
    model = state.data["model"]
    return S.Settings(family_of(model).patch_size(model), cfg.SEED, cfg.NOISE_SAMPLES, cfg.NOISE_STD, cfg.OTHER_CLASSES,
                      draws=cfg.DRAWS, orders=tuple(cfg.ORDERS), randomized=randomized,
                      smprt_samples=cfg.SMPRT_SAMPLES, smprt_noise=cfg.SMPRT_NOISE)


def finish(cfg, state, chosen, parts):
    """Merge the ranks' rows in sample order, summarize, judge, write and report; the exit status."""
    indices, steps = state.data["indices"], state.data["steps"]
    rows = in_sample_order((r for g in parts for r in g[0]), indices)
    figures = in_sample_order((f for g in parts for f in g[1]), indices)
    failed = sorted(e for g in parts for e in g[2])
    names = [m.name for m in chosen]
    orders = tuple(cfg.ORDERS) if cfg.DRAWS else ()
    summary = V.summarize(rows, names, steps, orders)
    found = V.verdicts(summary, rows, names, steps, state.data["patches"], orders)
    res = dict(names=names, rows=rows, summary=summary, found=found, figures=figures, failed=failed,
               chance=V.chance_check(summary, state.data["patches"]))
    write_outputs(cfg, state, res)
    print_report(cfg, state, rows, summary, found, res["chance"], failed)
    return 1 if failed else 0


def check(cfg, state, chosen):
    """Every check on this rank's shard: ``(rows, figures, failed)``; ``failed``: ``(sample_idx, error)`` of the
    images that could not be read."""
    model, dataset, indices = (state.data[k] for k in ("model", "dataset", "indices"))
    dist, device = state.dist, state.device
    s = settings(cfg, state)
    if dist.is_main:
        n_rand = len(indices) if s.randomized is None else len(s.randomized)
        others = state.data["classes"] - 1 if state.data["classes"] <= S.ALL_CLASSES_UP_TO else \
            f"the runner-up + {cfg.OTHER_CLASSES}"
        print(f"Sanity checks of {len(chosen)} methods on {len(indices)} {cfg.SPLIT} images of {cfg.DATASET_ROOT} "
              f"({device}{f' x{dist.world_size}' if dist.enabled else ''}, {cfg.DTYPE})")
        print(f"  class: {others} other classes; noise: {cfg.NOISE_SAMPLES} copies; randomization: "
              f"{n_rand if cfg.DRAWS else 0} images × {cfg.DRAWS} draws ({', '.join(cfg.ORDERS)})")
    plain, forward = model_in(model, DTYPES[cfg.DTYPE], device)
    run = S.CheckRun(chosen, method_settings(cfg), plain, forward, s)
    keep, shard = set(indices[:cfg.FIGURE_IMAGES]), state.shard(indices)
    rows, figures, failed = [], [], []
    with tqdm(total=len(shard), desc="sanity", unit="img", disable=not dist.is_main,
              bar_format="{l_bar}{bar}| {n:.1f}/{total} img [{elapsed}<{remaining}]") as bar:
        done = 0
        for batch in loader(dataset, shard, cfg.BATCH_SIZE, cfg.NUM_WORKERS, device):
            b = Batch.of(batch, device, forward)
            failed += [(i, err) for i, _, err in b.failed()]
            if b.ok:
                found, shown = S.check_batch(run, S.Compared.of(b, cfg.TARGET, s), keep,
                                             lambda n: bar.update(min(n, done + len(b) - bar.n)))
                rows += found
                figures += shown
            done += len(b)
            bar.update(done - bar.n)  # whole images at the end of each batch (rounding, unreadable ones)
    return rows, figures, failed


def write_outputs(cfg, state, res):
    """Every file of the run from ``res`` (the rows, summary, verdicts, chance level, figures and failed images)."""
    run, steps = state.run, state.data["steps"]
    out, names, found, summary = run.path, res["names"], res["found"], res["summary"]
    write_csv(out / "per_image_sanity.csv", res["rows"], S.ROW_FIELDS)
    write_csv(out / "sanity.csv", summary, V.SUMMARY_FIELDS)
    write_json(out / "summary.json", summary_doc(cfg, res["rows"], summary, found, res["chance"], res["failed"],
                                                 len(state.data["indices"])))
    curves = []
    thresholds = {m: found[names[0]]["randomization"]["threshold"] for m in ("abs_spearman", "pixel_abs_spearman")}
    for order in cfg.ORDERS if cfg.DRAWS else ():
        name = f"curves_{R.TESTS[order]}.png"
        order_steps = [s for s, _ in R.order_states(state.data["model"], order)]
        plots.sanity_curves(summary, order_steps, thresholds if order != "independent" else {}, out / name,
                            test=R.TESTS[order], title=CURVE_TITLES[order])
        curves.append(name)
    written = write_figures(out, state.data["dataset"].preprocessing, names, steps, res["rows"], res["figures"])
    write_json(out / "config.json", {**cli.config_dict(cfg, identity=True), "device": str(state.device),
                                     "world_size": state.dist.world_size})
    run.finish(["per_image_sanity.csv", "sanity.csv", "summary.json", "config.json"] + curves + written)


CURVE_TITLES = {"top_down": "cascading randomization, head first (left) to everything randomized (right)",
                "bottom_up": "cascading randomization, embedding first (left) to everything randomized (right)",
                "independent": "one part randomized at a time, the rest intact"}


def write_figures(out, prep, names, steps, rows, figures):
    """``cascade_<idx>.png`` per figure image that got the randomization checks, and ``class_pairs.png``; returns
    the names written."""
    rho = {(r["method"], r["sample_idx"], r["test"], r["step"]): r["spearman"] for r in rows
           if r["draw"] in ("", 0) and "spearman" in r}
    written = []
    for f in figures:
        i = f["sample_idx"]
        if any(f["maps"][n].get(s) is None for n in names for s in steps):
            continue  # not among RANDOMIZATION_IMAGES
        image = prep.denormalize(f["image"]).permute(1, 2, 0).numpy()
        table = [(n, [f["maps"][n][c] for c in ["original", *steps]],
                  ["original"] + [f"{s} ρ={rho[(n, i, 'randomization', s)]:.2f}" for s in steps]) for n in names]
        name = f"cascade_{i:06d}.png"
        render.save_png(render.cascade_grid(image, f"#{i}: class {f['target']} explained; cascading randomization "
                                                   "head first (first weight draw), ρ of the patch sums to the "
                                                   "original map", table), out / name)
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


MEASURE_TEXT = {
    "spearman": "Spearman's rho of the per-patch sums", "spearman_of_abs": "Spearman's rho of the absolute per-patch "
    "sums", "abs_spearman": "|rho| of the per-patch sums (the patch level's verdict statistic)",
    "ssim": "SSIM of the max-normalised absolute maps (input resolution)",
    "pixel_spearman": "Spearman's rho of the pixels", "pixel_spearman_of_abs": "Spearman's rho of the absolute pixels "
    "(sMPRT's measure in Quantus)", "pixel_abs_spearman": "|rho| of the pixels (the pixel level's verdict statistic)",
    "sign_spearman": "rho * sign(f_c * f_c') of the per-patch sums (class check)",
    "pixel_sign_spearman": "the same of the pixels", "entropy_rise": "eMPRT: (H(randomized map) - H(map)) / H(map), "
    "H the entropy of a 100-bin histogram of the map's values",
    "undefined": "every measure of a constant map is undefined: NaN, counted in n_undefined, not in the mean"}


def summary_doc(cfg, rows, summary, found, chance, failed, n_sampled):
    """summary.json: counts, the settings, the verdicts, the chance level and every summary row."""
    noise = [r for r in rows if r["test"] == "noise"]
    per_image = {r["sample_idx"]: r for r in noise}  # the copies kept are the same for every method
    first = next(iter(found.values()))
    return {
        "n_images": n_sampled - len(failed), "n_failed": len(failed), "n_sampled": n_sampled,
        "n_randomized": len({r["sample_idx"] for r in rows if r["draw"] != ""}),
        "failed_images": [{"sample_idx": i, "error": e} for i, e in failed],
        "split": cfg.SPLIT, "checkpoint": str(cfg.CHECKPOINT_PATH), "dataset_root": str(cfg.DATASET_ROOT),
        "config": cli.config_dict(cfg), "measures": MEASURE_TEXT,
        "intervals": "95%: Student's t over images of the per-image values (class: the mean over the other classes); "
                     "randomization: a bootstrap over images and weight draws (both resampled)",
        "thresholds": {"class": first["class"]["threshold"], "randomization": first["randomization"]["threshold"],
                       "class_multiple": V.CLASS_MULTIPLE, "randomization_multiple": V.RANDOMIZATION_MULTIPLE},
        "chance": chance, "baselines": list(V.BASELINES),
        "verdicts": found,
        "noise": {"copies_per_image": cfg.NOISE_SAMPLES, "std": cfg.NOISE_STD,
                  "copies_skipped": sum(r["skipped"] for r in per_image.values()),
                  "images_without_kept_copy": sorted(i for i, r in per_image.items() if r["copies"] == 0)},
        "summary": summary,
    }


def print_report(cfg, state, rows, summary, found, chance, failed):
    print()
    for line in V.verdict_lines(found):
        print(line)
    print()
    for line in V.table_lines(summary):
        print(line)
    if chance["measured"] is not None:
        agree = "agrees" if chance["agrees"] else "DISAGREES (check the random baseline)"
        print(f"chance |ρ| for {chance['patches']} patches: {chance['analytic']:.3f} by the formula, "
              f"{chance['measured']:.3f} ± {chance['ci95']:.3f} measured by random: {agree}")
    noise = {r["sample_idx"]: r for r in rows if r["test"] == "noise"}
    if cfg.NOISE_SAMPLES:
        skipped = sum(r["skipped"] for r in noise.values())
        print(f"noise: {skipped} of {cfg.NOISE_SAMPLES * len(noise)} noisy copies skipped (their prediction changed)")
    undefined = sum(r["n_undefined"] for r in summary)
    if undefined:
        print(f"{undefined} similarity values are undefined (a constant map has no ranking): counted as n_undefined "
              "in sanity.csv, left out of the means")
    if failed:
        print(f"{len(failed)} images could not be read: {', '.join(str(i) for i, _ in failed[:10])}"
              + (" ..." if len(failed) > 10 else ""))
    print(f"Output directory: {state.run.path}")


if __name__ == "__main__":
    cli.run(main, globals(), help_notes=methods.help_text)

"""LRP heatmaps for a fine-tuned ViT: AttnLRP (LXT) + zennit's Gamma rule, batched, written to OUTPUT_DIR.

Several GPUs: torchrun --nproc_per_node=N scripts/test_vit_forward.py (each rank explains a shard; rank 0 writes the
JSON and the page).
"""
# --- configuration (each constant is also a flag: --preset aggressive, --num-samples 50, ...) ---
CHECKPOINT_PATH = "checkpoints/vit_cub_best.pt"  # written by scripts/train_vit_cub.py
DATASET_ROOT = "dataset/raw/CUB_200_2011"  # folder holding images.txt
SPLIT = "test"  # train, test or all
NUM_SAMPLES = 20  # images drawn with random.seed(SEED); 0 = the whole split
SEED = 42  # same seed, same images, whatever the gammas
# Gamma Rule Configuration
CONV_GAMMA = 1.0  # Gamma for the Conv2d layer (patch embedding)
LIN_GAMMA = 0.5  # Gamma for Linear layers (MLP + head; attention too only with GAMMA_ATTENTION)
LIN_GAMMA_SCHEDULE = ""  # per-block Linear γ instead of LIN_GAMMA, e.g. linear:0.5:0, geometric:1:0.01, 0.5/0.3/0.1/0
PRESET = ""  # baseline, conservative, balanced, aggressive, very_aggressive: sets both gammas (instead of the two)
GAMMA_FILE = ""  # best_gamma.json of scripts/sweep_gamma.py: its recommended γ (FILE#box_share: that metric's best)
GAMMA_FILE_FORCE = False  # use GAMMA_FILE's γ even if it failed the sweep's class check or was made for another model
GAMMA_ATTENTION = False  # route the attention projections through nn.Linear so that LIN_GAMMA reaches them
TARGET = "pred"  # explain the predicted class (pred) or the true class (label)
BATCH_SIZE = 32  # images explained at once
DTYPE = "fp32"  # fp32, or bf16 (a pure-bf16 copy of the model; about 2x faster on a GPU)
IMPL = "fused"  # fused (exact, faster) or zennit (the reference hooks); same maps
DEVICE = "auto"  # auto, cuda, cpu
NUM_WORKERS = 4  # JPEG decoding processes
OUTPUT_DIR = "results/lrp_samples"  # heatmaps, overlays, comparisons, raw tensors, JSON, index.html
COMPARE_PRESETS = []  # e.g. baseline,balanced,aggressive: adds a γ comparison grid per sample
COMPARE_METHODS = []  # any evaluate_lrp.py method (e.g. balanced,gae,gradcam,rollout): added to that grid
IG_STEPS = 32  # integrated_gradients in COMPARE_METHODS: points on the path from the baseline
SMOOTHGRAD_SAMPLES = 32  # smoothgrad in COMPARE_METHODS: noisy copies per image
ROWS_PER_PASS = 64  # at most this many images per forward (IG, SmoothGrad)
# ----------------------------------------------------------------------------------------------
import sys
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from vitlrp import cli, methods, render
from vitlrp import heatmaps as H
from vitlrp.batch import Batch
from vitlrp.checks import check_run_options, check_schedules_fit, method_settings
from vitlrp.errors import UserError
from vitlrp.explainer import Explainer
from vitlrp.fileio import write_json, write_text
from vitlrp.gamma import PRESETS, GammaSpec, schedule_text
from vitlrp.inputs import load_model_and_split, loader, sample_indices
from vitlrp.methods import lrp
from vitlrp.pages import write_heatmap_gallery
from vitlrp.scoring import empty_maps, nonfinite_error
from vitlrp.step import Step, run_step

GAMMA_SETTINGS = ("GAMMA_FILE", "PRESET", "CONV_GAMMA", "LIN_GAMMA", "LIN_GAMMA_SCHEDULE", "GAMMA_ATTENTION",
                  "GAMMA_FILE_FORCE", "CHECKPOINT_PATH")


def choose_gammas(cfg):
    """The :class:`~vitlrp.gamma.GammaChoice` of GAMMA_FILE, PRESET, or CONV_GAMMA with LIN_GAMMA or
    LIN_GAMMA_SCHEDULE (:meth:`GammaSpec.choose`: two of them setting the same γ at once are refused)."""
    given = {n.lower() for n in cli.given(cfg)}
    return GammaSpec.choose({n.lower(): getattr(cfg, n) for n in GAMMA_SETTINGS}, given)


def check_config(cfg):
    gammas = choose_gammas(cfg)
    if gammas.spec.attention_note():
        print(gammas.spec.attention_note("GAMMA_ATTENTION"), file=sys.stderr)
    check_run_options(cfg)
    unknown = [p for p in cfg.COMPARE_PRESETS if p not in PRESETS]
    if unknown:
        raise UserError(f"unknown preset(s) in COMPARE_PRESETS: {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    attn = "+attn" if cfg.GAMMA_ATTENTION else ""  # the presets of the grid get γ where the main map gets it
    grid = methods.parse_methods([p + attn for p in cfg.COMPARE_PRESETS] + list(cfg.COMPARE_METHODS),
                                 "COMPARE_PRESETS + COMPARE_METHODS")
    return gammas, grid


def main(cfg):
    choice, grid = check_config(cfg)
    step = Step(cfg.DEVICE, cfg.OUTPUT_DIR, "OUTPUT_DIR", H.OUTPUT_NAMES, ("lrp_results.json", "index.html"),
                shared_folder=True)  # no results or page of an older run meanwhile
    return run_step(step, lambda state: prepare(cfg, state, choice, grid),
                    lambda state: explain_all(cfg, state, choice, grid),
                    lambda state, parts: finish(cfg, state, choice, grid, parts))


def prepare(cfg, state, choice, grid):
    """The model, the split and the sampled images, checked before the folder is taken."""
    ckpt, model, dataset = load_model_and_split(cfg.CHECKPOINT_PATH, cfg.DATASET_ROOT, cfg.SPLIT, state.device)
    indices = sample_indices(len(dataset), cfg.NUM_SAMPLES, cfg.SEED, "num_samples", cfg.SPLIT)
    check_schedules_fit([(choice.lin_source(str.upper), choice.spec.lin), *lrp.schedules(grid)], model)
    return {"ckpt": ckpt, "model": model, "dataset": dataset, "indices": indices}


def finish(cfg, state, choice, grid, parts):
    """Write the JSON, the overview and the page of every rank's samples; the exit status."""
    indices = state.data["indices"]
    results = sorted((r for part in parts for r in part[0]), key=lambda r: indices.index(r["sample_idx"]))
    write_outputs(cfg, state, results, parts[0][1], choice, grid)
    print_summary(results, choice.spec, state.run.path)
    return 1 if any(r.get("error") for r in results) else 0


def explain_all(cfg, state, choice, grid):
    """Explain this rank's shard, write each sample's pictures and tensor; ``(records, coverage line)``."""
    ckpt, model, dataset, indices = (state.data[k] for k in ("ckpt", "model", "dataset", "indices"))
    dist, device, gammas = state.dist, state.device, choice.spec
    shard = state.shard(indices)
    source = choice.source(str.upper)
    if dist.is_main:
        print(f"Using device: {device}" + (f" x{dist.world_size} processes" if dist.enabled else ""))
        shown = source.replace("PRESET", "preset").replace("GAMMA_FILE", "from")
        print(f"Using Gamma rule: Conv2d gamma={gammas.conv}, Linear gamma={gammas.lin}"
              + (f" ({shown})" if shown.startswith(("preset", "from")) else ""))
        print(f"Dataset size: {len(dataset)}")
        print(f"Will generate LRP for {len(indices)} samples")
    with ExitStack() as stack:
        explainer = stack.enter_context(Explainer(model, gammas, method_settings(cfg)))
        runners = {caption(m, cfg): stack.enter_context(m.create(model, method_settings(cfg))) for m in grid}
        coverage = H.coverage_line(explainer)
        if dist.is_main:
            print("Model loaded successfully.")
            print(coverage)
        run_info = {"gamma_params": {"conv_gamma": gammas.conv, "lin_gamma": gammas.lin},
                    "gamma_source": source, "target_mode": cfg.TARGET,
                    "preset": cfg.PRESET if choice.settings == ("preset",) else "", "dtype": cfg.DTYPE,
                    "impl": cfg.IMPL, "gamma_attention": cfg.GAMMA_ATTENTION,
                    "gamma_layers": list(explainer.gamma_layers()), "preprocessing": dataset.preprocessing.to_dict(),
                    "checkpoint": str(Path(cfg.CHECKPOINT_PATH).resolve())}  # inspect may run from another folder
        results = []
        batches = loader(dataset, shard, cfg.BATCH_SIZE, cfg.NUM_WORKERS, device)
        for batch in tqdm(batches, desc="explain", unit="batch", leave=False, disable=len(shard) <= cfg.BATCH_SIZE):
            b = Batch.of(batch, device)
            maps = H.explain_batch(b, explainer, runners, cfg.TARGET)
            results += sample_records(cfg, b, maps, ckpt["class_names"], dataset, run_info,
                                      done=(len(results), len(shard)))
    return results, coverage


def caption(method, cfg):
    """The grid's caption of a method (a preset shows its γ pair)."""
    preset = method.name.removesuffix("+attn")
    if preset in cfg.COMPARE_PRESETS and method.name not in cfg.COMPARE_METHODS:
        spec = GammaSpec.preset(preset)
        return f"{preset} ({spec.conv:g}/{spec.lin:g})"
    return method.name


def sample_records(cfg, b, maps, names, dataset, run_info, done):
    """Write the pictures and the tensor of each sample of a :class:`~vitlrp.batch.Batch`; its records, one console
    line each that carries the seed's lines (``done``: samples done before this batch, and of the shard)."""
    out, raw, gammas = Path(cfg.OUTPUT_DIR), b.raw, run_info["gamma_params"]
    rgb = dataset.preprocessing.denormalize(raw["image"]).permute(0, 2, 3, 1).numpy()
    position = {row: k for k, row in enumerate(b.ok)}
    empty = empty_maps(maps["relevance"]).tolist() if maps else []
    records = []
    for row in range(len(b)):
        idx, label = int(raw["index"][row]), int(raw["label"][row])
        sample = {"sample_idx": idx, "img_path": str(Path(dataset.image_path(idx)).resolve()), "label": label}
        head = f"[{done[0] + row + 1}/{done[1]}] Processing sample_idx={idx} ..."
        if row not in position:
            records.append(H.failed_record(sample, names, raw["error"][row]))
            print(f"{head} ✗ Skipped: {raw['error'][row]}")
            continue
        k = position[row]
        logits, target = maps["logits"][k], int(maps["target"][k])
        rel, pred = maps["relevance"][k].cpu(), int(logits.argmax())
        bad = nonfinite_error(rel, logits)
        if bad:  # e.g. NaN weights or an overflow: no picture of it, the run fails
            records.append(H.failed_record(sample, names, bad, target))
            print(f"{head} ✗ Failed: {bad}")
            continue
        probs = logits.softmax(0)
        title = (f"#{idx}  true: {names[label]}  |  pred: {names[pred]} ({probs[pred]:.1%})  |  "
                 f"γ conv {gammas['conv_gamma']:g}, lin {schedule_text(gammas['lin_gamma'])}")
        files = H.write_sample(out, idx, rgb[row], rel, title, target)
        if maps["grid"]:
            files["gamma_grid"], _ = H.write_grid(out, idx, rgb[row], {c: m[k] for c, m in maps["grid"].items()},
                                                  f"#{idx}  {names[label]}  →  class {target}")
        records.append({**H.sample_record(sample, names, target, logits, rel, files, run_info),
                        "empty_map": empty[k]})
        print(f"{head} {'⚠' if empty[k] else '✓'} Target class: {target} (label: {label}) "
              f"✓ Saved: {files['overlay']}, {files['comparison']}" + (f" {H.EMPTY_NOTE}" if empty[k] else ""))
    return records


def write_outputs(cfg, state, results, coverage, choice, grid):
    out, prep = state.run.path, state.data["dataset"].preprocessing
    grids = [out / r["files"]["gamma_grid"] for r in results if "gamma_grid" in r.get("files", {})]
    if grids:
        render.save_png(render.stack([render.load_png(p) for p in grids]), out / "lrp_gamma_grid_overview.png")
    write_text(out / "lrp_image_paths.txt", "".join(f"{r['img_path']}\n" for r in results if not r.get("error")))
    layers = next((r["gamma_layers"] for r in results if "gamma_layers" in r), [])
    write_json(out / "config.json", {**cli.config_dict(cfg, identity=True), "conv_gamma": choice.spec.conv,
                                     "lin_gamma": choice.spec.lin, "gamma_source": choice.source(str.upper),
                                     "gamma_coverage": coverage, "gamma_layers": layers,
                                     "preprocessing": prep.to_dict(), "device": str(state.device)})
    write_json(out / "lrp_results.json", results)
    write_heatmap_gallery(out, results, cli.config_dict(cfg), coverage, grid_overview=bool(grids))
    state.run.finish({f for r in results for f in r["files"].values()} | {"lrp_image_paths.txt", "config.json",
               "lrp_results.json", "index.html"} | ({"lrp_gamma_grid_overview.png"} if grids else set()))


def print_summary(results, gammas, out):
    failed = sum(1 for r in results if r.get("error"))
    unreadable = sum(1 for r in results if r.get("error") and r["target_class"] is None)
    kinds = [f"{n} {what}" for n, what in ((unreadable, "unreadable"), (failed - unreadable, "non-finite map"))
             if n]
    print("\n" + "=" * 60)
    print(f"Completed! Generated {len(results) - failed}/{len(results)} samples"
          + (f" ({', '.join(kinds)}, see lrp_results.json)" if failed else ""))
    empty = H.empty_line([r for r in results if r.get("empty_map")], len(results) - failed)
    if empty:
        print(empty)
    print(f"Gamma parameters: Conv2d={gammas.conv}, Linear={gammas.lin}")
    print(f"Output directory: {out}")


if __name__ == "__main__":
    cli.run(main, globals(), help_notes=methods.help_text)

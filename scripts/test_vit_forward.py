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
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from vitlrp import cli, methods, render
from vitlrp import heatmaps as H
from vitlrp.checks import check_run_options, check_schedules_fit, method_options
from vitlrp.errors import UserError
from vitlrp.explain import Explainer
from vitlrp.fileio import write_json, write_text
from vitlrp.gamma import PRESETS, check_gamma, lin_gamma_value, schedule_text
from vitlrp.inputs import load_model_and_split, loader, sample_indices
from vitlrp.methods import lrp
from vitlrp.pages import write_heatmap_gallery
from vitlrp.runfolder import RunFolder
from vitlrp.runtime import DTYPES, Distributed, resolve_device
from vitlrp.scoring import nonfinite_error
from vitlrp.sweep import read_gamma_file


def choose_gammas(cfg):
    """``(conv γ, Linear γ, where they came from)``: GAMMA_FILE, PRESET, or CONV_GAMMA with LIN_GAMMA or
    LIN_GAMMA_SCHEDULE. Two of them setting the same γ at once is refused (one line), never resolved silently."""
    given = cli.given(cfg)
    both = [f"{n} {getattr(cfg, n)}" for n in ("GAMMA_FILE", "PRESET") if getattr(cfg, n)]
    conv = [f"--conv-gamma {cfg.CONV_GAMMA}"] if "CONV_GAMMA" in given else []
    lin = ([f"--lin-gamma {cfg.LIN_GAMMA}"] if "LIN_GAMMA" in given else []) + (
        [f"LIN_GAMMA_SCHEDULE {cfg.LIN_GAMMA_SCHEDULE}"] if cfg.LIN_GAMMA_SCHEDULE else [])
    for clash in (both + conv + lin if both else []), lin:
        if len(clash) > 1:
            raise UserError(f"{' and '.join(clash[:2])} both set the gammas: keep one of them (PRESET and "
                            "GAMMA_FILE set both gammas; LIN_GAMMA_SCHEDULE replaces LIN_GAMMA)")
    if cfg.GAMMA_FILE:
        return (*read_gamma_file(cfg.GAMMA_FILE), f"GAMMA_FILE {cfg.GAMMA_FILE}")
    if cfg.PRESET:
        if cfg.PRESET not in PRESETS:
            raise UserError(f"unknown PRESET {cfg.PRESET!r}: choose one of {', '.join(PRESETS)} or leave it empty")
        return (*PRESETS[cfg.PRESET], f"PRESET {cfg.PRESET}")
    conv = check_gamma("CONV_GAMMA", cfg.CONV_GAMMA)
    if cfg.LIN_GAMMA_SCHEDULE:
        return conv, lin_gamma_value(cfg.LIN_GAMMA_SCHEDULE, "LIN_GAMMA_SCHEDULE"), "CONV_GAMMA, LIN_GAMMA_SCHEDULE"
    return conv, check_gamma("LIN_GAMMA", cfg.LIN_GAMMA), "CONV_GAMMA, LIN_GAMMA"


def lin_source(source):
    """What set the Linear γ, for messages: LIN_GAMMA, LIN_GAMMA_SCHEDULE, or the preset's or file's Linear γ."""
    if source.startswith(("PRESET", "GAMMA_FILE")):
        return f"the Linear γ of {source}"
    return source.split(", ")[-1]


def check_config(cfg):
    gammas = choose_gammas(cfg)
    check_run_options(cfg)
    unknown = [p for p in cfg.COMPARE_PRESETS if p not in PRESETS]
    if unknown:
        raise UserError(f"unknown preset(s) in COMPARE_PRESETS: {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    attn = "+attn" if cfg.GAMMA_ATTENTION else ""  # the presets of the grid get γ where the main map gets it
    grid = methods.parse_methods([p + attn for p in cfg.COMPARE_PRESETS] + list(cfg.COMPARE_METHODS),
                                 "COMPARE_PRESETS + COMPARE_METHODS")
    return gammas, grid


def main(cfg):
    (conv_gamma, lin_gamma, source), grid = check_config(cfg)
    dist = Distributed()
    device = dist.init(resolve_device(cfg.DEVICE))
    ckpt, model, dataset = load_model_and_split(cfg.CHECKPOINT_PATH, cfg.DATASET_ROOT, cfg.SPLIT, device)
    indices = sample_indices(len(dataset), cfg.NUM_SAMPLES, cfg.SEED, split=cfg.SPLIT)
    check_schedules_fit([(lin_source(source), lin_gamma), *lrp.schedules(grid)], model)
    with ExitStack() as folder:  # rank 0 holds the folder; no results or page of an older run meanwhile
        run = folder.enter_context(RunFolder(cfg.OUTPUT_DIR, "OUTPUT_DIR", H.OUTPUT_NAMES,
                                             clear_first=("lrp_results.json", "index.html"))) if dist.is_main else None
        dist.barrier()  # the other ranks write into the folder only once rank 0 has taken it
        gammas = {"conv_gamma": conv_gamma, "lin_gamma": lin_gamma, "source": source}
        results, coverage = explain_all(cfg, dist, ckpt, model, dataset, indices, device, gammas, grid)
        gathered = [r for part in dist.all_gather_objects(results) for r in part]
        if dist.is_main:
            results = sorted(gathered, key=lambda r: indices.index(r["sample_idx"]))
            write_outputs(cfg, run, results, coverage, gammas, dataset.preprocessing, device, grid)
            print_summary(results, gammas, run.path)
    dist.close()
    return 1 if dist.is_main and any(r.get("error") for r in results) else 0


def explain_all(cfg, dist, ckpt, model, dataset, indices, device, gammas, grid):
    """Explain this rank's shard, write each sample's pictures and tensor; ``(records, coverage line)``."""
    out, shard = Path(cfg.OUTPUT_DIR), dist.shard(indices)
    names, dtype = ckpt["class_names"], DTYPES[cfg.DTYPE]
    if dist.is_main:
        print(f"Using device: {device}" + (f" x{dist.world_size} processes" if dist.enabled else ""))
        source = gammas["source"].replace("PRESET", "preset").replace("GAMMA_FILE", "from")
        print(f"Using Gamma rule: Conv2d gamma={gammas['conv_gamma']}, Linear gamma={gammas['lin_gamma']}"
              + (f" ({source})" if source.startswith(("preset", "from")) else ""))
        print(f"Dataset size: {len(dataset)}")
        print(f"Will generate LRP for {len(indices)} samples")
    with ExitStack() as stack:
        explainer = stack.enter_context(Explainer(model, gammas["conv_gamma"], gammas["lin_gamma"],
                                                  cfg.GAMMA_ATTENTION, dtype, cfg.IMPL))
        runners = {caption(m, cfg): stack.enter_context(methods.MethodRunner(m, model, method_options(cfg)))
                   for m in grid}
        coverage = H.coverage_line(explainer)
        if dist.is_main:
            print("Model loaded successfully.")
            print(coverage)
        run_info = {"gamma_params": {k: gammas[k] for k in ("conv_gamma", "lin_gamma")},
                    "gamma_source": gammas["source"], "target_mode": cfg.TARGET,
                    "preset": cfg.PRESET if gammas["source"].startswith("PRESET") else "", "dtype": cfg.DTYPE,
                    "impl": cfg.IMPL, "gamma_attention": cfg.GAMMA_ATTENTION,
                    "gamma_layers": list(explainer.gamma_layers()), "preprocessing": dataset.preprocessing.to_dict(),
                    "checkpoint": str(Path(cfg.CHECKPOINT_PATH).resolve())}  # inspect may run from another folder
        results = []
        batches = loader(dataset, shard, cfg.BATCH_SIZE, cfg.NUM_WORKERS, device)
        for batch in tqdm(batches, desc="explain", unit="batch", leave=False, disable=len(shard) <= cfg.BATCH_SIZE):
            ids = [int(batch["index"][i]) for i, e in enumerate(batch["error"]) if not e]
            maps = H.explain_batch(batch, explainer, runners, cfg.TARGET, device, ids)
            results += sample_records(cfg, out, batch, maps, dataset, names, gammas, run_info,
                                      done=len(results), total=len(shard))
    return results, coverage


def caption(method, cfg):
    """The grid's caption of a method (a preset shows its γ pair)."""
    preset = method.name.removesuffix("+attn")
    if preset in cfg.COMPARE_PRESETS and method.name not in cfg.COMPARE_METHODS:
        return f"{preset} ({PRESETS[preset][0]:g}/{PRESETS[preset][1]:g})"
    return method.name


def sample_records(cfg, out, batch, maps, dataset, names, gammas, run_info, done, total):
    """Write the pictures and the tensor of each sample of a batch; its records, printed as the seed prints them."""
    rgb = dataset.preprocessing.denormalize(batch["image"]).permute(0, 2, 3, 1).numpy()
    position = {row: k for k, row in enumerate(maps["ok"])}
    records = []
    for row in range(len(batch["label"])):
        idx, label = int(batch["index"][row]), int(batch["label"][row])
        img_path = str(Path(dataset.image_path(idx)).resolve())
        print(f"\n[{done + row + 1}/{total}] Processing sample_idx={idx} ...")
        if row not in position:
            records.append(H.failed_record(idx, img_path, label, names, batch["error"][row]))
            print(f"  ✗ Skipped: {batch['error'][row]}")
            continue
        k = position[row]
        logits, target = maps["logits"][k], int(maps["target"][k])
        rel, pred = maps["relevance"][k].cpu(), int(logits.argmax())
        bad = nonfinite_error(rel, logits)
        if bad:  # e.g. NaN weights or an overflow: no picture of it, the run fails
            records.append(H.failed_record(idx, img_path, label, names, bad, target))
            print(f"  ✗ Failed: {bad}")
            continue
        probs = logits.softmax(0)
        title = (f"#{idx}  true: {names[label]}  |  pred: {names[pred]} ({probs[pred]:.1%})  |  "
                 f"γ conv {gammas['conv_gamma']:g}, lin {schedule_text(gammas['lin_gamma'])}")
        files = H.write_sample(out, idx, rgb[row], rel, title, target)
        if maps["grid"]:
            files["gamma_grid"], _ = H.write_grid(out, idx, rgb[row], {c: m[k] for c, m in maps["grid"].items()},
                                                  f"#{idx}  {names[label]}  →  class {target}")
        entry = H.sample_record(idx, img_path, label, names, target, probs, logits, rel, files, run_info)
        print(f"  ✓ Target class: {target} (label: {label})")
        print(f"  ✓ Saved: {files['overlay']}")
        print(f"  ✓ Saved: {files['comparison']}")
        print(f"  ✓ Relevance sum {entry['relevance_sum']:.4g} for logit {entry['explained_logit']:.4g}")
        records.append(entry)
    return records


def write_outputs(cfg, run, results, coverage, gammas, prep, device, grid):
    out = run.path
    grids = [out / r["files"]["gamma_grid"] for r in results if "gamma_grid" in r.get("files", {})]
    if grids:
        render.save_png(render.stack([render.load_png(p) for p in grids]), out / "lrp_gamma_grid_overview.png")
    write_text(out / "lrp_image_paths.txt", "".join(f"{r['img_path']}\n" for r in results if not r.get("error")))
    layers = next((r["gamma_layers"] for r in results if "gamma_layers" in r), [])
    write_json(out / "config.json", {**cli.config_dict(cfg, identity=True), "conv_gamma": gammas["conv_gamma"],
                                     "lin_gamma": gammas["lin_gamma"], "gamma_source": gammas["source"],
                                     "gamma_coverage": coverage, "gamma_layers": layers,
                                     "preprocessing": prep.to_dict(), "device": str(device)})
    write_json(out / "lrp_results.json", results)
    write_heatmap_gallery(out, results, cli.config_dict(cfg), coverage, grid_overview=bool(grids))
    run.finish({f for r in results for f in r["files"].values()} | {"lrp_image_paths.txt", "config.json",
               "lrp_results.json", "index.html"} | ({"lrp_gamma_grid_overview.png"} if grids else set()))


def print_summary(results, gammas, out):
    failed = sum(1 for r in results if r.get("error"))
    unreadable = sum(1 for r in results if r.get("error") and r["target_class"] is None)
    kinds = [f"{n} {what}" for n, what in ((unreadable, "unreadable"), (failed - unreadable, "non-finite map"))
             if n]
    print("\n" + "=" * 60)
    print(f"Completed! Generated {len(results) - failed}/{len(results)} samples"
          + (f" ({', '.join(kinds)}, see lrp_results.json)" if failed else ""))
    print(f"Gamma parameters: Conv2d={gammas['conv_gamma']}, Linear={gammas['lin_gamma']}")
    print(f"Output directory: {out}")


if __name__ == "__main__":
    cli.run(main, globals(), help_notes=methods.help_text)

"""LRP heatmaps for a fine-tuned ViT: AttnLRP (LXT) + zennit's Gamma rule, batched, written to OUTPUT_DIR."""
# --- configuration (each constant is also a flag: --preset aggressive, --num-samples 50, ...) ---
CHECKPOINT_PATH = "checkpoints/vit_cub_best.pt"  # written by scripts/train_vit_cub.py
DATASET_ROOT = "dataset/raw/CUB_200_2011"  # folder holding images.txt
SPLIT = "test"  # train, test or all
NUM_SAMPLES = 20  # images drawn with random.seed(SEED); 0 = the whole split
SEED = 42  # same seed, same images, whatever the gammas
# Gamma Rule Configuration
CONV_GAMMA = 1.0  # Gamma for the Conv2d layer (patch embedding)
LIN_GAMMA = 0.5  # Gamma for Linear layers (MLP + head; attention too only with GAMMA_ATTENTION)
LIN_GAMMA_SCHEDULE = ""  # per-block Linear γ, e.g. linear:0.5:0, geometric:1:0.01, 0.5/0.3/0.1/0 (overrides LIN_GAMMA)
PRESET = ""  # baseline, conservative, balanced, aggressive, very_aggressive; overrides the two gammas
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
# ----------------------------------------------------------------------------------------------
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from vitlrp import cli, render
from vitlrp.errors import UserError
from vitlrp.explain import DTYPES, PRESETS, Explainer, lin_gamma_value, resolve_gammas, schedule_text
from vitlrp.fileio import write_json, write_text
from vitlrp.gallery import write_heatmap_gallery
from vitlrp.heatmaps import OUTPUT_NAMES, failed_record, sample_record, write_grid, write_sample
from vitlrp.pipeline import (
    MethodRunner,
    check_run_options,
    check_schedules_fit,
    load_model_and_split,
    loader,
    lrp_schedules,
    nonfinite_error,
    parse_methods,
    sample_indices,
)
from vitlrp.runfolder import RunFolder
from vitlrp.runtime import resolve_device
from vitlrp.sweep import read_gamma_file


def check_config(cfg):
    gammas = resolve_gammas(cfg.PRESET, cfg.CONV_GAMMA, cfg.LIN_GAMMA, names=("PRESET", "CONV_GAMMA", "LIN_GAMMA"))
    if cfg.LIN_GAMMA_SCHEDULE and not cfg.PRESET:
        gammas = gammas[0], lin_gamma_value(cfg.LIN_GAMMA_SCHEDULE, "LIN_GAMMA_SCHEDULE")
    if cfg.GAMMA_FILE:
        gammas = read_gamma_file(cfg.GAMMA_FILE)
    check_run_options(cfg)
    unknown = [p for p in cfg.COMPARE_PRESETS if p not in PRESETS]
    if unknown:
        raise UserError(f"unknown preset(s) in COMPARE_PRESETS: {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    return gammas, parse_methods(cfg.COMPARE_METHODS, "COMPARE_METHODS")


def main(cfg):
    (conv_gamma, lin_gamma), compare_methods = check_config(cfg)
    device = resolve_device(cfg.DEVICE)
    out = Path(cfg.OUTPUT_DIR)
    ckpt, model, dataset = load_model_and_split(cfg.CHECKPOINT_PATH, cfg.DATASET_ROOT, cfg.SPLIT, device)
    indices = sample_indices(len(dataset), cfg.NUM_SAMPLES, cfg.SEED, split=cfg.SPLIT)
    check_schedules_fit([("the Linear γ" + (f" of {cfg.GAMMA_FILE}" if cfg.GAMMA_FILE else ""), lin_gamma),
                         *lrp_schedules(compare_methods)], model)
    # the folder is complete again only when this run ends: no results or page of an older run meanwhile
    with RunFolder(out, "OUTPUT_DIR", OUTPUT_NAMES, clear_first=("lrp_results.json", "index.html")) as run:
        return explain_all(cfg, run, ckpt, model, dataset, indices, device, conv_gamma, lin_gamma, compare_methods)


def explain_all(cfg, run, ckpt, model, dataset, indices, device, conv_gamma, lin_gamma, compare_methods):
    out = run.path
    names, prep = ckpt["class_names"], dataset.preprocessing
    dtype = DTYPES[cfg.DTYPE]
    print(f"Using device: {device}")
    print(f"Using Gamma rule: Conv2d gamma={conv_gamma}, Linear gamma={lin_gamma}"
          + (f" (from {cfg.GAMMA_FILE})" if cfg.GAMMA_FILE else f" (preset {cfg.PRESET})" if cfg.PRESET else ""))
    print(f"Dataset size: {len(dataset)}")
    print(f"Will generate LRP for {len(indices)} samples")
    with ExitStack() as stack:
        explainer = stack.enter_context(Explainer(model, conv_gamma, lin_gamma, cfg.GAMMA_ATTENTION, dtype, cfg.IMPL))
        grid = {p: stack.enter_context(Explainer(model, *PRESETS[p], cfg.GAMMA_ATTENTION, dtype, cfg.IMPL))
                for p in cfg.COMPARE_PRESETS}
        grid.update({m.name: stack.enter_context(MethodRunner(m, model, dtype, cfg.IMPL, seed=cfg.SEED))
                     for m in compare_methods if m.name not in grid})
        captions = {p: f"{p} ({PRESETS[p][0]:g}/{PRESETS[p][1]:g})" if p in cfg.COMPARE_PRESETS else p for p in grid}
        print("Model loaded successfully.")
        coverage = explainer.describe()
        gamma_layers = list(explainer.gamma_layers())
        print(coverage)
        results, grid_rows, done = [], [], 0
        run_info = {"gamma_params": {"conv_gamma": conv_gamma, "lin_gamma": lin_gamma}, "target_mode": cfg.TARGET,
                    "preset": cfg.PRESET, "dtype": cfg.DTYPE, "impl": cfg.IMPL, "gamma_attention": cfg.GAMMA_ATTENTION,
                    "gamma_layers": gamma_layers, "preprocessing": prep.to_dict(),
                    "checkpoint": str(Path(cfg.CHECKPOINT_PATH).resolve())}  # inspect may run from another folder
        for batch in tqdm(loader(dataset, indices, cfg.BATCH_SIZE, cfg.NUM_WORKERS, device), desc="explain",
                          unit="batch", leave=False, disable=len(indices) <= cfg.BATCH_SIZE):
            ok = [i for i, err in enumerate(batch["error"]) if not err]
            images = batch["image"][ok]
            labels = batch["label"][ok].to(device)
            maps, grid_maps = {}, {}
            if ok:
                logits, relevance = explainer(images, None if cfg.TARGET == "pred" else labels)
                target = logits.argmax(1) if cfg.TARGET == "pred" else labels
                grid_maps = {p: ex(images, target)[1] for p, ex in grid.items()}
                probs = logits.softmax(1)
                maps = {row: k for k, row in enumerate(ok)}
            rgb = prep.denormalize(batch["image"]).permute(0, 2, 3, 1).numpy()
            for row in range(len(batch["label"])):
                done += 1
                idx = int(batch["index"][row])
                label = int(batch["label"][row])
                img_path = str(Path(dataset.image_path(idx)).resolve())
                print(f"\n[{done}/{len(indices)}] Processing sample_idx={idx} ...")
                if row not in maps:
                    results.append(failed_record(idx, img_path, label, names, batch["error"][row]))
                    print(f"  ✗ Skipped: {batch['error'][row]}")
                    continue
                k = maps[row]
                tgt, pred = int(target[k]), int(logits[k].argmax())
                rel = relevance[k].cpu()
                bad = nonfinite_error(rel, logits[k])
                if bad:  # e.g. NaN weights or an overflow: no picture of it, the run fails
                    results.append(failed_record(idx, img_path, label, names, bad, tgt))
                    print(f"  ✗ Failed: {bad}")
                    continue
                title = (f"#{idx}  true: {names[label]}  |  pred: {names[pred]} ({probs[k, pred]:.1%})  |  "
                         f"γ conv {conv_gamma:g}, lin {schedule_text(lin_gamma)}")
                files = write_sample(out, idx, rgb[row], rel, title, tgt)
                if grid_maps:
                    files["gamma_grid"], picture = write_grid(
                        out, idx, rgb[row],
                        {captions[p]: grid_maps[p][k] for p in grid},
                        f"#{idx}  {names[label]}  →  class {tgt}")
                    grid_rows.append(picture)
                entry = sample_record(idx, img_path, label, names, tgt, probs[k], logits[k], rel, files, run_info)
                explained = entry["explained_logit"]
                print(f"  ✓ Target class: {tgt} (label: {label})")
                print(f"  ✓ Saved: {files['overlay']}")
                print(f"  ✓ Saved: {files['comparison']}")
                print(f"  ✓ Relevance sum {entry['relevance_sum']:.4g} for logit {explained:.4g}")
                results.append(entry)

    if grid_rows:
        render.save_png(render.stack(grid_rows), out / "lrp_gamma_grid_overview.png")
    write_text(out / "lrp_image_paths.txt", "".join(f"{r['img_path']}\n" for r in results if not r.get("error")))
    write_json(out / "config.json", {**cli.config_dict(cfg), "conv_gamma": conv_gamma, "lin_gamma": lin_gamma,
                                     "gamma_coverage": coverage, "gamma_layers": gamma_layers,
                                     "preprocessing": prep.to_dict(), "device": str(device)})
    write_json(out / "lrp_results.json", results)
    write_heatmap_gallery(out, results, cli.config_dict(cfg), coverage, grid_overview=bool(grid_rows))
    run.finish({f for r in results for f in r["files"].values()} | {"lrp_image_paths.txt", "config.json",
               "lrp_results.json", "index.html"} | ({"lrp_gamma_grid_overview.png"} if grid_rows else set()))
    failed = sum(1 for r in results if r.get("error"))
    unreadable = sum(1 for r in results if r.get("error") and r["target_class"] is None)
    kinds = [f"{n} {what}" for n, what in ((unreadable, "unreadable"), (failed - unreadable, "non-finite map"))
             if n]
    print("\n" + "=" * 60)
    print(f"Completed! Generated {len(results) - failed}/{len(results)} samples"
          + (f" ({', '.join(kinds)}, see lrp_results.json)" if failed else ""))
    print(f"Gamma parameters: Conv2d={conv_gamma}, Linear={lin_gamma}")
    print(f"Output directory: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main, globals())

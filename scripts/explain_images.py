"""Explain your own images: a checkpoint plus JPEG or PNG files, or folders of them (no CUB layout, no labels).

For each image: the model's top-k classes (names from the checkpoint) and the map of its top class by one method,
written as scripts/test_vit_forward.py writes its samples (heatmap, overlay, comparison, raw relevance tensor), a
record in explanations.json, and a page of them all, index.html. A file that is not an image is one line; the others
go on, and the run ends with exit status 1.

Several GPUs: torchrun --nproc_per_node=N scripts/explain_images.py (each rank explains a shard; rank 0 writes the
JSON and the page).
"""
# --- configuration (each constant is also a flag: --images a.jpg,photos/ --method gradcam, ...) ---
CHECKPOINT_PATH = "checkpoints/vit_cub_best.pt"  # written by scripts/train_vit_cub.py
IMAGES = []  # JPEG/PNG files and folders, comma-separated (a folder: its .jpg/.jpeg/.png files at any depth)
METHOD = "balanced"  # a preset, gamma:<conv>:<lin> (maybe +attn), or any other method (gradcam, gae, ...; see --help)
GAMMA_FILE = ""  # best_gamma.json of scripts/sweep_gamma.py: its recommended γ instead of METHOD (FILE#metric: a best)
TOP_K = 5  # classes listed per image
SEED = 0  # the random draws of a method that makes some (SmoothGrad's noise, random maps), per image
IG_STEPS = 32  # integrated_gradients: points on the path from the baseline (Gauss-Legendre rule)
SMOOTHGRAD_SAMPLES = 32  # smoothgrad: noisy copies per image
ROWS_PER_PASS = 64  # at most this many images per forward (IG, SmoothGrad)
BATCH_SIZE = 16  # images explained at once
DTYPE = "fp32"  # fp32, or bf16 (a pure-bf16 copy of the model)
IMPL = "fused"  # fused or zennit (same maps; γ methods only)
DEVICE = "auto"  # auto, cuda, cpu
NUM_WORKERS = 2  # decoding processes
OUTPUT_DIR = "results/explained"  # heatmaps, overlays, comparisons, raw tensors, explanations.json, index.html
# ----------------------------------------------------------------------------------------------
from pathlib import Path

import vitlrp
from vitlrp import cli, heatmaps, methods
from vitlrp.batch import Batch
from vitlrp.checks import check_run_options, check_schedules_fit, method_settings
from vitlrp.errors import UserError
from vitlrp.fileio import write_json
from vitlrp.inputs import ImageFiles, image_files, loader
from vitlrp.methods import lrp
from vitlrp.pages import write_explained_gallery
from vitlrp.predict import top_classes
from vitlrp.scoring import empty_maps, nonfinite_error
from vitlrp.step import Step, run_step

# every name this script writes into OUTPUT_DIR (a finished run removes older runs' files of these names only)
OUTPUT_NAMES = ("lrp_*.png", "lrp_*.pt", "explanations.json", "config.json", "index.html")


def check_config(cfg):
    """The method (METHOD, or GAMMA_FILE's γ) and the image files, with every setting checked before any work."""
    if cfg.GAMMA_FILE and "METHOD" in cli.given(cfg):
        raise UserError("METHOD and GAMMA_FILE both choose the method: keep one of them")
    if cfg.TOP_K < 1:
        raise UserError(f"TOP_K must be at least 1, got {cfg.TOP_K}")
    check_run_options(cfg)
    name = vitlrp.GammaSpec.from_file(cfg.GAMMA_FILE).name if cfg.GAMMA_FILE else cfg.METHOD
    (chosen,) = methods.parse_methods([name], "METHOD")
    return chosen, image_files(cfg.IMAGES, "IMAGES", skip=cfg.OUTPUT_DIR)


def main(cfg):
    chosen, files = check_config(cfg)
    step = Step(cfg.DEVICE, cfg.OUTPUT_DIR, "OUTPUT_DIR", OUTPUT_NAMES, ("explanations.json", "index.html"),
                shared_folder=True)  # no records or page of an older run meanwhile
    return run_step(step, lambda state: prepare(cfg, state, chosen),
                    lambda state: explain(cfg, state, chosen, files),
                    lambda state, parts: finish(cfg, state, chosen, files, parts))


def prepare(cfg, state, chosen):
    """The checkpoint's model (on the device), checked against the method before the folder is taken."""
    ckpt = vitlrp.load_checkpoint(cfg.CHECKPOINT_PATH)
    check_schedules_fit(lrp.schedules([chosen]), ckpt.model)
    return ckpt._replace(model=ckpt.model.to(state.device))


def explain(cfg, state, chosen, files):
    """This rank's share of the images: each one's files written and its record (a list, in image order)."""
    ckpt, dataset = state.data, ImageFiles(files, state.data.preprocessing)
    shard = state.shard(range(len(files)))
    if state.is_main:
        print(f"Explaining {len(files)} image(s) with {chosen.name} (the top class of each) on {state.device}"
              + (f" x{state.dist.world_size} processes" if state.dist.enabled else ""))
    records = []
    with chosen.create(ckpt.model, method_settings(cfg)) as method:
        for batch in loader(dataset, shard, cfg.BATCH_SIZE, cfg.NUM_WORKERS, state.device):
            b = Batch.of(batch, state.device)
            r = method.attribute(b.images, None, b.ids) if b.ok else None
            for row in range(len(b)):
                records.append(image_record(cfg, b, row, r, dataset, ckpt.class_names, chosen.name))
                print(f"[{len(records)}/{len(shard)}] {records[-1]['console']}")
    return records


def image_record(cfg, b, row, r, dataset, names, method):
    """Write one image's pictures and tensor; its record (with its console line under ``console``)."""
    k = int(b.raw["index"][row])
    path = dataset.image_path(k)
    record = {"image": k, "name": path.name, "img_path": str(path.resolve()), "method": method}
    if row not in b.ok:
        return {**record, "error": b.raw["error"][row], "files": {}, "console": f"{path}: ✗ {b.raw['error'][row]}"}
    i = b.ok.index(row)
    logits, target, rel = r.logits[i], int(r.target[i]), r.relevance[i].cpu()
    bad = nonfinite_error(rel, logits)
    if bad:
        return {**record, "error": bad, "files": {}, "console": f"{path}: ✗ {bad}"}
    top = top_classes(logits, names, cfg.TOP_K)
    rgb = dataset.preprocessing.denormalize(b.raw["image"][row]).permute(1, 2, 0).numpy()
    title = f"{path.name}  |  pred: {top[0]['name']} ({top[0]['prob']:.1%})  |  {method}"
    files = heatmaps.write_sample(Path(cfg.OUTPUT_DIR), k, rgb, rel, title, target)
    empty = bool(empty_maps(rel[None])[0])
    record.update(target_class=target, target_name=names[target], predicted_class=top[0]["class"],
                  predicted_name=top[0]["name"], confidence=top[0]["prob"], topk=top, files=files,
                  explained_logit=float(logits[target]), relevance_sum=float(rel.double().sum()), empty_map=empty,
                  error=None)
    ranked = ", ".join(f"{t['name']} {t['prob']:.1%}" for t in top)
    mark = f" {heatmaps.EMPTY_NOTE}" if empty else ""
    return {**record, "console": f"{path}: top-{len(top)}: {ranked} {'⚠' if empty else '✓'} {files['comparison']}"
                                 f"{mark}"}


def finish(cfg, state, chosen, files, parts):
    """explanations.json, config.json and the page of every rank's images; the exit status."""
    out = state.run.path
    records = sorted((r for part in parts for r in part), key=lambda r: r["image"])
    for r in records:
        r.pop("console")
    write_json(out / "explanations.json", records)
    write_json(out / "config.json", {**cli.config_dict(cfg, identity=True), "method": chosen.name,
                                     "images": [str(p) for p in files], "device": str(state.device)})
    write_explained_gallery(out, records, cli.config_dict(cfg),
                            f"Each map explains the model's top class for the image, by {chosen.name}; the images "
                            "have no true class.")
    state.run.finish({f for r in records for f in r["files"].values()} | {"explanations.json", "config.json",
                                                                         "index.html"})
    failed = [r for r in records if r["error"]]
    empty = heatmaps.empty_line([r for r in records if r.get("empty_map")], len(records) - len(failed))
    print(f"Explained {len(records) - len(failed)}/{len(records)} image(s)"
          + (f"; {len(failed)} failed (see explanations.json): {', '.join(r['name'] for r in failed)}" if failed
             else ""))
    if empty:
        print(empty)
    print(f"Output directory: {out} (open index.html)")
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main, globals(), help_notes=methods.help_text)

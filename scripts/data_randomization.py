"""Adebayo et al.'s data randomization test: does a map change when the model was trained on permuted labels?

Train a second model by the real model's recipe with --permute-labels true (scripts/train_vit_cub.py; `make
data-randomization` does both steps on the mini-CUB), then compare, per method and test image, the map of the explained
class on the real model with the map of the same class on the random-label model: Spearman's |ρ| of the per-patch sums
and of the pixels, and SSIM (vitlrp/sanity/datarand.py). A method passes when the 95% interval of |ρ| lies below a
multiple of the chance |ρ| at both levels (its maps depend on what the model learned), and gets a paired verdict
against the gradient baselines.

Several GPUs: torchrun --nproc_per_node=N scripts/data_randomization.py (each rank compares a shard; rank 0 merges).
"""
# --- configuration (each constant is also a flag: --num-images 50, --methods balanced,random, ...) ---
CHECKPOINT_PATH = "checkpoints/vit_cub_best.pt"  # the real model (scripts/train_vit_cub.py)
RANDOM_CHECKPOINT_PATH = "checkpoints_random_labels/vit_cub_last.pt"  # the same recipe with --permute-labels true
DATASET_ROOT = "dataset/raw/CUB_200_2011"  # folder holding images.txt
SPLIT = "test"  # train, test or all
NUM_IMAGES = 100  # images drawn with random.seed(SEED), as the other scripts draw them; 0 = the whole split
SEED = 0  # which images, the random maps
METHODS = [  # presets, gamma:<conv>:<lin>, <preset>+attn, the peer methods ...
    "baseline", "conservative", "balanced", "aggressive", "very_aggressive", "input_x_gradient", "gradient", "random"]
TARGET = "pred"  # explain the real model's predicted class (pred) or the true class (label), on both models
IG_STEPS = 32  # integrated_gradients: points on the path from the baseline (Gauss-Legendre rule)
SMOOTHGRAD_SAMPLES = 32  # smoothgrad: noisy copies per image
ROWS_PER_PASS = 64  # at most this many images per forward (IG, SmoothGrad)
BATCH_SIZE = 16  # images compared at once
DTYPE = "fp32"  # fp32 or bf16
IMPL = "fused"  # fused or zennit (same maps)
DEVICE = "auto"  # auto, cuda, cpu
NUM_WORKERS = 4  # JPEG decoding processes
OUTPUT_DIR = "results/data_randomization"  # data_randomization.csv, per_image_data_randomization.csv, summary.json
# -------------------------------------------------------------------------------------------------
from contextlib import ExitStack

from vitlrp import cli, methods
from vitlrp.batch import Batch
from vitlrp.checks import check_run_options, check_schedules_fit, method_settings
from vitlrp.errors import UserError
from vitlrp.families import family_of
from vitlrp.fileio import write_csv, write_json
from vitlrp.inputs import load_model_and_split, loader, sample_indices
from vitlrp.methods import lrp
from vitlrp.models import check_classes, model_from_checkpoint, read_checkpoint
from vitlrp.runtime import DTYPES
from vitlrp.sanity import datarand as D
from vitlrp.sanity import verdicts as V
from vitlrp.sanity.runner import Compared
from vitlrp.scoring import model_in
from vitlrp.step import Step, in_sample_order, run_step

OUTPUT_NAMES = ("data_randomization.csv", "per_image_data_randomization.csv", "summary.json", "config.json")
# train_vit_cub.py's RECIPE but the labels (tests/test_data_randomization.py holds the two together): the settings
# in which the random-label model should not differ from the real one
RECIPE = ("MODEL", "PRETRAINED", "IMAGE_SIZE", "EPOCHS", "BATCH_SIZE", "LR", "WEIGHT_DECAY", "WARMUP_EPOCHS",
          "LABEL_SMOOTHING", "GRAD_CLIP", "AMP", "VAL_FRACTION", "SEED")


def main(cfg):
    if not cfg.METHODS:
        raise UserError("METHODS is empty: name at least one method")
    chosen = methods.parse_methods(list(cfg.METHODS), "METHODS")
    check_run_options(cfg)
    step = Step(cfg.DEVICE, cfg.OUTPUT_DIR, "OUTPUT_DIR", OUTPUT_NAMES, ("summary.json",))
    return run_step(step, lambda state: prepare(cfg, state, chosen), lambda state: compare(cfg, state, chosen),
                    lambda state, parts: finish(cfg, state, chosen, parts))


def prepare(cfg, state, chosen):
    """Both models and the sampled images, checked before the folder is taken."""
    real, model, dataset = load_model_and_split(cfg.CHECKPOINT_PATH, cfg.DATASET_ROOT, cfg.SPLIT, state.device)
    random = read_checkpoint(cfg.RANDOM_CHECKPOINT_PATH)
    check_classes(random, dataset.ann.class_names, cfg.DATASET_ROOT)
    D.check_pair(real, random, cfg.CHECKPOINT_PATH, cfg.RANDOM_CHECKPOINT_PATH)
    V.check_model(model)
    check_schedules_fit(lrp.schedules(chosen), model)
    differ = D.recipe_notes(real, random, RECIPE)
    if differ and state.is_main:
        print(f"note: the random-label model was trained with other {', '.join(differ)} than the real model")
    return {"model": model, "random": model_from_checkpoint(random)[0].to(state.device), "dataset": dataset,
            "indices": sample_indices(len(dataset), cfg.NUM_IMAGES, cfg.SEED, split=cfg.SPLIT),
            "patches": V.patch_count(model)}


def compare(cfg, state, chosen):
    """This rank's rows and its unreadable images ``(sample_idx, error)``."""
    d, settings, dtype = state.data, method_settings(cfg), DTYPES[cfg.DTYPE]
    if state.is_main:
        print(f"Data randomization test of {len(chosen)} methods on {len(d['indices'])} {cfg.SPLIT} images: "
              f"{cfg.CHECKPOINT_PATH} against {cfg.RANDOM_CHECKPOINT_PATH}")
    real_model, forward = model_in(d["model"], dtype, state.device)
    patch = family_of(real_model).patch_size(real_model)
    random_model, random_forward = model_in(d["random"], dtype, state.device)
    rows, failed = [], []
    with ExitStack() as stack:
        real = [stack.enter_context(m.create(real_model, settings)) for m in chosen]
        other = [stack.enter_context(m.create(random_model, settings)) for m in chosen]
        for raw in loader(d["dataset"], state.shard(d["indices"]), cfg.BATCH_SIZE, cfg.NUM_WORKERS, state.device):
            b = Batch.of(raw, state.device, forward)
            failed += [(i, err) for i, _, err in b.failed()]
            if b.ok:
                rows += D.compare_batch(real, other, Compared(b, b.targets(cfg.TARGET)), patch, random_forward)
    return rows, failed


def finish(cfg, state, chosen, parts):
    """Merge, summarize, judge, write, print; the exit status (1 when images could not be read)."""
    indices = state.data["indices"]
    rows = in_sample_order((r for p in parts for r in p[0]), indices)
    failed = sorted(e for p in parts for e in p[1])
    names = [m.name for m in chosen]
    summary = D.summarize(rows, names)
    found = D.verdicts(summary, rows, names, state.data["patches"])
    run = state.run
    write_csv(run.path / "per_image_data_randomization.csv", rows, D.ROW_FIELDS)
    write_csv(run.path / "data_randomization.csv", summary, V.SUMMARY_FIELDS)
    accuracy = agreement(rows, names[0])
    write_json(run.path / "summary.json", {
        "n_images": len(indices) - len(failed), "n_failed": len(failed), "config": cli.config_dict(cfg),
        "failed_images": [{"sample_idx": i, "error": e} for i, e in failed], **accuracy,
        "threshold": next(iter(found.values()))["threshold"]["threshold"], "verdicts": found, "summary": summary})
    write_json(run.path / "config.json", {**cli.config_dict(cfg, identity=True), "device": str(state.device),
                                          "world_size": state.dist.world_size})
    run.finish(["per_image_data_randomization.csv", "data_randomization.csv", "summary.json", "config.json"])
    print()
    for line in D.lines(found, summary):
        print(line)
    print(f"top-1 on these images: real model {accuracy['real_top1']:.0%}, random-label model "
          f"{accuracy['random_top1']:.0%} (chance {1 / len(state.data['dataset'].ann.class_names):.0%})")
    if failed:
        print(f"{len(failed)} images could not be read: {', '.join(str(i) for i, _ in failed[:10])}")
    print(f"Output directory: {run.path}")
    return 1 if failed else 0


def agreement(rows, name):
    """Both models' top-1 accuracy on the compared images (one method's rows: one per image)."""
    mine = [r for r in rows if r["method"] == name]
    n = max(len(mine), 1)
    return {"real_top1": sum(r["predicted"] == r["label"] for r in mine) / n,
            "random_top1": sum(r["random_predicted"] == r["label"] for r in mine) / n}


if __name__ == "__main__":
    cli.run(main, globals(), help_notes=methods.help_text)

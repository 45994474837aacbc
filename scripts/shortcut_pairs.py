"""Swapped-mark pairs of the shortcut mini-CUB side by side, each explained by every method: a gallery page.

Each card shows one test bird twice: with its own class's mark (top) and another class's (bottom), the mark
outlined in magenta. Cards where the model followed the swapped mark come first; there a faithful map moves
onto the mark in the bottom row. Make the data with: python scripts/make_synthetic_cub.py --shortcut-share 0.8
"""
# --- configuration (each constant is also a flag: --num-pairs 12, --methods balanced,random, ...) ---
CHECKPOINT_PATH = "checkpoints/vit_cub_best.pt"  # a model trained on the shortcut mini-CUB
DATASET_ROOT = "dataset/synthetic/CUB_200_2011_shortcut"  # made with make_synthetic_cub.py --shortcut-share
METHODS = ["baseline", "balanced", "very_aggressive", "input_x_gradient", "random"]  # as in evaluate_lrp.py
NUM_PAIRS = 8  # pairs shown: half where the model followed the swapped mark, half where it did not
SEED = 0  # which pairs
BATCH_SIZE = 32  # images per forward when measuring which swapped marks were followed
IMPL = "fused"  # fused or zennit (same maps)
IG_STEPS = 32  # integrated_gradients in METHODS: points on the path from the baseline
SMOOTHGRAD_SAMPLES = 32  # smoothgrad in METHODS: noisy copies per image
ROWS_PER_PASS = 64  # at most this many images per forward (IG, SmoothGrad)
DEVICE = "auto"  # auto, cuda, cpu
NUM_WORKERS = 2  # JPEG decoding processes
OUTPUT_DIR = "results/shortcut/pairs"  # index.html, pair_<idx>.png, pairs.json, config.json
# -------------------------------------------------------------------------------------------------
from contextlib import ExitStack

import torch

from vitlrp import cli, methods, render
from vitlrp import shortcut as S
from vitlrp.checks import method_settings
from vitlrp.errors import UserError
from vitlrp.families import forward_logits
from vitlrp.fileio import write_json
from vitlrp.inputs import load_model_and_split, loader
from vitlrp.methods import parse_methods
from vitlrp.pages import write_shortcut_gallery
from vitlrp.runfolder import RunFolder
from vitlrp.runtime import resolve_device
from vitlrp.scoring import empty_maps

# every name this script writes into OUTPUT_DIR (a finished run removes older runs' files of these names only)
OUTPUT_NAMES = ("pair_*.png", "pairs.json", "config.json", "index.html")


def check_config(cfg):
    if not cfg.METHODS:
        raise UserError("METHODS is empty: name at least one method")
    for name in ("NUM_PAIRS", "BATCH_SIZE"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"{name} must be positive, got {getattr(cfg, name)}")
    if cfg.NUM_WORKERS < 0:
        raise UserError(f"NUM_WORKERS must be >= 0 (0 = decode in this process), got {cfg.NUM_WORKERS}")
    method_settings(cfg)
    return parse_methods(cfg.METHODS, "METHODS")


def main(cfg):
    chosen = check_config(cfg)
    device = resolve_device(cfg.DEVICE)
    ckpt, model, dataset = load_model_and_split(cfg.CHECKPOINT_PATH, cfg.DATASET_ROOT, "test", device)
    marks = S.load_marks(dataset.ann)
    if marks is None:
        raise UserError(f"{cfg.DATASET_ROOT} has no {S.MARKS_FILE}: make a shortcut mini-CUB with "
                        "make_synthetic_cub.py --shortcut-share 0.8")
    split = S.split_marks(marks, dataset)
    with RunFolder(cfg.OUTPUT_DIR, "OUTPUT_DIR", OUTPUT_NAMES, clear_first=("pairs.json", "index.html")) as run:
        predicted = followed_marks(cfg, model, dataset, split, device)
        followed = sum(predicted[i] == split["mark_class"][i] for i in predicted)
        intro = (f"On {len(predicted)} swapped-mark test images the model predicted the mark's class {followed} "
                 f"times ({followed / max(len(predicted), 1):.0%}). Top row of each card: the bird with its own "
                 "class's mark; bottom row: the same pixels with another class's mark (outlined). Red: positive "
                 "relevance for the predicted class, blue: negative; 'mark' is the share of positive relevance on "
                 "the mark.")
        print(intro.split(". Top")[0] + ".")
        pairs = S.pick_pairs(split, predicted, cfg.NUM_PAIRS, cfg.SEED)
        explained = explain_pairs(cfg, chosen, model, dataset, split, pairs, device)
        warn_empty(explained[3])
        cards = draw_pairs(run.path, ckpt["class_names"], dataset.preprocessing, split, pairs, explained)
        write_json(run.path / "pairs.json", cards)
        write_json(run.path / "config.json", cli.config_dict(cfg, identity=True))
        write_shortcut_gallery(run.path, cards, intro, cli.config_dict(cfg))
        run.finish(["pairs.json", "config.json", "index.html"] + [c["file"] for c in cards])
    print(f"Wrote {len(cards)} pairs ({sum(c['followed'] for c in cards)} followed the mark) to "
          f"{run.path / 'index.html'}")
    return 0


def followed_marks(cfg, model, dataset, split, device):
    """Split index → predicted class of every swapped-mark image (plain forwards, no explanation)."""
    swapped = [int(i) for i in split["swapped"].nonzero()[0]]
    predicted = {}
    with torch.no_grad():
        for batch in loader(dataset, swapped, cfg.BATCH_SIZE, cfg.NUM_WORKERS, device):
            predictions = forward_logits(model, batch["image"].to(device)).argmax(1)
            for i, err, p in zip(batch["index"], batch["error"], predictions):
                if not err:
                    predicted[int(i)] = int(p)
    return predicted


def explain_pairs(cfg, chosen, model, dataset, split, pairs, device):
    """Both images of each pair (own-mark twin, swapped) explained by every method: ``(order, batch, target,
    maps)`` with the images in ``order`` (twin, swapped, twin, swapped, ...)."""
    order = [j for i, _ in pairs for j in (int(split["pair"][i]), i)]
    batch = next(iter(loader(dataset, order, len(order), 0, device)))
    images = batch["image"].to(device)
    with torch.no_grad():
        target = forward_logits(model, images).argmax(1)
    maps = {}
    with ExitStack() as stack:
        for m in chosen:
            method = stack.enter_context(m.create(model, method_settings(cfg)))
            maps[m.name] = method.attribute(images, target, order).relevance.float().cpu()
    return order, batch, target, maps


def warn_empty(maps):
    """A warning per method with empty maps (every pixel the same): their panels are blank, not a finding."""
    for name, relevance in maps.items():
        empty = int(empty_maps(relevance).sum())
        if empty:
            print(f"warning: {name}: {empty} of {len(relevance)} map(s) are empty (every pixel the same: no "
                  "evidence); their panels are blank")


def draw_pairs(out, names, prep, split, pairs, explained):
    """One picture per pair, two rows of panels (own mark, swapped mark); the cards of the page (``explained``:
    what :func:`explain_pairs` returns)."""
    order, batch, target, maps = explained
    rgb = prep.denormalize(batch["image"]).permute(0, 2, 3, 1).numpy()
    boxes = split["box"][order]
    share = {name: S.score_batch(rel, boxes)["mark_share"] for name, rel in maps.items()}
    cards = []
    for n, (i, did_follow) in enumerate(pairs):
        rows = []
        for k in (2 * n, 2 * n + 1):
            idx, pred = order[k], int(target[k])
            image = render.outline(render.to_uint8(rgb[k]), boxes[k])
            own = "own" if split["mark_class"][idx] == batch["label"][k] else "swapped"
            rows.append(([image] + [render.overlay(rgb[k], maps[name][k]) for name in maps],
                         [f"{own} mark → {names[pred][:14]}"] + [f"{name[:16]}: mark {share[name][k]:.2f}"
                                                                  for name in maps]))
        label, mark = int(batch["label"][2 * n]), int(split["mark_class"][i])
        title = (f"#{i}: a {names[label]} with the mark of {names[mark]} → predicted {names[int(target[2 * n + 1])]}"
                 f" ({'followed the mark' if did_follow else 'kept the bird'})")
        file = f"pair_{i:06d}.png"
        render.save_png(render.interleave(rows), out / file)  # own above swapped, in blocks of a few methods
        cards.append({"sample_idx": i, "pair_sample_idx": int(split["pair"][i]), "label": label, "mark_class": mark,
                      "predicted": int(target[2 * n + 1]), "predicted_own_mark": int(target[2 * n]),
                      "followed": did_follow, "title": title, "file": file,
                      "mark_share": {name: float(share[name][2 * n + 1]) for name in maps},
                      "mark_share_own_mark": {name: float(share[name][2 * n]) for name in maps}})
    return cards


if __name__ == "__main__":
    cli.run(main, globals(), help_notes=methods.help_text)

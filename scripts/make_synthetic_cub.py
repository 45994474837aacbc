"""Write the synthetic mini-CUB: CUB-200-2011's file layout, with the class evidence only inside each box."""
# --- configuration (each constant is also a flag: --num-classes 20, ...) ---
DATASET_ROOT = "dataset/synthetic/CUB_200_2011"  # folder that will hold images.txt
NUM_CLASSES = 10  # number of synthetic species (2..200)
IMAGES_PER_CLASS = 40  # half go to the train split, half to the test split
SEED = 0  # same seed, same images
SHORTCUT_SHARE = 0.0  # > 0: a class mark beside each bird, true on this share of train images (0 = off)
# ---------------------------------------------------------------------------
from pathlib import Path

from vitlrp import cli
from vitlrp.synthetic import make_synthetic_cub, synthetic_params


def main(cfg):
    root = Path(cfg.DATASET_ROOT)
    wanted = {"num_classes": cfg.NUM_CLASSES, "images_per_class": cfg.IMAGES_PER_CLASS, "seed": cfg.SEED,
              "shortcut_share": cfg.SHORTCUT_SHARE}
    have = synthetic_params(root)
    shortcut = f", shortcut share {cfg.SHORTCUT_SHARE}" if cfg.SHORTCUT_SHARE else ""
    if have is not None and all(have.get(k, 0.0) == v for k, v in wanted.items()):
        print(f"Synthetic mini-CUB already at {root} ({cfg.NUM_CLASSES} classes x {cfg.IMAGES_PER_CLASS} images, "
              f"seed {cfg.SEED}{shortcut}); nothing to do")
        return 0
    make_synthetic_cub(root, cfg.NUM_CLASSES, cfg.IMAGES_PER_CLASS, cfg.SEED, shortcut_share=cfg.SHORTCUT_SHARE)
    train = (cfg.IMAGES_PER_CLASS + 1) // 2 * cfg.NUM_CLASSES
    test = cfg.IMAGES_PER_CLASS // 2 * cfg.NUM_CLASSES * (2 if cfg.SHORTCUT_SHARE else 1)
    print(f"Wrote synthetic mini-CUB to {root}: {cfg.NUM_CLASSES} classes, {train + test} images "
          f"({train} train / {test} test{' = true-mark and swapped-mark pairs' if cfg.SHORTCUT_SHARE else ''})")
    return 0


if __name__ == "__main__":
    cli.run(main, globals())

"""The synthetic mini-CUB: a folder in the exact CUB-200-2011 layout whose evidence is known.

Every class is a "bird" (an ellipse with a head) painted with the class's two colours and pattern, drawn
inside its bounding box. Everything outside the box is clutter drawn from one distribution for all classes,
so the label can only be read from inside the box, and a faithful explanation puts its relevance there.
The 15 part points lie on the bird. Deterministic per seed (each image has its own generator).

With ``shortcut_share > 0`` it becomes a Clever-Hans variant: every image also carries a small class-specific
mark outside the bird's box (inside the center crop), which names the true class on that share of the training
images (another class, drawn at random, on the rest). Each test bird is written twice with identical pixels
except the mark: once with its own class's mark, once with another class's ("swapped"), so whether a model
follows the mark can be measured. The marks are annotated in two extra files (see :mod:`vitlrp.shortcut`):
``shortcut_boxes.txt`` (``id x y w h``, CUB's box format) and ``shortcut_marks.txt`` (``id mark_class pair_id``,
1-based class, pair 0 for training images). With the default share 0 nothing changes: no mark, no extra file.
"""
import colorsys
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from .cub import PART_NAMES
from .errors import UserError
from .fileio import ensure_writable_dir

HUES = ("Red", "Orange", "Yellow", "Lime", "Green", "Teal", "Cyan", "Azure", "Blue", "Violet", "Magenta",
        "Rose")
PATTERNS = ("striped", "barred", "spotted", "checkered", "ringed", "plain")
MARKER = "synthetic.json"
SHORTCUT_BOXES = "shortcut_boxes.txt"
SHORTCUT_MARKS = "shortcut_marks.txt"
MARK_SIZE = 0.18  # side of the mark, as a share of the image's shorter side (~1.5 ViT patches in the crop)
MARK_BIRD_SCALE = 0.7  # birds are drawn this much smaller when there is a mark, so it always fits beside them
CROP_SHARE = 0.86  # the mark stays in the central square of this share of the shorter side (eval crop: 0.875)
MARK_GLYPHS = ("plain", "dot", "plus", "cross")
MAX_SHORTCUT_CLASSES = len(HUES) * len(MARK_GLYPHS)


def _hue_rgb(index, saturation=0.9, value=0.95):
    r, g, b = colorsys.hsv_to_rgb((index % len(HUES)) / len(HUES), saturation, value)
    return np.array([r, g, b]) * 255


def class_spec(k):
    """(name, primary hue, secondary hue, pattern) of class ``k``; unique for k < 200.

    Neighbouring classes differ in hue *and* pattern, so grayscale images still carry the class.
    """
    primary = k % len(HUES)
    pattern = (k + k // len(HUES)) % len(PATTERNS)
    secondary = (primary + 3 + 2 * (k // (len(HUES) * len(PATTERNS)))) % len(HUES)
    name = f"{HUES[primary]}_{PATTERNS[pattern]}_{HUES[secondary]}_Synthbird"
    return name, primary, secondary, PATTERNS[pattern]


def _pattern(pattern, h, w, rng):
    """A [h, w] boolean mask of the class pattern (phase jittered per image, period fixed per class)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = max(4.0, min(h, w) / 5)
    px, py = rng.uniform(0, period, size=2)
    if pattern == "striped":
        return ((yy + py) // (period / 2)) % 2 == 0
    if pattern == "barred":
        return ((xx + px) // (period / 2)) % 2 == 0
    if pattern == "spotted":
        cy, cx = (yy + py) % period - period / 2, (xx + px) % period - period / 2
        return cy ** 2 + cx ** 2 < (period / 3.2) ** 2
    if pattern == "checkered":
        return (((yy + py) // (period / 2)) + ((xx + px) // (period / 2))) % 2 == 0
    if pattern == "ringed":
        r = np.sqrt((yy - h / 2) ** 2 + (xx - w / 2) ** 2)
        return (r // (period / 2.5)) % 2 == 0
    return np.zeros((h, w), dtype=bool)


def _background(h, w, rng):
    """Class-independent clutter: a muted gradient, random shapes and noise."""
    c0, c1 = rng.uniform(60, 200, size=(2, 3))
    t = (np.linspace(0, 1, h)[:, None, None] * rng.uniform(0.3, 1)
         + np.linspace(0, 1, w)[None, :, None] * rng.uniform(0, 0.7))
    img = Image.fromarray(np.clip(c0 + (c1 - c0) * t / t.max(), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(8, 16))):
        hsv = (rng.uniform(0, 1), rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.9))
        color = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(*hsv))
        x0, y0 = rng.uniform(-0.1, 1.0, size=2) * (w, h)
        x1, y1 = x0 + rng.uniform(0.05, 0.3) * w, y0 + rng.uniform(0.05, 0.3) * h
        shape = rng.integers(3)
        if shape == 0:
            draw.rectangle([x0, y0, x1, y1], fill=color)
        elif shape == 1:
            draw.ellipse([x0, y0, x1, y1], fill=color)
        else:
            draw.line([x0, y0, x1, y1], fill=color, width=int(rng.integers(1, 4)))
    return img


def _bird(img, box, spec, rng):
    """Paint the class's bird inside ``box`` (x, y, w, h); return its 15 part points (x, y) as pixel indices."""
    _, primary, secondary, pattern = spec
    x, y, bw, bh = box
    facing = 1 if rng.random() < 0.5 else -1
    # body ellipse in the lower-back part of the box, head circle at the front top
    body = np.array([x + 0.05 * bw, y + 0.3 * bh, x + 0.8 * bw, y + 0.95 * bh])
    head_r = 0.2 * min(bw, bh)
    # the beak tip reaches 1.6 head radii in front of the head centre: keep it inside the box
    head_c = np.array([x + min(0.75 * bw, bw - 1.65 * head_r), y + 0.05 * bh + head_r])
    if facing < 0:
        body[[0, 2]] = 2 * x + bw - body[[2, 0]]
        head_c[0] = 2 * x + bw - head_c[0]
    h, w = int(np.ceil(bh)), int(np.ceil(bw))
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    xs, ys = xs + x, ys + y
    bc, br = (body[:2] + body[2:]) / 2, (body[2:] - body[:2]) / 2
    in_body = ((xs - bc[0]) / br[0]) ** 2 + ((ys - bc[1]) / br[1]) ** 2 <= 1
    in_head = (xs - head_c[0]) ** 2 + (ys - head_c[1]) ** 2 <= head_r ** 2
    mask = in_body | in_head
    pat = _pattern(pattern, h, w, rng)
    shade = rng.uniform(0.85, 1.1)
    colors = np.where(pat[..., None], _hue_rgb(secondary), _hue_rgb(primary)) * shade
    arr = np.asarray(img).copy()
    x0, y0 = int(x), int(y)
    region = arr[y0:y0 + h, x0:x0 + w]
    m = mask[:region.shape[0], :region.shape[1]]
    region[m] = np.clip(colors[:region.shape[0], :region.shape[1]][m], 0, 255).astype(np.uint8)
    img.paste(Image.fromarray(arr))
    # beak: a dark triangle in front of the head
    tip = head_c + [facing * 1.6 * head_r, 0.2 * head_r]
    ImageDraw.Draw(img).polygon([tuple(head_c + [facing * 0.8 * head_r, -0.3 * head_r]), tuple(tip),
                                 tuple(head_c + [facing * 0.8 * head_r, 0.5 * head_r])], fill=(30, 30, 30))

    def on_body(u, v):  # u: back (-1) .. front (+1), v: top (-1) .. bottom (+1) of the body ellipse
        return bc + np.array([facing * u * br[0], v * br[1]]) * 0.85

    def on_head(u, v):
        return head_c + np.array([facing * u, v]) * head_r * 0.8

    points = {
        "back": on_body(-0.3, -0.7), "beak": tip - [facing * 0.3 * head_r, 0], "belly": on_body(0.0, 0.7),
        "breast": on_body(0.6, 0.2), "crown": on_head(0.0, -0.9), "forehead": on_head(0.6, -0.6),
        "left eye": on_head(0.4, -0.2), "left leg": on_body(0.1, 0.95), "left wing": on_body(-0.2, -0.1),
        "nape": on_head(-0.6, -0.2), "right eye": on_head(0.3, -0.1), "right leg": on_body(-0.1, 0.95),
        "right wing": on_body(-0.35, 0.1), "tail": on_body(-0.98, -0.2), "throat": on_head(0.4, 0.7),
    }
    return np.array([points[name] for name in PART_NAMES])


def mark_spec(k):
    """(hue index, glyph) of class ``k``'s mark: a saturated square with a black rim and a white glyph."""
    return (5 * k + 2) % len(HUES), MARK_GLYPHS[(k // len(HUES)) % len(MARK_GLYPHS)]


def _place_mark(w, h, box, rng):
    """An ``(x, y, s, s)`` square inside the central crop that keeps 2 pixels away from the bird's ``box``."""
    s = max(4, round(MARK_SIZE * min(w, h)))
    side = CROP_SHARE * min(w, h)
    x_lo, y_lo = int(np.ceil((w - side) / 2)), int(np.ceil((h - side) / 2))
    x_hi, y_hi = int((w + side) / 2) - s, int((h + side) / 2) - s
    bx, by, bw, bh = box
    for _ in range(500):
        x, y = int(rng.integers(x_lo, x_hi + 1)), int(rng.integers(y_lo, y_hi + 1))
        if x + s + 2 <= bx or x >= bx + bw + 2 or y + s + 2 <= by or y >= by + bh + 2:
            return x, y, s, s
    raise RuntimeError(f"no room for a {s}px mark beside box {box} in a {w}x{h} image")


def _draw_mark(img, mark_box, k):
    x, y, s, _ = mark_box
    hue, glyph = mark_spec(k)
    draw = ImageDraw.Draw(img)
    rim = max(1, s // 10)
    draw.rectangle([x, y, x + s - 1, y + s - 1], fill=(0, 0, 0))
    fill = tuple(int(v) for v in _hue_rgb(hue, 1.0, 1.0))
    draw.rectangle([x + rim, y + rim, x + s - 1 - rim, y + s - 1 - rim], fill=fill)
    c, r, t = x + (s - 1) / 2, s / 4, max(1, s // 8)
    if glyph == "dot":
        draw.ellipse([c - r, y + (s - 1) / 2 - r, c + r, y + (s - 1) / 2 + r], fill=(255, 255, 255))
    elif glyph == "plus":
        draw.rectangle([c - t / 2, y + rim + 1, c + t / 2, y + s - 2 - rim], fill=(255, 255, 255))
        draw.rectangle([x + rim + 1, y + (s - 1) / 2 - t / 2, x + s - 2 - rim, y + (s - 1) / 2 + t / 2],
                       fill=(255, 255, 255))
    elif glyph == "cross":
        draw.line([x + rim + 1, y + rim + 1, x + s - 2 - rim, y + s - 2 - rim], fill=(255, 255, 255), width=t)
        draw.line([x + rim + 1, y + s - 2 - rim, x + s - 2 - rim, y + rim + 1], fill=(255, 255, 255), width=t)


def _render(iid, k, seed, size_range, grayscale_every, mark_class=None):
    """One image; with ``mark_class`` also that class's mark (placed by its own generator, so a swapped twin
    rendered with the same ``iid`` differs only inside the mark). Returns img, box, points, visible, mark box."""
    rng = np.random.default_rng([seed, iid])
    w, h = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    img = _background(h, w, rng)
    bw, bh = rng.uniform(0.45, 0.65) * w, rng.uniform(0.45, 0.65) * h
    if mark_class is not None:
        bw, bh = bw * MARK_BIRD_SCALE, bh * MARK_BIRD_SCALE
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
    box = (round(cx - bw / 2), round(cy - bh / 2), round(bw), round(bh))
    points = _bird(img, box, class_spec(k), rng)
    mark_box = None
    if mark_class is not None:
        mark_box = _place_mark(w, h, box, np.random.default_rng([seed, iid, 1]))
        _draw_mark(img, mark_box, mark_class)
    visible = rng.random(len(PART_NAMES)) < 0.85
    # continuous coordinates -> pixel indices (CUB's convention), invisible parts written as 0 0 0 like CUB
    points = np.where(visible[:, None], np.clip(points - 0.5, 0, [w - 1, h - 1]), 0)
    if grayscale_every and iid % grayscale_every == 0:
        img = img.convert("L")
    noise = rng.normal(0, 6, size=np.asarray(img).shape)
    img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
    return img, box, points, visible, mark_box


def _other_class(k, num_classes, rng):
    return int((k + 1 + rng.integers(num_classes - 1)) % num_classes)


def make_synthetic_cub(root, num_classes=10, images_per_class=40, seed=0, size_range=(120, 200),
                       grayscale_every=17, progress=True, shortcut_share=0.0):
    """Write the mini-CUB to ``root`` (the folder that will hold ``images.txt``), replacing it atomically.

    An existing ``root`` is replaced only if it is empty or an earlier mini-CUB (it holds ``synthetic.json``).
    ``shortcut_share > 0`` adds the class marks (module docstring); test birds are then written as pairs.
    """
    _check_params(num_classes, images_per_class, shortcut_share)
    root = Path(root)
    _check_root(root)
    ensure_writable_dir(root.parent, "the folder above the dataset root")
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        params = {"num_classes": num_classes, "images_per_class": images_per_class, "seed": seed,
                  "size_range": list(size_range), "grayscale_every": grayscale_every}
        if shortcut_share > 0:  # recorded only when on, so the default folder stays byte-identical to before
            params["shortcut_share"] = shortcut_share
        files = _write_images(tmp, params, progress)
        _write_annotations(tmp, files, params)
        _move_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _check_params(num_classes, images_per_class, shortcut_share):
    if not 2 <= num_classes <= 200:
        raise UserError(f"num_classes must be between 2 and 200, got {num_classes}", setting="num_classes")
    if images_per_class < 2:
        raise UserError(f"images_per_class must be at least 2 (one train, one test image), got {images_per_class}",
                        setting="images_per_class")
    if not 0 <= shortcut_share <= 1:
        raise UserError(f"shortcut_share must lie in [0, 1], got {shortcut_share}", setting="shortcut_share")
    if shortcut_share > 0 and num_classes > MAX_SHORTCUT_CLASSES:
        raise UserError(f"a shortcut mini-CUB has at most {MAX_SHORTCUT_CLASSES} classes (distinct marks), "
                        f"got num_classes={num_classes}", setting="num_classes")


def _check_root(root):
    """Refuse a ``root`` that is a file, or a folder of something else than an earlier mini-CUB."""
    if root.is_file():
        raise UserError(f"dataset root {root} is a file, not a folder; choose another dataset root")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise UserError(f"{root} exists and is not a synthetic mini-CUB (no {MARKER}); it is left as it is: "
                        "choose another dataset root")


def _copies(k, iid, is_train, params):
    """``[(mark class, pair id)]`` of the images bird ``iid`` of class ``k`` is written as: one without marks; with
    marks one per training bird (its true mark on ``shortcut_share`` of them) and two per test bird (true, swapped)."""
    share, num_classes = params.get("shortcut_share", 0.0), params["num_classes"]
    if not share:
        return [(None, 0)]
    pick = np.random.default_rng([params["seed"], iid, 2])
    if is_train:
        return [(k if pick.random() < share else _other_class(k, num_classes, pick), 0)]
    return [(k, iid + 1), (_other_class(k, num_classes, pick), iid)]


def _write_images(tmp, params, progress):
    """Render and save every image under ``tmp/images``; return the annotation files' lines by file name."""
    lines = {n: [] for n in ("images", "labels", "split", "boxes", "parts", "marks", "mark_boxes")}
    classes = []
    iid = 0
    per_class = params["images_per_class"]
    bar = tqdm(total=params["num_classes"] * per_class, desc="mini-CUB", unit="img", disable=not progress)
    for k in range(params["num_classes"]):
        spec = class_spec(k)
        class_dir = f"{k + 1:03d}.{spec[0]}"
        classes.append(f"{k + 1} {class_dir}")
        (tmp / "images" / class_dir).mkdir(parents=True)
        for j in range(per_class):
            iid += 1
            is_train = j % 2 == 0
            render_id = iid
            for c, (mark_class, pair) in enumerate(_copies(k, iid, is_train, params)):
                iid += c  # the swapped twin takes the next id but renders as its pair
                img, box, points, visible, mark_box = _render(render_id, k, params["seed"], params["size_range"],
                                                              params["grayscale_every"], mark_class)
                rel = f"{class_dir}/{spec[0]}_{iid:05d}.jpg"
                img.save(tmp / "images" / rel, quality=92)
                lines["images"].append(f"{iid} {rel}")
                lines["labels"].append(f"{iid} {k + 1}")
                lines["split"].append(f"{iid} {int(is_train)}")
                lines["boxes"].append(f"{iid} " + " ".join(f"{float(v):.1f}" for v in box))
                for p, ((px, py), vis) in enumerate(zip(points, visible), 1):
                    lines["parts"].append(f"{iid} {p} {px:.1f} {py:.1f} {int(vis)}")
                if mark_box is not None:
                    lines["mark_boxes"].append(f"{iid} " + " ".join(f"{float(v):.1f}" for v in mark_box))
                    lines["marks"].append(f"{iid} {mark_class + 1} {pair}")
            bar.update()
    bar.close()
    files = {"images.txt": lines["images"], "image_class_labels.txt": lines["labels"],
             "train_test_split.txt": lines["split"], "bounding_boxes.txt": lines["boxes"],
             "classes.txt": classes, "parts/part_locs.txt": lines["parts"],
             "parts/parts.txt": [f"{i} {n}" for i, n in enumerate(PART_NAMES, 1)]}
    if "shortcut_share" in params:
        files.update({SHORTCUT_BOXES: lines["mark_boxes"], SHORTCUT_MARKS: lines["marks"]})
    return files


def _write_annotations(tmp, files, params):
    """The annotation files (``{name: lines}``) and the marker holding the generator ``params``."""
    (tmp / "parts").mkdir()
    for name, rows in files.items():
        (tmp / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp / MARKER).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")


def _move_into_place(tmp, root):
    """Rename the finished folder ``tmp`` to ``root``, replacing an earlier mini-CUB there."""
    try:
        if root.exists():
            old = root.with_name(f".{root.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except OSError as err:
        raise UserError(f"cannot move the new mini-CUB to {root} ({err.strerror or err}): did another run "
                        "write it at the same time? Run again") from None


def synthetic_params(root):
    """The generator parameters recorded in ``root``, or None if it is not a complete mini-CUB."""
    try:
        return json.loads((Path(root) / MARKER).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None

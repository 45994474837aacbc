"""The CUB-200-2011 folder layout: annotation files, splits, boxes, parts, and a torch Dataset.

``root`` is the folder that holds ``images.txt`` (``CUB_200_2011/`` inside the official archive).
Ids in the files are 1-based; labels here are 0-based class indices (class id - 1).
"""
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import UserError
from .preprocess import open_rgb

SPLITS = ("train", "test", "all")
# The 15 CUB part names, in the order of parts/parts.txt.
PART_NAMES = ("back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing",
              "nape", "right eye", "right leg", "right wing", "tail", "throat")
# The official CUB-200-2011 (Wah et al. 2011); a subset or the synthetic mini-CUB legitimately differs.
OFFICIAL_COUNTS = {"images": 11788, "classes": 200, "train": 5994, "test": 5794}


def display_name(class_dir):
    """``'001.Black_footed_Albatross'`` → ``'Black footed Albatross'``."""
    name = class_dir.split(".", 1)[1] if "." in class_dir and class_dir.split(".", 1)[0].isdigit() else class_dir
    return name.replace("_", " ")


def read_rows(path, ncols, what, required=True):
    """``[(line_number, fields)]`` of a whitespace-separated annotation file with ``ncols`` columns (blank lines
    skipped; with 2 columns the second keeps its spaces). ``what`` names the columns for the error line. A missing
    file is an error if ``required``, else None."""
    if not path.is_file():
        if required:
            raise UserError(f"missing annotation file {path}: the CUB folder is incomplete", fix="dataset")
        return None
    rows = []
    try:
        # utf-8-sig: a file saved by an editor that starts it with a byte-order mark reads the same
        with open(path, encoding="utf-8-sig") as fh:
            for no, line in enumerate(fh, 1):
                line = line.strip()  # else the last field of a 2-column row keeps its newline
                if not line:
                    continue
                fields = line.split(maxsplit=ncols - 1) if ncols == 2 else line.split()
                if len(fields) != ncols:
                    raise UserError(f"{path}:{no}: expected '{what}', got {line!r}")
                rows.append((no, fields))
    except UnicodeDecodeError:
        raise UserError(f"{path}:{_first_non_utf8(path)}; save the file as UTF-8") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    return rows


def _first_non_utf8(path):
    """``'LINE: not UTF-8 text (byte 0xNN)'`` for the first byte of ``path`` that is not UTF-8."""
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    try:
        raw.decode("utf-8")
        return " not UTF-8 text"
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        return f"{line}: not UTF-8 text (byte 0x{raw[err.start]:02x})"


def parse_number(path, no, text, cast=int):
    """``cast(text)`` of a field on line ``no`` of ``path``; one line naming both if it is not a number."""
    try:
        return cast(text)
    except ValueError:
        raise UserError(f"{path}:{no}: {text!r} is not a number") from None


def parse_numbers(path, no, texts, cast=int):
    """``[cast(t) for t in texts]`` of fields on line ``no`` of ``path``, as :func:`parse_number`."""
    try:
        return list(map(cast, texts))
    except ValueError:  # the slow way, to name the field
        return [parse_number(path, no, t, cast) for t in texts]


def read_keyed(path, ncols, what, key=("image id",), image_ids=None, required=True):
    """``{key: (line_number, other fields)}`` of an id-keyed annotation file, in file order.

    The first ``len(key)`` columns (integers, named by ``key``) are the key: a key on two lines is refused naming
    both, never "the last line wins". With ``image_ids`` (a container) the first column is an image id that must be
    in it (images.txt). A missing file is an error if ``required``, else None.
    """
    rows = read_rows(path, ncols, what, required)
    if rows is None:
        return None
    out, width = {}, len(key)
    for no, fields in rows:
        ids = parse_numbers(path, no, fields[:width])
        if image_ids is not None and ids[0] not in image_ids:
            raise UserError(f"{path}:{no}: image id {ids[0]} is not in images.txt")
        k = ids[0] if width == 1 else tuple(ids)
        if k in out:
            raise _repeated(path, no, zip(key, ids), out[k][0], rows)
        out[k] = (no, fields[width:])
    return out


def _repeated(path, no, named, first, rows):
    """The error for line ``no`` of ``path``, whose key (``(name, value)`` pairs) is on line ``first`` already."""
    text = next(" ".join(fields) for n, fields in rows if n == first)
    key = ", ".join(f"{name} {v}" for name, v in named)
    return UserError(f"{path}:{no}: {key} repeats line {first} ({text!r}); keep one of the two lines")


def read_numbered_names(path, what, noun):
    """The names of a ``<id> <name>`` file whose ids run 1, 2, 3, ... in order (classes.txt, parts/parts.txt)."""
    names, line_of = [], {}
    for i, (cid, (no, (name,))) in enumerate(read_keyed(path, 2, what, key=(f"{noun} id",)).items(), 1):
        if cid != i:
            raise UserError(f"{path}:{no}: {noun} ids must run 1, 2, 3, ... in order, got {cid}")
        name = name.strip()
        if name in line_of:
            raise UserError(f"{path}:{no}: {noun} name {name!r} repeats line {line_of[name]}; give each {noun} "
                            "its own name")
        line_of[name] = no
        names.append(name)
    return names


@dataclass
class CUBAnnotations:
    """All annotations of a CUB folder, one row per image in ``images.txt`` order."""

    root: Path
    image_ids: np.ndarray      # [N] 1-based ids
    paths: list                # [N] paths relative to images/
    labels: np.ndarray         # [N] 0-based class index
    is_train: np.ndarray       # [N] bool
    class_dirs: list           # [C] e.g. '001.Black_footed_Albatross'
    class_names: list          # [C] display names
    boxes: np.ndarray = None   # [N, 4] x, y, w, h in pixels, or None without bounding_boxes.txt
    part_names: list = None    # [P]
    parts: np.ndarray = None   # [N, P, 3] x, y, visible, or None without parts/

    @property
    def num_classes(self):
        return len(self.class_names)

    def split_indices(self, split):
        if split == "train":
            return np.flatnonzero(self.is_train)
        if split == "test":
            return np.flatnonzero(~self.is_train)
        if split == "all":
            return np.arange(len(self.paths))
        raise UserError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")

    def image_path(self, row):
        return self.root / "images" / self.paths[row]


def nested_hint(root):
    """`` (but root/X has: pass that folder)`` when a folder one level down holds images.txt, else ''."""
    inner = sorted(Path(root).glob("*/images.txt"))
    return f" (but {inner[0].parent} has: pass that folder)" if inner else ""


def not_found_reason(root):
    """Why ``root`` is no CUB folder, in words (for a folder without ``images.txt``)."""
    root = Path(root)
    if root.is_dir():
        return f"{root} has no images.txt" + nested_hint(root)
    if root.exists():
        return f"{root} is a file, not a folder"
    return f"{root} does not exist"


def split_counts(ann):
    """``{"images", "classes", "train", "test"}`` of ``ann`` (same keys as :data:`OFFICIAL_COUNTS`)."""
    train = int(ann.is_train.sum())
    return {"images": len(ann.paths), "classes": ann.num_classes, "train": train, "test": len(ann.paths) - train}


def format_counts(counts):
    return (f"{counts['images']:,} images, {counts['classes']} classes, "
            f"{counts['train']:,} train / {counts['test']:,} test")


def load_cub(root):
    """Read and cross-check the annotation files of the CUB folder ``root``.

    Raises a one-line :class:`UserError` naming the path (missing root) or file and line (bad annotations, an id
    given twice).
    """
    root = Path(root)
    if not (root / "images.txt").is_file():
        raise UserError(f"CUB dataset not found: {not_found_reason(root)}", fix="dataset")
    class_dirs = read_numbered_names(root / "classes.txt", "class_id class_name", "class")
    images = _read_images(root / "images.txt")
    _check_inside(root / "images.txt", images)
    ids = list(images)
    labels = _per_image(root / "image_class_labels.txt", 2, "image_id class_id", images,
                        lambda path, no, fields: _class_index(path, no, fields[0], len(class_dirs)))
    is_train = _per_image(root / "train_test_split.txt", 2, "image_id is_training_image", images, _train_flag)
    boxes = _per_image(root / "bounding_boxes.txt", 5, "image_id x y width height", images,
                       lambda path, no, fields: parse_numbers(path, no, fields, float), required=False)
    part_names, parts = _read_parts(root / "parts", images)
    return CUBAnnotations(
        root=root,
        image_ids=np.array(ids, dtype=np.int64),
        paths=[images[i][1] for i in ids],
        labels=np.array([labels[i] for i in ids], dtype=np.int64),
        is_train=np.array([is_train[i] for i in ids], dtype=bool),
        class_dirs=class_dirs,
        class_names=[display_name(c) for c in class_dirs],
        boxes=None if boxes is None else np.array([boxes[i] for i in ids], dtype=np.float32),
        part_names=part_names,
        parts=parts,
    )


def _read_images(path):
    """``{image id: (line, relative path)}`` of images.txt; an id or a path on two lines is refused."""
    images, line_of_path = {}, {}
    for iid, (no, (rel,)) in read_keyed(path, 2, "image_id path").items():
        rel = rel.strip()
        if rel in line_of_path:
            raise UserError(f"{path}:{no}: image {rel} repeats line {line_of_path[rel]} (one file under two ids)")
        line_of_path[rel] = no
        images[iid] = (no, rel)
    return images


def _leaves(rel):
    """How the images.txt entry ``rel`` leaves images/ on its face (an absolute path, ``..``), else ''."""
    if rel.startswith(("/", "\\")) or rel[1:2] == ":":  # POSIX or Windows root, or a drive (C:)
        return "is outside images/ (an absolute path)"
    if ".." in rel.replace("\\", "/").split("/"):
        return "is outside images/ ('..' climbs out of it)"
    return ""


def _odd_entries(base):
    """``{relative path: 'link' | 'special'}`` of the symbolic links and of the entries that are neither file nor
    folder (devices, pipes, sockets) under ``base`` (one walk; links are not followed)."""
    odd, todo = {}, [""]
    while todo:
        rel = todo.pop()
        try:
            entries = list(os.scandir(os.path.join(base, rel)))
        except OSError:  # missing or unreadable: the images in it are reported as unreadable when read
            continue
        for e in entries:
            name = f"{rel}/{e.name}" if rel else e.name
            if e.is_symlink():
                odd[name] = "link"
            elif e.is_dir(follow_symlinks=False):
                todo.append(name)
            elif not e.is_file(follow_symlinks=False):
                odd[name] = "special"
    return odd


def _outside(base, real_base, rel, odd):
    """Why the entry ``rel`` (inside images/ on its face) is no regular file inside images/ once links are
    followed, else ''."""
    parts = PurePosixPath(rel).parts
    kinds = {odd.get("/".join(parts[:k])) for k in range(1, len(parts) + 1)} - {None}
    if not kinds:
        return ""
    real = os.path.realpath(os.path.join(base, rel))
    if os.path.commonpath([real, real_base]) != real_base:
        return f"is outside images/ (a link leads to {real})"
    try:
        regular = stat.S_ISREG(os.stat(real).st_mode)
    except OSError:  # a missing file is reported as unreadable when read
        return ""
    return "" if regular else f"is no regular file but a device, a pipe or a socket ({real})"


def _check_inside(path, images):
    """Refuse (``path``:line) an images.txt entry that resolves outside images/: an absolute path, ``..``, a link
    that leads out, or a device file; archive members are refused alike (:mod:`vitlrp.download`)."""
    base = path.parent / "images"
    odd, real_base = _odd_entries(base), os.path.realpath(base)
    for no, rel in images.values():
        why = _leaves(rel) or (_outside(base, real_base, rel, odd) if odd else "")
        if why:
            raise UserError(f"{path}:{no}: {rel!r} {why}; images.txt may name only regular files inside images/: "
                            "fix or remove that line")


def _per_image(path, ncols, what, images, convert, required=True):
    """``{image id: convert(path, line, fields)}`` of a file with one line per image of ``images``, each exactly
    once; None if the file is missing and not ``required``."""
    rows = read_keyed(path, ncols, what, image_ids=images, required=required)
    if rows is None:
        return None
    for iid, (line, _) in images.items():
        if iid not in rows:
            raise UserError(f"{path.with_name('images.txt')}:{line}: image id {iid} has no entry in {path.name}")
    return {iid: convert(path, no, fields) for iid, (no, fields) in rows.items()}


def _class_index(path, no, text, num_classes):
    """The 0-based class of a 1-based class id field."""
    cid = parse_number(path, no, text)
    if not 1 <= cid <= num_classes:
        raise UserError(f"{path}:{no}: class {cid} is outside classes.txt (1..{num_classes})")
    return cid - 1


def _train_flag(path, no, fields):
    flag = parse_number(path, no, fields[0])
    if flag not in (0, 1):
        raise UserError(f"{path}:{no}: is_training_image must be 0 or 1, got {fields[0]}")
    return bool(flag)


def _read_parts(folder, images):
    """``(part names, [N, P, 3] x, y, visible)`` from parts/parts.txt and parts/part_locs.txt, or (None, None)
    without them; every image needs every part exactly once."""
    f_names, f_locs = folder / "parts.txt", folder / "part_locs.txt"
    if not (f_names.is_file() and f_locs.is_file()):
        return None, None
    part_names = read_numbered_names(f_names, "part_id part_name", "part")
    row_of = {iid: r for r, iid in enumerate(images)}
    parts = np.zeros((len(images), len(part_names), 3), dtype=np.float32)
    line_of = np.zeros((len(images), len(part_names)), dtype=np.int64)  # 0: no line yet
    # not read_keyed: a dict of its 15 x 11,788 keys would double the time CUB takes to load
    rows = read_rows(f_locs, 5, "image_id part_id x y visible")
    for no, fields in rows:
        iid, pid = parse_numbers(f_locs, no, fields[:2])
        if iid not in row_of:
            raise UserError(f"{f_locs}:{no}: image id {iid} is not in images.txt")
        if not 1 <= pid <= len(part_names):
            raise UserError(f"{f_locs}:{no}: part {pid} is outside parts.txt (1..{len(part_names)})")
        r = row_of[iid]
        if line_of[r, pid - 1]:
            raise _repeated(f_locs, no, [("image id", iid), ("part", pid)], int(line_of[r, pid - 1]), rows)
        line_of[r, pid - 1] = no
        parts[r, pid - 1] = parse_numbers(f_locs, no, fields[2:], float)
    if not line_of.all():
        r, p = np.argwhere(line_of == 0)[0]
        raise UserError(f"{f_locs}: image id {list(images)[r]} has no entry for part {p + 1}")
    return part_names, parts


class CUBDataset(Dataset):
    """One split of a CUB folder as model inputs.

    Each item is a dict with ``image`` (normalized ``[3, S, S]``), ``label`` and ``index`` (position in the split).
    With ``annotations=True`` (eval geometry only) it adds ``box`` (``[4]`` x0, y0, x1, y1 edges) and
    ``parts`` (``[P, 3]`` x, y, visible) in model-input pixels; a part outside the crop counts as not visible.
    With ``report_errors=True`` an unreadable image yields a zero image and its message in ``error``
    instead of raising, so a batch job can skip and report it.
    """

    def __init__(self, ann, split, preprocessing, train_augment=False, annotations=False, report_errors=False):
        if annotations and train_augment:
            raise ValueError("annotations are only defined for the deterministic eval geometry")
        if annotations and ann.boxes is None:
            raise UserError(f"{ann.root} has no bounding_boxes.txt, which this step needs")
        if annotations and ann.parts is None:
            raise UserError(f"{ann.root} has no parts/parts.txt and parts/part_locs.txt, which this step needs")
        self.ann = ann
        self.split = split
        self.rows = ann.split_indices(split)
        self.preprocessing = preprocessing
        self.transform = preprocessing.train_transform() if train_augment else preprocessing.eval_transform()
        self.annotations = annotations
        self.report_errors = report_errors

    def __len__(self):
        return len(self.rows)

    def image_path(self, index):
        return self.ann.image_path(self.rows[index])

    def __getitem__(self, index):
        row = self.rows[index]
        item = {"label": int(self.ann.labels[row]), "index": int(index)}
        if self.report_errors:
            item["error"] = ""
        try:
            img = open_rgb(self.ann.image_path(row))
        except OSError as err:
            if not self.report_errors:
                raise
            size = self.preprocessing.crop_size
            img, item["error"] = None, str(err)
            item["image"] = torch.zeros(3, size, size)
        if img is not None:
            item["image"] = self.transform(img)
        if self.annotations:
            width, height = img.size if img is not None else (1, 1)
            item["box"] = torch.from_numpy(
                self.preprocessing.map_box(self.ann.boxes[row], width, height).astype(np.float32))
            xy = self.preprocessing.map_points(self.ann.parts[row, :, :2], width, height)
            size = self.preprocessing.crop_size
            inside = (xy >= -0.5).all(1) & (xy < size - 0.5).all(1)
            visible = (self.ann.parts[row, :, 2] > 0) & inside & (img is not None)
            item["parts"] = torch.from_numpy(np.concatenate([xy, visible[:, None]], 1).astype(np.float32))
        return item

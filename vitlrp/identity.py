"""Which checkpoint and which dataset a run used, by content, and which runs on one page are stale.

A run records ``{"checkpoints": {path: sha256}, "dataset": {"root": path, "sha256": ...}}`` in its config.json
(:func:`vitlrp.cli.config_dict` with ``identity=True``): the checkpoint's own hash, and one hash over the dataset's
annotation files (images.txt, labels, split, classes, boxes, parts, shortcut marks), so a retrained checkpoint at the
same path or an edited dataset tells itself apart. :func:`stale` compares the runs shown together.
"""
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

from .fileio import write_json

# the files that define a CUB folder's images, labels and split (the images themselves are not hashed: too slow)
ANNOTATION_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt",
                    "bounding_boxes.txt", "parts/parts.txt", "parts/part_locs.txt", "shortcut_marks.txt")
_memo = {}  # (real path, size, mtime, inode) → sha256: a file is hashed once per process


def file_sha256(path):
    """The sha256 (hex) of the file at ``path``, or None when it is missing or unreadable."""
    try:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)
        if key not in _memo:
            with open(path, "rb") as fh:
                _memo[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None
    return _memo[key]


def dataset_sha256(root):
    """One sha256 over the annotation files of the CUB folder ``root`` (a missing file counts as missing)."""
    h = hashlib.sha256()
    for name in ANNOTATION_FILES:
        h.update(f"{name} {file_sha256(Path(root) / name) or '-'}\n".encode())
    return h.hexdigest()


def identify(checkpoints=(), dataset_root=""):
    """The identity of a run that read ``checkpoints`` (paths) and the CUB folder ``dataset_root``."""
    doc = {"checkpoints": {str(Path(p).resolve()): file_sha256(p) for p in checkpoints if str(p)}}
    if str(dataset_root):
        doc["dataset"] = {"root": str(Path(dataset_root).resolve()), "sha256": dataset_sha256(dataset_root)}
    return doc


def record(config_path, doc):
    """Write ``doc`` as the ``identity`` of the run whose config.json is ``config_path`` (a training run records
    the checkpoints it wrote once it has written them)."""
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    write_json(config_path, {**config, "identity": doc})


def read(folder):
    """The identity a run folder's config.json records, or None (no file, unreadable, or none recorded)."""
    try:
        doc = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("identity")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("checkpoints", {}), dict):
        return None
    return doc


def short(digest):
    return (digest or "none")[:8]


def _checkpoint_notes(name, doc):
    """Why the checkpoints ``doc`` names no longer match the files at their paths (one note per file)."""
    notes = []
    for path, digest in doc.get("checkpoints", {}).items():
        now = file_sha256(path)
        if now is None:
            notes.append(f"{name}: its checkpoint {path} is no longer there")
        elif digest and now != digest:
            notes.append(f"{name}: its checkpoint {path} has changed since it ran (sha256 {short(digest)} then, "
                         f"{short(now)} now; retrained?)")
    return notes


def _odd_ones(values, what):
    """Notes for the runs whose ``values`` (run name → a hash, or None) differ from the others'."""
    counts = Counter(v for v in values.values() if v is not None)
    if len(counts) < 2:
        return {}
    top = counts.most_common()
    if top[0][1] == top[1][1]:  # no majority: every run is in doubt
        listing = ", ".join(f"{n} ({short(v)})" for n, v in values.items() if v is not None)
        return {n: f"{n}: the runs here were made from different {what}s: {listing}" for n, v in values.items()
                if v is not None}
    common = top[0][0]
    return {n: f"{n}: made from another {what} than the other runs" for n, v in values.items()
            if v is not None and v != common}


def stale(runs, reference=None):
    """``{run name: [reasons]}`` of the runs that are stale among ``runs`` (name → recorded identity, or None for a
    run that recorded none). A run is stale when a checkpoint it read has changed or gone since, or when its
    checkpoint or dataset differs from the other runs'. ``reference``: the run whose checkpoints the others read
    (the training run, which records the checkpoints it wrote); a run whose checkpoint is none of its counts as
    made from another checkpoint."""
    out = {}
    for name, doc in runs.items():
        if doc:
            out.setdefault(name, []).extend(_checkpoint_notes(name, doc))
    ref = runs.get(reference) or {}
    made = set(ref.get("checkpoints", {}).values()) - {None}
    readers = {n: d for n, d in runs.items() if d and n != reference and d.get("checkpoints")}
    if made and not out.get(reference):
        for n, d in readers.items():  # (a run whose checkpoint changed since says so already)
            if not set(d["checkpoints"].values()) & made and not out.get(n):
                out.setdefault(n, []).append(f"{n}: made from another checkpoint than {reference}/ wrote")
    else:
        shas = {n: "/".join(sorted(v for v in d["checkpoints"].values() if v)) or None for n, d in readers.items()
                if not out.get(n)}
        for n, note in _odd_ones(shas, "checkpoint").items():
            out.setdefault(n, []).append(note)
    datasets = {n: (d.get("dataset") or {}).get("sha256") for n, d in runs.items() if d}
    for n, note in _odd_ones(datasets, "dataset").items():
        out.setdefault(n, []).append(note)
    return {n: notes for n, notes in out.items() if notes}

"""Atomic file writes: write to a temporary file beside the target, then ``os.replace`` it.

A reader (or a re-run after a crash) never sees a half-written file under the final name.
"""
import csv
import io
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

# mkstemp creates private (0600) files; give the final file the permissions a plain open() would
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's folder; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError) and err.filename in (None, tmp, str(tmp)):
            err.filename = str(path)  # name the file the user knows (e.g. disk full), not the temporary one
        raise


def write_bytes(path, data):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def _finite_or_null(obj):
    """``obj`` with every NaN or infinite float replaced by None (JSON has no NaN; strict readers reject it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj


def write_json(path, obj):
    """Write strict JSON: a NaN or infinite number is written as ``null``."""
    write_text(path, json.dumps(_finite_or_null(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def torch_save(path, obj, what="file"):
    """``torch.save`` streamed to a temporary file, then renamed (no in-memory copy of the whole file).

    A failed write (disk full, ...) is one UserError; the file previously at ``path`` stays as it was.
    """
    import torch

    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as err:
        # torch's zip writer reports a failed write as a RuntimeError ("... file write failed")
        if isinstance(err, RuntimeError) and "write" not in str(err).lower():
            raise
        reason = os.strerror(err.errno) if getattr(err, "errno", None) else str(err).splitlines()[0]
        raise UserError(f"cannot write the {what} {path} ({reason}); the previous one (if any) was left as it "
                        "was: free some space or choose another folder") from None


def save_figure(fig, path, **kwargs):
    """Save a matplotlib figure atomically (format taken from the final suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), **kwargs)


def write_csv(path, rows, fieldnames):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def append_csv_row(path, row, fieldnames):
    """Append one row (header first if the file is new); the whole file is rewritten atomically."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction="ignore", lineterminator="\n")
    if not old:
        writer.writeheader()
    writer.writerow(row)
    write_text(path, old + buf.getvalue())


def ensure_writable_dir(path, what="output folder"):
    """Create ``path`` if needed and check a file can be written there; raise a one-line UserError otherwise."""
    path = Path(path)
    for folder in (path, *path.parents):  # the nearest existing one decides: a file there is no folder
        if folder.exists():
            if not folder.is_dir():
                where = "is" if folder == path else f"lies under {folder}, which is"
                raise UserError(f"cannot write to {what} {path}: it {where} a file, not a folder; "
                                "choose another folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"cannot write to {what} {path}: {err.strerror or err}; choose another folder") from None
    return path

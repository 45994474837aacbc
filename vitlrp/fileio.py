"""Atomic file writes: write to a temporary file beside the target, then ``os.replace`` it.

A reader (or a re-run after a crash) never sees a half-written file under the final name.
"""
import csv
import errno
import io
import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

# mkstemp creates private (0600) files; give the final file the permissions a plain open() would
_UMASK = os.umask(0)
os.umask(_UMASK)


# every temporary name this module makes: ".<final name or purpose>.<8 mkstemp characters>.tmp"
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
# torch writes one tensor's storage at a time: a write that failed for want of space can leave this much unused
NEARLY_FULL = 64 * 2**20


def _mkstemp(folder, purpose):
    fd, tmp = tempfile.mkstemp(prefix=f".{purpose}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return tmp


def temp_files(folder):
    """The temporary files of this module's writes in ``folder`` (a killed writer leaves them)."""
    return sorted(p for p in Path(folder).iterdir() if _TEMP_NAME.fullmatch(p.name) and p.is_file())


def free_space(folder):
    """``'12.3 MiB free'`` on the file system of ``folder`` (``'free space unknown'`` if it cannot be read)."""
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"


def is_disk_full(err):
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def _nearly_full(folder):
    """torch reports a full disk as a RuntimeError without errno ("unexpected pos ...", "iostream error"): the
    free space tells it from other failures."""
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL
    except OSError:
        return False


@contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's folder; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _mkstemp(path.parent, path.name)
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
            try:
                torch.save(obj, tmp)
            except RuntimeError as err:
                if _nearly_full(tmp.parent):  # measured while the partial file still takes its share
                    first = (str(err).splitlines() or [type(err).__name__])[0]
                    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {free_space(tmp.parent)}; torch "
                                  f"said {first!r}") from None
                raise
    except (OSError, RuntimeError) as err:
        # torch's zip writer reports a failed write as a RuntimeError ("... file write failed")
        if isinstance(err, RuntimeError) and "write" not in str(err).lower():
            raise
        reason = (err.strerror or os.strerror(err.errno)) if isinstance(err, OSError) and err.errno else \
            str(err).splitlines()[0]
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
    if str(path) == "":  # Path("") is the current folder: never what an empty setting meant
        raise UserError(f"{what} is empty: give a folder")
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
        os.unlink(_mkstemp(path, "write-test"))
    except OSError as err:
        raise UserError(f"cannot write to {what} {path}: {err.strerror or err}; choose another folder") from None
    return path

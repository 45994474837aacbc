"""One run's output folder: a lock against a second run at once, and an incomplete marker until the run ends.

While a run works, ``RUN_INCOMPLETE.txt`` says so (a killed or failed run leaves it); at its successful end the
run removes the older runs' outputs it did not rewrite (only names it owns) and drops the marker, so every file
matching the script's output names belongs to the last finished run. The lock is an ``fcntl.flock`` on
``.vitlrp-run.lock``: the kernel releases it when its process dies, so a killed run never blocks the folder.
"""
import errno
import fcntl
import fnmatch
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from .errors import UserError
from .fileio import ensure_writable_dir, write_text

LOCK = ".vitlrp-run.lock"
MARKER = "RUN_INCOMPLETE.txt"


def _describe(info):
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"
            + (f", {info['script']}" if info.get("script") else ""))


class FolderLock:
    """Exclusive use of a folder by this process; a second one gets a one-line UserError naming the holder."""

    def __init__(self, path, what="output folder"):
        self.path, self.what, self.fd = Path(path), what, None

    def __enter__(self):
        ensure_writable_dir(self.path, self.what)
        lock = self.path / LOCK
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise UserError(f"{self.what} {self.path} is in use by another run ({_describe(_read(lock))}); wait "
                            f"for it to end or choose another folder") from None
        previous = _read(lock)
        if previous:  # a holder that released cleanly empties the file: this one was killed
            print(f"note: a run that did not end cleanly ({_describe(previous)}) held {self.path}; taking over",
                  file=sys.stderr)
        self.info = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "script": Path(sys.argv[0]).name}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.info).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc):
        # the file stays (unlinking a flocked file lets two runs lock two inodes); empty means released
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        return False


def _read(lock):
    try:
        return json.loads(Path(lock).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def incomplete_note(folder):
    """The marker's text when ``folder`` holds an unfinished (killed, failed or running) run, else ``None``."""
    try:
        return (Path(folder) / MARKER).read_text(encoding="utf-8").strip() or "(no details)"
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"(marker unreadable: {err})"


def check_complete(folder, what, how):
    """Refuse a folder whose last run did not finish (one line naming the marker and ``how`` to finish it)."""
    if incomplete_note(folder) is not None:
        raise UserError(f"{what} {folder} holds a run that did not finish ({Path(folder) / MARKER}); {how}")


class RunFolder(FolderLock):
    """Lock ``path``, remove ``clear_first`` and write the marker; :meth:`finish` cleans up and drops the marker.

    ``owned``: glob patterns of the names this script writes (only these are ever removed). A full disk inside the
    ``with`` block becomes one line naming the file and the free space; the marker stays.
    """

    def __init__(self, path, what, owned, clear_first=()):
        super().__init__(path, what)
        self.owned, self.clear_first = tuple(owned), tuple(clear_first)

    def __enter__(self):
        super().__enter__()
        try:
            for name in self.clear_first:  # an unfinished folder must not look finished to a reader
                (self.path / name).unlink(missing_ok=True)
            command = " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0] else "the same command"
            write_text(self.path / MARKER, (
                f"This folder is incomplete: a run ({_describe(self.info)}) is writing it, or was killed or failed "
                f"before its end. Files here may mix that run's and an older run's outputs.\n"
                f"To finish, run again: {command}\n"))
        except BaseException:
            super().__exit__()
            raise
        return self

    def finish(self, written):
        """The run ended: remove owned files it did not write (older runs' leftovers), then the marker."""
        keep = set(written) | {MARKER, LOCK}
        for path in sorted(self.path.iterdir()):
            if path.is_file() and path.name not in keep and any(fnmatch.fnmatch(path.name, p) for p in self.owned):
                path.unlink()
        (self.path / MARKER).unlink()

    def __exit__(self, exc_type, exc, tb):
        super().__exit__()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            try:
                free = f"{shutil.disk_usage(self.path).free / 2**20:.1f} MiB free"
            except OSError:
                free = "free space unknown"
            name = exc.filename or "a file"
            raise UserError(f"disk full while writing {name} in {self.what} {self.path} ({free}); free some space "
                            f"and run again (the folder is marked incomplete, see {MARKER})") from None
        return False

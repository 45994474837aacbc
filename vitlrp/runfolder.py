"""One run's output folder: a lock against a second run at once, an incomplete marker until the run ends, and the list
of the files this project's runs wrote there.

While a run works, ``RUN_INCOMPLETE.txt`` says so (a killed or failed run leaves it); at its successful end the run
removes the older runs' outputs it did not rewrite (only names it owns) and drops the marker, so every file matching
the script's output names belongs to the last finished run. ``.vitlrp-run-files.json`` lists the files this
project's runs wrote: a run refuses a folder that holds files of its output names not listed there, so it never
overwrites or removes a file of the user's. A folder with the lock file but no list was written by an older version
of this project, which kept none (or only ever locked, as the checkpoint folder is): its files of the output names
count as its runs' (as they did then), and the next finished run writes the list. The lock is an ``fcntl.flock`` on
``.vitlrp-run.lock``: the kernel releases it when its process dies, so a killed run never blocks the folder, and the
next run removes the temporary files the killed one left.
"""
import errno
import fcntl
import fnmatch
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from .errors import UserError
from .fileio import ensure_writable_dir, free_space, is_disk_full, temp_files, write_json, write_text

LOCK = ".vitlrp-run.lock"
MARKER = "RUN_INCOMPLETE.txt"
MANIFEST = ".vitlrp-run-files.json"
_BOOKKEEPING = {LOCK, MARKER, MANIFEST}


def _describe(info):
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"
            + (f", {info['script']}" if info.get("script") else ""))


def _matches(name, patterns):
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _listed(folder):
    """The names the list of ``folder`` holds: None without a list, none if it is unreadable."""
    try:
        files = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8")).get("files", [])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        return set()
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


def _write_list(folder, names):
    write_json(Path(folder) / MANIFEST, {"about": "files the runs of this project wrote here (they may replace or "
                                                  "remove these, and no other)", "files": sorted(names)})


def foreign_files(folder, patterns):
    """The files of ``folder`` matching ``patterns`` that no run of this project wrote (sorted names)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    listed = _listed(folder)
    if (folder / MARKER).exists() or (listed is None and (folder / LOCK).exists()):
        return []  # an unfinished run wrote here and listed nothing yet, or an older version that kept no list
    return sorted(p.name for p in folder.iterdir() if p.name not in _BOOKKEEPING and p.name not in (listed or ())
                  and _matches(p.name, patterns) and p.is_file())


def _unlock(fd):
    # the file stays (unlinking a flocked file lets two runs lock two inodes); empty means released
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class FolderLock:
    """Exclusive use of a folder by this process; a second one gets a one-line UserError naming the holder.

    Taking the lock removes the temporary files a killed writer left there (with a note); a full disk while the
    lock is held or taken is one line naming the file and the free space.
    """

    keeps_list = False  # whether taking the lock of a new folder starts its list of files (RunFolder does)

    def __init__(self, path, what="output folder"):
        if str(path) == "":  # Path("") is the current folder: never what an empty setting meant
            raise UserError(f"{what} is empty: give a folder")
        self.path, self.what, self.fd = Path(path), what, None

    def __enter__(self):
        ensure_writable_dir(self.path, self.what)
        lock = self.path / LOCK
        try:
            if self.keeps_list and not lock.exists() and _listed(self.path) is None:
                _write_list(self.path, ())  # before the lock file: a lock without a list marks an older version
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise self._disk_full(err) or err from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise UserError(f"{self.what} {self.path} is in use by another run ({_describe(_read(lock))}); wait "
                            f"for it to end or choose another folder") from None
        try:
            previous = _read(lock)
            if previous:  # a holder that released cleanly empties the file: this one was killed
                print(f"note: a run that did not end cleanly ({_describe(previous)}) held {self.path}; taking over",
                      file=sys.stderr)
            self.info = {"pid": os.getpid(), "host": socket.gethostname(),
                         "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "script": Path(sys.argv[0]).name}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self.info).encode(), 0)
            self._remove_temp_files()
        except BaseException as err:
            _unlock(fd)
            raise self._disk_full(err) or err from None
        self.fd = fd
        return self

    def _remove_temp_files(self):
        """A killed writer's temporary files: safe to remove, no other run writes here while we hold the lock."""
        stale = temp_files(self.path)
        if not stale:
            return
        size = sum(p.stat().st_size for p in stale)
        for p in stale:
            p.unlink(missing_ok=True)
        names = ", ".join(p.name for p in stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
        print(f"note: removed {len(stale)} temporary file(s) ({size / 2**20:.1f} MiB) that a killed run left in "
              f"{self.what} {self.path}: {names}", file=sys.stderr)

    def _disk_full(self, err):
        """The one line for a full disk (``err`` is ENOSPC or EDQUOT), naming the file and the free space; else None."""
        if not is_disk_full(err):
            return None
        where = Path(err.filename).parent if err.filename else self.path
        name = err.filename or f"in {self.what} {self.path}"
        marked = f" (the folder is marked incomplete, see {MARKER})" if (self.path / MARKER).exists() else ""
        return UserError(f"disk full while writing {name} ({free_space(where)}); free some space and run "
                         f"again{marked}")

    def refuse_foreign(self, patterns):
        """Stop with one line if the folder holds files matching ``patterns`` that no run of this project wrote."""
        foreign = foreign_files(self.path, patterns)
        if foreign:
            names = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise UserError(f"{self.what} {self.path} holds files this project did not write ({names}): choose a new "
                            "or empty folder (or move those files away)")

    def record(self, names):
        """Add ``names``, written under this lock, to the folder's list of files this project wrote."""
        listed = _listed(self.path)
        if listed is not None:  # an older version's folder has no list: its next finished run writes one
            _write_list(self.path, listed | set(names))

    def __exit__(self, exc_type, exc, tb):
        _unlock(self.fd)
        self.fd = None
        full = self._disk_full(exc)
        if full:
            raise full from None
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
    except (FileNotFoundError, NotADirectoryError):  # no folder (a file, or a path under one): no run in it
        return None
    except OSError as err:
        return f"(marker unreadable: {err})"


def check_complete(folder, what, how):
    """Refuse a file given as the folder, and a folder whose last run did not finish (one line naming the marker and
    ``how`` to finish it)."""
    if Path(folder).is_file():
        raise UserError(f"{what} {folder} is a file, not a folder: give the folder of the run")
    if incomplete_note(folder) is not None:
        raise UserError(f"{what} {folder} holds a run that did not finish ({Path(folder) / MARKER}); {how}")


class RunFolder(FolderLock):
    """Lock ``path``, write the marker and remove ``clear_first``; :meth:`finish` cleans up and drops the marker.

    ``owned``: glob patterns of the names this script writes (only these are ever removed); a folder holding files
    of these names that no run of this project wrote is refused, unless ``overwrite`` (the user said so). A full
    disk inside the ``with`` block becomes one line naming the file and the free space; the marker stays.
    """

    keeps_list = True

    def __init__(self, path, what, owned, clear_first=(), overwrite=False):
        super().__init__(path, what)
        self.owned, self.clear_first, self.overwrite = tuple(owned), tuple(clear_first), overwrite

    def __enter__(self):
        if not self.overwrite and not (self.path / LOCK).exists():
            self.refuse_foreign(self.owned)  # before the lock file is made: a folder of the user's gets nothing of ours
        super().__enter__()
        try:
            if not self.overwrite:
                self.refuse_foreign(self.owned)
            self.mark()
            for name in self.clear_first:  # after the marker: an unfinished folder must not look finished
                (self.path / name).unlink(missing_ok=True)
        except BaseException as err:
            super().__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def mark(self, why=None, how=None):
        """Write the incomplete marker: ``why`` (default: this run is writing, or was killed or failed) and ``how``
        to finish (default: run the same command again)."""
        command = shlex.join(["python", *sys.argv]) if sys.argv and sys.argv[0] else "the same command"
        why = why or (f"This folder is incomplete: a run ({_describe(self.info)}) is writing it, or was killed or "
                      "failed before its end. Files here may mix that run's and an older run's outputs.")
        write_text(self.path / MARKER, f"{why}\n{how or f'To finish, run again: {command}'}\n")

    def finish(self, written):
        """The run ended: remove owned files it did not write (older runs' leftovers), list what it wrote, then drop
        the marker."""
        keep = set(written)
        for path in sorted(self.path.iterdir()):
            if path.name not in keep | _BOOKKEEPING and _matches(path.name, self.owned) and path.is_file():
                path.unlink()
        listed = (_listed(self.path) or set()) | keep  # other scripts' files listed here stay listed
        _write_list(self.path, {n for n in listed if (self.path / n).is_file()})
        (self.path / MARKER).unlink()

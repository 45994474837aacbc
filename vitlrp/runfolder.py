"""One run's output folder: a lock against a second run at once, an incomplete marker until the run ends, and the list
of the files this project's runs wrote there.

While a run works, ``RUN_INCOMPLETE.txt`` says so (a killed or failed run leaves it); at its successful end the run
removes the older runs' outputs it did not rewrite (only names it owns) and drops the marker, so every file matching
the script's output names belongs to the last finished run. ``.vitlrp-run-files.json`` lists the files this
project's runs wrote and the script that made the folder: a run refuses a folder that holds files of its output names
not listed there (unless a marker says an unfinished run wrote them), so it never overwrites or removes a file of the
user's, and a folder another script made (a list that names no script: one that lists files this script does not
write), so two scripts never mix (or overwrite) their outputs in one folder.

The lock is the ``filelock`` package's on ``.vitlrp-run.lock`` (``flock`` on Unix, ``LockFileEx`` on Windows): the
operating system releases it when its process dies, so a killed run never blocks the folder. Who holds it (pid, host,
start, script) is in ``.vitlrp-run-holder.json``, written once the lock is taken and removed when it is released: a
second run names the holder from it, and a run that finds it left behind says a run did not end cleanly and removes
the temporary files that run left.
"""
import fnmatch
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import UserError
from .fileio import ensure_writable_dir, free_space, is_disk_full, temp_files, write_json, write_text

LOCK = ".vitlrp-run.lock"
HOLDER = ".vitlrp-run-holder.json"
MARKER = "RUN_INCOMPLETE.txt"
MANIFEST = ".vitlrp-run-files.json"
_BOOKKEEPING = {LOCK, HOLDER, MARKER, MANIFEST}
# one line per folder an interrupted run of this process left incomplete, with how to finish it (the command line
# prints them after "interrupted"; see unfinished())
_unfinished = []


def _describe(info):
    if not info:
        return "it has not recorded who it is yet"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"
            + (f", {info['script']}" if info.get("script") else ""))


def _read(path):
    """The JSON object at ``path``; empty if it is missing or unreadable."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _matches(name, patterns):
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _listed(folder):
    """The names the list of ``folder`` holds (none without a list or if it is unreadable)."""
    files = _read(Path(folder) / MANIFEST).get("files", [])
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


def this_script():
    """The file name of the script this process runs (``'evaluate_lrp.py'``), '' when there is none."""
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""


def maker(folder):
    """The script that made ``folder`` as its list records it; '' when it records none (no list, or one written
    before lists named their script)."""
    script = _read(Path(folder) / MANIFEST).get("script")
    return script if isinstance(script, str) else ""


def _write_list(folder, names, script):
    write_json(Path(folder) / MANIFEST, {"about": "files the runs of this project wrote here (they may replace or "
                                                  "remove these, and no other), and the script that made the folder",
                                         "script": script, "files": sorted(names)})


def foreign_files(folder, patterns):
    """The files of ``folder`` matching ``patterns`` that no run of this project wrote (sorted names)."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / MARKER).exists():  # an unfinished run wrote here and listed nothing yet
        return []
    listed = _listed(folder)
    return sorted(p.name for p in folder.iterdir() if p.name not in _BOOKKEEPING and p.name not in listed
                  and _matches(p.name, patterns) and p.is_file())


def unfinished():
    """The lines naming the folders that interrupted runs of this process left incomplete, each with how to finish
    it; the list is emptied."""
    lines = list(_unfinished)
    _unfinished.clear()
    return lines


class FolderLock:
    """Exclusive use of a folder by this process; a second one gets a one-line UserError naming the holder.

    Taking the lock removes the temporary files a killed writer left there (with a note); a full disk while the
    lock is held or taken is one line naming the file and the free space.
    """

    def __init__(self, path, what="output folder"):
        if str(path) == "":  # Path("") is the current folder: never what an empty setting meant
            raise UserError(f"{what} is empty: give a folder")
        self.path, self.what, self.lock, self.info = Path(path), what, None, {}

    def __enter__(self):
        ensure_writable_dir(self.path, self.what)
        lock = FileLock(self.path / LOCK, blocking=False)
        try:
            lock.acquire()
        except Timeout:
            raise UserError(f"{self.what} {self.path} is in use by another run ({_describe(_read(self.path / HOLDER))})"
                            "; wait for it to end or choose another folder") from None
        except OSError as err:
            raise self._disk_full(err) or err from None
        try:
            self._take_over()
        except BaseException as err:
            self._release(lock)
            raise self._disk_full(err) or err from None
        self.lock = lock
        return self

    def _take_over(self):
        """Note a holder that did not end cleanly, remove what it left, and record this one."""
        previous = _read(self.path / HOLDER)
        if previous:  # a holder that released its lock removed this file: this one was killed
            print(f"note: a run that did not end cleanly ({_describe(previous)}) held {self.path}; taking over",
                  file=sys.stderr)
        self._remove_temp_files()
        self.info = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "script": Path(sys.argv[0]).name}
        write_json(self.path / HOLDER, self.info)

    def _release(self, lock):
        try:
            (self.path / HOLDER).unlink(missing_ok=True)
        finally:
            lock.release()

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

    def refuse_other_script(self, script, owned=None):
        """Stop with one line if a script other than ``script`` made the folder; when its list names no script
        (written before lists did), if it lists files that match none of ``owned`` (this script's output names)."""
        made_by = maker(self.path)
        if made_by and script and made_by != script:
            raise UserError(f"{self.what} {self.path} holds the outputs of {made_by}, not of {script}: choose another "
                            f"{self.what} (each script writes a folder of its own)")
        theirs = sorted(n for n in _listed(self.path) if owned is not None and not _matches(n, owned))
        if not made_by and theirs:
            names = ", ".join(theirs[:3]) + (", ..." if len(theirs) > 3 else "")
            raise UserError(f"{self.what} {self.path} holds the outputs of another script ({names}), not of "
                            f"{script or 'this one'}: choose another {self.what} (each script writes a folder of its "
                            "own)")

    def record(self, names, script=""):
        """Add ``names``, written under this lock, to the folder's list of files this project wrote; the folder's
        script stays the one that made it (``script`` when none did)."""
        _write_list(self.path, _listed(self.path) | set(names), maker(self.path) or script)

    def __exit__(self, exc_type, exc, tb):
        self._release(self.lock)
        self.lock = None
        full = self._disk_full(exc)
        if full:
            raise full from None
        return False


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
    of these names that no run of this project wrote is refused, unless ``overwrite`` (the user said so), and so is
    a folder another script made (``script``: this one, default the running script's file name). A full
    disk inside the ``with`` block becomes one line naming the file and the free space; the marker stays. A run
    interrupted (Ctrl-C, SIGTERM) inside it leaves a line saying how to finish for :func:`unfinished`.
    """

    def __init__(self, path, what, owned, clear_first=(), overwrite=False, script=None):
        super().__init__(path, what)
        self.owned, self.clear_first, self.overwrite = tuple(owned), tuple(clear_first), overwrite
        self.script = this_script() if script is None else script
        self.how = None

    def __enter__(self):
        self.refuse_other_script(self.script, self.owned)
        if not self.overwrite and not (self.path / LOCK).exists():
            self.refuse_foreign(self.owned)  # before the lock file is made: a folder of the user's gets nothing of ours
        super().__enter__()
        try:
            self.refuse_other_script(self.script, self.owned)  # again under the lock: another may have finished
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
        self.how = how or f"To finish, run again: {command}"
        write_text(self.path / MARKER, f"{why}\n{self.how}\n")

    def finish(self, written):
        """The run ended: remove owned files it did not write (older runs' leftovers), list what it wrote, then drop
        the marker."""
        keep = set(written)
        for path in sorted(self.path.iterdir()):
            if path.name not in keep | _BOOKKEEPING and _matches(path.name, self.owned) and path.is_file():
                path.unlink()
        listed = _listed(self.path) | keep  # files recorded beside this run's (inspect's predictions) stay listed
        _write_list(self.path, {n for n in listed if (self.path / n).is_file()}, self.script)
        (self.path / MARKER).unlink()

    def __exit__(self, exc_type, exc, tb):
        if isinstance(exc, KeyboardInterrupt) and self.how and (self.path / MARKER).exists():
            _unfinished.append(f"{self.what} {self.path} is incomplete (see {MARKER}). {self.how}")
        return super().__exit__(exc_type, exc, tb)

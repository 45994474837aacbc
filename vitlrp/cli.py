"""Turn a script's constants block into command-line flags.

The constants block is the run of top-level assignments at the top of a script, before its first ``import``.
Each UPPER_CASE constant (bool, int, float, str or list) assigned there can be overridden as
``--kebab-case value`` (or ``--kebab-case=value``), typed by its default: bools take true/false, lists take
comma-separated values; a folder (``*_DIR``, ``*_ROOT``) cannot be set empty. Some values are checked by name for
every script: a path (``*_PATH``, ``*_DIR``, ``*_ROOT``, ``*_FILE``, ``ARCHIVE``, ``PRETRAINED``) must fit the file
system's name and path limits, a seed (``SEED``, ``*_SEED``) must be one numpy accepts. UPPER_CASE names defined
after the first import (tables the code uses, such as the training script's ``RECIPE``) are not settings and never
become flags. ``--help`` lists the flags with their defaults and the comment written beside each. Bad flags and
:class:`~vitlrp.errors.UserError` end the script with one line; so do Ctrl-C and SIGTERM (with how to finish the
folders the run left incomplete), after the clean-up of ``with`` blocks and ``finally``, and a path too long for the
file system.
"""
import ast
import errno
import os
import re
import shlex
import signal
import sys
import threading
import tokenize
from types import SimpleNamespace

from . import runfolder
from .errors import UserError

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_SUPPORTED = (bool, int, float, str, list, tuple)
# constants that name a file or folder: their values must fit the file system's limits
_PATH_SUFFIXES = ("_PATH", "_DIR", "_ROOT", "_FILE")
_PATH_NAMES = ("ARCHIVE", "PRETRAINED")  # a local archive; a weights name or a weights file
SEED_MAX = 2**32 - 1  # numpy's legacy seeding (np.random.seed) takes no more; torch and random accept it


def _flag(name):
    return "--" + name.lower().replace("_", "-")


def block_names(path):
    """Names assigned at the top level of the script at ``path`` before its first import (None if unreadable)."""
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (OSError, TypeError, ValueError, SyntaxError):
        return None
    names = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            break
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def _constants(namespace):
    """The constants block of the script behind ``namespace`` (all UPPER_CASE globals if it has no source file)."""
    block = block_names(namespace.get("__file__"))
    return {k: v for k, v in namespace.items()
            if re.fullmatch(r"[A-Z][A-Z0-9_]*", k) and isinstance(v, _SUPPORTED) and (block is None or k in block)}


def _comments(path):
    """Map constant name -> the comment on its line in the script source (for --help)."""
    try:
        with open(path, encoding="utf-8") as fh:
            tokens = list(tokenize.generate_tokens(fh.readline))
    except (OSError, TypeError, tokenize.TokenError, SyntaxError):
        return {}
    first, comments = {}, {}
    for tok in tokens:
        line = tok.start[0]
        if tok.type == tokenize.NAME and tok.start[1] == 0:
            first.setdefault(line, tok.string)
        elif tok.type == tokenize.COMMENT and line in first:
            comments[first[line]] = tok.string.lstrip("# ").strip()
    return comments


def parse_value(name, text, default):
    """Parse ``text`` into the type of ``default``; raise UserError naming the flag otherwise."""
    flag = _flag(name)
    if isinstance(default, bool):
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise UserError(f"{flag} expects true or false, got {text!r}")
    if isinstance(default, (list, tuple)):
        item_default = default[0] if len(default) else ""
        items = [t.strip() for t in text.split(",") if t.strip()]
        return [parse_value(name, t, item_default) for t in items]
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise UserError(f"{flag} expects an integer, got {text!r}") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise UserError(f"{flag} expects a number, got {text!r}") from None
    if text == "" and default and name.endswith(("_DIR", "_ROOT")):  # "" is the current folder to every open()
        raise UserError(f"{flag} is empty: give a folder")
    return text


def _short(text, keep=40):
    """``text`` cut to about ``keep`` characters for a one-line message."""
    return text if len(text) <= keep else f"{text[:keep // 2]}…{text[-keep // 2:]}"


def _limits(path):
    """(NAME_MAX, PATH_MAX) in bytes of the file system ``path`` would be on (its nearest existing folder's)."""
    folder = os.path.abspath(path)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:  # isdir is False for a too long path
        folder = os.path.dirname(folder)

    def conf(key, unknown):
        try:
            value = os.pathconf(folder, key)
        except (AttributeError, OSError, ValueError):  # no pathconf (Windows) or no such setting
            return unknown
        return value if value and value > 0 else unknown

    return conf("PC_NAME_MAX", 255), conf("PC_PATH_MAX", 4096)


def check_path(name, value):
    """Refuse a path whose file or folder name, or whole length, is over the file system's limit (one line)."""
    if not isinstance(value, str) or not value:
        return
    name_max, path_max = _limits(value)
    for part in value.replace(os.sep, "/").split("/"):
        if len(os.fsencode(part)) > name_max:
            raise UserError(f"{_flag(name)}: the name {_short(part)!r} is {len(os.fsencode(part))} bytes long, over "
                            f"the {name_max} bytes a file or folder name may have on this file system (NAME_MAX); "
                            "choose a shorter name")
    full = len(os.fsencode(os.path.abspath(value)))
    if full >= path_max:  # PATH_MAX counts the terminating NUL
        raise UserError(f"{_flag(name)} is {full} bytes long as a full path, over the {path_max - 1} bytes a path may "
                        "have on this system (PATH_MAX); choose a shorter path")


def is_path(name):
    """Whether the constant ``name`` names a file or folder (checked against the file system's limits)."""
    return name.endswith(_PATH_SUFFIXES) or name in _PATH_NAMES


def check_value(name, value):
    """The checks every script gets by the constant's name: paths fit the file system, seeds fit numpy."""
    if is_path(name):
        check_path(name, value)
    if (name == "SEED" or name.endswith("_SEED")) and not (
            isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX):
        raise UserError(f"{_flag(name)} must be an integer from 0 to {SEED_MAX} (2**32 - 1), got {value!r}")


def _format_default(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "(empty)"
    if value == "":
        return "(empty)"
    return str(value)


def _type_name(value):
    if isinstance(value, (list, tuple)):
        return "LIST"
    return {bool: "BOOL", int: "INT", float: "FLOAT"}.get(type(value), "STR")


def help_text(namespace, notes=None):
    """The ``--help`` text: usage, the script's docstring, its flags with defaults and comments, then ``notes()``
    (e.g. the registered methods)."""
    consts = _constants(namespace)
    comments = _comments(namespace.get("__file__"))
    script = os.path.relpath(namespace.get("__file__", "script.py"))
    lines = [f"usage: python {script} [--flag value ...]", ""]
    doc = (namespace.get("__doc__") or "").strip()
    if doc:
        lines += [doc, ""]
    lines.append("flags (each overrides the constant of the same name at the top of the script):")
    width = max((len(_flag(k)) + len(_type_name(v)) + 1 for k, v in consts.items()), default=10)
    for name, value in consts.items():
        head = f"{_flag(name)} {_type_name(value)}"
        note = comments.get(name, "")
        lines.append(f"  {head:<{width}}  default: {_format_default(value)}" + (f"  # {note}" if note else ""))
    if notes is not None:
        lines += ["", notes()]
    return "\n".join(lines)


def configure(namespace, argv=None, help_notes=None):
    """Apply ``--flags`` from ``argv`` to the UPPER_CASE constants of ``namespace``; return them as a namespace.

    The script's globals are updated too, so code may use either ``cfg.NAME`` or ``NAME``. ``help_notes()`` adds
    text after the flags of ``--help``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    consts = _constants(namespace)
    by_flag = {_flag(k): k for k in consts}
    values = dict(consts)
    given = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(help_text(namespace, help_notes))
            raise SystemExit(0)
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}: flags look like --name value (see --help)")
        flag, eq, text = arg.partition("=")
        if flag not in by_flag:
            raise UserError(f"unknown flag {flag} (see --help for the list)")
        if not eq:
            if i + 1 >= len(argv):
                raise UserError(f"{flag} needs a value")
            i += 1
            text = argv[i]
        name = by_flag[flag]
        values[name] = parse_value(name, text, consts[name])
        given.add(name)
        i += 1
    for name, value in values.items():
        check_value(name, value)
    namespace.update(values)
    cfg = SimpleNamespace(**values)
    cfg._given = frozenset(given)
    script = namespace.get("__file__")
    cfg._command = shlex.join(["python", os.path.relpath(script) if script else "script.py", *argv])
    return cfg


def given(cfg):
    """The names of the constants set on the command line (not merely kept at the script's value)."""
    return getattr(cfg, "_given", frozenset())


# The command-line way out of a library error (UserError.fix): the library names the case, the scripts' words are here.
FIXES = {
    "dataset": ("run `python scripts/download_cub.py` (or `python scripts/make_synthetic_cub.py` for the synthetic "
                "mini-CUB), or pass --dataset-root with the folder that holds images.txt"),
    "checkpoint": "train one with `python scripts/train_vit_cub.py` or pass --checkpoint-path",
    "checkpoint_source": "checkpoints come from `python scripts/train_vit_cub.py`",
    "state_dict": "`python scripts/train_vit_cub.py --pretrained PATH` can start a run from it",
    "diverged": "use an earlier checkpoint or train again with a lower --lr",
    "classes": "use the dataset it was trained on (--dataset-root) or another --checkpoint-path",
    "pretrained_file": "or pass --pretrained PATH",
    "pretrained_download": "then pass --pretrained PATH",
    "hf_folder": "then pass --model hf:FOLDER",
    "cpu": "or use --device cpu",
    "gamma_file": "run `python scripts/sweep_gamma.py` first, or leave --gamma-file empty",
    "archive_retry": "run again, or pass --archive PATH",
    "archive_by_hand": "download CUB_200_2011.tgz by hand and pass --archive PATH",
    "skip_md5": "pass --expected-md5 '' to skip the check",
    "drop_archive": "or drop --archive to keep this one",
    "permute_labels": "`python scripts/train_vit_cub.py --permute-labels true` with the real model's other settings "
                      "(`make data-randomization` does it for the demo)",
}


def message(err, constants=()):
    """The line a script prints for ``err``: its message with the setting at fault (``err.setting``, the library's
    name of it) named as the script's constant when it has one (``image_size`` → ``IMAGE_SIZE``), then the way out
    (``FIXES[err.fix]`` or ``err.fix``)."""
    text = str(err)
    settings = getattr(err, "setting", None) or ()
    for name in (settings,) if isinstance(settings, str) else settings:
        if name.upper() in constants:
            text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", name.upper(), text)
    fix = getattr(err, "fix", None)
    return f"{text}; {FIXES.get(fix, fix)}" if fix else text


def config_dict(cfg, identity=False):
    """The effective configuration as a JSON-ready dict, with the ``command`` line that set it (what a report
    quotes so its numbers can be made again); ``identity``: with the content hashes of the checkpoint and the
    dataset the run read (:mod:`vitlrp.identity`), which tell a stale run on a page of several."""
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items() if not k.startswith("_")}
    out.update({"command": cfg._command} if hasattr(cfg, "_command") else {})
    if identity:
        from .identity import identify

        path = getattr(cfg, "CHECKPOINT_PATH", "")
        out["identity"] = identify([path] if isinstance(path, str) and path else [],
                                   getattr(cfg, "DATASET_ROOT", "") or "")
    return out


class Terminated(KeyboardInterrupt):
    """SIGTERM (a timeout, ``docker stop``, SLURM): unwound like Ctrl-C, so clean-up runs and folders stay marked."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def run(main, namespace, argv=None, help_notes=None):
    """Parse flags into ``namespace`` and call ``main(cfg)``; a UserError becomes one line and exit status 2.

    ``main`` may return an int exit status (e.g. 1 when some samples failed). Ctrl-C exits with 130, SIGTERM with
    143 (128 + the signal, as the shell reports a process the signal ended), each after a line per folder the run
    left incomplete saying how to finish it.
    """
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    runfolder.unfinished()  # forget what an earlier run in this process left (tests run scripts in-process)
    try:
        cfg = configure(namespace, argv, help_notes)
        status = main(cfg)
    except UserError as err:
        print(f"error: {message(err, _constants(namespace))}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        print("\n".join(["interrupted" + (" (SIGTERM)" if terminated else ""), *runfolder.unfinished()]),
              file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM if terminated else 130) from None
    except OSError as err:
        if err.errno != errno.ENAMETOOLONG:
            raise
        print(f"error: a path is too long for the file system ({_short(str(err.filename or '?'), 60)}): choose "
              "shorter folder or file names", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if main_thread and previous is not None:  # None: set outside Python, it cannot be put back
            signal.signal(signal.SIGTERM, previous)
    raise SystemExit(int(status or 0))

"""vitlrp.cli: constants block → typed --flags, --help, one-line errors."""
import ast
import os
import re
import runpy
from pathlib import Path

import pytest
from conftest import REPO_ROOT, error_lines, run_script, run_script_inprocess

from vitlrp import cli
from vitlrp.errors import UserError

SCRIPT = '''\
"""A tiny demo script."""
# --- configuration ---
EPOCHS = 3  # number of passes over the data
LR = 0.001  # learning rate
USE_AMP = True  # mixed precision
NAME = "run"  # run name
TAGS = []  # free-form tags
SIZES = [224, 384]  # crop sizes
SCALE = (0.25, 1.0)  # crop scale range
# ---------------------
lower_case = 5
TABLE = {"a": 1}
from vitlrp import cli


def main(cfg):
    print(f"EPOCHS={EPOCHS!r} LR={LR!r} NAME={NAME!r} TAGS={TAGS!r} cfg.LR={cfg.LR!r}")
    if NAME == "fail":
        from vitlrp.errors import UserError
        raise UserError("the run failed on purpose")
    return 3 if NAME == "three" else 0


if __name__ == "__main__":
    cli.run(main, globals())
'''


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "demo.py"
    path.write_text(SCRIPT, encoding="utf-8")
    return path


@pytest.fixture
def ns(script):
    return runpy.run_path(str(script), run_name="demo")


def test_defaults_unchanged_without_flags(ns):
    cfg = cli.configure(ns, [])
    assert (cfg.EPOCHS, cfg.LR, cfg.USE_AMP, cfg.NAME, cfg.TAGS, cfg.SIZES) == (3, 0.001, True, "run", [], [224, 384])
    assert not hasattr(cfg, "lower_case") and not hasattr(cfg, "TABLE")


def test_typed_overrides_and_globals_updated(ns):
    cfg = cli.configure(ns, ["--epochs", "7", "--lr", "2e-4", "--use-amp", "false", "--name", "abc",
                             "--tags", "a, b,c", "--sizes", "96,128", "--scale", "0.5,0.9"])
    assert cfg.EPOCHS == 7 and type(cfg.EPOCHS) is int
    assert cfg.LR == pytest.approx(2e-4) and type(cfg.LR) is float
    assert cfg.USE_AMP is False
    assert cfg.NAME == "abc"
    assert cfg.TAGS == ["a", "b", "c"]  # empty-list default → list of str
    assert cfg.SIZES == [96, 128] and all(type(s) is int for s in cfg.SIZES)
    assert cfg.SCALE == [0.5, 0.9]
    # the script's globals follow the flags
    assert (ns["EPOCHS"], ns["LR"], ns["USE_AMP"], ns["NAME"], ns["TAGS"]) == (7, cfg.LR, False, "abc", ["a", "b", "c"])


@pytest.mark.parametrize("text,value", [("true", True), ("FALSE", False), ("yes", True), ("0", False)])
def test_bool_values(ns, text, value):
    assert cli.configure(ns, ["--use-amp", text]).USE_AMP is value


def test_equals_form_and_negative_numbers(ns):
    cfg = cli.configure(ns, ["--epochs=11", "--lr=-0.5", "--name=a=b", "--tags="])
    assert (cfg.EPOCHS, cfg.LR, cfg.NAME, cfg.TAGS) == (11, -0.5, "a=b", [])
    assert cli.configure(ns, ["--lr", "-1"]).LR == -1.0


def test_int_text_for_float_constant_stays_float(ns):
    cfg = cli.configure(ns, ["--lr", "1"])
    assert cfg.LR == 1.0 and type(cfg.LR) is float


@pytest.mark.parametrize("argv,needle", [
    (["--epochs", "2.5"], "--epochs"),
    (["--lr", "fast"], "--lr"),
    (["--use-amp", "maybe"], "--use-amp"),
    (["--sizes", "1,x"], "--sizes"),
    (["--nope", "1"], "--nope"),
    (["--lower-case", "1"], "--lower-case"),
    (["--table", "1"], "--table"),
    (["--epochs"], "--epochs"),
    (["epochs", "3"], "epochs"),
])
def test_bad_flags_raise_one_line_user_error(ns, argv, needle):
    with pytest.raises(UserError) as info:
        cli.configure(ns, argv)
    message = str(info.value)
    assert needle in message and "\n" not in message
    assert ns["EPOCHS"] == 3  # nothing applied


def test_help_lists_every_constant_default_and_comment(ns, capsys):
    with pytest.raises(SystemExit) as info:
        cli.configure(ns, ["--lr", "5", "--help"])
    assert info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "A tiny demo script." in out
    expected = {
        "--epochs": ("INT", "default: 3", "# number of passes over the data"),
        "--lr": ("FLOAT", "default: 0.001", "# learning rate"),
        "--use-amp": ("BOOL", "default: true", "# mixed precision"),
        "--name": ("STR", "default: run", "# run name"),
        "--tags": ("LIST", "default: (empty)", "# free-form tags"),
        "--sizes": ("LIST", "default: 224,384", "# crop sizes"),
        "--scale": ("LIST", "default: 0.25,1.0", "# crop scale range"),
    }
    lines = out.splitlines()
    for flag, parts in expected.items():
        line = next((ln for ln in lines if ln.strip().startswith(flag + " ")), None)
        assert line is not None, f"{flag} missing from --help:\n{out}"
        for part in parts:
            assert part in line, (flag, part, line)
    assert "--lower-case" not in out and "--table" not in out


def test_config_dict_is_json_ready(ns):
    import json

    d = cli.config_dict(cli.configure(ns, ["--epochs", "4"]))
    assert d["EPOCHS"] == 4 and d["SCALE"] == [0.25, 1.0]
    json.dumps(d)


def test_run_turns_user_error_into_exit_2(ns, capsys):
    def main(cfg):
        raise UserError("something is wrong: fix it")

    with pytest.raises(SystemExit) as info:
        cli.run(main, ns, [])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "error: something is wrong: fix it\n"

    with pytest.raises(SystemExit) as info:
        cli.run(lambda cfg: 0, ns, ["--epochs", "x"])
    assert info.value.code == 2
    assert error_lines(capsys.readouterr().err) == ["error: --epochs expects an integer, got 'x'"]


def test_run_words_the_fix_the_library_names(ns, capsys):
    for fix, tail in (("checkpoint", cli.FIXES["checkpoint"]), ("move the file away", "move the file away")):
        with pytest.raises(SystemExit):
            cli.run(lambda cfg, f=fix: (_ for _ in ()).throw(UserError("checkpoint x.pt not found", fix=f)), ns, [])
        assert capsys.readouterr().err == f"error: checkpoint x.pt not found; {tail}\n"
    assert cli.message(UserError("plain")) == "plain"


def test_no_library_module_names_a_script_or_a_flag():
    """The command-line wording lives in cli.FIXES and the scripts; docstrings may still point at scripts."""
    found = []
    for path in sorted((Path(cli.__file__).parent).rglob("*.py")):
        if path.name == "cli.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        found += [f"{path.name}:{n.lineno}: {n.value[:60]!r}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
                  and re.search(r"(^|[\s(`'])--[a-z][a-z-]+|scripts/|\b\w+_(cub|lrp|gamma)\.py\b", n.value)]
    assert not found, found


def test_run_returns_main_status(ns):
    for status, code in ((None, 0), (0, 0), (1, 1)):
        with pytest.raises(SystemExit) as info:
            cli.run(lambda cfg, s=status: s, ns, [])
        assert info.value.code == code


def test_script_subprocess_exit_codes_and_single_error_line(script):
    ok = run_script(script, "--lr", "0.5", "--tags", "x,y", cwd=script.parent)
    assert ok.returncode == 0, ok.stderr
    assert "EPOCHS=3 LR=0.5 NAME='run' TAGS=['x', 'y'] cfg.LR=0.5" in ok.stdout

    bad = run_script(script, "--bogus", "1", cwd=script.parent)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: unknown flag --bogus (see --help for the list)"]
    assert "Traceback" not in bad.stderr

    fail = run_script(script, "--name", "fail", cwd=script.parent)
    assert fail.returncode == 2
    assert fail.stderr.strip().splitlines() == ["error: the run failed on purpose"]

    assert run_script(script, "--name", "three", cwd=script.parent).returncode == 3

    helped = run_script(script, "--help", cwd=script.parent)
    assert helped.returncode == 0 and "--epochs INT" in helped.stdout and "usage:" in helped.stdout


@pytest.mark.parametrize("name", ["OUTPUT_DIR", "CHECKPOINT_DIR", "DATASET_ROOT"])
def test_an_empty_folder_is_one_line_not_the_current_folder(name):
    # Path("") is "." to every open(): an empty --output-dir once wrote into, and cleaned, the current folder
    flag = "--" + name.lower().replace("_", "-")
    with pytest.raises(UserError, match=f"^{flag} is empty: give a folder$"):
        cli.parse_value(name, "", "results/x")
    assert cli.parse_value("CHECKPOINT_PATH", "", "checkpoints/x.pt") == ""  # empty = "the recorded one" there


def test_sigterm_unwinds_like_ctrl_c_and_exits_143(ns, capsys):
    import os
    import signal
    import time

    before = signal.getsignal(signal.SIGTERM)
    cleaned = []

    def main(cfg):
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # as `timeout`, `docker stop` or SLURM send it
            time.sleep(10)
        finally:
            cleaned.append(True)

    with pytest.raises(SystemExit) as info:
        cli.run(main, ns, [])
    assert info.value.code == 143 and cleaned == [True]
    assert capsys.readouterr().err == "interrupted (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler is back


HELP_WITHOUT_FCNTL = '''\
import contextlib, io, runpy, sys
sys.modules["fcntl"] = None  # as on a platform without fcntl (Windows): importing it raises ImportError
for script in sys.argv[1:]:
    out, code = io.StringIO(), None
    sys.argv = [script, "--help"]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    print(f"=== {script} exit={code!r} usage={out.getvalue().startswith('usage: python ')}")
'''


def test_every_script_starts_without_fcntl():
    """The folder lock must not need fcntl (issue 21): every script's --help runs with importing fcntl failing."""
    import subprocess
    import sys

    scripts = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "scripts").glob("*.py"))
    done = subprocess.run([sys.executable, "-c", HELP_WITHOUT_FCNTL, *scripts], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [ln for ln in done.stdout.splitlines() if ln.startswith("===")] == [
        f"=== {s} exit=0 usage=True" for s in scripts]


def test_no_module_imports_fcntl():
    found = []
    for path in sorted([*(REPO_ROOT / "vitlrp").glob("*.py"), *(REPO_ROOT / "scripts").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}:{node.lineno}" for n in names if n and n.split(".")[0] == "fcntl"]
    assert not found, found


# --- checks every script gets by the constant's name: paths that fit the file system, seeds numpy takes ----------
def name_max(folder):
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError):
        return 255


def test_a_name_over_name_max_is_one_line_counted_in_bytes(tmp_path):
    limit = name_max(tmp_path)
    cli.check_path("OUTPUT_DIR", str(tmp_path / ("a" * limit) / "b"))  # at the limit: fine
    for name in ("a" * (limit + 1), "é" * (limit // 2 + 1)):  # é is two bytes in UTF-8
        with pytest.raises(UserError) as info:
            cli.check_path("OUTPUT_DIR", str(tmp_path / "new" / name / "x"))
        assert str(info.value) == (f"--output-dir: the name {name[:20] + '…' + name[-20:]!r} is "
                                   f"{len(name.encode())} bytes long, over the {limit} bytes a file or folder name "
                                   "may have on this file system (NAME_MAX); choose a shorter name")
    assert not (tmp_path / "new").exists()


def test_a_path_over_path_max_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path_max = os.pathconf(tmp_path, "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
    deep = "/".join(["d" * 100] * (path_max // 101 + 1))  # every name short, the whole too long
    with pytest.raises(UserError, match=rf"^--checkpoint-path is \d+ bytes long as a full path, over the "
                                        rf"{path_max - 1} bytes a path may have on this system \(PATH_MAX\); choose a "
                                        r"shorter path$"):
        cli.check_path("CHECKPOINT_PATH", deep)
    cli.check_path("CHECKPOINT_PATH", "/".join(["d" * 100] * 3))


@pytest.mark.parametrize("name,value,ok", [
    ("SEED", 0, True), ("SEED", 2**32 - 1, True), ("SEED", -1, False), ("SEED", 2**32, False),
    ("SEED", 10**20, False), ("SPLIT_SEED", -5, False), ("SEED", True, False), ("SEED_STYLE_IMAGES", -1, True)])
def test_seeds_must_be_what_numpy_takes(name, value, ok):
    if ok:
        cli.check_value(name, value)
        return
    flag = "--" + name.lower().replace("_", "-")
    with pytest.raises(UserError, match=rf"^{flag} must be an integer from 0 to 4294967295 \(2\*\*32 - 1\), got "):
        cli.check_value(name, value)


def test_a_path_too_long_that_slips_through_is_one_line(ns, capsys):
    import errno

    def main(cfg):
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), "/tmp/" + "x" * 300)

    with pytest.raises(SystemExit) as info:
        cli.run(main, ns, [])
    assert info.value.code == 2
    assert capsys.readouterr().err == (f"error: a path is too long for the file system (/tmp/{'x' * 25}…{'x' * 30}): "
                                       "choose shorter folder or file names\n")


PATH_FLAGS = [(p.stem, name) for p in sorted((REPO_ROOT / "scripts").glob("*.py"))
              for name in cli.block_names(p) if cli.is_path(name)]


def test_every_script_has_its_paths_checked():
    assert {s for s, _ in PATH_FLAGS} == {p.stem for p in (REPO_ROOT / "scripts").glob("*.py")}
    assert ("download_cub", "ARCHIVE") in PATH_FLAGS and ("train_vit_cub", "PRETRAINED") in PATH_FLAGS


@pytest.mark.parametrize("script,name", PATH_FLAGS)
def test_a_name_too_long_for_the_file_system_is_one_line_in_every_script(script, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, here or anywhere
    flag, long_name = "--" + name.lower().replace("_", "-"), "n" * (name_max(tmp_path) + 45)
    code, stdout, stderr = run_script_inprocess(script, flag, tmp_path / "new" / long_name)
    assert code == 2 and stdout == ""
    assert error_lines(stderr) == [f"error: {flag}: the name '{'n' * 20}…{'n' * 20}' is {len(long_name)} bytes long, "
                                   f"over the {name_max(tmp_path)} bytes a file or folder name may have on this file "
                                   "system (NAME_MAX); choose a shorter name"]
    assert "Traceback" not in stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script,flag", [("test_vit_forward", "--checkpoint-path"), ("evaluate_lrp", "--output-dir"),
                                         ("train_vit_cub", "--checkpoint-dir")])
def test_a_path_over_path_max_is_one_line_in_the_scripts_the_audit_named(script, flag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_script_inprocess(script, flag, "/".join(["d" * 200] * 25))  # 5,025 bytes
    assert code == 2 and "Traceback" not in stderr and list(tmp_path.iterdir()) == []
    path_max = os.pathconf(tmp_path, "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
    assert [ln.split(" is ")[0] + " ..." + ln.split("bytes long")[1] for ln in error_lines(stderr)] == [
        f"error: {flag} ... as a full path, over the {path_max - 1} bytes a path may have on this system (PATH_MAX); "
        "choose a shorter path"]


@pytest.mark.parametrize("script,seed", [("evaluate_lrp", "-1"), ("train_vit_cub", "99999999999999999999"),
                                         ("make_synthetic_cub", "4294967296")])
def test_a_seed_numpy_cannot_take_is_one_line_before_any_work(script, seed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run_script_inprocess(script, "--seed", seed, "--dataset-root", tmp_path / "none")
    assert code == 2 and stdout == "" and "Traceback" not in stderr and list(tmp_path.iterdir()) == []
    assert error_lines(stderr) == [f"error: --seed must be an integer from 0 to 4294967295 (2**32 - 1), got {seed}"]

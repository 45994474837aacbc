"""The public API a researcher imports: its names, docs/api.md's examples (run here), the same maps as the scripts'
path for every registered method in a fresh interpreter, and a built wheel that holds every module and runs the
three-line example in a fresh virtual environment (nothing downloaded)."""
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

import vitlrp

API_DOC = REPO_ROOT / "docs" / "api.md"


def python_blocks(path=API_DOC):
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def test_the_public_api_is_flat_and_listed():
    expected = {"Explainer", "explain", "score", "build_model", "load_checkpoint", "list_methods", "METRICS",
                "GammaSpec", "MethodSettings", "Attribution", "Method", "UserError", "create_method"}
    assert expected <= set(vitlrp.__all__) == set(vitlrp._EXPORTS)
    assert all(hasattr(vitlrp, name) for name in vitlrp.__all__) and set(vitlrp.__all__) <= set(dir(vitlrp))
    assert "balanced" not in vitlrp.list_methods() and "gradcam" in vitlrp.list_methods()
    with vitlrp.create_method("balanced", vitlrp.build_model("vit_tiny", 10)) as method:
        assert isinstance(method, vitlrp.Explainer) and method.gamma == vitlrp.GammaSpec(1.0, 0.5)


def test_importing_the_package_or_a_scripts_first_module_imports_no_torch():
    """The public names are imported on first use: `from vitlrp import cli` (every script's first import) stays
    light; a public name does not collide with a module (``vitlrp.explain`` stays the function)."""
    code = "import sys, vitlrp; from vitlrp import cli; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]
    modules = {p.stem for p in (REPO_ROOT / "vitlrp").iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert not modules & set(vitlrp.__all__)


def test_the_examples_of_docs_api_md_run(tmp_path, capsys):
    from vitlrp.models import save_checkpoint
    from vitlrp.preprocess import Preprocessing

    torch.manual_seed(0)
    model = vitlrp.build_model("vit_tiny", num_classes=10)
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.1)  # a trained model's head is not zero: its maps are not either
    save_checkpoint(tmp_path / "vit_cub_best.pt", model, "vit_tiny", [f"bird {i}" for i in range(10)],
                    Preprocessing.for_size(112))
    blocks = python_blocks()
    assert len(blocks) >= 6 and len(blocks[0].strip().splitlines()) == 3  # the three lines
    namespace = {"tmp": tmp_path}
    for block in blocks:
        exec(compile(block, str(API_DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "image_size 100 must be a multiple of vit_tiny's patch size 16 | image_size" in out
    assert namespace["result"].relevance.shape == (1, 112, 112)
    assert set(namespace["scores"]) == set(vitlrp.api.DEFAULT_METRICS)


SAME_PATH = textwrap.dedent('''\
    """In a fresh interpreter: vitlrp.explain gives the scripts' maps for every registered method name."""
    from contextlib import ExitStack

    import torch

    import vitlrp
    m = vitlrp.build_model("vit_tiny", num_classes=10)
    x = torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    r = vitlrp.explain(m, x, method="balanced")

    from vitlrp.methods import REGISTRY, MethodSettings, attribute_all, parse_methods
    from vitlrp.sanity.runner import query_maps

    assert r.relevance.shape == (3, 112, 112) and not r.relevance.any()  # torchvision's zero head: zero maps
    with torch.no_grad():  # a random head, so that the maps compared are not all zero
        m.heads.head.weight.copy_(torch.randn(m.heads.head.weight.shape, generator=torch.Generator().manual_seed(2)))
        target = m(x).argmax(1)
    names = [n for n, e in REGISTRY.items() if e.parse is None] + list(vitlrp.PRESETS) + [
        "gamma:1:linear:0.5:0", "balanced+attn", "gamma:0.25:0.1/0.2/0.3/0.4+attn"]
    with ExitStack() as stack:
        opened = [stack.enter_context(c.create(m, MethodSettings())) for c in parse_methods(names)]
        evaluation = attribute_all(opened, x, [target], ids=[0, 1, 2])  # evaluate_lrp.py's path
        sanity = query_maps(opened, x, target, [0, 1, 2])  # sanity_checks.py's and test_vit_forward.py's
    for name in names:
        mine = vitlrp.explain(m, x, target, method=name)
        assert mine.relevance.abs().amax() > 0, name
        assert torch.equal(mine.relevance, evaluation[name][0].relevance), name
        assert torch.equal(mine.logits, evaluation[name][0].logits), name
        assert torch.equal(mine.relevance, sanity[name]), name
    print("same maps:", len(names))
''')


def test_explain_gives_the_scripts_maps_for_every_method_in_a_fresh_interpreter(tmp_path):
    script = tmp_path / "same_path.py"
    script.write_text(SAME_PATH, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "same maps: " in proc.stdout and int(proc.stdout.split("same maps: ")[1]) >= 14


def build_wheel(out):
    """The wheel of this checkout, built offline from a copy of its package files (nothing written into it)."""
    import shutil

    src = out / "src"
    shutil.copytree(REPO_ROOT / "vitlrp", src / "vitlrp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", src / "pyproject.toml")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
                           "--quiet", "-w", str(out / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (out / "dist").glob("vitlrp-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_runs_the_three_lines(tmp_path):
    import site
    import sysconfig

    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "vitlrp").rglob("*.py")}
    assert modules - names == set() and "vitlrp/methods/lrp.py" in names and "vitlrp/families/torchvision.py" in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: torch==2.14.1" in metadata and "Requires-Dist: captum==0.9.0" in metadata
    assert "pytest" not in metadata and "quantus" not in metadata  # test-only tools stay out

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "--quiet", str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the dependencies are the ones installed here (torch, LXT, ...): after the install, so pip never sees (or
    # touches) this environment's packages
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    here = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    (Path(purelib) / "reuse_installed_dependencies.pth").write_text("\n".join(here) + "\n", encoding="utf-8")
    example = python_blocks()[0] + textwrap.dedent('''
        assert result.relevance.shape == (2, 112, 112)
        assert vitlrp.__file__.startswith(sys.argv[1]), vitlrp.__file__
        print("ran from", vitlrp.__file__)
    ''')
    run = tmp_path / "elsewhere"
    run.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH: only the wheel's vitlrp can be found
    proc = subprocess.run([str(python), "-c", "import sys\n" + example, purelib], cwd=run, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"ran from {purelib}/vitlrp/__init__.py" in proc.stdout

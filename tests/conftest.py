"""Shared test helpers: a hand-written CUB-200-2011 folder, the synthetic mini-CUB, and script runners.

Everything is offline, CPU-only and seeded.
"""
import contextlib
import io
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on a 2-core machine: one thread each (and in the scripts they start), or
    # OpenMP's spinning threads fight over the cores and small tensor ops get 40x slower
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# The 15 CUB part names in parts/parts.txt order, written out here independently of vitlrp.
CUB_PART_NAMES = ("back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing",
                  "nape", "right eye", "right leg", "right wing", "tail", "throat")
CUB_CLASS_DIRS = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")

# One dict per image, in images.txt order: class id (1-based), train flag, (width, height), PIL mode.
# Landscape, portrait and square sizes; one grayscale ('L') and one CMYK JPEG.
CUB_IMAGES = (
    {"cls": 1, "train": True, "size": (64, 48), "mode": "RGB"},
    {"cls": 1, "train": False, "size": (40, 72), "mode": "RGB"},
    {"cls": 2, "train": True, "size": (50, 50), "mode": "L"},
    {"cls": 2, "train": False, "size": (80, 60), "mode": "CMYK"},
    {"cls": 3, "train": True, "size": (96, 64), "mode": "RGB"},
    {"cls": 3, "train": False, "size": (48, 96), "mode": "RGB"},
)
INVISIBLE_PARTS = (2, 7, 11)  # 0-based part indices written as `0 0 0` (CUB's "not visible")


def fixture_box(width, height):
    """The (x, y, w, h) box the builder writes for an image of this size."""
    return (float(width // 4), float(height // 5), float(width // 2), float(height // 2))


def fixture_parts(width, height):
    """The [15, 3] (x, y, visible) parts the builder writes: visible ones spread inside the box."""
    x, y, w, h = fixture_box(width, height)
    out = np.zeros((len(CUB_PART_NAMES), 3), dtype=np.float32)
    for p in range(len(CUB_PART_NAMES)):
        if p not in INVISIBLE_PARTS:
            out[p] = (x + (p + 1) / 16 * w, y + ((p * 7) % 15 + 1) / 16 * h, 1)
    return out


def build_cub(root, images=CUB_IMAGES, class_dirs=CUB_CLASS_DIRS, seed=0, first_id=1, boxes=True, parts=True,
              corrupt=(), draw=None):
    """Write a small folder in the official CUB-200-2011 layout to ``root`` and return ``root``.

    ``images``: dicts with ``cls`` (1-based class id), ``train``, ``size`` (w, h) and ``mode`` ('RGB', 'L',
    'CMYK'); ids are ``first_id, first_id + 1, ...``. ``corrupt``: ids whose file is not a decodable image.
    ``draw(image_id, (w, h)) -> PIL.Image`` replaces the seeded noise content. Without ``boxes`` / ``parts``
    bounding_boxes.txt / parts/ are not written.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = {k: [] for k in ("images", "labels", "split", "boxes", "part_locs")}
    for n, spec in enumerate(images):
        iid = first_id + n
        w, h = spec["size"]
        class_dir = class_dirs[spec["cls"] - 1]
        rel = f"{class_dir}/{class_dir.split('.', 1)[1]}_{iid:04d}_{n}.jpg"
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if iid in corrupt:
            path.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg " + bytes(64))
        else:
            img = draw(iid, (w, h)) if draw else Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            img.convert(spec.get("mode", "RGB")).save(path, quality=95)
        lines["images"].append(f"{iid} {rel}")
        lines["labels"].append(f"{iid} {spec['cls']}")
        lines["split"].append(f"{iid} {int(spec['train'])}")
        lines["boxes"].append(f"{iid} " + " ".join(f"{v:.1f}" for v in fixture_box(w, h)))
        for p, (px, py, vis) in enumerate(fixture_parts(w, h), 1):
            lines["part_locs"].append(f"{iid} {p} {px:.1f} {py:.1f} {int(vis)}")
    files = {
        "images.txt": lines["images"],
        "image_class_labels.txt": lines["labels"],
        "train_test_split.txt": lines["split"],
        "classes.txt": [f"{i} {c}" for i, c in enumerate(class_dirs, 1)],
    }
    if boxes:
        files["bounding_boxes.txt"] = lines["boxes"]
    if parts:
        files["parts/parts.txt"] = [f"{i} {name}" for i, name in enumerate(CUB_PART_NAMES, 1)]
        files["parts/part_locs.txt"] = lines["part_locs"]
    for name, rows in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules that train tiny models: intra-op threads gain them nothing, and on a busy 2-core machine they
    lose up to 8x (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cub_fixture(tmp_path):
    """A factory: ``cub_fixture(**build_cub_kwargs)`` writes a fresh CUB folder under tmp_path, returns its root."""
    count = iter(range(1000))

    def make(**kwargs):
        return build_cub(tmp_path / f"cub{next(count)}" / "CUB_200_2011", **kwargs)

    return make


@pytest.fixture(scope="session")
def mini_cub(tmp_path_factory):
    """The synthetic mini-CUB (10 classes x 40 images, seed 0), generated once per session; returns its root."""
    from vitlrp.synthetic import make_synthetic_cub

    root = tmp_path_factory.mktemp("mini_cub") / "CUB_200_2011"
    return make_synthetic_cub(root, num_classes=10, images_per_class=40, seed=0, progress=False)


def _script_path(name):
    path = Path(name)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / "scripts" / (name if name.endswith(".py") else name + ".py")
    return path


def run_script(name, *flags, cwd=REPO_ROOT, timeout=120):
    """Run ``scripts/<name>`` (or a path) with ``sys.executable`` and ``flags``; return the CompletedProcess (text)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    for key in ("NO_PROXY", "no_proxy"):  # the download tests talk to 127.0.0.1
        env[key] = ",".join([v for v in [env.get(key)] if v] + ["127.0.0.1", "localhost"])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run([sys.executable, str(_script_path(name)), *map(str, flags)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_torchrun(name, *flags, nproc=2, timeout=400):
    """Run ``scripts/<name>`` under ``torchrun --nproc_per_node=nproc`` on the CPU (gloo); the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
           str(_script_path(name)), *map(str, flags)]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_script_inprocess(name, *flags):
    """Run a script in this process (no second torch import); return ``(exit_code, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    old_argv = sys.argv
    sys.argv = [str(_script_path(name)), *map(str, flags)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(_script_path(name)), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(name="run_script")
def run_script_fixture():
    """``run_script(name, *flags, cwd=REPO_ROOT)`` → CompletedProcess; see :func:`run_script`."""
    return run_script


@pytest.fixture(name="run_script_inprocess")
def run_script_inprocess_fixture():
    return run_script_inprocess


def error_lines(stderr):
    """The ``error: ...`` lines of a script's stderr (tqdm bars may share stderr)."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]


# VAL_FRACTION 0: the session's model trains on every training image and its best epoch is picked on the test split,
# as before the validation split existed, so the tests that explain and score it see the same model
TINY_TRAIN_FLAGS = ("--model", "vit_tiny", "--pretrained", "none", "--epochs", "15", "--batch-size", "32",
                    "--lr", "1e-3", "--warmup-epochs", "1", "--num-workers", "0", "--device", "cpu",
                    "--val-fraction", "0")


@pytest.fixture(scope="session")
def untrained_tiny(mini_cub, tmp_path_factory):
    """An untrained vit_tiny checkpoint (random weights, a random head) for the mini-CUB's classes, in a second:
    for tests of errors and plumbing, where what the model learned does not matter. Same keys as ``trained_tiny``."""
    import torch

    from vitlrp.cub import load_cub
    from vitlrp.models import build_vit, save_checkpoint
    from vitlrp.preprocess import Preprocessing

    torch.manual_seed(0)
    model = build_vit("vit_tiny", 10)
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("untrained_tiny") / "vit_cub_best.pt"
    save_checkpoint(path, model, "vit_tiny", load_cub(mini_cub).class_names, Preprocessing.for_size(model.image_size))
    return {"checkpoint": path, "dataset_root": mini_cub}


@pytest.fixture(scope="session")
def trained_tiny(mini_cub, tmp_path_factory):
    """``vit_tiny`` trained once per session on the mini-CUB (CPU, ~30 s).

    Returns a dict with ``checkpoint`` (best), ``last``, ``dataset_root``, ``output_dir``, ``stdout`` and ``stderr``.
    """
    out = tmp_path_factory.mktemp("trained_tiny")
    code, stdout, stderr = run_script_inprocess(
        "train_vit_cub", "--dataset-root", mini_cub, *TINY_TRAIN_FLAGS,
        "--checkpoint-dir", out / "checkpoints", "--output-dir", out / "train")
    assert code == 0, stderr[-2000:]
    return {"checkpoint": out / "checkpoints" / "vit_cub_best.pt", "last": out / "checkpoints" / "vit_cub_last.pt",
            "dataset_root": mini_cub, "output_dir": out / "train", "stdout": stdout, "stderr": stderr}

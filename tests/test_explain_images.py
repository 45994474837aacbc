"""scripts/explain_images.py: a checkpoint and the user's own image files (no CUB layout, no labels)."""
import json

import numpy as np
import pytest
import torch
from conftest import error_lines, run_script_inprocess
from PIL import Image

from vitlrp.cub import load_cub
from vitlrp.models import read_checkpoint

PER_IMAGE = ("lrp_heatmap_{:06d}.png", "lrp_overlay_{:06d}.png", "lrp_comparison_{:06d}.png",
             "lrp_relevance_raw_{:06d}.pt")


@pytest.fixture
def own_images(tmp_path):
    """A grayscale JPEG, an RGBA PNG, a 16-bit PNG (seeded noise, odd sizes) and a text file named .jpg."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (60, 80), dtype=np.uint8), "L").save(folder / "gray.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (70, 50, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (64, 72), dtype=np.uint16)).save(folder / "deep.png")
    assert Image.open(folder / "deep.png").mode.startswith("I")  # really 16 bits per pixel
    (folder / "notes.jpg").write_text("a shopping list, not a picture\n", encoding="utf-8")
    return [folder / n for n in ("gray.jpg", "rgba.png", "deep.png", "notes.jpg")]


def explain_images(checkpoint, images, out, *flags):
    return run_script_inprocess("explain_images", "--checkpoint-path", checkpoint, "--images",
                                ",".join(map(str, images)), "--top-k", 3, "--num-workers", 0, "--device", "cpu",
                                "--output-dir", out, *flags)


def cub_of(files, classes_from, root):
    """A CUB folder whose test split is ``files`` in order (label 1), for the heatmap script."""
    (root / "images" / "c").mkdir(parents=True)
    for f in files:
        (root / "images" / "c" / f.name).write_bytes(f.read_bytes())
    ids = range(1, len(files) + 1)
    (root / "images.txt").write_text("".join(f"{i} c/{f.name}\n" for i, f in zip(ids, files)), encoding="utf-8")
    (root / "image_class_labels.txt").write_text("".join(f"{i} 1\n" for i in ids), encoding="utf-8")
    (root / "train_test_split.txt").write_text("".join(f"{i} 0\n" for i in ids), encoding="utf-8")
    (root / "classes.txt").write_text((classes_from / "classes.txt").read_text(encoding="utf-8"), encoding="utf-8")
    return root


def test_own_images_get_their_top_k_and_the_heatmap_scripts_maps(untrained_tiny, own_images, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = explain_images(untrained_tiny["checkpoint"], own_images, out)
    assert code == 1, stderr[-2000:]  # the text file failed; the others were explained
    assert not error_lines(stderr)
    names = read_checkpoint(untrained_tiny["checkpoint"])["class_names"]
    records = json.loads((out / "explanations.json").read_text(encoding="utf-8"))
    assert [(r["image"], r["name"]) for r in records] == [(k, p.name) for k, p in enumerate(own_images)]
    lines = [line for line in stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 4  # one line per image
    for k, (line, r, path) in enumerate(zip(lines, records, own_images)):
        if path.name == "notes.jpg":
            assert line == f"[4/4] {path}: ✗ not a readable image: cannot identify image file '{path}'"
            assert r["error"].startswith("not a readable image") and r["files"] == {}
            assert not list(out.glob(f"lrp_*_{k:06d}.*"))
            continue
        assert r["error"] is None and "label" not in r and len(r["topk"]) == 3
        assert [t["name"] for t in r["topk"]] == [names[t["class"]] for t in r["topk"]]
        assert r["predicted_class"] == r["target_class"] == r["topk"][0]["class"]
        ranked = ", ".join(f"{t['name']} {t['prob']:.1%}" for t in r["topk"])
        assert line == f"[{k + 1}/4] {path}: top-3: {ranked} ✓ lrp_comparison_{k:06d}.png"
        assert all((out / f.format(k)).stat().st_size > 0 for f in PER_IMAGE)
    assert "Explained 3/4 image(s); 1 failed (see explanations.json): notes.jpg" in stdout.splitlines()
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "true:" not in html and "not a readable image" in html and html.count("lrp_comparison_") == 3
    assert json.loads((out / ".vitlrp-run-files.json").read_text())["script"] == "explain_images.py"

    # the heatmap script on a CUB folder of the same files: the same pixels, the same maps and the same top class
    images = own_images[:3]
    root = cub_of(images, untrained_tiny["dataset_root"], tmp_path / "cub" / "CUB_200_2011")
    assert [load_cub(root).image_path(i).name for i in range(3)] == [p.name for p in images]
    code, _, stderr = run_script_inprocess("test_vit_forward", "--checkpoint-path", untrained_tiny["checkpoint"],
                                           "--dataset-root", root, "--num-samples", 0, "--num-workers", 0,
                                           "--device", "cpu", "--output-dir", tmp_path / "heat")
    assert code == 0, stderr[-2000:]
    heat = {r["sample_idx"]: r for r in json.loads((tmp_path / "heat" / "lrp_results.json").read_text())}
    for k in range(3):
        mine = torch.load(out / f"lrp_relevance_raw_{k:06d}.pt", weights_only=True)
        theirs = torch.load(tmp_path / "heat" / f"lrp_relevance_raw_{k:06d}.pt", weights_only=True)
        assert mine.abs().max() > 0
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6 * float(theirs.abs().max()))
        assert heat[k]["target_class"] == records[k]["target_class"]


def test_a_folder_gives_its_images_and_never_the_runs_own_output(untrained_tiny, own_images, tmp_path):
    """A folder contributes its JPEG/PNG files by name, sorted, at any depth, but not the output folder inside it;
    any registered method explains them (here Grad-CAM)."""
    folder = own_images[0].parent
    for _ in range(2):  # the second run finds the first one's PNGs under photos/out: they are not inputs
        code, stdout, _ = explain_images(untrained_tiny["checkpoint"], [folder], folder / "out", "--method", "gradcam")
        assert code == 1  # notes.jpg
        lines = [line for line in stdout.splitlines() if line.startswith("[")]
        order = ("deep.png", "gray.jpg", "notes.jpg", "rgba.png")
        assert [line.split(":")[0] for line in lines] == [f"[{k}/4] {folder / n}" for k, n in enumerate(order, 1)]
    records = json.loads((folder / "out" / "explanations.json").read_text(encoding="utf-8"))
    assert {r["method"] for r in records} == {"gradcam"}


@pytest.mark.parametrize("flags, message", [
    (("--images", "nowhere.png"), "IMAGES: nowhere.png does not exist"),
    (("--method", "nope"), "unknown method 'nope'"),
    (("--method", "gradcam", "--gamma-file", "best_gamma.json"), "METHOD and GAMMA_FILE both choose the method"),
])
def test_bad_settings_are_one_line_before_any_output(untrained_tiny, own_images, tmp_path, flags, message):
    code, _, stderr = explain_images(untrained_tiny["checkpoint"], own_images[:1], tmp_path / "out", *flags)
    assert code == 2 and len(error_lines(stderr)) == 1 and message in error_lines(stderr)[0], stderr[-2000:]
    assert not (tmp_path / "out").exists()

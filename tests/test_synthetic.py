"""vitlrp.synthetic and scripts/make_synthetic_cub.py: the mini-CUB in CUB's layout, deterministic per seed."""
import os

import numpy as np
import pytest
from conftest import CUB_PART_NAMES, run_script, run_script_inprocess
from PIL import Image

from vitlrp.cub import load_cub
from vitlrp.errors import UserError
from vitlrp.synthetic import MARKER, _bird, class_spec, make_synthetic_cub, synthetic_params

CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "bounding_boxes.txt",
             "parts/parts.txt", "parts/part_locs.txt")


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_line_formats(mini_cub):
    for name in CUB_FILES:
        assert (mini_cub / name).is_file(), name
    # CUB's own line formats, checked by hand before load_cub reads them
    first = {name: (mini_cub / name).read_text().splitlines()[0].split() for name in CUB_FILES}
    assert len(first["images.txt"]) == 2 and first["images.txt"][1].startswith("001.")
    assert len(first["bounding_boxes.txt"]) == 5 and len(first["parts/part_locs.txt"]) == 5
    assert first["classes.txt"][0] == "1" and first["classes.txt"][1].startswith("001.")
    parts = (mini_cub / "parts/parts.txt").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in parts] == list(CUB_PART_NAMES)

    ann = load_cub(mini_cub)
    assert len(ann.paths) == 400 and ann.num_classes == 10
    assert ann.image_ids.tolist() == list(range(1, 401))
    assert ann.parts.shape == (400, 15, 3) and ann.boxes.shape == (400, 4)
    assert all(ann.image_path(r).is_file() for r in range(0, 400, 37))
    assert len(set(ann.class_names)) == 10 and all(" " in n for n in ann.class_names)
    assert synthetic_params(mini_cub)["seed"] == 0


def test_labels_balanced_and_split_half_half(mini_cub):
    ann = load_cub(mini_cub)
    assert np.bincount(ann.labels).tolist() == [40] * 10
    for k in range(10):
        assert ann.is_train[ann.labels == k].sum() == 20
    assert ann.is_train.sum() == 200


def test_varied_sizes_and_some_grayscale(mini_cub):
    ann = load_cub(mini_cub)
    sizes, modes = [], {}
    for r in range(0, 400, 3):
        with Image.open(ann.image_path(r)) as img:
            sizes.append(img.size)
            modes[int(ann.image_ids[r])] = img.mode
    assert len(set(sizes)) > 50
    assert all(120 <= s <= 200 for size in sizes for s in size)
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)
    assert set(modes.values()) == {"RGB", "L"}
    assert all(mode == "L" for iid, mode in modes.items() if iid % 17 == 0)
    assert all(mode == "RGB" for iid, mode in modes.items() if iid % 17)


def test_boxes_inside_images_and_visible_parts_inside_boxes(mini_cub):
    ann = load_cub(mini_cub)
    x, y, w, h = ann.boxes.T
    sizes = np.array([Image.open(ann.image_path(r)).size for r in range(400)])
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= sizes[:, 0]).all() and (y + h <= sizes[:, 1]).all()
    px, py, vis = ann.parts[..., 0], ann.parts[..., 1], ann.parts[..., 2] > 0
    inside = (px >= x[:, None]) & (px < (x + w)[:, None]) & (py >= y[:, None]) & (py < (y + h)[:, None])
    assert 0.75 < vis.mean() < 0.95
    assert inside[vis].all(), [ann.part_names[p] for p in np.argwhere(vis & ~inside)[:, 1]][:5]
    assert (ann.parts[~vis] == 0).all()  # CUB writes invisible parts as 0 0 0


@pytest.mark.parametrize("seed", range(6))
def test_the_whole_bird_is_drawn_inside_its_box(seed):
    rng = np.random.default_rng(seed)
    box = (int(rng.integers(5, 40)), int(rng.integers(5, 40)), int(rng.integers(40, 120)), int(rng.integers(40, 120)))
    img = Image.new("RGB", (170, 170))
    points = _bird(img, box, class_spec(seed), rng)
    ys, xs = np.nonzero(np.asarray(img).max(2))
    x, y, w, h = box
    assert xs.min() >= x and xs.max() < x + w and ys.min() >= y and ys.max() < y + h
    assert points.shape == (15, 2)


def test_class_specs_unique():
    names = [class_spec(k)[0] for k in range(200)]
    assert len(set(names)) == 200


def test_deterministic_per_seed(tmp_path):
    a = _files(make_synthetic_cub(tmp_path / "a" / "CUB", 2, 4, seed=3, progress=False))
    b = _files(make_synthetic_cub(tmp_path / "b" / "CUB", 2, 4, seed=3, progress=False))
    c = _files(make_synthetic_cub(tmp_path / "c" / "CUB", 2, 4, seed=4, progress=False))
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".jpg")]
    assert len(images) == 8 and all(a[k] != c[k] for k in images)


def test_replaces_existing_folder_atomically(tmp_path):
    root = make_synthetic_cub(tmp_path / "CUB", 2, 2, seed=0, progress=False)
    (root / "stale.txt").write_text("old")
    make_synthetic_cub(root, 3, 2, seed=1, progress=False)
    assert not (root / "stale.txt").exists() and load_cub(root).num_classes == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CUB"]  # no temporary or .old folder left


def test_bad_parameters(tmp_path):
    with pytest.raises(UserError, match="num_classes"):
        make_synthetic_cub(tmp_path / "x", 1, 4, progress=False)
    with pytest.raises(UserError, match="images_per_class"):
        make_synthetic_cub(tmp_path / "x", 2, 1, progress=False)
    assert not (tmp_path / "x").exists()


def test_script_writes_then_second_run_has_nothing_to_do(tmp_path):
    root = tmp_path / "syn" / "CUB_200_2011"
    flags = ("--dataset-root", root, "--num-classes", 2, "--images-per-class", 3, "--seed", 5)
    code, out, err = run_script_inprocess("make_synthetic_cub", *flags)
    assert code == 0, err
    assert "2 classes, 6 images (4 train / 2 test)" in out
    ann = load_cub(root)
    assert (int(ann.is_train.sum()), int((~ann.is_train).sum())) == (4, 2)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    again = run_script("make_synthetic_cub", *flags, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_script_refuses_to_overwrite_a_foreign_folder(tmp_path):
    root = tmp_path / "real_cub"
    root.mkdir()
    (root / "images.txt").write_text("1 001.A/a.jpg\n")
    code, out, err = run_script_inprocess("make_synthetic_cub", "--dataset-root", root, "--num-classes", 2,
                                          "--images-per-class", 2)
    assert code == 2
    # the check moved into make_synthetic_cub (so the library never replaces a foreign folder either)
    assert err.strip().splitlines() == [f"error: {root} exists and is not a synthetic mini-CUB (no {MARKER}); it is "
                                        "left as it is: choose another dataset root"]
    assert sorted(p.name for p in root.iterdir()) == ["images.txt"]
    assert not (root / MARKER).exists()


def test_library_refuses_a_foreign_folder_and_a_file(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a synthetic mini-CUB"):
        make_synthetic_cub(root, 2, 2, progress=False)
    assert [p.name for p in root.iterdir()] == ["notes.txt"]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        make_synthetic_cub(a_file, 2, 2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "mine"]


def test_script_under_a_file_is_one_line(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, _, err = run_script_inprocess("make_synthetic_cub", "--dataset-root", a_file / "CUB_200_2011",
                                        "--num-classes", 2, "--images-per-class", 2)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"error: cannot write to the folder above the dataset root {a_file}: it is "
                                        "a file, not a folder; choose another folder"]
    code, _, err = run_script_inprocess("make_synthetic_cub", "--dataset-root", a_file)
    assert code == 2 and err.strip().splitlines() == [
        f"error: dataset root {a_file} is a file, not a folder; choose another dataset root"]
    assert a_file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores read-only permissions, so nothing would be refused")
def test_script_into_a_read_only_folder_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = run_script_inprocess("make_synthetic_cub", "--dataset-root", locked / "CUB_200_2011",
                                            "--num-classes", 2, "--images-per-class", 2)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot write to" in err
    finally:
        locked.chmod(0o755)

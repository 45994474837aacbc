"""The shortcut (Clever-Hans) mini-CUB, measured reliance on its mark, and the mark-share ROC AUC."""
import csv
import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import error_lines, run_script_inprocess
from PIL import Image

from vitlrp import shortcut as S
from vitlrp.cub import CUBDataset, load_cub
from vitlrp.errors import UserError
from vitlrp.preprocess import Preprocessing
from vitlrp.synthetic import (
    CROP_SHARE,
    MARKER,
    SHORTCUT_BOXES,
    SHORTCUT_MARKS,
    _hue_rgb,
    _render,
    make_synthetic_cub,
    mark_spec,
)

# Digests of the default generator's output, computed on the commit before the shortcut option existed
# (28c60d1): the raw pixels, boxes and parts of four images, and every annotation file of a 3 x 4 mini-CUB.
RENDER_DIGEST = "13136c7e347c197dc4f3fe2c4e47a4fb687d457d3c187bfa2b24a95f0cd9d92d"
TEXT_DIGEST = "888804be4efa8a2fdf433cbdbfe985dc0fff2da76477b461deb29bef1c310500"


def _text_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.txt")) + [root / MARKER]:
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_default_mini_cub_is_bit_identical_to_before(tmp_path):
    h = hashlib.sha256()
    for iid in (1, 2, 17, 34):  # 17 and 34: grayscale images
        img, box, points, visible, mark_box = _render(iid, iid % 3, 5, (120, 200), 17)
        assert mark_box is None
        for part in (np.asarray(img).tobytes(), repr(box).encode(), np.asarray(points).tobytes(), visible.tobytes()):
            h.update(part)
    assert h.hexdigest() == RENDER_DIGEST
    root = make_synthetic_cub(tmp_path / "CUB", 3, 4, seed=5, progress=False, shortcut_share=0.0)
    assert _text_digest(root) == TEXT_DIGEST
    assert not (root / SHORTCUT_BOXES).exists() and not (root / SHORTCUT_MARKS).exists()
    assert S.load_marks(load_cub(root)) is None


@pytest.fixture(scope="module")
def shortcut_cub(tmp_path_factory):
    root = tmp_path_factory.mktemp("shortcut_cub") / "CUB_200_2011"
    return make_synthetic_cub(root, num_classes=4, images_per_class=20, seed=1, progress=False, shortcut_share=0.75)


def test_annotation_files_pairs_and_shares(shortcut_cub):
    ann = load_cub(shortcut_cub)  # the CUB reader is unchanged and still reads the folder
    marks = S.load_marks(ann)
    assert len(ann.paths) == 4 * (10 + 2 * 10)  # 10 train birds, 10 test birds written twice, per class
    assert (marks.mark_class >= 0).all() and np.isfinite(marks.boxes).all()
    first = (shortcut_cub / SHORTCUT_BOXES).read_text().splitlines()[0].split()
    assert len(first) == 5 and first[0] == "1"
    train, test = ann.is_train, ~ann.is_train
    assert (marks.pair_row[train] == -1).all()
    # test images come in twins: same class, each the other's pair, one with its own mark, one swapped
    pairs = marks.pair_row[test]
    assert (pairs >= 0).all() and (marks.pair_row[pairs] == np.flatnonzero(test)).all()
    assert (ann.labels[pairs] == ann.labels[test]).all()
    own = marks.mark_class[test] == ann.labels[test]
    assert own.mean() == 0.5
    for r in np.flatnonzero(test):
        assert (marks.mark_class[r] == ann.labels[r]) != (marks.mark_class[marks.pair_row[r]] == ann.labels[r])
    # on the training images the mark names the true class about SHORTCUT_SHARE of the time
    agree = (marks.mark_class[train] == ann.labels[train]).mean()
    assert 0.6 <= agree <= 0.9, agree
    assert json.loads((shortcut_cub / MARKER).read_text())["shortcut_share"] == 0.75


def test_the_mark_is_where_its_annotation_says(shortcut_cub):
    ann = load_cub(shortcut_cub)
    marks = S.load_marks(ann)
    for r in range(0, len(ann.paths), 7):
        x, y, w, h = marks.boxes[r].astype(int)
        with Image.open(ann.image_path(r)) as im:
            arr = np.asarray(im.convert("RGB")).astype(float)
            width, height = im.size
        hue, _ = mark_spec(int(marks.mark_class[r]))
        inner = arr[y + w // 4:y + 3 * h // 4, x + w // 4:x + 3 * w // 4].reshape(-1, 3)
        rim = np.concatenate([arr[y, x:x + w], arr[y + h - 1, x:x + w], arr[y:y + h, x], arr[y:y + h, x + w - 1]])
        if im.mode == "RGB":
            # the inside has the mark's colour (the plain glyph leaves it whole; others cover < 1/3), the rim is black
            assert np.median(np.abs(inner - _hue_rgb(hue, 1.0, 1.0)).max(1)) < 40, r
        assert rim.mean() < 60, r
        # outside the bird's box and inside the center crop
        bx, by, bw, bh = ann.boxes[r]
        assert x + w <= bx or x >= bx + bw or y + h <= by or y >= by + bh
        side = CROP_SHARE * min(width, height)
        assert (width - side) / 2 <= x and x + w <= (width + side) / 2
        assert (height - side) / 2 <= y and y + h <= (height + side) / 2


def test_swapped_twin_differs_only_inside_the_mark(shortcut_cub):
    ann = load_cub(shortcut_cub)
    marks = S.load_marks(ann)
    r = int(np.flatnonzero(~ann.is_train)[0])
    t = int(marks.pair_row[r])
    assert (marks.boxes[r] == marks.boxes[t]).all() and (ann.boxes[r] == ann.boxes[t]).all()
    a = np.asarray(Image.open(ann.image_path(r)).convert("RGB")).astype(float)
    b = np.asarray(Image.open(ann.image_path(t)).convert("RGB")).astype(float)
    x, y, w, h = marks.boxes[r].astype(int)
    inside = np.zeros(a.shape[:2], bool)
    inside[y:y + h, x:x + w] = True
    near = np.zeros_like(inside)
    # JPEG codes colour in 16 px blocks (4:2:0 chroma subsampling): a change smears at most that far
    near[max(0, y - 16):y + h + 16, max(0, x - 16):x + w + 16] = True
    diff = np.abs(a - b).max(2)
    assert diff[inside].mean() > 40
    assert diff[~near].max() < 3
    # before JPEG the twins are identical outside the mark, pixel for pixel
    raw = [np.asarray(_render(5, 0, 1, (120, 200), 17, c)[0]) for c in (0, 2)]
    box = _render(5, 0, 1, (120, 200), 17, 0)[4]
    changed = np.argwhere((raw[0] != raw[1]).reshape(raw[0].shape[0], raw[0].shape[1], -1).any(2))
    assert len(changed)
    assert changed[:, 1].min() >= box[0] and changed[:, 1].max() < box[0] + box[2]
    assert changed[:, 0].min() >= box[1] and changed[:, 0].max() < box[1] + box[3]


def test_the_mark_always_finds_room():
    for iid in range(1, 400):
        _render(iid, iid % 7, 0, (120, 200), 0, iid % 5)


def test_split_marks_maps_boxes_into_the_model_input(shortcut_cub):
    ann = load_cub(shortcut_cub)
    marks = S.load_marks(ann)
    pre = Preprocessing.for_size(64)
    ds = CUBDataset(ann, "test", pre)
    split = S.split_marks(marks, ds)
    assert split["box"].shape == (len(ds), 4) and split["swapped"].sum() == len(ds) // 2
    r = ds.rows[3]
    with Image.open(ann.image_path(r)) as im:
        expect = pre.map_box(marks.boxes[r], *im.size)
    assert np.allclose(split["box"][3].numpy(), expect)
    # the whole mark lies inside the 64 px crop
    b = split["box"].numpy()
    assert (b[:, 2] - b[:, 0] > 8).all() and (b[:, 3] - b[:, 1] > 8).all()
    assert ds.rows[split["pair"][3]] == marks.pair_row[r]


def test_bad_shortcut_parameters(tmp_path):
    with pytest.raises(UserError, match="shortcut_share"):
        make_synthetic_cub(tmp_path / "x", 2, 4, progress=False, shortcut_share=1.5)
    with pytest.raises(UserError, match="at most 48 classes"):
        make_synthetic_cub(tmp_path / "x", 60, 2, progress=False, shortcut_share=0.5)
    assert not (tmp_path / "x").exists()


def test_a_mark_file_naming_an_unknown_image_is_one_clear_error(shortcut_cub, tmp_path):
    import shutil

    root = tmp_path / "CUB"
    shutil.copytree(shortcut_cub, root)
    with open(root / SHORTCUT_MARKS, "a") as fh:
        fh.write("9999 1 0\n")
    with pytest.raises(UserError, match="image id 9999 is not in images.txt"):
        S.load_marks(load_cub(root))


def _annotations_only(shortcut_cub, tmp_path):
    """A copy of the shortcut mini-CUB's annotation files (the readers open no image)."""
    import shutil

    return shutil.copytree(shortcut_cub, tmp_path / "CUB", ignore=shutil.ignore_patterns("*.jpg"))


@pytest.mark.parametrize("name,line,needle", [
    (SHORTCUT_BOXES, "2 1.0 1.0 9.0 9.0", ":{n}: image id 2 repeats line 2 ('2 "),
    (SHORTCUT_MARKS, "3 1 0", ":{n}: image id 3 repeats line 3 ('3 "),
])
def test_a_repeated_image_in_a_mark_file_is_refused_naming_both_lines(shortcut_cub, tmp_path, name, line, needle):
    root = _annotations_only(shortcut_cub, tmp_path)
    n = len((root / name).read_text().splitlines()) + 1
    with open(root / name, "a") as fh:
        fh.write(line + "\n")
    with pytest.raises(UserError) as info:
        S.load_marks(load_cub(root))
    assert f"{root / name}{needle.format(n=n)}" in str(info.value) and "keep one of the two lines" in str(info.value)


def test_pairs_must_name_each_other(shortcut_cub, tmp_path):
    """An image named as the twin of two images (a repeated pair id) is refused, not paired twice."""
    root = _annotations_only(shortcut_cub, tmp_path)
    lines = (root / SHORTCUT_MARKS).read_text().splitlines()
    first, second = [i for i, t in enumerate(lines) if t.split()[2] != "0"][:2]  # a test bird and its twin
    iid, cls, twin = lines[first].split()
    third = next(i for i, t in enumerate(lines) if t.split()[2] not in ("0", iid, twin))
    moved = lines[third].split()
    lines[third] = f"{moved[0]} {moved[1]} {twin}"  # now two images name `twin` as their pair
    (root / SHORTCUT_MARKS).write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf":{third + 1}: image id {moved[0]} names {twin} as its pair, but {twin} "
                                        rf"does not name {moved[0]}"):
        S.load_marks(load_cub(root))


# --- the score -------------------------------------------------------------------------------------------------


def test_roc_auc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.random(60) < 0.4
    pos, neg = s[y], s[~y]
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert S.roc_auc(s, y) == pytest.approx(brute)
    assert S.roc_auc([0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1]) == 1.0
    assert S.roc_auc([0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1]) == 0.0
    assert math.isnan(S.roc_auc([0.1, 0.2], [1, 1]))


def test_bootstrap_interval_is_seeded_and_brackets_the_auc():
    rng = np.random.default_rng(1)
    y = rng.random(80) < 0.5
    s = y + rng.normal(0, 1, 80)
    a = S.bootstrap_auc(s, y, 500, seed=3)
    assert a == S.bootstrap_auc(s, y, 500, seed=3) and a != S.bootstrap_auc(s, y, 500, seed=4)
    assert a[1] < a[0] < a[2] and 0.5 < a[0] < 1


def _oracle_and_random_rows(n=200, size=32, seed=0):
    """Swapped images with known reliance: the oracle map lies on the mark exactly when the model followed it."""
    g = torch.Generator().manual_seed(seed)
    followed = torch.rand(n, generator=g) < 0.4
    boxes = torch.tensor([[2.0, 2.0, 10.0, 10.0]]).repeat(n, 1)  # the mark
    bird = torch.zeros(n, size, size)
    bird[:, 16:28, 14:30] = 1.0
    mark = torch.zeros(n, size, size)
    mark[:, 2:10, 2:10] = 1.0
    maps = {"oracle": torch.where(followed[:, None, None], mark, bird),
            "random": torch.randn(n, size, size, generator=g)}
    rows = []
    for method, rel in maps.items():
        scores = S.score_batch(rel, boxes)
        for i in range(n):
            rows.append({"method": method, "sample_idx": i, "error": "", "swapped": 1, "followed": int(followed[i]),
                         "mark_share": float(scores["mark_share"][i]),
                         "mark_pointing": float(scores["mark_pointing"][i])})
    return rows


def test_auc_of_an_oracle_map_is_1_and_of_a_random_map_about_half():
    summary = S.summarize(_oracle_and_random_rows(), ["oracle", "random"], n_boot=300)
    oracle, rnd = summary["oracle"], summary["random"]
    assert oracle["auc"] == 1.0 and oracle["auc_low"] == 1.0
    assert oracle["mark_share_followed"] == 1.0 and oracle["mark_share_not_followed"] == 0.0
    assert abs(rnd["auc"] - 0.5) < 0.1 and rnd["auc_low"] < 0.5 < rnd["auc_high"]
    assert 0 < rnd["mark_share"] < 0.2  # about the mark's area share (64 of 1024 pixels)
    lines = S.table_lines(summary)
    assert lines[0].startswith(f"Shortcut: on 200 swapped-mark test images the model followed the mark "
                               f"{oracle['n_followed']} times")
    assert "1.000 [1.00, 1.00]" in lines[3]


# --- reliance, measured on trained models ----------------------------------------------------------------------

TRAIN = ("--model", "vit_tiny", "--pretrained", "none", "--image-size", "64", "--epochs", "12", "--batch-size",
         "16", "--lr", "1e-3", "--warmup-epochs", "1", "--num-workers", "0", "--device", "cpu")
# Two trainings take minutes on a busy 2-core machine (21 minutes measured under heavy load): opt in.
slow = pytest.mark.skipif(not os.environ.get("VITLRP_SLOW"), reason="slow (trains two models): set VITLRP_SLOW=1")


def _train(root, out):
    code, _, err = run_script_inprocess("train_vit_cub", "--dataset-root", root, *TRAIN,
                                        "--checkpoint-dir", out / "ckpt", "--output-dir", out / "train")
    assert code == 0, err[-2000:]
    return out / "ckpt" / "vit_cub_last.pt"


def _evaluate(ckpt, root, out, methods="balanced,random"):
    code, stdout, err = run_script_inprocess(
        "evaluate_lrp", "--checkpoint-path", ckpt, "--dataset-root", root, "--methods", methods, "--num-images", 0,
        "--reference", "balanced" if "balanced" in methods.split(",") else "",
        "--perturb-steps", 2, "--batch-size", 40, "--num-workers", 0, "--device", "cpu", "--output-dir", out)
    assert code == 0, err[-3000:]
    with open(out / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return stdout, rows


def _follow_rate(rows):
    swapped = [r for r in rows if r["method"] == "random" and r["swapped"] == "1"]
    return sum(int(r["followed"]) for r in swapped) / len(swapped)


@pytest.mark.optin
@slow
def test_a_model_trained_with_the_shortcut_follows_the_mark_and_one_without_does_not(tmp_path):
    """The same birds, two trainings: the mark always names the class (shortcut), or never tells it (control).

    With 4 classes a share of 1/4 makes the training mark independent of the label. Measured (seeded): the
    shortcut model followed 10 of 48 swapped marks, the control 4 (about its chance-level confusions).
    """
    rate = {}
    for name, share in (("shortcut", 1.0), ("control", 0.25)):
        root = make_synthetic_cub(tmp_path / name / "CUB", 4, 24, seed=2, progress=False, shortcut_share=share)
        _, rows = _evaluate(_train(root, tmp_path / name), root, tmp_path / name / "eval")
        rate[name] = _follow_rate(rows)
    assert rate["shortcut"] >= rate["control"] + 0.1, rate
    assert rate["control"] <= 0.15, rate


@pytest.fixture(scope="module")
def eval_run(trained_tiny, tmp_path_factory):
    """evaluate_lrp.py with the session's vit_tiny on a small shortcut mini-CUB of the same 10 classes."""
    out = tmp_path_factory.mktemp("shortcut_eval")
    root = make_synthetic_cub(out / "CUB", 10, 4, seed=3, progress=False, shortcut_share=0.8)
    stdout, rows = _evaluate(trained_tiny["checkpoint"], root, out / "eval")
    return {"out": out / "eval", "stdout": stdout, "rows": rows}


def test_evaluate_writes_the_shortcut_scores(eval_run):
    out, rows = eval_run["out"], eval_run["rows"]
    assert set(S.ROW_FIELDS) <= set(rows[0])
    assert len(rows) == 2 * 10 * 2 * 2  # 2 methods x 10 classes x 2 test birds x 2 twins
    summary = json.loads((out / "summary.json").read_text())["shortcut"]
    assert set(summary) == {"balanced", "random"}
    assert summary["random"]["n_swapped"] == 20
    followed = sum(int(r["followed"]) for r in rows if r["method"] == "random" and r["swapped"] == "1")
    assert summary["random"]["n_followed"] == summary["balanced"]["n_followed"] == followed
    assert (out / "shortcut.png").read_bytes()[:4] == b"\x89PNG"
    with open(out / "shortcut_summary.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["method"] for r in table] == ["balanced", "random"] and set(table[0]) == set(S.CSV_FIELDS)
    assert "swapped-mark test images the model followed the mark" in eval_run["stdout"]
    # followed is empty on the non-swapped images and 0/1 on the swapped ones; a pair points both ways
    assert {r["followed"] for r in rows if r["swapped"] == "0"} == {""}
    assert {r["followed"] for r in rows if r["swapped"] == "1"} <= {"0", "1"}
    pair = {int(r["sample_idx"]): int(r["pair_sample_idx"]) for r in rows if r["method"] == "random"}
    assert all(pair[pair[i]] == i for i in pair)
    shares = [float(r["mark_share"]) for r in rows]
    assert all(0 <= v <= 1 for v in shares if math.isfinite(v))


def test_shortcut_pairs_writes_a_gallery_of_swapped_pairs(trained_tiny, eval_run, tmp_path):
    root = eval_run["out"].parent / "CUB"
    code, stdout, err = run_script_inprocess(
        "shortcut_pairs", "--checkpoint-path", trained_tiny["checkpoint"], "--dataset-root", root, "--methods",
        "balanced,random", "--num-pairs", 2, "--num-workers", 0, "--device", "cpu", "--output-dir", tmp_path)
    assert code == 0, err[-3000:]
    pairs = json.loads((tmp_path / "pairs.json").read_text())
    assert len(pairs) == 2 and "Wrote 2 pairs" in stdout
    for p in pairs:
        assert (tmp_path / p["file"]).read_bytes()[:4] == b"\x89PNG"
        assert set(p["mark_share"]) == {"balanced", "random"}
    page = (tmp_path / "index.html").read_text()
    assert all(p["file"] in page for p in pairs)


def test_shortcut_pairs_warns_of_empty_maps(eval_run, tmp_path):
    """A model whose head is zero (torchvision's init) explains nothing: the blank panels are said to be empty maps,
    per method that has them (the random maps are not empty)."""
    from vitlrp.cub import load_cub
    from vitlrp.models import build_vit, save_checkpoint
    from vitlrp.preprocess import Preprocessing

    root = eval_run["out"].parent / "CUB"
    model = build_vit("vit_tiny", 10)
    save_checkpoint(tmp_path / "zero.pt", model, "vit_tiny", load_cub(root).class_names,
                    Preprocessing.for_size(model.image_size))
    code, stdout, err = run_script_inprocess(
        "shortcut_pairs", "--checkpoint-path", tmp_path / "zero.pt", "--dataset-root", root, "--methods",
        "balanced,random", "--num-pairs", 1, "--num-workers", 0, "--device", "cpu", "--output-dir", tmp_path / "out")
    assert code == 0, err[-3000:]
    warnings = [line for line in stdout.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: balanced: 2 of 2 map(s) are empty (every pixel the same: no evidence); their panels "
                        "are blank"]


def test_shortcut_pairs_refuses_a_dataset_without_marks(trained_tiny, tmp_path):
    code, _, err = run_script_inprocess(
        "shortcut_pairs", "--checkpoint-path", trained_tiny["checkpoint"], "--dataset-root",
        trained_tiny["dataset_root"], "--device", "cpu", "--output-dir", tmp_path)
    assert code == 2
    assert error_lines(err) == [f"error: {trained_tiny['dataset_root']} has no {S.MARKS_FILE}: make a shortcut "
                                "mini-CUB with make_synthetic_cub.py --shortcut-share 0.8"]


def test_followed_is_the_explained_prediction_not_a_methods_own_logits():
    """A bf16 or patched forward can flip a near-tie: every method must label the same swapped images."""
    split = {"swapped": np.array([1, 1, 0]), "mark_class": np.array([4, 4, 2]), "pair": np.array([2, 2, 0])}
    rows = [{"sample_idx": 0, "target": 4, "predicted": 3, "error": ""},
            {"sample_idx": 1, "target": 1, "predicted": 4, "error": ""},
            {"sample_idx": 2, "target": 2, "predicted": 2, "error": ""}]
    S.annotate_rows(rows, split)
    assert [r["followed"] for r in rows] == [1, 0, ""]

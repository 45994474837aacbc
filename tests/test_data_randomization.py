"""Adebayo's data randomization test (vitlrp/sanity/datarand.py, scripts/data_randomization.py, train_vit_cub.py's
--permute-labels): the permutation, the comparison's answer on models whose answer is known (a model against itself,
against an unrelated model), and the tiny run's files, console and errors."""
import csv
import json
import runpy

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN_FLAGS, error_lines, run_script_inprocess
from test_sanity import batch_of, opened

from vitlrp.cub import load_cub
from vitlrp.errors import UserError
from vitlrp.models import build_vit
from vitlrp.sanity import datarand as D
from vitlrp.sanity import verdicts as V

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAMES = ["baseline", "input_x_gradient", "gradient", "random"]


def test_permuted_labels_keep_the_counts_and_the_test_labels_and_are_seeded(mini_cub):
    ann = load_cub(mini_cub)
    train, test = ann.split_indices("train"), ann.split_indices("test")
    a, b, other = D.permute_labels(ann, 0), D.permute_labels(ann, 0), D.permute_labels(ann, 1)
    assert np.array_equal(a.labels, b.labels) and not np.array_equal(a.labels, other.labels)
    assert np.array_equal(a.labels[test], ann.labels[test])
    assert np.array_equal(np.bincount(a.labels[train]), np.bincount(ann.labels[train]))
    kept = (a.labels[train] == ann.labels[train]).mean()
    assert kept < 0.3  # about 1 in 10 classes keeps its label by chance
    assert ann.labels is not a.labels and np.array_equal(ann.labels, load_cub(mini_cub).labels)  # a copy


def small_vit(seed):
    torch.manual_seed(seed)
    model = build_vit("vit_tiny", 10, 96).eval()
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.2)
    return model


def compared(real, other, n=6):
    torch.manual_seed(5)
    x = torch.randn(n, 3, 96, 96)
    c, _ = batch_of(real, x)

    def forward(v):
        with torch.no_grad():
            return other(v).float()

    return D.compare_batch(opened(NAMES, real), opened(NAMES, other), c, 16, forward)


def judged(rows, patches=36):
    summary = D.summarize(rows, NAMES)
    return summary, D.verdicts(summary, rows, NAMES, patches)


def test_a_model_against_itself_fails_and_an_unrelated_model_does_not():
    """The same weights give the same maps (|ρ| = 1 at both levels: fail), except ``random``, whose two maps are
    unrelated draws; a model of other random weights gives maps that share far less."""
    real = small_vit(0)
    same = compared(real, real)
    summary, found = judged(same)
    for name in ("baseline", "input_x_gradient", "gradient"):
        for measure in ("abs_spearman", "pixel_abs_spearman", "ssim"):
            assert V.find(summary, name, D.TEST, "", measure)["mean"] == pytest.approx(1.0, abs=1e-6)
        assert found[name]["threshold"]["verdict"] == "fail"
    assert V.find(summary, "random", D.TEST, "", "abs_spearman")["mean"] < 0.5
    assert {r["random_predicted"] == r["predicted"] for r in same} == {True}
    other = compared(real, small_vit(1))
    summary, _ = judged(other)
    for name in ("baseline", "gradient"):
        assert V.find(summary, name, D.TEST, "", "pixel_abs_spearman")["mean"] < 0.9


def test_the_pair_is_checked_in_one_line():
    real = {"arch": "vit_tiny", "image_size": 112, "class_names": ["a", "b"], "config": {"PERMUTE_LABELS": False}}
    rand = {**real, "config": {"PERMUTE_LABELS": True, "LR": 0.1}}
    D.check_pair(real, rand, "r.pt", "p.pt")
    with pytest.raises(UserError, match="p.pt was not trained on permuted labels"):
        D.check_pair(real, real, "r.pt", "p.pt")
    with pytest.raises(UserError, match="r.pt was trained on permuted labels"):
        D.check_pair(rand, rand, "r.pt", "p.pt")
    with pytest.raises(UserError, match="differ in their input size"):
        D.check_pair(real, {**rand, "image_size": 64}, "r.pt", "p.pt")
    assert D.recipe_notes({"config": {"LR": 0.2, "SEED": 0}}, rand, ("LR", "SEED")) == ["LR"]


def test_the_recipe_compared_is_the_training_scripts_but_the_labels():
    from conftest import REPO_ROOT

    consts = {name: runpy.run_path(str(REPO_ROOT / "scripts" / f"{name}.py"))["RECIPE"]
              for name in ("train_vit_cub", "data_randomization")}
    assert consts["data_randomization"] + ("PERMUTE_LABELS",) == consts["train_vit_cub"]


@pytest.fixture(scope="module")
def random_labels(mini_cub, tmp_path_factory):
    """The session's trained_tiny recipe for one epoch on permuted labels."""
    out = tmp_path_factory.mktemp("random_labels")
    flags = list(TINY_TRAIN_FLAGS)
    flags[flags.index("--epochs") + 1] = "1"
    code, stdout, stderr = run_script_inprocess("train_vit_cub", "--dataset-root", mini_cub, *flags,
                                                "--permute-labels", "true", "--checkpoint-dir", out / "ckpt",
                                                "--output-dir", out / "train")
    assert code == 0, stderr[-2000:]
    return {"last": out / "ckpt" / "vit_cub_last.pt", "stdout": stdout}


def flags(real, rand, root, out, **extra):
    args = ["--checkpoint-path", real, "--random-checkpoint-path", rand, "--dataset-root", root, "--num-workers", "0",
            "--device", "cpu", "--output-dir", out, "--methods", ",".join(NAMES)]
    for key, value in extra.items():
        args += ["--" + key.replace("_", "-"), value]
    return args


def test_the_tiny_run_writes_the_tables_and_a_short_console_summary(trained_tiny, random_labels, tmp_path):
    ckpt = torch.load(random_labels["last"], weights_only=True)
    assert ckpt["config"]["PERMUTE_LABELS"] is True
    assert "training labels permuted (seed 0)" in random_labels["stdout"]
    out = tmp_path / "dr"
    code, stdout, stderr = run_script_inprocess("data_randomization", *flags(
        trained_tiny["checkpoint"], random_labels["last"], trained_tiny["dataset_root"], out, num_images=6,
        batch_size=4))
    assert code == 0, stderr[-3000:]
    with open(out / "data_randomization.csv", encoding="utf-8") as fh:
        summary = list(csv.DictReader(fh))
    assert list(summary[0])[:7] == ["method", "test", "step", "measure", "mean", "ci95", "n"]
    assert [(r["method"], r["measure"]) for r in summary] == [(n, m) for n in NAMES for m in V.MEASURES]
    assert {r["test"] for r in summary} == {"data_randomization"} and {r["n"] for r in summary} == {"6"}
    with open(out / "per_image_data_randomization.csv", encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == 6 * len(NAMES)
    doc = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert set(doc["verdicts"]) == set(NAMES) and doc["n_images"] == 6
    assert doc["threshold"] == pytest.approx(5 * V.chance_abs_rho(49))
    lines = stdout.splitlines()
    assert "note: the random-label model was trained with other EPOCHS than the real model" in lines
    table = lines[lines.index(next(line for line in lines if line.startswith("method"))):]
    assert [line.split()[0] for line in table[1:5]] == NAMES
    assert table[5].startswith("pass: the 95% interval") and table[6].startswith("top-1 on these images")
    rand = next(line for line in table if line.startswith("random "))
    assert rand.split()[4] in ("pass", "undecided")  # two unrelated draws are never firmly alike


@pytest.mark.parametrize("case, message", [
    ("other_dataset", "do not match the 3 classes of"),
    ("not_permuted", "was not trained on permuted labels"),
    ("swapped", "was trained on permuted labels"),
])
def test_bad_input_is_one_line(case, message, trained_tiny, random_labels, cub_fixture, tmp_path):
    real, rand, root = trained_tiny["checkpoint"], random_labels["last"], trained_tiny["dataset_root"]
    if case == "other_dataset":
        root = cub_fixture()
    elif case == "not_permuted":
        rand = trained_tiny["last"]
    else:
        real, rand = rand, real
    code, _, stderr = run_script_inprocess("data_randomization", *flags(real, rand, root, tmp_path / "out"))
    assert code != 0
    errors = error_lines(stderr)
    assert len(errors) == 1 and message in errors[0], stderr[-2000:]
    assert not (tmp_path / "out").exists()

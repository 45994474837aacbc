"""vitlrp.scoring: every method's maps of a batch scored together; failures, empty maps and seeds per image."""
import math

import pytest
import torch
from test_explain import images, tiny_vit

from vitlrp import evaluation as E
from vitlrp import metrics as M
from vitlrp.batch import Batch
from vitlrp.scoring import Scorer, ScoreSettings, model_in


def fake_batch(n=4, size=32, ids=(10, 11, 12, 13), errors=None):
    return {"image": images(n, size=size), "label": torch.arange(n) % 5, "index": torch.tensor(ids),
            "error": errors or [""] * n, "box": torch.tensor([[4.0, 4.0, 20.0, 20.0]] * n),
            "parts": torch.tensor([[[8.0, 8.0, 1.0]]] * n)}


@pytest.fixture(scope="module")
def scored():
    model = tiny_vit()
    _, forward = model_in(model, torch.float32, torch.device("cpu"))
    batch = Batch.of(fake_batch(), torch.device("cpu"), forward)
    b = Scorer(batch, batch.targets("pred"), forward, ScoreSettings(8, steps=4, seed=3))
    logits = forward(b.images)
    gen = torch.Generator().manual_seed(0)
    good = torch.randn(4, 32, 32, generator=gen)
    empty = good.clone()
    empty[1] = 0.0  # no evidence at all
    broken = good.clone()
    broken[2, 0, 0] = math.nan
    maps = {"good": (logits, good, torch.randn(4, 32, 32, generator=gen)), "empty": (logits, empty, good),
            "broken": (logits, broken, good)}
    rows, curves = b.score(maps, M.METRICS)
    return b, rows, curves, maps


def test_an_empty_map_leaves_every_metric_of_its_image(scored):
    _, rows, curves, _ = scored
    row = rows["empty"][1]
    assert row["empty"] == 1 and row["error"] == ""
    assert all(math.isnan(row[m]) for m in M.METRICS)  # one rule for every metric
    assert all(rows["empty"][k]["empty"] == 0 and math.isfinite(rows["empty"][k]["box_share"]) for k in (0, 2, 3))
    assert len(curves["empty"]["morf"]) == 3  # its curve is not averaged either
    summary = E.summarize([{"method": n, **r} for n, rs in rows.items() for r in rs], list(rows))
    assert summary["empty"]["n_empty"] == 1 and summary["empty"]["box_share"]["n"] == 3
    assert summary["good"]["n_empty"] == 0
    lines = E.warning_lines([{"method": n, **r} for n, rs in rows.items() for r in rs], list(rows), summary)
    assert any(line.startswith("empty: 1 of 4 map(s) were empty") for line in lines)


def test_a_non_finite_map_is_an_error_row_not_a_score(scored):
    _, rows, curves, _ = scored
    assert rows["broken"][2]["error"].startswith("non-finite map") and "box_share" not in rows["broken"][2]
    assert len(curves["broken"]["morf"]) == 3


def test_the_same_maps_score_the_same_whatever_else_is_scored(scored):
    b, rows, _, maps = scored
    alone, _ = b.score({"good": maps["good"]}, M.METRICS)
    for a, c in zip(alone["good"], rows["good"]):
        for m in M.METRICS:
            assert a[m] == pytest.approx(c[m], abs=1e-6), m


def test_class_sensitivity_compares_with_the_sanity_checks_random_class(scored):
    """The evaluation's class_sensitivity and the sanity checks' class test use the same random class per image."""
    from vitlrp.sanity.draws import other_classes

    b = scored[0]
    assert torch.equal(b.other, other_classes(b.forward(b.images), b.target, b.ids, seed=3)[1])
    assert (b.other != b.target).all()


def test_curves_from_patch_tokens_equal_curves_from_perturbed_images(scored):
    """A mean-colour patch embeds to the conv's bias: the curves skip the patch embedding and stay the same."""
    b = scored[0]
    assert b.tokens is not None
    scores = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(4))
    common = M.Removal(start=b.start, end=b.end, tiebreak=b.tiebreak(16), rows_per_pass=7)
    fast = M.perturbation_curves(b.prob, b.images, scores, 8, 4, common, prob_kept=b.prob_kept)
    slow = M.perturbation_curves(b.prob, b.images, scores, 8, 4, common)
    for kind in ("morf", "lerf"):
        torch.testing.assert_close(fast[kind], slow[kind], rtol=1e-5, atol=1e-6)
    assert not torch.equal(fast["morf"], fast["lerf"])  # the comparison means something


def test_one_batch_type_chooses_the_class_and_lists_the_readable_rows():
    """The Batch is the one place that picks the explained class (pred: the plain model's prediction, or each
    method's own without a forward; label: the true class) and the one list of readable rows."""
    from vitlrp.errors import UserError

    model = tiny_vit()
    _, forward = model_in(model, torch.float32, torch.device("cpu"))
    raw = fake_batch(errors=["", "unreadable", "", ""])
    b = Batch.of(raw, torch.device("cpu"), forward)
    assert b.ok == [0, 2, 3] and b.ids == [10, 12, 13] and len(b) == 4
    assert b.failed() == [(11, 1, "unreadable")]
    assert torch.equal(b.targets("pred"), forward(raw["image"][[0, 2, 3]]).argmax(1))
    assert torch.equal(b.targets("label"), raw["label"][[0, 2, 3]])
    assert Batch.of(raw, torch.device("cpu")).targets("pred") is None
    with pytest.raises(UserError, match="target must be pred or label, got 'best'") as info:
        b.targets("best")
    assert info.value.setting == "target"

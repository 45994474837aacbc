"""vitlrp.metrics and the summary logic of vitlrp.evaluation against small hand-computed examples."""
import math

import pytest
import torch

from vitlrp import evaluation as E
from vitlrp import metrics as M


def grid(rows):
    """A [1, H, W] float map written out row by row."""
    return torch.tensor(rows, dtype=torch.float32)[None]


def mask_from_pixels(size, pixels):
    """A [1, size, size] bool mask with exactly the (y, x) ``pixels`` set."""
    m = torch.zeros(1, size, size, dtype=torch.bool)
    for y, x in pixels:
        m[0, y, x] = True
    return m


# --- box_mask --------------------------------------------------------------------------------------------------


def test_box_mask_pixel_centre_convention():
    # edges x 1..3, y 1..4: pixel centres 1.5, 2.5 in x and 1.5, 2.5, 3.5 in y lie inside; 3.5 in x does not
    got = M.box_mask(torch.tensor([[1.0, 1.0, 3.0, 4.0]]), 8)
    want = mask_from_pixels(8, [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)])
    assert got.shape == (1, 8, 8) and got.dtype == torch.bool
    assert torch.equal(got, want)
    assert int(got.sum()) == 6


def test_box_mask_fractional_edges():
    # x0 = 0.5 reaches the centre of pixel 0 (included), x1 = 2.5 stops at the centre of pixel 2 (excluded)
    got = M.box_mask(torch.tensor([[0.5, 0.49, 2.5, 1.51]]), 8)
    assert torch.equal(got, mask_from_pixels(8, [(0, 0), (0, 1), (1, 0), (1, 1)]))
    # just past a centre excludes that pixel: x0 = 0.6 drops column 0, y1 = 1.49 drops row 1
    got = M.box_mask(torch.tensor([[0.6, 0.0, 2.6, 1.49]]), 8)
    assert torch.equal(got, mask_from_pixels(8, [(0, 1), (0, 2)]))


def test_box_mask_clips_to_the_image_and_batches():
    boxes = torch.tensor([[-3.0, 5.2, 20.0, 100.0],   # all columns, rows 5, 6, 7
                          [9.0, 9.0, 12.0, 12.0],     # entirely outside an 8x8 map
                          [0.0, 0.0, 8.0, 8.0]])      # the whole map
    got = M.box_mask(boxes, 8)
    want0 = torch.zeros(8, 8, dtype=torch.bool)
    want0[5:, :] = True
    assert torch.equal(got[0], want0)
    assert not got[1].any()
    assert got[2].all()


# --- localization ----------------------------------------------------------------------------------------------


BOX = torch.tensor([[1.0, 1.0, 3.0, 4.0]])  # the 6 pixels of test_box_mask_pixel_centre_convention


def test_box_share_hand_examples():
    mask = M.box_mask(BOX, 8)
    inside = torch.zeros(1, 8, 8)
    inside[0, 1:4, 1:3] = torch.arange(1.0, 7.0).view(3, 2)
    assert M.box_share(inside, mask).item() == pytest.approx(1.0)
    assert M.box_share(torch.ones(1, 8, 8), mask).item() == pytest.approx(6 / 64)
    # negative relevance is ignored: +2 inside, +6 outside, -100 inside → 2 / 8
    r = torch.zeros(1, 8, 8)
    r[0, 1, 1], r[0, 7, 7], r[0, 2, 2] = 2.0, 6.0, -100.0
    assert M.box_share(r, mask).item() == pytest.approx(0.25)
    assert math.isnan(M.box_share(-torch.ones(1, 8, 8), mask).item())
    assert math.isnan(M.box_share(torch.zeros(1, 8, 8), mask).item())


def test_box_share_and_pointing_undefined_for_an_empty_box():
    empty = M.box_mask(torch.tensor([[9.0, 9.0, 12.0, 12.0]]), 8)
    assert math.isnan(M.box_share(torch.ones(1, 8, 8), empty).item())
    assert math.isnan(M.pointing_game(torch.ones(1, 8, 8), empty).item())


def test_pointing_game():
    mask = M.box_mask(BOX.repeat(2, 1), 8)
    r = torch.zeros(2, 8, 8)
    r[0, 3, 2] = 5.0   # inside (last row, last column of the box)
    r[1, 3, 3] = 5.0   # one column to the right: outside
    r[1, 1, 1] = 4.0   # a smaller value inside does not count
    assert M.pointing_game(r, mask).tolist() == [1.0, 0.0]


def parts_of(*points):
    """[1, P, 3] (x, y, visible) parts."""
    return torch.tensor([points], dtype=torch.float32)


def test_part_pointing():
    r = torch.zeros(1, 16, 16)
    r[0, 2, 3] = 1.0  # the maximum at x=3, y=2
    # a visible part at distance hypot(3, 4) = 5
    assert M.part_pointing(r, parts_of((6, 6, 1)), 5.0).item() == 1.0
    assert M.part_pointing(r, parts_of((6, 6, 1)), 4.99).item() == 0.0  # the tolerance boundary
    # exactly on an invisible part, far from the only visible one → 0
    assert M.part_pointing(r, parts_of((3, 2, 0), (15, 15, 1)), 5.0).item() == 0.0
    # one of several visible parts close enough → 1
    assert M.part_pointing(r, parts_of((15, 15, 1), (3, 3, 1)), 1.0).item() == 1.0
    # no visible part → NaN
    assert math.isnan(M.part_pointing(r, parts_of((3, 2, 0), (6, 6, 0)), 5.0).item())


def test_rank_accuracy():
    mask = M.box_mask(torch.tensor([[0.0, 0.0, 4.0, 2.0]]), 8)  # x 0..3, y 0..1: K = 8 pixels
    assert int(mask.sum()) == 8
    perfect = torch.zeros(1, 8, 8)
    perfect[0, 0:2, 0:4] = torch.arange(1.0, 9.0).view(2, 4)
    assert M.rank_accuracy(perfect, mask).item() == pytest.approx(1.0)
    half = torch.zeros(1, 8, 8)
    half[0, 0, 0:4] = torch.tensor([10.0, 11.0, 12.0, 13.0])  # 4 of the top 8 inside
    half[0, 5, 4:8] = torch.tensor([20.0, 21.0, 22.0, 23.0])  # 4 outside (and more relevant)
    assert M.rank_accuracy(half, mask).item() == pytest.approx(0.5)
    six = half.clone()
    six[0, 1, 0:2] = 30.0  # two more inside, pushing two outside pixels out of the top 8: 6 / 8
    six[0, 5, 4:6] = 0.5
    assert M.rank_accuracy(six, mask).item() == pytest.approx(0.75)
    empty = M.box_mask(torch.tensor([[9.0, 9.0, 12.0, 12.0]]), 8)
    assert math.isnan(M.rank_accuracy(perfect, empty).item())


# --- noise / concentration -------------------------------------------------------------------------------------


def test_negative_share():
    assert M.negative_share(grid([[3.0, -1.0]])).item() == pytest.approx(0.25)
    assert M.negative_share(grid([[1.0, 2.0], [0.0, 5.0]])).item() == 0.0
    assert M.negative_share(grid([[-1.0, -2.0]])).item() == pytest.approx(1.0)
    assert math.isnan(M.negative_share(torch.zeros(1, 2, 2)).item())


def test_gini():
    assert M.gini(torch.full((1, 4, 4), 3.0)).item() == pytest.approx(0.0, abs=1e-7)
    one_hot = torch.zeros(1, 4, 4)
    one_hot[0, 2, 1] = 7.0
    assert M.gini(one_hot).item() == pytest.approx(15 / 16)
    # |values| 1, 2, 3, 4: mean absolute difference over all 16 ordered pairs = 20 / 16, mean = 2.5,
    # Gini = 20 / 16 / (2 * 2.5) = 0.25; signs do not matter
    assert M.gini(grid([[1.0, 2.0], [3.0, 4.0]])).item() == pytest.approx(0.25)
    assert M.gini(grid([[-4.0, 2.0], [3.0, -1.0]])).item() == pytest.approx(0.25)
    assert math.isnan(M.gini(torch.zeros(1, 2, 2)).item())


# --- faithfulness ----------------------------------------------------------------------------------------------


def test_patch_scores_row_major_sums():
    r = torch.arange(16.0).view(1, 4, 4)
    # patches (0,0): 0+1+4+5, (0,1): 2+3+6+7, (1,0): 8+9+12+13, (1,1): 10+11+14+15
    assert M.patch_scores(r, 2).tolist() == [[10.0, 18.0, 42.0, 50.0]]
    r = torch.zeros(2, 32, 32)
    r[1, 16:32, 0:16] = 1.0  # the third 16x16 patch of the second map
    r[1, 0, 31] = -2.0
    assert M.patch_scores(r, 16).tolist() == [[0.0, 0.0, 0.0, 0.0], [0.0, -2.0, 256.0, 0.0]]


def test_perturbed_sets_removed_patches_to_the_baseline():
    images = torch.arange(1.0, 1 + 2 * 3 * 16).view(2, 3, 4, 4)  # no zero pixel anywhere
    order = torch.tensor([[3, 0, 1, 2], [1, 2, 3, 0]])
    out = M.perturbed(images, order, 2, 2)
    removed = torch.zeros(2, 4, 4, dtype=torch.bool)
    removed[0, 2:4, 2:4] = removed[0, 0:2, 0:2] = True  # patches 3 and 0 of image 0
    removed[1, 0:2, 2:4] = removed[1, 2:4, 0:2] = True  # patches 1 and 2 of image 1
    removed = removed[:, None].expand_as(images)
    assert (out[removed] == 0).all()
    assert torch.equal(out[~removed], images[~removed])
    assert torch.equal(M.perturbed(images, order, 0, 2), images)
    assert (M.perturbed(images, order, 4, 2) == 0).all()
    assert (M.perturbed(images, order, 1, 2, value=-5.0)[0, :, 2:4, 2:4] == -5.0).all()


EVIDENCE = 5  # patch (row 1, column 1) of a 4x4 grid of 4-pixel patches: pixels y 4..7, x 4..7


def evidence_prob(images, rows=None):
    """A fake classifier: the probability is the fraction of the evidence patch's pixels still intact."""
    return (images[:, :, 4:8, 4:8] != 0).float().mean((1, 2, 3))


def perfect_map(n):
    r = torch.zeros(n, 16, 16)
    r[:, 4:8, 4:8] = 1.0
    return r


def test_perturbation_curves_perfect_vs_random():
    steps = 4  # 16 patches: 0, 4, 8, 12, 16 removed
    images = torch.ones(1, 3, 16, 16)
    perfect = M.perturbation_curves(evidence_prob, images, M.patch_scores(perfect_map(1), 4), 4, steps)
    assert perfect["morf"].tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]  # drops at the first step
    assert perfect["lerf"].tolist() == [[1.0, 1.0, 1.0, 1.0, 0.0]]  # stays until everything is removed
    assert M.auc(perfect["morf"]).item() == pytest.approx(0.5 / 4)
    assert M.auc(perfect["lerf"]).item() == pytest.approx(3.5 / 4)

    n = 24
    rand = torch.stack([torch.randn(16, 16, generator=torch.Generator().manual_seed(s)) for s in range(n)])
    curves = M.perturbation_curves(evidence_prob, images.repeat(n, 1, 1, 1), M.patch_scores(rand, 4), 4, steps)
    morf = M.auc(curves["morf"])
    # MoRF of a perfect map drops faster than a random one: never later, and later on average
    assert (morf >= M.auc(perfect["morf"]) - 1e-6).all()
    assert morf.mean() > 0.3  # the evidence patch survives 2.5 steps on average: expected AUC 0.5
    assert (curves["morf"][:, 1] == 1).sum() >= n // 2
    # the curves start at prob(nothing removed) and end at prob(everything removed)
    assert (curves["morf"][:, 0] == 1).all() and (curves["lerf"][:, -1] == 0).all()


def test_perturbation_curves_use_given_start_and_end():
    images = torch.ones(2, 3, 16, 16)
    scores = M.patch_scores(perfect_map(2), 4)
    calls = []

    def prob(x, rows):
        calls.append(len(x))
        return evidence_prob(x)

    full = M.perturbation_curves(prob, images, scores, 4, 4)
    n_full = len(calls)
    given = M.perturbation_curves(prob, images, scores, 4, 4, start=torch.tensor([0.9, 0.8]),
                                  end=torch.tensor([0.1, 0.2]))
    assert len(calls) - n_full == n_full - 2  # two forwards saved
    assert given["morf"][:, 0].tolist() == pytest.approx([0.9, 0.8])
    assert given["lerf"][:, -1].tolist() == pytest.approx([0.1, 0.2])
    assert torch.equal(given["morf"][:, 1:-1], full["morf"][:, 1:-1])


def test_perturbation_removes_patches_in_relevance_order():
    # the probability is the mean of the image; patch k holds the value k + 1 and its relevance is k
    images = torch.zeros(1, 1, 8, 8)
    for k in range(4):
        images[0, 0, (k // 2) * 4:(k // 2) * 4 + 4, (k % 2) * 4:(k % 2) * 4 + 4] = k + 1
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    curves = M.perturbation_curves(lambda x, rows: x.mean((1, 2, 3)), images, scores, 4, 4)
    # mean of the full image = (1+2+3+4)/4 = 2.5; MoRF removes 4, 3, 2, 1; LeRF removes 1, 2, 3, 4
    assert curves["morf"].tolist()[0] == pytest.approx([2.5, 1.5, 0.75, 0.25, 0.0])
    assert curves["lerf"].tolist()[0] == pytest.approx([2.5, 2.25, 1.75, 1.0, 0.0])


def test_auc():
    assert M.auc(torch.full((2, 6), 0.37)).tolist() == pytest.approx([0.37, 0.37])
    # trapezoids over fractions 0, 1/2, 1: ((1 + 0.5)/2 + (0.5 + 0)/2) / 2 = 0.5
    assert M.auc(torch.tensor([[1.0, 0.5, 0.0]])).item() == pytest.approx(0.5)
    # over 0, 1/3, 2/3, 1: (1 + 0.75 + 0.25) / 3
    assert M.auc(torch.tensor([[1.0, 1.0, 0.5, 0.0]])).item() == pytest.approx(2 / 3)


def test_mean_ci():
    mean, half, n = M.mean_ci([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt((1.5 ** 2 + 0.5 ** 2 + 0.5 ** 2 + 1.5 ** 2) / 3)
    assert (mean, half, n) == (pytest.approx(2.5), pytest.approx(1.96 * std / 2), 4)
    assert M.mean_ci([1.0, math.nan, 2.0, 3.0, float("inf"), 4.0]) == (mean, half, 4)
    empty = M.mean_ci([])
    assert math.isnan(empty[0]) and math.isnan(empty[1]) and empty[2] == 0
    assert M.mean_ci([math.nan])[2] == 0
    one = M.mean_ci([0.7])
    assert one[0] == pytest.approx(0.7) and one[2] == 1 and math.isnan(one[1])


# --- evaluation: summary and best ------------------------------------------------------------------------------


def row(method, value, error=""):
    r = {"method": method, "error": error, "empty": 0}
    r.update({m: value for m in M.METRICS})
    return r


def test_summarize_counts_failures_and_ignores_them():
    rows = [row("a", 1.0), row("a", 3.0), {"method": "a", "sample_idx": 7, "error": "cannot read image"},
            row("b", 0.5)]
    rows[1]["gini"] = math.nan  # a NaN metric value lowers that metric's n only
    s = E.summarize(rows, ["a", "b"])
    assert s["a"]["n_images"] == 2 and s["a"]["n_failed"] == 1
    assert s["b"]["n_images"] == 1 and s["b"]["n_failed"] == 0
    assert s["a"]["box_share"]["mean"] == pytest.approx(2.0) and s["a"]["box_share"]["n"] == 2
    assert s["a"]["gini"]["mean"] == pytest.approx(1.0) and s["a"]["gini"]["n"] == 1
    assert set(s["a"]) == {"n_images", "n_failed", "n_empty", "not_applicable", *M.METRICS}


def test_best_methods_directions_and_random_excluded():
    values = {"low": 0.2, "high": 0.8, "random": None}
    rows = []
    for method, v in values.items():
        for _ in range(3):
            r = row(method, v if v is not None else 0.5)
            if method == "random":  # the reference wins every metric, and must still not be named best
                r.update({m: (10.0 if M.METRICS[m].higher else -10.0) for m in M.METRICS})
            rows.append(r)
    best = E.best_methods(E.summarize(rows, list(values)))
    assert set(best) == set(M.METRICS)
    for metric, (method, mean) in best.items():
        want = "high" if M.METRICS[metric].higher else "low"
        assert (method, mean) == (want, pytest.approx(values[want])), metric
    assert best["negative_share"][0] == "low" and best["morf_auc"][0] == "low"
    assert best["lerf_minus_morf"][0] == "high"


def test_best_methods_skips_undefined_means():
    s = E.summarize([row("a", math.nan), row("b", 0.4)], ["a", "b"])
    assert all(m == "b" for m, _ in E.best_methods(s).values())
    assert E.best_methods(E.summarize([row("a", math.nan)], ["a"])) == {}


def test_row_fields_hold_every_metric():
    assert E.ROW_FIELDS[:6] == ["method", "sample_idx", "label", "target", "predicted", "correct"]
    assert E.ROW_FIELDS[6:6 + len(M.METRICS)] == list(M.METRICS)
    assert E.ROW_FIELDS[-1] == "error"


# --- ties and maps without evidence ---------------------------------------------------------------------------


def test_ties_score_as_a_random_order_would():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :] = True  # the top half: 8 of 16 pixels
    flat = torch.zeros(1, 4, 4)
    assert M.pointing_game(flat, mask).item() == pytest.approx(0.5)  # a uniform map: the box's share of pixels
    assert M.rank_accuracy(flat, mask).item() == pytest.approx(0.5)
    two = flat.clone()
    two[0, 0, 0] = 1.0  # one pixel above the rest: the 7 other top-K places go to 15 tied pixels, 7 of them inside
    assert M.rank_accuracy(two, mask).item() == pytest.approx((1 + 7 * 7 / 15) / 8)
    parts = torch.tensor([[[0.0, 0.0, 1.0]]])  # one visible part at pixel (0, 0)
    assert M.part_pointing(flat, parts, 0.5).item() == pytest.approx(1 / 16)
    assert M.part_pointing(two, parts, 0.5).item() == 1.0


def test_tied_patches_leave_in_one_random_order_both_ways():
    images = torch.arange(1, 17, dtype=torch.float32).view(1, 1, 4, 4).repeat(1, 3, 1, 1)
    flat = torch.zeros(1, 4)  # four 2x2 patches, all equally relevant
    tiebreak = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    curves = M.perturbation_curves(lambda x, rows: x.mean((1, 2, 3)), images, flat, 2, 4, tiebreak=tiebreak)
    assert torch.equal(curves["morf"], curves["lerf"])  # no ranking: LeRF − MoRF is exactly 0
    assert M.removal_order(flat, True, tiebreak).tolist() == [[1, 3, 2, 0]]
    assert M.removal_order(torch.tensor([[1.0, 0.0, 0.0, 2.0]]), True, tiebreak).tolist() == [[3, 0, 1, 2]]
    assert M.removal_order(torch.tensor([[1.0, 0.0, 0.0, 2.0]]), False, tiebreak).tolist() == [[1, 2, 0, 3]]


def test_curves_of_several_maps_equal_their_separate_curves():
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(3, 3, 8, 8, generator=gen)
    maps = torch.randn(4, 3, 4, generator=gen)
    maps[1] = maps[0]  # two methods with the same ranking share their forwards
    calls = []

    def prob(x, rows):
        calls.append(len(x))
        return x.mean((1, 2, 3)) + rows.float()

    joint = M.perturbation_curves(prob, images, maps, 4, 2, rows_per_pass=5)
    # one inner step removes 2 of 4 patches: each distinct (image, removed pair) is forwarded once
    distinct = {(i, frozenset(maps[j, i].argsort(descending=d)[:2].tolist())) for j in range(4) for i in range(3)
                for d in (True, False)}
    assert max(calls[2:]) <= 5 and sum(calls[2:]) == len(distinct) < 4 * 3 * 2
    for j in range(4):
        alone = M.perturbation_curves(prob, images, maps[j], 4, 2)
        assert torch.allclose(joint["morf"][j], alone["morf"]) and torch.allclose(joint["lerf"][j], alone["lerf"])

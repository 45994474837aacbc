"""Paired statistics against hand computations and naive references."""
import itertools
import math

import numpy as np
import pytest

from vitlrp import stats as S


def test_holm_against_a_hand_computation():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → raised to 0.06 (monotone)
    assert S.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = S.holm([0.02, math.nan, 0.01])  # NaN is no test: m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert S.holm([]).shape == (0,)


def naive_exact_wilcoxon(d):
    """Two-sided exact signed-rank p by enumerating all 2^n sign patterns (no ties, no zeros)."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    t_obs = ranks[d > 0].sum()
    total = ranks.sum()
    stats = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=len(d))]
    t = min(t_obs, total - t_obs)
    return min(1.0, 2 * np.mean([s <= t for s in stats]))


@pytest.mark.parametrize("shift", [0.0, 0.4, 1.0])
def test_wilcoxon_equals_an_exact_enumeration(shift):
    d = np.random.default_rng(3).normal(shift, 1, 11)
    assert S.wilcoxon_p(d) == pytest.approx(naive_exact_wilcoxon(d), rel=1e-9)


def test_wilcoxon_equals_scipy_with_ties_and_zeros():
    from scipy.stats import wilcoxon

    d = np.array([0, 0, 1, 1, 1, -1, 2, 2, 3, -2, 1, 1, 0, 4, 1] * 5, dtype=float)
    assert S.wilcoxon_p(d) == pytest.approx(wilcoxon(d).pvalue)
    assert S.wilcoxon_p(np.zeros(20)) == 1.0  # identical methods: nothing to test
    assert math.isnan(S.wilcoxon_p([]))


def test_bootstrap_is_seeded_and_near_the_normal_interval():
    d = np.random.default_rng(0).normal(0.3, 1.0, 400)
    lo, hi = S.bootstrap_ci(d, n_boot=4000, seed=1)
    assert (lo, hi) == S.bootstrap_ci(d, n_boot=4000, seed=1)
    assert (lo, hi) != S.bootstrap_ci(d, n_boot=4000, seed=2)
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert lo == pytest.approx(d.mean() - half, abs=0.02) and hi == pytest.approx(d.mean() + half, abs=0.02)
    assert all(math.isnan(v) for v in S.bootstrap_ci([]))


def test_bootstrap_interval_covers_the_true_mean_difference():
    """On synthetic paired data with a known mean difference, the 95% interval covers it ~95% of the time."""
    rng = np.random.default_rng(7)
    true = 0.2
    covered = 0
    trials = 200
    for t in range(trials):
        a = rng.normal(0, 1, 60)
        b = a + rng.normal(true, 0.5, 60)  # paired: shared per-image variation cancels in b - a
        lo, hi = S.bootstrap_ci(b - a, n_boot=1000, seed=t)
        covered += lo <= true <= hi
    assert 0.88 <= covered / trials <= 0.99


def test_wins_ties_losses_follow_the_metric_direction():
    d = [0.5, 0.0, -0.1, 0.2, 0.0]
    assert S.wins_ties_losses(d, True) == (2, 2, 1)
    assert S.wins_ties_losses(d, False) == (1, 2, 2)


def test_paired_values_pair_by_sample_and_count_dropped_nans():
    a = {3: 1.0, 1: 2.0, 2: math.nan, 7: 5.0}
    b = {1: 1.5, 2: 0.0, 3: 0.5, 9: 1.0, 7: math.nan}
    x, y, dropped = S.paired_values(a, b)
    assert x.tolist() == [2.0, 1.0] and y.tolist() == [1.5, 0.5] and dropped == 2  # samples 1, 3; 2 and 7 dropped


def test_paired_table_rows_and_holm_over_methods():
    rng = np.random.default_rng(0)
    n = 80
    ref = rng.normal(0.5, 0.1, n)
    scores = {
        "ref": {"score": dict(enumerate(ref)), "cost": dict(enumerate(ref))},
        "better": {"score": dict(enumerate(ref + 0.05 + rng.normal(0, 0.02, n))), "cost": dict(enumerate(ref))},
        "same": {"score": dict(enumerate(ref + rng.normal(0, 0.02, n))), "cost": dict(enumerate(ref))},
    }
    scores["same"]["score"][5] = math.nan
    rows = S.paired_table(scores, "ref", {"score": True, "cost": False}, n_boot=2000, seed=0)
    assert [(r["metric"], r["method"]) for r in rows] == [("score", "better"), ("score", "same"),
                                                           ("cost", "better"), ("cost", "same")]
    assert all(set(r) == set(S.PAIRED_FIELDS) for r in rows)
    better, same = rows[0], rows[1]
    assert better["significant"] and better["ci_low"] > 0 and better["wins"] > 70
    assert better["mean_diff"] == pytest.approx(np.mean([scores["better"]["score"][i] - ref[i] for i in range(n)]))
    assert not same["significant"] and same["ci_low"] < 0 < same["ci_high"]
    assert same["n_pairs"] == n - 1 and same["n_dropped"] == 1
    ps = [better["p_wilcoxon"], same["p_wilcoxon"]]
    assert [better["p_holm"], same["p_holm"]] == pytest.approx(list(S.holm(ps)))
    cost = rows[2]  # identical values: every image a tie, p = 1
    assert (cost["wins"], cost["ties"], cost["losses"]) == (0, n, 0) and cost["p_wilcoxon"] == 1.0
    assert cost["mean_diff"] == 0 and not cost["significant"]


def test_a_small_p_leaning_against_the_mean_is_not_significant():
    """45 images slightly worse, 5 much better: the mean favours the method, the signed-rank test the reference."""
    d = np.r_[np.full(45, -0.01), np.full(5, 0.5)]
    ref = np.linspace(0.2, 0.6, 50)
    scores = {"ref": {"m": dict(enumerate(ref))}, "skewed": {"m": dict(enumerate(ref + d))}}
    row = S.paired_table(scores, "ref", {"m": True}, n_boot=2000, seed=0)[0]
    assert row["mean_diff"] > 0 and row["ci_low"] > 0 and row["p_holm"] < 0.05  # each alone would say "better"
    assert S.rank_direction(d) == -1 and not row["agrees"] and not row["significant"]
    assert S.agrees(0.1, np.full(9, 0.1)) and not S.agrees(0.0, np.zeros(9)) and S.rank_direction([]) == 0

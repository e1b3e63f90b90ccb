"""common.stats: golden values against scipy/numpy, determinism, and the small-n edge cases."""

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from common import stats

SEEDS = [0.912, 0.905, 0.921]
A = [0.81, 0.79, 0.84, 0.80, 0.83]
B = [0.78, 0.79, 0.80, 0.77, 0.80]


def test_mean_sd_and_t_interval_match_scipy():
    s = stats.summarize(SEEDS, "t")
    assert s.mean == pytest.approx(np.mean(SEEDS)) and s.sd == pytest.approx(np.std(SEEDS, ddof=1))
    lo, hi = sps.t.interval(0.95, 2, loc=np.mean(SEEDS), scale=sps.sem(SEEDS))
    assert (s.ci_low, s.ci_high) == (pytest.approx(lo), pytest.approx(hi)) and s.n == 3 and s.method == "t"
    # golden value by hand: t_{0.975,2} = 4.302653
    half = 4.302653 * np.std(SEEDS, ddof=1) / np.sqrt(3)
    assert s.ci_high - s.mean == pytest.approx(half, rel=1e-6)


def test_single_value_has_no_interval_and_equal_values_a_degenerate_one():
    one = stats.summarize([0.5], "t")
    assert one.ci_low is None and one.sd is None and one.method == "none"
    same = stats.summarize([2.0, 2.0, 2.0], "t")
    assert (same.ci_low, same.ci_high) == (2.0, 2.0)
    with pytest.raises(ValueError, match="non-finite"):
        stats.summarize([1.0, float("nan")])


def test_bootstrap_ci_is_seeded_and_matches_numpy_percentiles_of_the_resampled_means():
    x = np.random.default_rng(1).normal(10, 2, size=200)
    ci = stats.bootstrap_ci(x, seed=3)
    assert ci == stats.bootstrap_ci(x, seed=3) and ci != stats.bootstrap_ci(x, seed=4)
    res = sps.bootstrap((x,), np.mean, method="percentile", n_resamples=stats.N_RESAMPLES,
                        rng=np.random.default_rng(3))
    assert ci[0] == pytest.approx(np.percentile(res.bootstrap_distribution, 2.5))
    assert ci[1] == pytest.approx(np.percentile(res.bootstrap_distribution, 97.5))
    # large n: the percentile bootstrap agrees with the t-interval to a few percent of its width
    t_lo, t_hi = stats.t_interval(x)
    assert abs(ci[0] - t_lo) < 0.05 * (t_hi - t_lo) and abs(ci[1] - t_hi) < 0.05 * (t_hi - t_lo)


def test_paired_permutation_test_is_exact_for_small_n():
    r = stats.paired_permutation_test(A, B)
    d = np.subtract(A, B)
    # exact enumeration of all 2^5 sign flips by hand
    flips = [np.mean(d * np.array(s)) for s in itertools.product([1, -1], repeat=len(d))]
    p_exact = np.mean(np.abs(flips) >= abs(d.mean()) - 1e-12)
    assert r.p_value == pytest.approx(p_exact) and r.mean_diff == pytest.approx(d.mean())
    lo, hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    assert (r.ci_low, r.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    # with 3 seeds all in one direction the smallest exact two-sided p is 2/8
    assert stats.paired_permutation_test([3, 4, 5], [1, 1, 1]).p_value == pytest.approx(0.25)
    one = stats.paired_permutation_test([0.8], [0.7])  # a single seed (smoke profiles): no test, no interval
    assert one.p_value == 1.0 and one.ci_low is None and one.mean_diff == pytest.approx(0.1)
    # the interval is the paired t-test's (scipy.stats.ttest_rel): it excludes 0 exactly when p < 0.05
    tt = sps.ttest_rel(A, B)
    assert (tt.pvalue < 0.05) == (r.ci_low > 0 or r.ci_high < 0)
    assert tt.confidence_interval(0.95).low == pytest.approx(r.ci_low)


def test_paired_bootstrap_interval_and_p_value():
    r = stats.paired_bootstrap(A, B, seed=0)
    assert r == stats.paired_bootstrap(A, B, seed=0)
    assert r.ci_low <= r.mean_diff <= r.ci_high and 0 <= r.p_value <= 1
    d = np.subtract(A, B)
    boot = d[np.random.default_rng(0).integers(0, 5, size=(stats.N_RESAMPLES, 5))].mean(axis=1)
    assert r.ci_low == pytest.approx(np.percentile(boot, 2.5)) and r.ci_high == pytest.approx(np.percentile(boot, 97.5))
    assert stats.paired_bootstrap([1.0, 2.0], [1.0, 2.0]).p_value == 1.0


def test_mcnemar_exact_binomial_for_few_discordant_pairs():
    a = [1] * 10 + [1] * 6 + [0] * 2 + [0] * 5
    b = [1] * 10 + [0] * 6 + [1] * 2 + [0] * 5
    r = stats.mcnemar(a, b)
    assert (r.b, r.c, r.method) == (6, 2, "exact-binomial")
    assert r.p_value == pytest.approx(sps.binomtest(6, 8, 0.5).pvalue)
    assert r.p_value == pytest.approx(0.2890625)  # 2 * P(X <= 2), X ~ Bin(8, 1/2) = 2 * 37/256


def test_mcnemar_chi_square_with_continuity_for_many_discordant_pairs():
    a = [1] * 40 + [0] * 20 + [1] * 50
    b = [0] * 40 + [1] * 20 + [1] * 50
    r = stats.mcnemar(a, b)
    assert (r.b, r.c, r.method) == (40, 20, "chi2-continuity")
    assert r.statistic == pytest.approx((abs(40 - 20) - 1) ** 2 / 60)
    assert r.p_value == pytest.approx(sps.chi2.sf(r.statistic, 1))
    assert stats.mcnemar([1, 0], [1, 0]).p_value == 1.0
    with pytest.raises(ValueError, match="same items"):
        stats.mcnemar([1, 0], [1])


def test_iqm_is_scipy_trim_mean_and_its_stratified_bootstrap_keeps_tasks():
    rng = np.random.default_rng(0)
    scores = np.column_stack([rng.normal(0, 1, 8), rng.normal(100, 1, 8)])  # 8 runs x 2 tasks
    s = stats.iqm_ci(scores, n_resamples=2000, seed=0)
    assert s.mean == pytest.approx(sps.trim_mean(scores.ravel(), 0.25)) and s.n == 8
    assert s == stats.iqm_ci(scores, n_resamples=2000, seed=0)
    # stratified: every resample keeps 8 scores of each task, so the IQM stays between the two task
    # clusters; an unstratified resample could draw all runs from one task and land near 0 or 100
    assert 30 < s.ci_low <= s.mean <= s.ci_high < 70
    assert stats.iqm([1, 2, 3, 4, 100, -100, 2.5, 3.5]) == pytest.approx(np.mean([2, 2.5, 3, 3.5]))
    assert stats.iqm_ci([[1.0, 2.0]]).ci_low is None  # one run: no interval

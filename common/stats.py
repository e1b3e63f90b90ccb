"""Statistics for reports: one place where seeds, test items and RL runs are summarised.

Every number with an uncertainty in ``reports/`` comes from here, through :class:`common.reproduce.Row`
(``Row.from_seeds`` / ``Row.from_items`` / ``Row.from_iqm``), so all packages summarise seeds the same way.

Which interval, and why:

- **over seeds** (n is small: 3-5 trainings): the Student-t interval ``mean ± t_{0.975,n-1} · sd/√n``
  (:func:`t_interval`). A percentile bootstrap over 3 values can only return one of 10 distinct resample
  means and covers far less than 95%; the t-interval is the textbook choice at this n.
- **over test items** (hundreds of items of one run): the percentile bootstrap (:func:`bootstrap_ci`),
  which needs no normality and works for any statistic (accuracy, F1 over items, a median).
- **RL over runs × tasks**: the interquartile mean with a stratified bootstrap (:func:`iqm_ci`), as
  rliable reports (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice").
- **comparisons**: paired over seeds (:func:`paired_permutation_test`, exact for small n;
  :func:`paired_bootstrap`), and McNemar for two classifiers scored on the same test items (:func:`mcnemar`).

Every resampling function takes a ``seed`` (default 0), so a report's CIs are deterministic and a
regression check can compare them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
N_RESAMPLES = 10_000  # bootstrap resamples: the percentile endpoints move by < 1% of the CI width beyond this


@dataclass(frozen=True)
class Summary:
    """A mean with its interval; ``ci_low``/``ci_high`` are None when no interval exists (n < 2)."""

    mean: float
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    method: str  # "t", "bootstrap", "stratified-bootstrap-iqm" or "none" (single value)


def _array(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    if a.size == 0:
        raise ValueError("no values to summarise")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"non-finite values cannot be summarised: {a.tolist()}")
    return a


def mean(values: Sequence[float]) -> float:
    return float(_array(values).mean())


def sd(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof=1); None for a single value, whose spread is unknown (not 0)."""
    a = _array(values)
    return float(a.std(ddof=1)) if a.size > 1 else None


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Student-t interval of the mean (``scipy.stats.t.interval``); None for n < 2.

    Identical values give the degenerate interval (mean, mean) rather than scipy's NaN: zero spread over
    seeds is a real, reportable outcome (a deterministic method)."""
    a = _array(values)
    if a.size < 2:
        return None
    m, s = float(a.mean()), float(a.std(ddof=1))
    if s == 0.0:
        return m, m
    lo, hi = sps.t.interval(confidence, a.size - 1, loc=m, scale=s / math.sqrt(a.size))
    return float(lo), float(hi)


def bootstrap_ci(values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean,
                 confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                 seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` (``scipy.stats.bootstrap``, method='percentile').

    For per-item values of one run (test items); None for n < 2. ``statistic`` must accept ``axis``
    (numpy reductions do), so scipy can vectorise the resamples."""
    a = _array(values)
    if a.size < 2:
        return None
    if np.all(a == a[0]):
        v = float(statistic(a))  # scipy warns and returns NaN for a degenerate distribution
        return v, v
    res = sps.bootstrap((a,), statistic, confidence_level=confidence, n_resamples=n_resamples,
                        method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(values: Sequence[float], method: str = "t", confidence: float = CONFIDENCE,
              seed: int = 0) -> Summary:
    """Mean, sd and interval of ``values`` by ``method``: "t" (over seeds) or "bootstrap" (over items)."""
    a = _array(values)
    if method == "t":
        ci = t_interval(a, confidence)
    elif method == "bootstrap":
        ci = bootstrap_ci(a, confidence=confidence, seed=seed)
    else:
        raise ValueError(f"unknown CI method {method!r}: use 't' or 'bootstrap'")
    return Summary(mean=float(a.mean()), sd=sd(a), ci_low=None if ci is None else ci[0],
                   ci_high=None if ci is None else ci[1], n=int(a.size), method=method if ci else "none")


# ----------------------------------------------------------------------------- paired comparisons
@dataclass(frozen=True)
class PairedResult:
    """``mean(a - b)`` over paired seeds, its interval, and a two-sided p-value against no difference."""

    mean_diff: float
    ci_low: float | None
    ci_high: float | None
    p_value: float
    n: int
    method: str


def _paired(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    x, y = _array(a), _array(b)
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal lengths, got {x.size} and {y.size}")
    return x - y


def paired_permutation_test(a: Sequence[float], b: Sequence[float], n_resamples: int = N_RESAMPLES,
                            seed: int = 0) -> PairedResult:
    """Sign-flip permutation test of ``mean(a - b) = 0`` over paired seeds (``scipy.stats.permutation_test``,
    permutation_type='samples'). Exact (all 2^n sign patterns enumerated) when 2^n <= ``n_resamples``,
    which holds for every seed count used here; the interval is the t-interval of the differences."""
    d = _paired(a, b)
    ci = t_interval(d)
    if d.size < 2 or np.all(d == 0):
        p = 1.0  # one pair (or no difference at all) cannot reject anything
    else:
        res = sps.permutation_test((np.asarray(a, float), np.asarray(b, float)),
                                   lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                                   vectorized=True, n_resamples=n_resamples, alternative="two-sided",
                                   rng=np.random.default_rng(seed))
        p = float(res.pvalue)
    return PairedResult(float(d.mean()), None if ci is None else ci[0], None if ci is None else ci[1], p,
                        int(d.size), "permutation")


def paired_bootstrap(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE,
                     n_resamples: int = N_RESAMPLES, seed: int = 0) -> PairedResult:
    """Percentile bootstrap of ``mean(a - b)`` resampling pairs, with the bootstrap p-value of Efron &
    Tibshirani (1993, §16.4): the share of null-centred resampled means at least as far from 0 as the
    observed one. Hand-written because scipy's bootstrap gives intervals, not p-values; the resamples are
    the same ``rng.integers`` draws for both."""
    d = _paired(a, b)
    n = d.size
    obs = float(d.mean())
    if n < 2:
        return PairedResult(obs, None, None, 1.0, 1, "bootstrap")
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)])
    p = float(np.mean(np.abs(boot - obs) >= abs(obs))) if obs != 0 else 1.0
    return PairedResult(obs, float(lo), float(hi), p, int(n), "bootstrap")


@dataclass(frozen=True)
class McNemarResult:
    """Two classifiers on one test set: b = items only A gets right, c = items only B gets right."""

    b: int
    c: int
    statistic: float | None  # chi-square statistic; None for the exact test
    p_value: float
    method: str  # "exact-binomial" or "chi2-continuity"


EXACT_BELOW = 25  # discordant pairs; below this the chi-square approximation is poor (statsmodels' advice)


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool], exact_below: int = EXACT_BELOW) -> McNemarResult:
    """McNemar's test. Exact two-sided binomial (``scipy.stats.binomtest``) when b + c < ``exact_below``,
    else chi-square with continuity correction ``(|b - c| - 1)^2 / (b + c)`` (``scipy.stats.chi2.sf``).
    Hand-assembled because scipy has no McNemar; statsmodels' would be one more dependency for 5 lines."""
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"McNemar needs both classifiers on the same items, got {a.size} and {b_.size}")
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    if b + c == 0:
        return McNemarResult(b, c, None, 1.0, "exact-binomial")
    if b + c < exact_below:
        return McNemarResult(b, c, None, float(sps.binomtest(b, b + c, 0.5).pvalue), "exact-binomial")
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    return McNemarResult(b, c, float(stat), float(sps.chi2.sf(stat, 1)), "chi2-continuity")


# ----------------------------------------------------------------------------- RL: IQM (rliable)
def iqm(scores: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of all scores (``scipy.stats.trim_mean``, 25% cut)."""
    return float(sps.trim_mean(np.asarray(scores, dtype=float), 0.25, axis=None))


def iqm_ci(scores: np.ndarray | Sequence[Sequence[float]], confidence: float = CONFIDENCE,
           n_resamples: int = N_RESAMPLES, seed: int = 0) -> Summary:
    """IQM of a (runs × tasks) score matrix with a stratified percentile bootstrap, as rliable reports.

    Each resample draws runs with replacement *within each task* (the task is the stratum), so every task
    keeps its weight; the IQM is taken over all resampled scores. Hand-written: scipy's bootstrap does not
    stratify. A 1-D input is one task. ``n`` is the number of runs."""
    m = np.asarray(scores, dtype=float)
    if m.ndim == 1:
        m = m[:, None]
    if m.size == 0 or not np.all(np.isfinite(m)):
        raise ValueError("IQM needs a non-empty finite (runs x tasks) matrix")
    runs, tasks = m.shape
    point = iqm(m)
    if runs < 2:
        return Summary(point, None, None, None, runs, "none")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, runs, size=(n_resamples, runs, tasks))
    resampled = np.take_along_axis(np.broadcast_to(m, (n_resamples, runs, tasks)), idx, axis=1)
    boot = sps.trim_mean(resampled.reshape(n_resamples, -1), 0.25, axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)])
    return Summary(point, None, float(lo), float(hi), runs, "stratified-bootstrap-iqm")

"""The statistics of the summary and the fidelity study: proportions with exact intervals, Fisher's
exact test with Holm's correction, its exact power, and how numbers are written in sentences.

Exact and small (tens of seeds), so written with the standard library and numpy rather than scipy
(35 MB, the largest wheel an offline machine would need: workflow/scripts/wheels.py);
tests/test_fidelity.py and tests/test_evaluate.py check them against scipy.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# A verdict at a scale below the papers' (profiles quick, smoke): a pipeline check, not evidence.
REDUCED = "reduced scale"
ALPHA = 0.05
POWER = 0.8
# Resolution of the search for the smallest detectable difference (in proportion units).
GRID_STEP = 0.001


def binomial_pmf(k, n: int, p):
    """P(X = k) for X ~ Bin(n, p); k and p broadcast (numpy)."""
    k, p = np.asarray(k), np.asarray(p, dtype=np.float64)
    log_comb = np.vectorize(lambda j: math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1))(k)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = log_comb + np.where(k > 0, k * np.log(p), 0.0) + np.where(k < n, (n - k) * np.log1p(-p), 0.0)
    return np.exp(logs)


def _root(f, lo: float = 0.0, hi: float = 1.0) -> float:
    """The root of a function increasing on [lo, hi] (bisection to double precision)."""
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def binomial_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for a proportion k/n: the rates at which seeing k or more (the
    lower end), k or fewer (the upper end) has probability (1 - level) / 2."""
    tail, ks = (1 - level) / 2, np.arange(n + 1)
    at_least = lambda p: float(binomial_pmf(ks[k:], n, p).sum())    # noqa: E731  increasing in p
    at_most = lambda p: float(binomial_pmf(ks[:k + 1], n, p).sum())  # noqa: E731  decreasing in p
    low = 0.0 if k == 0 else _root(lambda p: at_least(p) - tail)
    high = 1.0 if k == n else _root(lambda p: tail - at_most(p))
    return low, high


def fisher_p(k1: int, n1: int, k0: int, n0: int) -> float:
    """Two-sided Fisher exact p-value for k1/n1 against k0/n0: the probability, given the margins, of
    every table no more likely than the one seen (ties within a relative 1e-7, as scipy and R count)."""
    total, drawn = n0 + n1, k0 + k1
    lo, hi = max(0, drawn - n0), min(drawn, n1)
    pmf = {j: math.comb(n1, j) * math.comb(n0, drawn - j) / math.comb(total, drawn) for j in range(lo, hi + 1)}
    seen = pmf[k1] * (1 + 1e-7)
    return min(1.0, sum(q for q in pmf.values() if q <= seen))


def holm(pvalues: dict) -> dict:
    """Holm's step-down adjustment: the i-th smallest p times (m - i + 1), made monotone, capped at 1."""
    order = sorted(pvalues, key=pvalues.get)
    m, running, out = len(order), 0.0, {}
    for i, name in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[name]))
        out[name] = running
    return out


def wilcoxon_p(differences) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences, exact: zeros dropped, ties given
    their average rank, and the statistic (the sum of the positive ranks) referred to its distribution
    over all 2^n sign assignments, 2 min(P(T <= t), P(T >= t)). Without ties this is scipy's exact test
    (n <= 50), with ties its permutation test (n <= 13)."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    a = np.sort(np.abs(d))
    ranks2 = np.searchsorted(a, np.abs(d), "left") + np.searchsorted(a, np.abs(d), "right") + 1  # 2 x average rank
    counts = np.zeros(int(ranks2.sum()) + 1)
    counts[0] = 1.0
    for r in ranks2:                                    # each rank joins the positive sum or not
        counts[r:] = counts[r:] + counts[:-r].copy()
    dist = counts / counts.sum()
    t = int(ranks2[d > 0].sum())
    return float(min(1.0, 2 * min(dist[:t + 1].sum(), dist[t:].sum())))


@lru_cache(maxsize=16)
def p_values(n0: int, n1: int) -> np.ndarray:
    """[n0+1, n1+1]: the two-sided Fisher p-value of every table (k0 of n0, k1 of n1); cached per (n0, n1),
    since the power table asks for them at two alphas."""
    return np.array([[fisher_p(k1, n1, k0, n0) for k1 in range(n1 + 1)] for k0 in range(n0 + 1)])


def fisher_power(n0: int, n1: int, p0: float, p1, alpha: float = ALPHA):
    """Exact power of the two-sided Fisher test, k0 ~ Bin(n0, p0) against k1 ~ Bin(n1, p1): the probability
    of the rejection region, enumerating every table. p1 may be an array (one power per entry)."""
    region = (p_values(n0, n1) <= alpha).astype(np.float64)   # the tables the test rejects
    pmf0 = binomial_pmf(np.arange(n0 + 1), n0, p0)
    scalar = np.ndim(p1) == 0
    p1 = np.atleast_1d(np.asarray(p1, dtype=np.float64))
    pmf1 = binomial_pmf(np.arange(n1 + 1)[None, :], n1, p1[:, None])       # [len(p1), n1+1]
    power = pmf1 @ (region.T @ pmf0)
    return float(power[0]) if scalar else power


def detectable_difference(n0: int, n1: int, p0: float, direction: int, alpha: float = ALPHA,
                          power: float = POWER) -> float | None:
    """The smallest |p1 - p0| (on a GRID_STEP grid, going up for direction +1, down for -1) at which the
    test reaches `power`; None when no rate in [0, 1] in that direction does."""
    steps = np.arange(1, int(round(1 / GRID_STEP)) + 1) * GRID_STEP
    p1 = p0 + direction * steps
    p1 = p1[(p1 >= 0) & (p1 <= 1 + 1e-12)].clip(0, 1)
    if not len(p1):
        return None
    reached = np.flatnonzero(fisher_power(n0, n1, p0, p1, alpha) >= power)
    return round(float(abs(p1[reached[0]] - p0)), 6) if len(reached) else None


def sd(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def pct(x: float | None, digits: int = 1) -> str:
    """A proportion in percent ('n/a' for None)."""
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


__all__ = ["REDUCED", "ALPHA", "POWER", "GRID_STEP", "binomial_pmf", "binomial_interval", "fisher_p", "holm", "p_values",
           "fisher_power", "detectable_difference", "sd", "pct"]

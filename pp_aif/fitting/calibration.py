"""Simulation-based calibration (Talts et al. 2018; Säilynoja, Bürkner & Vehtari 2022): the
ranks of true parameters among posterior draws, their uniformity, interval coverage and the
ECDF difference with its simultaneous band. ``experiments/calibration.py`` runs them on every
fitting method; ``notebooks/amortised_fitting.py`` shows them."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
from scipy import stats

__all__ = ["LEVELS", "ranks", "uniformity_p_value", "coverage", "ecdf_band", "ecdf_difference"]

#: the central intervals whose coverage is reported
LEVELS = (0.5, 0.8, 0.9)


def ranks(truth: np.ndarray, draws: np.ndarray, L: int) -> np.ndarray:
    """The rank of each subject's true value among L of its draws (evenly spaced over the
    draws (S, N), S >= L): (N,) integers in 0..L."""
    index = np.linspace(0, draws.shape[0] - 1, L).round().astype(int)
    return (draws[index] < truth[None, :]).sum(0)


def uniformity_p_value(values: np.ndarray, L: int, bins: int) -> float:
    """Chi-square test of ranks 0..L against the discrete uniform, over ``bins`` bins of
    (nearly) equal probability."""
    edges = np.linspace(0, L + 1, bins + 1).round().astype(int)  # bins of whole ranks
    counts = np.array([((values >= a) & (values < b)).sum() for a, b in pairwise(edges)])
    expected = len(values) * np.diff(edges) / (L + 1)
    return float(stats.chisquare(counts, expected).pvalue)


def coverage(truth: np.ndarray, draws: np.ndarray) -> dict:
    """Fraction of subjects whose true value lies in the central interval of each level."""
    result = {}
    for level in LEVELS:
        low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        result[f"{level:g}"] = float(((truth >= low) & (truth <= high)).mean())
    return result


def ecdf_band(N: int, L: int, simulations: int, seed: int, alpha: float = 0.05):
    """(z (K,), lower (K,), upper (K,)): the simultaneous (1 - alpha) band of ECDF(z) - z for
    N fractional ranks (r + 1) / (L + 2) of a discrete uniform on 0..L, evaluated at the rank
    grid z_k = (k + 1) / (L + 2) (Säilynoja et al. 2022): the pointwise binomial level gamma is
    chosen by simulation so that a fraction alpha of uniform samples leaves the band somewhere."""
    rng = np.random.default_rng(seed)
    z = (np.arange(L + 1) + 1) / (L + 2)
    cdf = (np.arange(L + 1) + 1) / (L + 1)  # P(r <= k)
    samples = rng.integers(0, L + 1, size=(simulations, N))
    counts = np.stack([(samples <= k).sum(1) for k in range(L + 1)], 1)  # (sims, K)
    # each simulation's smallest two-sided binomial tail probability over the grid
    lower_tail = stats.binom.cdf(counts, N, cdf)
    upper_tail = stats.binom.sf(counts - 1, N, cdf)
    smallest = np.minimum(lower_tail, upper_tail).min(1)
    gamma = float(np.quantile(smallest, alpha))  # leave the band with probability alpha
    lower = stats.binom.ppf(gamma, N, cdf) / N - cdf
    upper = stats.binom.isf(gamma, N, cdf) / N - cdf
    return z, lower, upper


def ecdf_difference(values: np.ndarray, L: int) -> np.ndarray:
    """ECDF of the ranks minus the uniform CDF at each rank 0..L: (L + 1,)."""
    k = np.arange(L + 1)
    return (values[:, None] <= k).mean(0) - (k + 1) / (L + 1)

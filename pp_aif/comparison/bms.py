"""Random-effects Bayesian model selection (BMS) from a table of log model evidence.

Dimension symbols: N subjects, K models. The input is ``log_evidence`` (N, K), the log evidence
ln p(y_n | m = k) of each model for each subject (e.g. minus a free energy, or a LOO estimate).

Generative model (Stephan et al. 2009, NeuroImage 46:1004-1017, eq. 3-5): model frequencies
r ~ Dir(alpha0) with alpha0 = alpha0 * 1_K for a scalar (SPM's), or one concentration per model
(a vector of length K); each subject's model m_n ~ Cat(r); y_n ~ p(y_n | m_n). The variational
posterior q(r) q(m) = Dir(r; alpha) prod_n Cat(m_n; g_n) is found by the fixed-point iteration of
SPM's ``spm_BMS.m`` (Stephan et al. 2009, eq. 14):

    u_nk  = ln p(y_n | k) + psi(alpha_k) - psi(sum_j alpha_j)        (E_q ln r_k = psi terms)
    g_nk  = exp(u_nk) / sum_j exp(u_nj)                              (responsibilities)
    alpha = alpha0 + sum_n g_n                                       (until max |d alpha| < tol)

Summaries of q(r) = Dir(alpha):

    expected frequencies  <r_k> = alpha_k / sum_j alpha_j
    exceedance            xp_k  = P(r_k > r_j for all j != k)
        K = 2: xp_1 = P(r_1 > 1/2) = 1 - I_{1/2}(alpha_1, alpha_2), I the regularised incomplete
               Beta function (exact; a continued fraction, see ``_regularised_incomplete_beta``);
        K > 2: Monte Carlo with ``num_samples`` draws from Dir(alpha), standard error
               sqrt(xp (1 - xp) / num_samples).

Bayesian omnibus risk (Rigoux et al. 2014, NeuroImage 84:971-985, eq. 8-10; ``spm_BMS.m`` with
``spm_BMS_F``): the posterior probability that all models are equally frequent (the null H0),
against the random-effects model H1 above, under equal prior odds:

    F0  = ln p(y | H0) = sum_n ln sum_k exp(ln p(y_n | k)) - N ln K
    F1  = ELBO of H1 at the solution
        = sum_{n,k} g_nk [ln p(y_n | k) + psi(alpha_k) - psi(alpha_sum) - ln g_nk]
          - KL[Dir(alpha) || Dir(alpha0)]
    KL[Dir(a) || Dir(b)] = ln Gamma(sum a) - sum_k ln Gamma(a_k) - ln Gamma(sum b)
          + sum_k ln Gamma(b_k) + sum_k (a_k - b_k) (psi(a_k) - psi(sum a))
    BOR = 1 / (1 + exp(F1 - F0))
    protected exceedance  pxp_k = (1 - BOR) xp_k + BOR / K        (Rigoux et al. 2014, eq. 7)

The responsibilities reported (and used in F1) are those of the final alpha: the q(m) update
given the converged q(r).
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from pp_aif.errors import ConvergenceWarning, DataError

__all__ = ["BMSResult", "bms"]


@dataclass(frozen=True, eq=False)
class BMSResult:
    """The posterior of random-effects BMS over K models from N subjects.

    Attributes
    ----------
    alpha : (K,) Dirichlet parameters of q(r) = Dir(r; alpha); alpha = alpha0 + sum_n g_n.
    expected_frequencies : (K,) E_q[r_k] = alpha_k / sum_j alpha_j.
    exceedance : (K,) xp_k = P(r_k > r_j for all j != k) under Dir(alpha).
    exceedance_stderr : (K,) Monte Carlo standard error of ``exceedance`` (0 when exact, K = 2).
    protected_exceedance : (K,) pxp_k = (1 - bor) xp_k + bor / K.
    bor : Bayesian omnibus risk 1 / (1 + exp(F1 - F0)), P(H0 | y) with equal prior odds.
    responsibilities : (N, K) g_nk = q(m_n = k), the posterior model of each subject.
    free_energy : F1, the ELBO (a lower bound on ln p(y | H1)) of the random-effects model.
    null_log_evidence : F0 = ln p(y | H0), all models equally frequent.
    num_iterations : fixed-point iterations run.
    """

    alpha: np.ndarray
    expected_frequencies: np.ndarray
    exceedance: np.ndarray
    exceedance_stderr: np.ndarray
    protected_exceedance: np.ndarray
    bor: float
    responsibilities: np.ndarray
    free_energy: float
    null_log_evidence: float
    num_iterations: int


def _digamma(x: np.ndarray) -> np.ndarray:
    return torch.special.digamma(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


def _gammaln(x: np.ndarray) -> np.ndarray:
    return torch.special.gammaln(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.exp(x - top).sum(axis=axis))


def _as_log_evidence(log_evidence) -> np.ndarray:
    if log_evidence is None or isinstance(log_evidence, str | bytes | dict):
        raise DataError(
            f"log_evidence: is a {type(log_evidence).__name__}; give an array (subjects N, "
            "models K) of log evidence"
        )
    if isinstance(log_evidence, torch.Tensor):
        log_evidence = log_evidence.detach().cpu().numpy()
    try:
        given = np.asarray(log_evidence)
    except (ValueError, TypeError) as error:  # ragged nested lists
        raise DataError(f"log_evidence: cannot be read as a numeric array ({error})") from None
    if given.dtype.kind not in "iuf":
        raise DataError(
            f"log_evidence: has dtype {given.dtype}; give real numbers (subjects N, models K)"
        )
    lme = given.astype(np.float64)
    if lme.ndim != 2:
        raise DataError(f"log_evidence must be 2-D (subjects N, models K), got shape {lme.shape}")
    num_subjects, num_models = lme.shape
    if num_subjects < 1:
        raise DataError(f"log_evidence needs at least one subject (row), got shape {lme.shape}")
    if num_models < 2:
        raise DataError(f"log_evidence needs at least two models (columns), got shape {lme.shape}")
    bad = np.argwhere(~np.isfinite(lme))
    if len(bad):
        n, k = (int(i) for i in bad[0])
        raise DataError(
            f"log_evidence[{n}, {k}] (subject {n}, model {k}) is {lme[n, k]}, not finite"
            f" ({len(bad)} non-finite entries in all)"
        )
    return lme


def _stirling_correction(z: float) -> float:
    """ln Gamma(z) - [(z - 1/2) ln z - z + ln(2 pi) / 2], asymptotic series (z >= 30: < 1e-16)."""
    w = 1.0 / (z * z)
    return (1.0 / 12 - w * (1.0 / 360 - w * (1.0 / 1260 - w / 1680))) / z


def _log_beta_density_front(x: float, a: float, b: float) -> float:
    """ln[x^a (1 - x)^b / B(a, b)].

    For large a and b the three ln Gamma terms of ln B(a, b) are huge and nearly cancel; there
    Stirling's formula is used with the large terms combined analytically:
    a ln(x (a + b) / a) + b ln((1 - x)(a + b) / b) + ln(ab / (a + b)) / 2 - ln(2 pi) / 2 - corr,
    with t = x b - (1 - x) a, x (a + b) / a = 1 + t / a and (1 - x)(a + b) / b = 1 - t / b.
    """
    if min(a, b) < 30.0:
        log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
        return a * math.log(x) + b * math.log1p(-x) - log_beta
    t = x * b - (1.0 - x) * a
    correction = _stirling_correction(a) + _stirling_correction(b) - _stirling_correction(a + b)
    return (
        a * math.log1p(t / a)
        + b * math.log1p(-t / b)
        + 0.5 * math.log(a * b / (a + b))
        - 0.5 * math.log(2.0 * math.pi)
        - correction
    )


def _regularised_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for 0 < x < 1, a, b > 0.

    The continued fraction of Abramowitz & Stegun 26.5.8, evaluated by the modified Lentz method.
    It converges fast for x < (a + 1) / (a + b + 2); otherwise I_x(a, b) = 1 - I_{1-x}(b, a).
    """
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _regularised_incomplete_beta(1.0 - x, b, a)
    log_front = _log_beta_density_front(x, a, b)
    tiny = 1e-300
    # h = 1 + d_1 / (1 + d_2 / (1 + ...)), I = front / (a h)
    h, c, d = 1.0, 1.0, 0.0
    max_terms = 20_000 + 20 * int(math.sqrt(max(a, b)))
    for i in range(1, max_terms):
        m = i // 2
        if i % 2:  # d_{2m+1}
            term = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:  # d_{2m}
            term = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + term * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + term / c
        c = c if abs(c) > tiny else tiny
        h *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) / (a * h)


def _exceedance_two(alpha: np.ndarray) -> np.ndarray:
    """Exact exceedance of K = 2: xp_k = P(r_k > 1/2), r_1 ~ Beta(alpha_1, alpha_2).

    The smaller of the two is computed directly (no cancellation): P(r_1 < 1/2) =
    I_{1/2}(alpha_1, alpha_2), which is <= 1/2 when alpha_1 >= alpha_2.
    """
    a1, a2 = float(alpha[0]), float(alpha[1])
    if a1 >= a2:
        xp2 = _regularised_incomplete_beta(0.5, a1, a2)
        return np.array([1.0 - xp2, xp2])
    xp1 = _regularised_incomplete_beta(0.5, a2, a1)
    return np.array([xp1, 1.0 - xp1])


def _exceedance_sampled(alpha: np.ndarray, num_samples: int, seed) -> np.ndarray:
    """Monte Carlo exceedance: the share of draws r ~ Dir(alpha) in which r_k is the largest."""
    draws = np.random.default_rng(seed).dirichlet(alpha, size=num_samples)  # (num_samples, K)
    wins = np.bincount(draws.argmax(axis=1), minlength=len(alpha))
    return wins / num_samples


def _responsibilities(lme: np.ndarray, alpha: np.ndarray):
    """(g, ln g, E_q ln r): the q(m) update given q(r) = Dir(alpha), all subjects at once."""
    expected_log_r = _digamma(alpha) - _digamma(alpha.sum())  # (K,)
    u = lme + expected_log_r  # (N, K)
    log_g = u - _logsumexp(u, axis=1)[:, None]
    return np.exp(log_g), log_g, expected_log_r


def _dirichlet_kl(a: np.ndarray, b: np.ndarray) -> float:
    """KL[Dir(a) || Dir(b)]."""
    a_sum = a.sum()
    return float(
        _gammaln(a_sum)
        - _gammaln(a).sum()
        - _gammaln(b.sum())
        + _gammaln(b).sum()
        + ((a - b) * (_digamma(a) - _digamma(a_sum))).sum()
    )


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _as_prior(alpha0, num_models: int) -> np.ndarray:
    """alpha0 as (K,) float64: a positive finite number for every model, or a ValueError."""
    if isinstance(alpha0, torch.Tensor):
        alpha0 = alpha0.detach().cpu().numpy()
    if isinstance(alpha0, str | bytes | dict) or alpha0 is None:
        raise ValueError(
            f"alpha0: is a {type(alpha0).__name__}; give a positive number, or one per model "
            f"({num_models})"
        )
    try:
        given = np.asarray(alpha0)
    except (ValueError, TypeError) as error:
        raise ValueError(f"alpha0: cannot be read as numbers ({error})") from None
    if given.dtype.kind not in "iuf":
        raise ValueError(f"alpha0: has dtype {given.dtype}; give positive real numbers")
    if given.ndim > 1 or (given.ndim == 1 and given.shape[0] != num_models):
        raise ValueError(
            f"alpha0: shape {given.shape}; give one number, or one per model: shape "
            f"({num_models},) for the {num_models} columns of log_evidence"
        )
    prior = np.broadcast_to(given.astype(np.float64), (num_models,)).copy()
    bad = np.flatnonzero(~(np.isfinite(prior) & (prior > 0)))
    if len(bad):
        where = f"alpha0[{bad[0]}] (model {bad[0]})" if given.ndim else "alpha0"
        raise ValueError(f"{where} is {prior[bad[0]]}; concentrations must be positive and finite")
    return prior


def bms(
    log_evidence,
    *,
    alpha0=1.0,
    tolerance: float = 1e-10,
    max_iterations: int = 10_000,
    num_samples: int = 100_000,
    seed=0,
) -> BMSResult:
    """Random-effects Bayesian model selection (Stephan et al. 2009; Rigoux et al. 2014).

    Parameters
    ----------
    log_evidence : array-like or Tensor (N, K)
        ln p(y_n | m = k) for N >= 1 subjects and K >= 2 models; converted to float64 numpy.
    alpha0 : float or array-like (K,)
        Concentrations of the Dirichlet prior over model frequencies: one number for the
        symmetric prior (SPM: 1), or one per model. Positive and finite.
    tolerance : float
        Stop when max_k |alpha_k(new) - alpha_k(old)| < tolerance. Positive and finite.
    max_iterations : int
        Limit on fixed-point iterations (>= 1); reaching it warns with ``ConvergenceWarning``.
    num_samples : int
        Dirichlet draws (>= 1) for the Monte Carlo exceedance probabilities (K > 2 only).
    seed : int, None or numpy seed
        Seed of ``numpy.random.default_rng`` for those draws.

    Returns
    -------
    BMSResult
        alpha, expected frequencies, exceedance (and its standard error), protected exceedance,
        Bayesian omnibus risk, responsibilities, F1, F0 (formulas in the module docstring).

    Raises
    ------
    DataError
        log_evidence is not a 2-D array of real numbers, has no subject, fewer than 2 models,
        or a non-finite entry.
    ValueError
        alpha0 is not a positive finite number or a vector of K of them; tolerance,
        max_iterations, num_samples or seed is not what is described above.
    """
    lme = _as_log_evidence(log_evidence)
    num_subjects, num_models = lme.shape
    prior = _as_prior(alpha0, num_models)
    if not _is_real(tolerance) or not (math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance: must be a positive finite number, got {tolerance!r}")
    for name, value in (("max_iterations", max_iterations), ("num_samples", num_samples)):
        if not _is_integer(value) or value < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    try:
        np.random.default_rng(seed)
    except (TypeError, ValueError) as error:
        raise ValueError(f"seed: {seed!r} cannot seed numpy's default_rng ({error})") from None

    alpha = prior.copy()
    change = math.inf
    iterations = 0
    while iterations < max_iterations:
        g, _, _ = _responsibilities(lme, alpha)
        new_alpha = prior + g.sum(axis=0)
        change = float(np.abs(new_alpha - alpha).max())
        alpha = new_alpha
        iterations += 1
        if change < tolerance:
            break
    else:
        warnings.warn(
            f"bms: stopped after {max_iterations} iterations with max |change in alpha| = "
            f"{change:.3g} (tolerance {tolerance:g})",
            ConvergenceWarning,
            stacklevel=2,
        )

    g, log_g, expected_log_r = _responsibilities(lme, alpha)
    free_energy = float((g * (lme + expected_log_r - log_g)).sum()) - _dirichlet_kl(alpha, prior)
    null_log_evidence = float(_logsumexp(lme, axis=1).sum() - num_subjects * math.log(num_models))
    # 1 / (1 + exp(F1 - F0)) without overflow
    bor = float(np.exp(-np.logaddexp(0.0, free_energy - null_log_evidence)))

    if num_models == 2:
        exceedance = _exceedance_two(alpha)
        exceedance_stderr = np.zeros(2)
    else:
        exceedance = _exceedance_sampled(alpha, num_samples, seed)
        exceedance_stderr = np.sqrt(exceedance * (1.0 - exceedance) / num_samples)

    return BMSResult(
        alpha=alpha,
        expected_frequencies=alpha / alpha.sum(),
        exceedance=exceedance,
        exceedance_stderr=exceedance_stderr,
        protected_exceedance=(1.0 - bor) * exceedance + bor / num_models,
        bor=bor,
        responsibilities=g,
        free_energy=free_energy,
        null_log_evidence=null_log_evidence,
        num_iterations=iterations,
    )

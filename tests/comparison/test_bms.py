"""Random-effects BMS against oracles written here in a different style: plain Python loops over
subjects and models with math.lgamma and scipy's digamma (SPM's spm_BMS.m structure), scipy's
Beta distribution for the exact exceedance, and an independent Monte Carlo (Gamma variates)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import digamma
from scipy.stats import beta as beta_distribution

from pp_aif.comparison import BMSResult, bms
from pp_aif.errors import ConvergenceWarning, DataError
from tests.common import assert_close

ORACLE_TOLERANCE = {
    "atol": 1e-6,
    "rtol": 1e-6,
    "reason": "the loop oracle stops on ||d alpha||_2 < 1e-12, bms on max |d alpha| < 1e-10",
}


# ---------------------------------------------------------------------------------------------
# the oracle: spm_BMS.m's loops, written out


def prior_list(alpha0, num_models: int) -> list[float]:
    """alpha0 (a number, or one per model) as a list of K numbers."""
    if np.ndim(alpha0) == 0:
        return [float(alpha0)] * num_models
    return [float(a) for a in alpha0]


def loop_bms(lme: np.ndarray, alpha0=1.0):
    """(alpha, responsibilities) by SPM's loops; log u centred on its mean before exp."""
    num_subjects, num_models = len(lme), len(lme[0])
    prior = prior_list(alpha0, num_models)
    alpha = list(prior)
    for _ in range(100_000):
        total = digamma(sum(alpha))
        g = []
        for n in range(num_subjects):
            log_u = [float(lme[n][k]) + digamma(alpha[k]) - total for k in range(num_models)]
            centre = sum(log_u) / num_models
            u = [math.exp(v - centre) for v in log_u]
            g.append([v / sum(u) for v in u])
        previous = alpha
        alpha = [prior[k] + sum(g[n][k] for n in range(num_subjects)) for k in range(num_models)]
        if math.sqrt(sum((a - b) ** 2 for a, b in zip(alpha, previous, strict=True))) < 1e-12:
            break
    return alpha, g


def loop_free_energies(lme: np.ndarray, alpha, g, alpha0=1.0):
    """(F1, F0): F1 = E[ln p(y|m)] + E[ln p(m|r)] + E[ln p(r)] - E[ln q(m)] - E[ln q(r)]."""
    num_subjects, num_models = len(lme), len(lme[0])
    prior = prior_list(alpha0, num_models)
    alpha_sum = sum(alpha)
    expected_log_r = [digamma(a) - digamma(alpha_sum) for a in alpha]
    likelihood = sum(
        g[n][k] * float(lme[n][k]) for n in range(num_subjects) for k in range(num_models)
    )
    model_prior = sum(
        g[n][k] * expected_log_r[k] for n in range(num_subjects) for k in range(num_models)
    )
    frequency_prior = (
        math.lgamma(sum(prior))
        - sum(math.lgamma(a) for a in prior)
        + sum((a - 1) * e for a, e in zip(prior, expected_log_r, strict=True))
    )
    model_entropy = -sum(
        g[n][k] * math.log(g[n][k])
        for n in range(num_subjects)
        for k in range(num_models)
        if g[n][k] > 0
    )
    frequency_entropy = -(
        math.lgamma(alpha_sum)
        - sum(math.lgamma(a) for a in alpha)
        + sum((a - 1) * e for a, e in zip(alpha, expected_log_r, strict=True))
    )
    f1 = likelihood + model_prior + frequency_prior + model_entropy + frequency_entropy
    f0 = 0.0
    for n in range(num_subjects):
        top = max(float(v) for v in lme[n])
        f0 += top + math.log(sum(math.exp(float(v) - top) for v in lme[n])) - math.log(num_models)
    return f1, f0


def random_log_evidence(seed: int, num_subjects: int, num_models: int, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=scale, size=(num_subjects, num_models)) - 100.0


CASES = [(0, 12, 2), (1, 7, 3), (2, 25, 3), (3, 16, 5), (4, 1, 5), (5, 40, 2)]


# ---------------------------------------------------------------------------------------------
# the variational solution


@pytest.mark.parametrize(("seed", "num_subjects", "num_models"), CASES)
def test_alpha_and_frequencies_match_loop_oracle(seed, num_subjects, num_models):
    lme = random_log_evidence(seed, num_subjects, num_models)
    alpha, g = loop_bms(lme.tolist())
    result = bms(lme)
    assert isinstance(result, BMSResult)
    assert_close(result.alpha, np.array(alpha), **ORACLE_TOLERANCE)
    assert_close(result.expected_frequencies, np.array(alpha) / sum(alpha), **ORACLE_TOLERANCE)
    assert_close(result.responsibilities, np.array(g), **ORACLE_TOLERANCE)
    assert result.responsibilities.shape == (num_subjects, num_models)


def test_alpha0_other_than_one_matches_loop_oracle():
    lme = random_log_evidence(7, 10, 3)
    alpha, _ = loop_bms(lme.tolist(), alpha0=0.5)
    assert_close(bms(lme, alpha0=0.5).alpha, np.array(alpha), **ORACLE_TOLERANCE)


def test_torch_input_gives_the_numpy_answer():
    lme = random_log_evidence(8, 9, 3)
    from_numpy, from_torch = bms(lme), bms(torch.from_numpy(lme))
    assert_close(from_torch.alpha, from_numpy.alpha)
    assert_close(from_torch.exceedance, from_numpy.exceedance)
    assert from_torch.bor == from_numpy.bor


# ---------------------------------------------------------------------------------------------
# exceedance probabilities


@pytest.mark.parametrize(
    ("seed", "num_subjects", "scale"),
    [(0, 12, 3.0), (1, 5, 0.3), (2, 30, 8.0), (3, 300, 0.5), (4, 2000, 2.0)],
)
def test_exceedance_two_models_is_the_beta_tail(seed, num_subjects, scale):
    """xp_1 = P(r_1 > 1/2), r_1 ~ Beta(alpha_1, alpha_2): scipy's Beta survival function. The
    large cases (alpha >= 30) exercise the Stirling branch of the incomplete Beta function."""
    result = bms(random_log_evidence(seed, num_subjects, 2, scale))
    a1, a2 = result.alpha
    expected = np.array([beta_distribution.sf(0.5, a1, a2), beta_distribution.sf(0.5, a2, a1)])
    assert_close(result.exceedance, expected)
    assert_close(result.exceedance_stderr, np.zeros(2))


def test_exceedance_two_models_with_huge_alpha():
    """alpha ~ 1e7: ln Gamma(alpha) ~ 1.5e8, where a naive ln B(a, b) loses ~1e-8 to rounding."""
    result = bms(random_log_evidence(6, 10, 2, 2.0), alpha0=1e7)
    a1, a2 = result.alpha
    assert min(a1, a2) > 1e7
    expected = np.array([beta_distribution.sf(0.5, a1, a2), beta_distribution.sf(0.5, a2, a1)])
    assert 0.01 < expected[0] < 0.99
    assert_close(result.exceedance, expected)


def test_exceedance_two_models_by_quadrature():
    """The same tail by the trapezoid rule on the Beta density (a second, cruder oracle)."""
    result = bms(random_log_evidence(11, 9, 2, 2.0))
    a1, a2 = result.alpha
    assert a2 > 1  # the density vanishes at theta = 1
    theta = np.linspace(0.5, 1.0, 200_001)
    inner = theta[:-1]
    log_density = (
        (a1 - 1) * np.log(inner)
        + (a2 - 1) * np.log1p(-inner)
        - (math.lgamma(a1) + math.lgamma(a2) - math.lgamma(a1 + a2))
    )
    density = np.append(np.exp(log_density), 0.0)
    tail = float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(theta)))
    assert_close(
        result.exceedance,
        np.array([tail, 1 - tail]),
        atol=1e-6,
        rtol=0,
        reason="trapezoid rule with 2e5 intervals",
    )


def test_exceedance_three_models_matches_independent_monte_carlo():
    """xp from bms (seed 0, 1e5 Dirichlet draws) against 4e5 draws of normalised Gamma variates
    (seed 2024): within 5 combined standard errors."""
    lme = random_log_evidence(3, 6, 3, 1.0)
    result = bms(lme)
    assert np.all((result.exceedance > 0.02) & (result.exceedance < 0.98)), result.exceedance
    rng = np.random.default_rng(2024)
    num_draws = 400_000
    gammas = rng.standard_gamma(result.alpha, size=(num_draws, 3))
    wins = np.bincount(gammas.argmax(axis=1), minlength=3) / num_draws
    combined = np.sqrt(
        result.exceedance * (1 - result.exceedance) / 100_000 + wins * (1 - wins) / num_draws
    )
    assert np.all(np.abs(result.exceedance - wins) <= 5 * combined), (result.exceedance, wins)
    assert_close(
        result.exceedance_stderr, np.sqrt(result.exceedance * (1 - result.exceedance) / 100_000)
    )
    assert_close(result.exceedance.sum(), 1.0)


def test_monte_carlo_exceedance_is_seeded():
    lme = random_log_evidence(5, 6, 4, 1.0)
    first, again = bms(lme, seed=3), bms(lme, seed=3)
    other = bms(lme, seed=4, num_samples=1000)
    assert np.array_equal(first.exceedance, again.exceedance)
    assert not np.array_equal(first.exceedance, other.exceedance)


# ---------------------------------------------------------------------------------------------
# limiting cases


def test_one_model_far_better_for_every_subject():
    """Measured: frequency 21/23 = 0.913043..., exceedance [1, 0, 0], BOR = 6.6e-8."""
    num_subjects, num_models = 20, 3
    lme = np.full((num_subjects, num_models), -50.0)
    lme[:, 0] = 0.0
    lme += np.random.default_rng(0).normal(size=(num_subjects, 1))  # per-subject offsets
    result = bms(lme)
    assert_close(
        result.expected_frequencies[0], (num_subjects + 1.0) / (num_subjects + num_models * 1.0)
    )
    assert result.exceedance[0] > 0.999
    assert result.bor < 1e-3
    assert result.protected_exceedance[0] > 0.999


def test_identical_evidence_gives_equal_frequencies_and_high_bor():
    """Measured for N = 50, K = 3: BOR = 0.9558 (N = 20: 0.902; K = 2, N = 50: 0.851)."""
    num_subjects, num_models = 50, 3
    offsets = np.random.default_rng(0).normal(scale=5.0, size=(num_subjects, 1))
    result = bms(np.repeat(offsets, num_models, axis=1))
    assert_close(result.expected_frequencies, np.full(num_models, 1 / num_models))
    assert_close(result.alpha, np.full(num_models, 1 + num_subjects / num_models))
    assert result.bor > 0.9
    assert_close(
        result.protected_exceedance,
        np.full(num_models, 1 / num_models),
        atol=0.01,
        reason="Monte Carlo exceedance, shrunk towards 1/K by BOR ~ 0.96",
    )


# ---------------------------------------------------------------------------------------------
# Bayesian omnibus risk


@pytest.mark.parametrize(
    ("seed", "num_subjects", "num_models"), [(0, 12, 2), (1, 7, 3), (3, 16, 5)]
)
def test_bor_matches_independent_free_energies(seed, num_subjects, num_models):
    lme = random_log_evidence(seed, num_subjects, num_models, scale=1.5)
    alpha, g = loop_bms(lme.tolist())
    f1, f0 = loop_free_energies(lme.tolist(), alpha, g)
    result = bms(lme)
    assert_close(result.free_energy, f1, **ORACLE_TOLERANCE)
    assert_close(result.null_log_evidence, f0)
    bor = 1 / (1 + math.exp(f1 - f0))
    assert_close(result.bor, bor, **ORACLE_TOLERANCE)
    assert_close(
        result.protected_exceedance,
        (1 - bor) * result.exceedance + bor / num_models,
        **ORACLE_TOLERANCE,
    )


def test_bor_does_not_overflow_when_one_model_dominates():
    """F1 - F0 ~ N ln 2 = 1386 > 709: a naive 1 / (1 + exp(F1 - F0)) overflows (and warns)."""
    lme = np.zeros((2000, 2))
    lme[:, 1] = -1e4
    result = bms(lme)
    assert result.free_energy - result.null_log_evidence > 1000
    assert 0.0 <= result.bor < 1e-300
    assert_close(result.protected_exceedance, result.exceedance)


# ---------------------------------------------------------------------------------------------
# bad input and convergence


def test_nan_names_subject_and_model():
    lme = random_log_evidence(0, 4, 3)
    lme[2, 1] = np.nan
    with pytest.raises(DataError, match=r"log_evidence\[2, 1\] \(subject 2, model 1\) is nan"):
        bms(lme)


def test_infinite_entry_is_rejected():
    lme = random_log_evidence(0, 4, 3)
    lme[3, 0] = -np.inf
    with pytest.raises(DataError, match=r"subject 3, model 0"):
        bms(lme)


def test_one_dimensional_input_is_rejected():
    with pytest.raises(DataError, match=r"must be 2-D .* got shape \(5,\)"):
        bms(np.zeros(5))


def test_a_single_model_is_rejected():
    with pytest.raises(DataError, match=r"at least two models"):
        bms(np.zeros((5, 1)))


def test_no_subjects_is_rejected():
    with pytest.raises(DataError, match=r"at least one subject"):
        bms(np.zeros((0, 3)))


def test_iteration_limit_warns():
    with pytest.warns(ConvergenceWarning, match=r"stopped after 1 iterations"):
        result = bms(random_log_evidence(1, 7, 3), max_iterations=1)
    assert result.num_iterations == 1


# ---------------------------------------------------------------------------------------------
# a prior concentration per model (issue #15, item 10)


def fixed_point_numpy(lme: np.ndarray, alpha0: np.ndarray, iterations: int = 20_000):
    """Stephan et al. (2009) eq. 14 written out in numpy with scipy's digamma: a third oracle,
    vectorised over subjects as the loops are not, for a prior vector alpha0 (K,)."""
    alpha = alpha0.astype(float).copy()
    for _ in range(iterations):
        u = lme + digamma(alpha) - digamma(alpha.sum())
        u -= u.max(axis=1, keepdims=True)
        g = np.exp(u) / np.exp(u).sum(axis=1, keepdims=True)
        previous, alpha = alpha, alpha0 + g.sum(axis=0)
        if np.abs(alpha - previous).max() < 1e-13:
            break
    return alpha, g


@pytest.mark.parametrize(
    ("seed", "num_subjects", "alpha0"),
    [(0, 12, [1.0, 4.0]), (1, 7, [0.5, 2.0, 1.0]), (2, 30, [3.0, 0.2, 1.0, 8.0])],
)
def test_vector_alpha0_matches_the_oracles(seed, num_subjects, alpha0):
    lme = random_log_evidence(seed, num_subjects, len(alpha0))
    result = bms(lme, alpha0=np.array(alpha0))
    alpha, g = fixed_point_numpy(lme, np.array(alpha0))
    assert_close(result.alpha, alpha, **ORACLE_TOLERANCE)
    assert_close(result.responsibilities, g, **ORACLE_TOLERANCE)
    loop_alpha, loop_g = loop_bms(lme.tolist(), alpha0=alpha0)
    assert_close(result.alpha, np.array(loop_alpha), **ORACLE_TOLERANCE)
    f1, f0 = loop_free_energies(lme.tolist(), loop_alpha, loop_g, alpha0=alpha0)
    assert_close(result.free_energy, f1, **ORACLE_TOLERANCE)
    assert_close(result.null_log_evidence, f0)


def test_a_vector_of_equal_concentrations_is_the_scalar_prior():
    lme = random_log_evidence(3, 9, 3)
    scalar, vector = bms(lme, alpha0=2.0), bms(lme, alpha0=[2.0, 2.0, 2.0])
    assert_close(vector.alpha, scalar.alpha)
    assert_close(vector.exceedance, scalar.exceedance)
    assert_close(vector.bor, scalar.bor)
    as_tensor = bms(lme, alpha0=torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64))
    assert_close(as_tensor.alpha, scalar.alpha)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"alpha0": [1.0, 1.0]},
            r"alpha0: shape \(2,\); give one number, or one per model: "
            r"shape \(3,\)",
        ),
        ({"alpha0": np.ones((3, 1))}, r"alpha0: shape \(3, 1\)"),
        ({"alpha0": [1.0, -1.0, 1.0]}, r"alpha0\[1\] \(model 1\) is -1.0; .* positive"),
        ({"alpha0": [1.0, 1.0, np.nan]}, r"alpha0\[2\] \(model 2\) is nan"),
        ({"alpha0": np.inf}, r"alpha0 is inf; concentrations must be positive and finite"),
        ({"alpha0": 0.0}, r"alpha0 is 0.0"),
        ({"alpha0": "flat"}, r"alpha0: is a str"),
        ({"alpha0": None}, r"alpha0: is a NoneType"),
        ({"alpha0": [1.0, "a", 1.0]}, r"alpha0: has dtype <U"),
        ({"tolerance": 0.0}, r"tolerance: must be a positive finite number, got 0.0"),
        ({"tolerance": np.nan}, r"tolerance: must be a positive finite number, got nan"),
        ({"tolerance": "1e-8"}, r"tolerance: must be a positive finite number, got '1e-8'"),
        ({"max_iterations": 0}, r"max_iterations: must be an integer >= 1, got 0"),
        ({"max_iterations": 10.5}, r"max_iterations: must be an integer >= 1, got 10.5"),
        ({"max_iterations": True}, r"max_iterations: must be an integer >= 1, got True"),
        ({"num_samples": -5}, r"num_samples: must be an integer >= 1, got -5"),
        ({"seed": "zero"}, r"seed: 'zero' cannot seed numpy's default_rng"),
        ({"seed": -1}, r"seed: -1 cannot seed numpy's default_rng"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bms(random_log_evidence(0, 4, 3), **kwargs)


@pytest.mark.parametrize(
    ("log_evidence", "message"),
    [
        ([[1.0, 2.0], [3.0]], r"log_evidence: cannot be read as a numeric array"),
        ([["a", "b"], ["c", "d"]], r"log_evidence: has dtype <U1; give real numbers"),
        (np.ones((3, 2), dtype=complex), r"log_evidence: has dtype complex128"),
        (np.ones((3, 2), dtype=bool), r"log_evidence: has dtype bool"),
        (None, r"log_evidence: is a NoneType"),
        ({"m1": [1.0]}, r"log_evidence: is a dict"),
        (-3.0, r"must be 2-D \(subjects N, models K\), got shape \(\)"),
    ],
)
def test_bad_log_evidence_is_named(log_evidence, message):
    with pytest.raises(DataError, match=message):
        bms(log_evidence)

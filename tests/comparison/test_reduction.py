"""Bayesian model reduction of Dirichlet parameters against SPM's spm_MDP_log_evidence outputs
(bmr_test_a.mat, bmr_test_b.mat) and against the Beta-Binomial evidence ratio computed with
rising factorials (no Gamma functions) and by quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.io
import torch
from scipy.integrate import quad

from pp_aif.comparison import ReducedDirichlet, reduced_log_evidence
from pp_aif.errors import ModelError
from tests.common import assert_close

# ---------------------------------------------------------------------------------------------
# SPM


def test_reproduces_spm_free_energy_landscape(spm_reference):
    """bmr_test_a: F(i, j) for qA = [x_i; x_j], x = linspace(1, 32, 128), pA = [1; 1],
    rA = [1; 8] -- the demonstration at the end of spm_MDP_log_evidence.m."""
    expected = scipy.io.loadmat(spm_reference / "bmr_test_a.mat")["F"]
    x = np.linspace(1, 32, 128)
    prior, reduced_prior = np.array([1.0, 1.0]), np.array([1.0, 8.0])
    actual = np.empty((128, 128))
    for i, x_i in enumerate(x):
        for j, x_j in enumerate(x):
            actual[i, j], _ = reduced_log_evidence(np.array([x_i, x_j]), prior, reduced_prior)
    assert_close(actual, expected)
    # SPM's sign: F < 0 where the data favour the reduced prior (many counts in outcome 2)
    assert expected[0, -1] < 0 < expected[-1, 0]


def test_reproduces_spm_reduced_posteriors(spm_reference):
    """bmr_test_b: three reduced priors of an 8-outcome Dirichlet; F (1, 3) and s_dir (8, 3)."""
    data = scipy.io.loadmat(spm_reference / "bmr_test_b.mat")
    posterior = data["q_dir"].astype(np.float64)  # (8, 1)
    prior = data["p_dir"].astype(np.float64)  # (8, 1)
    for k in range(3):
        reduced_prior = data["r_dir"][:, [k]].astype(np.float64)
        result = reduced_log_evidence(posterior, prior, reduced_prior)
        assert isinstance(result, ReducedDirichlet)
        assert_close(result.free_energy_change, data["F"][0, k], msg=f"F, reduced prior {k}")
        assert_close(result.posterior, data["s_dir"][:, [k]], msg=f"s_dir, reduced prior {k}")
        assert_close(result.log_evidence_change, -data["F"][0, k])


# ---------------------------------------------------------------------------------------------
# identities


@pytest.mark.parametrize("shape", [(4,), (3, 5), (2, 3, 2)])
def test_unchanged_prior_changes_nothing(rng, shape):
    prior = rng.gamma(2.0, size=shape) + 0.1
    posterior = prior + rng.integers(0, 6, size=shape)
    dF, reduced_posterior = reduced_log_evidence(posterior, prior, prior.copy())
    assert_close(dF, 0.0)
    assert_close(reduced_posterior, posterior)


def log_rising_factorial(a: float, n: int) -> float:
    """ln[a (a + 1) ... (a + n - 1)], by an explicit product: no Gamma function."""
    return sum(math.log(a + j) for j in range(n))


def log_beta_binomial_ratio(concentration, counts) -> float:
    """ln[B(a + c) / B(a)] for one 2-outcome column = ln p(counts in a given order | Beta(a))."""
    return (
        log_rising_factorial(concentration[0], counts[0])
        + log_rising_factorial(concentration[1], counts[1])
        - log_rising_factorial(concentration[0] + concentration[1], counts[0] + counts[1])
    )


def test_log_evidence_change_is_the_beta_binomial_ratio(rng):
    """qA = pA + counts: ln p(y | r) - ln p(y | p) = sum_columns ln[B(r + c) / B(r)] -
    ln[B(p + c) / B(p)], the evidence ratio of the Beta-Bernoulli model, summed over 6 columns."""
    prior = rng.gamma(2.0, size=(2, 6)) + 0.2
    reduced_prior = rng.gamma(2.0, size=(2, 6)) + 0.2
    counts = rng.integers(0, 15, size=(2, 6))
    expected = sum(
        log_beta_binomial_ratio(reduced_prior[:, s], counts[:, s])
        - log_beta_binomial_ratio(prior[:, s], counts[:, s])
        for s in range(6)
    )
    result = reduced_log_evidence(prior + counts, prior, reduced_prior)
    assert_close(result.log_evidence_change, expected)
    assert_close(result.free_energy_change, -expected)
    assert_close(result.posterior, reduced_prior + counts)


def test_log_evidence_change_by_quadrature():
    """One column: the evidence integral over theta of theta^c1 (1 - theta)^c2 under each prior."""
    prior, reduced_prior, counts = np.array([1.5, 2.0]), np.array([6.0, 0.7]), np.array([9, 2])

    def log_evidence(a):
        def integrand(theta):
            return theta ** (counts[0] + a[0] - 1) * (1 - theta) ** (counts[1] + a[1] - 1)

        normaliser = math.gamma(a[0]) * math.gamma(a[1]) / math.gamma(a[0] + a[1])
        value, _ = quad(integrand, 0.0, 1.0, epsabs=0, epsrel=1e-13, limit=200)
        return math.log(value / normaliser)

    expected = log_evidence(reduced_prior) - log_evidence(prior)
    result = reduced_log_evidence(prior + counts, prior, reduced_prior)
    assert_close(
        result.log_evidence_change,
        expected,
        atol=1e-9,
        rtol=1e-9,
        reason="adaptive quadrature with an integrable endpoint singularity (0.7 - 1 < 0)",
    )


def test_structural_zeros_are_left_out_as_in_spm():
    """A category that is 0 in prior, posterior and reduced prior is the same as no category."""
    prior = np.array([[1.0, 2.0], [3.0, 0.5], [0.0, 1.0]])
    posterior = prior + np.array([[4.0, 1.0], [2.0, 3.0], [0.0, 2.0]])
    reduced_prior = np.array([[2.0, 0.5], [1.0, 0.5], [0.0, 4.0]])
    with_zero = reduced_log_evidence(posterior, prior, reduced_prior)
    without = reduced_log_evidence(posterior[:2, :1], prior[:2, :1], reduced_prior[:2, :1])
    second_column = reduced_log_evidence(posterior[:, 1], prior[:, 1], reduced_prior[:, 1])
    assert_close(
        with_zero.free_energy_change,
        without.free_energy_change + second_column.free_energy_change,
    )
    assert with_zero.posterior[2, 0] == 0.0


def test_pruning_a_category_without_data():
    """rA -> 0 at an outcome never seen (qA = pA there) is the limit of ever smaller rA."""
    prior = np.array([1.0, 1.0, 1.0])
    posterior = prior + np.array([5.0, 3.0, 0.0])
    pruned = reduced_log_evidence(posterior, prior, np.array([1.0, 1.0, 0.0]))
    almost = reduced_log_evidence(posterior, prior, np.array([1.0, 1.0, 1e-9]))
    assert_close(
        pruned.free_energy_change,
        almost.free_energy_change,
        atol=1e-7,
        reason="the limit is approached at O(1e-9) times O(1) derivatives",
    )
    assert pruned.free_energy_change < 0  # removing an unused outcome raises the evidence


def test_torch_inputs():
    prior = torch.tensor([[1.0, 2.0], [1.0, 0.5]], dtype=torch.float64)
    posterior = prior + torch.tensor([[3.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    reduced_prior = torch.tensor([[4.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    dF, reduced_posterior = reduced_log_evidence(posterior, prior, reduced_prior)
    expected, _ = reduced_log_evidence(posterior.numpy(), prior.numpy(), reduced_prior.numpy())
    assert isinstance(reduced_posterior, torch.Tensor)
    assert reduced_posterior.dtype == torch.float64
    assert_close(reduced_posterior, posterior + reduced_prior - prior)
    assert_close(dF, expected)


# ---------------------------------------------------------------------------------------------
# bad input


def test_shape_mismatch():
    with pytest.raises(ModelError, match=r"same shape"):
        reduced_log_evidence(np.ones((2, 3)), np.ones((2, 3)), np.ones((3, 2)))


def test_negative_prior_names_array_and_index():
    prior = np.ones((3, 2))
    prior[2, 1] = -0.5
    with pytest.raises(ModelError, match=r"prior\[2, 1\] = -0.5 is negative"):
        reduced_log_evidence(np.ones((3, 2)) * 2, prior, np.ones((3, 2)))


def test_non_positive_reduced_posterior_names_index():
    posterior, prior = np.array([[3.0], [2.0]]), np.array([[1.0], [2.0]])
    reduced_prior = np.array([[1.0], [0.5]])  # s[1, 0] = 2 + 0.5 - 2 = 0.5: fine
    reduced_log_evidence(posterior, prior, reduced_prior)
    posterior[1, 0] = 1.0  # s[1, 0] = 1 + 0.5 - 2 < 0
    with pytest.raises(ModelError, match=r"reduced posterior .*\[1, 0\] = -0.5 is not positive"):
        reduced_log_evidence(posterior, prior, reduced_prior)


def test_zero_that_is_not_structural():
    prior = np.array([[1.0, 1.0], [0.0, 1.0]])
    posterior = np.array([[2.0, 1.0], [1.0, 3.0]])  # positive where the prior is 0
    with pytest.raises(ModelError, match=r"prior\[1, 0\] = 0 but posterior\[1, 0\] = 1"):
        reduced_log_evidence(posterior, prior, prior.copy())


def test_pruning_an_outcome_with_data_is_rejected():
    prior, posterior = np.ones(3), np.array([2.0, 3.0, 4.0])
    with pytest.raises(ModelError, match=r"reduced_prior\[2\] = 0 but reduced posterior\[2\]"):
        reduced_log_evidence(posterior, prior, np.array([1.0, 1.0, 0.0]))


def test_non_finite_entry():
    with pytest.raises(ModelError, match=r"posterior\[1\] is nan"):
        reduced_log_evidence(np.array([1.0, np.nan]), np.ones(2), np.ones(2))

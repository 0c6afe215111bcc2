"""Policy posterior, action marginals and action selection against pymdp's legacy functions and
hand computation; sampling checked within standard errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.planning import (
    Lesions,
    action_marginals,
    action_probabilities,
    policy_posterior,
    select_actions,
)
from tests.common import PYMDP_TOLERANCE, assert_close, pymdp_objects, random_arrays, random_columns

legacy_control = pytest.importorskip("pymdp.legacy.control")


@pytest.fixture
def problem(rng):
    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 2))
    C = [rng.normal(size=3), rng.normal(size=2)]
    pA = [1 + a * 3 for a in arrays.A]
    pB = [1 + b * 3 for b in arrays.B]
    E = random_columns(rng, (16,))
    policies = pp_aif.construct_policies((2, 2), 2)
    model = pp_aif.GenerativeModel(
        arrays.A, arrays.B, C=C, D=arrays.D, E=E, pA=pA, pB=pB, policies=policies
    )
    beliefs = [random_columns(rng, (s,)) for s in (2, 3)]
    return arrays, C, pA, pB, E, policies, model, beliefs


@pytest.mark.parametrize(
    "lesions",
    [Lesions(), Lesions(epistemic=False), Lesions(pragmatic=False), Lesions(novelty=False)],
)
def test_policy_posterior_equals_pymdp(problem, lesions):
    arrays, C, pA, pB, E, policies, model, beliefs = problem
    scores = pp_aif.expected_free_energy(model, beliefs)
    ours = policy_posterior(scores, torch.log(model.E), precision=16.0, lesions=lesions)
    expected, _ = legacy_control.update_posterior_policies(
        pymdp_objects(beliefs),
        pymdp_objects(arrays.A),
        pymdp_objects(arrays.B),
        pymdp_objects(C),
        list(policies.numpy()),
        use_utility=lesions.pragmatic,
        use_states_info_gain=lesions.epistemic,
        use_param_info_gain=lesions.novelty,
        pA=pymdp_objects(pA),
        pB=pymdp_objects(pB),
        E=E,
        gamma=16.0,
    )
    assert_close(ours, expected, **PYMDP_TOLERANCE)


def test_free_energy_enters_the_posterior(problem):
    *_, model, beliefs = problem
    scores = pp_aif.expected_free_energy(model, beliefs)
    F = torch.linspace(0, 3, 16, dtype=torch.float64)
    with_F = policy_posterior(scores, torch.log(model.E), free_energy=F)
    without = policy_posterior(scores, torch.log(model.E))
    assert_close(with_F, without * torch.exp(-F) / (without * torch.exp(-F)).sum())


@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 4)])
def test_action_marginals_by_hand(rng, batch_shape):
    policies = pp_aif.construct_policies((2, 3), 2)
    q = torch.softmax(torch.as_tensor(rng.normal(size=(*batch_shape, 36))), -1)
    marginals = action_marginals(q, policies, (2, 3))
    flat = q.reshape(-1, 36).numpy()
    for f, U in enumerate((2, 3)):
        expected = np.zeros((len(flat), U))
        for p, policy in enumerate(policies.numpy()):
            expected[:, policy[0, f]] += flat[:, p]
        assert marginals[f].shape == (*batch_shape, U)
        assert_close(marginals[f].reshape(-1, U), expected)


def test_argmax_selection_equals_pymdp(rng):
    policies = pp_aif.construct_policies((3, 2), 1)
    for _ in range(20):
        q = torch.softmax(torch.as_tensor(rng.normal(size=6) * 3), -1)
        ours = select_actions(
            action_probabilities(action_marginals(q, policies, (3, 2)), 16.0), sample=False
        )
        theirs = legacy_control.sample_action(
            q.numpy(), list(policies.numpy()), [3, 2], action_selection="deterministic"
        )
        assert ours.tolist() == theirs.astype(int).tolist()


def test_stochastic_selection_matches_pymdp_frequencies(rng):
    """Our p(u) against the frequencies of pymdp's stochastic sampler, and of ours (4 s.e.)."""
    policies = pp_aif.construct_policies((3,), 1)
    q = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    probabilities = action_probabilities(action_marginals(q, policies, (3,)), precision=2.0)[0]
    assert_close(probabilities, np.array([0.25, 0.09, 0.04]) / 0.38)  # q^2 / sum q^2
    n = 4000
    np.random.seed(1)  # noqa: NPY002 - pymdp's legacy sampler draws from numpy's global state
    theirs = np.array(
        [
            legacy_control.sample_action(
                q.numpy(), list(policies.numpy()), [3], action_selection="stochastic", alpha=2.0
            )[0]
            for _ in range(n)
        ],
        dtype=int,
    )
    generator = torch.Generator().manual_seed(2)
    ours = select_actions([probabilities.expand(n, 3)], generator=generator)[:, 0].numpy()
    p = probabilities.numpy()
    stderr = np.sqrt(p * (1 - p) / n)
    for draws in (theirs, ours):
        frequencies = np.bincount(draws, minlength=3) / n
        assert np.all(np.abs(frequencies - p) <= 4 * stderr), (frequencies, p)


def test_zero_marginal_is_never_chosen():
    policies = pp_aif.construct_policies((3,), 1)
    q = torch.tensor([[0.0, 0.4, 0.6]], dtype=torch.float64)
    probabilities = action_probabilities(action_marginals(q, policies, (3,)), precision=1.0)
    assert probabilities[0][0, 0] == 0
    chosen = select_actions(
        [probabilities[0].expand(500, 3)], generator=torch.Generator().manual_seed(0)
    )
    assert (chosen != 0).all()


def spm_precision_loop(Q, log_E, F, beta, iterations):
    """SPM's spm_MDP_VB_X precision update, restated in numpy (its Q is the negative EFE)."""

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    qb = beta
    for _ in range(iterations):
        w = 1 / qb
        qu = softmax(log_E + w * Q + F)
        pu = softmax(log_E + w * Q)
        eg = (qu - pu) @ Q
        dFdg = qb - beta + eg
        qb = qb - dFdg / 2
    w = 1 / qb
    return softmax(log_E + w * Q + F), w


@pytest.mark.parametrize("iterations", [1, 4, 16])
def test_precision_inference_equals_spm_loop(problem, iterations):
    *_, model, beliefs = problem
    scores = pp_aif.expected_free_energy(model, beliefs)
    F = torch.linspace(0, 1, 16, dtype=torch.float64)
    q, gamma = pp_aif.planning.infer_precision(
        scores, torch.log(model.E), beta=1.0, iterations=iterations, free_energy=F
    )
    Q = (scores.epistemic + scores.pragmatic + scores.novelty).numpy()
    expected_q, expected_gamma = spm_precision_loop(
        Q, np.log(model.E.numpy()), -F.numpy(), 1.0, iterations
    )
    assert_close(q, expected_q)
    assert_close(gamma, expected_gamma)


def test_precision_falls_when_observations_contradict_the_plan(problem):
    """Free energy that disfavours the policies with the best score lowers confidence in G."""
    *_, model, beliefs = problem
    scores = pp_aif.expected_free_energy(model, beliefs)
    Q = scores.epistemic + scores.pragmatic + scores.novelty
    _, agreeing = pp_aif.planning.infer_precision(scores, torch.log(model.E), free_energy=-Q)
    _, contradicting = pp_aif.planning.infer_precision(scores, torch.log(model.E), free_energy=Q)
    assert contradicting < 1.0 < agreeing

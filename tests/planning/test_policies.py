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


def spm_precision_update(Q, log_E, F, *, beta, qb, plausible, iterations):
    """One step of SPM's policy-and-precision loop (``spm_MDP_VB_X.m``, "variational updates -
    policies and precision"), restated line by line in numpy for one agent.

    Q: SPM's Q, the negative expected free energy; F: SPM's F, the negative free energy of each
    policy; qb: the rate carried in from the step before (beta at a trial's first step);
    plausible: SPM's p{m}, the policies still counted. Returns (u(:, t), w(t), qb).
    """

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    p = np.flatnonzero(plausible)
    u = np.zeros(len(Q))
    w = 1 / qb  # w{m}(t) = w{m}(t - 1)
    for _ in range(iterations):
        qu = softmax(log_E[p] + w * Q[p] + F[p])
        pu = softmax(log_E[p] + w * Q[p])
        eg = (qu - pu) @ Q[p]
        dFdg = qb - beta + eg
        qb = qb - dFdg / 2
        w = 1 / qb
        u[p] = qu
    return u, w, qb


@pytest.fixture
def batched_scores(rng, problem):
    """Scores of the 16 policies for three agents with different beliefs: (3, 16)."""
    *_, model, _ = problem
    beliefs = [
        torch.as_tensor(np.stack([random_columns(rng, (s,)) for _ in range(3)])) for s in (2, 3)
    ]
    return model, pp_aif.expected_free_energy(model, beliefs)


@pytest.mark.parametrize("iterations", [1, 4, 16])
def test_precision_inference_equals_spm_update_over_a_trial(rng, batched_scores, iterations):
    """F(pi) differs between policies, so gamma moves; three steps, the rate b = 1 / gamma
    carried from step to step as SPM carries ``qb``, each agent with its own beta."""
    model, scores = batched_scores
    Q = (scores.epistemic + scores.pragmatic + scores.novelty).numpy()
    log_E = np.log(model.E.numpy())
    beta = np.array([1.0, 0.5, 2.0])
    qb = beta.copy()
    rate = None
    for _ in range(3):
        F = rng.uniform(0, 4, size=(3, 16))
        q, gamma = pp_aif.planning.infer_precision(
            scores,
            torch.log(model.E),
            beta=torch.as_tensor(beta),
            rate=rate,
            iterations=iterations,
            free_energy=torch.as_tensor(F),
        )
        for n in range(3):
            u, w, qb[n] = spm_precision_update(
                Q[n],
                log_E,
                -F[n],
                beta=beta[n],
                qb=qb[n],
                plausible=np.ones(16, bool),
                iterations=iterations,
            )
            assert_close(q[n], u)
            assert_close(gamma[n], w)
        assert np.all(np.abs(gamma.numpy() * beta - 1) > 1e-3)  # gamma has left 1 / beta
        rate = 1 / gamma


def test_precision_inference_counts_only_spm_plausible_policies(rng, problem):
    """Policies outside SPM's plausible set p{m} (ln E = -inf) leave q(pi) and its prior."""
    *_, model, beliefs = problem
    scores = pp_aif.expected_free_energy(model, beliefs)
    plausible = np.zeros(16, bool)
    plausible[[0, 3, 4, 9, 10, 15]] = True
    log_E = np.log(model.E.numpy())
    F = rng.uniform(0, 4, size=16)
    q, gamma = pp_aif.planning.infer_precision(
        scores,
        torch.as_tensor(np.where(plausible, log_E, -np.inf)),
        beta=1.0,
        rate=0.7,
        free_energy=torch.as_tensor(F),
    )
    Q = (scores.epistemic + scores.pragmatic + scores.novelty).numpy()
    u, w, _ = spm_precision_update(
        Q, log_E, -F, beta=1.0, qb=0.7, plausible=plausible, iterations=16
    )
    assert_close(q, u)
    assert_close(gamma, w)
    assert (q[~torch.as_tensor(plausible)] == 0).all()


@pytest.mark.parametrize("shared", [0.0, 3.7])
def test_precision_stays_put_when_every_policy_has_the_same_free_energy(problem, shared):
    """The reason the agent refuses to infer gamma: with one F(pi) for all, q(pi) equals its
    prior, dF/db = b - beta, and gamma stays at 1 / beta, its posterior at the fixed one."""
    *_, model, beliefs = problem
    scores = pp_aif.expected_free_energy(model, beliefs)
    q, gamma = pp_aif.planning.infer_precision(
        scores, torch.log(model.E), beta=0.5, free_energy=torch.full((16,), shared)
    )
    assert_close(gamma, 2.0)
    assert_close(q, policy_posterior(scores, torch.log(model.E), precision=2.0))


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("beta", 0.0, r"beta: must be a finite number > 0, got 0.0"),
        ("rate", -1.0, r"rate: must be a finite number > 0, got -1.0"),
        ("iterations", 0, r"iterations: must be an integer >= 1, got 0"),
    ],
)
def test_precision_inference_refuses_bad_settings(problem, setting, value, message):
    *_, model, beliefs = problem
    scores = pp_aif.expected_free_energy(model, beliefs)
    with pytest.raises(ValueError, match=message):
        pp_aif.planning.infer_precision(scores, torch.log(model.E), **{setting: value})


def test_precision_falls_when_observations_contradict_the_plan(problem):
    """Free energy that disfavours the policies with the best score lowers confidence in G."""
    *_, model, beliefs = problem
    scores = pp_aif.expected_free_energy(model, beliefs)
    Q = scores.epistemic + scores.pragmatic + scores.novelty
    _, agreeing = pp_aif.planning.infer_precision(scores, torch.log(model.E), free_energy=-Q)
    _, contradicting = pp_aif.planning.infer_precision(scores, torch.log(model.E), free_energy=Q)
    assert contradicting < 1.0 < agreeing

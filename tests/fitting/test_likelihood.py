"""The fast action likelihood equals the agent stepped through the person's trials (replaying
their actions), and its gradients are right (gradcheck, float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.agent import AgentSettings, initial_state, step
from pp_aif.fitting import action_log_likelihood, policy_values
from pp_aif.planning import Lesions
from tests.common import assert_close, random_arrays, sample_sequence

N, K, T = 3, 2, 4


@pytest.fixture
def case(rng):
    arrays = random_arrays(rng, (3, 2), (3, 2), (3, 2), zero_fraction=0.2)
    model = pp_aif.GenerativeModel(
        arrays.A,
        arrays.B,
        C=[rng.normal(size=3), rng.normal(size=(2, T))],
        D=arrays.D,
        policies=pp_aif.construct_policies((3, 2), 2),
    )
    pairs = [sample_sequence(rng, arrays, T) for _ in range(N * K)]
    observations = torch.as_tensor(np.stack([o for o, _ in pairs])).reshape(N, K, T, -1)
    actions = torch.as_tensor(np.stack([a for _, a in pairs])).reshape(N, K, T - 1, -1)
    return model, observations, actions


def stepped(model, settings, observations, actions):
    """ln p(person's action) from pp_aif.agent.step, trial by trial, step by step: (N, K, T-1)."""
    out = torch.zeros(N, K, T - 1, dtype=torch.float64)
    for k in range(K):
        state = initial_state(model, N)
        for t in range(T):
            action = actions[:, k, t] if t < T - 1 else None
            state, result = step(
                model, settings, state, observations[:, k, t], num_steps=T, action=action
            )
            if action is not None:
                for f, p in enumerate(result.action_probabilities):
                    out[:, k, t] += torch.log(p.gather(-1, action[:, f, None])[:, 0])
    return out


@pytest.mark.parametrize("lesions", [Lesions(), Lesions(epistemic=False)])
def test_fast_likelihood_equals_the_stepped_agent(case, lesions):
    model, observations, actions = case
    gamma = torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64)
    alpha = torch.tensor([1.0, 4.0, 16.0], dtype=torch.float64)
    values = policy_values(model, AgentSettings(lesions=lesions), observations, actions)
    fast = action_log_likelihood(values, gamma, alpha)
    for n in range(N):
        settings = AgentSettings(
            lesions=lesions, policy_precision=float(gamma[n]), action_precision=float(alpha[n])
        )
        assert_close(fast[n], stepped(model, settings, observations, actions)[n])


def test_gradients_pass_gradcheck(case):
    model, observations, actions = case
    values = policy_values(model, AgentSettings(), observations, actions)
    gamma = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([1.0, 4.0, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda g, a: action_log_likelihood(values, g, a).sum((-1, -2)), (gamma, alpha)
    )


def test_parameter_draws_batch_on_the_left(case):
    model, observations, actions = case
    values = policy_values(model, AgentSettings(), observations, actions)
    gamma = torch.rand(5, N, dtype=torch.float64) * 4
    alpha = torch.rand(5, N, dtype=torch.float64) * 8
    batched = action_log_likelihood(values, gamma, alpha)
    assert batched.shape == (5, N, K, T - 1)
    for s in range(5):
        assert_close(batched[s], action_log_likelihood(values, gamma[s], alpha[s]))


def test_learning_or_inferred_precision_are_refused(case):
    model, observations, actions = case
    with pytest.raises(ValueError, match=r"fixed policy precision"):
        policy_values(model, AgentSettings(infer_precision=True), observations, actions)


def test_behavioural_program_scores_the_same_likelihood(case):
    import pyro
    import pyro.distributions as dist

    from pp_aif.fitting import BehaviourLikelihood
    from pp_aif.programs import behaviour

    model, observations, actions = case
    present = torch.tensor([[True, True], [True, False], [False, True]])
    likelihood = BehaviourLikelihood(
        model, AgentSettings(), observations, actions, ("gamma", "alpha"), present
    )
    values = policy_values(model, AgentSettings(), observations, actions)
    priors = {"gamma": dist.LogNormal(0.0, 1.0), "alpha": dist.LogNormal(1.0, 1.0)}
    gamma = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    alpha = torch.tensor([1.0, 4.0, 2.0], dtype=torch.float64)
    conditioned = pyro.poutine.condition(
        behaviour, data={"gamma": gamma[:, None, None], "alpha": alpha[:, None, None]}
    )
    trace = pyro.poutine.trace(conditioned).get_trace(likelihood, priors=priors, present=present)
    expected = (
        action_log_likelihood(values, gamma, alpha).sum(-1)[present].sum()
        + priors["gamma"].log_prob(gamma).sum()
        + priors["alpha"].log_prob(alpha).sum()
    )
    assert_close(trace.log_prob_sum(), expected)
    with pytest.raises(ValueError, match=r"priors: unknown parameters \['beta'\]"):
        behaviour(likelihood, priors={"beta": dist.LogNormal(0.0, 1.0)})


def test_hierarchical_program_is_non_centred(case):
    """theta_n = exp(mu + sigma z_n); the density is Normal(mu) HalfNormal(sigma) N(z) times the
    likelihood at theta (no Jacobian: z, mu and sigma are the latent sites)."""
    import pyro
    import pyro.distributions as dist

    from pp_aif.fitting import LINKS, BehaviourLikelihood
    from pp_aif.programs import behaviour

    model, observations, actions = case
    likelihood = BehaviourLikelihood(model, AgentSettings(), observations, actions, ("alpha",))
    values = policy_values(model, AgentSettings(), observations, actions)
    prior = dist.LogNormal(torch.tensor(1.0, dtype=torch.float64), 0.5)
    mu, sigma = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    z = torch.tensor([-1.0, 0.2, 1.5], dtype=torch.float64)
    data = {"alpha_mu": mu, "alpha_sigma": sigma, "alpha_z": z[:, None, None]}
    trace = pyro.poutine.trace(pyro.poutine.condition(behaviour, data=data)).get_trace(
        likelihood, priors={"alpha": prior}, hierarchical=True, links=LINKS
    )
    alpha = torch.exp(mu + sigma * z)
    expected = (
        action_log_likelihood(values, 1.0, alpha).sum()
        + dist.Normal(1.0, 0.5).log_prob(mu)
        + dist.HalfNormal(0.5).log_prob(sigma)
        + dist.Normal(0.0, 1.0).log_prob(z).sum()
    )
    assert_close(trace.log_prob_sum(), expected)

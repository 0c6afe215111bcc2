"""The count recursion (agents that learn pA and pB where they see their states) equals the
agent replaying the data, values and gradients, on random tasks; and is chosen only where the
states are seen."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.agent import AgentSettings
from pp_aif.data import BehaviourData, long_format
from pp_aif.fitting.counts import COUNTS_PARAMETERS, CountsLikelihood
from pp_aif.fitting.replay import ReplayLikelihood, likelihood_for
from pp_aif.planning import Lesions
from tests.common import Arrays, assert_close, random_columns, sample_sequence

N, K, T = 3, 4, 3
THETA = {
    "gamma": [0.5, 2.0, 4.0],
    "alpha": [1.0, 4.0, 16.0],
    "preference": [0.3, 1.0, 2.5],
    "learning_rate": [0.5, 1.0, 3.0],
    "forgetting": [0.05, 0.1, 0.4],
    "concentration": [0.5, 1.0, 4.0],
}


def _seen_states_case(rng, S=3, U=2, outcomes=3, seen=True):
    """One factor; modality 0 shows the state (identity, or a noisy copy when not seen),
    modality 1 is a random outcome of the state, learned; B random with zeros, learned."""
    where = np.eye(S) if seen else random_columns(rng, (S, S))
    A = [where, random_columns(rng, (outcomes, S), zero_fraction=0.2)]
    B = [random_columns(rng, (S, S, U), zero_fraction=0.3)]
    D = [random_columns(rng, (S,))]
    arrays = Arrays(A, B, D)
    model = pp_aif.GenerativeModel(
        A,
        B,
        C=[np.zeros(S), rng.normal(size=outcomes)],
        D=D,
        pA=[50.0 * A[0], 2.0 * A[1] + (A[1] > 0)],
        pB=[3.0 * B[0] + (B[0] > 0)],
        policies=pp_aif.construct_policies((U,), 2),
    )
    pairs = [sample_sequence(rng, arrays, T) for _ in range(N * K)]
    observations = torch.as_tensor(np.stack([o for o, _ in pairs])).reshape(N, K, T, 2)
    actions = torch.as_tensor(np.stack([a for _, a in pairs])).reshape(N, K, T - 1, 1)
    return model, observations, actions


#: games of trials 0-1 and 2-3 (``Task.restarts``): the counts start again at trial 2
GAMES = torch.tensor([True, False, True, False])


@pytest.mark.parametrize("starts", [None, GAMES], ids=["one game", "two games"])
@pytest.mark.parametrize("lesions", [Lesions(), Lesions(novelty=False)])
def test_counts_equal_the_replay_with_gradients(rng, lesions, starts):
    for _ in range(3):
        model, observations, actions = _seen_states_case(rng)
        present = torch.ones(N, K, dtype=torch.bool)
        present[1, 1] = present[2, 0] = False
        settings = AgentSettings(lesions=lesions)
        names = COUNTS_PARAMETERS
        fast = likelihood_for(model, settings, observations, actions, names, present, starts)
        assert isinstance(fast, CountsLikelihood)
        slow = ReplayLikelihood(model, settings, observations, actions, names, present, starts)
        theta = {
            name: torch.tensor(THETA[name], dtype=torch.float64)
            .expand(2, N)
            .clone()
            .requires_grad_()
            for name in names
        }  # two draws, on the left
        a, b = fast(theta), slow(theta)
        mask = present.expand(2, N, K)
        assert_close(a[mask], b[mask])
        inputs = list(theta.values())
        for name, x, y in zip(
            names,
            torch.autograd.grad(a[mask].sum(), inputs),
            torch.autograd.grad(b[mask].sum(), inputs),
            strict=True,
        ):
            assert_close(x, y, msg=name)


def test_counts_pass_gradcheck(rng):
    model, observations, actions = _seen_states_case(rng)
    names = COUNTS_PARAMETERS
    fast = CountsLikelihood(model, AgentSettings(), observations, actions, names)
    inputs = tuple(torch.tensor(THETA[n], dtype=torch.float64, requires_grad=True) for n in names)

    def total(*values):
        return fast(dict(zip(names, values, strict=True))).sum((-1, -2))

    assert torch.autograd.gradcheck(total, inputs)


def test_unseen_states_go_to_the_replay(rng):
    model, observations, actions = _seen_states_case(rng, seen=False)
    chosen = likelihood_for(model, AgentSettings(), observations, actions, ("alpha",))
    assert isinstance(chosen, ReplayLikelihood)
    with pytest.raises(ValueError, match=r"does not see its states in every trial"):
        CountsLikelihood(model, AgentSettings(), observations, actions, ("alpha",))


def test_the_bandit_takes_the_count_recursion():
    task = pp_aif.load_task("bandit")
    record = pp_aif.simulate(task, 2, 5, seed=0)
    observations = torch.as_tensor(record["observation"].values)
    actions = torch.as_tensor(record["action"].values[..., :-1, :])
    chosen = likelihood_for(task.model, task.settings, observations, actions, ("alpha",))
    assert isinstance(chosen, CountsLikelihood)


def _pA_learner(rng):
    """``_seen_states_case`` without pB: a learner of pA only, its B stochastic (so that a
    policy's predictions are spread over states)."""
    model, observations, actions = _seen_states_case(rng)
    model = pp_aif.GenerativeModel(
        [a.numpy() for a in model.A],
        [b.numpy() for b in model.B],
        C=[c.numpy() for c in model.C],
        D=[d.numpy() for d in model.D],
        pA=[p.numpy() for p in model.pA],
        policies=model.policies,
    )
    return model, observations, actions


def _bandit():
    task = pp_aif.load_task("bandit")
    record = pp_aif.simulate(task, N, K, seed=3)
    data = BehaviourData.read(long_format(record, task), task)
    return task.model, data.observations, data.actions


@pytest.mark.parametrize("lesions", [Lesions(), Lesions(novelty=False, epistemic=False)])
@pytest.mark.parametrize("case", ["stochastic B", "bandit"])
@pytest.mark.parametrize("names", [COUNTS_PARAMETERS, ("alpha", "learning_rate", "preference")])
@pytest.mark.parametrize("starts", [None, GAMES], ids=["one game", "two games"])
def test_the_fused_counts_are_the_torch_counts(rng, lesions, case, names, starts):
    """``numpy_value_and_gradient`` (NUTS's route) against the torch likelihood and autograd:
    the summed log-likelihood of the present trials and its gradient in every parameter; the
    bandit through the path for certain predictions, with and without forgetting, in one game
    and in two."""
    model, observations, actions = _pA_learner(rng) if case == "stochastic B" else _bandit()
    present = torch.ones(N, K, dtype=torch.bool)
    present[1, 1] = False
    likelihood = CountsLikelihood(
        model, AgentSettings(lesions=lesions), observations, actions, names, present,
        starts=starts,
    )  # fmt: skip
    assert likelihood.fused is not None
    assert likelihood.fused.certain == (case == "bandit")
    theta = {
        name: torch.tensor(THETA[name], dtype=torch.float64).expand(2, N).clone() for name in names
    }
    found = likelihood.numpy_value_and_gradient(
        {name: value.numpy() for name, value in theta.items()}, present.numpy().astype(float)
    )
    assert found is not None
    value, gradients = found
    inputs = {name: value.requires_grad_(True) for name, value in theta.items()}
    expected = torch.where(present[..., None], likelihood(inputs), 0.0).sum((-1, -2))
    assert_close(value, expected)
    for name, gradient in zip(
        names, torch.autograd.grad(expected.sum(), list(inputs.values())), strict=True
    ):
        assert_close(gradients[name], gradient, msg=name)
    # and the agent itself, replaying the choices (the oracle of every route)
    replay = ReplayLikelihood(
        model, AgentSettings(lesions=lesions), observations, actions, names, present, starts
    )
    agent = torch.where(present[..., None], replay(inputs), 0.0).sum((-1, -2))
    assert_close(value, agent)
    for name, gradient in zip(
        names, torch.autograd.grad(agent.sum(), list(inputs.values())), strict=True
    ):
        assert_close(gradients[name], gradient, msg=name)
    # the value alone (importance sampling's route): the same number, no gradients
    alone, none = likelihood.numpy_value_and_gradient(
        {name: value.detach().numpy() for name, value in theta.items()},
        present.numpy().astype(float), gradient=False,
    )  # fmt: skip
    assert_close(alone, agent)
    assert all(g is None for g in none.values())

"""Inductive planning (``pp_aif.planning.inductive``) against pymdp 1.0's ``generate_I_matrix``
and ``calc_inductive_value_t``, and agents in a corridor maze: the goal is reachable only
through a corridor longer than the agents look ahead."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pp_aif.planning.inductive import inductive_cost, reachability
from tests.common import assert_close


def _random_case(rng, states=(5, 4), controls=(3, 2), sparsity=0.6):
    B, H = [], []
    for s, u in zip(states, controls, strict=True):
        b = rng.uniform(size=(s, s, u)) * (rng.uniform(size=(s, s, u)) > sparsity)
        b[rng.integers(s), np.arange(s), :] += 0.05  # every column has a successor
        B.append(b / b.sum(0, keepdims=True))
        h = np.zeros(s)
        h[rng.integers(s)] = 1.0
        H.append(h)
    return B, H


@pytest.mark.parametrize("seed", range(5))
def test_reachability_and_cost_equal_pymdps(seed):
    jnp = pytest.importorskip("jax.numpy")
    from pymdp.control import calc_inductive_value_t, generate_I_matrix

    rng = np.random.default_rng(seed)
    B, H = _random_case(rng)
    depth = 5
    expected = generate_I_matrix(
        [jnp.asarray(h) for h in H], [jnp.asarray(b) for b in B], 0.1, depth
    )
    ours = reachability([torch.as_tensor(h) for h in H], [torch.as_tensor(b) for b in B], depth)
    for f in range(len(B)):
        assert_close(ours[f], np.asarray(expected[f], dtype=np.float64), msg=f"factor {f}")
    # the cost of predicted beliefs, for 3 agents x 4 policies
    N, P = 3, 4
    present = [rng.dirichlet(np.ones(b.shape[0]), size=N) for b in B]
    predicted = [rng.dirichlet(np.ones(b.shape[0]), size=(N, P)) for b in B]
    cost = inductive_cost(
        [torch.as_tensor(q) for q in present],
        [torch.as_tensor(q) for q in predicted],
        ours,
        epsilon=1e-3,
    )
    for n in range(N):
        for p in range(P):
            value = calc_inductive_value_t(
                [jnp.asarray(q[n]) for q in present],
                [jnp.asarray(q[n, p]) for q in predicted],
                expected,
                epsilon=1e-3,
            )
            # pymdp's value is the negative cost, computed in float32 (jax's default)
            assert_close(cost[n, p], -float(value), rtol=1e-5, atol=1e-5, reason="float32")
    assert (cost > 0).any()


def test_a_factor_without_intentions_or_a_path_costs_nothing():
    B = [np.eye(3)[:, :, None].repeat(2, -1)]  # nothing moves: no path from 0 to 2
    reachable = reachability(
        [torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)], [torch.as_tensor(B[0])], 3
    )
    present = [torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)]
    predicted = [torch.tensor([[[0.0, 1.0, 0.0]]], dtype=torch.float64)]
    assert float(inductive_cost(present, predicted, reachable, 1e-3)) == 0.0
    assert float(inductive_cost(present, predicted, [None], 1e-3)) == 0.0


# ---------------------------------------------------------------------------------------------
# agents in the corridor maze (models/maze.py): the goal 14 moves away, policies 1 move deep


@pytest.mark.parametrize("planner", ["open_loop", "sophisticated"])
def test_inductive_agents_walk_the_corridor_and_the_others_do_not(planner):
    import pp_aif
    from pp_aif.agent import AgentSettings

    task = pp_aif.load_task("maze")
    plain = pp_aif.simulate(task, 100, 1, seed=0, settings=AgentSettings(planner=planner))
    steered = pp_aif.simulate(
        task, 100, 1, seed=0, settings=AgentSettings(planner=planner, inductive_epsilon=1e-3)
    )
    assert float((plain["reward"] > 0).mean()) <= 0.05  # one step ahead, every move looks alike
    # each agent walks the shortest path (14 moves) and stays: at the goal for the last 3 steps
    assert (steered["reward"].values == task.num_steps - 14).all()
    assert steered.attrs["inductive_epsilon"] == 1e-3


def test_one_step_sophisticated_planning_with_inductive_costs_is_open_loop_planning():
    import pp_aif
    from pp_aif.agent import AgentSettings, initial_state, step

    task = pp_aif.load_task("maze")
    model = task.model
    for planner in ("open_loop", "sophisticated"):
        settings = AgentSettings(planner=planner, inductive_epsilon=1e-2)
        state = initial_state(model, 1)
        _, result = step(model, settings, state, torch.tensor([[0]]), num_steps=task.num_steps)
        if planner == "open_loop":
            expected = result.policy_posterior
        else:
            assert_close(result.policy_posterior, expected)
    assert expected.max() > 0.9  # the cost decides: right, along the corridor


def test_inductive_agents_are_fitted_by_the_replay_and_bad_settings_are_refused():
    import pp_aif
    from pp_aif.agent import AgentSettings
    from pp_aif.data import BehaviourData, long_format
    from pp_aif.fitting import BehaviourLikelihood
    from pp_aif.fitting.replay import ReplayLikelihood, likelihood_for
    from pp_aif.spec import ModelError

    task = pp_aif.load_task("maze")
    settings = AgentSettings(inductive_epsilon=1e-3, action_precision=2.0)
    record = pp_aif.simulate(task, 2, 1, seed=1, settings=settings)
    data = BehaviourData.read(long_format(record, task), task)
    args = (task.model, settings, data.observations, data.actions, ("alpha",), data.present)
    likelihood = likelihood_for(*args)
    assert isinstance(likelihood, ReplayLikelihood)
    alpha = torch.full((2,), 2.0, dtype=torch.float64, requires_grad=True)
    value = likelihood({"alpha": alpha})
    (gradient,) = torch.autograd.grad(value.sum(), alpha)
    assert torch.isfinite(value).all() and torch.isfinite(gradient).all()
    with pytest.raises(ValueError, match="inductive_epsilon"):
        BehaviourLikelihood(*args)
    with pytest.raises(ValueError, match="inductive_epsilon"):
        AgentSettings(inductive_epsilon=0.0)
    bandit = pp_aif.load_task("bandit")  # no intended states
    with pytest.raises(ValueError, match=r"GenerativeModel\(H=...\)"):
        pp_aif.simulate(bandit, 1, 1, settings=AgentSettings(inductive_epsilon=1e-3))
    A, B = bandit.model.A, bandit.model.B
    with pytest.raises(ModelError, match=r"H\[0\]: expected shape \(4,\)"):
        pp_aif.GenerativeModel(A, B, H=[torch.ones(3)])
    with pytest.raises(ModelError, match="0s and 1s with at least one 1"):
        pp_aif.GenerativeModel(A, B, H=[torch.zeros(4)])
    with pytest.raises(ModelError, match="one entry per factor"):
        pp_aif.GenerativeModel(A, B, H=[None, None])

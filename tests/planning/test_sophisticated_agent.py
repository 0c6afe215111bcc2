"""Sophisticated planning in the one agent: simulated by ``agent.step`` and fitted by the same
step replaying a person's actions (``pp_aif.fitting.replay``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.agent import AgentSettings, initial_state, step
from pp_aif.fitting.replay import ReplayLikelihood, likelihood_for
from pp_aif.planning import Lesions
from tests.common import assert_close, random_arrays, sample_sequence


def _model(rng, T=3):
    arrays = random_arrays(rng, (3, 2), (3, 2), (2, 2), zero_fraction=0.15)
    return pp_aif.GenerativeModel(
        arrays.A,
        arrays.B,
        C=[rng.normal(size=(3, T)), rng.normal(size=2)],
        D=arrays.D,
        policies=pp_aif.construct_policies((2, 2), 2),
    ), arrays


def test_a_sophisticated_agent_of_depth_one_is_the_open_loop_agent_of_one_step(rng):
    """At depth 1 the recursion is the one-step expected free energy: the same q(u), actions
    and action probabilities as an open-loop agent planning one step ahead. (One factor: with
    several, open-loop G is computed from the factor marginals, as SPM and pymdp do, and the
    sophisticated planner's from the joint belief, which is exact.)"""
    arrays = random_arrays(rng, (4,), (3, 2), (3,), zero_fraction=0.15)
    model = pp_aif.GenerativeModel(
        arrays.A, arrays.B, C=[rng.normal(size=(3, 3)), rng.normal(size=2)], D=arrays.D
    )
    observation = torch.tensor([[0, 1], [2, 0], [1, 1]])
    results = []
    for planner in ("open_loop", "sophisticated"):
        settings = AgentSettings(planner=planner, horizon=1, action_precision=3.0)
        state = initial_state(model, 3)
        _, result = step(model, settings, state, observation, num_steps=3)
        results.append(result)
    loop, sophisticated = results
    assert_close(sophisticated.policy_posterior, loop.policy_posterior)
    assert_close(sophisticated.scores.G, loop.scores.G)
    for a, b in zip(sophisticated.action_probabilities, loop.action_probabilities, strict=True):
        assert_close(a, b)


def test_without_an_epistemic_term_the_sophisticated_agent_still_takes_the_cue():
    """Issue 18 (a): in the T-maze with the epistemic term lesioned, open-loop agents are
    indifferent between the cue and staying (about 0.44 go to the cue first); a sophisticated
    agent of depth 2 values the cue for what it lets it do next: all go to the cue, and nearly
    all are rewarded."""
    task = pp_aif.load_task("tmaze")
    rates = {}
    for planner in ("open_loop", "sophisticated"):
        settings = dataclasses.replace(
            task.settings, planner=planner, lesions=Lesions(epistemic=False)
        )
        record = pp_aif.simulate(task, 200, 1, seed=0, settings=settings)
        cue = task.labels.controls[0].index("go to cue")
        rates[planner] = (
            float((record["action"].values[:, 0, 0, 0] == cue).mean()),
            float(record["reward"].values.mean()),
        )
    assert rates["open_loop"][0] < 0.6
    assert rates["sophisticated"][0] >= 0.9 and rates["sophisticated"][1] >= 0.9


def test_a_sophisticated_agent_is_fitted_through_the_replay(rng):
    """The likelihood of a sophisticated agent's choices is the agent replaying them: the closed
    forms refuse it, the replay equals one agent at a time, and gamma's gradient (which enters
    the recursion through q(u' | o)) passes gradcheck."""
    model, arrays = _model(rng)
    N, K, T = 2, 2, 3
    pairs = [sample_sequence(rng, arrays, T) for _ in range(N * K)]
    observations = torch.as_tensor(np.stack([o for o, _ in pairs])).reshape(N, K, T, 2)
    actions = torch.as_tensor(np.stack([a for _, a in pairs])).reshape(N, K, T - 1, 2)
    settings = AgentSettings(planner="sophisticated", action_threshold=None)
    names = ("gamma", "alpha")
    replay = likelihood_for(model, settings, observations, actions, names)
    assert isinstance(replay, ReplayLikelihood)
    theta = {
        "gamma": torch.tensor([0.5, 2.0], dtype=torch.float64),
        "alpha": torch.tensor([1.0, 4.0], dtype=torch.float64),
    }
    value = replay(theta)
    for n in range(N):
        mine = dataclasses.replace(
            settings,
            policy_precision=float(theta["gamma"][n]),
            action_precision=float(theta["alpha"][n]),
        )
        for k in range(K):
            state, total = initial_state(model, 1), torch.zeros(T - 1, dtype=torch.float64)
            for t in range(T):
                action = actions[n, k, t][None] if t < T - 1 else None
                state, result = step(
                    model, mine, state, observations[n, k, t][None], num_steps=T, action=action
                )
                if action is not None:
                    for f, p in enumerate(result.action_probabilities):
                        total[t] += torch.log(p[0, action[0, f]])
            assert_close(value[n, k], total, msg=f"subject {n}, trial {k}")

    def of_gamma(gamma):
        return replay({"gamma": gamma, "alpha": theta["alpha"]}).sum((-1, -2))

    assert torch.autograd.gradcheck(of_gamma, (theta["gamma"].clone().requires_grad_(),))


def test_sophisticated_settings_are_checked():
    with pytest.raises(ValueError, match=r"planner: 'tree' is not one of"):
        AgentSettings(planner="tree")
    with pytest.raises(ValueError, match=r"action_threshold: must be a finite number >= 0 and < 1"):
        AgentSettings(planner="sophisticated", action_threshold=1.0)
    with pytest.raises(ValueError, match=r"sophisticated planning computes its recursion exactly"):
        AgentSettings(planner="sophisticated", efe_method="sampled")
    assert AgentSettings(planner="sophisticated", outcome_threshold=None).planning.planner == (
        "sophisticated"
    )

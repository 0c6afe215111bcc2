"""Simulated subjects carry their own parameters; posterior predictive data sets and choice
rates have the shapes and values they claim."""

from __future__ import annotations

import dataclasses

import arviz as az
import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.agent import AgentSettings, initial_state, step
from pp_aif.fitting import initial_state_evidence, learned_initial_beliefs
from pp_aif.fitting.predictive import choice_rates, posterior_predictive, simulate_subjects
from tests.common import assert_close


def test_simulated_subjects_plan_and_learn_with_their_own_parameters():
    task = pp_aif.load_task("tmaze")
    m = task.model
    theta = {
        "gamma": torch.tensor([0.5, 3.0]),
        "preference": torch.tensor([0.4, 2.0]),
        "learning_rate": torch.tensor([0.2, 5.0]),
        "concentration": torch.tensor([1.0, 3.0]),
    }
    record = simulate_subjects(task, theta, num_trials=2, seed=4)
    for n in range(2):  # q(pi) at the first step: an agent whose model has C scaled
        scaled = pp_aif.GenerativeModel(
            m.A, m.B, [float(theta["preference"][n]) * c for c in m.C], m.D, policies=m.policies
        )
        settings = AgentSettings(policy_precision=float(theta["gamma"][n]))
        observation = torch.as_tensor(record.observation.values[n, 0, 0])[None]
        _, result = step(scaled, settings, initial_state(scaled, 1), observation, num_steps=3)
        assert_close(record.policy_posterior.values[n, 0, 0], result.policy_posterior[0])
    # the context belief at the start of trial 1 is D_1 of the pD recursion, per subject
    observations = torch.as_tensor(record.observation.values)
    actions = torch.as_tensor(record.action.values[:, :, :-1])
    evidence = initial_state_evidence(m, observations, actions)
    initial = learned_initial_beliefs(
        m, evidence, theta["learning_rate"].double(), 0.0, theta["concentration"].double()
    )
    assert_close(record.belief_context.values[:, 1, 0], initial[1][:, 1])


def test_choice_rates_count_choices_per_block(rng):
    actions = rng.integers(0, 3, size=(2, 6, 2, 2))
    present = np.ones((2, 6), dtype=bool)
    present[1, 4] = False
    rates = choice_rates(actions, (3, 3), blocks=2, present=present)
    assert rates.shape == (2, 2, 2, 2, 3)  # subjects, factors, steps, blocks, controls
    for n in range(2):
        for f in range(2):
            for t in range(2):
                for b, trials in enumerate((range(0, 3), range(3, 6))):
                    kept = [k for k in trials if present[n, k]]
                    counts = np.bincount(actions[n, kept, t, f], minlength=3)
                    assert_close(rates.values[n, f, t, b], counts / len(kept))
    with pytest.raises(ValueError, match=r"blocks: between 1 and the 6 trials"):
        choice_rates(actions, (3, 3), blocks=7)


def test_posterior_predictive_simulates_draws_by_subjects():
    task = pp_aif.load_task("tmaze")
    posterior = {"alpha": np.full((2, 5, 3), 2.0), "learning_rate": np.full((2, 5, 3), 0.5)}
    inference = az.from_dict(
        posterior=posterior,
        coords={"subject": ["a", "b", "c"]},
        dims={"alpha": ["subject"], "learning_rate": ["subject"]},
        attrs={"params": ["alpha", "learning_rate"]},
    )
    predicted = posterior_predictive(task, inference, num_trials=2, num_draws=4, seed=0)
    assert predicted.sizes["draw"] == 4 and predicted.sizes["subject"] == 3
    assert list(predicted.coords["subject"].values) == ["a", "b", "c"]
    assert predicted.action.transpose("draw", "subject", ...).shape == (4, 3, 2, 3, 2)
    with pytest.raises(ValueError, match=r"theta: \['beta'\] are not among"):
        simulate_subjects(task, {"beta": torch.ones(2)}, 1)
    with pytest.raises(ValueError, match=r"one value per subject"):
        simulate_subjects(task, {"alpha": torch.ones(2), "gamma": torch.ones(3)}, 1)
    no_pD = dataclasses.replace(
        task,
        model=pp_aif.GenerativeModel(
            task.model.A, task.model.B, task.model.C, task.model.D, policies=task.model.policies
        ),
    )
    with pytest.raises(ValueError, match=r"'concentration' scales the initial counts pA, pB"):
        simulate_subjects(no_pD, {"concentration": torch.ones(2)}, 1)


def test_a_biased_tmaze_world_draws_its_contexts_at_the_bias():
    from pp_aif.tasks.tmaze import with_context_bias, without_learning

    task = with_context_bias(pp_aif.load_task("tmaze"), 0.8)
    record = pp_aif.simulate(task, 2000, 1, seed=5)
    left = (record.true_state.values[:, 0, 0, 1] == 0).mean()
    assert abs(left - 0.8) < 4 * np.sqrt(0.8 * 0.2 / 2000)  # within 4 standard errors
    assert task.model.D[1].tolist() == [0.5, 0.5]  # the agent's prior is its own
    assert without_learning(task).model.pD is None and task.model.pD is not None
    with pytest.raises(ValueError, match=r"bias: a probability in \[0, 1\], got 1.5"):
        with_context_bias(task, 1.5)

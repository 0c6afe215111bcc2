"""The batched agent: exact beliefs (= infer_states filtering), the environment's sampling, the
T-maze's published behaviour, and learning of D between trials."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.agent import AgentSettings, initial_state, learn_initial, step
from pp_aif.envs import GenerativeProcess
from pp_aif.planning import Lesions
from pp_aif.task import load_task
from tests.common import assert_close, random_arrays


def run(model, settings, env, N, T, seed):
    generator = torch.Generator().manual_seed(seed)
    state = initial_state(model, N)
    observation = env.reset(N, generator)
    observations, actions, results = [observation], [], []
    for _ in range(T):
        state, result = step(model, settings, state, observation, num_steps=T, generator=generator)
        results.append(result)
        if result.action is not None:
            actions.append(result.action)
            observation = env.step(result.action)
            observations.append(observation)
    return torch.stack(observations, 1), torch.stack(actions, 1), results


def test_agent_beliefs_equal_exact_filtering(rng):
    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 2), zero_fraction=0.3)
    model = pp_aif.GenerativeModel(
        arrays.A,
        arrays.B,
        C=[rng.normal(size=3), np.zeros(2)],
        D=arrays.D,
        policies=pp_aif.construct_policies((2, 2), 2),
    )
    observations, actions, results = run(
        model, AgentSettings(), GenerativeProcess(model), 6, 4, seed=1
    )
    filtering = pp_aif.infer_states(model, observations, actions, mode="filtering")
    for f in range(2):
        agent_beliefs = torch.stack([r.beliefs[f] for r in results], 1)
        assert_close(agent_beliefs, filtering.marginals[f])
    total = torch.stack([r.log_evidence for r in results], 1).sum(1)
    assert_close(total, filtering.log_evidence)


def test_agent_scores_equal_expected_free_energy(rng):
    task = load_task("tmaze")
    model = task.model
    env = GenerativeProcess(model)
    _, _, results = run(model, AgentSettings(), env, 3, 3, seed=0)
    first = results[0]
    direct = pp_aif.expected_free_energy(model, first.beliefs, time=0)
    assert_close(first.scores.G, direct.G)
    assert results[1].scores.G.shape == (3, 4)  # one step left: depth-1 policies
    assert results[2].action is None


def test_process_samples_from_its_arrays(rng):
    arrays = random_arrays(rng, (3,), (4,), (1,))
    process = GenerativeProcess(pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D))
    n = 20000
    observation = process.reset(n, torch.Generator().manual_seed(5))
    expected = arrays.A[0] @ arrays.D[0]
    frequencies = np.bincount(observation[:, 0].numpy(), minlength=4) / n
    stderr = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(frequencies - expected) <= 4 * stderr)
    following = process.step(torch.zeros(n, 1, dtype=torch.int64))
    expected = arrays.A[0] @ arrays.B[0][:, :, 0] @ arrays.D[0]
    frequencies = np.bincount(following[:, 0].numpy(), minlength=4) / n
    stderr = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(frequencies - expected) <= 4 * stderr)
    with pytest.raises(ValueError, match="actions: shape"):
        process.step(torch.zeros(3, 1, dtype=torch.int64))


@pytest.mark.parametrize("epistemic", [True, False])
def test_tmaze_published_behaviour(epistemic):
    """Friston et al. 2015: the agent samples the cue first, then the signalled arm; without the
    epistemic term the cue and staying put have equal value."""
    task = load_task("tmaze")
    settings = AgentSettings(lesions=Lesions(epistemic=epistemic))
    n = 400
    observations, actions, _ = run(
        task.model, settings, GenerativeProcess(task.model), n, 3, seed=7
    )
    cue_first = (actions[:, 0, 0] == 3).float().mean().item()
    if epistemic:
        assert cue_first >= 0.9
        after_cue = actions[:, 0, 0] == 3
        says_left = observations[:, 1, 0] == 4
        correct = torch.where(says_left, actions[:, 1, 0] == 1, actions[:, 1, 0] == 2)
        assert correct[after_cue].float().mean().item() >= 0.9
    else:
        stay_first = (actions[:, 0, 0] == 0).float().mean().item()
        assert abs(cue_first - 0.5) <= 4 * np.sqrt(0.25 / n)
        assert abs(cue_first + stay_first - 1) < 1e-12  # never straight into an arm


def test_learn_initial_equals_learn(rng):
    task = load_task("tmaze")
    model = task.model
    observations = task.observations[None]
    actions = task.actions[None]
    learned = pp_aif.learn(model, observations, actions, parameters=["D"])
    pD = learn_initial(model, AgentSettings(), [p[None] for p in model.pD], observations, actions)
    for ours, expected in zip(pD, learned.pD, strict=True):
        assert_close(ours[0], expected)

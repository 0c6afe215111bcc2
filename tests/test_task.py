"""Tasks users can write: worlds that change across trials, a policy set for every step, checked
settings, rewards and names, the reversal-learning task and the docs' example."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.agent import AgentSettings, policies_at
from pp_aif.envs import BlockedProcess
from pp_aif.spec import GenerativeModel, construct_policies
from pp_aif.task import Labels, Task, load_task
from tests.common import assert_close
from tests.conftest import REPOSITORY

# ---------------------------------------------------------------------------------------------
# the reversal task: the world switches, and the agents follow


@pytest.fixture(scope="module")
def reversal_record():
    task = load_task("reversal")
    return task, pp_aif.simulate(task, num_agents=200, num_trials=32, seed=0)


def test_the_reversal_world_is_a_process_per_block():
    task = load_task("reversal")
    assert [trial for trial, _ in task.process] == [0, 16]
    # p(reward | left), p(reward | right): the task's own numbers, swapped at trial 16
    for trial, (left, right) in (
        (0, (0.8, 0.2)),
        (15, (0.8, 0.2)),
        (16, (0.2, 0.8)),
        (99, (0.2, 0.8)),
    ):
        reward = task.process_at(trial).A[1]
        assert_close(reward[:, 1:], np.array([[0, 0], [left, right], [1 - left, 1 - right]]))
    # the agent does not know them: it starts from counts 1 and 1 per arm
    assert_close(task.model.A[1][1:, 1:], np.full((2, 2), 0.5))
    assert task.model.pA is not None and task.settings.forgetting == 0.2


def test_the_world_switches_in_the_record(reversal_record):
    """Each arm pays at its block's rate: the empirical rate of every (arm, block) lies within 4
    binomial standard errors of the probability the task was built with."""
    task, record = reversal_record
    arm = record["action"].isel(time=0, factor=0).values  # (agents, trials): 0 left, 1 right
    paid = record["observation"].isel(time=1).sel(modality="reward").values == 1
    assert (record["true_state"].isel(time=1, factor=0).values == arm + 1).all()
    for trials, p_left in ((slice(0, 16), 0.8), (slice(16, 32), 0.2)):
        for pulled, p in ((0, p_left), (1, 1 - p_left)):
            pulls = arm[:, trials] == pulled
            n = int(pulls.sum())
            assert n > 100
            rate = paid[:, trials][pulls].mean()
            assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n), (trials, pulled, rate, n)
    # the record's reward counts the rewarded outcome of each trial
    assert (record["reward"].values == paid).all()


def test_the_agents_choices_follow_the_switch(reversal_record):
    """Learning pA with forgetting, most agents choose the better arm late in each block, and a
    world that never switches keeps them on the left arm: the switch, not time, moves them.
    (200 agents x 8 trials: a choice rate's standard error is below 0.02, so the margins here
    are many errors wide; seeded, the rates are 0.84, 0.16 and 0.83.)"""
    task, record = reversal_record
    left = record["action"].isel(time=0, factor=0).values == 0
    assert left[:, 8:16].mean() > 0.75
    assert left[:, 24:32].mean() < 0.25
    steady = pp_aif.simulate(_reversal(1000), 200, 32, seed=0)
    steady_left = steady["action"].isel(time=0, factor=0).values == 0
    assert steady_left[:, 24:32].mean() > 0.75
    # mean reward recovers after the switch: well above the 0.2 of staying on the left arm
    assert record["reward"].values[:, 24:32].mean() > 0.6


def _reversal(reversal: int, **options) -> Task:
    from pp_aif.tasks import reversal as module

    return module.build(reversal=reversal, **options)


def test_the_docs_example_runs():
    text = (REPOSITORY / "docs" / "tasks.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "docs/tasks.md has no python example"
    for block in blocks:
        exec(compile(block, "docs/tasks.md", "exec"), {})


def test_readme_links_the_task_docs():
    assert "(docs/tasks.md)" in (REPOSITORY / "README.md").read_text()


# ---------------------------------------------------------------------------------------------
# worlds that change across trials


def _deterministic(start: int) -> GenerativeModel:
    """The reversal task's arrays with a world that starts in state ``start`` for sure."""
    m = load_task("reversal").model
    D = torch.zeros(3, dtype=m.dtype)
    D[start] = 1.0
    return GenerativeModel(m.A, m.B, m.C, [D], m.E, policies=m.policies)


def test_a_blocked_process_resets_each_trial_in_its_block():
    worlds = {0: _deterministic(0), 3: _deterministic(1), 5: _deterministic(2)}
    env = BlockedProcess(worlds)
    expected = {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 40: 2}  # the last block holds on
    for trial, state in expected.items():
        observation = env.reset(4, torch.Generator().manual_seed(trial), trial=trial)
        assert (env.states[:, 0] == state).all() and (observation[:, 0] == state).all()
        assert env.process_at(trial) is worlds[max(k for k in worlds if k <= trial)]


def test_a_task_tells_its_world_the_trial():
    """Arms that pay for sure or never: the left arm pays in trials 0 and 1, the right from
    trial 2 on, so every outcome follows from the arm pulled and the trial."""
    record = pp_aif.simulate(_reversal(2, p=1.0), 8, 5, seed=1)
    arm = record["action"].isel(time=0, factor=0).values
    paid = record["observation"].isel(time=1).sel(modality="reward").values == 1
    better = np.array([0, 0, 1, 1, 1])  # left, then right
    assert (paid == (arm == better)).all()
    assert (record["reward"].values == paid).all()


@pytest.mark.parametrize(
    "blocks, message",
    [
        ({1: "model"}, r"process\[1\]: expected a GenerativeModel, got str"),
        ({0: "world"}, r"process\[0\]: expected a GenerativeModel, got str"),
        ("blocks", r"process: expected None .* got str"),
        ({}, r"process: no blocks"),
        ({True: "world"}, r"process: first trial True is not an integer >= 0"),
        ({-1: "world"}, r"process: first trial -1 is not an integer >= 0"),
    ],
)
def test_bad_worlds_are_named(blocks, message):
    with pytest.raises(ValueError, match=r"task 'reversal': " + message):
        dataclasses.replace(load_task("reversal"), process=blocks)


def test_blocks_start_at_trial_zero_and_fit_the_model():
    task = load_task("reversal")
    world = task.process_at(0)
    with pytest.raises(ValueError, match=r"process: the first block starts at trial 4"):
        dataclasses.replace(task, process={4: world})
    with pytest.raises(ValueError, match=r"process: trial\(s\) \[3\] start more than one block"):
        dataclasses.replace(task, process=[(0, world), (3, world), (3, world)])
    tmaze = load_task("tmaze").model
    with pytest.raises(
        ValueError, match=r"process\[5\]: num_states \(4, 2\) differ from process\[0\]'s \(3,\)"
    ):
        dataclasses.replace(task, process={0: world, 5: tmaze})
    with pytest.raises(ValueError, match=r"process: num_states \(4, 2\) differ from the agent"):
        dataclasses.replace(task, process=tmaze)


def test_a_task_moves_every_block():
    task = load_task("reversal").to(dtype=torch.float32)
    assert all(world.dtype == torch.float32 for _, world in task.process)
    assert task.process_at(20).A[1].dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# a policy set for every step


def _tmaze_with(step_policies, **changes) -> Task:
    return dataclasses.replace(load_task("tmaze"), step_policies=step_policies, **changes)


def test_the_agent_plans_over_the_tasks_set_at_a_later_step():
    """At step 1 the T-maze's agent weighs only 'go to left' and 'go to right', under E = (0.7,
    0.3): the record's G is that of these two policies, its q(pi) softmax(ln E - gamma G), and
    every agent goes to an arm (by default it would weigh all four moves under a flat prior)."""
    policies = torch.tensor([[[1, 0]], [[2, 0]]])
    E = np.array([0.7, 0.3])
    task = _tmaze_with({1: (policies, E)})
    record = pp_aif.simulate(task, 6, 1, seed=2)
    beliefs = [record[f"belief_{f}"].isel(trial=0, time=1).values for f in ("location", "context")]
    scores = pp_aif.expected_free_energy(task.model, beliefs, policies, time=1)
    G = record["G"].isel(trial=0, time=1).values
    assert_close(G[:, :2], scores.G)
    assert np.isnan(G[:, 2:]).all()
    gamma = task.settings.policy_precision
    logits = np.log(E) - gamma * scores.G.numpy()
    q = np.exp(logits - logits.max(-1, keepdims=True))
    assert_close(
        record["policy_posterior"].isel(trial=0, time=1).values[:, :2], q / q.sum(-1, keepdims=True)
    )
    assert set(record["action"].isel(trial=0, time=1, factor=0).values) <= {1, 2}


def test_policies_at_reads_the_tasks_sets():
    first = construct_policies([4, 1], horizon=2)[:5]
    second = torch.tensor([[[3, 0]]])
    task = _tmaze_with([(first, torch.full((5,), 0.2)), second])
    settings = AgentSettings()
    policies, log_prior = policies_at(task.model, settings, 0, 3)
    assert torch.equal(policies, first) and torch.allclose(
        log_prior, torch.full((5,), math.log(0.2), dtype=torch.float64)
    )
    policies, log_prior = policies_at(task.model, settings, 1, 3)
    assert torch.equal(policies, second) and log_prior.tolist() == [0.0]
    # a horizon of 1: the sets whose depth is 1 are kept, the others give way to the default
    shallow = AgentSettings(horizon=1)
    assert torch.equal(policies_at(task.model, shallow, 1, 3)[0], second)
    assert policies_at(task.model, shallow, 0, 3)[0].shape == (4, 1, 2)
    # the fit's likelihood plans over the same sets
    from pp_aif.tasks.tmaze import without_learning

    from pp_aif.fitting import policy_values

    fixed = dataclasses.replace(without_learning(load_task("tmaze")), step_policies={1: second})
    values = policy_values(
        fixed.model, fixed.settings, fixed.observations[None, None], fixed.actions[None, None]
    )
    assert values.log_prior[1].tolist() == [0.0] and values.first_actions[1].tolist() == [[3, 0]]
    assert values.base[1].shape[-1] == 1 and values.base[0].shape[-1] == 16


def test_a_later_set_larger_than_the_first_widens_the_record():
    """A model of two policies, then all four moves at step 1: the record's policy axis is 4
    wide, NaN where step 0 has no policy (it failed to fit the fourth column before)."""
    tmaze = load_task("tmaze")
    m = tmaze.model
    sparse = GenerativeModel(m.A, m.B, m.C, m.D, policies=construct_policies([4, 1], 2)[[13, 14]])
    task = dataclasses.replace(tmaze, model=sparse)
    record = pp_aif.simulate(task, 3, 1, seed=0)
    q = record["policy_posterior"].isel(trial=0).values
    assert q.shape == (3, 3, 4)
    assert np.isnan(q[:, 0, 2:]).all() and not np.isnan(q[:, 1]).any()
    assert_close(q[:, 0, :2].sum(-1), np.ones(3))
    assert_close(q[:, 1].sum(-1), np.ones(3))
    wide = dataclasses.replace(task, step_policies={1: construct_policies([4, 1], 1)[[0, 1, 2]]})
    assert pp_aif.simulate(wide, 2, 1, seed=0).sizes["policy"] == 3


def test_the_model_carries_the_sets_without_altering_a_shared_model():
    tmaze = load_task("tmaze")
    task = _tmaze_with({1: torch.tensor([[[1, 0]]])})
    assert tmaze.model.step_policies is None
    assert task.model is not tmaze.model and task.model.step_policies[0] is None
    again = dataclasses.replace(task, settings=AgentSettings(policy_precision=2.0))
    assert again.model is task.model  # nothing to change: no further copy
    plain = dataclasses.replace(task, step_policies=None)
    assert plain.model.step_policies is None and task.model.step_policies is not None
    moved = task.to(dtype=torch.float32)
    policies, E = moved.model.step_policies[1]
    assert E.dtype == torch.float32 and policies.dtype == torch.int64
    with pytest.raises(ValueError, match=r"num_steps: task 'tmaze' gives a policy set per step"):
        pp_aif.simulate(task, 1, 1, num_steps=4)


@pytest.mark.parametrize(
    "step_policies, message",
    [
        (
            {2: [[[0, 0]]]},
            r"step_policies: 2 is not a step with an action: trials of 3 steps act at steps 0..1",
        ),
        ({1: [[[0, 0], [0, 0]]]}, r"step_policies\[1\]: policies of depth 2 look past the trial"),
        (
            {0: [[[4, 0]]]},
            r"step_policies\[0\]: policy 0, step 0, factor 0 has control 4; "
            r"factor 0 has controls 0..3",
        ),
        ({0: [[[0]]]}, r"step_policies\[0\]: policies of shape \(1, 1, 1\); expected \(P, H, 2\)"),
        ({0: [[[0.0, 0.0]]]}, r"step_policies\[0\]: policies must be integers"),
        ({0: ([[[0, 0]], [[1, 0]]], [0.5, 0.6])}, r"step_policies\[0\]: E sums to 1.1"),
        (
            {0: ([[[0, 0]], [[1, 0]]], [1.0])},
            r"step_policies\[0\]: E of shape \(1,\); expected \(2,\)",
        ),
        (
            {0: ([[[0, 0]]], [1.0], "x")},
            r"step_policies\[0\]: expected policies \(P, H, F\) or a pair \(policies, E\)",
        ),
        ([None], r"step_policies: 1 entries for the 2 steps with an action"),
        ("all", r"step_policies: expected a mapping"),
    ],
)
def test_bad_policy_sets_are_named(step_policies, message):
    with pytest.raises(ValueError, match=r"task 'tmaze': " + message):
        _tmaze_with(step_policies)


# ---------------------------------------------------------------------------------------------
# settings, reward, names, loading


def test_settings_are_an_agent_settings_or_none():
    tmaze = load_task("tmaze")
    assert dataclasses.replace(tmaze, settings=None).settings is None
    with pytest.raises(
        ValueError, match=r"task 'tmaze': settings: expected an AgentSettings or None, got dict"
    ):
        dataclasses.replace(tmaze, settings={"policy_precision": 2.0})


@pytest.mark.parametrize(
    "reward, message",
    [
        ((2, 0), r"reward: modality 2 does not exist \(the model has 0..1\)"),
        ((1, 3), r"reward: outcome 3 does not exist in modality 1 \(0..2\)"),
        ((1,), r"reward: expected \(modality, outcome\), two integers, got \(1,\)"),
        ((1.0, 1), r"reward: expected \(modality, outcome\), two integers, got \(1.0, 1\)"),
    ],
)
def test_the_reward_outcome_exists(reward, message):
    with pytest.raises(ValueError, match=r"task 'tmaze': " + message):
        dataclasses.replace(load_task("tmaze"), reward=reward)


def _labels(factors, modalities):
    return Labels(
        factors=factors,
        states=[["start", "left", "right"]],
        controls=[["pull left", "pull right"]],
        modalities=modalities,
        outcomes=[["start", "left", "right"], ["neutral", "reward", "no reward"]],
    )


@pytest.mark.parametrize(
    "factors, modalities, message",
    [
        (
            ["reward"],
            ["where", "reward"],
            r"labels: \['reward'\] name more than one of the factors",
        ),
        (["arm"], ["where", "where"], r"labels: \['where'\] name more than one"),
        (["trial"], ["where", "reward"], r"labels: \['trial'\] is a key column"),
        (["arm"], ["time", "reward"], r"labels: \['time'\] is a key column"),
        (
            ["accuracy"],
            ["where", "reward"],
            r"labels.factors: 'accuracy' would make the record's belief_accuracy",
        ),
        ([""], ["where", "reward"], r"labels.factors\[0\]: '' is not a name"),
        (["arm"], ["where", 3], r"labels.modalities\[1\]: 3 is not a name"),
        (["arm"], [" where", "reward"], r"labels.modalities\[0\]: ' where' is not a name"),
    ],
)
def test_names_are_distinct_and_not_data_keys(factors, modalities, message):
    task = load_task("reversal")
    with pytest.raises(ValueError, match=message):
        _labels(factors, modalities).check(task.model)
    with pytest.raises(ValueError, match=r"task 'reversal': " + message):
        dataclasses.replace(task, labels=_labels(factors, modalities))


def test_a_task_file_must_build_a_task(tmp_path):
    path = tmp_path / "not_a_task.py"
    path.write_text("def build():\n    return 'a model'\n")
    with pytest.raises(
        ValueError, match=r"not_a_task.py: build\(\) returned str, not a pp_aif.Task"
    ):
        load_task(path)
    good = tmp_path / "my_reversal.py"
    good.write_text(
        "from pp_aif.tasks.reversal import build as reversal\n\n\n"
        "def build():\n    return reversal(reversal=4, p=0.9)\n"
    )
    task = load_task(good)
    assert [trial for trial, _ in task.process] == [0, 4]


def test_games_start_where_the_task_says():
    bandit = load_task("bandit")
    assert bandit.restarts is None and bandit.game_starts(5) is None
    every = dataclasses.replace(bandit, restarts=3)
    assert every.game_starts(7).tolist() == [1, 0, 0, 1, 0, 0, 1]
    listed = dataclasses.replace(bandit, restarts=[6, 2, 40])
    assert listed.restarts == (2, 6, 40)
    assert listed.game_starts(7).tolist() == [1, 0, 1, 0, 0, 0, 1]


@pytest.mark.parametrize(
    "restarts, message",
    [
        (0, r"restarts: 0 trials a game; a game needs at least 1 trial"),
        ([0, 4], r"restarts: \[0\] are not trials >= 1 \(trials count from 0, and trial 0"),
        ([2.5], r"restarts: \[2.5\] are not trials >= 1"),
        ([3, 3], r"restarts: trial\(s\) \[3\] given more than once"),
        ("5", r"restarts: expected trials per game \(an int\) or the trials that start a game"),
    ],
)
def test_bad_restarts_are_named(restarts, message):
    with pytest.raises(ValueError, match=r"task 'bandit': " + message):
        dataclasses.replace(load_task("bandit"), restarts=restarts)


def test_each_game_starts_from_the_first_counts():
    """A bandit in games of 4 trials: at every game's first trial each agent chooses as at trial
    0 (its counts are the first ones again), and not so within a game; the record names the
    trials that started a game."""
    task = dataclasses.replace(load_task("bandit"), restarts=4)
    record = pp_aif.simulate(task, 3, 10, seed=0)
    assert record.attrs["game_starts"] == [0, 4, 8]
    first_step = record["policy_posterior"].values[:, :, 0]
    for k in (4, 8):
        assert_close(first_step[:, k], first_step[:, 0], msg=f"trial {k}")
    assert np.abs(first_step[:, 1] - first_step[:, 0]).max() > 1e-3
    one_game = pp_aif.simulate(load_task("bandit"), 3, 10, seed=0)
    assert "game_starts" not in one_game.attrs


def test_a_fit_replays_the_tasks_games():
    """``pp_aif.fit`` of a task with games: its pointwise log-likelihood is the agent's
    replaying the choices with the counts starting again each game."""
    from pp_aif.data import BehaviourData, long_format
    from pp_aif.fitting.replay import ReplayLikelihood

    task = dataclasses.replace(load_task("bandit"), restarts=3)
    record = pp_aif.simulate(task, 2, 7, seed=1)
    data = BehaviourData.read(long_format(record, task), task)
    names = ["alpha", "learning_rate"]
    fit = pp_aif.fit(task, data, names, method="map", steps=5, seed=0)
    assert fit.attrs["likelihood"] == "CountsLikelihood"
    theta = {n: torch.as_tensor(fit.posterior[n].values[0, 0]) for n in names}
    replay = ReplayLikelihood(
        task.model, task.settings, data.observations, data.actions, names, data.present,
        task.game_starts(7),
    )  # fmt: skip
    expected = replay(theta).sum(-1)
    assert_close(fit.log_likelihood["actions"].values[0, 0], expected)
    one_game = ReplayLikelihood(
        task.model, task.settings, data.observations, data.actions, names, data.present
    )(theta).sum(-1)
    assert (one_game - expected).abs().max() > 1e-6

"""simulate: the record's structure, its agreement with the agent, and the netCDF round trip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import xarray as xr

import pp_aif
from pp_aif.envs import GenerativeProcess, accepts_trial
from pp_aif.simulation import save, simulate
from pp_aif.task import load_task
from tests.common import assert_close


def test_record_structure_and_round_trip(tmp_path):
    task = load_task("tmaze")
    dataset = simulate(task, num_agents=5, num_trials=2, seed=3)
    assert dict(dataset.sizes) == {
        "agent": 5,
        "trial": 2,
        "time": 3,
        "modality": 2,
        "factor": 2,
        "state_location": 4,
        "state_context": 2,
        "policy": 16,
        "policy_step": 2,
        "control_location": 4,
        "control_context": 1,
        "outcome_where": 5,
        "outcome_what": 3,
    }
    assert (dataset["action"].isel(time=-1) == -1).all()
    assert np.isnan(dataset["G"].isel(time=-1)).all()
    assert_close(dataset["belief_context"].sum("state_context").values, np.ones((5, 2, 3)))
    path = save(dataset, tmp_path / "record.nc")
    reread = xr.open_dataset(path, engine="h5netcdf")
    assert_close(reread["belief_location"].values, dataset["belief_location"].values)
    assert (reread["observation"].values == dataset["observation"].values).all()
    reread.close()


def test_record_beliefs_equal_exact_filtering():
    task = load_task("tmaze")
    dataset = simulate(task, num_agents=4, num_trials=1, seed=1)
    observations = dataset["observation"].isel(trial=0).values
    actions = dataset["action"].isel(trial=0, time=slice(0, 2)).values
    filtering = pp_aif.infer_states(task.model, observations, actions, mode="filtering")
    assert_close(dataset["belief_location"].isel(trial=0).values, filtering.marginals[0])
    assert_close(dataset["log_evidence"].isel(trial=0).sum("time").values, filtering.log_evidence)


def test_same_seed_same_record():
    task = load_task("tmaze")
    a = simulate(task, 3, 2, seed=11)
    b = simulate(task, 3, 2, seed=11)
    assert (a["action"].values == b["action"].values).all()


def test_bad_sizes():
    with pytest.raises(ValueError, match=r"num_agents: must be an integer >= 1, got 0"):
        simulate(load_task("tmaze"), 0, 1)


def test_model_environment_settings_tuple():
    """simulate((model, environment, settings)) runs a model against any world."""
    from pp_aif.agent import AgentSettings

    task = load_task("tmaze")
    world = task.model
    a = simulate((task.model, world, AgentSettings()), 20, 1, seed=4, num_steps=3)
    b = simulate(task, 20, 1, seed=4)
    assert (a["action"].values == b["action"].values).all()
    assert "factor0" in a["factor"].values
    with pytest.raises(TypeError, match=r"task\[1\]: expected a GenerativeModel or an Environment"):
        simulate((task.model, "world", AgentSettings()))


def test_devices_are_checked_before_anything_runs():
    import torch

    task = pp_aif.load_task("tmaze")
    with pytest.raises(ValueError, match=r"device: 'nonsense' is not a device torch knows"):
        pp_aif.simulate(task, 1, 1, device="nonsense")
    with pytest.raises(ValueError, match=r"device: give a Task"):
        pp_aif.simulate((task.model, task.model, task.settings), 1, 1, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device: cuda is not available on this machine"):
            pp_aif.simulate(task, 1, 1, device="cuda")
    # the CPU named explicitly gives the same record as the default
    named = pp_aif.simulate(task, 3, 2, seed=4, device="cpu")
    default = pp_aif.simulate(task, 3, 2, seed=4)
    assert (named["action"].values == default["action"].values).all()


# ---------------------------------------------------------------------------------------------
# any world: told the trial, rewards recorded, its outputs checked


class _Counting(GenerativeProcess):
    """The T-maze's world, recording the trials it is told."""

    def __init__(self, model):
        super().__init__(model)
        self.told = []

    def reset(self, num_agents, generator=None, *, trial=0):
        self.told.append(trial)
        return super().reset(num_agents, generator)


class _Untold:
    """An environment written before worlds were told the trial: reset takes no ``trial``."""

    def __init__(self, model):
        self.world = GenerativeProcess(model)

    @property
    def states(self):
        return self.world.states

    def reset(self, num_agents, generator=None):
        return self.world.reset(num_agents, generator)

    def step(self, actions):
        return self.world.step(actions)


def test_an_environment_is_told_each_trial():
    task = load_task("tmaze")
    counting = _Counting(task.model)
    simulate((task.model, counting, None), 2, 4, seed=0)
    assert counting.told == [0, 1, 2, 3]
    assert accepts_trial(counting) and not accepts_trial(_Untold(task.model))
    # one whose reset takes no trial runs as before: the same draws as the task's own world
    untold = simulate((task.model, _Untold(task.model), None), 5, 2, seed=3, num_steps=3)
    own = simulate(task, 5, 2, seed=3)
    assert (untold["action"].values == own["action"].values).all()
    assert (untold["observation"].values == own["observation"].values).all()


def test_reward_is_recorded_with_any_environment():
    """The reward counts the trials' rewarded outcomes in the record itself."""
    task = load_task("tmaze")
    tuple_form = simulate((task.model, _Untold(task.model), None), 6, 3, seed=1, reward=(1, 1))
    own = simulate(dataclasses.replace(task, process=_Counting(task.model)), 6, 3, seed=1)
    for record in (tuple_form, own):
        expected = (record["observation"].sel(modality=record["modality"][1]).values == 1).sum(-1)
        assert (record["reward"].values == expected).all() and expected.any()
    assert (tuple_form["reward"].values == own["reward"].values).all()
    assert "reward" not in simulate((task.model, task.model, None), 2, 1).data_vars
    other = simulate(task, 6, 3, seed=1, reward=(0, 3))  # the cue location, in place of reward
    assert (other["reward"].values == (other["observation"].values[..., 0] == 3).sum(-1)).all()
    with pytest.raises(ValueError, match=r"reward: modality 2 does not exist"):
        simulate((task.model, task.model, None), 2, 1, reward=(2, 0))


def test_the_worlds_outputs_and_the_tuples_parts_are_checked():
    from pp_aif.agent import AgentSettings

    task = load_task("tmaze")

    class Wrong(_Untold):
        def step(self, actions):
            return super().step(actions)[:, :1]

    with pytest.raises(
        ValueError,
        match=r"environment: trial 0, step 1 \(step\) gave torch.int64 of shape \(3, 1\); "
        r"expected integer outcomes \(N, M\) = \(3, 2\)",
    ):
        simulate((task.model, Wrong(task.model), None), 3, 1)

    class OutOfRange(_Untold):
        def reset(self, num_agents, generator=None):
            return super().reset(num_agents, generator) + torch.tensor([0, 3])

    with pytest.raises(
        ValueError,
        match=r"environment: trial 0, step 0 \(reset\) gave agent 0 outcome 3 in modality 1, "
        r"which has outcomes 0..2",
    ):
        simulate((task.model, OutOfRange(task.model), None), 3, 1)
    with pytest.raises(ValueError, match=r"task\[2\]: expected an AgentSettings or None, got dict"):
        simulate((task.model, task.model, {"policy_precision": 2.0}))
    bandit = load_task("bandit").model
    with pytest.raises(
        ValueError, match=r"task\[1\]: num_states \(4,\) differ from the agent model's \(4, 2\)"
    ):
        simulate((task.model, bandit, AgentSettings()))


@pytest.mark.integration
def test_compiled_steps_give_the_same_trajectories():
    """``compile=True`` (one ``torch.compile``d graph per step's inference and planning; the
    draws stay eager) gives the eager run's record: the same actions and outcomes from the
    same seed, and the same beliefs, q(pi) and G to 1e-12. With pD learning between trials
    (the T-maze's), so each trial's agents start from their own D."""
    from torch._dynamo.utils import counters

    task = load_task("tmaze")
    eager = simulate(task, 3, 3, seed=4)
    graphs = counters["stats"]["unique_graphs"]
    compiled = simulate(task, 3, 3, seed=4, compile=True)
    assert counters["stats"]["unique_graphs"] > graphs  # it did compile
    for name in ("action", "observation", "true_state"):
        assert np.array_equal(eager[name].values, compiled[name].values), name
    for name in ("belief_location", "belief_context", "log_evidence", "policy_posterior", "G"):
        ours, theirs = compiled[name].values, eager[name].values
        recorded = ~np.isnan(theirs)  # (the steps without a decision are NaN in both)
        assert np.array_equal(recorded, ~np.isnan(ours)), name
        assert_close(
            ours[recorded], theirs[recorded], atol=1e-12,
            reason="a compiled graph sums in its own order",
        )  # fmt: skip


def test_compile_refuses_what_it_cannot_compile():
    task = load_task("tmaze")
    for change, name in (
        ({"planner": "sophisticated"}, "planner"),
        ({"inference": "fpi"}, "inference"),
        ({"efe_method": "sampled", "num_samples": 8}, "efe_method"),
    ):
        settings = dataclasses.replace(task.settings, **change)
        with pytest.raises(ValueError, match=f"compile: the compiled agent step takes {name}"):
            simulate(task, 2, 1, settings=settings, compile=True)
    with pytest.raises(ValueError, match="compile: must be True or False"):
        simulate(task, 2, 1, compile="yes")

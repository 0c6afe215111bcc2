"""simulate: the record's structure, its agreement with the agent, and the netCDF round trip."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import pp_aif
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

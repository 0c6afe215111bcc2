"""The simulation record describes itself (issue 17, item 2): every variable and coordinate has
CF attributes, the policies are coordinates with their actions, and the settings are plain
attributes, all read back from the netCDF file by ``xr.open_dataset``."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
import xarray as xr

from pp_aif.agent import AgentSettings, policies_at
from pp_aif.planning.policies import Lesions
from pp_aif.simulation import SETTING_ATTRIBUTES, recorded_settings, save, simulate
from pp_aif.spec import GenerativeModel, construct_policies
from pp_aif.task import load_task

MOVES = ["go to start", "go to left", "go to right", "go to cue"]


@pytest.fixture(scope="module")
def tmaze():
    return load_task("tmaze")


@pytest.fixture(scope="module")
def reread(tmaze, tmp_path_factory):
    """A T-maze record with the epistemic term lesioned, written and opened again."""
    settings = dataclasses.replace(tmaze.settings, lesions=Lesions(epistemic=False))
    path = save(
        simulate(tmaze, 3, 2, seed=1, settings=settings), tmp_path_factory.mktemp("r") / "r.nc"
    )
    with xr.open_dataset(path, engine="h5netcdf") as record:
        yield record.load()


def test_every_variable_and_coordinate_says_what_it_is(reread):
    for name, variable in reread.variables.items():
        assert variable.attrs["long_name"] and variable.attrs["description"], name
        if variable.dtype.kind in "iuf":
            assert variable.attrs["units"] in ("1", "nats"), name
    expected = {
        "observation": ("observed outcome", "1"),
        "action": ("action taken", "1"),
        "true_state": ("true hidden state", "1"),
        "belief_context": ("belief about context: q(context_t | o_1:t)", "1"),
        "belief_accuracy": ("belief accuracy: q(s_t = true state)", "1"),
        "log_evidence": ("log evidence of the observation: ln p(o_t | o_1:t-1)", "nats"),
        "policy_posterior": ("policy posterior q(pi)", "1"),
        "G": ("expected free energy G", "nats"),
        "risk": ("risk", "nats"),
        "ambiguity": ("ambiguity", "nats"),
        "epistemic": ("epistemic value", "nats"),
        "pragmatic": ("pragmatic value", "nats"),
        "novelty": ("novelty", "nats"),
        "reward": ("rewards collected", "1"),
        "time": ("time step", "1"),
        "policy": ("policy index within the step's policy set", "1"),
        "policy_actions": ("actions of each step's policies", "1"),
    }
    for name, (long_name, units) in expected.items():
        assert (reread[name].attrs["long_name"], reread[name].attrs["units"]) == (
            long_name,
            units,
        ), name
    assert reread["reward"].attrs["description"] == (
        "the number of steps of the trial whose 'what' outcome was 'reward'"
    )
    assert reread["state_context"].attrs["long_name"] == "state of context"
    assert reread["outcome_where"].values.tolist()[0] == "start"
    assert reread["control_location"].values.tolist() == MOVES


def test_the_policies_of_each_step_are_coordinates(tmaze, reread):
    """At step 0 the 16 policies of depth 2, at step 1 the 4 moves of depth 1 (the rest of the
    axis empty), none at the last step; each named by its actions."""
    depth_two = list(itertools.product(range(4), repeat=2))
    actions = reread["policy_actions"]
    assert actions.dims == ("time", "policy", "policy_step", "factor")
    assert actions.isel(time=0, factor=0).values.tolist() == [list(p) for p in depth_two]
    assert (actions.isel(time=0, factor=1).values == 0).all()
    assert actions.isel(time=1, policy_step=0, factor=0).values[:4].tolist() == [0, 1, 2, 3]
    assert (actions.isel(time=1).values[4:] == -1).all()
    assert (actions.isel(time=1, policy_step=1).values == -1).all()
    assert (actions.isel(time=2).values == -1).all()
    labels = reread["policy_label"].values
    assert labels[0].tolist() == [f"{MOVES[a]}, then {MOVES[b]}" for a, b in depth_two]
    assert labels[1].tolist() == MOVES + [""] * 12
    assert labels[2].tolist() == [""] * 16
    # the label travels with q(pi): the coordinate of the policy axis
    assert reread["policy_posterior"].coords["policy_label"].dims == ("time", "policy")
    # and equals the agent's own policies at each step
    for t in range(2):
        policies = policies_at(tmaze.model, tmaze.settings, t, 3)[0].numpy()
        P, H = policies.shape[:2]
        assert (actions.values[t, :P, :H] == policies).all()


def test_a_task_with_its_own_policies_per_step_records_each_steps_set(tmaze):
    """Two policies at step 0, three moves of the task's own set at step 1."""
    m = tmaze.model
    sparse = GenerativeModel(m.A, m.B, m.C, m.D, policies=construct_policies([4, 1], 2)[[13, 14]])
    task = dataclasses.replace(
        tmaze, model=sparse, step_policies={1: construct_policies([4, 1], 1)[[0, 1, 2]]}
    )
    record = simulate(task, 2, 1, seed=0)
    assert record.sizes["policy"] == 3
    assert record["policy_label"].values.tolist() == [
        ["go to cue, then go to left", "go to cue, then go to right", ""],
        ["go to start", "go to left", "go to right"],
        ["", "", ""],
    ]


def test_settings_are_plain_documented_attributes(tmaze, reread, tmp_path):
    attributes = reread.attrs
    assert "settings" not in attributes  # no repr of a dict
    assert attributes["lesions_removed"] == "epistemic"
    assert (attributes["sample_actions"], attributes["horizon"]) == ("true", "none")
    assert (attributes["inference"], attributes["inference_tau"]) == ("exact", "none")
    assert float(attributes["action_precision"]) == 512.0
    assert (attributes["task"], int(attributes["num_steps"]), int(attributes["seed"])) == (
        "tmaze",
        3,
        1,
    )
    for name, meaning in SETTING_ATTRIBUTES.items():
        assert name in attributes and f"{name}: {meaning}" in attributes["comment"]
    for value in attributes.values():
        assert isinstance(value, str | int | float | np.number | np.ndarray)
    assert recorded_settings(reread) == dataclasses.replace(
        tmaze.settings, lesions=Lesions(epistemic=False)
    )
    # nothing removed; per-agent precisions as one number per agent
    gamma = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    settings = AgentSettings(policy_precision=gamma, horizon=1, inference_tau=0.5)
    path = save(simulate(tmaze, 2, 1, settings=settings), tmp_path / "r.nc")
    with xr.open_dataset(path, engine="h5netcdf") as record:
        assert record.attrs["lesions_removed"] == "none"
        assert record.attrs["policy_precision"].tolist() == [1.0, 2.0]
        assert (int(record.attrs["horizon"]), float(record.attrs["inference_tau"])) == (1, 0.5)
        again = recorded_settings(record)
    assert torch.equal(again.policy_precision, gamma)
    assert dataclasses.replace(again, policy_precision=1.0) == dataclasses.replace(
        settings, policy_precision=1.0
    )
    assert recorded_settings({"task": "tmaze"}) is None


def test_a_reader_sees_what_each_array_is(reread):
    """What ``print(xr.open_dataset(path)["G"])`` shows: its name in words and its units."""
    text = str(reread["G"])
    assert "long_name:    expected free energy G" in text and "units:        nats" in text
    assert "policy_label" in text


def test_every_setting_of_the_agent_is_recorded_and_read_back(tmp_path):
    """SETTING_ATTRIBUTES names every AgentSettings field (lesions as lesions_removed), so a
    setting added later cannot be left out of the record; a sophisticated planner's record
    reads back its planner and thresholds, and its figure is drawn from them."""
    fields = {f.name for f in dataclasses.fields(AgentSettings)} - {"lesions"}
    assert set(SETTING_ATTRIBUTES) == fields | {"lesions_removed"}
    tmaze = load_task("tmaze")
    settings = dataclasses.replace(
        tmaze.settings, planner="sophisticated", outcome_threshold=None, action_threshold=0.1
    )
    path = save(simulate(tmaze, 2, 1, settings=settings), tmp_path / "s.nc")
    with xr.open_dataset(path) as reread:
        assert recorded_settings(reread) == settings
        from pp_aif.plots import plot_trial

        plot_trial(reread.load())  # the record's own settings: 4 one-step policies per step

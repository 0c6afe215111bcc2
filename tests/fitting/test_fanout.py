"""Fits of many subjects in groups: the groups joined equal the fits of the groups; digests
follow what a fit depends on; bad arguments are refused before any job runs."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.data import BehaviourData, long_format
from pp_aif.errors import ConvergenceWarning
from pp_aif.fitting import default_priors, fit, prior_draws
from pp_aif.fitting.fanout import concat_subjects, content_digest, fit_subjects
from pp_aif.fitting.predictive import simulate_subjects


@pytest.fixture(scope="module")
def task():
    return pp_aif.load_task("tmaze")


@pytest.fixture(scope="module")
def data(task):
    truth = prior_draws(("alpha",), 5, torch.Generator().manual_seed(1))
    return BehaviourData.read(long_format(simulate_subjects(task, truth, 6, 2), task), task)


def test_groups_joined_equal_each_groups_fit(tmp_path, task, data):
    joined = fit_subjects(
        task, data, ("alpha",), method="grid", grid_points=21, draws=20, store=tmp_path,
        subjects_per_job=2, scheduler="inline", seed=4,
    )  # fmt: skip
    parts = [
        fit(
            task,
            data.subjects_slice(a, a + 2),
            ("alpha",),
            method="grid",
            grid_points=21,
            draws=20,
            seed=4 + j,
        )  # fmt: skip
        for j, a in enumerate(range(0, 5, 2))
    ]
    assert joined.posterior.coords["subject"].values.tolist() == list(data.subjects)
    for name in ("posterior", "log_likelihood", "observed_data", "constant_data"):
        for variable, value in joined[name].data_vars.items():
            expected = np.concatenate(
                [p[name][variable].values for p in parts],
                axis=value.dims.index("subject"),
            )
            np.testing.assert_array_equal(value.values, expected, err_msg=f"{name}.{variable}")
    evidence = [e for p in parts for e in p.attrs["log_evidence"]]
    np.testing.assert_array_equal(joined.attrs["log_evidence"], evidence)
    assert joined.attrs["params"] == ["alpha"] and joined.attrs["jobs"] == 3
    assert joined.sample_stats["diverging"].dims == ("chain", "draw", "subject")


def test_group_warnings_reach_the_caller_with_their_subjects(tmp_path, task, data):
    with pytest.warns(ConvergenceWarning, match=r"subjects agent-0\.\.agent-2: fit: the loss"):
        fit_subjects(
            task, data, ("alpha",), method="svi", steps=20, draws=5, store=tmp_path,
            subjects_per_job=3, scheduler="inline", learning_rate=0.001,
        )  # fmt: skip


def test_digests_follow_the_task_data_priors_and_settings(task, data):
    base = content_digest(task.model, task.settings, None, data.observations)
    assert base == content_digest(task.model, task.settings, None, data.observations.clone())
    C = [c.clone() for c in task.model.C]
    C[1][1] += 1.0
    model = task.model
    other = pp_aif.GenerativeModel(
        model.A, model.B, C, model.D, pD=model.pD, policies=model.policies
    )
    assert content_digest(other, task.settings, None, data.observations) != base
    same = pp_aif.GenerativeModel(
        model.A, model.B, model.C, model.D, pD=model.pD, policies=model.policies
    )
    assert content_digest(same, task.settings, None, data.observations) == base
    wider = {"alpha": default_priors()["alpha"]}
    assert content_digest(model, wider) == content_digest(
        model, {"alpha": default_priors()["alpha"]}
    )
    narrower = {"alpha": torch.distributions.LogNormal(0.0, 0.5)}
    assert content_digest(model, narrower) != content_digest(model, wider)
    settings = dataclasses.replace(task.settings, policy_precision=2.0)
    assert content_digest(model, settings) != content_digest(model, task.settings)
    # a task's own policy set for a step reaches the agent through its model: digested too
    second = pp_aif.construct_policies(task.model.num_controls, 1)[:2]
    own = dataclasses.replace(task, step_policies={1: second})
    assert content_digest(own.model, task.settings) != content_digest(task.model, task.settings)
    # and the intended states of inductive planning (a rerun with others must not resume)
    maze = pp_aif.load_task("maze").model
    goals = [torch.zeros_like(maze.H[0])]
    goals[0][0] = 1.0
    elsewhere = pp_aif.GenerativeModel(
        maze.A, maze.B, maze.C, maze.D, policies=maze.policies, H=goals
    )
    assert content_digest(elsewhere) != content_digest(maze)
    with pytest.raises(TypeError, match="cannot digest a builtin_function_or_method"):
        content_digest(len)
    with pytest.raises(TypeError, match="cannot digest a Opaque"):  # its repr has an address
        content_digest(type("Opaque", (), {})())


def test_bad_arguments_are_refused_before_any_job(tmp_path, task, data):
    arguments = dict(store=tmp_path, scheduler="inline")
    with pytest.raises(ValueError, match="hierarchical=True fits a population"):
        fit_subjects(task, data, ("alpha",), hierarchical=True, **arguments)
    with pytest.raises(ValueError, match="subjects_per_job: 0"):
        fit_subjects(task, data, ("alpha",), subjects_per_job=0, **arguments)
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['chain'\]"):
        fit_subjects(task, data, ("alpha",), chain=2, **arguments)
    with pytest.raises(ValueError, match="params"):
        fit_subjects(task, data, ("beta",), **arguments)
    assert list(tmp_path.iterdir()) == []


def test_concat_refuses_fits_that_do_not_join(task, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = fit(task, data.subjects_slice(0, 2), ("alpha",), method="svi", steps=5, draws=10)
        b = fit(task, data.subjects_slice(2, 4), ("alpha",), method="svi", steps=5, draws=11)
        c = fit(task, data.subjects_slice(0, 2), ("gamma",), method="svi", steps=5, draws=10)
    with pytest.raises(ValueError, match="fit 1 has 11 draws, fit 0 has 10"):
        concat_subjects([a, b])
    with pytest.raises(ValueError, match="fit 1 has params"):
        concat_subjects([a, c])
    with pytest.raises(ValueError, match="a subject appears in more than one fit"):
        concat_subjects([a, a])
    with pytest.raises(ValueError, match="no fits"):
        concat_subjects([])


@pytest.fixture(scope="module")
def uneven_ids(task):
    """Four subjects whose ids differ in length, the shortest first: a join that kept the first
    group's string width would cut the others short."""
    truth = prior_draws(("alpha",), 4, torch.Generator().manual_seed(2))
    table = long_format(simulate_subjects(task, truth, 2, 3), task)
    names = {"agent-0": "s-9", "agent-1": "s-10", "agent-2": "s-100", "agent-3": "s-1000"}
    table["subject"] = table["subject"].map(names)
    return BehaviourData.read(table, task)


def test_ids_of_different_lengths_survive_the_join_and_its_file(tmp_path, task, uneven_ids):
    import arviz as az

    arguments = dict(method="grid", grid_points=9, draws=10, subjects_per_job=1)
    joined = fit_subjects(
        task, uneven_ids, ("alpha",), store=tmp_path / "jobs", scheduler="inline", **arguments
    )
    joined.to_netcdf(str(tmp_path / "fit.nc"))
    back = az.from_netcdf(str(tmp_path / "fit.nc"))
    assert back.posterior.coords["subject"].values.tolist() == list(uneven_ids.subjects)
    for group in joined.groups():  # no encoding of a part's file is left
        for name, variable in joined[group].variables.items():
            assert variable.encoding == {}, f"{group}/{name}"
    assert joined.attrs["jobs_computed"] == 4 and joined.attrs["jobs_resumed"] == 0
    for group in joined.groups():  # every variable and coordinate reads back equal
        for name, variable in joined[group].variables.items():
            read = back[group][name].values
            if variable.dtype.kind in "USO":
                assert read.astype(str).tolist() == variable.values.astype(str).tolist(), name
            else:
                np.testing.assert_array_equal(read, variable.values, err_msg=f"{group}/{name}")
    resumed = fit_subjects(
        task, uneven_ids, ("alpha",), store=tmp_path / "jobs", scheduler="inline", **arguments
    )
    assert resumed.attrs["jobs_computed"] == 0 and resumed.attrs["jobs_resumed"] == 4
    assert resumed.posterior.coords["subject"].values.tolist() == list(uneven_ids.subjects)

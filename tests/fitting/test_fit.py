"""fit: NUTS on simulated subjects returns InferenceData ready for LOO, and names its problems."""

from __future__ import annotations

import dataclasses
import warnings

import arviz as az
import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.data import BehaviourData, long_format
from pp_aif.errors import ConvergenceWarning
from pp_aif.fitting import action_log_likelihood, policy_values
from pp_aif.fitting.fit import fit
from tests.common import assert_close


@pytest.fixture(scope="module")
def tmaze_without_learning():
    """SPM's T-maze whose agents do not learn D (the fast likelihood's case)."""
    task = pp_aif.load_task("tmaze")
    m = task.model
    model = pp_aif.GenerativeModel(m.A, m.B, m.C, m.D, m.E, policies=m.policies)
    settings = dataclasses.replace(task.settings, action_precision=2.0)
    return dataclasses.replace(task, model=model, settings=settings)


def test_learning_agents_are_refused_by_the_fast_likelihood():
    task = pp_aif.load_task("tmaze")  # learns pD
    data = BehaviourData.read(long_format(pp_aif.simulate(task, 2, 1, 0), task), task)
    with pytest.raises(ValueError, match=r"model: has pD, so its agents learn"):
        policy_values(task.model, task.settings, data.observations, data.actions)


@pytest.mark.integration
def test_nuts_fit_returns_inference_data_for_loo(tmaze_without_learning):
    task = tmaze_without_learning
    record = pp_aif.simulate(task, 2, 8, seed=1)
    data = BehaviourData.read(long_format(record, task), task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a tiny run; warnings tested below
        idata = fit(task, data, chains=2, draws=60, warmup=60, seed=0)
    assert idata.posterior["gamma"].shape == (2, 60, 2)
    assert idata.log_likelihood["actions"].shape == (2, 60, 2, 8)
    # the pointwise log-likelihood is the fast likelihood at every posterior draw
    values = policy_values(task.model, task.settings, data.observations, data.actions)
    gamma = torch.as_tensor(idata.posterior["gamma"].values)
    alpha = torch.as_tensor(idata.posterior["alpha"].values)
    assert_close(
        idata.log_likelihood["actions"].values,
        action_log_likelihood(values, gamma, alpha).sum(-1),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k from 120 draws: a tiny run
        loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(task, data, chains=1, draws=20, warmup=20, seed=0)
    messages = [str(w.message) for w in caught if w.category is ConvergenceWarning]
    assert any(m.startswith("fit: effective sample size down to") for m in messages), messages


def test_bad_arguments_are_named(tmaze_without_learning):
    task = tmaze_without_learning
    data = BehaviourData.read(long_format(pp_aif.simulate(task, 1, 1, 0), task), task)
    with pytest.raises(ValueError, match=r"method: 'svi'; only 'nuts'"):
        fit(task, data, method="svi")
    with pytest.raises(ValueError, match=r"params: \['beta'\]"):
        fit(task, data, params=["beta"])
    with pytest.raises(ValueError, match=r"do not fit task 'foraging'"):
        fit(pp_aif.load_task("foraging"), data)

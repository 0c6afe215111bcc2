"""The evidence estimators against the quadrature reference (a grid on the link scale)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.comparison import log_evidence
from pp_aif.data import BehaviourData, long_format
from pp_aif.fitting import BehaviourLikelihood, default_priors
from pp_aif.fitting.predictive import simulate_subjects
from tests.common import assert_close


@pytest.fixture(scope="module")
def two_subjects():
    task = pp_aif.load_task("tmaze")
    theta = {"alpha": torch.tensor([2.0, 6.0]), "learning_rate": torch.tensor([0.5, 2.0])}
    data = BehaviourData.read(long_format(simulate_subjects(task, theta, 12, 0), task), task)
    return task, data


def test_grid_equals_an_independent_quadrature_in_alpha(two_subjects):
    """The reference itself: ln ∫ p(y | alpha) p(alpha) d alpha on a fine grid in alpha (not
    ln alpha), by the trapezoid rule in numpy."""
    task, data = two_subjects
    likelihood = BehaviourLikelihood(
        task.model, task.settings, data.observations, data.actions, ("alpha",)
    )
    alpha = torch.linspace(1e-4, 400.0, 40001, dtype=torch.float64)
    with torch.no_grad():
        log_lik = torch.cat(
            [likelihood({"alpha": a[:, None]}).sum((-1, -2)) for a in alpha.split(4000)]
        )  # (G, N)
    log_prior = default_priors()["alpha"].log_prob(alpha)[:, None]
    integrand = np.exp((log_lik + log_prior).numpy())
    expected = np.log(np.trapezoid(integrand, alpha.numpy(), axis=0))
    grid = log_evidence(task, data, ("alpha",), method="grid", grid_points=401, width=12.0)
    assert_close(
        grid.log_evidence,
        expected,
        atol=1e-4,
        rtol=0,
        reason="two quadratures of a smooth integrand on different grids",
    )


def test_laplace_and_iwelbo_agree_with_the_grid_for_one_parameter(two_subjects):
    task, data = two_subjects
    grid = log_evidence(task, data, ("alpha",), method="grid", grid_points=201)
    laplace = log_evidence(task, data, ("alpha",), method="laplace")
    assert (laplace.log_evidence - grid.log_evidence).abs().max() < 0.05  # measured 0.014
    iwelbo = log_evidence(task, data, ("alpha",), method="iwelbo", num_samples=2000)
    assert ((iwelbo.log_evidence - grid.log_evidence).abs() < 5 * iwelbo.stderr + 1e-3).all()
    assert_close(laplace.mode, grid.mode)  # both start from the same Newton solution


def test_estimators_agree_with_the_grid_for_two_parameters(two_subjects):
    task, data = two_subjects
    params = ("alpha", "learning_rate")
    grid = log_evidence(task, data, params, method="grid", grid_points=121, width=10.0)
    iwelbo = log_evidence(task, data, params, method="iwelbo", num_samples=4000)
    # a lower bound in expectation: within 5 standard errors, and not far above
    gap = iwelbo.log_evidence - grid.log_evidence
    assert (gap.abs() < 5 * iwelbo.stderr).all(), (gap, iwelbo.stderr)
    laplace = log_evidence(task, data, params, method="laplace")
    # skewed posteriors (alpha's likelihood flattens as choices become deterministic):
    # measured 0.09 and 0.21 nats below the grid
    assert (laplace.log_evidence - grid.log_evidence).abs().max() < 0.3
    assert math.isfinite(grid.total) and grid.total == float(grid.log_evidence.sum())


def test_bad_requests_are_named(two_subjects):
    task, data = two_subjects
    with pytest.raises(ValueError, match=r"method: 'bic' is not one of"):
        log_evidence(task, data, ("alpha",), method="bic")
    with pytest.raises(ValueError, match=r"grid reference is for 1 or 2 parameters, got 3"):
        log_evidence(task, data, ("alpha", "gamma", "learning_rate"), method="grid")


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"params": "alpha"}, ValueError, r"params: 'alpha'; give a sequence of parameter names"),
        ({"params": ()}, ValueError, r"params: none; choose from"),
        ({"params": ("alpha", "beta")}, ValueError, r"params: \['beta'\]; choose from"),
        ({"params": ("alpha", "alpha")}, ValueError, r"names a parameter twice"),
        ({"priors": ["normal"]}, ValueError, r"priors: is a list; give a dict"),
        ({"data": "choices.csv"}, pp_aif.DataError, r"data: is a str; read it with"),
        ({"num_samples": 1}, ValueError, r"num_samples: must be an integer >= 2, got 1"),
        ({"steps": 0}, ValueError, r"steps: must be an integer >= 1, got 0"),
        ({"grid_points": 2.5}, ValueError, r"grid_points: must be an integer >= 3, got 2.5"),
        ({"width": -1.0}, ValueError, r"width: must be a positive finite number, got -1.0"),
        ({"learning_rate": np.nan}, ValueError, r"learning_rate: .* finite number, got nan"),
        ({"seed": None}, ValueError, r"seed: must be an integer, got None"),
    ],
)
def test_bad_arguments_are_named(two_subjects, change, error, message):
    task, data = two_subjects
    arguments = {"task": task, "data": data, "params": ("alpha",), **change}
    with pytest.raises(error, match=message):
        log_evidence(**arguments)


def test_data_of_another_task_is_refused(two_subjects):
    task, data = two_subjects
    with pytest.raises(pp_aif.DataError, match=r"do not fit task 'bandit'"):
        log_evidence(pp_aif.load_task("bandit"), data, ("alpha",))

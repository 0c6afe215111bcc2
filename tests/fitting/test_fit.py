"""fit: NUTS on simulated subjects returns InferenceData ready for LOO, and names its problems."""

from __future__ import annotations

import dataclasses
import warnings

import arviz as az
import numpy as np
import pyro.distributions as dist
import pytest
import torch

import pp_aif
from pp_aif.data import BehaviourData, long_format
from pp_aif.errors import ConvergenceWarning
from pp_aif.fitting import BehaviourLikelihood, action_log_likelihood, default_priors, policy_values
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


def test_learning_agents_need_their_initial_beliefs_per_trial():
    task = pp_aif.load_task("tmaze")  # learns pD
    data = BehaviourData.read(long_format(pp_aif.simulate(task, 2, 1, 0), task), task)
    with pytest.raises(ValueError, match=r"model: has pD, so its agents learn D between trials"):
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
    with pytest.raises(ValueError, match=r"method: 'laplace' is not one of"):
        fit(task, data, method="laplace")
    with pytest.raises(ValueError, match=r"params: \['beta'\]"):
        fit(task, data, params=["beta"])
    with pytest.raises(ValueError, match=r"names a parameter twice"):
        fit(task, data, params=["alpha", "alpha"])
    with pytest.raises(ValueError, match=r"'map' with hierarchical=True has no useful mode"):
        fit(task, data, method="map", hierarchical=True)
    with pytest.raises(ValueError, match=r"do not fit task 'foraging'"):
        fit(pp_aif.load_task("foraging"), data)
    with pytest.raises(ValueError, match=r"shape learning, but the model has no pA, pB or pD"):
        fit(task, data, params=["learning_rate"])  # this T-maze has no pD
    with pytest.raises(ValueError, match=r"priors\['alpha'\]: a hierarchical fit needs"):
        fit(task, data, ["alpha"], {"alpha": dist.Gamma(2.0, 1.0)}, hierarchical=True)


@pytest.fixture(scope="module")
def one_subject():
    """One learning T-maze subject, 30 trials, and its exact posterior of log alpha on a grid."""
    task = pp_aif.load_task("tmaze")
    task = dataclasses.replace(
        task, settings=dataclasses.replace(task.settings, action_precision=3.0)
    )
    data = BehaviourData.read(long_format(pp_aif.simulate(task, 1, 30, seed=2), task), task)
    likelihood = BehaviourLikelihood(
        task.model, task.settings, data.observations, data.actions, ("alpha",)
    )
    grid = torch.linspace(-4.0, 6.0, 4001, dtype=torch.float64)  # u = ln alpha
    prior = default_priors()["alpha"]
    with torch.no_grad():
        log_density = likelihood({"alpha": torch.exp(grid)[:, None]}).sum(
            (-1, -2, -3)
        ) + prior.log_prob(torch.exp(grid))
    posterior = torch.softmax(log_density + grid, 0)  # the density of u carries e^u
    exact = {
        "mean_alpha": float((posterior * torch.exp(grid)).sum()),
        "mean_log_alpha": float((posterior * grid).sum()),
        "sd_log_alpha": float((posterior * grid**2).sum() - (posterior * grid).sum() ** 2) ** 0.5,
        "mode_alpha": float(torch.exp(grid[log_density.argmax()])),
        "log_evidence": float(
            torch.logsumexp(log_density + grid, 0) + torch.log(grid[1] - grid[0])
        ),
    }
    return task, data, exact


@pytest.mark.integration
def test_nuts_matches_the_exact_posterior_within_its_standard_error(one_subject):
    task, data, exact = one_subject
    idata = fit(task, data, ("alpha",), chains=2, draws=600, warmup=400, seed=3)
    draws = idata.posterior["alpha"].values
    mcse = float(az.mcse(idata, var_names=["alpha"])["alpha"].values.item())
    assert abs(draws.mean() - exact["mean_alpha"]) < 4 * mcse, (draws.mean(), exact, mcse)
    # the pointwise log-likelihood is the likelihood at every draw
    likelihood = BehaviourLikelihood(
        task.model, task.settings, data.observations, data.actions, ("alpha",)
    )
    expected = likelihood({"alpha": torch.as_tensor(draws)}).sum(-1)
    assert_close(idata.log_likelihood["actions"].values, expected)


def test_map_finds_the_mode_and_svi_the_posterior(one_subject):
    task, data, exact = one_subject
    mode = fit(task, data, ("alpha",), method="map", steps=1500, learning_rate=0.05, seed=0)
    assert mode.posterior["alpha"].shape == (1, 1, 1)
    assert_close(
        mode.posterior["alpha"].values.item(),
        exact["mode_alpha"],
        rtol=1e-2,
        atol=0,
        reason="Adam's last steps and a grid step of 2.5e-3 in ln alpha",
    )
    svi = fit(task, data, ("alpha",), method="svi", steps=1500, draws=4000, seed=0)
    log_alpha = np.log(svi.posterior["alpha"].values)
    # a Gaussian in ln alpha: its mean and sd against the exact ones, to 5% of the sd
    assert abs(log_alpha.mean() - exact["mean_log_alpha"]) < 0.05 * exact["sd_log_alpha"] + 4 * (
        log_alpha.std() / np.sqrt(log_alpha.size)
    )
    assert abs(log_alpha.std() - exact["sd_log_alpha"]) < 0.1 * exact["sd_log_alpha"]


@pytest.mark.integration
def test_hierarchical_nuts_returns_population_and_subjects(tmaze_without_learning):
    task = tmaze_without_learning
    data = BehaviourData.read(long_format(pp_aif.simulate(task, 3, 4, seed=1), task), task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        idata = fit(task, data, ("alpha",), hierarchical=True, chains=1, draws=30, warmup=30)
    assert idata.posterior["alpha"].shape == (1, 30, 3)
    assert idata.posterior["alpha_mu"].shape == (1, 30)
    assert (idata.posterior["alpha_sigma"].values > 0).all()
    assert idata.attrs["population"] == ["alpha_mu", "alpha_sigma"]


def test_grid_fit_is_the_exact_posterior(one_subject):
    task, data, exact = one_subject
    idata = fit(task, data, ("alpha",), method="grid", draws=20000, seed=1)
    draws = idata.posterior["alpha"].values
    assert draws.shape == (1, 20000, 1)
    # within 4 Monte Carlo standard errors of the exact mean (independent draws)
    assert abs(draws.mean() - exact["mean_alpha"]) < 4 * draws.std() / np.sqrt(draws.size)
    log_alpha = np.log(draws)
    assert abs(log_alpha.std() - exact["sd_log_alpha"]) < 0.02 * exact["sd_log_alpha"]
    assert_close(
        idata.attrs["log_evidence"][0],
        exact["log_evidence"],
        atol=1e-4,
        rtol=0,
        reason="two quadratures on different grids",
    )
    two = fit(task, data, ("alpha", "learning_rate"), method="grid", draws=50, grid_points=21)
    assert two.posterior["learning_rate"].shape == (1, 50, 1)
    with pytest.raises(ValueError, match=r"'grid' \(the exact posterior by quadrature\) is for 1"):
        fit(task, data, ("alpha", "learning_rate", "gamma"), method="grid")


def test_a_chain_that_never_moved_is_named_not_a_numpy_warning():
    """Two subjects; the chains of the second are stuck, each at its own value: ArviZ's R-hat
    and ESS divide by their zero variance. The fit warns in words (and numpy's divide warning,
    an error under the test settings, does not escape)."""
    from pp_aif.fitting.fit import _warn_about

    draws = np.random.default_rng(0).normal(size=(2, 50, 2))
    draws[0, :, 1], draws[1, :, 1] = 0.3, 0.5  # subject 1's chains never moved
    inference = az.from_dict(
        posterior={"alpha": draws},
        sample_stats={"diverging": np.zeros((2, 50), dtype=bool)},
        dims={"alpha": ["subject"]},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_about(inference, ["alpha"], 2, 50)
    messages = [str(w.message) for w in caught]
    assert all(w.category is ConvergenceWarning for w in caught), messages
    assert any("alpha are not finite: a chain never moved" in m for m in messages), messages
    assert not any("inf" in m.split("not finite")[0] for m in messages), messages

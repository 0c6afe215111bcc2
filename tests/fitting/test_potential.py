"""The behavioural program's potential computed directly (``BehaviourPotential``) against the
traced program's (``ProgramPotential``): the same number and gradient, per subject too; and a
fit's per-subject chains."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pyro.distributions as dist
import pytest
import torch

import pp_aif
from pp_aif.data import BehaviourData, long_format
from pp_aif.fitting.fit import BehaviourPotential, behavioural_program, fit
from pp_aif.fitting.nuts import ProgramPotential
from pp_aif.parameters import LINKS, chosen_priors
from tests.common import assert_close

CASES = {
    # the pD learner (closed form), the bandit's pA learner (count recursion)
    "tmaze": ("alpha", "learning_rate", "forgetting"),
    "bandit": ("alpha", "learning_rate", "preference"),
}


def _data(name: str, absent: bool):
    task = pp_aif.load_task(name)
    data = BehaviourData.read(long_format(pp_aif.simulate(task, 3, 6, seed=1), task), task)
    if absent:  # subject 1 lacks its last two trials
        present = data.present.clone()
        present[1, -2:] = False
        data = dataclasses.replace(data, present=present)
    return task, data


def _columns(potential, index) -> list[int]:
    """The columns of z holding the sites of the subjects ``index``: each site is one value per
    subject, side by side."""
    N = potential.likelihood.actions.shape[0]
    return [site * N + n for site in range(potential.dimension // N) for n in index]


def _value_and_gradient(potential, z):
    z = z.clone().requires_grad_(True)
    U = potential(z)
    (g,) = torch.autograd.grad(U.sum(), z)
    return U.detach(), g


@pytest.mark.parametrize("absent", [False, True])
@pytest.mark.parametrize("hierarchical", [False, True])
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_direct_potential_is_the_programs(name, hierarchical, absent):
    task, data = _data(name, absent)
    params = CASES[name]
    likelihood, program = behavioural_program(task, data, params, None, task.settings, hierarchical)
    torch.manual_seed(0)
    traced = ProgramPotential(program)
    torch.manual_seed(0)
    direct = BehaviourPotential(
        program,
        likelihood,
        priors=chosen_priors(params),
        present=data.present,
        hierarchical=hierarchical,
        links=LINKS,
    )
    assert direct.sites == traced.sites
    z = traced.initial(5, torch.Generator().manual_seed(2))
    expected, expected_gradient = _value_and_gradient(traced, z)
    value, gradient = _value_and_gradient(direct, z)
    assert_close(value, expected, rtol=1e-10, reason="summation order")
    assert_close(gradient, expected_gradient, rtol=1e-10, atol=1e-10, reason="summation order")
    if not hierarchical:  # each subject's potential, and their sum
        per_subject = direct.per_subject(z)
        assert per_subject.shape == (5, data.num_subjects)
        assert_close(per_subject.sum(-1), expected, rtol=1e-10, reason="summation order")
        index = [2, 0, 2]  # some of the subjects, in another order, one twice
        of_subjects = importlib.import_module("pp_aif.fitting.fit")._potential_of_subjects
        subset = of_subjects(task, data, params, None, task.settings)(index)
        columns = direct.per_subject(z)[:, index]
        assert_close(subset.per_subject(z[:, _columns(direct, index)]), columns, rtol=1e-12)
        with pytest.raises(ValueError, match="not independent"):
            BehaviourPotential(
                program, likelihood, priors={}, present=None, hierarchical=True, links=LINKS
            ).per_subject(z)


@pytest.mark.filterwarnings("ignore::pp_aif.errors.ConvergenceWarning")  # 30 draws
def test_each_subject_has_its_own_chains():
    task, data = _data("bandit", False)
    params = ("alpha", "learning_rate")
    idata = fit(task, data, params, chains=2, draws=30, warmup=30, seed=0)
    assert idata.posterior["alpha"].dims == ("chain", "draw", "subject")
    assert idata.posterior["alpha"].shape == (2, 30, 3)
    stats = idata.sample_stats
    assert stats["diverging"].dims == ("chain", "draw", "subject")
    step_sizes = stats["step_size"].values[:, 0, :]  # (C, N): each subject's chains adapt alone
    assert len(set(step_sizes.ravel().tolist())) == step_sizes.size
    again = fit(task, data, params, chains=2, draws=30, warmup=30, seed=0)
    assert (again.posterior["alpha"].values == idata.posterior["alpha"].values).all()


def _direct(task, data, params) -> BehaviourPotential:
    """The potential ``fit`` builds for one group of subjects without a population model."""
    likelihood, program = behavioural_program(task, data, params, None, task.settings)
    return BehaviourPotential(
        program,
        likelihood,
        priors=chosen_priors(params),
        present=data.present,
        hierarchical=False,
        links=LINKS,
    )


def test_a_wild_point_is_not_finite_and_no_error():
    direct = _direct(*_data("bandit", False), ("alpha", "learning_rate"))
    z = torch.full((2, direct.dimension), -1000.0, dtype=torch.float64)  # e^-1000 = 0
    assert not torch.isfinite(direct(z)).any()


@pytest.mark.filterwarnings("ignore::pp_aif.errors.ConvergenceWarning")  # 5 draws
def test_a_long_fit_is_announced(monkeypatch):
    fitting = importlib.import_module("pp_aif.fitting.fit")  # the module, not the function
    task, data = _data("bandit", False)
    monkeypatch.setattr(fitting, "LONG_FIT_SECONDS", 0.0)
    with pytest.warns(fitting.LongFitWarning, match=r"will take about .* minutes"):
        fit(task, data, ("alpha",), chains=2, draws=5, warmup=5, seed=0)


@pytest.mark.parametrize("absent", [False, True])
def test_the_numpy_potential_is_the_torch_one(absent):
    """``per_subject_value_and_gradient`` (what NUTS calls for a pD learner at the default
    priors) against ``per_subject`` and autograd: values and gradients, forgetting (a sigmoid
    site) included, and a wild point non-finite in both."""
    direct = _direct(*_data("tmaze", absent), CASES["tmaze"])
    z = direct.initial(5, torch.Generator().manual_seed(3))
    found = direct.per_subject_value_and_gradient(z.numpy())
    assert found is not None, "the numpy route does not apply"
    value, gradient = found
    x = z.clone().requires_grad_(True)
    expected = direct.per_subject(x)
    (expected_gradient,) = torch.autograd.grad(expected.sum(), x)
    assert_close(value, expected)
    assert_close(gradient, expected_gradient)
    alone, none = direct.per_subject_value_and_gradient(z.numpy(), gradient=False)
    assert_close(alone, expected)  # the value alone
    assert none is None
    wild = torch.full((2, direct.dimension), -1000.0, dtype=torch.float64)
    value, _ = direct.per_subject_value_and_gradient(wild.numpy())
    assert not torch.isfinite(direct.per_subject(wild)).any() and not np.isfinite(value).any()


def test_the_priors_density_on_the_link_scale():
    """``log_prior_on_link_scale`` against the change of variables done by hand (scipy's
    densities, an independent route): the default link^-1(Normal) priors (by their Normal on
    u) and a Gamma prior on alpha (by its density at exp(u) times exp(u)); finite where
    exp(u) leaves floating point for the defaults."""
    from scipy import stats

    from pp_aif.parameters import default_priors, log_prior_on_link_scale

    u = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.7, 1.1]], dtype=torch.float64)
    params = ("alpha", "learning_rate")
    expected = stats.norm(np.log(4.0), 1.0).logpdf(u[:, 0].numpy()) + stats.norm(0.0, 1.0).logpdf(
        u[:, 1].numpy()
    )
    assert_close(log_prior_on_link_scale(default_priors(), params, u), expected)
    gamma = {**default_priors(), "alpha": dist.Gamma(torch.tensor(2.0, dtype=torch.float64), 0.5)}
    alpha = np.exp(u[:, 0].numpy())
    expected = (
        stats.gamma(2.0, scale=2.0).logpdf(alpha) + u[:, 0].numpy()
        + stats.norm(0.0, 1.0).logpdf(u[:, 1].numpy())
    )  # fmt: skip
    assert_close(log_prior_on_link_scale(gamma, params, u), expected)
    far = torch.tensor([[-1000.0, 0.0]], dtype=torch.float64)
    assert torch.isfinite(log_prior_on_link_scale(default_priors(), params, far)).all()

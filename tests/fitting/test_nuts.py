"""The batched NUTS sampler: known densities, Stan's warm-up schedule, the program's potential
(against Pyro's own), divergences at impossible points, and the exact posterior of a fit."""

from __future__ import annotations

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from pp_aif.tasks.tmaze import without_learning
from pyro.infer.mcmc.util import initialize_model

import pp_aif
from pp_aif.data import BehaviourData, long_format
from pp_aif.fitting.fit import behavioural_program, fit
from pp_aif.fitting.nuts import ProgramPotential, adaptation_windows, nuts
from pp_aif.fitting.quadrature import LinkScaleDensity, grid_log_mass
from tests.common import assert_close

COVARIANCE = torch.tensor(
    [[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 100.0]], dtype=torch.float64
)
MEAN = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)


def gaussian(z):
    x = z - MEAN
    return 0.5 * torch.einsum("ci,ij,cj->c", x, torch.linalg.inv(COVARIANCE), x)


def _within_standard_errors(draws: np.ndarray, expected: np.ndarray, k: float = 4.0):
    """Each coordinate's mean within k Monte Carlo standard errors (ArviZ's, from the chains)."""
    mcse = az.mcse(az.convert_to_dataset(draws))["x"].values
    assert (np.abs(draws.mean((0, 1)) - expected) < k * mcse).all(), (
        draws.mean((0, 1)),
        expected,
        mcse,
    )


def test_the_warm_up_windows_are_stans():
    assert adaptation_windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    assert adaptation_windows(500) == [(75, 100), (100, 150), (150, 250), (250, 450)]
    assert adaptation_windows(100) == [(15, 90)]
    assert adaptation_windows(10) == []


@pytest.mark.parametrize("dense", [False, True])
def test_a_correlated_gaussian_is_sampled_within_its_standard_errors(dense):
    result = nuts(gaussian, torch.zeros(4, 3, dtype=torch.float64), 1000, 500, seed=0, dense=dense)
    draws = result.samples.numpy()  # (C, D, d)
    assert draws.shape == (4, 1000, 3)
    _within_standard_errors(draws, MEAN.numpy())
    # second moments: (x - mu)(x - mu)' has the covariance as its mean
    centred = draws - MEAN.numpy()
    products = np.stack(
        [centred[..., i] * centred[..., j] for i, j in ((0, 0), (0, 1), (2, 2))], -1
    )
    _within_standard_errors(products, COVARIANCE.numpy()[[0, 0, 2], [0, 1, 2]])
    assert not result.diverging.any()
    # the warm-up found the scales: the dense metric is the covariance, to sampling error
    metric = result.inverse_mass.numpy()
    learned = metric if dense else metric[..., None] * np.eye(3)
    assert np.allclose(learned[:, 2, 2], 100.0, rtol=0.35), learned[:, 2, 2]
    if dense:
        assert np.allclose(learned[:, 0, 1], 0.9, atol=0.35), learned[:, 0, 1]
    assert 0.6 < float(result.accept.mean()) < 0.99


def test_runs_are_reproducible_and_seeds_differ():
    first = nuts(gaussian, torch.zeros(2, 3, dtype=torch.float64), 30, 30, seed=1)
    again = nuts(gaussian, torch.zeros(2, 3, dtype=torch.float64), 30, 30, seed=1)
    other = nuts(gaussian, torch.zeros(2, 3, dtype=torch.float64), 30, 30, seed=2)
    assert torch.equal(first.samples, again.samples)
    assert not torch.equal(first.samples, other.samples)
    assert not torch.equal(first.samples[0], first.samples[1])  # chains draw their own streams


def test_leaving_finished_chains_out_of_the_calls_keeps_the_draws():
    # each row its own density (scales 0.1-10: trajectories of very different lengths), so a
    # restricted call that mixed up its rows would change the draws
    scales = torch.tensor([0.1, 1.0, 10.0, 0.3, 3.0], dtype=torch.float64)

    def rows_of(index):
        def potential(z):
            return 0.5 * ((z / scales[index, None]) ** 2).sum(-1)

        return potential

    sizes = []

    def restrict(running):
        sizes.append(len(running))
        return rows_of(torch.as_tensor(running))

    initial = torch.ones(5, 2, dtype=torch.float64)
    whole = nuts(rows_of(torch.arange(5)), initial, 40, 40, seed=3)
    parts = nuts(rows_of(torch.arange(5)), initial, 40, 40, seed=3, restrict=restrict)
    before = [5, *sizes[:-1]]  # each restriction at least halves the rows
    assert sizes and all(2 * n <= m for m, n in zip(before, sizes, strict=True))
    assert torch.equal(parts.samples, whole.samples)
    assert torch.equal(parts.leapfrogs, whole.leapfrogs)
    assert parts.gradients == whole.gradients  # the longest chain's steps, either way


def test_impossible_points_are_divergences_not_errors():
    def half_gaussian(z):  # 0 density for z_0 < 0
        U = 0.5 * (z**2).sum(-1)
        return torch.where(z[:, 0] >= 0, U, torch.inf)

    result = nuts(half_gaussian, torch.ones(2, 2, dtype=torch.float64), 300, 200, seed=0)
    assert (result.samples[..., 0] >= 0).all()
    assert result.diverging.any()  # trajectories that left the support are flagged
    # the half-normal's mean sqrt(2 / pi), within a generous 5 standard errors
    draws = result.samples[..., :1].numpy()
    _within_standard_errors(draws, np.array([np.sqrt(2 / np.pi)]), k=5.0)
    with pytest.raises(
        ValueError, match=r"initial: the potential is not finite for chain\(s\) \[1\]"
    ):
        nuts(half_gaussian, torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64), 5, 5)
    with pytest.raises(ValueError, match=r"initial: \(chains, dimensions\) expected"):
        nuts(half_gaussian, torch.ones(2, dtype=torch.float64), 5, 5)


@pytest.fixture(scope="module")
def learner_data():
    task = pp_aif.load_task("tmaze")
    data = BehaviourData.read(long_format(pp_aif.simulate(task, 3, 6, seed=1), task), task)
    return task, data


@pytest.mark.parametrize("hierarchical", [False, True])
def test_the_programs_potential_is_pyros_for_every_chain(learner_data, hierarchical):
    task, data = learner_data
    params = ("alpha", "learning_rate", "forgetting")
    _, program = behavioural_program(task, data, params, None, task.settings, hierarchical)
    pyro.set_rng_seed(0)
    potential = ProgramPotential(program)
    _, pyro_potential, _, _ = initialize_model(program)
    z = potential.initial(4, torch.Generator().manual_seed(1))
    ours = potential(z)
    for c in range(4):
        sites = {name: z[c, where].reshape(shape) for name, shape, where, _ in potential.sites}
        assert_close(ours[c], pyro_potential(sites), rtol=1e-13, reason="summation order")


@pytest.mark.integration
def test_nuts_matches_the_exact_two_parameter_posterior():
    """(ln alpha, ln c), which trade off (posterior correlation about -0.8): NUTS's means
    against quadrature's."""
    task = without_learning(pp_aif.load_task("tmaze"))
    data = BehaviourData.read(long_format(pp_aif.simulate(task, 1, 30, seed=4), task), task)
    params = ("alpha", "preference")
    idata = fit(task, data, params, chains=4, draws=600, warmup=300, seed=0)
    likelihood, _ = behavioural_program(task, data, params, None, task.settings)
    u, log_mass, _ = grid_log_mass(LinkScaleDensity(likelihood, None), 61, 8.0)
    weights = torch.softmax(log_mass[:, 0], 0)
    exact = (weights[:, None] * u[:, 0]).sum(0).numpy()  # E[ln alpha], E[ln eta]
    draws = np.log(np.stack([idata.posterior[name].values[..., 0] for name in params], -1))
    _within_standard_errors(draws, exact)

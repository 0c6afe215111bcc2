"""Amortised fits corrected by importance sampling: the proposals' density is the estimator's,
the target is prior x the agent's likelihood (the replay, an independent route), the weights are
Pareto-smoothed, and an estimator barely trained gives the exact posterior after reweighing
(brute-force quadrature with the replay, within Monte Carlo error)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.data import BehaviourData, long_format
from pp_aif.errors import ConvergenceWarning
from pp_aif.fitting import prior_draws
from pp_aif.fitting.amortised import importance_resample
from pp_aif.fitting.fit import BehaviourPotential, _log_target, behavioural_program
from pp_aif.fitting.predictive import simulate_subjects
from pp_aif.fitting.replay import ReplayLikelihood
from pp_aif.fitting.training import train_estimator
from pp_aif.parameters import LINKS, chosen_priors, default_priors
from tests.common import assert_close
from tests.fitting.conftest import PARAMS, TINY


@pytest.fixture(scope="module")
def estimator(trained):
    return trained[0]


@pytest.fixture(scope="module")
def data(bandit):
    truth = prior_draws(PARAMS, 3, torch.Generator().manual_seed(5))
    return BehaviourData.read(long_format(simulate_subjects(bandit, truth, 8, 4), bandit), bandit)


def _replay_log_joint(bandit, data, u, params=PARAMS):
    """ln prior(theta) + ln |d theta / d u| + the replay's ln p(actions | theta): u (M, N, d)."""
    priors = default_priors()
    replay = ReplayLikelihood(
        bandit.model, bandit.settings, data.observations, data.actions, params, data.present
    )
    theta = {name: LINKS[name](u[..., i]) for i, name in enumerate(params)}
    log_prior = sum(
        priors[name].log_prob(theta[name])
        + LINKS[name].log_abs_det_jacobian(u[..., i], theta[name])
        for i, name in enumerate(params)
    )
    log_likelihood = (replay(theta) * data.present[..., None]).sum((-1, -2))
    return log_prior + log_likelihood


def _quadrature(bandit, data):
    """Each subject's posterior mean and sd (N, d) of (ln alpha, ln eta) by brute force: a
    121 x 121 grid over 7 prior sds either side, the replay's likelihood."""
    step = 14.0 / 120
    axis = torch.arange(121, dtype=torch.float64) * step - 7.0
    grid = torch.stack(torch.meshgrid(axis + math.log(4.0), axis, indexing="ij"), -1)
    u = grid.reshape(-1, 1, 2).expand(-1, 3, 2)
    mass = torch.softmax(_replay_log_joint(bandit, data, u), 0)  # (G, N)
    mean = (mass[..., None] * u).sum(0)
    return mean, ((mass[..., None] * (u - mean) ** 2).sum(0)).sqrt()


def test_proposals_carry_the_estimators_own_density(bandit, estimator, data):
    """ln q of each proposal, on the unconstrained scale, is the flow's density of its
    standardised value less ln of the standardisation's scales."""
    x = (data.observations, data.actions, data.present)
    torch.manual_seed(1)
    u, log_q = estimator.proposals(*x, 6)
    assert u.shape == (6, 3, 2) and log_q.shape == (6, 3) and u.dtype == torch.float64
    standard = ((u - estimator.shift.double()) / estimator.scale.double()).float()
    with torch.no_grad():
        expected = torch.stack([estimator.log_prob(standard[m], *x) for m in range(6)]).double()
    expected = expected - torch.log(estimator.scale.double()).sum()
    assert_close(log_q, expected, atol=1e-4, rtol=1e-5, reason="the flow computes in float32")


def test_a_defensive_share_comes_from_the_priors_and_the_density_is_the_mixtures(
    bandit, estimator, data
):
    """With defensive = 0.5, half the proposals are the priors' (in the prior's range, not
    the estimator's), and ln q of every proposal is ln(q_flow / 2 + prior / 2)."""
    x = (data.observations, data.actions, data.present)
    priors = chosen_priors(PARAMS, None)
    torch.manual_seed(4)
    u, log_q = estimator.proposals(*x, 4000, priors, defensive=0.5)
    assert u.shape == (4000, 3, 2)
    # the prior's half: ln alpha ~ Normal(ln 4, 1), ln eta ~ Normal(0, 1)
    tail = u[2000:].reshape(-1, 2)
    assert_close(tail.mean(0), [math.log(4.0), 0.0], atol=0.06, reason="4 standard errors")
    assert_close(tail.std(0), [1.0, 1.0], atol=0.05, reason="about 4 standard errors")
    standard = ((u - estimator.shift.double()) / estimator.scale.double()).float()
    with torch.no_grad():
        flow = torch.stack([estimator.log_prob(standard[m], *x) for m in range(4000)]).double()
    flow = flow - torch.log(estimator.scale.double()).sum()
    prior = sum(
        priors[name].log_prob(LINKS[name](u[..., i]))
        + LINKS[name].log_abs_det_jacobian(u[..., i], LINKS[name](u[..., i]))
        for i, name in enumerate(PARAMS)
    )
    expected = torch.logaddexp(flow, prior) + math.log(0.5)
    assert_close(log_q, expected, atol=1e-4, rtol=1e-5, reason="the flow computes in float32")


def test_a_missed_posterior_is_weighed_right_by_the_defensive_share(bandit, estimator, data):
    """An estimator moved 5 standard deviations away from every posterior: its own proposals
    alone give Pareto k > 0.7; with a tenth from the priors, 8000 proposals give the exact
    posterior means (brute-force quadrature with the replay) within Monte Carlo error."""
    import copy

    moved = copy.deepcopy(estimator)
    moved.shift += 5.0 * moved.scale
    exact_mean, exact_sd = _quadrature(bandit, data)
    likelihood, program = behavioural_program(bandit, data, PARAMS, None, bandit.settings)
    potential = BehaviourPotential(
        program, likelihood, priors=chosen_priors(PARAMS, None), present=data.present,
        hierarchical=False, links=LINKS,
    )  # fmt: skip
    x = (data.observations, data.actions, data.present)
    torch.manual_seed(5)
    u, log_q = moved.proposals(*x, 8000)
    alone = importance_resample(u, _log_target(potential, PARAMS, 3)(u) - log_q, 10)
    assert bool((alone["pareto_k"] > 0.7).all()), alone["pareto_k"]
    inference = pp_aif.fit(
        bandit, data, PARAMS, method="amortised", estimator=moved, draws=8000,
        importance=8000, seed=6, pointwise=False,
    )  # fmt: skip
    ess = torch.as_tensor(inference.attrs["importance_ess"], dtype=torch.float64)
    assert bool((ess > 100).all()), ess
    for i, name in enumerate(PARAMS):
        values = torch.log(torch.as_tensor(inference.posterior[name].values[0]))  # (D, N)
        error = exact_sd[:, i] * torch.sqrt(1 / ess + 1 / 8000)
        assert bool(((values.mean(0) - exact_mean[:, i]).abs() < 4 * error).all()), name


def test_the_pyro_flows_padding_is_weighed_exactly(bandit, data):
    """With one parameter, Pyro's flow runs on 2 dimensions; the padding's own draw is divided
    out, so that the weights are exact for the target p(u) N(v; 0, 1)."""
    estimator = train_estimator(bandit, ("alpha",), flow="pyro", **TINY)[0]
    x = (data.observations, data.actions, data.present)
    torch.manual_seed(2)
    context = estimator.encoder(*x)
    flow = estimator._distribution(context)
    torch.manual_seed(3)
    full = flow.flow.sample((5,))
    torch.manual_seed(3)
    u, log_q = estimator.proposals(*x, 5)
    scale = estimator.scale.double()
    assert_close(u[..., 0], full[..., 0].double() * scale + estimator.shift.double())
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = flow.flow.log_prob(full) - normal.log_prob(full[..., 1])
    expected = expected.double() - torch.log(scale).sum()
    assert_close(log_q, expected, atol=1e-4, rtol=1e-5, reason="the flow computes in float32")
    # end to end, with a defensive share over (u, v): the exact posterior of ln alpha
    axis = torch.arange(1201, dtype=torch.float64) * 14.0 / 1200 - 7.0 + math.log(4.0)
    u = axis.reshape(-1, 1, 1).expand(-1, 3, 1)
    mass = torch.softmax(_replay_log_joint(bandit, data, u, ("alpha",)), 0)
    exact_mean = (mass * u[..., 0]).sum(0)
    exact_sd = ((mass * (u[..., 0] - exact_mean) ** 2).sum(0)).sqrt()
    inference = pp_aif.fit(
        bandit, data, ("alpha",), method="amortised", estimator=estimator, draws=4000,
        importance=4000, seed=7, pointwise=False,
    )  # fmt: skip
    ess = torch.as_tensor(inference.attrs["importance_ess"], dtype=torch.float64)
    values = torch.log(torch.as_tensor(inference.posterior["alpha"].values[0]))
    error = exact_sd * torch.sqrt(1 / ess + 1 / 4000)
    assert bool(((values.mean(0) - exact_mean).abs() < 4 * error).all())
    assert bool(((values.std(0) - exact_sd).abs() < 4 * error).all())


def test_the_target_is_prior_times_the_replays_likelihood(bandit, data):
    likelihood, program = behavioural_program(bandit, data, PARAMS, None, bandit.settings)
    potential = BehaviourPotential(
        program, likelihood, priors=chosen_priors(PARAMS, None), present=data.present,
        hierarchical=False, links=LINKS,
    )  # fmt: skip
    u = torch.randn(7, 3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u[..., 0] += math.log(4.0)
    expected = _replay_log_joint(bandit, data, u)
    assert_close(_log_target(potential, PARAMS, 3)(u), expected, reason=None)
    # in chunks of 2 subject-draws: the same numbers
    assert_close(_log_target(potential, PARAMS, 3, evaluations=2)(u), expected)


def test_resampling_recovers_a_known_target_and_flags_a_narrow_proposal():
    """Normal target N(1, 2^2) from a wider proposal N(0, 3^2): mean and sd within Monte Carlo
    error, Pareto k small; from a narrow proposal N(0, 0.5^2) the tail is missed: k > 0.7."""
    generator = torch.Generator().manual_seed(0)
    M, N = 20_000, 2
    target = torch.distributions.Normal(1.0, 2.0)
    for scale, good in ((3.0, True), (0.5, False)):
        proposal = torch.distributions.Normal(0.0, scale)
        u = scale * torch.randn(M, N, 1, generator=generator, dtype=torch.float64)
        log_weights = (target.log_prob(u) - proposal.log_prob(u))[..., 0]
        found = importance_resample(u, log_weights, 20_000, torch.Generator().manual_seed(1))
        assert found["u"].shape == (20_000, N, 1)
        if not good:
            assert bool((found["pareto_k"] > 0.7).all()), found["pareto_k"]
            continue
        assert bool((found["pareto_k"] < 0.5).all()), found["pareto_k"]
        ess = found["ess"]
        assert bool((ess > 0.3 * M).all()) and bool((ess <= M).all())
        mean, sd = found["u"][..., 0].mean(0), found["u"][..., 0].std(0)
        error = 2.0 * torch.sqrt(1 / ess + 1 / 20_000)  # sd x sqrt(1/ESS + 1/draws)
        assert bool(((mean - 1.0).abs() < 4 * error).all()), (mean, error)
        assert bool(((sd - 2.0).abs() < 4 * error).all()), (sd, error)


def test_resampling_names_a_subject_without_target_mass():
    u = torch.zeros(4, 2, 1, dtype=torch.float64)
    log_weights = torch.zeros(4, 2, dtype=torch.float64)
    log_weights[:, 1] = -torch.inf
    with pytest.raises(FloatingPointError, match="subject 1"):
        importance_resample(u, log_weights, 3)
    log_weights[:, 1] = 0.0
    log_weights[2, 1] = torch.nan
    with pytest.raises(FloatingPointError, match="subject 1 is NaN at 1 of its 4 proposals"):
        importance_resample(u, log_weights, 3)
    with pytest.raises(ValueError, match="2 or more"):
        importance_resample(u[:1], log_weights[:1], 3)


def test_reweighing_a_barely_trained_estimator_gives_the_exact_posterior(bandit, estimator, data):
    """Posterior means and sds of ln alpha and ln eta by brute-force quadrature with the replay
    (a 121 x 121 grid over 7 prior sds either side); the importance-sampled fit is within 4
    Monte Carlo standard errors of them, and its Pareto k are below 0.7. The estimator's own
    draws (2 epochs on 240 simulations) are not."""
    exact_mean, exact_sd = _quadrature(bandit, data)

    draws = 4000
    inference = pp_aif.fit(
        bandit, data, PARAMS, method="amortised", estimator=estimator, draws=draws,
        importance=4000, seed=3, pointwise=False,
    )  # fmt: skip
    k = np.asarray(inference.attrs["importance_pareto_k"])
    ess = torch.as_tensor(inference.attrs["importance_ess"], dtype=torch.float64)
    assert inference.attrs["importance_proposals"] == 4000 and k.shape == (3,)
    assert bool((k < 0.7).all()), k
    raw = pp_aif.fit(
        bandit, data, PARAMS, method="amortised", estimator=estimator, draws=draws, seed=3,
        pointwise=False,
    )  # fmt: skip
    raw_off = []
    for i, name in enumerate(PARAMS):
        values = torch.log(torch.as_tensor(inference.posterior[name].values[0]))  # (D, N)
        mean, sd = values.mean(0), values.std(0)
        error = exact_sd[:, i] * torch.sqrt(1 / ess + 1 / draws)
        assert bool(((mean - exact_mean[:, i]).abs() < 4 * error).all()), (name, mean, error)
        assert bool(((sd - exact_sd[:, i]).abs() < 4 * error).all()), (name, sd, error)
        raw_values = torch.log(torch.as_tensor(raw.posterior[name].values[0]))
        raw_off.append(((raw_values.mean(0) - exact_mean[:, i]).abs() > 4 * error).any())
    assert any(raw_off), "the raw estimator is already exact: this test cannot tell"


def test_importance_is_seeded_warned_and_checked(bandit, estimator, data):
    fit = pp_aif.fit
    common = dict(method="amortised", estimator=estimator, draws=20, pointwise=False)
    first = fit(bandit, data, PARAMS, importance=50, seed=4, **common)
    again = fit(bandit, data, PARAMS, importance=50, seed=4, **common)
    other = fit(bandit, data, PARAMS, importance=50, seed=5, **common)
    alpha = [x.posterior["alpha"].values for x in (first, again, other)]
    assert np.array_equal(alpha[0], alpha[1]) and not np.array_equal(alpha[0], alpha[2])
    plain = [fit(bandit, data, PARAMS, seed=s, **common).posterior["alpha"].values for s in (4, 4)]
    assert np.array_equal(*plain)  # the estimator's own draws are seeded too
    with pytest.raises(ValueError, match="only method 'amortised' reweighs"):
        fit(bandit, data, PARAMS, method="grid", importance=10)
    with pytest.raises(ValueError, match="importance"):
        fit(bandit, data, PARAMS, importance=1, **common)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(bandit, data, PARAMS, importance=2, seed=0, **common)  # 2 proposals: k is wild
    messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert messages and "Pareto k > 0.7" in messages[0] and repr(data.subjects[0]) in messages[0]

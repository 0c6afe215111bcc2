"""SVI guides: F is the program's negative ELBO, the structured guide reaches -ln p(o), mean field
stays above it when observations couple factors; every failure is named."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.errors import ConvergenceWarning
from pp_aif.inference.variational import SVISettings
from tests.common import (
    assert_close,
    brute_force,
    path_log_probabilities,
    random_arrays,
    sample_sequence,
)
from tests.inference.cases import random_case

SHAPES = [
    ((3,), (4,), (2,)),
    ((2, 2), (3, 2), (2, 1)),
    ((2, 1, 2), (3, 2), (2, 1, 2)),
]

#: L-BFGS stops when F changes by < 1e-9 per iteration; the issue asks for 1e-4 nats.
SVI_TOLERANCE = {"atol": 1e-4, "rtol": 0.0, "reason": "an optimiser's stopping rule, not algebra"}


def make(rng, shape, zero_fraction, T=3):
    return random_case(rng, shape, T=T, zero_fraction=zero_fraction)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("zero_fraction", [0.0, 0.4])
@pytest.mark.parametrize("chain_start", ["prior", "posterior"])
def test_structured_guide_reaches_minus_log_evidence(rng, shape, zero_fraction, chain_start):
    """From the prior over paths L-BFGS finds the posterior; from the closed-form coordinate
    update (the exact chain) it stays there."""
    arrays, model, observations, actions = make(rng, shape, zero_fraction)
    log_evidence, marginals = brute_force(arrays, observations, actions)
    beliefs = pp_aif.infer_states(
        model, observations, actions, method="structured", settings={"chain_start": chain_start}
    )
    assert beliefs.log_evidence is None and beliefs.method == "structured"
    assert beliefs.optimisation.converged
    gap = float(beliefs.free_energy) + log_evidence
    assert gap >= -1e-10, "F below -ln p(o)"
    assert_close(beliefs.free_energy, -log_evidence, **SVI_TOLERANCE)
    assert_close(beliefs.marginals, marginals, atol=1e-3, reason="KL <= 1e-4 bounds these")
    # the closed form of F (pp_aif.free_energy) agrees with Pyro's last loss
    assert_close(
        beliefs.optimisation.trace[-1],
        beliefs.free_energy,
        atol=1e-8,
        reason="last L-BFGS evaluation vs final parameters",
    )


@pytest.mark.parametrize("shape", SHAPES[1:])
def test_mean_field_is_above_when_observations_couple_factors(rng, shape):
    arrays, model, observations, actions = make(rng, shape, 0.0)
    log_evidence, _ = brute_force(arrays, observations, actions)
    beliefs = pp_aif.infer_states(model, observations, actions, method="mean_field")
    assert beliefs.optimisation.converged
    assert float(beliefs.free_energy) > -log_evidence + 1e-3
    # its F is the mean-field F of its marginals, by the independent closed form
    assert_close(
        beliefs.free_energy,
        pp_aif.free_energy(model, observations, actions, beliefs=beliefs.marginals),
    )
    # and a stationary point: nudging any marginal towards the exact one does not lower F
    exact = pp_aif.infer_states(model, observations, actions)
    for f in range(model.num_factors):
        nudged = [q.clone() for q in beliefs.marginals]
        nudged[f] = 0.99 * nudged[f] + 0.01 * exact.marginals[f]
        value = pp_aif.free_energy(model, observations, actions, beliefs=nudged)
        assert float(value) >= float(beliefs.free_energy) - 1e-9


def test_mean_field_is_exact_for_one_factor_and_one_step(rng):
    arrays, model, observations, actions = make(rng, SHAPES[0], 0.0, T=1)
    log_evidence, marginals = brute_force(arrays, observations, actions)
    beliefs = pp_aif.infer_states(model, observations, actions, method="mean_field")
    assert_close(beliefs.free_energy, -log_evidence, **SVI_TOLERANCE)
    assert_close(beliefs.marginals, marginals, atol=1e-4, reason="optimiser stopping rule")


def test_structured_guide_started_at_its_optimum_stays_there(rng):
    """chain_start="posterior" (the default): the guide starts at the exact chain, so F is
    -ln p(o) to float64 precision after the first round, the marginals brute force's, and every
    sequence of a batch has converged at once (its gradient at most 1e-10)."""
    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 2), zero_fraction=0.3)
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D)
    pairs = [sample_sequence(rng, arrays, 8) for _ in range(6)]
    observations = np.stack([o for o, _ in pairs])
    actions = np.stack([a for _, a in pairs])
    beliefs = pp_aif.infer_states(model, observations, actions, method="structured")
    assert beliefs.optimisation.converged and beliefs.optimisation.iterations <= 2
    for n in range(6):
        log_evidence, marginals = brute_force(arrays, observations[n], actions[n])
        assert_close(beliefs.free_energy[n], -log_evidence, atol=1e-9, reason="sums of 8 steps")
        assert_close([q[n] for q in beliefs.marginals], marginals, atol=1e-9, reason="the same")
    with pytest.raises(ValueError, match="chain_start"):
        SVISettings(chain_start="uniform")


def test_batched_sequences_keep_the_batch_shape(rng):
    arrays = random_arrays(rng, (2, 2), (3,), (2, 1))
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D)
    pairs = [sample_sequence(rng, arrays, 3) for _ in range(2)]
    observations = np.stack([o for o, _ in pairs])
    actions = np.stack([a for _, a in pairs])
    beliefs = pp_aif.infer_states(model, observations, actions, method="structured")
    assert beliefs.free_energy.shape == (2,)
    assert beliefs.marginals[0].shape == (2, 3, 2)
    for n in range(2):
        log_evidence, _ = brute_force(arrays, observations[n], actions[n])
        assert_close(beliefs.free_energy[n], -log_evidence, **SVI_TOLERANCE)


def test_sampled_elbo_with_adam_approaches_the_evidence(rng):
    arrays, model, observations, actions = make(rng, SHAPES[0], 0.0)
    log_evidence, _ = brute_force(arrays, observations, actions)
    settings = SVISettings(elbo="sampled", num_steps=300, num_particles=32, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a noisy loss rarely stalls
        beliefs = pp_aif.infer_states(
            model, observations, actions, method="structured", settings=settings
        )
    gap = float(beliefs.free_energy) + log_evidence
    assert 0 <= gap < 0.05, gap  # the closed-form F of the final guide: close, never below
    record = beliefs.optimisation
    assert len(record.trace) == record.iterations <= 300


def test_mean_field_under_coupling_zeros_is_finite_and_zero_forcing():
    # a deterministic swap with an unknown start: the posterior keeps both states at every step,
    # and the product of its marginals puts mass on an impossible "stay". Mean field is
    # zero-forcing: its optimum is one of the two paths, F = ln 2 (each has p(o, s) = 1/2)
    B = np.array([[0.0, 1.0], [1.0, 0.0]])[:, :, None]
    model = pp_aif.GenerativeModel(A=[np.full((1, 2), 1.0)], B=[B])
    beliefs = pp_aif.infer_states(model, np.zeros((3, 1)), method="mean_field")
    assert beliefs.optimisation.converged
    assert_close(beliefs.free_energy, np.log(2.0), **SVI_TOLERANCE)
    for q in beliefs.marginals:  # one path: every marginal certain
        assert_close(q.max(-1).values, np.ones(3), **SVI_TOLERANCE)
    assert_close(
        beliefs.free_energy,
        pp_aif.free_energy(model, np.zeros((3, 1)), beliefs=beliefs.marginals),
    )
    beliefs = pp_aif.infer_states(model, np.zeros((2, 1)), method="structured")
    assert_close(beliefs.free_energy, 0.0, **SVI_TOLERANCE)  # p(o) = 1


@pytest.mark.parametrize("shape", [((3,), (2,), (2,)), ((2, 2), (3,), (2, 1))])
def test_mean_field_is_finite_between_the_evidence_and_the_best_path(rng, shape):
    """Random models with many structural zeros in A, B and D (which couple steps and factors):
    for every possible sequence, the mean-field F is finite, at least -ln p(o), and no
    single-path q (F = -ln p(o, s)) does better; brute force over every path is the oracle."""
    coupled = 0
    for _ in range(12):
        arrays, model, observations, actions = make(rng, shape, 0.6, T=4)
        states, log_p = path_log_probabilities(arrays, observations, actions)
        log_evidence, _ = brute_force(arrays, observations, actions)
        masks = [q > 0 for q in brute_force(arrays, observations, actions)[1]]
        product = np.ones(len(log_p), dtype=bool)  # paths inside the product of the supports
        for f, mask in enumerate(masks):
            product &= mask[np.arange(4), states[:, :, f]].all(-1)
        coupled += bool(np.isneginf(log_p[product]).any())
        beliefs = pp_aif.infer_states(model, observations, actions, method="mean_field")
        value = float(beliefs.free_energy)
        assert np.isfinite(value)
        assert value >= -log_evidence - 1e-9
        assert value <= -log_p.max() + SVI_TOLERANCE["atol"]
        assert_close(
            beliefs.free_energy,
            pp_aif.free_energy(model, observations, actions, beliefs=beliefs.marginals),
        )
    assert coupled > 0  # the cases include products of supports that meet an impossible path


@pytest.mark.parametrize("method", ["mean_field", "structured"])
def test_a_model_of_single_states_needs_no_fitting(method):
    model = pp_aif.GenerativeModel(A=[np.ones((1, 1))], B=[np.ones((1, 1, 1))])
    beliefs = pp_aif.infer_states(model, np.zeros((3, 1), dtype=int), method=method)
    assert_close(beliefs.free_energy, 0.0)  # p(o) = 1 and q is the only path
    assert_close(beliefs.marginals, [np.ones((3, 1))])
    assert beliefs.optimisation.converged and beliefs.optimisation.iterations == 0


def test_non_convergence_is_a_warning():
    model = pp_aif.GenerativeModel(
        A=[np.array([[0.9, 0.2], [0.1, 0.8]])], B=[np.array([[0.7, 0.4], [0.3, 0.6]])[:, :, None]]
    )
    with pytest.warns(ConvergenceWarning, match=r"did not converge in 2 iterations"):
        beliefs = pp_aif.infer_states(
            model, [[0], [1], [1]], method="mean_field", settings={"num_steps": 2}
        )
    assert not beliefs.optimisation.converged


def test_settings_errors_are_named():
    model = pp_aif.GenerativeModel(A=[np.eye(2)], B=[np.eye(2)[:, :, None]])
    with pytest.raises(ValueError, match=r"settings: unknown \['steps'\]"):
        pp_aif.infer_states(model, [[0]], method="structured", settings={"steps": 3})
    with pytest.raises(ValueError, match=r"elbo: 'magic'"):
        SVISettings(elbo="magic")
    with pytest.raises(ValueError, match=r"num_steps: must be an integer >= 1"):
        SVISettings(num_steps=0)
    with pytest.raises(ValueError, match=r"optimiser: 'lbfgs' needs the exact ELBO"):
        pp_aif.infer_states(
            model, [[0]], method="structured", settings={"elbo": "sampled", "optimiser": "lbfgs"}
        )
    with pytest.raises(ValueError, match=r"settings: method 'exact' takes no settings"):
        pp_aif.infer_states(model, [[0]], settings={"num_steps": 3})
    with pytest.raises(ValueError, match=r"mode: method 'mean_field' infers smoothing"):
        pp_aif.infer_states(model, [[0]], method="mean_field", mode="filtering")
    with pytest.raises(pp_aif.DataError, match=r"time step 1, modality 0: outcome 1"):
        pp_aif.infer_states(model, [[0], [1]], method="structured")


def test_fitting_leaves_the_callers_param_store_alone():
    import pyro

    pyro.clear_param_store()
    pyro.param("mine", torch.ones(2))
    model = pp_aif.GenerativeModel(
        A=[np.array([[0.9, 0.2], [0.1, 0.8]])], B=[np.eye(2)[:, :, None]]
    )
    pp_aif.infer_states(model, [[0], [1]], method="structured")
    assert list(pyro.get_param_store().keys()) == ["mine"]


# ---------------------------------------------------------------------------------------------
# the closed-form F the guides are optimised against, held to Pyro's TraceEnum_ELBO


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", ["mean_field", "structured"])
def test_the_closed_form_objective_is_pyros_enumerated_elbo(rng, shape, method):
    """At random guide parameters (not an optimum), on the posterior's support: the closed
    form that L-BFGS minimises equals TraceEnum_ELBO's loss of the same guide, 1e-10, and so
    do their gradients."""
    import pyro
    from pyro.infer import TraceEnum_ELBO

    from pp_aif.inference import variational as V
    from pp_aif.inference.exact import run_forward_filter
    from pp_aif.inference.inputs import Sequences
    from pp_aif.programs import pomdp

    arrays, model, observations, actions = make(rng, shape, 0.0, T=4)
    o = torch.as_tensor(observations)[None]
    a = torch.as_tensor(actions)[None]
    sequences = Sequences(o, a, ())
    result, inputs = run_forward_filter(model, sequences)
    smoothed, states, pairs = V.posterior_support(model, inputs, result)
    marginal = [q > 0 for q in V.factor_marginals(smoothed, 2)]
    supports = (marginal, states, pairs)
    transitions = list(inputs.transitions)
    if method == "mean_field":
        params = {
            f"q_logits_{f}": torch.as_tensor(rng.normal(size=(1, 4, S)))
            for f, S in enumerate(model.num_states)
        }
        guide = V._mean_field_guide(marginal, False, list(params.values()))
        params = {f"q_logits_{f}": 0 for f, S in enumerate(model.num_states) if S > 1}
    else:
        K = int(np.prod(model.num_states))
        params = {
            "q_initial": torch.as_tensor(rng.normal(size=(1, K))),
            "q_transitions": torch.as_tensor(rng.normal(size=(1, 3, K, K))),
        }
        guide = V._structured_guide(
            states[:, 0], pairs, False, (params["q_initial"], params["q_transitions"])
        )
    with pyro.get_param_store().scope():
        pyro.clear_param_store()
        elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
        loss = elbo.differentiable_loss(pomdp, guide, model, o[0], a[0])
        store = pyro.get_param_store()
        names = [n for n in params if n in store]
        expected = torch.autograd.grad(loss, [store[n].unconstrained() for n in names])
        values = {n: store[n].detach().clone().requires_grad_(True) for n in names}
    _, closed = V._read_guide(model, method, values, supports, sequences, transitions)
    ours = torch.autograd.grad(closed.sum(), [values[n] for n in names])
    assert_close(closed[0], loss.detach(), rtol=1e-10)
    for name, g, h in zip(names, ours, expected, strict=True):
        assert_close(g, h, atol=1e-10, msg=name)


@pytest.mark.parametrize("method", ["mean_field", "structured"])
def test_closed_form_fits_give_pyros_answers_one_sequence_at_a_time_or_batched(rng, method):
    """Fitted alone, the closed form follows Pyro's L-BFGS path: the same F (1e-6). Fitted in
    one batch of 5 (each sequence leaving it once converged): mean field the same F (1e-6);
    the structured guide, whose F approaches -ln p(o) only as its logits diverge, stops where
    L-BFGS's rule stops it, within 1e-5 nats of -ln p(o) and never more than 1e-6 above the
    F of Pyro's fit."""
    arrays = random_arrays(rng, (2, 2), (3, 2), (2, 1), zero_fraction=0.2)
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D)
    pairs = [sample_sequence(rng, arrays, 6) for _ in range(5)]
    observations = np.stack([o for o, _ in pairs])
    actions = np.stack([a for _, a in pairs])
    batch = pp_aif.infer_states(model, observations, actions, method=method)
    assert batch.optimisation.converged
    for n in range(5):
        o, a = observations[n], actions[n]
        pyro_fit = pp_aif.infer_states(model, o, a, method=method, settings={"objective": "pyro"})
        alone = pp_aif.infer_states(model, o, a, method=method)
        assert_close(alone.free_energy, pyro_fit.free_energy, atol=1e-6, reason="optimiser")
        if method == "mean_field":
            assert_close(batch.free_energy[n], pyro_fit.free_energy, atol=1e-6, reason="optimiser")
            for q, r in zip(batch.marginals, pyro_fit.marginals, strict=True):
                assert_close(q[n], r, atol=1e-3, reason="marginals near a flat optimum")
        else:
            log_evidence, _ = brute_force(arrays, o, a)
            gap = float(batch.free_energy[n]) + log_evidence
            assert -1e-10 <= gap <= 1e-5, gap
            assert float(batch.free_energy[n]) <= float(pyro_fit.free_energy) + 1e-6

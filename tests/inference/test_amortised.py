"""The amortised guide: its family holds the exact posterior, its F is the program's negative
ELBO, training lowers F to near -ln p(o), and every misuse is named."""

from __future__ import annotations

import math
from importlib import import_module

import numpy as np
import pyro
import pytest
import torch

import pp_aif
from pp_aif.errors import DataError
from pp_aif.inference.amortised import (
    AmortisedGuide,
    AmortisedTraining,
    _free_energy,
    joint_controls,
    joint_transition_table,
    message_chain_beliefs,
    prepare,
    pyro_guide,
    random_sequences,
    scaled_chain_beliefs,
    train_amortised_guide,
)
from pp_aif.inference.exact import run_forward_filter
from pp_aif.inference.inputs import prepare_sequences
from pp_aif.inference.variational import chain_beliefs, posterior_support
from pp_aif.ops.contractions import outer
from pp_aif.ops.free_energy import chain_joint_marginals, joint_log_transitions
from pp_aif.ops.hmm import factor_marginals, smoothed_log_space
from pp_aif.programs import pomdp
from tests.common import assert_close, brute_force, random_arrays, sample_sequence

SHAPES = [
    ((3,), (4,), (2,)),
    ((2, 2), (3, 2), (2, 1)),
    ((2, 1, 2), (3, 2), (2, 1, 2)),
]


@pytest.fixture(scope="module")
def two_factor():
    return pp_aif.load_task("two_factor").model


@pytest.fixture(scope="module")
def trained(two_factor):
    """A small guide trained briefly on the two-factor model (seeded)."""
    return train_amortised_guide(
        two_factor, steps=150, batch_size=32, max_length=8, hidden=16, validation=64, every=50
    )


def _case(rng, shape, zero_fraction, T, N=3):
    arrays = random_arrays(rng, *shape, zero_fraction=zero_fraction)
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D)
    drawn = [sample_sequence(rng, arrays, T) for _ in range(N)]
    observations = np.stack([o for o, _ in drawn])
    actions = np.stack([a for _, a in drawn]).reshape(N, T - 1, len(shape[0]))
    return arrays, model, observations, actions


def _chain(model, sequences, messages):
    """(prepared, init, trans): the guide's chain for these messages (N, T, K)."""
    prepared = prepare(model, sequences)
    return (prepared, *prepared.logits(model, messages))


def _torch_rng(rng) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**31)))


@pytest.mark.parametrize("shape", SHAPES)
def test_joint_transition_table_is_the_factors_product(rng, shape):
    """Row joint_controls(u) of the table is p(s_t+1 | s_t, u) over the joint state: the
    factors' chosen B multiplied (``joint_log_transitions`` of ``scheme_inputs``)."""
    _, model, observations, actions = _case(rng, shape, 0.4, T=5, N=4)
    sequences = prepare_sequences(model, observations, actions)
    inputs = run_forward_filter(model, sequences)[1]
    table = joint_transition_table(model)
    assert table.shape == (math.prod(shape[2]), math.prod(shape[0]), math.prod(shape[0]))
    chosen = table[joint_controls(model, sequences.actions)]
    expected = torch.exp(joint_log_transitions(list(inputs.transitions)))
    assert_close(chosen, expected, atol=1e-15, reason="products of probabilities")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("zero_fraction", [0.0, 0.4])
def test_exact_messages_give_the_exact_posterior(rng, shape, zero_fraction):
    """With m_t = ln beta_t the chain is the posterior: F = -ln p(o) and the marginals are
    brute force's (so the gap of a trained guide is its network's alone), by the general
    chain's F, by the closed form from the messages and in probability space."""
    arrays, model, observations, actions = _case(rng, shape, zero_fraction, T=4)
    sequences = prepare_sequences(model, observations, actions)
    inputs = run_forward_filter(model, sequences)[1]
    _, log_backward, _ = smoothed_log_space(
        inputs.log_likelihood, list(inputs.transitions), list(inputs.initial)
    )
    N, T = observations.shape[:2]
    messages = log_backward.reshape(N, T, -1)
    messages = torch.where(torch.isfinite(messages), messages, -50.0)  # off the support anyway
    prepared, init, trans = _chain(model, sequences, messages)
    # ahead: p(o_t | s) > 0 and beta_t(s) > 0, from the exact backward pass in log space
    expected_ahead = torch.isfinite(inputs.log_likelihood) & torch.isfinite(log_backward)
    assert torch.equal(prepared.ahead, expected_ahead.reshape(N, T, -1))
    general = chain_beliefs(model, init, trans, inputs.log_likelihood, list(inputs.transitions))
    closed = message_chain_beliefs(init, trans, messages)
    scaled = scaled_chain_beliefs(model, prepared, messages)
    assert not bool(scaled[2].any())
    shape = model.num_states
    routes = [general] + [
        (factor_marginals(j.reshape(N, T, *shape), 2), F) for j, F, *_ in (closed, scaled)
    ]
    for marginals, free_energy in routes:
        for n in range(N):
            log_evidence, expected = brute_force(arrays, observations[n], actions[n])
            assert_close(free_energy[n], -log_evidence)
            assert_close([q[n] for q in marginals], expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_chain_keeps_to_the_posteriors_support(rng, shape):
    """Whatever the messages, the guide's chain puts mass on exactly the exact posterior's
    support: the joint states and the pairs of consecutive states (``posterior_support``)."""
    _, model, observations, actions = _case(rng, shape, 0.5, T=6, N=6)
    sequences = prepare_sequences(model, observations, actions)
    _, states, pairs = posterior_support(model, *run_forward_filter(model, sequences)[::-1])
    assert not bool(states.all()), "a case with structural zeros in the posterior"
    N, T, K = states.shape
    messages = torch.randn(N, T, K, dtype=model.dtype, generator=_torch_rng(rng))
    prepared, init, trans = _chain(model, sequences, messages)
    first, conditionals = torch.softmax(init, -1), torch.softmax(trans, -1)
    joint = chain_joint_marginals(first, conditionals)
    assert torch.equal(joint > 0, states)
    assert torch.equal(joint[:, :-1, :, None] * conditionals > 0, pairs)
    assert torch.equal(scaled_chain_beliefs(model, prepared, messages)[0] > 0, states)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", [1, 5])
def test_closed_forms_from_messages_are_the_chains_free_energy(rng, shape, T):
    """message_chain_beliefs (F from the messages and the rows' normalisers) and
    scaled_chain_beliefs (the same in probability space) equal the general chain's F and
    marginals (``variational.chain_beliefs``, a sum over every pair); the first with the same
    gradients with respect to the messages."""
    _, model, observations, actions = _case(rng, shape, 0.4, T=T, N=5)
    sequences = prepare_sequences(model, observations, actions)
    N, K = observations.shape[0], math.prod(shape[0])
    messages = 3 * torch.randn(N, T, K, dtype=model.dtype, generator=_torch_rng(rng))
    messages.requires_grad_(True)
    prepared, init, trans = _chain(model, sequences, messages)
    inputs = run_forward_filter(model, sequences)[1]
    general = chain_beliefs(
        model, init, trans if T > 1 else None, inputs.log_likelihood, list(inputs.transitions)
    )
    joint = outer(*general[0], batch_dims=2).reshape(N, T, K) if len(shape[0]) == 1 else None
    closed = message_chain_beliefs(init, trans, messages)
    with torch.no_grad():
        scaled = scaled_chain_beliefs(model, prepared, messages)
    assert not bool(scaled[2].any())
    for route in (closed, scaled):
        assert_close(route[1], general[1], atol=1e-10, reason="F of a few nats, two routes")
        marginals = factor_marginals(route[0].reshape(N, T, *model.num_states), 2)
        assert_close(marginals, general[0], atol=1e-12, reason="the same chain's marginals")
    assert_close(scaled[0], closed[0], atol=1e-12, reason="the same chain's joint marginals")
    if joint is not None:
        assert_close(closed[0], joint, atol=1e-12, reason="one factor: its marginals")
    (theirs,) = torch.autograd.grad(general[1].sum(), messages, retain_graph=True)
    (ours,) = torch.autograd.grad(closed[1].sum(), messages)
    assert_close(ours, theirs, atol=1e-10, reason="gradients of the same F")


def test_probability_space_underflow_is_recomputed_in_log_space(two_factor):
    """Messages that span thousands of nats within a step underflow the probability-space
    route's row normalisers: those sequences are marked, and infer_states gives them the log
    space's answer (equal to the general chain's F), the others the probability space's."""
    generator = torch.Generator().manual_seed(5)
    pyro.set_rng_seed(5)
    sequences = random_sequences(two_factor, 6, 7, generator)
    N, T, K = 6, 7, 6
    guide = AmortisedGuide(two_factor, hidden=8, seed=1)
    with torch.no_grad():
        messages = guide(sequences.observations, sequences.actions)
        # sequences 1 and 4: one state of each step far above the others
        messages[[1, 4]] += 2000.0 * (torch.arange(K) == 0)
        prepared, init, trans = _chain(two_factor, sequences, messages)
        _, scaled, underflow = scaled_chain_beliefs(two_factor, prepared, messages)
        expected = message_chain_beliefs(init, trans, messages)
    # the others are as they were; sequence 1 underflows (4 need not: its state 0 may lead
    # nowhere), and its answer in probability space is wrong
    assert underflow[[0, 1, 2, 3, 5]].tolist() == [False, True, False, False, False]
    assert bool(torch.isfinite(expected[1]).all())
    assert not torch.isclose(scaled[1], expected[1][1], rtol=1e-6)
    original = guide.forward
    guide.forward = lambda observations, actions: messages
    try:
        beliefs = pp_aif.infer_states(
            two_factor, sequences.observations, sequences.actions, method="amortised", guide=guide
        )
    finally:
        guide.forward = original
    assert_close(beliefs.free_energy, expected[1], atol=1e-9, reason="F of thousands of nats")
    marginals = factor_marginals(expected[0].reshape(N, T, *two_factor.num_states), 2)
    assert_close(beliefs.marginals, marginals, atol=1e-12, reason="the same chain")


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_closed_form_free_energy_is_pyros_negative_elbo(rng, shape):
    """The closed-form F of the amortised guide (the training loss) equals Pyro's enumerated
    TraceEnum_ELBO of the same guide on the program, with the same gradients."""
    _, model, observations, actions = _case(rng, shape, 0.3, T=5, N=4)
    sequences = prepare_sequences(model, observations, actions)
    guide = AmortisedGuide(model, hidden=8, seed=3)
    closed = _free_energy(model, guide, sequences)[1].sum()
    closed_gradients = torch.autograd.grad(closed, list(guide.parameters()))
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    with pyro.get_param_store().scope():
        loss = elbo.differentiable_loss(
            pomdp, pyro_guide(guide), model, sequences.observations, sequences.actions
        )
        pyro_gradients = torch.autograd.grad(loss, list(guide.parameters()))
    assert_close(loss, closed, atol=1e-10, reason="sums of 4 sequences' F of about 10 nats")
    for ours, theirs in zip(closed_gradients, pyro_gradients, strict=True):
        assert_close(ours, theirs, atol=1e-10, reason="gradients of the same sums")


def test_both_objectives_train_alike(two_factor):
    """SVI on the closed form and on TraceEnum_ELBO take the same steps (same batches, equal
    losses and gradients)."""
    settings = dict(steps=4, batch_size=8, max_length=4, hidden=8, validation=0)
    _, closed = train_amortised_guide(two_factor, **settings)
    _, pyro_loss = train_amortised_guide(two_factor, objective="pyro", **settings)
    assert_close(closed["loss"], pyro_loss["loss"], atol=1e-10, reason="nats per step")


def test_training_brings_f_near_the_evidence(two_factor, trained):
    """On held-out sequences the trained guide's F is above -ln p(o) (a bound) and within
    0.02 nats per step of it; it is far below the untrained guide's."""
    guide, record = trained
    generator = torch.Generator().manual_seed(123)
    pyro.set_rng_seed(123)
    held_out = random_sequences(two_factor, 200, 8, generator)
    exact = pp_aif.infer_states(two_factor, held_out.observations, held_out.actions)
    beliefs = pp_aif.infer_states(
        two_factor, held_out.observations, held_out.actions, method="amortised", guide=guide
    )
    gap = beliefs.free_energy + exact.log_evidence
    assert bool((gap >= -1e-10).all()), "F below -ln p(o)"
    per_step = float(gap.mean()) / 8
    assert per_step < 0.02, per_step
    untrained = pp_aif.infer_states(
        two_factor,
        held_out.observations,
        held_out.actions,
        method="amortised",
        guide=AmortisedGuide(two_factor, hidden=16),
    )
    assert float((untrained.free_energy + exact.log_evidence).mean()) / 8 > 3 * per_step
    assert record["validation"][-1][0] == 150 and len(record["loss"]) == 150
    assert record["validation"][-1][1] < record["validation"][0][1]


def test_infer_states_shapes_and_marginals(two_factor, trained):
    guide, _ = trained
    generator = torch.Generator().manual_seed(0)
    sequences = random_sequences(two_factor, 6, 5, generator)
    observations = sequences.observations.reshape(2, 3, 5, 2)
    actions = sequences.actions.reshape(2, 3, 4, 2)
    beliefs = pp_aif.infer_states(
        two_factor, observations, actions, method="amortised", guide=guide
    )
    assert beliefs.method == "amortised" and beliefs.log_evidence is None
    assert beliefs.free_energy.shape == (2, 3) and beliefs.optimisation is None
    assert [tuple(q.shape) for q in beliefs.marginals] == [(2, 3, 5, 3), (2, 3, 5, 2)]
    for q in beliefs.marginals:
        assert_close(q.sum(-1), torch.ones(q.shape[:-1], dtype=q.dtype))
    one = pp_aif.infer_states(
        two_factor, observations[1, 2], actions[1, 2], method="amortised", guide=guide
    )
    assert_close(one.free_energy, beliefs.free_energy[1, 2])
    single_step = pp_aif.infer_states(
        two_factor, observations[0, 0, :1], method="amortised", guide=guide
    )
    assert single_step.marginals[0].shape == (1, 3)


def test_misuse_is_named(two_factor, trained):
    guide, _ = trained
    observations = torch.tensor([[0, 0], [1, 1]])
    actions = torch.tensor([[2, 0]])
    with pytest.raises(ValueError, match="needs a trained guide"):
        pp_aif.infer_states(two_factor, observations, actions, method="amortised")
    with pytest.raises(ValueError, match="only method 'amortised' takes a guide"):
        pp_aif.infer_states(two_factor, observations, actions, guide=guide)
    with pytest.raises(ValueError, match="smoothing posteriors only"):
        pp_aif.infer_states(
            two_factor, observations, actions, method="amortised", guide=guide, mode="filtering"
        )
    with pytest.raises(ValueError, match="takes no settings"):
        pp_aif.infer_states(
            two_factor, observations, actions, method="amortised", guide=guide, settings={}
        )
    with pytest.raises(TypeError, match="needs an AmortisedGuide"):
        pp_aif.infer_states(two_factor, observations, actions, method="amortised", guide="g")
    other = import_module("pp_aif.tasks.two_factor").build(location_accuracy=0.7).model
    with pytest.raises(ValueError, match=r"trained for a model with A, B and D \(digest\)"):
        pp_aif.infer_states(other, observations, actions, method="amortised", guide=guide)
    tmaze = pp_aif.load_task("tmaze").model
    with pytest.raises(ValueError, match="trained for a model with num_states"):
        guide.check(tmaze)
    # a sequence the model rules out: the exact pass names it, as for every method
    impossible = torch.tensor([[0, 1], [0, 0]])  # a cue, so the centre; stay; no cue
    with pytest.raises(DataError, match="has probability 0 under the model"):
        pp_aif.infer_states(
            two_factor, impossible, torch.tensor([[1, 0]]), method="amortised", guide=guide
        )
    with pytest.raises(ValueError, match="max_length"):
        AmortisedTraining(min_length=5, max_length=3)
    with pytest.raises(ValueError, match="objective"):
        AmortisedTraining(objective="sampled")


def test_save_and_load(tmp_path, two_factor, trained):
    guide, _ = trained
    path = guide.save(tmp_path / "guides" / "two_factor.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["two_factor.pt"]  # no partial file
    loaded = AmortisedGuide.load(path, two_factor)
    sequences = random_sequences(two_factor, 4, 6, torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = _free_energy(two_factor, guide, sequences)[1]
        after = _free_energy(two_factor, loaded, sequences)[1]
    assert torch.equal(before, after)
    other = import_module("pp_aif.tasks.two_factor").build(cue_validity=0.9).model
    with pytest.raises(ValueError, match="trained for a model"):
        AmortisedGuide.load(path, other)
    (tmp_path / "junk.pt").write_text("not a guide")
    with pytest.raises(ValueError, match="is not a saved amortised guide"):
        AmortisedGuide.load(tmp_path / "junk.pt", two_factor)
    with pytest.raises(FileNotFoundError, match="no file"):
        AmortisedGuide.load(tmp_path / "absent.pt", two_factor)

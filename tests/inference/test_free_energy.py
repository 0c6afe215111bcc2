"""Variational free energy against brute force over every state path; the exact posterior (as a
Markov chain) reaches -ln p(o); every other belief lies above it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import pp_aif
from tests.common import assert_close, brute_force, random_columns, sample_sequence
from tests.inference.cases import random_case

SHAPES = [
    ((3,), (4,), (2,)),
    ((2, 3), (3, 2), (2, 1)),
    ((2, 2, 2), (3, 2), (2, 1, 2)),
]


def brute_force_free_energy(arrays, observations, actions, path_probability):
    """sum over every joint path of q(path) (ln q(path) - ln p(o, path))."""
    T = len(observations)
    joint_states = list(itertools.product(*[range(s) for s in arrays.num_states]))
    total = 0.0
    for path in itertools.product(range(len(joint_states)), repeat=T):
        q = path_probability(path)
        if q == 0:
            continue
        states = [joint_states[k] for k in path]
        with np.errstate(divide="ignore"):
            log_p = sum(np.log(d[states[0][f]]) for f, d in enumerate(arrays.D))
            for t in range(T):
                if t > 0:
                    log_p += sum(
                        np.log(b[states[t][f], states[t - 1][f], actions[t - 1][f]])
                        for f, b in enumerate(arrays.B)
                    )
                log_p += sum(
                    np.log(a[(observations[t][m], *states[t])]) for m, a in enumerate(arrays.A)
                )
        total += q * (np.log(q) - log_p)
    return total


def make(rng, shape, zero_fraction, T=3):
    return random_case(rng, shape, T=T, zero_fraction=zero_fraction)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("zero_fraction", [0.0, 0.4])
def test_exact_posterior_reaches_minus_log_evidence(rng, shape, zero_fraction):
    arrays, model, observations, actions = make(rng, shape, zero_fraction)
    log_evidence, marginals = brute_force(arrays, observations, actions)
    chain = pp_aif.posterior_chain(model, observations, actions)
    assert_close(pp_aif.free_energy(model, observations, actions, beliefs=chain), -log_evidence)
    assert_close(chain.marginals, marginals)


@pytest.mark.parametrize("shape", SHAPES)
def test_chain_free_energy_equals_brute_force(rng, shape):
    arrays, model, observations, actions = make(rng, shape, 0.0)
    K = int(np.prod(shape[0]))
    initial = random_columns(rng, (K,))
    conditionals = np.stack([random_columns(rng, (K, K)).T for _ in range(2)])  # rows sum to 1
    chain = pp_aif.ChainBeliefs(torch.as_tensor(initial), torch.as_tensor(conditionals), shape[0])

    def probability(path):
        q = initial[path[0]]
        for t in range(1, len(path)):
            q *= conditionals[t - 1, path[t - 1], path[t]]
        return q

    expected = brute_force_free_energy(arrays, observations, actions, probability)
    value = pp_aif.free_energy(model, observations, actions, beliefs=chain)
    assert_close(value, expected)
    assert value >= -brute_force(arrays, observations, actions)[0]


@pytest.mark.parametrize("shape", SHAPES)
def test_mean_field_free_energy_equals_brute_force(rng, shape):
    arrays, model, observations, actions = make(rng, shape, 0.0)
    marginals = [random_columns(rng, (s, 3)).T for s in shape[0]]
    joint_states = list(itertools.product(*[range(s) for s in shape[0]]))

    def probability(path):
        return np.prod(
            [
                marginals[f][t, joint_states[k][f]]
                for t, k in enumerate(path)
                for f in range(len(shape[0]))
            ]
        )

    expected = brute_force_free_energy(arrays, observations, actions, probability)
    assert_close(pp_aif.free_energy(model, observations, actions, beliefs=marginals), expected)


def test_mean_field_is_strictly_above_when_observations_couple_factors(rng):
    arrays, model, observations, actions = make(rng, ((2, 3), (3, 2), (2, 1)), 0.0)
    exact = pp_aif.infer_states(model, observations, actions)
    mean_field = pp_aif.free_energy(model, observations, actions, beliefs=exact)
    assert mean_field > -exact.log_evidence + 1e-6


def test_batched_free_energy(rng):
    arrays, model, _, _ = make(rng, SHAPES[1], 0.3)
    pairs = [sample_sequence(rng, arrays, 3) for _ in range(6)]
    observations = np.stack([p[0] for p in pairs]).reshape(2, 3, 3, 2)
    actions = np.stack([p[1] for p in pairs]).reshape(2, 3, 2, 2)
    chain = pp_aif.posterior_chain(model, observations, actions)
    value = pp_aif.free_energy(model, observations, actions, beliefs=chain)
    assert value.shape == (2, 3)
    assert_close(value, -pp_aif.infer_states(model, observations, actions).log_evidence)


def test_beliefs_with_mass_on_impossible_states_have_infinite_free_energy():
    model = pp_aif.GenerativeModel(np.eye(2), np.eye(2)[:, :, None])
    wrong = [np.array([[0.0, 1.0], [0.0, 1.0]])]
    assert pp_aif.free_energy(model, np.array([[0], [0]]), beliefs=wrong) == torch.inf


def test_bad_beliefs_are_named(rng):
    arrays, model, observations, actions = make(rng, SHAPES[1], 0.0)
    with pytest.raises(pp_aif.DataError, match=r"beliefs\[1\]: shape \(3, 2\); expected"):
        pp_aif.free_energy(
            model, observations, actions, beliefs=[np.full((3, 2), 0.5), np.full((3, 2), 0.5)]
        )
    with pytest.raises(pp_aif.DataError, match=r"beliefs\[0\]: the distribution at \(1,\)"):
        pp_aif.free_energy(
            model,
            observations,
            actions,
            beliefs=[np.array([[0.5, 0.5], [1.0, 1.0], [0.5, 0.5]]), np.full((3, 3), 1 / 3)],
        )


def test_exact_beliefs_report_their_free_energy(rng):
    arrays, model, observations, actions = make(rng, SHAPES[1], 0.0)
    beliefs = pp_aif.infer_states(model, observations, actions)
    chain = pp_aif.posterior_chain(model, observations, actions)
    assert_close(
        beliefs.free_energy, pp_aif.free_energy(model, observations, actions, beliefs=chain)
    )

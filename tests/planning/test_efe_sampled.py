"""Sampled expected free energy (Pyro Predictive rollouts, Rao-Blackwellised) against the exact
terms: within 4 standard errors on fixed seeds, and standard errors shrinking as 1/sqrt(K)."""

from __future__ import annotations

import pytest
import torch

import pp_aif
from tests.common import random_arrays, random_columns

TERMS = ("G", "risk", "ambiguity", "epistemic", "pragmatic", "novelty")


def make(rng, num_states, num_outcomes, num_controls, horizon, zero_fraction=0.0):
    arrays = random_arrays(rng, num_states, num_outcomes, num_controls, zero_fraction)
    model = pp_aif.GenerativeModel(
        arrays.A,
        arrays.B,
        C=[rng.normal(size=o) * 2 for o in num_outcomes],
        D=arrays.D,
        pA=[1 + a * 3 for a in arrays.A],
        pB=[1 + b * 3 for b in arrays.B],
        policies=pp_aif.construct_policies(num_controls, horizon),
    )
    beliefs = [random_columns(rng, (s,), zero_fraction) for s in num_states]
    return model, beliefs


@pytest.mark.parametrize(
    "shape, horizon",
    [(((3,), (4,), (2,)), 1), (((2, 3), (3, 2), (2, 2)), 2), (((2, 2), (2, 3, 2), (3, 1)), 3)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_within_four_standard_errors(rng, shape, horizon, seed):
    model, beliefs = make(rng, *shape, horizon, zero_fraction=0.3)
    exact = pp_aif.expected_free_energy(model, beliefs)
    sampled = pp_aif.expected_free_energy(
        model, beliefs, method="sampled", num_samples=2000, seed=seed
    )
    assert exact.stderr is None and sampled.method == "sampled"
    for name in TERMS:
        difference = (getattr(sampled, name) - getattr(exact, name)).abs()
        bound = 4 * getattr(sampled.stderr, name) + 1e-10
        assert (difference <= bound).all(), (name, difference, bound)


def test_standard_error_shrinks_as_one_over_root_k(rng):
    model, beliefs = make(rng, (2, 3), (3, 2), (2, 2), 2)
    small = pp_aif.expected_free_energy(model, beliefs, method="sampled", num_samples=500, seed=3)
    large = pp_aif.expected_free_energy(model, beliefs, method="sampled", num_samples=8000, seed=4)
    for name in TERMS:
        ratio = (getattr(small.stderr, name) / getattr(large.stderr, name)).median()
        assert 3.2 <= ratio <= 4.8, (name, ratio)  # sqrt(8000 / 500) = 4


def test_sampled_is_batched(rng):
    model, _ = make(rng, (2, 3), (3, 2), (2, 2), 1)
    beliefs = [random_columns(rng, (s, 4)).T for s in (2, 3)]
    sampled = pp_aif.expected_free_energy(model, beliefs, method="sampled", num_samples=50, seed=0)
    assert sampled.G.shape == sampled.stderr.G.shape == (4, 4)
    assert torch.isfinite(sampled.G).all()


def test_sampled_needs_two_samples(rng):
    model, beliefs = make(rng, (2,), (2,), (2,), 1)
    with pytest.raises(ValueError, match="num_samples: needs at least 2"):
        pp_aif.expected_free_energy(model, beliefs, method="sampled", num_samples=1)

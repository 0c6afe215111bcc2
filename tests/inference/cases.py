"""A random model and a sequence sampled from it, for the inference tests."""

from __future__ import annotations

import pp_aif
from tests.common import random_arrays, sample_sequence


def random_case(rng, shape, *, T: int, zero_fraction: float = 0.0):
    """shape = (num_states, num_outcomes, num_controls). Returns (arrays, model, observations
    (T, M), actions (T-1, F)); the arrays are the plain numpy oracle's copy of the model."""
    arrays = random_arrays(rng, *shape, zero_fraction=zero_fraction)
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D)
    observations, actions = sample_sequence(rng, arrays, T)
    return arrays, model, observations, actions

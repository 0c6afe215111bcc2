"""The Pyro program is the model it claims to be: its log joint equals the brute-force log joint."""

from __future__ import annotations

import itertools

import numpy as np
import pyro
import pytest
import torch

import pp_aif
from pp_aif.programs import observation_site, pomdp, state_site
from tests.common import assert_close, random_arrays, sample_sequence


def log_joint_numpy(arrays, states, observations, actions):
    total = sum(np.log(d[states[0][f]]) for f, d in enumerate(arrays.D))
    for t in range(len(observations)):
        if t > 0:
            total += sum(
                np.log(b[states[t][f], states[t - 1][f], actions[t - 1][f]])
                for f, b in enumerate(arrays.B)
            )
        total += sum(np.log(a[(observations[t][m], *states[t])]) for m, a in enumerate(arrays.A))
    return total


@pytest.mark.parametrize("batched", [False, True])
def test_log_joint_of_every_path(rng, batched):
    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 2))
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D)
    observations, actions = sample_sequence(rng, arrays, T=2)
    obs_t, act_t = torch.as_tensor(observations), torch.as_tensor(actions)
    if batched:
        obs_t, act_t = obs_t[None], act_t[None]
    joint_states = list(itertools.product(range(2), range(3)))
    for path in itertools.product(joint_states, repeat=2):
        data = {
            state_site(f, t): torch.tensor([path[t][f]] if batched else path[t][f])
            for t in range(2)
            for f in range(2)
        }
        conditioned = pyro.condition(pomdp, data=data)
        trace = pyro.poutine.trace(conditioned).get_trace(model, obs_t, act_t)
        assert_close(trace.log_prob_sum(), log_joint_numpy(arrays, path, observations, actions))


def test_sampling_the_program_matches_the_model(rng):
    """Draws of o_0 from the program have the model's marginal p(o_0) = A D (within 4 s.e.)."""
    arrays = random_arrays(rng, (2, 2), (3,), (1, 1))
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D)
    n = 20000
    trace = pyro.poutine.trace(pomdp).get_trace(model, num_steps=1, num_sequences=n)
    draws = trace.nodes[observation_site(0, 0)]["value"].numpy()
    frequencies = np.bincount(draws, minlength=3) / n
    expected = np.einsum("oij,i,j->o", arrays.A[0], arrays.D[0], arrays.D[1])
    stderr = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(frequencies - expected) <= 4 * stderr), (frequencies, expected, stderr)

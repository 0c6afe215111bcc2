"""Bad input to infer_states: one clear DataError naming the sequence, step and modality/factor."""

from __future__ import annotations

import re

import numpy as np
import pytest

import pp_aif
from pp_aif import DataError
from tests.common import random_arrays, sample_sequence


@pytest.fixture
def setup(rng):
    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 1))
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D)
    observations, actions = sample_sequence(rng, arrays, T=4)
    return model, observations, actions


def raises(match):
    return pytest.raises(DataError, match=re.escape(match))


@pytest.mark.parametrize("method", ["exact", "enumerate"])
def test_observation_out_of_range(setup, method):
    model, observations, actions = setup
    observations = observations.copy()
    observations[2, 1] = 2
    with raises("observations: time step 2, modality 1 has value 2; modality 1 takes values 0..1"):
        pp_aif.infer_states(model, observations, actions, method=method)


def test_negative_observation_in_a_batch_names_the_sequence(setup):
    model, observations, actions = setup
    batch = np.stack([observations] * 6).reshape(2, 3, 4, 2)
    batch[1, 2, 3, 0] = -1
    with raises("observations: sequence (1, 2), time step 3, modality 0 has value -1"):
        pp_aif.infer_states(model, batch, actions)


def test_action_out_of_range(setup):
    model, observations, actions = setup
    actions = actions.copy()
    actions[1, 0] = 5
    with raises("actions: time step 1, factor 0 has value 5; factor 0 takes values 0..1"):
        pp_aif.infer_states(model, observations, actions)


def test_observations_without_modality_axis(setup):
    model, observations, actions = setup
    with raises("observations: shape (4,); expected (T, 2) or (*batch, T, 2)"):
        pp_aif.infer_states(model, observations[:, 0], actions)


def test_one_modality_hint(rng):
    arrays = random_arrays(rng, (2,), (3,), (1,))
    model = pp_aif.GenerativeModel(arrays.A, arrays.B)
    with raises("add a trailing axis: observations[..., None]"):
        pp_aif.infer_states(model, np.array([0, 1, 2]))


def test_actions_of_wrong_length(setup):
    model, observations, actions = setup
    with raises("actions: shape (4, 2); expected (3, 2) or (*batch, 3, 2)"):
        pp_aif.infer_states(model, observations, np.zeros((4, 2), dtype=int))


def test_missing_actions_when_controls_exist(setup):
    model, observations, _ = setup
    with raises("actions: missing; factors [0] have more than one control"):
        pp_aif.infer_states(model, observations)


def test_action_batch_disagrees(setup):
    model, observations, actions = setup
    with raises("actions: batch shape (3,) does not match the observations' batch shape (2,)"):
        pp_aif.infer_states(model, np.stack([observations] * 2), np.stack([actions] * 3))


def test_non_integer_observations(setup):
    model, observations, actions = setup
    with raises("observations: entry (1, 0) is 0.5, not an integer index"):
        pp_aif.infer_states(
            model, np.where(np.arange(8).reshape(4, 2) == 2, 0.5, observations), actions
        )
    with raises("observations: must be integers, got dtype <U1"):
        pp_aif.infer_states(model, np.full((4, 2), "a"), actions)


def test_integral_floats_are_accepted(setup):
    model, observations, actions = setup
    a = pp_aif.infer_states(model, observations.astype(float), actions)
    b = pp_aif.infer_states(model, observations, actions)
    assert float(a.log_evidence) == float(b.log_evidence)


def test_empty_sequence(setup):
    model, _, _ = setup
    with raises("observations: shape (0, 2) has an empty axis"):
        pp_aif.infer_states(model, np.zeros((0, 2), dtype=int))


@pytest.mark.parametrize("method", ["exact", "enumerate"])
def test_impossible_observation_names_step_and_modality(method):
    # factor 0: a light that is on or off and never changes; modality 0 reports it exactly.
    A = np.eye(2)
    B = np.eye(2)[:, :, None]
    model = pp_aif.GenerativeModel(A, B)
    observations = np.array([[0], [0], [1], [0]])
    with raises(
        "observations: time step 2, modality 0: outcome 1 has probability 0 under the model"
    ):
        pp_aif.infer_states(model, observations, method=method)


def test_impossible_in_combination_names_the_second_modality():
    A0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    A1 = np.array([[0.5, 1.0], [0.5, 0.0]])  # outcome 1 of modality 1 is impossible in state 1
    model = pp_aif.GenerativeModel([A0, A1], np.eye(2)[:, :, None])
    batch = np.array([[[0, 1], [0, 0]], [[1, 0], [1, 1]]])
    with raises(
        "observations: sequence 1, time step 1, modality 1: outcome 1 has probability 0 "
        "under the model together with the outcomes of modalities 0..0"
    ):
        pp_aif.infer_states(model, batch)


def test_impossible_because_of_D():
    model = pp_aif.GenerativeModel(np.eye(2), np.eye(2)[:, :, None], D=np.array([1.0, 0.0]))
    with raises("time step 0, modality 0: outcome 1 has probability 0"):
        pp_aif.infer_states(model, np.array([[1]]))


def test_unknown_method_and_mode(setup):
    model, observations, actions = setup
    with pytest.raises(ValueError, match="method: 'svi' is not one of"):
        pp_aif.infer_states(model, observations, actions, method="svi")
    with pytest.raises(ValueError, match="mode: 'predict' is not one of"):
        pp_aif.infer_states(model, observations, actions, mode="predict")

"""Learning: Dirichlet counts against pymdp's legacy learning functions and a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest

import pp_aif
from tests.common import (
    assert_close,
    pymdp_objects,
    random_arrays,
    sample_sequence,
)

legacy_learning = pytest.importorskip("pymdp.legacy.learning")


@pytest.mark.parametrize("shape", [((3,), (4,), (2,)), ((2, 3), (3, 2), (2, 2))])
def test_counts_equal_pymdp_legacy_summed_over_steps(rng, shape):
    num_states, num_outcomes, num_controls = shape
    arrays = random_arrays(rng, num_states, num_outcomes, num_controls)
    pA = [1 + a * 3 for a in arrays.A]
    pB = [1 + b * 3 for b in arrays.B]
    pD = [1 + d for d in arrays.D]
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D, pA=pA, pB=pB, pD=pD)
    observations, actions = sample_sequence(rng, arrays, T=5)
    learned = pp_aif.learn(model, observations, actions, learning_rate=0.7)

    marginals = [q.numpy() for q in pp_aif.infer_states(model, observations, actions).marginals]
    qA, qB = pymdp_objects(pA), pymdp_objects(pB)
    for t in range(5):
        qs_t = pymdp_objects([q[t] for q in marginals])
        qA = legacy_learning.update_obs_likelihood_dirichlet(
            qA, pymdp_objects(arrays.A), list(observations[t]), qs_t, lr=0.7
        )
        if t > 0:
            qB = legacy_learning.update_state_likelihood_dirichlet(
                qB,
                pymdp_objects(arrays.B),
                list(actions[t - 1]),
                qs_t,
                pymdp_objects([q[t - 1] for q in marginals]),
                lr=0.7,
            )
    qD = legacy_learning.update_state_prior_dirichlet(
        pymdp_objects(pD), pymdp_objects([q[0] for q in marginals]), lr=0.7
    )
    assert_close(list(learned.pA), list(qA))
    assert_close(list(learned.pB), list(qB))
    assert_close(list(learned.pD), list(qD))
    for a, p in zip(learned.A, learned.pA, strict=True):
        assert_close(a, p / p.sum(0, keepdims=True))


def test_hand_computed_case():
    # one factor of 2 states that never changes, seen perfectly: after observing outcome 1
    # twice, pA's column of state 1 gains 2 at outcome 1 and pD gains 1 at state 1.
    A = np.eye(2)
    B = np.eye(2)[:, :, None]
    model = pp_aif.GenerativeModel(
        A, B, pA=np.ones((2, 2)), pB=np.ones((2, 2, 1)), pD=np.array([1.0, 1.0])
    )
    learned = pp_aif.learn(model, np.array([[1], [1]]))
    assert_close(learned.pA[0], np.array([[1.0, 1.0], [1.0, 3.0]]))
    assert_close(learned.pB[0][:, :, 0], np.array([[1.0, 1.0], [1.0, 2.0]]))
    assert_close(learned.pD[0], np.array([1.0, 2.0]))
    assert_close(learned.A[0], np.array([[1 / 2, 1 / 4], [1 / 2, 3 / 4]]))
    assert_close(learned.D[0], np.array([1 / 3, 2 / 3]))


def test_forgetting_and_structural_zeros(rng):
    A = np.array([[1.0, 0.5], [0.0, 0.5]])
    model = pp_aif.GenerativeModel(A, np.eye(2)[:, :, None], pA=np.array([[4.0, 2.0], [0.0, 2.0]]))
    learned = pp_aif.learn(
        model, np.array([[0]]), learning_rate=2.0, forgetting=0.5, parameters=["A"]
    )
    posterior = pp_aif.infer_states(model, np.array([[0]])).marginals[0][0].numpy()
    expected = 0.5 * np.array([[4.0, 2.0], [0.0, 2.0]])
    expected[0] += 2.0 * posterior
    assert_close(learned.pA[0], expected)
    assert learned.pA[0][1, 0] == 0 and learned.A[0][1, 0] == 0


def test_learning_needs_counts_and_valid_rates(rng):
    arrays = random_arrays(rng, (2,), (2,), (1,))
    model = pp_aif.GenerativeModel(arrays.A, arrays.B)
    with pytest.raises(ValueError, match="learning A needs Dirichlet counts pA"):
        pp_aif.learn(model, np.array([[0]]))
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, pA=[np.ones((2, 2))])
    with pytest.raises(ValueError, match="forgetting: must lie in"):
        pp_aif.learn(model, np.array([[0]]), parameters=["A"], forgetting=1.0)
    with pytest.raises(ValueError, match="'Z'"):
        pp_aif.learn(model, np.array([[0]]), parameters=["Z"])

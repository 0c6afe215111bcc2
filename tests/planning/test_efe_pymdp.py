"""Exact expected free energy against pymdp's legacy (numpy) control functions, to 1e-5.

pymdp's legacy ``calc_states_info_gain`` prunes joint states below e^-16 and its logarithms add
1e-16 (``spm_log_single``), hence the tolerance. Its "G" is the negative expected free energy,
utility + information gain, so it is compared with -G."""

from __future__ import annotations

import pytest

import pp_aif
from tests.common import PYMDP_TOLERANCE, assert_close, pymdp_objects, random_arrays, random_columns

legacy_control = pytest.importorskip("pymdp.legacy.control")


@pytest.mark.parametrize(
    "shape",
    [((3,), (4,), (2,)), ((2, 3), (3, 2), (2, 2)), ((2, 2), (2, 3, 2), (3, 1))],
)
@pytest.mark.parametrize("horizon", [1, 2, 3])
def test_terms_equal_pymdp_legacy(rng, shape, horizon):
    num_states, num_outcomes, num_controls = shape
    arrays = random_arrays(rng, num_states, num_outcomes, num_controls)
    C = [rng.normal(size=o) for o in num_outcomes]
    # counts of at least 1: pymdp floors wnorm at 1e-16 where SPM (and pp_aif, checked against
    # SPM's wnorm_*.mat) uses e^-16; below ~0.1 counts that alone moves novelty by > 1e-5.
    pA = [1 + a * rng.uniform(1, 4, size=a.shape) for a in arrays.A]
    pB = [1 + b * rng.uniform(1, 4, size=b.shape) for b in arrays.B]
    policies = pp_aif.construct_policies(num_controls, horizon)
    model = pp_aif.GenerativeModel(
        arrays.A, arrays.B, C=C, D=arrays.D, pA=pA, pB=pB, policies=policies
    )
    beliefs = [random_columns(rng, (s,)) for s in num_states]
    scores = pp_aif.expected_free_energy(model, beliefs)

    A, B, qs = pymdp_objects(arrays.A), pymdp_objects(arrays.B), pymdp_objects(beliefs)
    for p, policy in enumerate(policies.numpy()):
        qs_pi = legacy_control.get_expected_states(qs, B, policy)
        qo_pi = legacy_control.get_expected_obs(qs_pi, A)
        utility = legacy_control.calc_expected_utility(qo_pi, pymdp_objects(C))
        info_gain = legacy_control.calc_states_info_gain(A, qs_pi)
        novelty = (
            legacy_control.calc_pA_info_gain(pymdp_objects(pA), qo_pi, qs_pi).item()
            + legacy_control.calc_pB_info_gain(pymdp_objects(pB), qs_pi, qs, policy).item()
        )
        assert_close(scores.pragmatic[p], utility, **PYMDP_TOLERANCE)
        assert_close(scores.epistemic[p], info_gain, **PYMDP_TOLERANCE)
        assert_close(-scores.G[p], utility + info_gain, **PYMDP_TOLERANCE)
        assert_close(scores.novelty[p], novelty, **PYMDP_TOLERANCE)

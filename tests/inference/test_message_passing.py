"""Message passing (fpi, vmp, mmp) through infer_states: against exact inference where a scheme is
exact, the mean-field optimum found by SVI, the bound F >= -ln p(o), and pymdp's implementations
(1.0 for FPI and VMP, legacy for SPM's MMP) on shared random cases."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest

import pp_aif
from pp_aif.errors import ConvergenceWarning, DiagnosticWarning
from tests.common import assert_close, brute_force
from tests.inference.cases import random_case

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy
pymdp_algos = pytest.importorskip("pymdp.algos")

SHAPES = [
    ((3,), (4,), (2,)),
    ((2, 3), (3, 2), (2, 2)),
    ((2, 2, 2), (3, 2), (2, 1, 2)),
]

#: A fixed point reached by iteration (change < 1e-9 per sweep): not algebra.
FIXED_POINT = {"atol": 1e-6, "rtol": 0.0, "reason": "iterated to a fixed point"}
#: Same algorithm, other code (JAX float64 vs torch float64; pymdp clips logs at float eps).
SAME_ALGORITHM = {"atol": 1e-9, "rtol": 0.0, "reason": "same updates, other float64 code"}

#: Enough damped sweeps to reach the fixed point on these small models (asserted where used).
CONVERGED = {"num_iterations": 1000, "tau": 0.5, "tolerance": 1e-9}


def make(rng, shape, T=5, zero_fraction=0.0):
    return random_case(rng, shape, T=T, zero_fraction=zero_fraction)


@pytest.mark.parametrize("zero_fraction", [0.0, 0.3])
def test_fpi_is_exact_filtering_for_one_factor(rng, zero_fraction):
    arrays, model, observations, actions = make(rng, SHAPES[0], zero_fraction=zero_fraction)
    exact = pp_aif.infer_states(model, observations, actions, mode="filtering")
    fpi = pp_aif.infer_states(model, observations, actions, method="fpi", mode="filtering")
    # pymdp's log floor (float eps) moves probabilities that should be 0 to ~1e-16
    assert_close(fpi.marginals, exact.marginals, atol=1e-14, reason="log floor at float eps")
    assert fpi.log_evidence is None and fpi.optimisation.converged


@pytest.mark.parametrize("shape", SHAPES)
def test_every_scheme_is_bounded_by_the_evidence(rng, shape):
    arrays, model, observations, actions = make(rng, shape)
    log_evidence, _ = brute_force(arrays, observations, actions)
    for method, mode in [("fpi", "filtering"), ("vmp", "smoothing"), ("mmp", "smoothing")]:
        beliefs = pp_aif.infer_states(
            model, observations, actions, method=method, mode=mode, settings={"warn": False}
        )
        assert float(beliefs.free_energy) > -log_evidence, method
        for q in beliefs.marginals:
            assert_close(q.sum(-1), np.ones(q.shape[:-1]))
        # the reported F is the mean-field F of the marginals (independent closed form)
        assert_close(
            beliefs.free_energy,
            pp_aif.free_energy(model, observations, actions, beliefs=beliefs.marginals),
        )


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_vmp_reaches_the_mean_field_optimum_that_svi_finds(rng, shape):
    arrays, model, observations, actions = make(rng, shape)
    vmp = pp_aif.infer_states(model, observations, actions, method="vmp", settings=CONVERGED)
    assert vmp.optimisation.converged
    svi = pp_aif.infer_states(model, observations, actions, method="mean_field")
    assert_close(vmp.free_energy, svi.free_energy, **FIXED_POINT)
    assert_close(vmp.marginals, svi.marginals, atol=1e-4, reason="L-BFGS stopping rule")


def one_hot(index, size):
    x = np.zeros(size)
    x[index] = 1.0
    return jnp.asarray(x)


@pytest.mark.parametrize("shape", SHAPES)
def test_fpi_matches_pymdp_run_vanilla_fpi(rng, shape):
    arrays, model, observations, actions = make(rng, shape, T=1)
    prior = [np.asarray(d) for d in arrays.D]
    expected = pymdp_algos.run_vanilla_fpi(
        [jnp.asarray(a) for a in arrays.A],
        [one_hot(o, a.shape[0]) for o, a in zip(observations[0], arrays.A, strict=True)],
        [jnp.asarray(p) for p in prior],
        num_iter=16,
    )
    beliefs = pp_aif.infer_states(
        model, observations, actions, method="fpi", mode="filtering", settings={"warn": False}
    )
    assert_close(
        [q[0] for q in beliefs.marginals], [np.asarray(e) for e in expected], **SAME_ALGORITHM
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_vmp_matches_pymdp_run_vmp(rng, shape):
    arrays, model, observations, actions = make(rng, shape, T=5)
    T, F = len(observations), len(arrays.B)
    B = [
        jnp.asarray(np.stack([b[:, :, actions[t, f]] for t in range(T - 1)]))
        for f, b in enumerate(arrays.B)
    ]
    obs = [
        jnp.asarray(np.stack([np.eye(a.shape[0])[observations[t, m]] for t in range(T)]))
        for m, a in enumerate(arrays.A)
    ]
    expected = pymdp_algos.run_vmp(
        [jnp.asarray(a) for a in arrays.A],
        B,
        obs,
        [jnp.asarray(d) for d in arrays.D],
        [list(range(F))] * len(arrays.A),
        [[f] for f in range(F)],
        num_iter=12,
        tau=0.5,
    )
    beliefs = pp_aif.infer_states(
        model,
        observations,
        actions,
        method="vmp",
        settings={"num_iterations": 12, "tau": 0.5, "warn": False},
    )
    assert_close(beliefs.marginals, [np.asarray(e) for e in expected], **SAME_ALGORITHM)


@pytest.mark.parametrize("shape", SHAPES)
def test_mmp_matches_pymdp_legacy_run_mmp(rng, shape):
    """pymdp's legacy run_mmp restates SPM's loop (it also reproduces mmp_*.mat)."""
    from pymdp.legacy.algos.mmp import run_mmp
    from pymdp.legacy.utils import obj_array_from_list

    arrays, model, observations, actions = make(rng, shape, T=5)
    T, F = len(observations), len(arrays.B)
    A = obj_array_from_list(arrays.A)
    likelihoods = np.empty(T, dtype=object)  # p(o_t | s), modalities multiplied
    for t in range(T):
        likelihoods[t] = np.prod([a[o] for a, o in zip(A, observations[t], strict=True)], 0)
    with contextlib.redirect_stdout(io.StringIO()):  # run_mmp prints as it goes
        expected, _ = run_mmp(
            likelihoods,
            obj_array_from_list(arrays.B),
            np.zeros((1, F), dtype=int),  # the "policy" after the last step: never used
            prev_actions=actions,
            prior=obj_array_from_list(arrays.D),
            num_iter=10,
            tau=0.25,
            last_timestep=True,
        )
    beliefs = pp_aif.infer_states(
        model, observations, actions, method="mmp", settings={"num_iterations": 10, "warn": False}
    )
    for f in range(F):
        assert_close(
            beliefs.marginals[f], np.stack([expected[t][f] for t in range(T)]), **SAME_ALGORITHM
        )


def test_non_convergence_is_a_warning(rng):
    arrays, model, observations, actions = make(rng, SHAPES[1])
    with pytest.warns(ConvergenceWarning, match=r"changed by up to .* in the last of 1 iter"):
        beliefs = pp_aif.infer_states(
            model, observations, actions, method="mmp", settings={"num_iterations": 1}
        )
    assert not beliefs.optimisation.converged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pp_aif.infer_states(
            model,
            observations,
            actions,
            method="mmp",
            settings={"num_iterations": 1, "warn": False},
        )


def test_modes_and_settings_are_checked(rng):
    arrays, model, observations, actions = make(rng, SHAPES[0])
    with pytest.raises(ValueError, match=r"mode: method 'fpi' infers filtering posteriors only"):
        pp_aif.infer_states(model, observations, actions, method="fpi")
    with pytest.raises(ValueError, match=r"mode: method 'mmp' infers smoothing posteriors only"):
        pp_aif.infer_states(model, observations, actions, method="mmp", mode="filtering")
    with pytest.raises(ValueError, match=r"num_iterations: must be an integer >= 1"):
        pp_aif.infer_states(
            model, observations, actions, method="vmp", settings={"num_iterations": 0}
        )
    with pytest.raises(ValueError, match=r"tau: must be a finite number > 0, got -1"):
        pp_aif.infer_states(model, observations, actions, method="vmp", settings={"tau": -1.0})
    with pytest.raises(ValueError, match=r"method: 'bp' is not one of"):
        pp_aif.infer_states(model, observations, actions, method="bp")


@pytest.mark.parametrize(
    "method, mode",
    METHODS_AND_MODES := [
        ("fpi", "filtering"),
        ("vmp", "smoothing"),
        ("mmp", "smoothing"),
        ("exact", "smoothing"),
        ("mean_field", "smoothing"),
        ("structured", "smoothing"),
        ("enumerate", "smoothing"),
    ],
)
def test_every_method_refuses_an_impossible_sequence(method, mode):
    # identity A and B: observing 0 then 1 is impossible (the state cannot change)
    model = pp_aif.GenerativeModel(A=[np.eye(2)], B=[np.eye(2)[:, :, None]])
    with pytest.raises(pp_aif.DataError, match=r"time step 1, modality 0: outcome 1 has prob"):
        pp_aif.infer_states(model, [[0], [1], [1]], method=method, mode=mode)
    batch = [[[0], [0], [0]], [[1], [1], [0]]]  # the second sequence fails at step 2
    with pytest.raises(pp_aif.DataError, match=r"sequence 1, time step 2, modality 0"):
        pp_aif.infer_states(model, batch, method=method, mode=mode)


@pytest.mark.parametrize("method, mode", METHODS_AND_MODES[:3])
def test_a_floor_that_changes_the_answer_is_named(method, mode):
    """A = [[1, 1e-300], [0, 1]], identity B, o = 0, 0, 1: only state 1 is possible throughout,
    ln p(o) = 2 ln 1e-300 + ln 1/2 = -1382.244. The schemes floor ln p at ~ln 1e-16, so they
    settle on state 0; that is named, and their F with exact logs is +inf."""
    model = pp_aif.GenerativeModel(
        A=[np.array([[1.0, 1e-300], [0.0, 1.0]])], B=[np.eye(2)[:, :, None]]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(DiagnosticWarning, match=r"floor changed its answer.*rule out") as caught:
            beliefs = pp_aif.infer_states(model, [[0], [0], [1]], method=method, mode=mode)
    message = str(caught[0].message)
    assert "-ln p(o) = 1382.24" in message
    assert float(beliefs.free_energy) < 1382.0  # the floored F: no bound here, as warned
    assert float(beliefs.exact_log_free_energy) == np.inf


@pytest.mark.parametrize("shape", SHAPES)
def test_exact_log_free_energy_matches_the_floored_one_without_zeros(rng, shape):
    arrays, model, observations, actions = make(rng, shape)
    for method, mode in METHODS_AND_MODES[:3]:
        beliefs = pp_aif.infer_states(
            model, observations, actions, method=method, mode=mode, settings={"warn": False}
        )
        # entries below sqrt(eps) are dropped before scoring: F moves by ~1e-8 nats at most
        assert_close(
            beliefs.exact_log_free_energy,
            beliefs.free_energy,
            atol=1e-6,
            reason="mass below sqrt(eps) is not scored",
        )


def test_exact_log_free_energy_does_not_depend_on_the_floor():
    """Filtering marginals scored as one q over the whole sequence: with a deterministic swap
    and an unknown start, fpi's marginals (exactly the filtering posterior) give the impossible
    'stay' pairs mass. The floored F then depends on the dtype's floor; with exact logs it is
    +inf in both dtypes, and no warning is given: the marginals are right."""
    values = {}
    for dtype in ("float64", "float32"):
        model = pp_aif.GenerativeModel(
            A=[np.full((1, 2), 1.0, dtype=dtype)],
            B=[np.array([[0.0, 1.0], [1.0, 0.0]], dtype=dtype)[:, :, None]],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            beliefs = pp_aif.infer_states(model, np.zeros((4, 1)), method="fpi", mode="filtering")
        assert_close(beliefs.marginals, [np.full((4, 2), 0.5)], atol=1e-7, reason="float32")
        values[dtype] = (float(beliefs.free_energy), float(beliefs.exact_log_free_energy))
    assert values["float64"][0] > 1.5 * values["float32"][0]  # ln eps: -36 against -16
    assert values["float64"][1] == values["float32"][1] == np.inf

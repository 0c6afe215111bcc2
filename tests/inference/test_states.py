"""infer_states: exact = Pyro enumeration = brute force over every state path (float64, 1e-10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pp_aif
from tests.common import (
    assert_close,
    brute_force,
    brute_force_filtering,
    random_arrays,
    sample_sequence,
)

# (num_states, num_outcomes, num_controls): 1-3 factors, 1-3 modalities
SHAPES = [
    ((3,), (4,), (2,)),
    ((2, 3), (3, 2), (2, 1)),
    ((2, 2), (2,), (2, 2)),
    ((2, 2, 2), (3, 2, 2), (2, 1, 2)),
    ((3, 1, 2), (2, 3), (1, 1, 3)),
]


def make(rng, shape, zero_fraction=0.0):
    arrays = random_arrays(rng, *shape, zero_fraction=zero_fraction)
    return arrays, pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("zero_fraction", [0.0, 0.4])
@pytest.mark.parametrize("method", ["exact", "enumerate"])
def test_smoothing_equals_brute_force(rng, shape, zero_fraction, method):
    arrays, model = make(rng, shape, zero_fraction)
    observations, actions = sample_sequence(rng, arrays, T=4)
    expected_log_evidence, expected_marginals = brute_force(arrays, observations, actions)
    beliefs = pp_aif.infer_states(model, observations, actions, method=method)
    assert beliefs.log_evidence.shape == ()
    assert_close(beliefs.log_evidence, expected_log_evidence, msg="log evidence")
    assert_close(beliefs.marginals, expected_marginals, msg="marginals")
    for q, expected in zip(beliefs.marginals, expected_marginals, strict=True):
        # structural zeros stay exact: an impossible state has posterior 0, not 1e-16
        assert (q.numpy()[expected == 0] == 0).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("zero_fraction", [0.0, 0.4])
@pytest.mark.parametrize("method", ["exact", "enumerate"])
def test_filtering_equals_brute_force(rng, shape, zero_fraction, method):
    arrays, model = make(rng, shape, zero_fraction)
    observations, actions = sample_sequence(rng, arrays, T=4)
    expected_log_evidence, _ = brute_force(arrays, observations, actions)
    beliefs = pp_aif.infer_states(model, observations, actions, method=method, mode="filtering")
    assert_close(beliefs.log_evidence, expected_log_evidence)
    assert_close(beliefs.marginals, brute_force_filtering(arrays, observations, actions))


@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 4)])
@pytest.mark.parametrize("mode", ["smoothing", "filtering"])
def test_batch_equals_single_calls_and_enumeration(rng, batch_shape, mode):
    arrays, model = make(rng, SHAPES[1], zero_fraction=0.3)
    n = int(np.prod(batch_shape, dtype=int))
    pairs = [sample_sequence(rng, arrays, T=3) for _ in range(n)]
    observations = np.stack([p[0] for p in pairs]).reshape(*batch_shape, 3, 2)
    actions = np.stack([p[1] for p in pairs]).reshape(*batch_shape, 2, 2)
    exact = pp_aif.infer_states(model, observations, actions, mode=mode)
    enumerated = pp_aif.infer_states(model, observations, actions, method="enumerate", mode=mode)
    assert exact.log_evidence.shape == batch_shape
    assert [q.shape for q in exact.marginals] == [(*batch_shape, 3, 2), (*batch_shape, 3, 3)]
    assert_close(exact.log_evidence, enumerated.log_evidence)
    assert_close(exact.marginals, enumerated.marginals)
    flat_observations = observations.reshape(n, 3, 2)
    flat_actions = actions.reshape(n, 2, 2)
    for i in range(n):
        single = pp_aif.infer_states(model, flat_observations[i], flat_actions[i], mode=mode)
        assert_close(exact.log_evidence.reshape(n)[i], single.log_evidence)
        for f in range(2):
            assert_close(exact.marginals[f].reshape(n, 3, -1)[i], single.marginals[f])


def test_unbatched_actions_are_shared_by_the_batch(rng):
    arrays, model = make(rng, SHAPES[1])
    observations, actions = sample_sequence(rng, arrays, T=3)
    batch = np.stack([observations, observations[::-1]])
    shared = pp_aif.infer_states(model, batch, actions)
    explicit = pp_aif.infer_states(model, batch, np.stack([actions, actions]))
    assert_close(shared.log_evidence, explicit.log_evidence)
    assert_close(shared.marginals, explicit.marginals)


def test_one_step_and_no_actions(rng):
    arrays, model = make(rng, SHAPES[0])
    observations, actions = sample_sequence(rng, arrays, T=1)
    beliefs = pp_aif.infer_states(model, observations)
    expected_log_evidence, expected_marginals = brute_force(arrays, observations, actions)
    assert_close(beliefs.log_evidence, expected_log_evidence)
    assert_close(beliefs.marginals, expected_marginals)


def test_numpy_and_torch_inputs_agree_and_dtype_follows(rng):
    arrays, model = make(rng, SHAPES[1])
    observations, actions = sample_sequence(rng, arrays, T=3)
    from_numpy = pp_aif.infer_states(model, observations, actions)
    from_torch = pp_aif.infer_states(model, torch.as_tensor(observations), torch.as_tensor(actions))
    assert from_numpy.log_evidence.dtype == torch.float64
    assert_close(from_numpy.marginals, from_torch.marginals)
    model32 = model.to(torch.float32)
    beliefs32 = pp_aif.infer_states(model32, observations, actions)
    assert beliefs32.log_evidence.dtype == torch.float32
    assert_close(
        beliefs32.log_evidence,
        from_numpy.log_evidence,
        atol=1e-4,
        rtol=1e-5,
        reason="float32 arithmetic",
    )


def test_long_sequence_does_not_underflow(rng):
    """T = 2000 with sparse likelihoods: ln p(o) ~ -thousands, still finite and consistent."""
    arrays, model = make(rng, SHAPES[1], zero_fraction=0.5)
    observations, actions = sample_sequence(rng, arrays, T=2000)
    beliefs = pp_aif.infer_states(model, observations, actions)
    assert torch.isfinite(beliefs.log_evidence)
    for q in beliefs.marginals:
        assert torch.isfinite(q).all()
        assert_close(q.sum(-1), torch.ones(2000, dtype=torch.float64))
    # the chain rule: ln p(o_1:T) = ln p(o_1:T-1) + ln p(o_T | o_1:T-1) holds for the filter
    head = pp_aif.infer_states(model, observations[:1000], actions[:999])
    filtered = pp_aif.infer_states(model, observations, actions, mode="filtering")
    assert_close(
        filtered.marginals[0][:1000],
        pp_aif.infer_states(model, observations[:1000], actions[:999], mode="filtering").marginals[
            0
        ],
    )
    assert head.log_evidence > beliefs.log_evidence


@st.composite
def random_problem(draw):
    F = draw(st.integers(1, 3))
    M = draw(st.integers(1, 3))
    num_states = tuple(draw(st.lists(st.integers(1, 3), min_size=F, max_size=F)))
    num_outcomes = tuple(draw(st.lists(st.integers(1, 3), min_size=M, max_size=M)))
    num_controls = tuple(draw(st.lists(st.integers(1, 2), min_size=F, max_size=F)))
    zero_fraction = draw(st.sampled_from([0.0, 0.3, 0.6]))
    T = draw(st.integers(1, 4))
    N = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    return num_states, num_outcomes, num_controls, zero_fraction, T, N, seed


@given(random_problem())
def test_properties_on_random_models(problem):
    """Marginals are distributions, no NaN with structural zeros, batch of N = N single calls,
    and both modes agree with brute force."""
    num_states, num_outcomes, num_controls, zero_fraction, T, N, seed = problem
    rng = np.random.default_rng(seed)
    arrays = random_arrays(rng, num_states, num_outcomes, num_controls, zero_fraction)
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D)
    pairs = [sample_sequence(rng, arrays, T) for _ in range(N)]
    observations = np.stack([p[0] for p in pairs])
    actions = np.stack([p[1] for p in pairs])
    for mode in ("smoothing", "filtering"):
        beliefs = pp_aif.infer_states(model, observations, actions, mode=mode)
        assert torch.isfinite(beliefs.log_evidence).all()
        for q in beliefs.marginals:
            assert not torch.isnan(q).any()
            assert (q >= 0).all()
            assert_close(q.sum(-1), torch.ones(N, T, dtype=torch.float64))
        for n in range(N):
            log_evidence, smoothed = brute_force(arrays, observations[n], actions[n])
            assert_close(beliefs.log_evidence[n], log_evidence)
            expected = (
                smoothed
                if mode == "smoothing"
                else brute_force_filtering(arrays, observations[n], actions[n])
            )
            assert_close([q[n] for q in beliefs.marginals], expected)
            single = pp_aif.infer_states(model, observations[n], actions[n], mode=mode)
            assert_close([q[n] for q in beliefs.marginals], single.marginals)
    enumerated = pp_aif.infer_states(model, observations, actions, method="enumerate")
    assert_close(enumerated.log_evidence, beliefs.log_evidence)
    exact = pp_aif.infer_states(model, observations, actions)
    assert_close(enumerated.marginals, exact.marginals)


@pytest.mark.parametrize(
    "tiny, method",
    [(1e-100, "exact"), (1e-170, "exact"), (1e-310, "exact"), (1e-100, "enumerate")],
)
def test_likelihoods_far_below_the_best_state_stay_exact(tiny, method):
    """The prior sits on a state whose likelihood is `tiny` times that of an unreachable state:
    probability-space scaling would underflow (below 1e-154 the kernel switches to its log-space
    recursion); the answer must still be exact. Pyro's enumeration is checked at 1e-100 only:
    at 1e-170 its compute_marginals returns NaN logits (its shifted contraction underflows)."""
    from tests.common import Arrays

    # state 0: o=0 with probability `tiny`; state 1 (unreachable): o=0 surely; state 2: o=1 surely
    A = np.array([[tiny, 1.0, 0.0], [1.0 - tiny, 0.0, 1.0]])
    B = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])[:, :, None]
    B[:, 2, 0] = [0.5, 0.0, 0.5]
    D = np.array([0.0, 0.0, 1.0])
    arrays = Arrays([A], [B], [D])
    model = pp_aif.GenerativeModel(A, B, D=D)
    observations = np.array([[1], [0], [0], [1]])
    beliefs = pp_aif.infer_states(model, observations, method=method)
    no_actions = np.zeros((3, 1), dtype=int)
    expected_log_evidence, expected_marginals = brute_force(arrays, observations, no_actions)
    assert np.isfinite(expected_log_evidence)
    assert_close(beliefs.log_evidence, expected_log_evidence)
    assert_close(beliefs.marginals, expected_marginals)
    filtering = pp_aif.infer_states(model, observations, method=method, mode="filtering")
    assert_close(filtering.marginals, brute_force_filtering(arrays, observations, no_actions))


def _underflow_case():
    """A = [[1, 1e-300], [0, 1]], identity B, o = 0, 0, 1: the only possible path stays in
    state 1, whose probability after two steps (1e-600 relative) underflows in probability
    space; ln p(o) = 2 ln 1e-300 + ln 1/2 = -1382.244."""
    from tests.common import Arrays

    A, B, D = np.array([[1.0, 1e-300], [0.0, 1.0]]), np.eye(2)[:, :, None], np.full(2, 0.5)
    return Arrays([A], [B], [D]), pp_aif.GenerativeModel(A, B, D=D), np.array([[0], [0], [1]])


@pytest.mark.parametrize("method", ["exact", "mean_field", "structured"])
def test_underflow_is_not_taken_for_impossibility(method):
    arrays, model, observations = _underflow_case()
    no_actions = np.zeros((2, 1), dtype=int)
    log_evidence, marginals = brute_force(arrays, observations, no_actions)
    assert_close(log_evidence, 2 * np.log(1e-300) + np.log(0.5))
    beliefs = pp_aif.infer_states(model, observations, method=method)
    assert_close(beliefs.marginals, marginals)
    assert_close(beliefs.free_energy, -log_evidence)
    if method == "exact":
        assert_close(beliefs.log_evidence, log_evidence)
        filtering = pp_aif.infer_states(model, observations, mode="filtering")
        assert_close(filtering.marginals, brute_force_filtering(arrays, observations, no_actions))
        chain = pp_aif.posterior_chain(model, observations)
        assert_close(pp_aif.free_energy(model, observations, beliefs=chain), -log_evidence)


def test_enumeration_that_underflows_says_so():
    _, model, observations = _underflow_case()
    with pytest.raises(FloatingPointError, match=r"enumeration underflowed.*-1382.24.*'exact'"):
        pp_aif.infer_states(model, observations, method="enumerate")


@pytest.mark.parametrize("shape", [((3,), (3,), (2,)), ((2, 2), (3, 2), (2, 1))])
def test_log_space_recursion_equals_brute_force_on_extreme_likelihoods(rng, shape):
    """Likelihoods of 1e-300 beside 1 and structural zeros, and observations drawn uniformly
    among those a random possible path allows (so the path taken is often 1e-600 below the best
    one, and then the only one left): smoothing, filtering and ln p(o) must equal brute force
    over every path."""
    from tests.common import Arrays, random_arrays

    for _ in range(30):
        arrays = random_arrays(rng, *shape, zero_fraction=0.5)
        extreme = []
        for a in arrays.A:
            scaled = a * np.where(rng.random(a.shape) < 0.7, 1e-300, 1.0)
            extreme.append(scaled / scaled.sum(0, keepdims=True))
        # the first factor persists (as a context does), so a state that falls 1e-600 behind
        # cannot be refilled from the others before the observations rule them out
        persistent = np.repeat(np.eye(arrays.num_states[0])[:, :, None], arrays.num_controls[0], 2)
        arrays = Arrays(extreme, [persistent, *arrays.B[1:]], arrays.D)
        model = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D)
        T, F = 5, len(arrays.B)
        actions = np.stack([rng.integers(0, U, size=T - 1) for U in arrays.num_controls], -1)
        state = [rng.choice(np.flatnonzero(d)) for d in arrays.D]
        observations = []
        for t in range(T):
            if t > 0:
                state = [
                    rng.choice(np.flatnonzero(b[:, state[f], actions[t - 1, f]]))
                    for f, b in enumerate(arrays.B)
                ]
            observations.append(
                [rng.choice(np.flatnonzero(a[(slice(None), *state)])) for a in arrays.A]
            )
        observations = np.array(observations)
        assert F == len(state)
        log_evidence, marginals = brute_force(arrays, observations, actions)
        beliefs = pp_aif.infer_states(model, observations, actions)
        assert_close(beliefs.log_evidence, log_evidence)
        assert_close(beliefs.marginals, marginals)
        filtering = pp_aif.infer_states(model, observations, actions, mode="filtering")
        assert_close(filtering.marginals, brute_force_filtering(arrays, observations, actions))

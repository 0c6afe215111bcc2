"""Shared test helpers: the one tolerance policy, random models, and the brute-force oracle.

Everything here is plain numpy (no pp_aif code), so that it is independent of what it checks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

#: pymdp's legacy functions prune states below e^-16 and floor logarithms at 1e-16.
PYMDP_TOLERANCE = {
    "atol": 1e-5,
    "rtol": 1e-5,
    "reason": "pymdp prunes states below e^-16 and floors its logarithms at 1e-16",
}

#: Deterministic float64 math: the default tolerance of ``assert_close``.
FLOAT64_ATOL = 1e-10
FLOAT64_RTOL = 1e-10


def _to_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def assert_close(actual, expected, *, atol=FLOAT64_ATOL, rtol=FLOAT64_RTOL, reason=None, msg=""):
    """Assert |actual - expected| <= atol + rtol |expected| elementwise (NaNs never match).

    Any tolerance looser than the float64 default must say why in ``reason``.
    """
    if (atol > FLOAT64_ATOL or rtol > FLOAT64_RTOL) and not reason:
        raise ValueError("a tolerance looser than the float64 default needs a reason=")
    if isinstance(actual, list | tuple) and isinstance(expected, list | tuple):
        assert len(actual) == len(expected), f"{msg}: lengths {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, atol=atol, rtol=rtol, reason=reason, msg=f"{msg}[{i}]")
        return
    a, e = _to_numpy(actual).astype(np.float64), _to_numpy(expected).astype(np.float64)
    assert a.shape == e.shape, f"{msg}: shapes {a.shape} != {e.shape}"
    np.testing.assert_allclose(a, e, atol=atol, rtol=rtol, equal_nan=False, err_msg=msg)


# ---------------------------------------------------------------------------------------------
# random models (numpy, SPM layout)


@dataclass
class Arrays:
    """A model as plain numpy arrays in SPM layout."""

    A: list[np.ndarray]
    B: list[np.ndarray]
    D: list[np.ndarray]

    @property
    def num_states(self):
        return tuple(b.shape[0] for b in self.B)

    @property
    def num_controls(self):
        return tuple(b.shape[2] for b in self.B)


def random_columns(rng: np.random.Generator, shape, zero_fraction: float = 0.0) -> np.ndarray:
    """Random probabilities whose columns (axis 0) sum to 1; about ``zero_fraction`` of the
    entries are structural zeros (never a whole column)."""
    x = rng.gamma(1.0, size=shape)
    if zero_fraction > 0:
        x = np.where(rng.random(shape) < zero_fraction, 0.0, x)
        keep = rng.integers(0, shape[0], size=shape[1:])
        np.put_along_axis(x, keep[None], rng.gamma(1.0, size=(1, *shape[1:])) + 0.1, axis=0)
    return x / x.sum(0, keepdims=True)


def random_arrays(rng, num_states, num_outcomes, num_controls, zero_fraction=0.0) -> Arrays:
    A = [random_columns(rng, (o, *num_states), zero_fraction) for o in num_outcomes]
    B = [
        random_columns(rng, (s, s, u), zero_fraction)
        for s, u in zip(num_states, num_controls, strict=True)
    ]
    D = [random_columns(rng, (s,), zero_fraction) for s in num_states]
    return Arrays(A, B, D)


def sample_sequence(rng, arrays: Arrays, T: int):
    """Draw actions uniformly, then states and outcomes from the model.

    Returns (observations (T, M), actions (T-1, F)).
    """
    F = len(arrays.B)
    actions = np.stack([rng.integers(0, u, size=T - 1) for u in arrays.num_controls], -1)
    actions = actions.reshape(T - 1, F)
    state = [rng.choice(len(d), p=d) for d in arrays.D]
    observations = []
    for t in range(T):
        if t > 0:
            state = [
                rng.choice(b.shape[0], p=b[:, s, actions[t - 1, f]])
                for f, (b, s) in enumerate(zip(arrays.B, state, strict=True))
            ]
        observations.append([rng.choice(a.shape[0], p=a[(slice(None), *state)]) for a in arrays.A])
    return np.array(observations, dtype=np.int64).reshape(T, len(arrays.A)), actions


# ---------------------------------------------------------------------------------------------
# brute force


def brute_force(arrays: Arrays, observations, actions):
    """Enumerate every joint state path s_0..s_T-1.

    Returns (log_evidence, smoothing marginals: F arrays (T, S_f)). Plain numpy, no recursion.
    """
    states, log_p = path_log_probabilities(arrays, observations, actions)
    T = len(np.asarray(observations))
    top = log_p.max()
    weights = np.exp(log_p - top)
    log_evidence = top + np.log(weights.sum())
    posterior = weights / weights.sum()
    marginals = []
    for f, s in enumerate(arrays.num_states):
        q = np.zeros((T, s))
        for t in range(T):
            np.add.at(q[t], states[:, t, f], posterior)
        marginals.append(q)
    return log_evidence, marginals


def path_log_probabilities(arrays: Arrays, observations, actions):
    """Every joint state path and its ln p(o_1:T, s_1:T | u): (states (K, T, F), log_p (K,)),
    -inf for the impossible ones. Plain numpy, no recursion."""
    observations = np.asarray(observations)
    actions = np.asarray(actions).reshape(len(observations) - 1, len(arrays.B))
    T = len(observations)
    joint_states = list(itertools.product(*[range(s) for s in arrays.num_states]))
    paths = np.array(list(itertools.product(range(len(joint_states)), repeat=T)))  # (K, T)
    states = np.array(joint_states)[paths]  # (K, T, F)
    with np.errstate(divide="ignore"):
        log_p = np.zeros(len(paths))
        for f, d in enumerate(arrays.D):
            log_p += np.log(d[states[:, 0, f]])
        for t in range(T):
            for f, b in enumerate(arrays.B):
                if t > 0:
                    log_p += np.log(b[states[:, t, f], states[:, t - 1, f], actions[t - 1, f]])
            for m, a in enumerate(arrays.A):
                log_p += np.log(a[(observations[t, m], *states[:, t].T)])
    return states, log_p


def brute_force_filtering(arrays: Arrays, observations, actions):
    """q(s_t | o_1:t) for every t by brute force on each prefix: F arrays (T, S_f)."""
    observations = np.asarray(observations)
    actions = np.asarray(actions).reshape(len(observations) - 1, len(arrays.B))
    T = len(observations)
    rows = [brute_force(arrays, observations[: t + 1], actions[:t])[1] for t in range(T)]
    return [np.stack([rows[t][f][t] for t in range(T)]) for f in range(len(arrays.B))]


def pymdp_objects(arrays):
    """A list of arrays as pymdp's legacy object array (pymdp imported only when needed)."""
    from pymdp.legacy import utils

    return utils.obj_array_from_list([np.asarray(a, dtype=float) for a in arrays])

"""Exact expected free energy against a brute-force oracle (every joint state and joint outcome),
SPM's spm_wnorm outputs, and pymdp's legacy functions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.io
import torch

import pp_aif
from pp_aif.ops.efe import wnorm
from tests.common import assert_close, random_arrays, random_columns


def softmax(x):
    e = np.exp(x - x.max(0))
    return e / e.sum(0)


def brute_force_efe(arrays, C, beliefs, policies, time=0, pA=None, pB=None):
    """Plain numpy, one policy and one step at a time; returns a dict of (P,) arrays."""
    num_states = arrays.num_states
    names = ["G", "risk", "ambiguity", "epistemic", "pragmatic", "novelty"]
    out = {name: np.zeros(len(policies)) for name in names}
    joint_states = list(itertools.product(*[range(s) for s in num_states]))
    joint_outcomes = list(itertools.product(*[range(a.shape[0]) for a in arrays.A]))
    for p, policy in enumerate(policies):
        q = [np.array(b, dtype=float) for b in beliefs]
        for tau, controls in enumerate(policy):
            previous = q
            q = [arrays.B[f][:, :, u] @ q[f] for f, u in enumerate(controls)]
            q_state = {s: np.prod([q[f][s[f]] for f in range(len(q))]) for s in joint_states}
            q_outcome = {
                o: sum(
                    q_state[s] * np.prod([a[(o[m], *s)] for m, a in enumerate(arrays.A)])
                    for s in joint_states
                )
                for o in joint_outcomes
            }
            log_pref = []
            for c in C:
                column = c if c.ndim == 1 else c[:, time + tau + 1]
                with np.errstate(divide="ignore"):
                    log_pref.append(np.log(softmax(column)))
            entropy = -sum(v * np.log(v) for v in q_outcome.values() if v > 0)
            ambiguity = sum(
                q_state[s] * -sum(x * np.log(x) for x in a[(slice(None), *s)] if x > 0)
                for s in joint_states
                for a in arrays.A
            )
            pragmatic = sum(
                v * sum(log_pref[m][o[m]] for m in range(len(C)))
                for o, v in q_outcome.items()
                if v > 0
            )
            risk = sum(
                v * (np.log(v) - sum(log_pref[m][o[m]] for m in range(len(C))))
                for o, v in q_outcome.items()
                if v > 0
            )
            out["risk"][p] += risk
            out["ambiguity"][p] += ambiguity
            out["epistemic"][p] += entropy - ambiguity
            out["pragmatic"][p] += pragmatic
            out["G"][p] += risk + ambiguity
            if pA is not None:
                for m, counts in enumerate(pA):
                    a0 = counts + np.exp(-16)
                    w = (1 / a0.sum(0, keepdims=True) - 1 / a0) * (counts > 0)
                    q_o = sum(q_state[s] * arrays.A[m][(slice(None), *s)] for s in joint_states)
                    out["novelty"][p] -= q_o @ sum(
                        q_state[s] * w[(slice(None), *s)] for s in joint_states
                    )
            if pB is not None:
                for f, counts in enumerate(pB):
                    b0 = counts + np.exp(-16)
                    w = ((1 / b0.sum(0, keepdims=True) - 1 / b0) * (counts > 0))[:, :, controls[f]]
                    out["novelty"][p] -= q[f] @ w @ previous[f]
    return out


SHAPES = [
    ((3,), (4,), (2,)),
    ((2, 3), (3, 2), (2, 2)),
    ((2, 2), (2, 3, 2), (3, 1)),
    ((2, 1, 3), (3,), (2, 1, 2)),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("horizon", [1, 2, 3])
@pytest.mark.parametrize("zero_fraction", [0.0, 0.4])
def test_exact_efe_equals_brute_force(rng, shape, horizon, zero_fraction):
    num_states, num_outcomes, num_controls = shape
    arrays = random_arrays(rng, num_states, num_outcomes, num_controls, zero_fraction)
    C = [rng.normal(size=o) * 2 for o in num_outcomes]
    policies = pp_aif.construct_policies(num_controls, horizon)
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, C=C, D=arrays.D, policies=policies)
    beliefs = [random_columns(rng, (s,), zero_fraction) for s in num_states]
    scores = pp_aif.expected_free_energy(model, beliefs)
    expected = brute_force_efe(arrays, C, beliefs, policies.numpy())
    for name in ("G", "risk", "ambiguity", "epistemic", "pragmatic", "novelty"):
        assert_close(getattr(scores, name), expected[name], msg=name)
    assert_close(scores.G, -(scores.epistemic + scores.pragmatic))
    assert (scores.epistemic >= -1e-12).all()


def test_novelty_equals_brute_force(rng):
    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 2), zero_fraction=0.3)
    pA = [a * rng.uniform(1, 5, size=a.shape) for a in arrays.A]
    pB = [b * rng.uniform(1, 5, size=b.shape) for b in arrays.B]
    policies = pp_aif.construct_policies((2, 2), 2)
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D, pA=pA, pB=pB, policies=policies)
    beliefs = [random_columns(rng, (s,)) for s in (2, 3)]
    scores = pp_aif.expected_free_energy(model, beliefs)
    expected = brute_force_efe(
        arrays, [np.zeros(3), np.zeros(2)], beliefs, policies.numpy(), pA=pA, pB=pB
    )
    assert_close(scores.novelty, expected["novelty"])
    assert (scores.novelty > 0).all()


@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 4)])
def test_batched_beliefs_equal_single_calls(rng, batch_shape):
    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 2))
    model = pp_aif.GenerativeModel(
        arrays.A, arrays.B, D=arrays.D, policies=pp_aif.construct_policies((2, 2), 2)
    )
    n = int(np.prod(batch_shape, dtype=int))
    beliefs = [random_columns(rng, (s, n)).T.reshape(*batch_shape, s) for s in (2, 3)]
    scores = pp_aif.expected_free_energy(model, beliefs)
    assert scores.G.shape == (*batch_shape, 16)
    flat = [b.reshape(n, -1) for b in beliefs]
    for i in range(n):
        single = pp_aif.expected_free_energy(model, [b[i] for b in flat])
        assert_close(scores.G.reshape(n, 16)[i], single.G)
        assert_close(scores.risk.reshape(n, 16)[i], single.risk)


def test_equal_beliefs_share_one_score_and_only_equal_ones(rng, monkeypatch):
    """A batch with repeated beliefs (as many agents hold in the T-maze) equals the same batch
    scored belief by belief; beliefs that merely share a projection are not merged."""
    from pp_aif.planning import efe as planning

    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 2))
    pA = [a * rng.uniform(1, 5, size=a.shape) for a in arrays.A]
    model = pp_aif.GenerativeModel(
        arrays.A, arrays.B, D=arrays.D, pA=pA, policies=pp_aif.construct_policies((2, 2), 2)
    )
    distinct = [random_columns(rng, (s, 4)).T for s in (2, 3)]  # 4 beliefs
    pick = torch.tensor([0, 2, 2, 1, 0, 3, 2, 2, 1])
    beliefs = [torch.as_tensor(q)[pick] for q in distinct]
    grouped = planning._distinct_beliefs([q.clone() for q in beliefs])
    assert grouped is not None and grouped[0][0].shape == (4, 2)
    scores = pp_aif.expected_free_energy(model, beliefs)
    names = ("G", "risk", "ambiguity", "epistemic", "pragmatic", "novelty")
    # Rows that hold the same belief are one score, gathered: bitwise equal by construction, on
    # any CPU (rows scored separately may differ in their last bits with their batch position).
    for i in range(len(pick)):
        for j in range(i):
            if pick[i] == pick[j]:
                for name in names:
                    assert torch.equal(getattr(scores, name)[i], getattr(scores, name)[j]), name
    for i in range(len(pick)):
        single = pp_aif.expected_free_energy(model, [q[i] for q in beliefs])
        for name in names:
            assert_close(
                getattr(scores, name)[i],
                getattr(single, name),
                msg=name,
                reason="a batch of 4 beliefs and a single one take different BLAS paths, whose "
                "sums may differ in the last bits on another CPU (issue #15, item 12)",
            )
    # weights of 0 make every key collide: the entry-by-entry check refuses to merge them
    zeros = torch.zeros(5, dtype=torch.int64)
    assert planning._distinct_beliefs(beliefs, zeros) is None
    same = [q[[0, 0, 0]] for q in beliefs]
    merged = planning._distinct_beliefs(same, zeros)
    assert merged is not None and merged[1].tolist() == [0, 0, 0]
    # nothing shared where a gradient must reach every belief
    assert planning._distinct_beliefs([q.requires_grad_() for q in same]) is None


def test_time_varying_preferences_use_absolute_time(rng):
    arrays = random_arrays(rng, (3,), (3,), (2,))
    C = rng.normal(size=(3, 6))
    policies = pp_aif.construct_policies((2,), 2)
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, C=[C], D=arrays.D, policies=policies)
    beliefs = [arrays.D[0]]
    for time in (0, 3):
        scores = pp_aif.expected_free_energy(model, beliefs, time=time)
        expected = brute_force_efe(arrays, [C], beliefs, policies.numpy(), time=time)
        assert_close(scores.pragmatic, expected["pragmatic"])
        assert_close(scores.G, expected["G"])
    with pytest.raises(
        ValueError,
        match=r"C\[0\]: has preferences for times 0..5, but policies "
        r"of 2 steps from time 4 predict outcomes up to time 6",
    ):
        pp_aif.expected_free_energy(model, beliefs, time=4)


def test_structural_zero_preferences_give_infinite_risk_not_nan():
    A = np.eye(2)
    B = np.stack([np.eye(2), np.eye(2)[::-1]], -1)  # stay or switch
    model = pp_aif.GenerativeModel(A, B, C=[np.array([0.0, -np.inf])])
    scores = pp_aif.expected_free_energy(model, [np.array([1.0, 0.0])])
    assert torch.isfinite(scores.G[0]) and scores.G[1] == torch.inf
    assert not torch.isnan(scores.G).any()


@pytest.mark.parametrize("case", "ab")
def test_wnorm_equals_spm(spm_reference, case):
    m = scipy.io.loadmat(spm_reference / f"wnorm_{case}.mat")
    cells = m["A"].ravel() if m["A"].dtype == object else [m["A"]]
    results = [m["result"]] if "result" in m else [m[f"result_{i + 1}"] for i in range(len(cells))]
    for counts, expected in zip(cells, results, strict=True):
        assert_close(wnorm(torch.as_tensor(counts, dtype=torch.float64)), expected)


def test_bad_beliefs_are_named(rng):
    arrays = random_arrays(rng, (2, 3), (3,), (2, 1))
    model = pp_aif.GenerativeModel(arrays.A, arrays.B)
    with pytest.raises(pp_aif.DataError, match=r"beliefs\[1\]: shape \(2,\); expected \(3,\)"):
        pp_aif.expected_free_energy(model, [np.ones(2) / 2, np.ones(2) / 2])
    with pytest.raises(
        pp_aif.DataError,
        match=r"beliefs\[0\]: the distribution at batch index "
        r"\(\) sums to 1.5, not 1",
    ):
        pp_aif.expected_free_energy(model, [np.array([1.0, 0.5]), np.ones(3) / 3])
    with pytest.raises(pp_aif.DataError, match="expected a list of 2 arrays"):
        pp_aif.expected_free_energy(model, [np.ones(2) / 2])
    beliefs = pp_aif.infer_states(model, np.zeros((2, 1), dtype=int), np.zeros((1, 2), dtype=int))
    with pytest.raises(pp_aif.DataError, match="pass the marginals at one step"):
        pp_aif.expected_free_energy(model, beliefs)


@pytest.mark.parametrize("method", ["exact", "sampled"])
def test_arrays_per_belief_equal_separate_models(rng, method):
    """A, pA, B, pB given per belief (each agent's own) = one model per belief."""
    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 2))
    policies = pp_aif.construct_policies((2, 2), 2)
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D, policies=policies)
    per_agent = [random_arrays(rng, (2, 3), (3, 2), (2, 2)) for _ in range(3)]
    A = [np.stack([p.A[m] for p in per_agent]) for m in range(2)]
    pA = [1 + 2 * a for a in A]
    B = [np.stack([p.B[f] for p in per_agent]) for f in range(2)]
    pB = [1 + 3 * b for b in B]
    beliefs = [random_columns(rng, (s, 3)).T for s in (2, 3)]
    together = pp_aif.expected_free_energy(
        model, beliefs, A=A, pA=pA, B=B, pB=pB, method=method, num_samples=500, seed=0
    )
    for n, agent in enumerate(per_agent):
        alone = pp_aif.expected_free_energy(
            pp_aif.GenerativeModel(
                agent.A,
                agent.B,
                D=arrays.D,
                policies=policies,
                pA=[1 + 2 * a for a in agent.A],
                pB=[1 + 3 * b for b in agent.B],
            ),
            [b[n] for b in beliefs],
            method=method,
            num_samples=500,
            seed=0,
        )
        if method == "exact":
            for name in ("G", "risk", "ambiguity", "epistemic", "pragmatic", "novelty"):
                assert_close(getattr(together, name)[n], getattr(alone, name), msg=name)
        else:  # different random draws: agree within the joint standard error
            for name in ("G", "novelty"):
                bound = (
                    4 * torch.hypot(getattr(together.stderr, name)[n], getattr(alone.stderr, name))
                    + 1e-10
                )
                assert ((getattr(together, name)[n] - getattr(alone, name)).abs() <= bound).all()
    with pytest.raises(pp_aif.DataError, match=r"A\[0\]: shape \(3, 2, 3\); expected"):
        pp_aif.expected_free_energy(model, beliefs, A=[a[0] for a in A])
    with pytest.raises(pp_aif.DataError, match="pB: 1 arrays for 2 factors"):
        pp_aif.expected_free_energy(model, beliefs, pB=pB[:1])


def test_preferences_follow_an_in_place_change_of_C(rng):
    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 2))
    C = [torch.as_tensor(rng.normal(size=o)) for o in (3, 2)]
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, C=C, D=arrays.D)
    beliefs = [torch.as_tensor(d) for d in arrays.D]
    before = pp_aif.expected_free_energy(model, beliefs).G
    assert torch.equal(pp_aif.expected_free_energy(model, beliefs).G, before)  # repeatable
    model.C[1][0] += 1.5  # in place
    after = pp_aif.expected_free_energy(model, beliefs).G
    fresh = pp_aif.GenerativeModel(arrays.A, arrays.B, C=[c.clone() for c in model.C], D=arrays.D)
    assert not torch.allclose(after, before)
    assert_close(after, pp_aif.expected_free_energy(fresh, beliefs).G)


def test_unchecked_scores_equal_the_checked_ones(rng):
    """``policy_scores`` (the agent's path) is ``expected_free_energy`` without the checks."""
    from pp_aif.planning import policy_scores

    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 2))
    pB = [b * rng.uniform(1, 5, size=b.shape) for b in arrays.B]
    model = pp_aif.GenerativeModel(
        arrays.A, arrays.B, D=arrays.D, pB=pB, policies=pp_aif.construct_policies((2, 2), 2)
    )
    beliefs = [torch.as_tensor(random_columns(rng, (s, 6)).T) for s in (2, 3)]
    A = [torch.as_tensor(a).expand(6, *a.shape).clone() for a in arrays.A]
    for per_agent in ({}, {"A": A}):
        checked = pp_aif.expected_free_energy(model, beliefs, model.policies, time=1, **per_agent)
        unchecked = policy_scores(model, beliefs, model.policies, time=1, **per_agent)
        for name in ("G", "risk", "ambiguity", "epistemic", "pragmatic", "novelty"):
            assert torch.equal(getattr(checked, name), getattr(unchecked, name)), name

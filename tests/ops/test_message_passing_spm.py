"""Marginal message passing against SPM's own outputs (``tests/data/spm``, copied from SPM).

The harness below restates how pymdp's MATLAB scripts called the MMP loop (which time steps are in
the window, which actions drive which transition); the loop itself is
``pp_aif.ops.message_passing.marginal_message_passing``. MATLAB indices are 1-based.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.io import loadmat

from pp_aif.ops.message_passing import marginal_message_passing
from tests.common import assert_close

#: The issue's requirement; the loop reproduces SPM to ~1e-15.
SPM_TOLERANCE = {"atol": 1e-6, "rtol": 0.0, "reason": "SPM's MATLAB outputs, saved as .mat"}


def cells(m, key):
    return [torch.as_tensor(np.asarray(c, dtype=np.float64)) for c in m[key][0]]


def joint_likelihood(A, outcomes):
    """p(o | s1..sF) of one step, all modalities multiplied: (S_1..S_F)."""
    total = 1.0
    for a, o in zip(A, outcomes, strict=True):
        total = total * a[int(o)]
    return total


def selected(B, actions):
    """F tensors (1, len(actions), S, S): B_f(u) for each row of actions (N = 1)."""
    return [torch.stack([b[:, :, int(u)] for u in actions[:, f]])[None] for f, b in enumerate(B)]


@pytest.mark.parametrize("case", ["a", "b", "c", "d"])
def test_mmp_cut_out_of_spm_mdp_vb_x(spm_reference, case):
    m = loadmat(spm_reference / f"mmp_{case}.mat")
    A, B = cells(m, "A"), cells(m, "B")
    F = len(B)
    t = int(m["t"][0, 0])  # the present, 1-based: steps 1..t are observed
    window = int(m["t_horizon"][0, 0])
    observations = m["obs_idx"].astype(int) - 1  # (M, >= t)
    previous = m["previous_actions"].astype(int).reshape(-1, F) - 1
    policy = m["policy"].astype(int).reshape(1, F) - 1
    # at the last step of the trial (d: t = T = 10) there is no next step to plan for
    actions = previous if t == 10 else np.vstack([previous, policy])
    likelihood = torch.stack([joint_likelihood(A, observations[:, j]) for j in range(t)])[None]
    for j, reference in enumerate(cells(m, "likelihoods")):
        assert_close(likelihood[0, j].reshape(reference.shape), reference)
    num_states = [b.shape[0] for b in B]
    marginals, _, _ = marginal_message_passing(
        likelihood,
        selected(B, actions),
        [torch.full((n,), 1.0 / n, dtype=torch.float64) for n in num_states],
        num_iterations=5,
        tau=0.25,
        window_start=max(0, t - window - 1),  # 1-based j0 = max(1, t - window)
    )
    # qs: SPM's posterior at the last inferred step (t+1, or t at the end of the trial)
    for q, reference in zip(marginals, cells(m, "qs"), strict=True):
        assert_close(q[0, -1], reference.reshape(-1), **SPM_TOLERANCE)


def test_vbx_per_iteration_posteriors_and_errors(spm_reference):
    """xn and vn of the restated spm_MDP_VB_X: 1 factor, one-step policies, window of 3."""
    m = loadmat(spm_reference / "vbx_test_1a.mat")
    A, B = cells(m, "A"), cells(m, "B")
    (b,) = B
    S = b.shape[0]
    observations = m["obs"].astype(int) - 1  # (M, T)
    T = observations.shape[1]
    policies = m["policies"].astype(int).reshape(-1) - 1  # (P,) actions of one-step policies
    P = len(policies)
    actions = m["actions"].astype(int).reshape(-1) - 1  # the T-1 actions SPM chose
    window = int(m["t_horizon"][0, 0])
    iterations = 10
    (xn,), (vn,) = cells(m, "xn"), cells(m, "vn")  # (I, S, j, t, P)
    uniform = torch.full((S,), 1.0 / S, dtype=torch.float64)
    window_prior = [uniform.expand(P, S).clone()]  # SPM's "policy-separated prior"
    likelihood = torch.stack([joint_likelihood(A, observations[:, j]) for j in range(T)])
    for t in range(1, T + 1):  # the present, 1-based
        # rows: the actions taken so far, then each policy's own action (none at the end)
        rows = [actions[: t - 1]] if t == T else [np.append(actions[: t - 1], u) for u in policies]
        rows = np.stack(rows if t < T else rows * P)
        transitions = [torch.stack([torch.stack([b[:, :, u] for u in row]) for row in rows])]
        start = max(0, t - window)  # 1-based j0 = max(1, t - window + 1)
        marginals, _, trace = marginal_message_passing(
            likelihood[None, :t].expand(P, *likelihood[:t].shape),
            transitions,
            [uniform],
            num_iterations=iterations,
            tau=0.25,
            window_start=start,
            window_prior=window_prior,
            record=True,
        )
        steps = rows.shape[1] + 1
        expected_x = xn[:, :, :steps, t - 1, :].permute(0, 3, 2, 1)  # (I, P, j, S)
        expected_v = vn[:, :, :steps, t - 1, :].permute(0, 3, 2, 1)
        assert_close(trace.posteriors[0], expected_x, **SPM_TOLERANCE, msg=f"xn at t={t}")
        assert_close(trace.errors[0], expected_v, **SPM_TOLERANCE, msg=f"vn at t={t}")
        assert not xn[:, :, steps:, t - 1, :].any()  # nothing beyond the horizon
        if t - window >= 0:
            window_prior = [marginals[0][:, t - window]]

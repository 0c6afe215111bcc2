"""The field's variational message-passing schemes over factorised beliefs, batched over N.

Dimension symbols: N independent sequences (or policies), T steps, F factors (S_f states).
Every scheme returns mean-field marginals q(s_f,t); none computes ln p(o). Their free energy is
scored separately (``pp_aif.ops.free_energy.mean_field_free_energy``) so that schemes are compared
on the same objective.

``fixed_point_iteration``        pymdp 1.0's ``run_vanilla_fpi`` (one time step; Heins et al. 2022,
                                 JOSS 7(73) 4098): q_f <- softmax(ln prior_f + E_q-f[ln p(o|s)]),
                                 all factors at once (Jacobi), from uniform beliefs.
``variational_message_passing``  pymdp 1.0's ``run_vmp`` (Winn & Bishop 2005; Parr et al. 2019,
                                 Sci. Rep. 9:1889): every q(s_f,t) moves at once by a gradient step
                                 ln q <- ln q + tau (E[ln A] + E[ln B] forward + E[ln B] backward
                                 - ln q).
``marginal_message_passing``     SPM's ``spm_MDP_VB_X`` (Parr et al. 2019; Friston et al. 2017,
                                 Neural Comput. 29(1)): Gauss-Seidel sweeps over time and factors
                                 with the log of expected (not expected log) messages, a window,
                                 and gradient step tau, as cut out of SPM by pymdp's MATLAB
                                 cross-validation scripts (reproduces ``mmp_*.mat`` and the ``xn``,
                                 ``vn`` of ``vbx_test_1a.mat`` to 1e-15).

Logarithms follow the reference each scheme reproduces: FPI and VMP clip at float eps (pymdp's
``log_stable``); MMP uses ``ln(x + 1e-16)`` (SPM's ``spm_log``).

Costs (J = prod_f S_f, I iterations): FPI O(I F J) per step; VMP O(I T (F J + sum_f S_f^2));
MMP the same as VMP but sequential in t and f, so it runs I T F small batched kernels.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "mean_field_coordinate_ascent",
    "SPM_EPSILON",
    "clipped_log",
    "spm_log",
    "expected_except",
    "fixed_point_iteration",
    "variational_message_passing",
    "marginal_message_passing",
    "MMPTrace",
]

SPM_EPSILON = 1e-16


def clipped_log(x: Tensor) -> Tensor:
    """ln(max(x, eps)) with eps the dtype's machine epsilon (pymdp 1.0's ``log_stable``)."""
    return torch.log(x.clamp_min(torch.finfo(x.dtype).eps))


def spm_log(x: Tensor) -> Tensor:
    """ln(x + 1e-16) (SPM's ``spm_log``)."""
    return torch.log(x + SPM_EPSILON)


def expected_except(joint: Tensor, marginals: Sequence[Tensor], factor: int) -> Tensor:
    """Contract ``joint`` (*batch, S_1..S_F) with every marginal (*batch, S_g) but ``factor``'s.

    Returns (*batch, S_factor): SPM's ``spm_dot(X, x, f)`` over a batch.
    """
    states = string.ascii_letters[: len(marginals)]
    operands, inputs = [joint], [f"...{states}"]
    for g, q in enumerate(marginals):
        if g != factor:
            operands.append(q)
            inputs.append(f"...{states[g]}")
    return torch.einsum(f"{','.join(inputs)}->...{states[factor]}", *operands)


def fixed_point_iteration(
    log_likelihood: Tensor, log_prior: Sequence[Tensor], num_iterations: int
) -> tuple[list[Tensor], Tensor]:
    """pymdp's vanilla FPI at one step.

    log_likelihood : (N, S_1..S_F) ln p(o_t | s_t) (clipped per modality);
    log_prior : F tensors (N, S_f), the log of the empirical prior.
    Returns (q: F tensors (N, S_f), change: (N,) the largest |q| change in the last iteration).
    One factor: exact after one iteration (q = softmax(ln prior + ln p(o | s))).

    Cost: O(num_iterations N F prod_f S_f): each factor's message is an expectation over the
    joint likelihood.
    """
    q = [torch.softmax(torch.zeros_like(p), -1) for p in log_prior]
    change = torch.zeros(
        log_likelihood.shape[0], dtype=log_likelihood.dtype, device=log_likelihood.device
    )
    for _ in range(num_iterations):
        updated = [
            torch.softmax(expected_except(log_likelihood, q, f) + log_prior[f], -1)
            for f in range(len(log_prior))
        ]
        change = torch.stack([(a - b).abs().amax(-1) for a, b in zip(updated, q, strict=True)])
        change = change.amax(0)
        q = updated
    return q, change


def variational_message_passing(
    log_likelihood: Tensor,
    log_transitions: Sequence[Tensor],
    log_prior: Sequence[Tensor],
    num_iterations: int,
    tau: float,
    initial: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """pymdp's VMP over a sequence: F tensors (N, T, S_f).

    log_likelihood : (N, T, S_1..S_F); log_transitions : F tensors (N, T-1, S_next, S_prev)
    ln B_f(u_t) (clipped); log_prior : F tensors (S_f,) or (N, S_f) ln D_f (clipped);
    initial : F tensors (N, T, S_f), the starting beliefs (default uniform).

    Cost: O(num_iterations N T F prod_f S_f), all steps updated at once in each iteration.
    """
    N, T = log_likelihood.shape[:2]
    dtype, device = log_likelihood.dtype, log_likelihood.device
    if initial is None:
        q = [
            torch.full((N, T, b.shape[-1]), 1.0 / b.shape[-1], dtype=dtype, device=device)
            for b in log_transitions
        ]
    else:
        q = list(initial)
    for _ in range(num_iterations):
        log_q = [clipped_log(x) for x in q]
        updated = []
        for f, (x, log_b) in enumerate(zip(q, log_transitions, strict=True)):
            forward = torch.cat(
                [
                    log_prior[f].expand(N, x.shape[-1])[:, None],
                    torch.einsum("ntij,ntj->nti", log_b, x[:, :-1]),
                ],
                1,
            )
            backward = torch.cat(
                [torch.einsum("nti,ntij->ntj", x[:, 1:], log_b), torch.zeros_like(x[:, :1])], 1
            )
            likelihood = expected_except(log_likelihood, q, f)
            error = likelihood - log_q[f] + backward + forward
            updated.append(torch.softmax(log_q[f] + tau * error, -1))
        q = updated
    return q


@dataclass(frozen=True)
class MMPTrace:
    """Per-sweep records of ``marginal_message_passing`` (SPM's ``xn`` and ``vn``).

    posteriors : F tensors (I, N, S, S_f): q(s_f,j) after each sweep, zero outside the window.
    errors : F tensors (I, N, S, S_f): the state prediction error v (after removing its mean).
    """

    posteriors: list[Tensor]
    errors: list[Tensor]


def _reverse_transitions(transitions: Tensor) -> Tensor:
    """SPM's ``spm_norm(B')``: (N, K, S_next, S_prev) -> rows normalised over s_prev, returned as
    (N, K, S_prev, S_next); an all-zero row becomes uniform."""
    reverse = transitions.transpose(-1, -2)
    total = reverse.sum(-2, keepdim=True)
    uniform = torch.full_like(reverse, 1.0 / reverse.shape[-2])
    return torch.where(total > 0, reverse / torch.where(total > 0, total, 1.0), uniform)


def marginal_message_passing(
    likelihood: Tensor,
    transitions: Sequence[Tensor],
    prior: Sequence[Tensor],
    *,
    num_iterations: int,
    tau: float,
    window_start: int = 0,
    window_prior: Sequence[Tensor] | None = None,
    initial: Sequence[Tensor] | None = None,
    record: bool = False,
):
    """SPM's marginal message passing for one policy per sequence.

    Parameters
    ----------
    likelihood : (N, t, S_1..S_F)
        p(o_j | s_j) (not its log; all modalities multiplied) for the observed steps j < t.
    transitions : F tensors (N, S-1, S_next, S_prev)
        B_f(u_j) for j = 0..S-2: the past actions then the policy's; S >= t steps are inferred.
    prior : F tensors (S_f,) or (N, S_f)
        D_f, the forward message into step 0.
    num_iterations, tau
        Sweeps, and the gradient step (SPM: 1/4).
    window_start : int
        j0: steps j0..S-1 are updated, earlier ones stay as ``initial``.
    window_prior : F tensors (N, S_f), optional
        SPM's "policy-separated prior": replaces the forward message into j0 > 0 (the posterior
        of step j0-1 saved at the previous time step, not propagated through B).
    initial : F tensors (N, S, S_f), optional
        Starting beliefs (default uniform).
    record : bool
        Also return an ``MMPTrace`` of every sweep.

    Returns
    -------
    marginals : F tensors (N, S, S_f)
    spm_free_energy : (N,) SPM's accumulated F of the last sweep (as in its test scripts; used by
        SPM's policy posterior, not a bound on -ln p(o))
    trace : MMPTrace or None

    The update, for j in j0..S-1 (in order) and f = 1..F (in order), with xq the current
    marginals at j (updated factor by factor) and x_j = q(s_f,j):
        qL = ln(E_xq-f[p(o_j | s)] + e)              (0 for j >= t, unobserved)
        v  = ln(B(u_j-1) x_j-1 + e) + qL - ln(x_j + e)     (ln D at j = 0)
        v += ln(rB(u_j) x_j+1 + e) + qL - ln(x_j + e)      (only for j < t-1)
        x_j = softmax(ln(x_j + e) + tau (v - mean v)),   e = 1e-16.

    Cost: O(num_iterations N S F prod_f S_f), in num_iterations x S sequential updates (the
    update at j uses the one at j - 1, as in SPM).
    """
    N, t_observed = likelihood.shape[:2]
    F = len(transitions)
    S = transitions[0].shape[1] + 1
    dtype, device = likelihood.dtype, likelihood.device
    num_states = [b.shape[-1] for b in transitions]
    if initial is None:
        x = [torch.full((N, S, n), 1.0 / n, dtype=dtype, device=device) for n in num_states]
    else:
        x = list(initial)
    # one tensor per factor and step, replaced (never written into), so that gradients pass
    # (the agent's transitions may depend on fitted parameters)
    x = [list(q.unbind(1)) for q in x]
    reverse = [_reverse_transitions(b) for b in transitions]
    last_backward = t_observed - 1  # backward messages for j < t-1 (SPM: j < R = t, 1-based)
    trace = None
    if record:
        trace = MMPTrace(
            [torch.zeros(num_iterations, N, S, n, dtype=dtype, device=device) for n in num_states],
            [torch.zeros(num_iterations, N, S, n, dtype=dtype, device=device) for n in num_states],
        )
    spm_free_energy = torch.zeros(N, dtype=dtype, device=device)
    for iteration in range(num_iterations):
        spm_free_energy = torch.zeros(N, dtype=dtype, device=device)
        for j in range(window_start, S):
            current = [q[j] for q in x]
            for f in range(F):
                sx = x[f][j]
                log_sx = spm_log(sx)
                if j < t_observed:
                    log_evidence = spm_log(expected_except(likelihood[:, j], current, f))
                else:
                    log_evidence = torch.zeros_like(sx)
                if j == 0:
                    forward = spm_log(prior[f]).expand_as(sx)
                elif window_prior is not None and j == window_start:
                    forward = spm_log(window_prior[f])
                else:
                    forward = spm_log(
                        torch.einsum("nij,nj->ni", transitions[f][:, j - 1], x[f][j - 1])
                    )
                v = forward + log_evidence - log_sx
                if j < last_backward:
                    backward = spm_log(torch.einsum("nij,nj->ni", reverse[f][:, j], x[f][j + 1]))
                    v = v + backward + log_evidence - log_sx
                if j == 0 or j == S - 1:
                    spm_free_energy = spm_free_energy + (sx * 0.5 * v).sum(-1)
                else:
                    spm_free_energy = spm_free_energy + (
                        sx * (0.5 * v - (F - 1) * log_evidence / F)
                    ).sum(-1)
                v = v - v.mean(-1, keepdim=True)
                sx = torch.softmax(log_sx + tau * v, -1)
                x[f][j] = sx
                current[f] = sx
                if record:
                    trace.posteriors[f][iteration, :, j] = sx
                    trace.errors[f][iteration, :, j] = v
    return [torch.stack(q, 1) for q in x], spm_free_energy, trace


def _split_log(log_values: Tensor) -> tuple[Tensor, Tensor]:
    """(ln X with -inf set to 0, 1 where ln X = -inf): contracted against weights they give
    E_q[ln X] with 0 ln 0 = 0, and whether any positive weight meets ln 0 (then -inf)."""
    finite = torch.isfinite(log_values)
    return torch.where(finite, log_values, 0.0), (~finite).to(log_values.dtype)


def mean_field_coordinate_ascent(
    log_likelihood: Tensor,
    transitions: Sequence[Tensor],
    initial: Sequence[Tensor],
    marginals: Sequence[Tensor],
    *,
    max_sweeps: int = 1000,
    tolerance: float = 1e-12,
) -> tuple[list[Tensor], int, bool]:
    """Coordinate ascent (CAVI) on the mean-field free energy, with exact logarithms.

    q(s_f,t) ∝ exp(E_q[ln p(o_t | s_t)] + E_q[ln p(s_f,t | s_f,t-1)] + E_q[ln p(s_f,t+1 | s_f,t)])
    (ln D_f at t = 0), over the factors and steps in turn (Gauss-Seidel; Bishop 2006, eq. 10.9).
    A state whose expectation meets ln 0 with positive weight gets q = 0 exactly. Each update
    is the exact minimum of F over one marginal, so F never rises: started from marginals of
    finite F (e.g. the most probable path, ``pp_aif.ops.hmm.most_probable_path``), every
    iterate has finite F, and the fixed point is a mean-field optimum no worse than the start.
    This is how a product of marginals avoids the impossible pairs that structural zeros make:
    zero-forcing, where a floor on ln p would have spread mass over them.

    log_likelihood (N, T, S_1..S_F) exact ln p(o_t | s_t); transitions F x (N, T-1, S', S);
    initial F x (S_f,) or (N, S_f); marginals F x (N, T, S_f) to start from (finite F).
    Returns (marginals, sweeps, converged: max change < tolerance in the last sweep).
    """
    q = [m.clone() for m in marginals]
    F = len(q)
    N, T = log_likelihood.shape[:2]
    likelihood = _split_log(log_likelihood)
    starts = [_split_log(torch.log(d).expand(N, -1)) for d in initial]
    steps = [_split_log(torch.log(b)) for b in transitions]  # (N, T-1, S', S) each
    converged, sweeps = False, 0
    for sweeps in range(1, max_sweeps + 1):  # noqa: B007 - the count is returned
        change = torch.zeros((), dtype=log_likelihood.dtype, device=log_likelihood.device)
        for t in range(T):
            for f in range(F):
                present = [q[g][:, t] for g in range(F)]
                value, ruled_out = (expected_except(x[:, t], present, f) for x in likelihood)
                parts = []
                if t == 0:
                    parts.append(starts[f])
                else:  # E over s_t-1 of ln p(s_t = i | s_t-1 = j)
                    parts.append(
                        [torch.einsum("nij,nj->ni", x[:, t - 1], q[f][:, t - 1]) for x in steps[f]]
                    )
                if t < T - 1:  # E over s_t+1 of ln p(s_t+1 = j | s_t = i)
                    parts.append(
                        [torch.einsum("nji,nj->ni", x[:, t], q[f][:, t + 1]) for x in steps[f]]
                    )
                for finite_part, ruled_out_part in parts:
                    value = value + finite_part
                    ruled_out = ruled_out + ruled_out_part
                updated = torch.softmax(torch.where(ruled_out > 0, -torch.inf, value), -1)
                change = torch.maximum(change, (updated - q[f][:, t]).abs().max())
                q[f] = torch.cat([q[f][:, :t], updated[:, None], q[f][:, t + 1 :]], 1)
        if change < tolerance:
            converged = True
            break
    return q, sweeps, converged

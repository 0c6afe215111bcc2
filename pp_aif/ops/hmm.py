"""Exact filtering and smoothing for a POMDP whose hidden state factorises into F factors.

Dimension symbols: N sequences (the flattened batch), T time steps, F factors with S_1..S_F
states, M modalities. A *joint* tensor has the F factor axes on the right: (N, S_1, ..., S_F).

Inputs (all already validated by the caller):
``log_likelihood``  (N, T, S_1, ..., S_F)  ln p(o_t | s_t) = sum_m ln A_m[o_t,m, s_t]
``transitions``     F tensors (N, T-1, S_f, S_f), ``[n, t, s_next, s_prev]`` = p(s_t+1 | s_t, u_t)
``initial``         F tensors (S_f,) or (N, S_f), p(s_f at t = 0)

The transition acts on each factor separately, so one step of the forward recursion contracts
the joint tensor factor by factor: about prod(S) * sum(S) operations, not prod(S) ** 2.

Numerics. The forward pass works with normalised filtered beliefs and accumulates the log
normalisers. Each step's likelihood is shifted by its maximum before exponentiating (the
``logmatmulexp`` trick of ``pyro.distributions.hmm``); a sequence whose normaliser still gets
near underflow is recomputed with the shift taken on the log joint itself (see
``forward_filter``). The smoother is the
alpha-gamma (Rauch-Tung-Striebel) form, which needs only normalised quantities:

    gamma_t(s) = alpha_t(s) * sum_s' p(s' | s, u_t) gamma_t+1(s') / prior_t+1(s'),

with 0/0 = 0 where a state is unreachable (a structural zero). ln 0 = -inf is kept exact, so
structural zeros in A, B and D never produce NaN. A sequence that is impossible under the model
gets a log normaliser of -inf at the first impossible step; the caller turns it into an error.

References: Rabiner (1989), Proc. IEEE 77(2), eqs. 18-27 (scaled forward-backward); Murphy (2012),
*Machine Learning*, sec. 17.4.3 (the alpha-gamma smoother).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from pp_aif.ops.contractions import outer

__all__ = [
    "FilterResult",
    "observation_log_likelihood",
    "select_transitions",
    "propagate",
    "forward_filter",
    "smooth",
    "factor_marginals",
]


class FilterResult(NamedTuple):
    """The forward pass.

    filtered : (N, T, S_1..S_F)   q(s_t | o_1:t), each slice sums to 1 (0 after an impossible step)
    predicted : (N, T, S_1..S_F)  p(s_t | o_1:t-1), the prior of step t (D at t = 0)
    log_normalisers : (N, T)      ln p(o_t | o_1:t-1); sum over t = ln p(o_1:T)
    """

    filtered: Tensor
    predicted: Tensor
    log_normalisers: Tensor


def observation_log_likelihood(
    log_A: Sequence[Tensor], observations: Tensor, *, per_sequence: bool = False
) -> Tensor:
    """ln p(o_t | s) for every step and joint state.

    Parameters
    ----------
    log_A : M tensors (O_m, S_1, ..., S_F), or (N, O_m, S_1, ..., S_F) with ``per_sequence``
        (one likelihood per sequence, e.g. each agent's learned A)
    observations : int (N, T, M)

    Returns
    -------
    Tensor (N, T, S_1, ..., S_F)
    """
    rows = torch.arange(observations.shape[0], device=observations.device)[:, None]
    total = 0
    for m, a in enumerate(log_A):
        total = total + (a[rows, observations[..., m]] if per_sequence else a[observations[..., m]])
    return total


def select_transitions(
    transition_by_action: Sequence[Tensor], actions: Tensor, *, per_sequence: bool = False
) -> list[Tensor]:
    """The transition matrix of each factor at each step, chosen by the actions.

    transition_by_action : F tensors (U_f, S_next, S_prev), or (N, U_f, S_next, S_prev) with
    ``per_sequence``; actions : int (N, T-1, F). Returns F tensors (N, T-1, S_next, S_prev).
    """
    if not per_sequence:
        return [b[actions[..., f]] for f, b in enumerate(transition_by_action)]
    rows = torch.arange(actions.shape[0], device=actions.device)[:, None]
    return [b[rows, actions[..., f]] for f, b in enumerate(transition_by_action)]


def propagate(joint: Tensor, matrices: Sequence[Tensor], *, transpose: bool = False) -> Tensor:
    """Apply a factorised transition to a joint tensor, one factor at a time.

    joint : (N, S_1, ..., S_F); matrices : F tensors (N, S_next, S_prev).
    ``transpose=False``: sum_s prod_f B_f[s'_f, s_f] joint[s]  (predict forward).
    ``transpose=True``:  sum_s' prod_f B_f[s'_f, s_f] joint[s'] (pull a message backward).
    Each factor is one batched matrix product over a (N, before, S_f, after) view.
    """
    shape = joint.shape
    N = shape[0]
    for f, matrix in enumerate(matrices):
        before = math.prod(shape[1 : f + 1])
        after = math.prod(shape[f + 2 :])
        if transpose:
            matrix = matrix.transpose(-1, -2)
        joint = torch.matmul(matrix.unsqueeze(1), joint.reshape(N, before, shape[f + 1], after))
    return joint.reshape(shape)


def _forward_scaled(likelihood: Tensor, transitions: Sequence[Tensor], prior: Tensor):
    """The forward recursion in probability space on shifted likelihoods (N, T, S_1..S_F).

    Returns (filtered, predicted, normalisers (N, T)); a normaliser that underflows is 0.
    """
    T = likelihood.shape[1]
    filtered, predicted, normalisers = [], [], []
    for t in range(T):
        if t > 0:
            prior = propagate(filtered[-1], [b[:, t - 1] for b in transitions])
        joint = prior * likelihood[:, t]
        total = joint.flatten(1).sum(-1)
        predicted.append(prior)
        filtered.append(joint / total.reshape(-1, *([1] * (joint.dim() - 1))))
        normalisers.append(total)
    return torch.stack(filtered, 1), torch.stack(predicted, 1), torch.stack(normalisers, 1)


def _forward_log_space(log_likelihood: Tensor, transitions: Sequence[Tensor], prior: Tensor):
    """The same recursion, shifting each step's log joint by its own maximum: never underflows.

    Returns (filtered, predicted, log_normalisers (N, T)); -inf marks an impossible step, after
    which the filtered beliefs of that sequence are 0.
    """
    N, T = log_likelihood.shape[:2]
    state_shape = log_likelihood.shape[2:]
    filtered, predicted, log_normalisers = [], [], []
    for t in range(T):
        if t > 0:
            prior = propagate(filtered[-1], [b[:, t - 1] for b in transitions])
        log_joint = (torch.log(prior) + log_likelihood[:, t]).reshape(N, -1)
        shift = log_joint.amax(-1)
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        weights = torch.exp(log_joint - shift[:, None])
        total = weights.sum(-1)
        posterior = weights / torch.where(total > 0, total, torch.ones_like(total))[:, None]
        predicted.append(prior)
        filtered.append(posterior.reshape(N, *state_shape))
        log_normalisers.append(shift + torch.log(total))
    return torch.stack(filtered, 1), torch.stack(predicted, 1), torch.stack(log_normalisers, 1)


def forward_filter(
    log_likelihood: Tensor, transitions: Sequence[Tensor], initial: Sequence[Tensor]
) -> FilterResult:
    """Scaled forward recursion (Rabiner 1989, eqs. 18-20 and 91-92), in the shapes of the module.

    The fast path works in probability space with each step's likelihood divided by its largest
    value over states (one batched exp for all steps). Where a step's normaliser falls below
    sqrt(tiny) of the dtype (1.5e-154 in float64: the prior puts its mass only on states whose
    likelihood is that much below the best state's), or the sequence is impossible, that
    sequence is recomputed by the log-space recursion, which shifts by the maximum of the
    log joint itself and so loses nothing.

    Cost: O(N T prod_f S_f sum_f S_f) arithmetic (one matrix product per factor per step, on
    the joint state), and T sequential steps of O(F) tensor operations each; memory
    O(N T prod_f S_f). ``docs/benchmarks.md`` ("Cost as the state space grows") measures it.
    """
    N = log_likelihood.shape[0]
    prior = outer(*[q.expand(N, -1) for q in initial], batch_dims=1)
    step_shift = log_likelihood.flatten(2).amax(-1)  # (N, T)
    finite_shift = torch.where(torch.isfinite(step_shift), step_shift, torch.zeros_like(step_shift))
    likelihood = torch.exp(
        log_likelihood
        - finite_shift.reshape(*step_shift.shape, *([1] * (log_likelihood.dim() - 2)))
    )
    filtered, predicted, normalisers = _forward_scaled(likelihood, transitions, prior)
    log_normalisers = torch.log(normalisers) + finite_shift
    redo = (normalisers < math.sqrt(torch.finfo(normalisers.dtype).tiny)).any(-1)
    if redo.any():
        index = redo.nonzero()[:, 0]
        robust = _forward_log_space(
            log_likelihood[index], [b[index] for b in transitions], prior[index]
        )
        filtered, predicted, log_normalisers = (
            whole.index_put((index,), part)
            for whole, part in zip((filtered, predicted, log_normalisers), robust, strict=True)
        )
    return FilterResult(filtered, predicted, log_normalisers)


def smooth(filtered: Tensor, predicted: Tensor, transitions: Sequence[Tensor]) -> Tensor:
    """The alpha-gamma smoother: q(s_t | o_1:T) for every t, (N, T, S_1..S_F).

    Cost: as ``forward_filter``, O(N T prod_f S_f sum_f S_f), in T sequential steps."""
    N, T = filtered.shape[:2]
    safe_predicted = torch.where(predicted > 0, predicted, torch.ones_like(predicted))
    ones = [1] * (filtered.dim() - 2)
    smoothed = [filtered[:, T - 1]]
    for t in range(T - 2, -1, -1):
        ratio = smoothed[-1] / safe_predicted[:, t + 1]
        message = propagate(ratio, [b[:, t] for b in transitions], transpose=True)
        unnormalised = filtered[:, t] * message
        total = unnormalised.flatten(1).sum(-1)
        total = torch.where(total > 0, total, torch.ones_like(total))
        smoothed.append(unnormalised / total.reshape(N, *ones))
    smoothed.reverse()
    return torch.stack(smoothed, 1)


def factor_marginals(joint: Tensor, num_batch_dims: int) -> list[Tensor]:
    """Marginals of each factor of a joint (*batch, S_1, ..., S_F): F tensors (*batch, S_f)."""
    F = joint.dim() - num_batch_dims
    factor_axes = list(range(num_batch_dims, joint.dim()))
    return [
        joint.sum(dim=[a for a in factor_axes if a != num_batch_dims + f]) if F > 1 else joint
        for f in range(F)
    ]

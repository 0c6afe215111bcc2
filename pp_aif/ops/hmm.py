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
near underflow is recomputed, and smoothed, in log space throughout (``log_propagate``: each
sum is a log-sum-exp over the terms ln B + ln alpha, so a state of probability 1e-600 that is
later the only possible one is not lost; see ``forward_filter``). The smoother is the
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
from pp_aif.ops.numerics import logsumexp, safe_log

__all__ = [
    "FilterResult",
    "observation_log_likelihood",
    "select_transitions",
    "bayes_update",
    "propagate",
    "forward_filter",
    "log_propagate",
    "smooth",
    "smoothed_log_space",
    "most_probable_path",
    "factor_marginals",
]


class FilterResult(NamedTuple):
    """The forward pass.

    filtered : (N, T, S_1..S_F)   q(s_t | o_1:t), each slice sums to 1 (0 after an impossible step)
    predicted : (N, T, S_1..S_F)  p(s_t | o_1:t-1), the prior of step t (D at t = 0)
    log_normalisers : (N, T)      ln p(o_t | o_1:t-1); sum over t = ln p(o_1:T)
    log_space : (N,) bool or None  the sequences recomputed in log space (see ``forward_filter``);
                                   pass it to ``smooth``. None: none was.
    """

    filtered: Tensor
    predicted: Tensor
    log_normalisers: Tensor
    log_space: Tensor | None = None


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


def bayes_update(prior: Tensor, log_likelihood: Tensor) -> tuple[Tensor, Tensor]:
    """One step of Bayes' rule over the joint state: the online filter step.

    prior : (N, S_1..S_F) p(s_t | o_<t); log_likelihood : (N, S_1..S_F) ln p(o_t | s_t).
    Returns (posterior (N, S_1..S_F), ln p(o_t | o_<t) (N,)). The product is formed in log
    space and shifted by its largest term, so a small prior times a small likelihood does not
    underflow; where the outcome is impossible (every term -inf) the evidence is -inf and that
    agent's posterior is NaN: the caller names it (``pp_aif.agent.step`` raises a DataError).
    """
    log_joint = (safe_log(prior) + log_likelihood).flatten(1)
    shift = log_joint.amax(-1, keepdim=True)
    weights = torch.exp(log_joint - shift)
    total = weights.sum(-1, keepdim=True)
    posterior = (weights / total).reshape(prior.shape)
    return posterior, (shift + torch.log(total))[:, 0]


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


def _log_outer(initial: Sequence[Tensor], N: int) -> Tensor:
    """ln of the joint prior prod_f D_f, (N, S_1..S_F), summed in log space (no underflow)."""
    F = len(initial)
    total = 0
    for f, q in enumerate(initial):
        log_q = torch.log(q.expand(N, -1))
        total = total + log_q.reshape(N, *([1] * f), -1, *([1] * (F - f - 1)))
    return total


def log_propagate(
    log_joint: Tensor, log_matrices: Sequence[Tensor], *, transpose: bool = False
) -> Tensor:
    """``propagate`` in log space: ln sum_s prod_f B_f[s'_f, s_f] exp(log_joint[s]).

    log_joint : (N, S_1, ..., S_F); log_matrices : F tensors (N, S_next, S_prev), ln B.
    Each factor's sum is a log-sum-exp over the terms ln B + log_joint themselves, so a state
    whose probability is far below the largest (1e-600, say) still reaches the states that only
    it can reach. Costs a (N, R, S_f, S_f) tensor per factor, against propagate's matmul.
    """
    N = log_joint.shape[0]
    for f, log_matrix in enumerate(log_matrices):
        axis = f + 1
        if transpose:
            log_matrix = log_matrix.transpose(-1, -2)
        moved = log_joint.movedim(axis, -1)  # (N, ..., S_prev)
        rest = moved.shape[:-1]
        terms = moved.reshape(N, -1, 1, moved.shape[-1]) + log_matrix[:, None]  # (N, R, S', S)
        summed = logsumexp(terms, -1)  # (N, R, S')
        log_joint = summed.reshape(*rest, log_matrix.shape[-2]).movedim(-1, axis)
    return log_joint


def _forward_log_space(
    log_likelihood: Tensor, log_transitions: Sequence[Tensor], log_prior: Tensor
):
    """The forward recursion carried in log space throughout: exact whatever the dynamic range.

    Returns (log_filtered, log_predicted, log_normalisers (N, T)); -inf marks an impossible
    step, after which the sequence's log beliefs are -inf.
    """
    N, T = log_likelihood.shape[:2]
    shape = log_likelihood.shape[2:]
    filtered, predicted, log_normalisers = [], [], []
    for t in range(T):
        if t > 0:
            log_prior = log_propagate(filtered[-1], [b[:, t - 1] for b in log_transitions])
        log_joint = log_prior + log_likelihood[:, t]
        log_normaliser = logsumexp(log_joint.reshape(N, -1), -1)
        finite = torch.isfinite(log_normaliser).reshape(N, *([1] * len(shape)))
        safe = torch.where(finite, log_normaliser.reshape(finite.shape), 0.0)
        filtered.append(torch.where(finite, log_joint - safe, -torch.inf))
        predicted.append(log_prior)
        log_normalisers.append(log_normaliser)
    return torch.stack(filtered, 1), torch.stack(predicted, 1), torch.stack(log_normalisers, 1)


def _backward_log_space(log_likelihood: Tensor, log_transitions: Sequence[Tensor]) -> Tensor:
    """ln beta_t(s) = ln p(o_t+1:T | s_t = s), (N, T, S_1..S_F), in log space throughout."""
    T = log_likelihood.shape[1]
    backward = [torch.zeros_like(log_likelihood[:, T - 1])]
    for t in range(T - 2, -1, -1):
        message = log_likelihood[:, t + 1] + backward[-1]
        backward.append(log_propagate(message, [b[:, t] for b in log_transitions], transpose=True))
    backward.reverse()
    return torch.stack(backward, 1)


def _normalise_log(log_joint: Tensor) -> Tensor:
    """exp(x - ln sum exp x) over the state axes of (N, T, S_1..S_F); 0 where all are -inf."""
    N, T = log_joint.shape[:2]
    flat = log_joint.reshape(N, T, -1)
    total = logsumexp(flat, -1)[..., None]
    finite = torch.isfinite(total)
    return torch.where(finite, torch.exp(flat - torch.where(finite, total, 0.0)), 0.0).reshape(
        log_joint.shape
    )


def forward_filter(
    log_likelihood: Tensor, transitions: Sequence[Tensor], initial: Sequence[Tensor]
) -> FilterResult:
    """Scaled forward recursion (Rabiner 1989, eqs. 18-20 and 91-92), in the shapes of the module.

    The fast path works in probability space with each step's likelihood divided by its largest
    value over states (one batched exp for all steps). Where a step's normaliser falls below
    sqrt(tiny) of the dtype (1.5e-154 in float64: the prior puts its mass only on states whose
    likelihood is that much below the best state's, or a state whose probability underflowed
    is the only one left possible), or the sequence is impossible, that sequence is recomputed
    by the recursion carried in log space (``log_propagate``), which loses nothing; its rows are
    marked in ``FilterResult.log_space`` so that the smoother works in log space on them too.

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
    if not redo.any():
        return FilterResult(filtered, predicted, log_normalisers)
    index = redo.nonzero()[:, 0]
    log_filtered, log_predicted, redone = _forward_log_space(
        log_likelihood[index],
        [torch.log(b[index]) for b in transitions],
        _log_outer([q if q.dim() == 1 else q[index] for q in initial], len(index)),
    )
    filtered = filtered.index_put((index,), _normalise_log(log_filtered))
    predicted = predicted.index_put((index,), _normalise_log(log_predicted))
    log_normalisers = log_normalisers.index_put((index,), redone)
    return FilterResult(filtered, predicted, log_normalisers, redo)


def smoothed_log_space(
    log_likelihood: Tensor, transitions: Sequence[Tensor], initial: Sequence[Tensor]
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Forward-backward carried in log space: (smoothed (N, T, S_1..S_F), log beta (N, T, ...),
    log transitions F x (N, T-1, S', S)). For the sequences that ``forward_filter`` marks in
    ``log_space``; exact whatever the dynamic range, at the cost of ``log_propagate``."""
    N = log_likelihood.shape[0]
    log_transitions = [torch.log(b) for b in transitions]
    log_filtered, _, _ = _forward_log_space(log_likelihood, log_transitions, _log_outer(initial, N))
    log_backward = _backward_log_space(log_likelihood, log_transitions)
    return _normalise_log(log_filtered + log_backward), log_backward, log_transitions


def smooth(
    filtered: Tensor,
    predicted: Tensor,
    transitions: Sequence[Tensor],
    *,
    log_space: Tensor | None = None,
    log_likelihood: Tensor | None = None,
    initial: Sequence[Tensor] | None = None,
) -> Tensor:
    """The alpha-gamma smoother: q(s_t | o_1:T) for every t, (N, T, S_1..S_F).

    ``log_space`` (N,) bool, from ``FilterResult.log_space``: those sequences are smoothed in
    log space (``smoothed_log_space``, which needs ``log_likelihood`` and ``initial``), since
    their normalised filtered beliefs have lost states whose probability underflowed.

    Cost: as ``forward_filter``, O(N T prod_f S_f sum_f S_f), in T sequential steps."""
    smoothed = _smooth_scaled(filtered, predicted, transitions)
    if log_space is None or not log_space.any():
        return smoothed
    if log_likelihood is None or initial is None:
        raise ValueError("smooth: sequences in log space need log_likelihood and initial")
    index = log_space.nonzero()[:, 0]
    exact, _, _ = smoothed_log_space(
        log_likelihood[index],
        [b[index] for b in transitions],
        [q if q.dim() == 1 else q[index] for q in initial],
    )
    return smoothed.index_put((index,), exact)


def _smooth_scaled(filtered: Tensor, predicted: Tensor, transitions: Sequence[Tensor]) -> Tensor:
    """The alpha-gamma recursion on normalised beliefs in probability space."""
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


def most_probable_path(
    log_likelihood: Tensor, transitions: Sequence[Tensor], initial: Sequence[Tensor]
) -> Tensor:
    """argmax over paths of p(o_1:T, s_1:T | u), by the Viterbi recursion in log space.

    log_likelihood (N, T, S_1..S_F), transitions F x (N, T-1, S', S), initial F x (S_f,) or
    (N, S_f). Returns int64 (N, T, F): each factor's state at each step (ties: the lowest
    joint index). Cost O(N T K^2) for K = prod_f S_f joint states (Rabiner 1989, eqs. 30-35).
    """
    N, T = log_likelihood.shape[:2]
    num_states = tuple(log_likelihood.shape[2:])
    K = math.prod(num_states)
    F = len(num_states)
    # ln p(s_t+1 | s_t) over the flattened joint, (N, T-1, K_prev, K_next)
    log_pairs = log_likelihood.new_zeros(N, T - 1, 1, 1)
    for b in transitions:
        log_b = torch.log(b).transpose(-1, -2)  # (N, T-1, S_prev, S_next)
        S = log_b.shape[-1]
        log_pairs = (log_pairs[..., :, None, :, None] + log_b[..., None, :, None, :]).reshape(
            N, T - 1, log_pairs.shape[-2] * S, log_pairs.shape[-1] * S
        )
    flat = log_likelihood.reshape(N, T, K)
    score = _log_outer(initial, N).reshape(N, K) + flat[:, 0]
    pointers = []
    for t in range(1, T):
        best, argbest = (score[:, :, None] + log_pairs[:, t - 1]).max(1)  # over the previous
        pointers.append(argbest)
        score = best + flat[:, t]
    path = [score.argmax(-1)]
    for argbest in reversed(pointers):
        path.append(argbest.gather(1, path[-1][:, None])[:, 0])
    path.reverse()
    joint = torch.stack(path, 1)  # (N, T)
    strides = [math.prod(num_states[f + 1 :]) for f in range(F)]
    return torch.stack([(joint // k) % S for k, S in zip(strides, num_states, strict=True)], -1)

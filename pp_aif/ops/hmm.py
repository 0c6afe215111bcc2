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
normalisers, shifting each step's log-joint by its maximum before exponentiating (the
``logmatmulexp`` trick of ``pyro.distributions.hmm``), so no step underflows. The smoother is the
alpha-gamma (Rauch-Tung-Striebel) form, which needs only normalised quantities:

    gamma_t(s) = alpha_t(s) * sum_s' p(s' | s, u_t) gamma_t+1(s') / prior_t+1(s'),

with 0/0 = 0 where a state is unreachable (a structural zero). ln 0 = -inf is kept exact, so
structural zeros in A, B and D never produce NaN. A sequence that is impossible under the model
gets a log normaliser of -inf at the first impossible step; the caller turns it into an error.

References: Rabiner (1989), Proc. IEEE 77(2), eqs. 18-27 (scaled forward-backward); Murphy (2012),
*Machine Learning*, sec. 17.4.3 (the alpha-gamma smoother).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
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

_FACTOR_LETTERS = "abcdefghijklmnopqrstuvwx"


class FilterResult(NamedTuple):
    """The forward pass.

    filtered : (N, T, S_1..S_F)   q(s_t | o_1:t), each slice sums to 1 (0 after an impossible step)
    predicted : (N, T, S_1..S_F)  p(s_t | o_1:t-1), the prior of step t (D at t = 0)
    log_normalisers : (N, T)      ln p(o_t | o_1:t-1); sum over t = ln p(o_1:T)
    """

    filtered: Tensor
    predicted: Tensor
    log_normalisers: Tensor


def observation_log_likelihood(log_A: Sequence[Tensor], observations: Tensor) -> Tensor:
    """ln p(o_t | s) for every step and joint state.

    Parameters
    ----------
    log_A : M tensors (O_m, S_1, ..., S_F)
    observations : int (N, T, M)

    Returns
    -------
    Tensor (N, T, S_1, ..., S_F)
    """
    total = log_A[0][observations[..., 0]]
    for m in range(1, len(log_A)):
        total = total + log_A[m][observations[..., m]]
    return total


def select_transitions(transition_by_action: Sequence[Tensor], actions: Tensor) -> list[Tensor]:
    """The transition matrix of each factor at each step, chosen by the actions.

    transition_by_action : F tensors (U_f, S_next, S_prev); actions : int (N, T-1, F).
    Returns F tensors (N, T-1, S_next, S_prev).
    """
    return [b[actions[..., f]] for f, b in enumerate(transition_by_action)]


@cache
def _equation(num_factors: int, factor: int, transpose: bool) -> str:
    letters = _FACTOR_LETTERS[:num_factors]
    old = letters[factor]
    joint = "y" + letters
    matrix = "y" + (old + "z" if transpose else "z" + old)
    result = "y" + letters.replace(old, "z")
    return f"{joint},{matrix}->{result}"


def propagate(joint: Tensor, matrices: Sequence[Tensor], *, transpose: bool = False) -> Tensor:
    """Apply a factorised transition to a joint tensor, one factor at a time.

    joint : (N, S_1, ..., S_F); matrices : F tensors (N, S_next, S_prev).
    ``transpose=False``: sum_s prod_f B_f[s'_f, s_f] joint[s]  (predict forward).
    ``transpose=True``:  sum_s' prod_f B_f[s'_f, s_f] joint[s'] (pull a message backward).
    """
    F = len(matrices)
    for f, matrix in enumerate(matrices):
        joint = torch.einsum(_equation(F, f, transpose), joint, matrix)
    return joint


def forward_filter(
    log_likelihood: Tensor, transitions: Sequence[Tensor], initial: Sequence[Tensor]
) -> FilterResult:
    """Scaled forward recursion (Rabiner 1989, eqs. 18-20 and 91-92), in the shapes of the module."""
    N, T = log_likelihood.shape[:2]
    state_shape = log_likelihood.shape[2:]
    initial = [q.expand(N, -1) for q in initial]
    prior = outer(*initial, batch_dims=1)
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
    return FilterResult(
        torch.stack(filtered, 1), torch.stack(predicted, 1), torch.stack(log_normalisers, 1)
    )


def smooth(filtered: Tensor, predicted: Tensor, transitions: Sequence[Tensor]) -> Tensor:
    """The alpha-gamma smoother: q(s_t | o_1:T) for every t, (N, T, S_1..S_F)."""
    N, T = filtered.shape[:2]
    smoothed = [filtered[:, T - 1]]
    for t in range(T - 2, -1, -1):
        prior_next = predicted[:, t + 1]
        ratio = smoothed[-1] / torch.where(prior_next > 0, prior_next, torch.ones_like(prior_next))
        message = propagate(ratio, [b[:, t] for b in transitions], transpose=True)
        unnormalised = filtered[:, t] * message
        total = unnormalised.reshape(N, -1).sum(-1)
        total = torch.where(total > 0, total, torch.ones_like(total))
        smoothed.append(unnormalised / total.reshape(N, *([1] * (filtered.dim() - 2))))
    smoothed.reverse()
    return torch.stack(smoothed, 1)


def factor_marginals(joint: Tensor, num_batch_dims: int) -> list[Tensor]:
    """Marginals of each factor of a joint tensor (*batch, S_1, ..., S_F): F tensors (*batch, S_f)."""
    F = joint.dim() - num_batch_dims
    factor_axes = list(range(num_batch_dims, joint.dim()))
    return [
        joint.sum(dim=[a for a in factor_axes if a != num_batch_dims + f]) if F > 1 else joint
        for f in range(F)
    ]

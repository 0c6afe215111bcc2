"""Variational free energy of beliefs about a sequence of hidden states.

Dimension symbols: N sequences, T steps, F factors (S_f states), K = prod_f S_f joint states.

    F[q] = E_q[ln q(s_1:T) - ln p(o_1:T, s_1:T | u)]  >=  -ln p(o_1:T | u),

with equality exactly when q is the posterior (Beal 2003, ch. 2; Friston et al. 2017, Neural
Comput. 29(1), eq. 3). Two families of q:

- mean field: q(s) = prod_t prod_f q(s_f,t), given by the marginals F x (N, T, S_f);
- Markov chain over the joint state: q(s_1:T) = q(s_1) prod_t q(s_t+1 | s_t), given by an initial
  joint (N, K) and conditionals (N, T-1, K, K) indexed ``[n, t, s_t, s_t+1]``. It contains the
  exact posterior, so its F can reach -ln p(o).

0 ln 0 = 0 throughout; a belief that puts mass where the model has probability 0 has F = +inf.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pp_aif.ops.contractions import outer
from pp_aif.ops.hmm import smooth, smoothed_log_space
from pp_aif.ops.numerics import logsumexp, xlogy

__all__ = [
    "expected_log",
    "joint_log_transitions",
    "mean_field_free_energy",
    "chain_free_energy",
    "exact_chain",
    "posterior_as_chain",
    "joint_log_initial",
    "chain_joint_marginals",
]


def expected_log(weights: Tensor, log_values: Tensor, dims) -> Tensor:
    """sum weights * log_values over ``dims``, with 0 * (-inf) = 0 (structural zeros), and a
    finite gradient there (the -inf is never multiplied, even in the branch not taken)."""
    held = weights > 0
    safe = torch.where(held, log_values, torch.zeros_like(log_values))
    terms = torch.where(held, weights * safe, torch.zeros_like(weights))
    return terms.sum(dims)


def _log(x: Tensor) -> Tensor:
    """ln x, -inf at 0, with a zero gradient there instead of 0 / 0 = NaN."""
    positive = x > 0
    return torch.where(positive, torch.log(torch.where(positive, x, 1.0)), -torch.inf)


def joint_log_transitions(transitions: Sequence[Tensor]) -> Tensor:
    """ln p(s_t+1 | s_t, u_t) over the flattened joint state: (N, T-1, K_prev, K_next).

    transitions : F tensors (N, T-1, S_next, S_prev) (``pp_aif.ops.hmm.select_transitions``).
    """
    log_t = [torch.log(b).transpose(-1, -2) for b in transitions]  # (N, T-1, S_prev, S_next)
    N, steps = log_t[0].shape[:2]
    total = torch.zeros(N, steps, 1, 1, dtype=log_t[0].dtype, device=log_t[0].device)
    for b in log_t:
        S = b.shape[-1]
        total = (total[..., :, None, :, None] + b[..., None, :, None, :]).reshape(
            N, steps, total.shape[-2] * S, total.shape[-1] * S
        )
    return total


def mean_field_free_energy(
    marginals: Sequence[Tensor],
    log_likelihood: Tensor,
    transitions: Sequence[Tensor],
    initial: Sequence[Tensor],
) -> Tensor:
    """F of q(s) = prod_t prod_f q(s_f,t): (N,).

    marginals : F tensors (N, T, S_f); log_likelihood : (N, T, S_1..S_F) ln p(o_t | s_t);
    transitions : F tensors (N, T-1, S_next, S_prev); initial : F tensors (S_f,) or (N, S_f).
    """
    F = len(marginals)
    entropy_terms = sum(xlogy(q, q).sum((-2, -1)) for q in marginals)  # E_q ln q
    joint = outer(*marginals, batch_dims=2)  # (N, T, S_1..S_F)
    energy = expected_log(joint, log_likelihood, tuple(range(1, F + 2)))
    for f, (q, d) in enumerate(zip(marginals, initial, strict=True)):
        energy = energy + expected_log(q[:, 0], torch.log(d).expand_as(q[:, 0]), -1)
        if q.shape[1] > 1:
            pairs = q[:, 1:, :, None] * q[:, :-1, None, :]  # (N, T-1, S_next, S_prev)
            energy = energy + expected_log(pairs, torch.log(transitions[f]), (1, 2, 3))
    return entropy_terms - energy


def chain_free_energy(
    initial_belief: Tensor,
    conditionals: Tensor,
    log_likelihood: Tensor,
    log_transitions: Tensor,
    log_initial: Tensor,
    marginals: Tensor | None = None,
) -> Tensor:
    """F of a Markov chain over the joint state: (N,).

    initial_belief : (N, K) q(s_1); conditionals : (N, T-1, K, K) q(s_t+1 | s_t);
    log_likelihood : (N, T, K); log_transitions : (N, T-1, K, K) ``[.., s_t, s_t+1]``;
    log_initial : (K,) or (N, K) ln p(s_1); marginals : (N, T, K), the chain's q(s_t)
    (``chain_joint_marginals``), computed here if not given. The steps' terms are summed at
    once, from the pairs q(s_t) q(s_t+1 | s_t).
    """
    value = expected_log(
        initial_belief, _log(initial_belief) - log_initial - log_likelihood[:, 0], -1
    )
    if conditionals.shape[1] == 0:
        return value
    if marginals is None:
        marginals = chain_joint_marginals(initial_belief, conditionals)
    pairs = marginals[:, :-1, :, None] * conditionals  # (N, T-1, K, K)
    log_ratio = _log(conditionals) - log_transitions - log_likelihood[:, 1:, None, :]
    return value + expected_log(pairs, log_ratio, (-3, -2, -1))


def exact_chain(filtered: Tensor, predicted: Tensor, smoothed: Tensor, log_transitions: Tensor):
    """The posterior as a Markov chain: (initial (N, K), conditionals (N, T-1, K, K)).

    From the forward-backward quantities (flattened to (N, T, K)):
    q(s_t+1 = j | s_t = i) = alpha_t(i) p(j | i) gamma_t+1(j) / (predicted_t+1(j) gamma_t(i)).
    Rows of states with gamma_t(i) = 0 carry no mass; they are set to p(. | i).
    """
    N, T, K = filtered.shape
    ratio = smoothed / torch.where(predicted > 0, predicted, torch.ones_like(predicted))
    transition = torch.exp(log_transitions)  # (N, T-1, K, K)
    pairs = filtered[:, :-1, :, None] * transition * ratio[:, 1:, None, :]
    totals = pairs.sum(-1, keepdim=True)
    conditionals = torch.where(totals > 0, pairs / torch.where(totals > 0, totals, 1.0), transition)
    return smoothed[:, 0], conditionals


def posterior_as_chain(
    filtered: Tensor,
    predicted: Tensor,
    transitions: Sequence[Tensor],
    *,
    log_space: Tensor | None = None,
    log_likelihood: Tensor | None = None,
    initial: Sequence[Tensor] | None = None,
):
    """The smoothed joint (N, T, S_1..S_F) and the posterior as a chain over the flattened joint
    state, (initial (N, K), conditionals (N, T-1, K, K)), from a forward pass
    (``pp_aif.ops.hmm.forward_filter``) and its transitions F x (N, T-1, S_next, S_prev).

    The sequences marked in ``log_space`` (``FilterResult.log_space``; they need
    ``log_likelihood`` (N, T, S_1..S_F) and ``initial``) get their chain in log space:
    q(s_t+1 = j | s_t = i) ∝ p(j | i) p(o_t+1 | j) beta_t+1(j), normalised over j."""
    smoothed = smooth(filtered, predicted, transitions)
    N, T = smoothed.shape[:2]
    K = smoothed[0, 0].numel()
    log_transitions = joint_log_transitions(transitions)
    first, conditionals = exact_chain(
        filtered.reshape(N, T, K),
        predicted.reshape(N, T, K),
        smoothed.reshape(N, T, K),
        log_transitions,
    )
    if log_space is None or not log_space.any():
        return smoothed, first, conditionals
    if log_likelihood is None or initial is None:
        raise ValueError("posterior_as_chain: sequences in log space need log_likelihood, initial")
    index = log_space.nonzero()[:, 0]
    exact, log_backward, _ = smoothed_log_space(
        log_likelihood[index],
        [b[index] for b in transitions],
        [q if q.dim() == 1 else q[index] for q in initial],
    )
    n = len(index)
    ahead = (log_likelihood[index] + log_backward).reshape(n, T, K)[:, 1:, None, :]
    log_pairs = log_transitions[index] + ahead  # (n, T-1, K, K) [i, j]
    log_rows = logsumexp(log_pairs, -1)[..., None]
    finite = torch.isfinite(log_rows)
    chain = torch.where(
        finite,
        torch.exp(log_pairs - torch.where(finite, log_rows, 0.0)),
        torch.exp(log_transitions[index]),
    )
    smoothed = smoothed.index_put((index,), exact)
    first = first.index_put((index,), exact.reshape(n, T, K)[:, 0])
    conditionals = conditionals.index_put((index,), chain)
    return smoothed, first, conditionals


def chain_joint_marginals(initial_belief: Tensor, conditionals: Tensor) -> Tensor:
    """q(s_t) over the flattened joint state of a chain, (N, T, K), from q(s_1) (N, K) and
    q(s_t+1 | s_t) (N, T-1, K, K)."""
    marginal, steps = initial_belief, [initial_belief]
    for t in range(conditionals.shape[1]):
        marginal = torch.einsum("ni,nij->nj", marginal, conditionals[:, t])
        steps.append(marginal)
    return torch.stack(steps, 1)


def joint_log_initial(log_initial: Sequence[Tensor]) -> Tensor:
    """ln p(s_1) over the flattened joint state (K,), from F tensors (S_f,) ln D_f."""
    total = log_initial[0]
    for log_d in log_initial[1:]:
        total = (total[:, None] + log_d[None, :]).reshape(-1)
    return total

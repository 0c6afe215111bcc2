"""Inductive planning (Friston et al. 2023, "Active inference and intentional behaviour";
pymdp 1.0's ``generate_I_matrix`` and ``calc_inductive_value_t``): a cost on predicted states
from which the intended states cannot be reached in time.

Dimension symbols: N agents, F factors (S_f states, U_f controls), P policies (or U actions),
L the depth of the backward induction.

The agent intends some states of some factors (``GenerativeModel(H=...)``: an indicator (S_f,)
per factor, or None for a factor without intentions). Backward induction over the possible
transitions (probability above ``threshold`` under some control) gives, per factor,

    I_f[0, s] = H_f[s],    I_f[i, s] = 1 if some s' with I_f[i-1, s'] = 1 follows s in one step,

an (L, S_f) indicator: I_f[i, s] = 1 if an intended state is reachable from s in i steps.

Given the present belief q_f (its most probable state s*) and a predicted belief q'_f about a
next state, the inductive cost is

    cost_f = ln(1 / epsilon) * sum_s q'_f(s) (1 - I_f[m, s]),   m = max(i* - 1, 0),

with i* the fewest steps from s* to an intended state: probability of stepping where the
intended states are no nearer costs ln(1 / epsilon) nats (6.9 at epsilon = 1e-3, pymdp's default).
A factor whose intended states cannot be reached from s* within L steps costs nothing, like a
factor without intentions. The cost is added to G (minimised), so q(pi) is softmax(ln E - gamma
(G - novelty + cost)). Equal to pymdp's ``-calc_inductive_value_t`` (tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_INDUCTIVE_THRESHOLD",
    "reachability",
    "model_reachability",
    "inductive_cost",
    "policy_inductive_cost",
]

#: transitions of probability above this count as possible (pymdp's default ``inductive_threshold``)
DEFAULT_INDUCTIVE_THRESHOLD = 0.1


def reachability(
    H: Sequence[Tensor | None],
    B: Sequence[Tensor],
    depth: int,
    threshold: float = DEFAULT_INDUCTIVE_THRESHOLD,
) -> list[Tensor | None]:
    """I_f (depth, S_f) for each factor with intended states (None for the others): I_f[i, s]
    is 1 where an intended state is reachable from s in i steps through transitions of
    probability above ``threshold`` under some control. B : F arrays (S_f, S_f, U_f)."""
    if depth < 1:
        raise ValueError(f"depth: expected >= 1, got {depth}")
    out: list[Tensor | None] = []
    for h, b in zip(H, B, strict=True):
        if h is None:
            out.append(None)
            continue
        possible = ((b > threshold).any(-1)).to(b.dtype)  # (S_next, S_prev)
        rows = [h.to(b.dtype)]
        for _ in range(depth - 1):
            rows.append((possible.T @ rows[-1] > 0).to(b.dtype))
        out.append(torch.stack(rows))
    return out


def model_reachability(model) -> list[Tensor | None]:
    """``reachability`` of a model's intended states H through its B, to depth max S_f (every
    reachable state is reached within S_f - 1 steps); made once per model."""
    if model.H is None:
        raise ValueError(
            "model: no intended states; inductive planning needs GenerativeModel(H=...)"
        )
    if "reachability" not in model._derived:
        depth = max(s for s, h in zip(model.num_states, model.H, strict=True) if h is not None)
        model._derived["reachability"] = reachability(model.H, model.B, depth)
    return model._derived["reachability"]


def inductive_cost(
    present: Sequence[Tensor],
    predicted: Sequence[Tensor],
    reachable: Sequence[Tensor | None],
    epsilon: float,
) -> Tensor:
    """The inductive cost of each predicted belief, (N, P), in nats (added to G).

    present : F tensors (N, S_f), the beliefs now (the most probable state anchors the
    induction); predicted : F tensors (N, P, S_f), the predicted beliefs about a next state
    under each of P policies or actions; reachable : ``reachability``'s arrays; epsilon : in (0, 1).
    """
    N, P = predicted[0].shape[:2]
    cost = predicted[0].new_zeros(N, P)
    weight = -math.log(epsilon)
    for q, q_next, reach in zip(present, predicted, reachable, strict=True):
        if reach is None:
            continue
        now = q.argmax(-1)  # (N,)
        column = reach[:, now].T  # (N, L): reachable in i steps from s*
        found = column.any(-1)
        steps = column.to(torch.int64).argmax(-1)  # the first i where it is reachable
        m = (steps - 1).clamp(min=0)
        outside = 1 - reach[m]  # (N, S_f)
        term = weight * (q_next * outside[:, None, :]).sum(-1)
        cost = cost + torch.where(found[:, None], term, torch.zeros_like(term))
    return cost


def policy_inductive_cost(
    beliefs: Sequence[Tensor],
    policies: Tensor,
    B: Sequence[Tensor],
    reachable: Sequence[Tensor | None],
    epsilon: float,
) -> Tensor:
    """The inductive cost of each open-loop policy, (N, P): the sum over its steps of
    ``inductive_cost`` of the predicted factor marginals, anchored to the present beliefs
    (pymdp's ``compute_neg_efe_policy_inductive``).

    beliefs : F tensors (N, S_f); policies : int (P, H, F); B : F tensors (S_f, S_f, U_f), or
    (N, S_f, S_f, U_f) one per agent; reachable, epsilon : as ``inductive_cost``.
    """
    N, (P, H) = beliefs[0].shape[0], policies.shape[:2]
    predicted = [q[:, None, :].expand(N, P, q.shape[-1]) for q in beliefs]
    cost = beliefs[0].new_zeros(N, P)
    for tau in range(H):
        stepped = []
        for f, (q, b) in enumerate(zip(predicted, B, strict=True)):
            if reachable[f] is None:
                stepped.append(q)
                continue
            u = policies[:, tau, f]  # (P,)
            if b.dim() == 3:
                stepped.append(torch.einsum("pij,npj->npi", b[:, :, u].permute(2, 0, 1), q))
            else:
                stepped.append(torch.einsum("npij,npj->npi", b[:, :, :, u].permute(0, 3, 1, 2), q))
        predicted = stepped
        cost = cost + inductive_cost(beliefs, predicted, reachable, epsilon)
    return cost

"""Dirichlet counts of A, B and D from a trial: learning by conjugate updates.

Dimension symbols: N sequences (batch on the left), T steps, F factors (S_f), M modalities (O_m),
U_f controls. Beliefs are the posterior marginals q(s_f,t): F tensors (N, T, S_f).

    dA_m[o, s_1..s_F] = sum_t [o_t,m = o] prod_f q(s_f,t)                     (SPM, pymdp)
    dB_f[s', s, u]    = sum_{t>=1} [u_t-1,f = u] q(s_f,t = s') q(s_f,t-1 = s)
    dD_f[s]           = q(s_f,0 = s)
    p_new = (1 - forgetting) * p + learning_rate * d, only where p > 0

Updates touch only positive concentrations, so structural zeros stay zero (SPM's
``MDP.a{g} + da.*(MDP.a{g} > 0)``). The agent's arrays are the normalised counts (the Dirichlet
means). Reference: Friston et al. (2016), Neurosci. Biobehav. Rev. 68, 862-879, appendix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pp_aif.ops.contractions import outer

__all__ = [
    "observation_counts",
    "transition_counts",
    "initial_counts",
    "update_concentrations",
    "dirichlet_mean",
]


def observation_counts(
    observations: Tensor, marginals: Sequence[Tensor], num_outcomes: Sequence[int]
) -> list[Tensor]:
    """dA: M tensors (N, O_m, S_1..S_F). observations int (N, T, M)."""
    joint = outer(*marginals, batch_dims=2)  # (N, T, S_1..S_F)
    counts = []
    for m, size in enumerate(num_outcomes):
        one_hot = torch.nn.functional.one_hot(observations[..., m], size).to(joint.dtype)
        counts.append(torch.einsum("nto,nt...->no...", one_hot, joint))
    return counts


def transition_counts(
    actions: Tensor, marginals: Sequence[Tensor], num_controls: Sequence[int]
) -> list[Tensor]:
    """dB: F tensors (N, S_f, S_f, U_f). actions int (N, T-1, F)."""
    counts = []
    for f, (q, U) in enumerate(zip(marginals, num_controls, strict=True)):
        one_hot = torch.nn.functional.one_hot(actions[..., f], U).to(q.dtype)  # (N, T-1, U)
        counts.append(torch.einsum("nti,ntj,ntu->niju", q[:, 1:], q[:, :-1], one_hot))
    return counts


def initial_counts(marginals: Sequence[Tensor]) -> list[Tensor]:
    """dD: F tensors (N, S_f), the beliefs about the first step."""
    return [q[:, 0] for q in marginals]


def update_concentrations(
    concentrations: Tensor, counts: Tensor, *, learning_rate: float = 1.0, forgetting: float = 0.0
) -> Tensor:
    """(1 - forgetting) * p + learning_rate * counts where p > 0; p elsewhere (stays 0)."""
    updated = (1.0 - forgetting) * concentrations + learning_rate * counts
    return torch.where(concentrations > 0, updated, concentrations)


def dirichlet_mean(concentrations: Tensor, axis: int) -> Tensor:
    """The mean of each Dirichlet: concentrations normalised along ``axis``."""
    return concentrations / concentrations.sum(axis, keepdim=True)

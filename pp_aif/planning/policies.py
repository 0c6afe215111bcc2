"""From expected free energy to a policy posterior, action marginals and chosen actions.

Dimension symbols: *batch agents or belief batch, P policies, H horizon, F factors, U_f controls.

    q(pi)  = softmax(ln E - gamma * (G - novelty) - F(pi))                 (Friston et al. 2017,
             with G - novelty = -(epistemic + pragmatic + novelty))         Neural Comput. 29(1))
    p(u_f) = softmax(alpha * ln sum_pi q(pi) [pi_0,f = u])

Lesion switches drop a term from the score: without the epistemic term the policy score is
-(pragmatic + novelty), and so on. Defaults are SPM's (``spm_MDP_VB_X``): gamma = 1 (beta = 1)
and alpha = 512; pymdp's legacy agent uses gamma = alpha = 16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pp_aif.ops.numerics import categorical
from pp_aif.planning.efe import PolicyScores

__all__ = [
    "DEFAULT_POLICY_PRECISION",
    "DEFAULT_ACTION_PRECISION",
    "Lesions",
    "policy_score",
    "policy_posterior",
    "action_marginals",
    "action_probabilities",
    "select_actions",
    "infer_precision",
]

#: gamma, the precision of the policy posterior (SPM: 1 / beta with beta = 1).
DEFAULT_POLICY_PRECISION = 1.0
#: alpha, the precision of action selection (SPM's MDP.alpha default).
DEFAULT_ACTION_PRECISION = 512.0


@dataclass(frozen=True)
class Lesions:
    """Which terms of the expected free energy enter the policy score (all, by default)."""

    epistemic: bool = True
    pragmatic: bool = True
    novelty: bool = True


def policy_score(scores: PolicyScores, lesions: Lesions = Lesions()) -> Tensor:
    """The quantity the policy posterior minimises, (*batch, P):
    ``-(epistemic + pragmatic + novelty)`` with lesioned terms left out (= G - novelty)."""
    value = torch.zeros_like(scores.G)
    if lesions.epistemic:
        value = value - scores.epistemic
    if lesions.pragmatic:
        value = value - scores.pragmatic
    if lesions.novelty:
        value = value - scores.novelty
    return value


def policy_posterior(
    scores: PolicyScores,
    log_prior: Tensor,
    *,
    precision: float | Tensor = DEFAULT_POLICY_PRECISION,
    free_energy: Tensor | None = None,
    lesions: Lesions = Lesions(),
) -> Tensor:
    """q(pi) = softmax(ln E - gamma * score - F(pi)), (*batch, P).

    Parameters
    ----------
    scores : PolicyScores (*batch, P)
    log_prior : (P,) or (*batch, P), ln E
    precision : gamma, a float or a tensor broadcastable to (*batch, 1)
    free_energy : (*batch, P), optional
        F(pi), the free energy of the observations so far under each policy; omitted, it is
        taken to be the same for every policy (as when all policies share the past).
    lesions : Lesions
    """
    logits = log_prior - precision * policy_score(scores, lesions)
    if free_energy is not None:
        logits = logits - free_energy
    return torch.softmax(logits, -1)


def action_marginals(
    policy_probabilities: Tensor, policies: Tensor, num_controls: tuple[int, ...]
) -> list[Tensor]:
    """sum_pi q(pi) [pi_0,f = u] for each factor: F tensors (*batch, U_f). No loop over policies."""
    return [
        policy_probabilities
        @ torch.nn.functional.one_hot(policies[:, 0, f], U).to(policy_probabilities.dtype)
        for f, U in enumerate(num_controls)
    ]


def action_probabilities(
    marginals: list[Tensor], precision: float | Tensor = DEFAULT_ACTION_PRECISION
) -> list[Tensor]:
    """p(u_f) = softmax(alpha ln marginal_f): F tensors (*batch, U_f); ln 0 = -inf stays 0."""
    return [torch.softmax(precision * torch.log(m), -1) for m in marginals]


def select_actions(
    probabilities: list[Tensor], *, sample: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """One control per factor: int64 (*batch, F). ``sample=False`` takes the most probable."""
    chosen = []
    for p in probabilities:
        if sample:
            flat = p.reshape(-1, p.shape[-1])
            draw = categorical(flat, generator).reshape(p.shape[:-1])
        else:
            draw = p.argmax(-1)
        chosen.append(draw)
    return torch.stack(chosen, -1)


def infer_precision(
    scores: PolicyScores,
    log_prior: Tensor,
    *,
    beta: float = 1.0,
    iterations: int = 16,
    free_energy: Tensor | None = None,
    lesions: Lesions = Lesions(),
) -> tuple[Tensor, Tensor]:
    """Policy posterior with the policy precision gamma inferred (SPM's ``spm_MDP_VB_X``).

    gamma = 1 / b has a Gamma prior with rate ``beta``; each iteration moves b down the
    free-energy gradient dF/db = b - beta + (q(pi) - p(pi)) . Q, with Q = -score the negative
    policy score, q(pi) = softmax(ln E + gamma Q - F) and p(pi) = softmax(ln E + gamma Q):
    b <- b - dF/db / 2 (Friston et al. 2017, Neural Comput. 29(1), eqs. (B.1)-(B.3)).

    Returns
    -------
    (q(pi) (*batch, P), gamma (*batch,)) after ``iterations`` updates, starting from b = beta.
    """
    if beta <= 0:
        raise ValueError(f"beta: must be positive, got {beta}")
    Q = -policy_score(scores, lesions)
    F = torch.zeros_like(Q) if free_energy is None else free_energy
    b = torch.full(Q.shape[:-1], float(beta), dtype=Q.dtype, device=Q.device)
    for _ in range(iterations):
        gamma = 1.0 / b
        posterior = torch.softmax(log_prior + gamma[..., None] * Q - F, -1)
        prior = torch.softmax(log_prior + gamma[..., None] * Q, -1)
        gradient = b - beta + ((posterior - prior) * Q).sum(-1)
        b = b - gradient / 2
    gamma = 1.0 / b
    return torch.softmax(log_prior + gamma[..., None] * Q - F, -1), gamma

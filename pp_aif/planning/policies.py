"""From expected free energy to a policy posterior, action marginals and chosen actions.

Dimension symbols: *batch agents or belief batch, P policies, H horizon, F factors, U_f controls.

    q(pi)  = softmax(ln E - gamma * (G - novelty) - F(pi))                 (Friston et al. 2017,
             with G - novelty = -(epistemic + pragmatic + novelty))         Neural Comput. 29(1))
    p(u_f) = softmax(alpha * ln sum_pi q(pi) [pi_0,f = u])

Lesion switches drop a term from the score: without the epistemic term the policy score is
-(pragmatic + novelty), and so on. Defaults are SPM's (``spm_MDP_VB_X``): gamma = 1 (beta = 1)
and alpha = 512; pymdp's legacy agent uses gamma = alpha = 16.

:func:`infer_precision` is SPM's update of gamma from the gap between q(pi) and its prior
softmax(ln E - gamma * score): it moves gamma only where F(pi) differs between policies. The
agent's policies all share the trial's past, so their F(pi) is one number and the agent refuses
to infer gamma (:class:`pp_aif.agent.AgentSettings`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pp_aif.ops.numerics import categorical, logsumexp
from pp_aif.planning.efe import PolicyScores
from pp_aif.validation import check_integer, check_number

__all__ = [
    "DEFAULT_POLICY_PRECISION",
    "DEFAULT_ACTION_PRECISION",
    "Lesions",
    "policy_score",
    "policy_posterior",
    "action_marginals",
    "action_probabilities",
    "log_policy_posterior",
    "log_action_probabilities",
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


def log_policy_posterior(
    score: Tensor, log_prior: Tensor, precision: float | Tensor = DEFAULT_POLICY_PRECISION
) -> Tensor:
    """ln q(pi) = log_softmax(ln E - gamma * score), (*batch, P), from a policy score
    (``policy_score``: minimised): the log of ``policy_posterior``'s q(pi). A policy of score
    +inf (it reaches an outcome of preference -inf) has ln q = -inf, and gamma multiplies only
    finite scores, so no gradient meets 0 * inf."""
    finite = torch.isfinite(score)
    logits = torch.where(
        finite, log_prior - precision * torch.where(finite, score, 0.0), -torch.inf
    )
    return torch.log_softmax(logits, -1)


def log_action_probabilities(
    log_policy_posterior: Tensor,
    first_actions: Tensor,
    num_controls: tuple[int, ...],
    precision: float | Tensor = DEFAULT_ACTION_PRECISION,
) -> list[Tensor | None]:
    """ln p(u_f) = log_softmax(alpha ln m_f(u)) with m_f(u) = sum_pi q(pi) [pi_0,f = u], in
    log space throughout: F entries (*batch, U_f), None for a factor with one control.

    log_policy_posterior : (*batch, P) ln q(pi), -inf for an impossible policy; first_actions :
    int (P, F), each policy's first control per factor; precision : alpha, broadcastable to
    (*batch, 1). An action that no policy of probability > 0 takes has ln p = -inf, and the
    gradients stay finite (no 0 * inf): the log-sum-exp is the safe one, and alpha multiplies
    only finite values. The exponentials equal ``action_probabilities(action_marginals(...))``.
    """
    out: list[Tensor | None] = []
    for f, U in enumerate(num_controls):
        if U == 1:
            out.append(None)
            continue
        mask = first_actions[:, f, None] == torch.arange(U, device=first_actions.device)  # (P, U)
        log_mask = torch.where(mask, 0.0, -torch.inf).to(log_policy_posterior.dtype)
        log_marginal = logsumexp(log_policy_posterior[..., :, None] + log_mask, -2)
        finite = torch.isfinite(log_marginal)
        scaled = torch.where(
            finite,
            precision * torch.where(finite, log_marginal, 0.0),
            torch.full_like(log_marginal, -torch.inf),
        )
        out.append(torch.log_softmax(scaled, -1))
    return out


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
    beta: float | Tensor = 1.0,
    rate: float | Tensor | None = None,
    iterations: int = 16,
    free_energy: Tensor | None = None,
    lesions: Lesions = Lesions(),
) -> tuple[Tensor, Tensor]:
    r"""The policy posterior with the policy precision gamma inferred: SPM's update.

    gamma has the prior Gamma(1, beta) (shape 1, rate ``beta``) and the posterior
    Gamma(1, b), so gamma = E[gamma] = 1 / b. With Q = -score the negative policy score (SPM's
    ``Q``), each of ``iterations`` updates computes

    .. math::

        q(\pi) = \sigma(\ln E + \gamma Q - F), \qquad p(\pi) = \sigma(\ln E + \gamma Q),

        \frac{\partial F}{\partial b} = b - \beta + (q(\pi) - p(\pi)) \cdot Q, \qquad
        b \leftarrow b - \frac{1}{2} \frac{\partial F}{\partial b}, \qquad \gamma = 1 / b,

    line by line as ``spm_MDP_VB_X.m`` does ("variational updates - policies and precision":
    ``qu``, ``pu``, ``eg``, ``dFdg``, ``qb``, ``w``; Friston et al. 2017, Neural Comput. 29(1),
    1-49). As there, the posterior returned is the last iteration's q(pi), computed with the
    gamma before that iteration's update, and gamma is the value after it. SPM starts b at beta
    once per trial and carries it over the trial's steps: pass the previous step's 1 / gamma as
    ``rate``. Policies SPM no longer counts as plausible (its Occam window) are given
    ln E = -inf: they leave both q(pi) and p(pi), as in SPM's sums over ``p{m}``.

    gamma moves only through q(pi) - p(pi), that is, only where F(pi) differs between
    policies: with F(pi) the same for every policy, q(pi) = p(pi), dF/db = b - beta, and b only
    relaxes towards beta (from b = beta it stays there). That is why the agent refuses
    ``AgentSettings(infer_precision=True)``: its policies share the trial's past, so its F(pi)
    is the same for all of them (see :class:`pp_aif.agent.AgentSettings`).

    Parameters
    ----------
    scores : PolicyScores (*batch, P)
    log_prior : (P,) or (*batch, P), ln E; -inf for a policy left out.
    beta : the prior rate of gamma (SPM's ``MDP.beta``, default 1), a float or (*batch,).
    rate : b at the start (default: ``beta``, a trial's first step), a float or (*batch,).
    iterations : the number of updates (SPM's ``Ni``, default 16), at least 1.
    free_energy : (*batch, P), optional
        F(pi), the free energy of the outcomes so far under each policy (SPM's ``-F``); omitted,
        it is the same for every policy.
    lesions : Lesions

    Returns
    -------
    (q(pi) (*batch, P), gamma (*batch,))
    """
    check_number("beta", beta, minimum=0, exclusive_minimum=True, meaning="the prior rate of gamma")
    if rate is not None:
        check_number("rate", rate, minimum=0, exclusive_minimum=True, meaning="b = 1 / gamma")
    check_integer("iterations", iterations, minimum=1)
    Q = -policy_score(scores, lesions)
    F = torch.zeros_like(Q) if free_energy is None else free_energy
    batch = Q.shape[:-1]
    beta = torch.broadcast_to(torch.as_tensor(beta, dtype=Q.dtype, device=Q.device), batch)
    start = beta if rate is None else torch.as_tensor(rate, dtype=Q.dtype, device=Q.device)
    b = torch.broadcast_to(start, batch)
    for _ in range(iterations):
        gamma = 1.0 / b
        posterior = torch.softmax(log_prior + gamma[..., None] * Q - F, -1)
        prior = torch.softmax(log_prior + gamma[..., None] * Q, -1)
        b = b - (b - beta + ((posterior - prior) * Q).sum(-1)) / 2
    return posterior, 1.0 / b

"""The likelihood of people's actions under an active-inference agent, batched and differentiable.

Dimension symbols: N subjects, K trials, T steps, F factors (U_f controls), P_t policies at t.

For agents that do not learn, beliefs and expected free energy depend on the observations and
actions only, not on the precisions, so they are computed once (``PolicyValues``); the action
likelihood is then a cheap closed form in the parameters:

    ln q(pi)    = log_softmax(ln E - gamma * score(pi))              score = G - novelty (lesioned)
    ln m_f(u)   = logsumexp over pi with pi_0,f = u of ln q(pi)
    ln p(u_f)   = log_softmax(alpha * ln m_f)(u_f)
    ln p(u_t)   = sum_f ln p(u_f,t)

exactly what ``pp_aif.agent.step`` computes when it replays the person's actions (tested to
1e-10), with gradients to gamma and alpha (``torch.autograd.gradcheck``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pp_aif.agent import AgentSettings, policies_at
from pp_aif.inference.states import infer_states
from pp_aif.planning import expected_free_energy
from pp_aif.planning.policies import policy_score
from pp_aif.spec import GenerativeModel

__all__ = [
    "PolicyValues",
    "policy_values",
    "action_log_probabilities",
    "action_log_likelihood",
]


@dataclass(frozen=True)
class PolicyValues:
    """What the action likelihood needs that does not depend on gamma and alpha.

    scores : T-1 tensors (N, K, P_t), the policy scores at each step with an action;
    log_prior : T-1 tensors (P_t,), ln E;
    first_actions : T-1 tensors (P_t, F), each policy's first control per factor;
    actions : int (N, K, T-1, F), the person's actions.
    """

    scores: list[Tensor]
    log_prior: list[Tensor]
    first_actions: list[Tensor]
    actions: Tensor
    num_controls: tuple[int, ...]


def policy_values(
    model: GenerativeModel, settings: AgentSettings, observations: Tensor, actions: Tensor
) -> PolicyValues:
    """Exact filtering beliefs and policy scores at every step of every trial, all at once.

    observations : int (N, K, T, M); actions : int (N, K, T-1, F).
    """
    if settings.infer_precision or settings.inference != "exact":
        raise ValueError(
            "settings: the fast action likelihood needs inference='exact' and a fixed policy "
            "precision (infer_precision=False)"
        )
    learned = [name for name in ("pA", "pB", "pD") if getattr(model, name) is not None]
    if learned:
        raise ValueError(
            f"model: has {', '.join(learned)}, so its agents learn between trials; the fast "
            "action likelihood is for agents that do not learn (the learning likelihood is not "
            "built yet): give a model without Dirichlet counts"
        )
    N, K, T, _ = observations.shape
    flat_obs = observations.reshape(N * K, T, -1)
    flat_actions = actions.reshape(N * K, T - 1, -1)
    beliefs = infer_states(model, flat_obs, flat_actions, mode="filtering")
    scores, log_prior, first = [], [], []
    for t in range(T - 1):  # each step has its own policy depth and (time-varying) preferences
        policies, prior = policies_at(model, settings, t, T)
        values = expected_free_energy(
            model, [q[:, t] for q in beliefs.marginals], policies, time=t, method="exact"
        )
        scores.append(policy_score(values, settings.lesions).reshape(N, K, -1))
        log_prior.append(prior)
        first.append(policies[:, 0, :])
    return PolicyValues(scores, log_prior, first, actions, model.num_controls)


def action_log_probabilities(
    values: PolicyValues, gamma: Tensor, alpha: Tensor
) -> list[Tensor | None]:
    """ln p(u_f,t = u | theta, history) for every control: F entries (*theta_batch, N, K, T-1,
    U_f), None for a factor with one control.

    gamma, alpha : policy and action precision, tensors broadcastable to (*theta_batch, N)
    (one value per subject, optionally with leading sample axes).
    """
    gamma = torch.as_tensor(gamma)[..., None, None]  # (..., N, 1, 1)
    alpha = torch.as_tensor(alpha)[..., None, None]  # (..., N, 1, 1)
    per_factor: list[list[Tensor]] = [[] for _ in values.num_controls]
    for score, log_prior, first in zip(
        values.scores, values.log_prior, values.first_actions, strict=True
    ):
        log_q = torch.log_softmax(log_prior - gamma * score, -1)  # (..., N, K, P)
        for f, U in enumerate(values.num_controls):
            if U == 1:
                continue
            mask = first[:, f, None] == torch.arange(U, device=first.device)  # (P, U)
            log_mask = torch.where(mask, 0.0, -torch.inf).to(log_q.dtype)
            log_marginal = torch.logsumexp(log_q[..., :, None] + log_mask, -2)  # (..., N, K, U)
            scaled = torch.where(
                torch.isfinite(log_marginal),
                alpha * log_marginal,
                torch.full_like(log_marginal, -torch.inf),
            )
            per_factor[f].append(torch.log_softmax(scaled, -1))
    return [torch.stack(steps, -2) if steps else None for steps in per_factor]


def action_log_likelihood(values: PolicyValues, gamma: Tensor, alpha: Tensor) -> Tensor:
    """ln p(u_t | theta, history) of the person's actions: (*theta_batch, N, K, T-1).

    gamma, alpha : as for :func:`action_log_probabilities`.
    """
    total = None
    for f, log_p in enumerate(action_log_probabilities(values, gamma, alpha)):
        if log_p is None:
            continue
        chosen = values.actions[..., f].expand(*log_p.shape[:-1])
        term = torch.gather(log_p, -1, chosen[..., None])[..., 0]
        total = term if total is None else total + term
    if total is None:  # no factor has a choice: every action is certain
        shape = torch.broadcast_shapes(torch.as_tensor(gamma).shape, torch.as_tensor(alpha).shape)
        return torch.zeros(*shape, *values.actions.shape[:-1], dtype=values.scores[0].dtype)
    return total

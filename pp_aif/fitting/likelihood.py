"""The likelihood of people's actions under an active-inference agent, batched and differentiable.

Dimension symbols: N subjects, K trials, T steps, F factors (S_f states, U_f controls),
P_t policies at step t, *b a batch of parameter draws (on the left).

The agent's parameters theta (``PARAMETERS``):

    gamma          policy precision             q(pi) = softmax(ln E - gamma * score(pi))
    alpha          action precision             p(u_f) ∝ exp(alpha ln m_f(u))
    preference     scale c of the preferences   ln p~(o) = log_softmax(c * C)
    learning_rate  eta of pD between trials     pD <- (1 - omega) pD + eta q(s_0 | o_1:T)
    forgetting     omega of pD between trials
    concentration  scale kappa of the initial counts, pD_0 = kappa * model.pD
    likelihood_precision  zeta of the agent's A: A_zeta(o | s) ∝ A(o | s)^zeta per column
                   (the world's A is the data's; the agent infers and plans with A_zeta)

Three facts make the likelihood cheap, and each is exact:

1. The policy score is affine in c: ln p~(o) = c C(o) - logsumexp(c C), and the logsumexp is the
   same for every policy of a step (all have the same depth), so it cancels in q(pi). Hence
   score(pi; c) = base(pi) + c * pragmatic(pi) with base = -(epistemic + novelty) and
   pragmatic = -E_q(o|pi)[ln p~(o)] at c = 1 (lesioned terms are zero).
2. Without learning and without zeta, beliefs and both parts of the score depend on the data
   only (``PolicyValues``, computed once); the likelihood is then a closed form in
   (gamma, alpha, c):

       ln q(pi)  = log_softmax(ln E - gamma * (base + c * pragmatic))
       ln m_f(u) = logsumexp over pi with pi_0,f = u of ln q(pi)
       ln p(u_f) = log_softmax(alpha * ln m_f)(u_f)

3. When the agent learns its initial-state counts pD, a trial's smoothed q(s_0 | o_1:T), the
   update of pD, is D_k(s_0) lambda_k(s_0) normalised, with lambda_k = p(o_1:T | s_0, u) fixed by
   the data (A and B do not learn). So the counts of every trial follow from a short recursion
   over trials on (*b, N, S) tensors, and then the beliefs and policy values of all trials are
   computed at once, batched over trials (``BehaviourLikelihood``).

Cost per call, for B parameter draws, N subjects, K trials and the EFE kernel's cost per
belief E (``pp_aif.ops.efe``): O(B N K T E) for the policy values (all trials at once; once
per data set when neither learning nor zeta is fitted), plus the pD recursion: K sequential
steps of O(B N prod S_learnable) each.

Everything equals ``pp_aif.agent.step`` replaying the person's actions, with
``learn_between_trials`` between trials (tested to 1e-10), and gradients reach every parameter
(``torch.autograd.gradcheck``). Agents that learn A or B, infer gamma, or plan with another
scheme are refused with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from pp_aif.agent import AgentSettings, policies_at
from pp_aif.errors import DataError
from pp_aif.fitting.count_history import GameRows, count_history
from pp_aif.fitting.plan_likelihood import (
    FUSED_ORDER,
    SMALLEST_NORMALISER,
    PlanConstants,
    fused_value_and_gradient,
    numpy_value_and_gradient,
    plan_log_likelihood,
)
from pp_aif.ops.contractions import outer
from pp_aif.ops.efe import (
    EFETerms,
    LinearEFE,
    expected_free_energy_terms,
    linear_efe,
    linear_efe_terms,
)
from pp_aif.ops.hmm import (
    factor_marginals,
    forward_filter,
    observation_log_likelihood,
    propagate,
    select_transitions,
)
from pp_aif.parameters import LEARNING_PARAMETERS, PARAMETERS
from pp_aif.planning.efe import log_preferences
from pp_aif.planning.policies import log_action_probabilities, policy_score
from pp_aif.spec import GenerativeModel

__all__ = [
    "PARAMETERS",
    "LEARNING_PARAMETERS",
    "PolicyValues",
    "BehaviourLikelihood",
    "policy_values",
    "initial_state_evidence",
    "learned_initial_beliefs",
    "action_log_probabilities",
    "action_log_likelihood",
    "parameter_defaults",
    "sharpened_likelihood",
    "checked_game_starts",
]


def parameter_defaults(settings: AgentSettings) -> dict[str, float]:
    """The value each parameter takes when it is not fitted: the agent's settings, kappa = 1."""
    return {
        "gamma": settings.policy_precision,
        "alpha": settings.action_precision,
        "preference": settings.preference_scale,
        "learning_rate": settings.learning_rate,
        "forgetting": settings.forgetting,
        "concentration": 1.0,
        "likelihood_precision": 1.0,
    }


@dataclass(frozen=True)
class PolicyValues:
    """What the action likelihood needs besides (gamma, alpha, c).

    base, pragmatic : T-1 tensors (*b, N, K, P_t), the two parts of the policy score at each
        step with an action (score = base + c * pragmatic; see the module docstring);
    log_prior : T-1 tensors (P_t,), ln E; first_actions : T-1 tensors (P_t, F), each policy's
    first control per factor; actions : int (N, K, T-1, F), the person's actions; safe : every
    score is finite, every ln E too, and every control of every factor is some policy's first
    (so the action probabilities need no guard against -inf).
    """

    base: list[Tensor]
    pragmatic: list[Tensor]
    log_prior: list[Tensor]
    first_actions: list[Tensor]
    actions: Tensor
    num_controls: tuple[int, ...]
    safe: bool = False


def _check_settings(model: GenerativeModel, settings: AgentSettings) -> None:
    problems = []
    if settings.infer_precision:
        problems.append("infer_precision=True (gamma is then a belief, not a parameter)")
    if settings.inference != "exact":
        problems.append(f"inference={settings.inference!r} (the likelihood infers exactly)")
    if settings.efe_method != "exact":
        problems.append(f"efe_method={settings.efe_method!r} (a sampled G is not a likelihood)")
    if settings.planner != "open_loop":
        problems.append(f"planner={settings.planner!r} (the closed form scores the policies)")
    if settings.inductive_epsilon is not None:
        problems.append("inductive_epsilon (the closed form has no inductive cost)")
    if problems:
        raise ValueError(
            "settings: the action likelihood needs a fixed policy precision, exact inference "
            "and exact expected free energy; got " + "; ".join(problems)
        )
    learned = [name for name in ("pA", "pB") if getattr(model, name) is not None]
    if learned:
        raise ValueError(
            f"model: has {', '.join(learned)}, so its agents learn A or B between trials; the "
            "action likelihood follows learning of pD only: give a model without pA and pB"
        )


def policy_values(
    model: GenerativeModel,
    settings: AgentSettings,
    observations: Tensor,
    actions: Tensor,
    initial: list[Tensor] | None = None,
) -> PolicyValues:
    """Exact filtering beliefs and both parts of the policy score, for every step of every trial.

    observations : int (N, K, T, M); actions : int (N, K, T-1, F); initial : F tensors
    (*b, N, K, S_f), each trial's initial beliefs D (default: the model's D for every trial,
    which needs a model without pD; see :class:`BehaviourLikelihood` for agents that learn it).
    """
    _check_settings(model, settings)
    if initial is None and model.pD is not None:
        raise ValueError(
            "model: has pD, so its agents learn D between trials; give each trial's initial "
            "beliefs (initial=), or use BehaviourLikelihood, which follows the learning"
        )
    return _policy_values(model, settings, _trial_arrays(model, observations, actions), initial)


def sharpened_likelihood(A, zeta, log: bool = False) -> list[Tensor]:
    """The agent's likelihood at precision zeta: A_zeta(o | s) = A(o | s)^zeta / sum_o A^zeta,
    M tensors (*b, O_m, S_1..S_F) for zeta a float or tensor (*b) (``log``: ln A_zeta, -inf
    at the zeros). Zeros stay exactly zero, with a finite gradient in zeta; zeta = 1 gives A."""
    out = []
    for a in A:
        zeta_ = torch.as_tensor(zeta, dtype=a.dtype, device=a.device)
        zeta_ = zeta_.reshape(*zeta_.shape, *[1] * a.dim())
        positive = a > 0
        scaled = torch.where(positive, zeta_ * torch.log(torch.where(positive, a, 1.0)), -torch.inf)
        log_a = torch.log_softmax(scaled, -a.dim())
        out.append(log_a if log else torch.exp(log_a))
    return out


def _trial_arrays(model: GenerativeModel, observations: Tensor, actions: Tensor, log_A=None):
    """What the data fix, once: ln p(o_t | s) (N*K, T, S_1..S_F), the chosen transitions
    F x (N*K, T-1, S_f, S_f), and the actions (N, K, T-1, F). With log_A, M tensors
    (*b, N, O_m, S..) (the agents' own log likelihoods), ln p(o_t | s) is (*b, N*K, T, S..)."""
    N, K, T, _ = observations.shape
    flat_actions = actions.reshape(N * K, T - 1, -1)
    transitions = select_transitions(model.transition_by_action, flat_actions)
    if log_A is None:
        log_likelihood = observation_log_likelihood(model.log_A, observations.reshape(N * K, T, -1))
        return log_likelihood, transitions, actions
    batch = log_A[0].shape[: -model.num_factors - 2]
    flat_observations = observations.reshape(N * K, T, -1).expand(*batch, N * K, T, -1)
    log_likelihood = observation_log_likelihood(
        [_per_trial(a, batch, K, model.num_factors) for a in log_A],
        flat_observations.reshape(-1, T, flat_observations.shape[-1]),
        per_sequence=True,
    )
    return log_likelihood.reshape(*batch, N * K, *log_likelihood.shape[1:]), transitions, actions


def _per_trial(array: Tensor, batch, K: int, num_factors: int) -> Tensor:
    """A subject's array (*b, N, X, S_1..S_F) repeated for each of its K trials, flattened to
    (b*N*K, X, S_1..S_F) (the layout of the trial arrays)."""
    event = array.shape[-num_factors - 1 :]
    N = array.shape[-num_factors - 2]
    per_subject = array.reshape(*array.shape[: -num_factors - 1], 1, *event)
    return per_subject.expand(*batch, N, K, *event).reshape(-1, *event)


@dataclass(frozen=True)
class LinearPlan:
    """A learner's policy values as linear maps of each trial's initial joint belief Q_0
    (``linear_plan``), for agents whose A and B are fixed.

    filters : (N, K, T, S, S), S = prod_f S_f: the filtered joint belief of step t of trial k is
    filters[n, k, t] Q_0 normalised (the forward filter's products of diag(p(o_t | s)) and the
    chosen B, each rescaled to a largest entry of 1); efe : T-1 ``LinearEFE`` maps, one per
    step with an action; safe : ``PolicyValues.safe`` holds for the values of this plan (its
    scores are finite by construction).
    """

    filters: Tensor
    efe: list[LinearEFE]
    safe: bool


def every_action_possible(model: GenerativeModel, settings: AgentSettings, T: int) -> bool:
    """Whether at every step with an action of a trial of T steps each control of each factor
    starts some policy, and every ln E is finite: then no action has probability 0, and the
    action probabilities need no guard against -inf (``PolicyValues.safe``, the fused
    likelihoods)."""
    for t in range(T - 1):
        policies, log_prior = policies_at(model, settings, t, T)
        if not bool(torch.isfinite(log_prior).all()):
            return False
        for f, U in enumerate(model.num_controls):
            if len(set(policies[:, 0, f].tolist())) != U:
                return False
    return True


def linear_plan(
    model: GenerativeModel, settings: AgentSettings, arrays, limit: int = 2**22
) -> LinearPlan | None:
    """The LinearPlan of the data's _trial_arrays, or None where it does not apply: a
    preference of -inf, or maps of more than ``limit`` entries (the kernels are used then)."""
    log_likelihood, transitions, actions = arrays
    N, K, T = actions.shape[0], actions.shape[1], actions.shape[2] + 1
    F = model.num_factors
    S = math.prod(model.num_states)
    if N * K * T * S * S > limit:
        return None
    efe = []
    for t in range(T - 1):
        policies, _ = policies_at(model, settings, t, T)
        maps = linear_efe(
            model.A,
            model.transition_by_action,
            log_preferences(model, t, policies.shape[1]),
            policies,
            limit=limit,
        )
        if maps is None:
            return None
        efe.append(maps)
    flat = log_likelihood.reshape(N * K, T, S)
    shift = flat.amax(-1, keepdim=True)
    likelihood = torch.exp(flat - torch.where(torch.isfinite(shift), shift, 0.0))
    step = torch.diag_embed(likelihood[:, 0])  # (N K, S, S)
    filters = [step]
    for t in range(1, T):
        joint = outer(*[b[:, t - 1] for b in transitions], batch_dims=1)  # (NK, S1', S1, ..)
        order = [0, *range(1, 2 * F, 2), *range(2, 2 * F + 1, 2)]
        joint = joint.permute(order).reshape(N * K, S, S)
        step = likelihood[:, t, :, None] * (joint @ step)
        top = step.flatten(1).amax(-1)
        filters.append(step / torch.where(top > 0, top, 1.0)[:, None, None])
        step = filters[-1]
    return LinearPlan(
        torch.stack(filters, 1).reshape(N, K, T, S, S),
        efe,
        every_action_possible(model, settings, T),
    )


def _linear_scores(model, plan: LinearPlan, initial, batch, N, K):
    """Each step's EFETerms (T-1 of them, each (b N K, P_t)) from the plan and each trial's
    initial beliefs (F tensors (b N K, S_f)), or None where a filtered belief's normaliser is
    too small for the linear filter (the kernels then recompute it in log space)."""
    F = model.num_factors
    start = outer(*initial, batch_dims=1).reshape(*batch, N, K, 1, -1, 1)
    joint = (plan.filters @ start)[..., 0]  # (*b, N, K, T, S)
    total = joint.sum(-1, keepdim=True)
    if bool((total < SMALLEST_NORMALISER).any()):
        return None
    joint = joint / total
    if F > 1:
        joint = joint.reshape(*joint.shape[:-1], *model.num_states)
        factors = factor_marginals(joint, joint.dim() - F)
        joint = outer(*factors, batch_dims=joint.dim() - F).flatten(-F)
    size = math.prod(batch) * N * K
    return [
        linear_efe_terms(joint[..., t, :].reshape(size, -1), maps)
        for t, maps in enumerate(plan.efe)
    ]


def _policy_values(model, settings, arrays, initial, A=None, plan=None) -> PolicyValues:
    """Policy values from _trial_arrays; initial : F tensors (*b, N, K, S_f) or None (the
    model's D); A : M tensors (*b, N, O_m, S..), the agents' own likelihoods, or None; plan :
    the data's LinearPlan (with A None), or None."""
    log_likelihood, transitions, actions = arrays
    N, K, T = actions.shape[0], actions.shape[1], actions.shape[2] + 1
    F = model.num_factors
    shapes = [log_likelihood.shape[: -F - 2]]
    shapes += [] if initial is None else [initial[0].shape[:-3]]
    shapes += [] if A is None else [A[0].shape[: -F - 2]]
    batch = torch.broadcast_shapes(*shapes)
    size = math.prod(batch) * N * K
    if initial is None:
        initial = [d.expand(size, -1) for d in model.D]
    else:
        initial = [d.expand(*batch, N, K, -1).reshape(size, d.shape[-1]) for d in initial]
    steps = (
        None if plan is None or A is not None else _linear_scores(model, plan, initial, batch, N, K)
    )
    safe = steps is not None and plan.safe
    if steps is None:
        steps = _kernel_scores(model, settings, arrays, initial, A, batch, size)
    without_pragmatic = replace(settings.lesions, pragmatic=False)
    base, pragmatic, log_prior, first = [], [], [], []
    for t, scores in enumerate(steps):
        policies, prior = policies_at(model, settings, t, T)
        base.append(policy_score(scores, without_pragmatic).reshape(*batch, N, K, -1))
        part = -scores.pragmatic if settings.lesions.pragmatic else torch.zeros_like(scores.G)
        pragmatic.append(part.reshape(*batch, N, K, -1))
        log_prior.append(prior)
        first.append(policies[:, 0, :])
    return PolicyValues(base, pragmatic, log_prior, first, actions, model.num_controls, safe)


def _kernel_scores(model, settings, arrays, initial, A, batch, size) -> list[EFETerms]:
    """Each step's EFETerms (b N K, P_t) by the forward filter and the EFE kernel."""
    log_likelihood, transitions, actions = arrays
    K, T = actions.shape[1], actions.shape[2] + 1
    F = model.num_factors
    log_likelihood = log_likelihood.expand(*batch, *log_likelihood.shape[-F - 2 :])
    log_likelihood = log_likelihood.reshape(size, *log_likelihood.shape[-F - 1 :])
    if batch:
        transitions = [b.expand(*batch, *b.shape).reshape(size, *b.shape[1:]) for b in transitions]
    # each trial's agent's own A: (b*N*K, O_m, S..)
    likelihood = model.A if A is None else [_per_trial(a, batch, K, F) for a in A]
    filtered = forward_filter(log_likelihood, transitions, initial).filtered
    marginals = factor_marginals(filtered, 2)  # F tensors (b*N*K, T, S_f)
    steps = []
    for t in range(T - 1):  # each step has its own policy depth and (time-varying) preferences
        policies, _ = policies_at(model, settings, t, T)
        # the kernel itself: these beliefs are filtered marginals, valid by construction
        steps.append(
            expected_free_energy_terms(
                [q[:, t] for q in marginals],
                likelihood,
                model.transition_by_action,
                log_preferences(model, t, policies.shape[1]),
                policies,
            )
        )
    return steps


def initial_state_evidence(
    model: GenerativeModel, observations: Tensor, actions: Tensor, present: Tensor | None = None
) -> Tensor:
    """lambda_k(s_0) = p(o_0:T-1 | s_0, u) of every trial, up to a positive factor per trial:
    (N, K, S_1..S_F), the largest entry of each trial 1 (absent trials: all 1).

    The backward recursion beta_t = B_t^T (p(o_t+1 | s) beta_t+1), rescaled at each step.
    A trial whose observations are impossible from every initial state the model allows raises
    ``DataError`` naming the subject and trial.
    """
    return _checked_evidence(model, _trial_arrays(model, observations, actions), present)


def _checked_evidence(model: GenerativeModel, arrays, present: Tensor | None) -> Tensor:
    """``initial_state_evidence`` from the data's _trial_arrays."""
    evidence = _trial_evidence(model, arrays, present)
    support = outer(*[d > 0 for d in (model.pD or model.D)], batch_dims=0)
    possible = (evidence * support).flatten(2).sum(-1) > 0  # (N, K)
    possible = possible & torch.isfinite(evidence.flatten(2)).all(-1)
    if not possible.all():
        n, k = (~possible).nonzero()[0].tolist()
        raise DataError(
            f"observations: subject {n}, trial {k}: impossible under the model from every "
            "initial state it allows (p(o | s_0) = 0 wherever D > 0)"
        )
    return evidence


def _trial_evidence(model: GenerativeModel, arrays, present: Tensor | None) -> Tensor:
    """lambda_k(s_0) of every trial from _trial_arrays (their ln p(o | s) with or without
    parameter axes *b): (*b, N, K, S_1..S_F), absent trials all 1."""
    log_likelihood, transitions, actions = arrays
    N, K, T = actions.shape[0], actions.shape[1], actions.shape[2] + 1
    batch = log_likelihood.shape[: -model.num_factors - 2]
    flat = log_likelihood.reshape(-1, T, *model.num_states)
    copies = flat.shape[0] // (N * K)
    transitions = [b.expand(copies, *b.shape).reshape(-1, *b.shape[1:]) for b in transitions]
    evidence = _evidence(flat, transitions).reshape(*batch, N, K, *model.num_states)
    if present is None:
        return evidence
    keep = present.reshape(N, K, *[1] * model.num_factors)
    return torch.where(keep, evidence, torch.ones_like(evidence))


def _evidence(log_likelihood: Tensor, transitions: list[Tensor]) -> Tensor:
    """p(o_0:T-1 | s_0, u) of each sequence, its largest entry 1 (all 0: left 0): (B, S..) from
    ln p(o_t | s) (B, T, S..) and F x (B, T-1, S_f, S_f), by the backward recursion
    beta_t = B_t^T (p(o_t+1 | s) beta_t+1), rescaled at each step."""
    F = len(transitions)
    shift = log_likelihood.flatten(2).amax(-1)  # (B, T)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    likelihood = torch.exp(log_likelihood - shift.reshape(*shift.shape, *[1] * F))
    message = torch.ones_like(likelihood[:, 0])
    for t in range(likelihood.shape[1] - 1, 0, -1):
        message = propagate(
            likelihood[:, t] * message, [b[:, t - 1] for b in transitions], transpose=True
        )
        message = message / _largest(message)
    evidence = likelihood[:, 0] * message
    return evidence / _largest(evidence)


def _largest(joint: Tensor) -> Tensor:
    """The largest entry of each batch row of (B, S_1..S_F), shaped to divide it (1 if all 0)."""
    top = joint.flatten(1).amax(-1)
    top = torch.where(top > 0, top, torch.ones_like(top))
    return top.reshape(-1, *[1] * (joint.dim() - 1))


def learned_initial_beliefs(
    model: GenerativeModel,
    evidence: Tensor,
    learning_rate,
    forgetting,
    concentration,
    present: Tensor | None = None,
    games: GameRows | None = None,
) -> list[Tensor]:
    """Each trial's initial beliefs D_k = pD_k / sum pD_k of an agent that learns pD: F tensors
    (*b, N, K, S_f).

    evidence : (*e, N, K, S_1..S_F), :func:`initial_state_evidence` (with batch axes *e when
    it depends on the parameters, as with zeta); learning_rate, forgetting,
    concentration : eta, omega, kappa, tensors broadcastable to (*b, N); present : bool (N, K),
    optional: absent trials teach nothing. pD_0 = kappa * model.pD; after trial k,
    pD_f <- (1 - omega) pD_f + eta q(s_f,0 | o_1:T), with q(s_0 | o_1:T)
    ∝ prod_f pD_k,f(s_f) lambda_k(s_0): :func:`pp_aif.agent.learn_between_trials` in closed form
    (entries with pD = 0 have q = 0, so they stay 0 without a mask). A factor whose pD has one
    positive entry keeps a one-hot D whatever it learns, so the recursion runs over the others
    only: one multiply, one sum and an update per trial for the T-maze. games : ``GameRows``
    where the task starts new games (``Task.restarts``): the counts start from kappa pD again
    at each, the recursion running over each game as a row of its own.
    """
    if model.pD is None:
        raise ValueError("model: has no pD, so its agents do not learn D")
    F = model.num_factors
    N, K = evidence.shape[-F - 2 : -F]
    dtype = evidence.dtype
    device = evidence.device
    parameters = [
        torch.as_tensor(x, dtype=dtype, device=device)
        for x in (learning_rate, forgetting, concentration)
    ]
    batch = torch.broadcast_shapes(*[x.shape[:-1] for x in parameters], evidence.shape[: -F - 2])
    learnable, certain = model.learnable_initial_factors
    index = tuple(slice(None) if s is None else s for s in certain)
    evidence = evidence[(Ellipsis, *index)]  # (*e, N, K, S_l...)
    L = len(learnable)
    kept = (
        torch.ones(N, K, dtype=dtype, device=device)
        if present is None
        else present.to(dtype=dtype, device=device)
    )
    history: list[Tensor] = []
    if L:
        B = math.prod(batch)
        eta, omega, kappa = (x.expand(*batch, N).reshape(B, N) for x in parameters)
        if evidence.dim() > L + 2:  # evidence that depends on the parameters (zeta)
            evidence = evidence.expand(*batch, *evidence.shape[-L - 2 :])
            evidence = evidence.reshape(B, *evidence.shape[-L - 2 :])
        priors = [model.pD[f] for f in learnable]
        if games is None:
            history = count_history(eta, omega, kappa, evidence, priors, kept)
        else:
            eta, omega, kappa = (games.repeat(x) for x in (eta, omega, kappa))
            rows = games.split(evidence, -L - 1)
            history = count_history(eta, omega, kappa, rows, priors, games.kept(kept))
            history = [games.join(h, -2) for h in history]
        history = [h.reshape(*batch, N, K, -1) for h in history]
    beliefs = []
    for f in range(F):
        if f in learnable:
            p = history[learnable.index(f)]  # (*b, N, K, S_f)
            beliefs.append(p / p.sum(-1, keepdim=True))
        else:
            one_hot = (model.pD[f] > 0).to(dtype)  # a factor its counts keep certain
            beliefs.append(one_hot.expand(*batch, N, K, -1))
    return beliefs


def action_log_probabilities(
    values: PolicyValues, gamma, alpha, preference=1.0
) -> list[Tensor | None]:
    """ln p(u_f,t = u | theta, history) for every control: F entries (*b, N, K, T-1, U_f), None
    for a factor with one control.

    gamma, alpha, preference : policy precision, action precision and preference scale, floats
    or tensors broadcastable to (*b, N) (one value per subject, optionally with draw axes).
    """
    dtype, device = values.base[0].dtype, values.base[0].device
    gamma = torch.as_tensor(gamma, dtype=dtype, device=device)[..., None, None]  # (..., N, 1, 1)
    alpha = torch.as_tensor(alpha, dtype=dtype, device=device)[..., None, None]
    preference = torch.as_tensor(preference, dtype=dtype, device=device)[..., None, None]
    per_factor: list[list[Tensor]] = [[] for _ in values.num_controls]
    if values.safe:  # the same numbers without the guards (a tenth of a fit's operations)
        for base, pragmatic, log_prior, first in zip(
            values.base, values.pragmatic, values.log_prior, values.first_actions, strict=True
        ):
            log_q = torch.log_softmax(log_prior - gamma * (base + preference * pragmatic), -1)
            for f, U in enumerate(values.num_controls):
                if U > 1:
                    mask = first[:, f, None] == torch.arange(U, device=first.device)
                    log_mask = torch.where(mask, 0.0, -torch.inf).to(log_q.dtype)  # (P, U)
                    log_m = torch.logsumexp(log_q[..., :, None] + log_mask, -2)
                    per_factor[f].append(torch.log_softmax(alpha * log_m, -1))
        return [torch.stack(steps, -2) if steps else None for steps in per_factor]
    for base, pragmatic, log_prior, first in zip(
        values.base, values.pragmatic, values.log_prior, values.first_actions, strict=True
    ):
        # a policy with an infinite score (it reaches an outcome of preference -inf) gets
        # ln q = -inf; gamma and c multiply only the finite scores, so that their gradients
        # never meet 0 * inf
        finite = torch.isfinite(base) & torch.isfinite(pragmatic)
        score = torch.where(finite, base, 0.0) + preference * torch.where(finite, pragmatic, 0.0)
        logits = torch.where(finite, log_prior - gamma * score, -torch.inf)
        log_q = torch.log_softmax(logits, -1)
        # the agent's own rule (``agent.step`` replaying actions calls it too), in log space
        per_step = log_action_probabilities(log_q, first, values.num_controls, alpha)
        for f, log_p in enumerate(per_step):
            if log_p is not None:
                per_factor[f].append(log_p)
    return [torch.stack(steps, -2) if steps else None for steps in per_factor]


def action_log_likelihood(values: PolicyValues, gamma, alpha, preference=1.0) -> Tensor:
    """ln p(u_t | theta, history) of the person's actions: (*b, N, K, T-1).

    gamma, alpha, preference : as for :func:`action_log_probabilities`.
    """
    total = None
    for f, log_p in enumerate(action_log_probabilities(values, gamma, alpha, preference)):
        if log_p is None:
            continue
        chosen = values.actions[..., f].expand(*log_p.shape[:-1])
        term = torch.gather(log_p, -1, chosen[..., None])[..., 0]
        total = term if total is None else total + term
    if total is None:  # no factor has a choice: every action is certain
        shape = torch.broadcast_shapes(
            *(torch.as_tensor(x).shape for x in (gamma, alpha, preference))
        )
        return torch.zeros(
            *shape,
            *values.actions.shape[:-1],
            dtype=values.base[0].dtype,
            device=values.actions.device,
        )
    return total


class BehaviourLikelihood:
    """The action likelihood of a data set as a function of the fitted parameters.

    model, settings : the agent; observations int (N, K, T, M), actions int (N, K, T-1, F);
    params : the names (``PARAMETERS``) that will be given when it is called; the others take
    ``parameter_defaults(settings)``. present : bool (N, K), optional, the trials that exist.
    starts : bool (K,), optional: the trials that start a game (``Task.game_starts``), where
    the pD counts start again.

    What does not depend on the fitted parameters is computed here, once: the policy values
    when neither a learning parameter nor zeta is fitted, else the per-trial evidence lambda_k
    for the pD recursion (recomputed at every call when zeta is fitted, since A^zeta changes
    it). ``likelihood(theta)`` with theta {name: tensor (*b, N)} returns (*b, N, K, T-1).
    """

    def __init__(
        self,
        model: GenerativeModel,
        settings: AgentSettings,
        observations: Tensor,
        actions: Tensor,
        params=("gamma", "alpha"),
        present: Tensor | None = None,
        starts: Tensor | None = None,
    ):
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"params: {unknown} are not among {PARAMETERS}")
        _check_settings(model, settings)
        learning = [name for name in params if name in LEARNING_PARAMETERS]
        if learning and model.pD is None:
            raise ValueError(
                f"params: {learning} describe learning D between trials, but the model has no pD"
            )
        if "preference" in params and not settings.lesions.pragmatic:
            raise ValueError("params: 'preference' scales the pragmatic term, which is lesioned")
        self.model, self.settings, self.params = model, settings, tuple(params)
        self.observations, self.actions, self.present = observations, actions, present
        self.defaults = parameter_defaults(settings)
        starts = checked_game_starts(starts, observations.shape[1])
        self.games = None if starts is None or model.pD is None else GameRows(starts.numpy())
        self.arrays = _trial_arrays(model, observations, actions)
        # the data's own checks (impossible trials) at zeta = 1: A_zeta has A's zeros
        self.evidence = None if model.pD is None else _checked_evidence(model, self.arrays, present)
        self.static, self.plan = None, None
        if not learning and "likelihood_precision" not in params:
            self.static = self.values({})
        elif "likelihood_precision" not in params:
            self.plan = linear_plan(model, settings, self.arrays)
        # the plan's likelihood in numpy with its adjoint (``plan_likelihood``), on the CPU
        self.fused = None
        if (
            self.plan is not None
            and self.plan.safe
            and model.device.type == "cpu"
            and model.dtype == torch.float64
        ):
            self.fused = PlanConstants(
                model, settings, self.plan, self.evidence, actions, present, self.games
            )

    def values(self, theta: dict) -> PolicyValues:
        """Policy values under theta (only its learning parameters and zeta matter here)."""
        if self.static is not None:
            return self.static
        arrays, evidence, A = self.arrays, self.evidence, None
        if "likelihood_precision" in theta:
            log_A = sharpened_likelihood(self.model.A, theta["likelihood_precision"], log=True)
            A = [torch.exp(a) for a in log_A]
            arrays = _trial_arrays(self.model, self.observations, self.actions, log_A)
            if evidence is not None:  # lambda_k follows A^zeta
                evidence = _trial_evidence(self.model, arrays, self.present)
        initial = None
        if evidence is not None:
            rate, forget, scale = (
                theta.get(name, self.defaults[name]) for name in LEARNING_PARAMETERS
            )
            initial = learned_initial_beliefs(
                self.model, evidence, rate, forget, scale, self.present, self.games
            )
        return _policy_values(self.model, self.settings, arrays, initial, A, self.plan)

    def log_probabilities(self, theta: dict) -> list[Tensor | None]:
        """ln p(u_f,t = u | theta, history), as :func:`action_log_probabilities`."""
        gamma, alpha, preference = (
            theta.get(name, self.defaults[name]) for name in ("gamma", "alpha", "preference")
        )
        return action_log_probabilities(self.values(theta), gamma, alpha, preference)

    def chosen_log_likelihood(self, theta: dict) -> Tensor:
        """ln p(u_t | theta, history) of the person's actions, (*b, N, K, T-1), without
        ``__call__``'s check of undetermined choices (the potential of NUTS calls it)."""
        if self.fused is None:
            gamma, alpha, preference = (
                theta.get(name, self.defaults[name]) for name in ("gamma", "alpha", "preference")
            )
            return action_log_likelihood(self.values(theta), gamma, alpha, preference)
        N, K, T1 = self.actions.shape[:3]
        given = [theta.get(name) for name in FUSED_ORDER]
        shape = torch.broadcast_shapes(*[v.shape for v in given if isinstance(v, Tensor)], (N,))
        batch = shape[:-1]
        B = math.prod(batch)
        flat = []
        for name, value in zip(FUSED_ORDER, given, strict=True):
            if value is None:  # a setting: a constant
                flat.append(torch.full((B, N), self.defaults[name], dtype=torch.float64))
            elif isinstance(value, Tensor) and value.shape == (B, N):
                flat.append(value)  # (the potential's layout: no copy, no view)
            else:
                value = torch.as_tensor(value, dtype=torch.float64)
                flat.append(value.expand(shape).reshape(B, N))
        value = plan_log_likelihood(self.fused, flat, self._torch_path)
        return value.reshape(*batch, N, K, T1)

    def numpy_value_and_gradient(
        self, theta: dict, present: np.ndarray | None, gradient: bool = True
    ):
        """(sum of ln p of the present chosen actions (B, N), {name: its gradient (B, N)}) for
        theta {name: (B, N) numpy}, in numpy (the fused plan), or None where there is no fused
        plan or it declines the point. present : float (N, K) or None; gradient : False for the
        value alone (gradients None)."""
        if self.fused is None:
            return None
        return fused_value_and_gradient(
            numpy_value_and_gradient, self.fused, self.defaults, self.actions.shape, theta,
            present, gradient,
        )  # fmt: skip

    def _torch_path(self, *theta: Tensor) -> Tensor:
        """``chosen_log_likelihood`` in torch operations, theta in ``FUSED_ORDER``."""
        named = dict(zip(FUSED_ORDER, theta, strict=True))
        values = self.values(named)
        return action_log_likelihood(values, named["gamma"], named["alpha"], named["preference"])

    def __call__(self, theta: dict) -> Tensor:
        value = self.chosen_log_likelihood(theta)
        if torch.isnan(value.detach()).any():
            self._raise_undetermined(self.values(theta))
        return value

    def _raise_undetermined(self, values: PolicyValues) -> None:
        """ln p(u) is NaN where every policy's score is infinite (C of -inf, or so extreme that
        G overflows, on an outcome every policy risks): the agent refuses that step too. (A NaN
        from parameters at the edge of their range, e.g. gamma = inf, is left to the caller.)"""
        undetermined = torch.stack(  # every policy's score infinite (NaN is not: see above)
            [
                (torch.isinf(base) | torch.isinf(pragmatic)).all(-1)
                for base, pragmatic in zip(values.base, values.pragmatic, strict=True)
            ],
            -1,
        )  # (*b, N, K, T-1)
        present = self.present
        if present is not None:
            undetermined = undetermined & present[..., :, None].to(undetermined.device)
        if not undetermined.any():
            return
        index = tuple(int(i) for i in undetermined.nonzero()[0])
        subject, trial, step = index[-3:]
        raise ValueError(
            f"the likelihood is undetermined at subject {subject}, trial {trial}, time step "
            f"{step} ({int(undetermined.sum())} choice(s) in all): every policy there reaches an "
            "outcome whose preference is -inf (or so extreme that G overflows), so no policy is "
            "preferred to another. Give C finite values there; the agent refuses that step too"
        )


def checked_game_starts(starts, num_trials: int) -> Tensor | None:
    """The trials that start a game (``pp_aif.Task.game_starts``) as bool (K,), trial 0 among
    them; None for None or where only trial 0 starts one (the counts carry over every trial).
    A ValueError for another length or values other than booleans."""
    if starts is None:
        return None
    starts = torch.as_tensor(starts)
    if starts.shape != (num_trials,) or starts.dtype != torch.bool:
        raise ValueError(
            f"starts: expected bool ({num_trials},), which trials start a game (one per trial "
            f"of the data), got {starts.dtype} {tuple(starts.shape)}"
        )
    starts = starts.clone()
    starts[0] = True
    return starts if bool(starts[1:].any()) else None

"""The likelihood of agents that learn pA and pB where the states are observed: a closed form.

Dimension symbols: N subjects, K trials, T steps, F factors (S_f states), M modalities (O_m
outcomes), *b a batch of parameter draws, B = prod(b).

A fast path of the replay (``pp_aif.fitting.replay``), for the commonest learners of
computational psychiatry: bandits and other tasks whose states the agent sees. When every
present trial's filtering and smoothing posteriors are one state at every step, the agent's
beliefs do not depend on what it has learned: learning keeps the zeros of A, B and D (counts
change only where they are positive), and the support of a posterior is fixed by those zeros.
The beliefs are then the data's, and so are the counts of each trial,

    c_k = sum_t o_k,t (x) q(s_k,t)   (pA),     sum_t q(s_k,t+1) (x) q(s_k,t) at u_k,t   (pB).

The counts before trial k follow from the update p <- (1 - omega) p + eta c, applied after each
present trial, in closed form:

    p_k = (1 - omega)^m_k kappa p_0 + eta sum_{j < k present} (1 - omega)^(m_k - m_j - 1) c_j,

with m_k the number of present trials before k (only where p_0 > 0; elsewhere p stays 0). Where
the task starts new games (``Task.restarts``), j and m_k count only the trials of k's game. So
every trial's A_k, B_k and their counts come at once, as one batched contraction over trials,
and the policy values of all trials and steps are one batch of the EFE kernel with one A and B
per belief (``pp_aif.planning.efe.policy_scores``). The action probabilities are then those of
the closed form (``pp_aif.fitting.likelihood.action_log_probabilities``).

Equal to the replay (1e-10, gradients too; ``tests/fitting/test_counts.py``); chosen by
``pp_aif.fitting.replay.likelihood_for`` where it applies. Cost per call: K*T batched steps of
the replay become one EFE call per step over B*N*K beliefs.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from pp_aif.agent import AgentSettings, policies_at
from pp_aif.errors import DataError
from pp_aif.fitting.counts_fused import CountsConstants, counts_value_and_gradient
from pp_aif.fitting.likelihood import (
    PolicyValues,
    action_log_likelihood,
    action_log_probabilities,
    checked_game_starts,
    every_action_possible,
    parameter_defaults,
)
from pp_aif.fitting.plan_likelihood import fused_value_and_gradient
from pp_aif.ops.dirichlet import observation_counts, transition_counts
from pp_aif.ops.hmm import (
    factor_marginals,
    forward_filter,
    observation_log_likelihood,
    select_transitions,
    smooth,
)
from pp_aif.planning.efe import log_preferences, policy_scores
from pp_aif.planning.policies import policy_score
from pp_aif.spec import GenerativeModel

__all__ = ["CountsLikelihood", "COUNTS_PARAMETERS", "observed_states"]

COUNTS_PARAMETERS = ("gamma", "alpha", "preference", "learning_rate", "forgetting", "concentration")


def _fusable(model: GenerativeModel, settings: AgentSettings, T: int) -> bool:
    """Whether ``counts_fused`` computes this agent's likelihood: a learner of pA only, on the
    CPU in float64, finite preferences (0 ln 0 needs the kernel's care), and every control of
    every step some policy's first under a finite ln E (no action of probability 0)."""
    if model.pB is not None or model.device.type != "cpu" or model.dtype != torch.float64:
        return False
    for t in range(T - 1):
        policies, _ = policies_at(model, settings, t, T)
        preferences = log_preferences(model, t, policies.shape[1])
        if not all(bool(torch.isfinite(p).all()) for p in preferences):
            return False
    return every_action_possible(model, settings, T)


def _normalised(counts, axis):
    return None if counts is None else [p / p.sum(axis, keepdim=True) for p in counts]


def observed_states(model: GenerativeModel, observations: Tensor, actions: Tensor, present):
    """(whether every present trial's filtering and smoothing posteriors are one state at every
    step, smoothed marginals F x (N, K, T, S_f)), under the agent's initial arrays (normalised
    counts where it has them); learning keeps their zeros, so the answer holds for every theta.

    Raises DataError naming the subject, trial and step of an impossible trial.
    """
    N, K, T, M = observations.shape
    A = _normalised(model.pA, 0) or list(model.A)
    B = _normalised(model.pB, 0) or list(model.B)
    D = _normalised(model.pD, -1) or list(model.D)
    flat_observations = observations.reshape(N * K, T, M)
    log_likelihood = observation_log_likelihood([torch.log(a) for a in A], flat_observations)
    by_action = [b.permute(2, 0, 1) for b in B]
    transitions = select_transitions(by_action, actions.reshape(N * K, T - 1, -1))
    result = forward_filter(log_likelihood, transitions, D)
    impossible = ~torch.isfinite(result.log_normalisers) & present.reshape(N * K, 1)
    if impossible.any():
        row, t = (int(i) for i in impossible.nonzero()[0])
        raise DataError(
            f"observations: subject {row // K}, trial {row % K}, time step {t}: the outcomes "
            "have probability 0 under the agent's model, given the trial's earlier ones"
        )
    smoothed = smooth(
        result.filtered,
        result.predicted,
        transitions,
        log_space=result.log_space,
        log_likelihood=log_likelihood,
        initial=D,
    )
    certain = True
    for joint in (result.filtered, smoothed):
        states = (joint.flatten(2) > 0).sum(-1)  # (N K, T)
        certain = certain and bool((states[present.reshape(N * K)] == 1).all())
    marginals = [q.reshape(N, K, T, -1) for q in factor_marginals(smoothed, 2)]
    return certain, marginals


class CountsLikelihood:
    """theta -> ln p(u | theta, history) for agents that learn pA and/or pB (and pD) where the
    states are observed (``observed_states``); see the module docstring.

    Parameters and calls as ``pp_aif.fitting.replay.ReplayLikelihood``; raises ValueError if
    the states are not observed in these data (use the replay then).
    """

    def __init__(
        self,
        model: GenerativeModel,
        settings: AgentSettings,
        observations: Tensor,
        actions: Tensor,
        params=("gamma", "alpha"),
        present: Tensor | None = None,
        *,
        observed: tuple[bool, list[Tensor]] | None = None,
        starts: Tensor | None = None,
    ):
        """``observed``: ``observed_states`` of these data, when the caller has it already;
        ``starts``: bool (K,), the trials that start a game (``Task.game_starts``), or None."""
        params = tuple(params)
        unknown = sorted(set(params) - set(COUNTS_PARAMETERS))
        if unknown:
            raise ValueError(f"params: {unknown} are not among {COUNTS_PARAMETERS}")
        if (
            settings.inference != "exact"
            or settings.efe_method != "exact"
            or settings.planner != "open_loop"
            or settings.inductive_epsilon is not None
        ):
            raise ValueError(
                "settings: the count recursion needs exact inference, exact G and open-loop "
                "planning without inductive costs; the replay (ReplayLikelihood) fits the others"
            )
        if model.pA is None and model.pB is None:
            raise ValueError("model: learns neither pA nor pB; use BehaviourLikelihood")
        N, K, T = observations.shape[:3]
        if present is None:
            present = torch.ones(N, K, dtype=torch.bool, device=observations.device)
        certain, marginals = observed or observed_states(model, observations, actions, present)
        if not certain:
            raise ValueError(
                "data: the agent does not see its states in every trial (a filtering or "
                "smoothing posterior has more than one state), so its beliefs depend on what it "
                "learns; use the replay (ReplayLikelihood)"
            )
        self.model, self.settings, self.params = model, settings, params
        self.observations, self.actions, self.present = observations, actions, present
        self.defaults = parameter_defaults(settings)
        self.marginals = marginals  # F x (N, K, T, S_f), one-hot where present
        flat = [q.reshape(N * K, T, -1) for q in marginals]
        counts = {}
        if model.pA is not None:
            made = observation_counts(observations.reshape(N * K, T, -1), flat, model.num_outcomes)
            counts["pA"] = [c.reshape(N, K, *c.shape[1:]) for c in made]
        if model.pB is not None:
            made = transition_counts(actions.reshape(N * K, T - 1, -1), flat, model.num_controls)
            counts["pB"] = [c.reshape(N, K, *c.shape[1:]) for c in made]
        mask = present.to(model.dtype)
        for name, arrays in counts.items():  # absent trials teach nothing
            counts[name] = [c * mask.reshape(N, K, *[1] * (c.dim() - 2)) for c in arrays]
        self.counts = counts
        # W[n, k, j] = [j < k, in k's game] present_j; m_k: their number, (N, K)
        earlier = torch.tril(torch.ones(K, K, dtype=model.dtype, device=model.device), -1)
        starts = checked_game_starts(starts, K)
        if starts is not None:
            game = torch.cumsum(starts.to(model.device), 0)
            earlier = earlier * (game[:, None] == game[None, :])
        self.earlier = earlier[None] * mask[:, None, :]  # (N, K, J)
        self.before = self.earlier.sum(-1)
        # the likelihood in numpy with its gradient (``counts_fused``), for NUTS on the CPU
        self.fused = CountsConstants(self) if _fusable(model, settings, T) else None

    def _column(self, theta: dict, name: str, shape) -> Tensor:
        value = theta.get(name, self.defaults[name])
        value = torch.as_tensor(value, dtype=self.model.dtype, device=self.model.device)
        return value.expand(shape)

    def _learned(self, theta: dict, shape) -> dict[str, list[Tensor]]:
        """Each trial's counts before it: {name: arrays (*b, N, K, ...)}."""
        eta = self._column(theta, "learning_rate", shape)[..., None, None]  # (*b, N, 1, 1)
        omega = self._column(theta, "forgetting", shape)[..., None, None]
        kappa = self._column(theta, "concentration", shape)[..., None]  # (*b, N, 1)
        log_keep = torch.log1p(-omega)  # ln(1 - omega)
        m = self.before[:, :, None]  # (N, K, 1)
        exponent = (m - self.before[:, None, :] - 1) * self.earlier  # (N, K, J), 0 off support
        weights = eta * torch.exp(exponent * log_keep) * self.earlier  # (*b, N, K, J)
        decay = torch.exp(self.before * log_keep[..., 0])  # (*b, N, K)
        learned = {}
        for name, arrays in self.counts.items():
            initial = getattr(self.model, name)
            learned[name] = []
            for p0, c in zip(initial, arrays, strict=True):
                event = p0.dim()
                start = (decay * kappa).reshape(*decay.shape, *[1] * event) * p0
                flat = c.reshape(*c.shape[:2], -1)  # (N, J, prod event)
                added = torch.einsum("...nkj,nje->...nke", weights, flat)
                added = added.reshape(*added.shape[:-1], *p0.shape)
                learned[name].append(torch.where(p0 > 0, start + added, p0))
        return learned

    def values(self, theta: dict) -> PolicyValues:
        """The policy values of every step of every trial under theta's learned counts."""
        model, settings = self.model, self.settings
        N, K, T = self.observations.shape[:3]
        given = [torch.as_tensor(theta[name]).shape for name in self.params if name in theta]
        shape = torch.broadcast_shapes(*given, (N,))
        batch = tuple(shape[:-1])
        size = math.prod(batch) * N * K
        learned = self._learned(theta, shape)

        def flat(arrays):
            if arrays is None:
                return None
            return [a.reshape(size, *a.shape[len(batch) + 2 :]) for a in arrays]

        pA, pB = flat(learned.get("pA")), flat(learned.get("pB"))
        A = _normalised(pA, 1)
        B = _normalised(pB, 1)
        without_pragmatic = replace(settings.lesions, pragmatic=False)
        base, pragmatic, log_prior, first = [], [], [], []
        for t in range(T - 1):
            policies, prior = policies_at(model, settings, t, T)
            beliefs = [
                q[:, :, t].expand(*batch, N, K, q.shape[-1]).reshape(size, -1)
                for q in self.marginals
            ]
            scores = policy_scores(model, beliefs, policies, time=t, A=A, pA=pA, B=B, pB=pB)
            base.append(policy_score(scores, without_pragmatic).reshape(*batch, N, K, -1))
            part = -scores.pragmatic if settings.lesions.pragmatic else torch.zeros_like(scores.G)
            pragmatic.append(part.reshape(*batch, N, K, -1))
            log_prior.append(prior)
            first.append(policies[:, 0, :])
        return PolicyValues(base, pragmatic, log_prior, first, self.actions, model.num_controls)

    def numpy_value_and_gradient(
        self, theta: dict, present: np.ndarray | None, gradient: bool = True
    ):
        """As ``BehaviourLikelihood.numpy_value_and_gradient``, by ``counts_fused``."""
        if self.fused is None:
            return None
        return fused_value_and_gradient(
            counts_value_and_gradient, self.fused, self.defaults, self.actions.shape, theta,
            present, gradient,
        )  # fmt: skip

    def _precisions(self, theta):
        return (theta.get(n, self.defaults[n]) for n in ("gamma", "alpha", "preference"))

    def log_probabilities(self, theta: dict) -> list[Tensor | None]:
        """ln p(u_f,t = u | theta, history): F entries (*b, N, K, T-1, U_f) or None."""
        return action_log_probabilities(self.values(theta), *self._precisions(theta))

    def __call__(self, theta: dict) -> Tensor:
        """ln p(u_t | theta, history) of the person's actions: (*b, N, K, T-1)."""
        return action_log_likelihood(self.values(theta), *self._precisions(theta))

    chosen_log_likelihood = __call__

"""The likelihood of people's actions as the agent itself replaying them.

Dimension symbols: N subjects, K trials, T steps, F factors (U_f controls), M modalities, *b a
batch of parameter draws (draws x chains, on the left), B = prod(b).

One agent, not two: the likelihood of subject n's choices under parameters theta is what
``pp_aif.agent.step`` gives when it replays that person's observations and actions, trial by
trial, with ``pp_aif.agent.learn_between_trials`` between trials:

    ln p(u_1:K | theta) = sum_k sum_t ln p(u_k,t | o_k,1:t, u_k,1:t-1, learned counts_k; theta)

Every parameter draw of every subject is one agent of a batch of B * N agents, so a call runs
K * T batched steps, whatever the agent does in them: any state-inference scheme, learning of pA,
pB and pD, inferred precision. Gradients reach every fitted parameter through the step (the
settings are tensors (B N, 1), one value per agent).

The parameters (``REPLAY_PARAMETERS``) are the agent's settings:

    gamma          policy_precision        alpha          action_precision
    preference     preference_scale (c)    learning_rate  eta of every count learned
    forgetting     omega of every count    concentration  kappa: initial counts kappa * pA, pB, pD
    likelihood_precision   zeta: each agent infers and plans with its own A^zeta, renormalised
                           (``initial_state(A=)``; for agents that do not learn pA)

``pp_aif.fitting.BehaviourLikelihood`` is the closed form of the same number for the agents it
covers (exact inference, exact G, fixed gamma, at most pD learned), and
``pp_aif.fitting.counts.CountsLikelihood`` for agents that learn pA or pB where they see their
states: ``likelihood_for`` chooses them there, and the tests hold each equal to the replay
(1e-10, gradients too). Refused, with the reason: a
sampled G (the likelihood would be random), and zeta for agents that learn pA (their A is their
normalised counts, which zeta does not sharpen).

Absent trials (``present`` False) are not replayed: that subject's agents neither choose nor
learn in them, and their entries are uniform (the behavioural program masks them).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from pp_aif.agent import AgentSettings, initial_state, learn_between_trials, step
from pp_aif.fitting.counts import COUNTS_PARAMETERS, CountsLikelihood, observed_states
from pp_aif.fitting.likelihood import (
    LEARNING_PARAMETERS,
    PARAMETERS,
    BehaviourLikelihood,
    checked_game_starts,
    parameter_defaults,
    sharpened_likelihood,
)
from pp_aif.spec import GenerativeModel

__all__ = [
    "ReplayLikelihood",
    "REPLAY_PARAMETERS",
    "likelihood_for",
    "closed_form_applies",
    "check_fittable",
]

REPLAY_PARAMETERS = PARAMETERS

#: each fitted parameter's AgentSettings field. A draw outside the field's range (e.g. a
#: leapfrog step that overflowed to inf) gets likelihood 0 instead of an error.
_SETTINGS = {
    "gamma": "policy_precision",
    "alpha": "action_precision",
    "preference": "preference_scale",
    "learning_rate": "learning_rate",
    "forgetting": "forgetting",
}


def closed_form_applies(model: GenerativeModel, settings: AgentSettings, params) -> bool:
    """Whether ``BehaviourLikelihood`` (the closed form) covers this agent: exact inference and
    G, open-loop planning without inductive costs, no learning of A or B (gamma is always
    fixed: AgentSettings refuses to infer it)."""
    return (
        settings.inference == "exact"
        and settings.efe_method == "exact"
        and settings.planner == "open_loop"
        and settings.inductive_epsilon is None
        and model.pA is None
        and model.pB is None
        and set(params) <= set(PARAMETERS)
    )


def likelihood_for(model, settings, observations, actions, params, present=None, starts=None):
    """The likelihood of the data's actions, by the fastest route that applies:

    1. ``BehaviourLikelihood``: the closed form of agents that learn at most pD;
    2. ``CountsLikelihood``: agents that learn pA or pB where the data show them their states
       (the counts of all trials at once, e.g. bandits);
    3. ``ReplayLikelihood``: the agent replaying the data, for everything else.

    ``starts``: bool (K,), the trials that start a game (``Task.game_starts``), or None. All
    routes are the same number (tested to 1e-10, gradients too).
    """
    check_fittable(model, settings, params)
    if closed_form_applies(model, settings, params):
        return BehaviourLikelihood(model, settings, observations, actions, params, present, starts)
    if (
        settings.inference == "exact"
        and settings.efe_method == "exact"
        and settings.planner == "open_loop"
        and settings.inductive_epsilon is None
        and (model.pA is not None or model.pB is not None)
        and set(params) <= set(COUNTS_PARAMETERS)
    ):
        N, K = observations.shape[:2]
        mask = present if present is not None else torch.ones(N, K, dtype=torch.bool)
        observed = observed_states(model, observations, actions, mask)  # once, for both
        if observed[0]:
            return CountsLikelihood(
                model, settings, observations, actions, params, present, observed=observed,
                starts=starts,
            )  # fmt: skip
    return ReplayLikelihood(model, settings, observations, actions, params, present, starts)


def check_fittable(model: GenerativeModel, settings: AgentSettings, params) -> None:
    """A ValueError, with the reason, where the agent's parameters ``params`` cannot be fitted
    (whatever the data): learning parameters without learned counts, zeta for a learner of pA,
    a lesioned term's scale, a sampled G. ``pp-aif fit`` asks before it prints anything."""
    params = tuple(params)
    if "likelihood_precision" in params and model.pA is not None:
        raise ValueError(
            "params: 'likelihood_precision' (zeta) sharpens a fixed A, but this agent learns "
            "pA: its A is its normalised counts, which zeta does not change"
        )
    unknown = sorted(set(params) - set(REPLAY_PARAMETERS))
    if unknown:
        raise ValueError(f"params: {unknown} are not among {REPLAY_PARAMETERS}")
    if settings.efe_method != "exact":
        raise ValueError(
            f"settings: efe_method={settings.efe_method!r} makes every policy score a Monte "
            "Carlo estimate, so the likelihood would be random; fit with efe_method='exact', "
            "the quantity the samples estimate"
        )
    learned = [name for name in ("pA", "pB", "pD") if getattr(model, name) is not None]
    fitted_learning = [name for name in params if name in LEARNING_PARAMETERS]
    if fitted_learning and not learned:
        raise ValueError(
            f"params: {fitted_learning} shape learning, but the model has no pA, pB or pD, "
            "so its agents do not learn"
        )
    if "preference" in params and not settings.lesions.pragmatic:
        raise ValueError("params: 'preference' scales the pragmatic term, which is lesioned")


class ReplayLikelihood:
    """theta -> ln p(u | theta, history) by ``pp_aif.agent.step`` replaying each person's trials.

    Parameters
    ----------
    model : GenerativeModel (the agent's; its pA, pB, pD are the initial counts)
    settings : AgentSettings (the values of the parameters not fitted, and how the agent infers
        and plans)
    observations : int (N, K, T, M); actions : int (N, K, T-1, F)
    params : names among ``REPLAY_PARAMETERS``
    present : bool (N, K), optional: which trials each subject has
    starts : bool (K,), optional: the trials that start a game, where each agent's counts
        return to their initial values (``Task.game_starts``; None: one game)

    Calls take theta {name: (*b, N)} and return (*b, N, K, T-1) (``__call__``) or F entries
    (*b, N, K, T-1, U_f) of log-probabilities of every control (``log_probabilities``; None for
    a factor with one control), as ``BehaviourLikelihood`` does.
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
        params = tuple(params)
        check_fittable(model, settings, params)
        N, K, T = observations.shape[:3]
        if present is None:
            present = torch.ones(N, K, dtype=torch.bool, device=observations.device)
        self.starts = checked_game_starts(starts, K)
        self.model, self.settings, self.params = model, settings, params
        self.observations, self.actions, self.present = observations, actions, present
        self.defaults = parameter_defaults(settings)

    def _theta(self, theta: dict) -> tuple[tuple[int, ...], dict[str, Tensor], Tensor]:
        """(draw shape b, {name: (B N, 1)} of every parameter, valid (B N,)): fitted values
        where given, the defaults elsewhere; values out of range replaced by the default (and
        marked invalid, so that their likelihood is -inf)."""
        model, N = self.model, self.observations.shape[0]
        given = {
            name: torch.as_tensor(value, dtype=model.dtype, device=model.device)
            for name, value in theta.items()
            if name in self.params
        }
        shape = torch.broadcast_shapes(*(v.shape for v in given.values()), (N,))
        batch = tuple(shape[:-1])
        B = math.prod(batch)
        columns, valid = {}, torch.ones(B * N, dtype=torch.bool, device=model.device)
        for name in (*_SETTINGS, "concentration", "likelihood_precision"):
            default = torch.as_tensor(self.defaults[name], dtype=model.dtype, device=model.device)
            if name not in given:  # a setting: one value, or one per subject (N, 1)
                columns[name] = default.reshape(-1, 1).expand(N, 1).repeat(B, 1)
                continue
            value = given[name].expand(shape).reshape(B * N, 1)
            ok = torch.isfinite(value) & (value >= 0)
            if name == "forgetting":
                ok = ok & (value < 1)
            if name in ("preference", "concentration", "likelihood_precision"):
                ok = ok & (value > 0)
            safe_default = 0.5 if name == "forgetting" else 1.0
            columns[name] = torch.where(ok, value, torch.full_like(value, safe_default))
            valid = valid & ok[:, 0]
        return batch, columns, valid

    def _replay(self, theta: dict) -> tuple[tuple[int, ...], list[list[Tensor | None]], Tensor]:
        """Replay every trial: (b, per factor a list over (k, t) of (B N, U_f) log-probabilities
        or None, valid (B N,))."""
        model, settings = self.model, self.settings
        N, K, T = self.observations.shape[:3]
        batch, columns, valid = self._theta(theta)
        B = math.prod(batch)
        agents = B * N
        subject = torch.arange(agents, device=model.device) % N  # agent b * N + n replays n
        per_agent = dataclasses.replace(
            settings,
            **{field: columns[name] for name, field in _SETTINGS.items()},
        )
        kappa = columns["concentration"]
        own_A = None  # each agent's A^zeta, where zeta is fitted
        if "likelihood_precision" in self.params:
            own_A = sharpened_likelihood(model.A, columns["likelihood_precision"][:, 0])
        counts = {
            name: None
            if getattr(model, name) is None
            else [kappa.reshape(-1, *[1] * p.dim()) * p for p in getattr(model, name)]
            for name in ("pA", "pB", "pD")
        }
        logs: list[list[Tensor | None]] = [[] for _ in model.num_controls]
        uniform = [  # the entries of absent trials, made once
            None
            if U == 1
            else torch.full((agents, U), -math.log(U), dtype=model.dtype, device=model.device)
            for U in model.num_controls
        ]
        initial = counts
        for k in range(K):
            if self.starts is not None and self.starts[k]:  # a new game: the counts start again
                counts = initial
            rows = self.present[subject, k].nonzero()[:, 0]  # the agents whose subject has trial k
            steps = self._trial(per_agent, counts, own_A, rows, subject[rows], k, agents)
            learned, results = steps
            for f, flat in enumerate(uniform):
                for t in range(T - 1):
                    if flat is None or results is None:
                        logs[f].append(flat)
                    else:
                        logs[f].append(flat.index_put((rows,), results[t][f]))
            counts = learned
        return batch, logs, valid

    def _trial(self, per_agent, counts, own_A, rows, subjects, k, agents):
        """One trial for the agents ``rows`` (whose subjects are ``subjects``): (the counts
        after it, for every agent; the log-probabilities per step and factor, or None)."""
        model = self.model
        if len(rows) == 0:
            return counts, None
        T = self.observations.shape[2]

        def take(value):
            return value[rows] if isinstance(value, Tensor) and value.dim() > 0 else value

        settings = dataclasses.replace(
            per_agent,
            **{
                f.name: take(getattr(per_agent, f.name))
                for f in dataclasses.fields(per_agent)
                if isinstance(getattr(per_agent, f.name), Tensor)
            },
        )
        mine = {
            name: None if value is None else [p[rows] for p in value]
            for name, value in counts.items()
        }
        state = initial_state(
            model,
            len(rows),
            pA=mine["pA"],
            pB=mine["pB"],
            pD=mine["pD"],
            A=None if own_A is None else [a[rows] for a in own_A],
        )
        observations = self.observations[subjects, k]  # (n, T, M)
        actions = self.actions[subjects, k]  # (n, T-1, F)
        results = []
        for t in range(T):
            action = actions[:, t] if t < T - 1 else None
            state, result = step(
                model, settings, state, observations[:, t], num_steps=T, action=action
            )
            if action is not None:  # the step's own log probabilities (log space)
                results.append(result.log_action_probabilities)
        pA, pD, pB = learn_between_trials(model, settings, state, observations, actions)
        new = {"pA": pA, "pB": pB, "pD": pD}
        learned = {
            name: None
            if counts[name] is None
            else [
                whole.index_put((rows,), part)
                for whole, part in zip(counts[name], new[name], strict=True)
            ]
            for name in counts
        }
        return learned, results

    def log_probabilities(self, theta: dict) -> list[Tensor | None]:
        """ln p(u_f,t = u | theta, history): F entries (*b, N, K, T-1, U_f), None for a factor
        with one control."""
        N, K, T = self.observations.shape[:3]
        batch, logs, valid = self._replay(theta)
        out = []
        for f, U in enumerate(self.model.num_controls):
            if U == 1:
                out.append(None)
                continue
            stacked = torch.stack(logs[f], 1).reshape(-1, K, T - 1, U)  # (B N, K, T-1, U)
            stacked = torch.where(valid[:, None, None, None], stacked, -math.log(U))
            out.append(stacked.reshape(*batch, N, K, T - 1, U))
        self._valid = valid.reshape(*batch, N)
        return out

    def __call__(self, theta: dict) -> Tensor:
        """ln p(u_t | theta, history) of the person's actions: (*b, N, K, T-1); -inf for a
        draw whose parameters lie outside their range."""
        N, K, T = self.observations.shape[:3]
        total = 0
        for f, log_p in enumerate(self.log_probabilities(theta)):
            if log_p is None:
                continue
            chosen = self.actions[..., f].expand(*log_p.shape[:-1])
            total = total + log_p.gather(-1, chosen[..., None])[..., 0]
        if isinstance(total, int):  # every factor has one control: nothing is chosen
            total = torch.zeros(N, K, T - 1, dtype=self.model.dtype, device=self.model.device)
        valid = self._valid[..., None, None]
        return torch.where(valid, total, -torch.inf)

    chosen_log_likelihood = __call__

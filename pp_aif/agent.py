"""A batched active-inference agent: settings, state, and a pure step function.

Dimension symbols: N agents (batched in every tensor), F factors (S_f states, U_f controls),
M modalities, P policies, H horizon, T steps in a trial.

One step at time t, for all N agents at once:

    q(s_t)  ∝ p(o_t | s_t) p(s_t | o_<t)        exact, over the joint state (N, S_1..S_F)
    G, q(pi) from the factor marginals of q(s_t) (pp_aif.planning), policies of horizon
             min(H, T-1-t) so that no policy looks past the trial
    u_t     ~ p(u) ∝ exp(alpha ln sum_pi q(pi) [pi_0 = u])
    p(s_t+1 | o_<=t) = B[u_t] q(s_t)            the next prior, still joint

``AgentSettings.inference`` swaps the first line for an approximate scheme: "fpi" (pymdp's
fixed-point iteration with the factorised prior), "vmp" or "mmp" (message passing over the trial
so far, from D, read at the present step); the joint belief is then the product of the scheme's
marginals. With "exact" (the default), keeping the joint belief makes the agent's state
inference exact: its beliefs equal ``infer_states(..., mode="filtering")`` (tested). Between
trials each agent learns its own Dirichlet counts from the trial's smoothed beliefs
(:func:`learn_between_trials`): ``pA``, ``pB`` and ``pD``, whichever the model has; its A, B
and D are the normalised counts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields, replace
from typing import NamedTuple

import torch
from torch import Tensor

from pp_aif.errors import DataError
from pp_aif.inference.inputs import SchemeInputs, scheme_inputs
from pp_aif.inference.schemes import SCHEMES, MessagePassingSettings
from pp_aif.ops.contractions import outer
from pp_aif.ops.dirichlet import (
    initial_counts,
    observation_counts,
    transition_counts,
    update_concentrations,
)
from pp_aif.ops.efe import policy_prefix_tree
from pp_aif.ops.hmm import bayes_update, propagate
from pp_aif.planning import (
    DEFAULT_ACTION_PRECISION,
    DEFAULT_POLICY_PRECISION,
    Lesions,
    PolicyScores,
    action_marginals,
    action_probabilities,
    policy_scores,
    select_actions,
)
from pp_aif.planning.inductive import model_reachability, policy_inductive_cost
from pp_aif.planning.policies import (
    log_action_probabilities,
    log_policy_posterior,
    policy_score,
)
from pp_aif.planning.sophisticated import (
    DEFAULT_ACTION_THRESHOLD,
    DEFAULT_OUTCOME_THRESHOLD,
    sophisticated_scores,
)
from pp_aif.spec import GenerativeModel
from pp_aif.validation import check_choice, check_flag, check_integer, check_number

__all__ = [
    "AgentSettings",
    "PlanningSettings",
    "LearningSettings",
    "InferenceSettings",
    "AgentState",
    "StepResult",
    "initial_state",
    "step",
    "learn_between_trials",
]


#: how an agent plans: open loop over the policies, or sophisticated (recursive) planning
PLANNERS = ("open_loop", "sophisticated")
#: the state-inference schemes an agent can use (``pp_aif.inference.schemes``)
INFERENCE_SCHEMES = tuple(SCHEMES)
#: the schemes that infer over the trial so far, so the state keeps its observations and actions
HISTORY_SCHEMES = tuple(name for name, scheme in SCHEMES.items() if scheme.history)


@dataclass(frozen=True)
class PlanningSettings:
    """How an agent scores policies and chooses actions: what ``step`` plans with (the fields
    of ``AgentSettings`` of the same names; see there)."""

    policy_precision: float = DEFAULT_POLICY_PRECISION
    action_precision: float = DEFAULT_ACTION_PRECISION
    sample_actions: bool = True
    horizon: int | None = None
    lesions: Lesions = field(default_factory=Lesions)
    efe_method: str = "exact"
    num_samples: int = 1000
    preference_scale: float = 1.0
    infer_precision: bool = False
    planner: str = "open_loop"
    action_threshold: float | None = DEFAULT_ACTION_THRESHOLD
    outcome_threshold: float | None = DEFAULT_OUTCOME_THRESHOLD
    inductive_epsilon: float | None = None

    def __post_init__(self):
        check_number("policy_precision", self.policy_precision, minimum=0, meaning="gamma of q(pi)")
        if self.inductive_epsilon is not None:
            check_number(
                "inductive_epsilon",
                self.inductive_epsilon,
                minimum=0,
                maximum=1,
                exclusive_minimum=True,
                exclusive_maximum=True,
                meaning="inductive planning costs ln(1/epsilon) nats a step away from the "
                "intended states (pymdp's 1e-3); None: off",
            )
        check_number("action_precision", self.action_precision, minimum=0, meaning="alpha of p(u)")
        check_flag("sample_actions", self.sample_actions)
        if self.horizon is not None:
            check_integer(
                "horizon", self.horizon, minimum=1, meaning="policy depth; None: the model's"
            )
        if not isinstance(self.lesions, Lesions):
            raise ValueError(f"lesions: expected a Lesions, got {type(self.lesions).__name__}")
        check_choice("efe_method", self.efe_method, ("exact", "sampled"))
        check_integer("num_samples", self.num_samples, minimum=1)
        check_number(
            "preference_scale",
            self.preference_scale,
            minimum=0,
            exclusive_minimum=True,
            meaning="c scales ln p~ = log_softmax(c C)",
        )
        check_choice("planner", self.planner, PLANNERS)
        for name in ("action_threshold", "outcome_threshold"):
            if getattr(self, name) is not None:
                check_number(
                    name,
                    getattr(self, name),
                    minimum=0,
                    maximum=1,
                    exclusive_maximum=True,
                    meaning="sophisticated planning expands no branch of this probability or less; "
                    "None or 0: every branch",
                )
        if self.planner == "sophisticated" and self.efe_method != "exact":
            raise ValueError(
                "efe_method: sophisticated planning computes its recursion exactly; "
                f"efe_method={self.efe_method!r} is for open-loop policies"
            )
        if check_flag("infer_precision", self.infer_precision):
            raise ValueError(
                "infer_precision: this agent cannot infer gamma, so it keeps a fixed policy "
                "precision (policy_precision). SPM's update of gamma moves it only where the "
                "free energy F(pi) of the outcomes so far differs between policies; here every "
                "policy starts at the present step and shares the trial's past actions, so F(pi) "
                "is the same for all of them, q(pi) equals its prior and gamma would stay at "
                "policy_precision at every step (see AgentSettings and docs/architecture.md)"
            )


@dataclass(frozen=True)
class LearningSettings:
    """How an agent learns its counts pA, pB, pD between trials (``learn_between_trials``)."""

    learning_rate: float = 1.0
    forgetting: float = 0.0

    def __post_init__(self):
        check_number(
            "learning_rate", self.learning_rate, minimum=0, meaning="counts added per observation"
        )
        check_number(
            "forgetting",
            self.forgetting,
            minimum=0,
            maximum=1,
            exclusive_maximum=True,
            meaning="the share of the counts forgotten between trials",
        )


@dataclass(frozen=True)
class InferenceSettings:
    """How an agent infers its states each step: the scheme (``pp_aif.inference.schemes``) and,
    for message passing, its iterations and step size (None: the scheme's own)."""

    scheme: str = "exact"
    iterations: int = 16
    tau: float | None = None

    def __post_init__(self):
        check_choice("inference", self.scheme, INFERENCE_SCHEMES)
        check_integer("inference_iterations", self.iterations, minimum=1)
        if self.tau is not None:
            check_number("inference_tau", self.tau, minimum=0, exclusive_minimum=True)

    def scheme_settings(self):
        """The scheme's own settings: iterations and step size for message passing (without
        convergence warnings at every step), the defaults for an SVI guide, None for exact."""
        kind = SCHEMES[self.scheme].settings
        if kind is MessagePassingSettings:
            return MessagePassingSettings(num_iterations=self.iterations, tau=self.tau, warn=False)
        return None if kind is None else kind()


_PLANNING = tuple(f.name for f in fields(PlanningSettings))
_LEARNING = tuple(f.name for f in fields(LearningSettings))


@dataclass(frozen=True)
class AgentSettings:
    """How an agent infers, plans, acts and learns (SPM's defaults): one flat set of fields for
    the user (``dataclasses.replace(settings, action_precision=2.0)`` works), checked and split
    by concern into ``planning`` (``PlanningSettings``), ``learning`` (``LearningSettings``) and
    ``state_inference`` (``InferenceSettings``); each part of the agent takes its own group.

    policy_precision : gamma in q(pi) = softmax(ln E - gamma (G - novelty)).
    action_precision : alpha in p(u) ∝ exp(alpha ln marginal).
    sample_actions : draw u from p(u) (True) or take its most probable value.
    horizon : policy depth H; None uses the depth of ``model.policies``.
    lesions : terms of G left out of the policy score.
    efe_method : "exact" or "sampled"; num_samples : rollouts for "sampled".
    learning_rate, forgetting : for pA, pB and pD between trials (when the model has them).
    infer_precision : refused (ValueError): this agent cannot infer gamma, it holds it at
        policy_precision. SPM (``spm_MDP_VB_X``) updates the rate b = 1 / gamma by
        b <- b - (b - beta + (q(pi) - p(pi)) . Q) / 2, with q(pi) = softmax(ln E + gamma Q -
        F(pi)), p(pi) = softmax(ln E + gamma Q) and Q = -(G - novelty)
        (:func:`pp_aif.planning.infer_precision`): gamma moves only where the free energy F(pi)
        of the outcomes so far differs between policies. SPM's policies span the whole trial,
        so one whose past actions differ from those taken explains the outcomes worse. This
        agent plans at step t over policies that start at t: every policy shares the past
        actions u_<t, so F(pi) = -ln p(o_<=t | u_<t) (exact inference; any scheme here infers
        the states without the policy) is the same for all, q(pi) = p(pi), and b stays at beta:
        gamma would never move. Even SPM's whole-trial policies would not move it in the T-maze
        under exact inference: the location outcome rules out every policy whose past differs
        (F = inf), and those left share their past (tested); SPM's gamma moves there only by
        its departures from exact inference: the floored log ln(x + e^-16), which leaves the
        ruled-out policies a finite F, and the marginal free energy of future states.
    inference : how q(s_t) is inferred each step (see the module docstring): "exact" (joint
        filtering), "fpi" (pymdp's fixed-point iteration on the factorised prior), "vmp" or
        "mmp" (message passing over the trial so far, from D; the present marginal is used),
        "mean_field" or "structured" (an SVI guide over the trial so far, likewise; slow, and
        only for agents that do not learn).
    inference_iterations, inference_tau : iterations (default 16) and step size (default: the
        scheme's own, 1 for vmp, 1/4 for mmp) of the message-passing schemes.
    preference_scale : c, the agent plans with ln p~(o) = log_softmax(c C): its pragmatic value
        is c times that at c = 1, up to a constant shared by every policy of a step, so q(pi)
        uses c * pragmatic (the reported scores stay at c = 1).

    planner : "open_loop" (default: score fixed action sequences, the policies, as SPM's
        ``spm_MDP_VB_X`` and pymdp's default) or "sophisticated" (Friston et al. 2021: the
        recursive expected free energy over action -> outcome -> updated belief -> next action,
        ``pp_aif.planning.sophisticated_scores``, to depth min(H, T-1-t), over every joint
        action under a flat prior; q(u) = softmax(-gamma (G(u) - novelty))).
    action_threshold, outcome_threshold : sophisticated planning expands no action of predictive
        probability, and no outcome of probability, at or below these (SPM's and pymdp's 1/16);
        None or 0: every branch.
    inductive_epsilon : inductive planning (Friston et al. 2023; ``pp_aif.planning.inductive``)
        with either planner: None (default) off; else each predicted state from which the
        model's intended states (``GenerativeModel(H=...)``) are no nearer costs ln(1/epsilon)
        nats of G (pymdp's default epsilon 1e-3: 6.9 nats).

    The precisions, learning_rate, forgetting and preference_scale may be tensors (N, 1), one
    value per agent (as ``pp_aif.fitting.posterior_predictive`` uses them).
    """

    policy_precision: float = DEFAULT_POLICY_PRECISION
    action_precision: float = DEFAULT_ACTION_PRECISION
    sample_actions: bool = True
    horizon: int | None = None
    lesions: Lesions = field(default_factory=Lesions)
    efe_method: str = "exact"
    num_samples: int = 1000
    learning_rate: float = 1.0
    forgetting: float = 0.0
    infer_precision: bool = False
    inference: str = "exact"
    inference_iterations: int = 16
    inference_tau: float | None = None
    preference_scale: float = 1.0
    planner: str = "open_loop"
    action_threshold: float | None = DEFAULT_ACTION_THRESHOLD
    outcome_threshold: float | None = DEFAULT_OUTCOME_THRESHOLD
    inductive_epsilon: float | None = None

    def __post_init__(self):
        """Every setting checked once, here, by the group it belongs to (a ValueError naming
        it): ``planning``, ``learning`` and ``state_inference``, which the agent's parts take."""
        planning = PlanningSettings(**{name: getattr(self, name) for name in _PLANNING})
        learning = LearningSettings(**{name: getattr(self, name) for name in _LEARNING})
        state_inference = InferenceSettings(
            self.inference, self.inference_iterations, self.inference_tau
        )
        object.__setattr__(self, "_groups", (planning, learning, state_inference))

    @property
    def planning(self) -> PlanningSettings:
        """What the agent plans and acts with."""
        return self._groups[0]

    @property
    def learning(self) -> LearningSettings:
        """What the agent learns between trials with."""
        return self._groups[1]

    @property
    def state_inference(self) -> InferenceSettings:
        """How the agent infers its states."""
        return self._groups[2]


@dataclass(frozen=True)
class AgentState:
    """time : the step about to be observed; prior : (N, S_1..S_F) p(s_t | o_<t);
    pA : M tensors (N, O_m, S_1..S_F), each agent's likelihood counts (None: the model's A);
    pB : F tensors (N, S_f, S_f, U_f), each agent's transition counts (None: the model's B);
    pD : F tensors (N, S_f), each agent's initial-state counts (None: the model's D);
    observations : int (N, time, M) and actions : int (N, time, F), the trial so far (kept only
    for the schemes that infer over it, ``HISTORY_SCHEMES``; None otherwise);
    A : M tensors (N, O_m, S_1..S_F), each agent's own fixed likelihood where it does not learn
    pA (e.g. the model's A at its likelihood precision zeta, A^zeta renormalised); None: the
    model's A."""

    time: int
    prior: Tensor
    pA: list[Tensor] | None = None
    pB: list[Tensor] | None = None
    pD: list[Tensor] | None = None
    observations: Tensor | None = None
    actions: Tensor | None = None
    A: list[Tensor] | None = None

    def transitions(self) -> list[Tensor] | None:
        """Each agent's B, the normalised pB: F tensors (N, S_f, S_f, U_f), or None."""
        return None if self.pB is None else [p / p.sum(1, keepdim=True) for p in self.pB]

    def likelihood(self) -> list[Tensor] | None:
        """Each agent's A: the normalised pA, else its own fixed A: M tensors (N, O_m,
        S_1..S_F); None where it uses the model's."""
        if self.pA is None:
            return self.A
        return [p / p.sum(1, keepdim=True) for p in self.pA]


@dataclass(frozen=True)
class StepResult:
    """beliefs : F tensors (N, S_f) q(s_t | o_<=t); log_evidence : (N,) ln p(o_t | o_<t);
    scores : PolicyScores (N, P) or None at the last step; policy_posterior : (N, P) or None;
    action_probabilities : F tensors (N, U_f) or None; action : int (N, F) or None;
    log_action_probabilities : F entries (N, U_f) (None for a factor of one control), their
    logarithms computed in log space (-inf where an action is impossible, finite gradients
    everywhere), where the step was given the action (a replay: ``pp_aif.fitting.replay``);
    else None."""

    beliefs: list[Tensor]
    log_evidence: Tensor
    scores: PolicyScores | None
    policy_posterior: Tensor | None
    action_probabilities: list[Tensor] | None
    action: Tensor | None
    log_action_probabilities: list[Tensor | None] | None = None


def _initial_beliefs(model: GenerativeModel, pD: list[Tensor] | None, N: int) -> list[Tensor]:
    if pD is None:
        return [d.expand(N, -1) for d in model.D]
    return [p / p.sum(-1, keepdim=True) for p in pD]


def initial_state(
    model: GenerativeModel,
    num_agents: int,
    *,
    pA: list[Tensor] | None = None,
    pB: list[Tensor] | None = None,
    pD: list[Tensor] | None = None,
    A: list[Tensor] | None = None,
) -> AgentState:
    """The state before a trial's first observation. Counts are per agent (N, ...); without
    them, agents start from the model's counts (when it has them). As in SPM, an agent with
    counts uses their normalised values as its A, B and D (the model's ``A``, ``B`` and ``D``
    are then not used by the agent). A : M tensors (N, O_m, S_1..S_F), each agent's own fixed
    likelihood, for agents that do not learn pA (a ValueError where they do)."""
    if A is not None:
        if pA is not None or model.pA is not None:
            raise ValueError(
                "A: an agent's own fixed likelihood is for agents that do not learn pA; this "
                "agent's A is its normalised counts pA"
            )
        expected = [(num_agents, *a.shape) for a in model.A]
        if [tuple(a.shape) for a in A] != expected:
            raise ValueError(
                f"A: expected shapes {expected} (one A per agent), got "
                f"{[tuple(a.shape) for a in A]}"
            )
    if pA is None and model.pA is not None:
        pA = [p.expand(num_agents, *p.shape).clone() for p in model.pA]
    if pB is None and model.pB is not None:
        pB = [p.expand(num_agents, *p.shape).clone() for p in model.pB]
    if pD is None and model.pD is not None:
        pD = [p.expand(num_agents, -1).clone() for p in model.pD]
    prior = outer(*_initial_beliefs(model, pD, num_agents), batch_dims=1)
    return AgentState(time=0, prior=prior, pA=pA, pB=pB, pD=pD, A=A)


def _trial_so_far(model, state, A, B, observation, observations, actions) -> SchemeInputs:
    """The scheme's inputs: the trial so far (``observations``, int (N, t+1, M), for the
    schemes that infer over it), else the present ``observation`` (N, M) alone; each agent's
    own A, B and D where it has learned them."""
    if observations is None:
        observations, actions = observation[:, None, :], None
    N = observations.shape[0]
    if actions is None:
        actions = torch.zeros(N, 0, model.num_factors, dtype=torch.int64, device=model.device)
    D = None if state.pD is None else _initial_beliefs(model, state.pD, N)
    return scheme_inputs(model, observations, actions, A=A, B=B, D=D)


def _transitions_of(model: GenerativeModel, B: list[Tensor] | None, action: Tensor):
    """B_f(u) for action int (N, F), each agent's own where it has learned B: F x (N, S', S)."""
    if B is None:
        return [b[action[:, f]] for f, b in enumerate(model.transition_by_action)]
    rows = torch.arange(action.shape[0], device=action.device)
    return [b[rows, :, :, action[:, f]] for f, b in enumerate(B)]


class _Decision(NamedTuple):
    """What ``_decide`` computes from a step's observation (policies onward None at the last
    step): the deterministic part of ``step``, compiled as a whole by ``compiled=True``."""

    observations: Tensor | None
    posterior: Tensor
    beliefs: list[Tensor]
    log_evidence: Tensor
    scores: PolicyScores | None = None
    value: Tensor | None = None
    policies: Tensor | None = None
    log_prior: Tensor | None = None
    q_pi: Tensor | None = None
    probabilities: list[Tensor] | None = None


def _decide(model, settings, state, observation, num_steps: int) -> _Decision:
    """Observe, infer and plan: the beliefs, the policies' scores, q(pi) and the action
    probabilities of ``step``. The checks on data (an impossible observation, a q(pi) that is
    not finite) run here eagerly, and after the call where it is compiled."""
    A, B = state.likelihood(), state.transitions()
    inference, plan = settings.state_inference, settings.planning
    scheme = SCHEMES[inference.scheme]
    observations = _append(state.observations, observation) if scheme.history else None
    inputs = _trial_so_far(model, state, A, B, observation, observations, state.actions)
    posterior, log_evidence = bayes_update(state.prior, inputs.log_likelihood[:, -1])
    eager = not torch.compiler.is_compiling()
    if eager:
        _check_evidence(log_evidence, observation, state.time)
    posterior, beliefs = scheme.online(inputs, inference.scheme_settings(), state.prior, posterior)
    if state.time >= num_steps - 1:
        return _Decision(observations, posterior, beliefs, log_evidence)
    policies, log_prior = policies_at(model, plan, state.time, num_steps)
    if plan.planner == "sophisticated":
        depth = planning_depth(model, plan, state.time, num_steps)
        scores, value = _sophisticated(model, plan, state, posterior, A, B, policies, depth)
    else:
        scores = policy_scores(  # beliefs, policies and arrays made here: nothing to check
            model,
            beliefs,
            policies,
            time=state.time,
            method=plan.efe_method,
            num_samples=plan.num_samples,
            A=A,
            pA=state.pA,
            B=B,
            pB=state.pB,
        )
        planned = replace(scores, pragmatic=plan.preference_scale * scores.pragmatic)
        value = policy_score(planned, plan.lesions)
        if plan.inductive_epsilon is not None:  # steered towards the intended states
            value = value + policy_inductive_cost(
                beliefs,
                policies,
                B if B is not None else model.B,
                model_reachability(model),
                plan.inductive_epsilon,
            )
    # q(pi) = softmax(ln E - gamma * score), as planning.policy_posterior; gamma fixed:
    # AgentSettings refuses infer_precision=True
    q_pi = torch.softmax(log_prior - plan.policy_precision * value, -1)
    if eager and not torch.isfinite(q_pi).all():
        _raise_not_finite(q_pi, scores, state.time)
    probabilities = action_probabilities(
        action_marginals(q_pi, policies, model.num_controls), plan.action_precision
    )
    return _Decision(
        observations, posterior, beliefs, log_evidence, scores, value, policies, log_prior, q_pi,
        probabilities,
    )  # fmt: skip


def _check_evidence(log_evidence: Tensor, observation: Tensor, time: int) -> None:
    if not torch.isfinite(log_evidence).all():
        agent = int((~torch.isfinite(log_evidence)).nonzero()[0])
        raise DataError(
            f"observation: agent {agent}, time step {time}: outcomes "
            f"{observation[agent].tolist()} have probability 0 under the agent's model"
        )


#: what ``compiled=True`` may compile: planning and inference without data-dependent control
#: flow (the sophisticated search, the iterative schemes and sampled EFE have it)
COMPILABLE = {"planner": ("open_loop",), "inference": ("exact",), "efe_method": ("exact",)}

_COMPILED: list = []  # torch.compile(_decide), made on first use


def check_compilable(settings: AgentSettings) -> None:
    """ValueError naming the first setting that ``step(compiled=True)`` cannot compile."""
    for name, allowed in COMPILABLE.items():
        value = getattr(settings, name)
        if value not in allowed:
            raise ValueError(
                f"compile: the compiled agent step takes {name} in {allowed}, not {value!r} "
                "(its control flow depends on the data); run it eagerly (compile=False)"
            )


def _compiled_decide():
    if not _COMPILED:
        import torch._dynamo

        # one graph per (model, number of agents, time step): more than dynamo's default 8
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        _COMPILED.append(torch.compile(_decide, dynamic=False, fullgraph=True))
    return _COMPILED[0]


def step(
    model: GenerativeModel,
    settings: AgentSettings,
    state: AgentState,
    observation: Tensor,
    *,
    num_steps: int,
    generator: torch.Generator | None = None,
    action: Tensor | None = None,
    compiled: bool = False,
) -> tuple[AgentState, StepResult]:
    """Observe, infer, plan and act, for N agents at once. Pure: returns a new state.

    observation : int (N, M), the outcomes at step ``state.time``; num_steps : T of the trial.
    At the last step (time T-1) no action is chosen. action : int (N, F), optional: replay
    these actions (e.g. a person's) instead of choosing; the probabilities are still reported.
    compiled : run observing, inference and planning as one ``torch.compile``d graph (the
    actions are drawn eagerly from the same generator, so a seed gives the same trajectories;
    tested). The first call for each model, number of agents and time step compiles (seconds
    to a minute); settings it cannot compile are a ValueError (``check_compilable``).
    """
    if compiled:
        check_compilable(settings)
        if state.time < num_steps - 1:  # the policies' prefix tree is built eagerly (Python
            # over their rows) and then found by identity inside the graph
            policy_prefix_tree(policies_at(model, settings.planning, state.time, num_steps)[0])
        with warnings.catch_warnings():  # torch's own, while inductor compiles (torch 2.13)
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.script_method` is deprecated",
                category=DeprecationWarning,
            )  # fmt: skip
            decision = _compiled_decide()(model, settings, state, observation, num_steps)
        _check_evidence(decision.log_evidence, observation, state.time)
        if decision.q_pi is not None and not torch.isfinite(decision.q_pi).all():
            _raise_not_finite(decision.q_pi, decision.scores, state.time)
    else:
        decision = _decide(model, settings, state, observation, num_steps)
    observations, posterior, beliefs, log_evidence = decision[:4]
    scheme = SCHEMES[settings.state_inference.scheme]
    if decision.q_pi is None:  # the last step: no action
        result = StepResult(beliefs, log_evidence, None, None, None, None)
        return (
            replace(state, time=state.time + 1, prior=posterior, observations=observations),
            result,
        )
    plan = settings.planning
    policies, probabilities = decision.policies, decision.probabilities
    log_probabilities = None
    if action is None:
        action = select_actions(probabilities, sample=plan.sample_actions, generator=generator)
    else:  # a replay: the likelihood of the action given, in log space
        log_q = log_policy_posterior(decision.value, decision.log_prior, plan.policy_precision)
        log_probabilities = log_action_probabilities(
            log_q, policies[:, 0], model.num_controls, plan.action_precision
        )
    next_prior = propagate(posterior, _transitions_of(model, state.transitions(), action))
    result = StepResult(
        beliefs, log_evidence, decision.scores, decision.q_pi, probabilities, action,
        log_probabilities,
    )  # fmt: skip
    actions = _append(state.actions, action) if scheme.history else None
    return (
        replace(
            state, time=state.time + 1, prior=next_prior, observations=observations, actions=actions
        ),
        result,
    )


def _sophisticated(model, plan, state, posterior, A, B, policies, depth):
    """Sophisticated planning of the next action from the joint belief ``posterior``: the
    PolicyScores of the one-step policies ``policies`` (U, 1, F) (G the recursive expected
    free energy, its terms those of the first step) and the score G(u) - novelty, the novelty
    of the first step as open-loop planning counts it (``step``: q(u) = softmax(ln E - gamma
    score))."""
    search = sophisticated_scores(
        model,
        posterior,
        depth=depth,
        time=state.time,
        actions=policies[:, 0],
        precision=plan.policy_precision,
        lesions=plan.lesions,
        preference_scale=plan.preference_scale,
        action_threshold=plan.action_threshold,
        outcome_threshold=plan.outcome_threshold,
        A=A,
        B=B,
        pA=state.pA,
        pB=state.pB,
        inductive=None
        if plan.inductive_epsilon is None
        else (model_reachability(model), plan.inductive_epsilon),
    )
    first = search.first_step
    scores = PolicyScores(
        search.G,
        first.risk,
        first.ambiguity,
        first.epistemic,
        first.pragmatic,
        first.novelty,
        policies,
        "sophisticated",
    )
    value = search.G - first.novelty if plan.lesions.novelty else search.G
    return scores, value


def _raise_not_finite(q_pi: Tensor, scores: PolicyScores, time: int) -> None:
    """q(pi) is NaN: name the agents, the step and the cause instead of acting on it."""
    bad = (~torch.isfinite(q_pi)).any(-1)
    agent = int(bad.nonzero()[0])
    G = scores.G[agent]
    raise ValueError(
        f"q(pi) is not finite at time step {time} for {int(bad.sum())} agent(s) (first: agent "
        f"{agent}), whose policies' G range over [{float(G.min()):.4g}, {float(G.max()):.4g}]: "
        "preferences C so extreme that G overflows (|ln p~| near 1e308) leave no policy to "
        "prefer. Give C moderate finite values (SPM's tasks use up to about 8 nats); an outcome "
        "that must never happen is better made impossible in the world than given C = -inf"
    )


def _append(history: Tensor | None, value: Tensor) -> Tensor:
    """history (N, t, X) with value (N, X) appended at step t."""
    return value[:, None] if history is None else torch.cat([history, value[:, None]], 1)


def planning_depth(model: GenerativeModel, settings, time: int, num_steps: int) -> int:
    """How far the agent looks ahead at step ``time``: min(H, T-1-time), H the horizon, or
    the depth of the model's policies; no plan looks past the trial."""
    return min(settings.horizon or model.policies.shape[1], num_steps - 1 - time)


def policies_at(
    model: GenerativeModel, settings: AgentSettings | PlanningSettings, time: int, num_steps: int
):
    """The policies planned over at step ``time`` of a trial of ``num_steps``, and ln E.

    Depth min(H, T-1-time), so that no policy looks past the trial; below the model's depth,
    every policy of that depth under a flat prior. Returns (policies (P, H', F), log prior (P,)).
    A task's own set for the step (``model.step_policies``: one (policies, E) or None per step,
    from ``pp_aif.Task.step_policies``) comes first: always without ``settings.horizon``, and
    where its depth is min(H, T-1-time) with it. A sophisticated planner
    (``settings.planner``) scores each joint action, the one-step policies under a flat prior,
    by its recursion to that depth.
    """
    depth = planning_depth(model, settings, time, num_steps)
    if settings.planner == "sophisticated":
        return model.policies_of_depth(1)
    given = model.step_policies
    if given is not None and time < len(given) and given[time] is not None:
        policies, E = given[time]
        own = policies.shape[1]
        if own == depth or (settings.horizon is None and own <= num_steps - 1 - time):
            return policies, torch.log(E)
    if depth == model.policies.shape[1]:
        return model.policies, torch.log(model.E)
    return model.policies_of_depth(depth)  # every policy of that depth, under a flat prior


def learn_between_trials(
    model: GenerativeModel,
    settings: AgentSettings | LearningSettings,
    state: AgentState,
    observations: Tensor,
    actions: Tensor,
) -> tuple[list[Tensor] | None, list[Tensor] | None, list[Tensor] | None]:
    """Each agent's (pA, pD, pB) after a trial, from its beliefs smoothed under its own A, B, D.

    pA + eta sum_t o_t (x) q(s_t | o_1:T), pB + eta sum_t q(s_t+1) (x) q(s_t) at u_t, and
    pD + eta q(s_0 | o_1:T), each after forgetting, only where the counts are positive
    (:mod:`pp_aif.ops.dirichlet`). observations int (N, T, M); actions int (N, T-1, F).
    settings : the agent's, or its ``LearningSettings`` alone.
    """
    if state.pA is None and state.pB is None and state.pD is None:
        return None, None, None
    learning = settings.learning if isinstance(settings, AgentSettings) else settings
    N = observations.shape[0]
    D = None if state.pD is None else _initial_beliefs(model, state.pD, N)
    inputs = scheme_inputs(
        model, observations, actions, A=state.likelihood(), B=state.transitions(), D=D
    )
    marginals = SCHEMES["exact"].sequence(inputs).marginals

    def per_agent(value, like):  # a (N, 1) setting against counts (N, ...): (N, 1, ..., 1)
        if isinstance(value, Tensor) and value.dim() > 0:
            return value.reshape(-1, *[1] * (like.dim() - 1))
        return value

    def update(concentrations, counts):
        return [
            update_concentrations(
                p,
                d,
                learning_rate=per_agent(learning.learning_rate, p),
                forgetting=per_agent(learning.forgetting, p),
            )
            for p, d in zip(concentrations, counts, strict=True)
        ]

    pA = (
        None
        if state.pA is None
        else update(state.pA, observation_counts(observations, marginals, model.num_outcomes))
    )
    pB = (
        None
        if state.pB is None
        else update(state.pB, transition_counts(actions, marginals, model.num_controls))
    )
    pD = None if state.pD is None else update(state.pD, initial_counts(marginals))
    return pA, pD, pB

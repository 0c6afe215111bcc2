"""Sophisticated inference: the expected free energy of each next action, by recursion over
future actions and outcomes, for N agents at once.

Dimension symbols: N agents (beliefs), F factors (S_f states, U_f controls), M modalities (O_m
outcomes), S = prod_f S_f joint states, O = prod_m O_m joint outcomes, U joint actions (one
control per factor: the one-step policies, int (U, F)), D depth (action levels), K belief nodes
at a level of the search tree.

For a belief q over the joint state at absolute time t + l (level l = 0 .. D-1 of the search,
t the present) and a joint action u (Friston et al. 2021, "Sophisticated inference", Neural
Comput. 33(3), 713-763; SPM's ``spm_forwards`` in ``spm_MDP_VB_XX.m``; pymdp 1.0's
``pymdp.planning.si.si_policy_search``):

    q_u(s')    = sum_s prod_f B_f[s'_f, s_f, u_f] q(s)              predicted joint state
    q(o | u)   = sum_s' prod_m A_m[o_m, s'] q_u(s')                  the joint outcome o
    G_1(u | q) = -(epistemic + c * pragmatic)                        lesioned terms left out
               = risk + ambiguity                                    (no lesions, c = 1)
    q_o(s')    = prod_m A_m[o_m, s'] q_u(s') / q(o | u)              Bayes' posterior
    G(u | q)   = G_1(u | q) + sum_o q(o | u) sum_u' q(u' | o) G(u' | q_o)        (l < D-1)
    G(u | q)   = G_1(u | q)                                                       (l = D-1)
    q(u' | o)  = softmax(-gamma G(. | q_o))[u']

with epistemic = I(s'; o | u) = H[q(o | u)] - E_q_u H[p(o | s')] and pragmatic = E_q(o|u)
ln p~(o), ln p~(o) = sum_m log_softmax(C_m)[o_m] read at the absolute time t + l + 1 of the
predicted outcome (a time-varying C (O_m, T) gives each level its own column). At depth 1, G is
the one-step expected free energy of :func:`pp_aif.ops.efe.expected_free_energy_terms` (its
``policy_score`` without novelty).

Choices
-------
Joint beliefs, exact. The posterior after a joint outcome is Bayes' rule over the joint state:
A couples the factors, so q_o is not a product of factor marginals even when q_u is, and a
factorised (mean-field) q_o would be an approximation. Every node holds a joint belief (S,);
a root given as factor marginals is their product. The recursion runs over outcomes, as in the
paper and pymdp; SPM's ``spm_MDP_VB_XX`` runs it over the plausible hidden states (q_u(s') >
1/16) instead, conditioning on each one's likelihood column A(:, s') as a soft outcome, which is
not Bayes' posterior for any outcome.

Novelty (expected information gain about A and B) enters at the first step only, returned in
``first_step.novelty`` for the caller's policy score (q(u) = softmax(ln E - gamma (G -
novelty))), as today: deeper levels would need the Dirichlet counts updated along each branch.

Pruning, as SPM's ``spm_forwards``: at a node of level l < D-1, p(u | q) = softmax(-gamma
G_1(. | q)) (the one-step "predictive prior" over actions) decides which actions are expanded:

* an action with p(u | q) <= ``action_threshold`` is not expanded, and its G at that node is
  replaced by ``min_u' G_1(u' | q) + pruning_penalty`` (the current SPM's ``G(~k) = max(G) -
  512`` in ``spm_MDP_VB_XXX.m``, its G being the negative EFE); in the node's value
  sum_u' q(u' | o) G(u') it then weighs about exp(-gamma * 512): nothing. (``spm_MDP_VB_XX``
  of 2020 set an absolute EFE of 64 instead, which a pruned action beats once the accumulated
  G of the others exceeds 64; pymdp sets -512 on its neg_efe.)
* an outcome with q(o | u) <= ``outcome_threshold`` is not expanded and contributes 0 to the
  sum over o: its mass is dropped, not given to the other outcomes (as SPM drops its
  implausible states, and pymdp its implausible observations). If all of an action's outcomes
  are pruned, G(u | q) = G_1(u | q).

The last level (l = D-1) is never pruned (it expands nothing), so depth 1 is exact whatever the
thresholds. ``None`` or 0 turns a threshold off; outcomes of probability 0 are never expanded
(they contribute 0 either way).

Cost
----
Each distinct belief node is evaluated once: at every level the nodes' beliefs are deduplicated
exactly (equal bits; with per-agent A, B, precision or preference scale, equal bits and the same
agent), across branches and across agents. A node costs O(U S (O + sum_f S_f)) time (prediction
through every joint control, then the joint outcomes) and its children O(U O S) memory. Without
pruning or coinciding beliefs, level l has K_l = N (U O)^l nodes, so

    time   O(N (U O)^(D-1) U S (O + sum_f S_f)),
    memory O(N (U O)^(D-1) U (S + O))    (the last level's predictions dominate).


With thresholds theta_u, theta_o, a node expands fewer than 1/theta_u actions and 1/theta_o
outcomes, so K_l <= N (1/(theta_u theta_o))^l whatever U and O (256^l at the defaults), and
the O(U O S) work per node remains; deduplication costs a sort of each level's rows,
O(K log K S). Measured (one CPU thread, float64, N = 1, random models without zeros):

    S=6, U=4, O=6    depth 1, 2, 3, 4: 0.3, 0.7, 2.5, 54 ms (nodes 1, 24, 576, 13824), 24 MB at
                     depth 4; default pruning: depth 4 30 ms, 5 0.8 s (245k nodes, 260 MB),
                     6 30 s (5.4M nodes)
    S=20, U=6, O=12  depth 1, 2, 3: 0.3, 1.0, 17.5 ms (nodes 1, 72, 5184); pruned 12 ms
    N agents         S=6, U=4, O=6, depth 3: N = 1, 10, 100 in 2.3, 14, 143 ms (linear in N)
    T-maze           1000 agents with the same belief, depth 3: 2.6 ms, nodes 1, 7, 19
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pp_aif.ops.contractions import outer
from pp_aif.ops.efe import (
    EFETerms,
    _likelihood_quantities,
    batch_likelihoods,
    batch_transitions,
    transition_novelty_weights,
    wnorm,
    xlogy_weighted,
)
from pp_aif.ops.numerics import entropy
from pp_aif.planning.efe import log_preferences as model_log_preferences
from pp_aif.planning.inductive import inductive_cost
from pp_aif.planning.policies import DEFAULT_POLICY_PRECISION, Lesions
from pp_aif.spec import GenerativeModel

__all__ = [
    "DEFAULT_ACTION_THRESHOLD",
    "DEFAULT_OUTCOME_THRESHOLD",
    "DEFAULT_PRUNING_PENALTY",
    "PlanLevel",
    "SophisticatedScores",
    "sophisticated_expected_free_energy",
    "sophisticated_scores",
]

#: SPM's and pymdp's thresholds: actions and outcomes of probability <= 1/16 are not expanded.
DEFAULT_ACTION_THRESHOLD = 1 / 16
DEFAULT_OUTCOME_THRESHOLD = 1 / 16
#: G of a pruned action = the node's smallest one-step G + 512 nats (SPM: max(G) - 512).
DEFAULT_PRUNING_PENALTY = 512.0
#: no term lesioned
ALL_TERMS = Lesions()


@dataclass(frozen=True)
class SophisticatedScores:
    """The recursive expected free energy of each first action, per agent.

    Attributes
    ----------
    G : (N, U)
        G(u | q) of each joint action at the present belief, to the given depth, lesioned terms
        and novelty left out (minimised). At depth 1, ``-(epistemic + c pragmatic)`` with the
        lesioned terms dropped.
    first_step : EFETerms of (N, U)
        The one-step terms at the present belief (G = risk + ambiguity, unlesioned; novelty from
        ``pA`` / ``pB``, else 0): the policy posterior subtracts ``novelty`` from ``G``.
    actions : int (U, F)
        The joint actions, in the order of the columns of G.
    depth : int
        D, the number of action levels searched.
    nodes : tuple of D ints
        The distinct belief nodes evaluated at each level (summed over agents).
    tree : tuple of D PlanLevel, or None
        The search itself (``keep_tree=True``): every level's nodes and branches.
    root : int (N,)
        Each agent's node at level 0 of ``tree``.
    """

    G: Tensor
    first_step: EFETerms
    actions: Tensor
    depth: int
    nodes: tuple[int, ...]
    tree: tuple[PlanLevel, ...] | None = None
    root: Tensor | None = None


@dataclass(frozen=True)
class PlanLevel:
    """One level of a sophisticated search: its K distinct belief nodes and their branches.

    Attributes
    ----------
    beliefs : (K, S)
        Each node's joint belief (flattened joint states, row-major over the factors).
    agent : int (K,)
        The agent each node belongs to (a representative one where agents share the node).
    G_1 : (K, U)
        The one-step score of each action at the node (lesioned terms left out).
    G : (K, U)
        The recursion's G(u | q) at the node; a pruned action's is the pruning penalty's.
    q_u : (K, U)
        q(u | q) = softmax(-gamma G): the node's action probabilities.
    expanded : bool (K, U), or None
        The actions whose outcomes were expanded (None at the last level: nothing is).
    branches : (node, action, outcome, probability, child), each (E,), or None
        The expanded (action, outcome) branches: the node and action they leave, the joint
        outcome (row-major over the modalities), q(o | u), and the child's node at the next
        level.
    """

    beliefs: Tensor
    agent: Tensor
    G_1: Tensor
    G: Tensor
    q_u: Tensor
    expanded: Tensor | None
    branches: tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None


def _per_agent(value, N: int, like: Tensor) -> tuple[Tensor, bool]:
    """A float or tensor of one value per agent as (N,), and whether the agents' values differ."""
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1)
    if tensor.numel() not in (1, N):
        raise ValueError(f"expected one value or one per agent ({N}), got {tensor.numel()}")
    tensor = tensor.expand(N)
    return tensor, bool((tensor != tensor[0]).any())


def _distinct(beliefs: Tensor, agent: Tensor, by_agent: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct rows of beliefs (E, S) (with their agent where ``by_agent``): (beliefs (K,
    S), a representative agent (K,), each row's index among them (E,)). Exact: rows are equal
    only if every entry is."""
    if beliefs.shape[0] < 2:
        return beliefs, agent, torch.zeros_like(agent)
    keys = torch.cat([agent[:, None].to(beliefs.dtype), beliefs], 1) if by_agent else beliefs
    distinct, inverse = torch.unique(keys.detach(), dim=0, return_inverse=True)
    first = torch.empty(distinct.shape[0], dtype=torch.int64, device=beliefs.device)
    first.scatter_(0, inverse, torch.arange(beliefs.shape[0], device=beliefs.device))
    return beliefs[first], agent[first], inverse


def _predict(joint: Tensor, transitions: list[Tensor], agent: Tensor, actions: Tensor) -> Tensor:
    """q_u = B_u q for every joint action: (K, U, S) from joint beliefs (K, S_1..S_F),
    transitions F x (1 or N, U_f, S_next, S_prev) and each node's agent (K,). One contraction
    per factor through all of its controls, so O(K prod_f U_f S sum_f S_f)."""
    F = len(transitions)
    K = joint.shape[0]
    node, controls = 0, list(range(1, F + 1))
    before, after = list(range(F + 1, 2 * F + 1)), list(range(2 * F + 1, 3 * F + 1))
    x, x_axes = joint, [node, *before]
    for f, b in enumerate(transitions):
        b_axes = [controls[f], after[f], before[f]]
        if b.shape[0] == 1:
            b = b[0]
        else:
            b, b_axes = b[agent], [node, *b_axes]
        out = [node, *controls[: f + 1], *after[: f + 1], *before[f + 1 :]]
        x, x_axes = torch.einsum(x, x_axes, b, b_axes, out), out
    num_controls = [b.shape[-3] for b in transitions]
    flat_action = sum(
        actions[:, f] * math.prod(num_controls[f + 1 :]) for f in range(F)
    )  # row-major, the last factor fastest
    S = math.prod(joint.shape[1:])
    return x.reshape(K, math.prod(num_controls), S)[:, flat_action]


def _factor_marginals(joint: Tensor, batch: int) -> list[Tensor]:
    """Each factor's marginal of joint beliefs (*batch, S_1..S_F): F tensors (*batch, S_f)."""
    F = joint.dim() - batch
    return [
        joint.sum([batch + d for d in range(F) if d != f]) if F > 1 else joint for f in range(F)
    ]


def _gather(array: Tensor, agent: Tensor) -> Tensor:
    """A per-agent array (N, ...) at each node's agent, or a shared one (1, ...) as is."""
    return array if array.shape[0] == 1 else array[agent]


def _expected_value(G: Tensor, precision: Tensor) -> Tensor:
    """sum_u softmax(-gamma G)[u] G[u] over the last axis: (K,) from G (K, U), gamma (K,).
    An action of G = +inf gets weight 0; a node whose every action has G = +inf is worth +inf."""
    finite = torch.isfinite(G)
    value = (_action_probabilities(G, precision) * torch.where(finite, G, 0.0)).sum(-1)
    return torch.where(finite.any(-1), value, torch.inf)


def _action_probabilities(G: Tensor, precision: Tensor) -> Tensor:
    """softmax(-gamma G) over the last axis, (K, U); actions of G = +inf get 0 (a node whose
    every action is impossible: uniform)."""
    finite = torch.isfinite(G)
    logits = torch.where(finite, -precision[:, None] * G, -torch.inf)
    return torch.softmax(torch.where(finite.any(-1, keepdim=True), logits, 0.0), -1)


def sophisticated_expected_free_energy(
    joint_beliefs: Tensor,
    A: Sequence[Tensor],
    transition_by_action: Sequence[Tensor],
    log_preferences: Sequence[Tensor],
    actions: Tensor,
    *,
    depth: int,
    precision: float | Tensor = DEFAULT_POLICY_PRECISION,
    lesions: Lesions = ALL_TERMS,
    preference_scale: float | Tensor = 1.0,
    action_threshold: float | None = DEFAULT_ACTION_THRESHOLD,
    outcome_threshold: float | None = DEFAULT_OUTCOME_THRESHOLD,
    pruning_penalty: float = DEFAULT_PRUNING_PENALTY,
    pA: Sequence[Tensor] | None = None,
    pB: Sequence[Tensor] | None = None,
    deduplicate: bool = True,
    keep_tree: bool = False,
    inductive: tuple[Sequence[Tensor | None], float] | None = None,
) -> SophisticatedScores:
    """G(u | q) of every joint action by sophisticated inference, for N agents at once.

    The search runs level by level: at each level every node (a distinct joint belief) is
    scored for every action at once, the plausible (action, outcome) branches become the next
    level's nodes (Bayes' posteriors, deduplicated), and a backward pass folds the children's
    values sum_u' q(u' | o) G(u' | q_o) into their parents. See the module docstring for the
    definitions, the pruning rule and the cost.

    Parameters
    ----------
    joint_beliefs : (N, S_1..S_F)
        q(s) at the present step, over the joint state.
    A : M tensors (O_m, S_1..S_F), or (N, O_m, S_1..S_F) for one likelihood per agent
    transition_by_action : F tensors (U_f, S_next, S_prev), or (N, U_f, S_next, S_prev)
    log_preferences : M tensors (D', O_m), D' >= depth
        ln p~_m(o) at the absolute times t+1 .. t+D' (log-softmaxed C, indexed by time).
    actions : int (U, F)
        The joint actions (one control per factor).
    depth : int
        D >= 1, the number of action levels.
    precision : gamma, a float or one per agent (N,) / (N, 1)
    lesions : which of epistemic and pragmatic enter G (``novelty`` is the caller's: see
        ``first_step``).
    preference_scale : c, the pragmatic term's weight, a float or one per agent
    action_threshold, outcome_threshold : float or None
        Branches of probability <= threshold are not expanded (module docstring); None or 0:
        off.
    pruning_penalty : float
        A pruned action's G is the node's smallest one-step G plus this.
    pA : M tensors like A, optional; pB : F tensors (S_f, S_f, U_f) or (N, S_f, S_f, U_f),
        optional. Dirichlet counts for the first step's novelty.
    deduplicate : bool
        Evaluate coinciding beliefs once (the answer is the same either way).
    keep_tree : bool
        Return the search's levels in ``tree`` (for ``pp_aif.plots.plot_plan_tree``).
    inductive : (reachable, epsilon), optional
        Inductive planning: every node's one-step score gains ``planning.inductive``'s cost of
        each action's predicted state, anchored to the node's own belief (its most probable
        state per factor).

    Returns
    -------
    SophisticatedScores
    """
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth: expected an integer >= 1, got {depth!r}")
    F = joint_beliefs.dim() - 1
    N = joint_beliefs.shape[0]
    state_shape = tuple(joint_beliefs.shape[1:])
    device = joint_beliefs.device
    likelihood, entropy_given_state = _likelihood_quantities(A, F)  # (1|N, O, S), (1|N, S)
    transitions = batch_transitions(transition_by_action)
    num_outcomes = [a.shape[-F - 1] for a in A]
    if any(p.shape[0] < depth for p in log_preferences):
        raise ValueError(f"log_preferences: need {depth} steps, got {log_preferences[0].shape[0]}")
    M = len(A)
    joint_preferences = [  # sum_m ln p~_m(o_m) at each level, over the joint outcome (O,)
        sum(
            log_preferences[m][level].reshape(*[1] * m, num_outcomes[m], *[1] * (M - m - 1))
            for m in range(M)
        ).flatten()
        for level in range(depth)
    ]
    precision, precision_varies = _per_agent(precision, N, joint_beliefs)
    scale, scale_varies = _per_agent(preference_scale, N, joint_beliefs)
    by_agent = (
        likelihood.shape[0] > 1
        or any(b.shape[0] > 1 for b in transitions)
        or precision_varies
        or scale_varies
    )
    action_threshold = action_threshold or 0.0
    outcome_threshold = outcome_threshold or 0.0

    def dedupe(beliefs: Tensor, agent: Tensor):
        if not deduplicate:
            return beliefs, agent, torch.arange(beliefs.shape[0], device=device)
        return _distinct(beliefs, agent, by_agent)

    beliefs, agent, root_index = dedupe(
        joint_beliefs.reshape(N, -1), torch.arange(N, device=device)
    )
    levels, nodes, root_terms = [], [], None
    for level in range(depth):
        K = beliefs.shape[0]
        nodes.append(K)
        predicted = _predict(beliefs.reshape(K, *state_shape), transitions, agent, actions)
        node_likelihood = _gather(likelihood, agent)  # (K or 1, O, S)
        ambiguity = (predicted * _gather(entropy_given_state, agent)[:, None]).sum(-1)
        outcomes = torch.einsum("kus,kos->kuo", predicted, node_likelihood.expand(K, -1, -1))
        outcome_entropy = entropy(outcomes)
        log_p = joint_preferences[level]
        pragmatic = (
            outcomes @ log_p
            if bool(torch.isfinite(log_p).all())
            else xlogy_weighted(outcomes, log_p)
        )
        epistemic = outcome_entropy - ambiguity
        score = torch.zeros_like(ambiguity)
        if lesions.epistemic:
            score = score - epistemic
        if lesions.pragmatic:
            score = score - scale[agent][:, None] * pragmatic
        if inductive is not None:
            joint = beliefs.reshape(K, *state_shape)
            ahead = predicted.reshape(K, -1, *state_shape)
            score = score + inductive_cost(
                _factor_marginals(joint, 1), _factor_marginals(ahead, 2), *inductive
            )
        if level == 0:
            root_terms = (predicted, outcome_entropy, ambiguity, epistemic, pragmatic)
        if level == depth - 1:
            levels.append((score, agent, None, beliefs))
            break
        gamma = precision[agent]
        expand_action = torch.ones_like(score, dtype=torch.bool)
        if action_threshold > 0:
            expand_action = torch.softmax(-gamma[:, None] * score, -1) > action_threshold
        expand = (outcomes > outcome_threshold) & (outcomes > 0) & expand_action[..., None]
        k, u, o = expand.nonzero(as_tuple=True)
        weights = outcomes[k, u, o]
        rows = k if node_likelihood.shape[0] > 1 else torch.zeros_like(k)
        posterior = predicted[k, u] * node_likelihood[rows, o]
        posterior = posterior / posterior.sum(-1, keepdim=True)
        next_beliefs, next_agent, child = dedupe(posterior, agent[k])
        levels.append((score, agent, (expand_action, k, u, weights, child, o), beliefs))
        beliefs, agent = next_beliefs, next_agent

    # backward, from the deepest level up: each node's G from its children's values
    value, tree = None, []
    for score, agent, expansion, level_beliefs in reversed(levels):
        G = score
        if expansion is not None:
            expand_action, k, u, weights, child, o = expansion
            future = torch.zeros_like(score).index_put(
                (k, u), weights * value[child], accumulate=True
            )
            G = score + future
            if action_threshold > 0:
                penalty = score.amin(-1, keepdim=True) + pruning_penalty
                G = torch.where(expand_action, G, penalty)
        value = _expected_value(G, precision[agent])
        if keep_tree:
            tree.insert(
                0,
                PlanLevel(
                    beliefs=level_beliefs.detach(),
                    agent=agent,
                    G_1=score.detach(),
                    G=G.detach(),
                    q_u=_action_probabilities(G, precision[agent]).detach(),
                    expanded=None if expansion is None else expansion[0],
                    branches=None if expansion is None else (k, u, o, weights.detach(), child),
                ),
            )

    predicted, outcome_entropy, ambiguity, epistemic, pragmatic = (
        x[root_index] for x in root_terms
    )
    novelty = _first_step_novelty(joint_beliefs, predicted, A, actions, pA, pB, F)
    first_step = EFETerms(
        G=-outcome_entropy - pragmatic + ambiguity,
        risk=-outcome_entropy - pragmatic,
        ambiguity=ambiguity,
        epistemic=epistemic,
        pragmatic=pragmatic,
        novelty=novelty,
    )
    return SophisticatedScores(
        G=G[root_index],
        first_step=first_step,
        actions=actions,
        depth=depth,
        nodes=tuple(nodes),
        tree=tuple(tree) if keep_tree else None,
        root=root_index,
    )


def _first_step_novelty(joint_beliefs, predicted, A, actions, pA, pB, F) -> Tensor:
    """The expected information gain about A and B of the first step, (N, U), as
    :func:`pp_aif.ops.efe.expected_free_energy_terms` defines it, over the joint belief:
    sum_m q(o_m | u) . (-W_m q_u)  +  sum_f q_u(s_f) . (-W_f[:, :, u_f] q(s_f))."""
    N, U, _ = predicted.shape
    novelty = predicted.new_zeros(N, U)
    if pA is not None:
        for a, counts in zip(batch_likelihoods(A, F), batch_likelihoods(pA, F), strict=True):
            weights = wnorm(counts.movedim(1, 0)).movedim(0, 1) * (counts > 0)
            outcome = torch.einsum("kus,kos->kuo", predicted, a.flatten(2).expand(N, -1, -1))
            weighted = torch.einsum("kus,kos->kuo", predicted, weights.flatten(2).expand(N, -1, -1))
            novelty = novelty - (outcome * weighted).sum(-1)
    if pB is not None:
        joint = joint_beliefs
        predicted_joint = predicted.reshape(N, U, *joint.shape[1:])
        for f, w in enumerate(transition_novelty_weights(pB)):
            others = [d for d in range(1, F + 1) if d != f + 1]
            before = joint.sum(others) if others else joint  # q(s_f) (N, S_f)
            after = predicted_joint.sum([d + 1 for d in others]) if others else predicted_joint
            w_u = w[:, actions[:, f]].expand(N, -1, -1, -1)  # (N, U, S_next, S_prev)
            novelty = novelty - torch.einsum("kui,kuij,kj->ku", after, w_u, before)
    return novelty


def sophisticated_scores(
    model: GenerativeModel,
    beliefs: Tensor | Sequence[Tensor],
    *,
    depth: int,
    time: int = 0,
    actions: Tensor | None = None,
    precision: float | Tensor = DEFAULT_POLICY_PRECISION,
    lesions: Lesions = ALL_TERMS,
    preference_scale: float | Tensor = 1.0,
    action_threshold: float | None = DEFAULT_ACTION_THRESHOLD,
    outcome_threshold: float | None = DEFAULT_OUTCOME_THRESHOLD,
    pruning_penalty: float = DEFAULT_PRUNING_PENALTY,
    A: Sequence[Tensor] | None = None,
    B: Sequence[Tensor] | None = None,
    pA: Sequence[Tensor] | None = None,
    pB: Sequence[Tensor] | None = None,
    deduplicate: bool = True,
    keep_tree: bool = False,
    inductive: tuple[Sequence[Tensor | None], float] | None = None,
) -> SophisticatedScores:
    """:func:`sophisticated_expected_free_energy` on a model's arrays, for callers that made
    their inputs (as :func:`pp_aif.planning.policy_scores`: nothing is checked).

    beliefs : the joint belief (N, S_1..S_F), or F factor marginals (N, S_f) (their product).
    time : the present step t; a time-varying ``C[m]`` (O_m, T) is read at t+1 .. t+depth,
        which must lie within the trial.
    actions : int (U, F), default every joint control (the model's one-step policies).
    A, pA : M tensors (N, O_m, S_1..S_F), one per agent; default the model's (and its pA).
    B, pB : F tensors (N, S_f, S_f, U_f) in SPM layout, one per agent; default the model's.
    """
    if not isinstance(beliefs, Tensor):
        beliefs = outer(*beliefs, batch_dims=1)
    if actions is None:
        actions = model.policies_of_depth(1)[0][:, 0]
    transitions = model.transition_by_action if B is None else [b.permute(0, 3, 1, 2) for b in B]
    counts = None if pA is None and model.pA is None else list(pA or model.pA)
    transition_counts = None if pB is None and model.pB is None else list(pB or model.pB)
    return sophisticated_expected_free_energy(
        beliefs,
        list(model.A) if A is None else list(A),
        list(transitions),
        model_log_preferences(model, time, depth),
        actions,
        depth=depth,
        precision=precision,
        lesions=lesions,
        preference_scale=preference_scale,
        action_threshold=action_threshold,
        outcome_threshold=outcome_threshold,
        pruning_penalty=pruning_penalty,
        pA=counts,
        pB=transition_counts,
        deduplicate=deduplicate,
        keep_tree=keep_tree,
        inductive=inductive,
    )

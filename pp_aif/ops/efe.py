"""Expected free energy of policies, exactly, by batched tensor contraction.

Dimension symbols: N belief batch, P policies, H horizon, F factors (S_f states), M modalities
(O_m outcomes). Beliefs are F tensors (N, S_f); policies int (P, H, F).

For a policy pi, each factor is propagated without observations,
``q(s_f,tau | pi) = B_f[:, :, u_tau] q(s_f,tau-1 | pi)``, and the predictive joint state is the
product of the factors. With o = (o_1..o_M) the joint outcome and ``p~_m = softmax(C_m)``, at
each step tau = 1..H (all summed over tau):

    ambiguity  = E_q(s) H[p(o | s)]            = sum_m E_q(s) H[A_m(. | s)]
    pragmatic  = sum_m E_q(o_m) ln p~_m(o_m)
    epistemic  = I(s; o)                        = H[q(o)] - ambiguity
    risk       = KL[q(o) || prod_m p~_m]        = -H[q(o)] - pragmatic
    G          = risk + ambiguity               = -(epistemic + pragmatic)        (minimised)
    novelty    = sum_m q(o_m) . (-W_m q(s))  +  sum_f q(s_f,tau) . (-W_f[:, :, u] q(s_f,tau-1))

with W = ``wnorm`` of the Dirichlet counts, masked to their positive entries (SPM's
``spm_wnorm``; pymdp's ``calc_pA_info_gain`` / ``calc_pB_info_gain``).

Each step is computed once per distinct policy prefix (``policy_prefix_tree``): policies that
start alike share the predicted states of their common start. Cost per call, in the number of
joint states S = prod_f S_f, joint outcomes O = prod_m O_m and distinct prefixes U_tau at step
tau (<= P): O(N sum_tau U_tau S (O + sum_f S_f)).

The joint outcome is contracted exactly (prod_m O_m entries per step and policy): with M > 1
the modalities' predicted outcomes are dependent, and per-modality KLs do not add up to the risk.
References: Friston et al. (2017), Neural Computation 29(1), eqs. 7-8; Da Costa et al. (2020),
J. Math. Psychol. 99, 102447, sec. 3 (the decomposition of G).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from pp_aif.ops.contractions import outer
from pp_aif.ops.numerics import entropy, entropy_terms, xlogy

__all__ = [
    "EFETerms",
    "wnorm",
    "expected_free_energy_terms",
    "sampled_expected_free_energy_terms",
    "batch_likelihoods",
    "batch_transitions",
    "policy_prefix_tree",
    "LinearEFE",
    "linear_efe",
    "linear_efe_terms",
    "predictions_from_each_state",
]

#: SPM's floor inside ``spm_wnorm``: exp(-16).
WNORM_FLOOR = math.exp(-16)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


class EFETerms(NamedTuple):
    """Each field (N, P), in nats, summed over the H steps of each policy."""

    G: Tensor
    risk: Tensor
    ambiguity: Tensor
    epistemic: Tensor
    pragmatic: Tensor
    novelty: Tensor


def wnorm(concentrations: Tensor) -> Tensor:
    """SPM's ``spm_wnorm``: ``1 / sum_o (a + e^-16) - 1 / (a + e^-16)`` over axis 0."""
    a = concentrations + WNORM_FLOOR
    return 1.0 / a.sum(0, keepdim=True) - 1.0 / a


def batch_transitions(transition_by_action: Sequence[Tensor]) -> list[Tensor]:
    """Each B_f as (N or 1, U_f, S_next, S_prev): a shared array gets a batch axis of 1."""
    return [b if b.dim() == 4 else b.unsqueeze(0) for b in transition_by_action]


class _Level(NamedTuple):
    """The distinct policy prefixes of length tau + 1: each one's control at tau (U_tau, F),
    its parent among the prefixes of length tau (U_tau,), and each policy's prefix (P,) (None
    where the prefixes are the policies themselves, in order)."""

    actions: Tensor
    parent: Tensor
    inverse: Tensor | None


_TREES: dict[tuple, list[tuple[Tensor, Tensor, int, list[_Level]]]] = {}


def policy_prefix_tree(policies: Tensor) -> list[_Level]:
    """The policies as a tree of shared prefixes, one level per step (cached per policies).

    Policies with a common start share the predicted states of that start: SPM's T-maze's 16
    two-step policies have 4 distinct first moves, so the first step of the expected free
    energy is computed for 4 prefixes, not 16. Prefixes are numbered in order of first
    appearance, so the last level is the policies themselves when they are distinct.
    """
    key = (tuple(policies.shape), str(policies.device))
    known_trees = _TREES.get(key, [])
    compiling = torch.compiler.is_compiling()  # (which cannot read a tensor's version)
    for _, original, version, levels in known_trees:  # the same tensor, unchanged: no
        if original is policies and (compiling or version == policies._version):  # comparison
            return levels
    for known, _, _, levels in known_trees:
        if torch.equal(known, policies):  # an equal tensor: this one is remembered too
            known_trees.append((known, policies, policies._version, levels))
            del known_trees[:-8]
            return levels
    P, H, F = policies.shape
    rows = policies.reshape(P, -1).tolist()
    device = policies.device
    levels, parent_of = [], [0] * P  # each policy's prefix at the previous level (the root)
    for tau in range(H):
        index: dict = {}
        inverse, actions, parent = [], [], []
        for p in range(P):
            prefix = tuple(rows[p][: (tau + 1) * F])
            if prefix not in index:
                index[prefix] = len(index)
                actions.append(rows[p][tau * F : (tau + 1) * F])
                parent.append(parent_of[p])
            inverse.append(index[prefix])
        parent_of = inverse
        levels.append(
            _Level(
                torch.tensor(actions, dtype=torch.int64, device=device).reshape(-1, F),
                torch.tensor(parent, dtype=torch.int64, device=device),
                None
                if inverse == list(range(P))
                else torch.tensor(inverse, dtype=torch.int64, device=device),
            )
        )
    cached = _TREES.setdefault(key, [])
    cached.append((policies.clone(), policies, policies._version, levels))
    del cached[:-8]  # a few policy sets per shape (policies cut to the steps left, lesions)
    return levels


_LIKELIHOODS: list[tuple[tuple[Tensor, ...], tuple[int, ...], Tensor, Tensor]] = []


def _likelihood_quantities(A: Sequence[Tensor], num_factors: int) -> tuple[Tensor, Tensor]:
    """What depends on A only: the joint likelihood p(o_1..o_M | s) as a matrix (N or 1,
    prod O, prod S) and the entropy H[p(o | s)] (N or 1, prod S).

    Computed once per likelihood, not per step: the last few shared A's (O_m, S..) are
    remembered by identity and version (an in-place change of A is a new version). One A per
    belief (each agent's learned A, or a fitted likelihood precision's) changes from call to
    call and is computed afresh, as is any A that requires a gradient (no graph is reused).
    """
    A = list(A)
    cacheable = not torch.compiler.is_compiling() and all(
        a.dim() == num_factors + 1 and not a.requires_grad for a in A
    )
    versions = tuple(a._version for a in A) if cacheable else ()
    if cacheable:
        for known, known_versions, joint, entropy_ in _LIKELIHOODS:
            if (
                len(known) == len(A)
                and all(k is a for k, a in zip(known, A, strict=True))
                and known_versions == versions
            ):
                return joint, entropy_
    batched = batch_likelihoods(A, num_factors)
    joint = _joint_likelihood(batched, num_factors)
    entropy_ = sum(-xlogy(a, a).sum(1) for a in batched).flatten(1)  # (N or 1, prod S)
    if cacheable:
        _LIKELIHOODS.append((tuple(A), versions, joint, entropy_))
        del _LIKELIHOODS[:-8]  # a few models
    return joint, entropy_


#: above this many entries, B_f(u) is not gathered per prefix (U, S, S) but applied per control
_GATHER_LIMIT = 2**20


def _predict(b: Tensor, controls: Tensor, previous: Tensor) -> Tensor:
    """q(s_tau | prefix) = B(u) q(s_tau-1 | parent) for each prefix: (N, U, S) from b (N or 1,
    U_f, S, S), controls int (U,) and previous (N, U, S). Small: one product with B gathered
    per prefix. Large (U S^2 over ``_GATHER_LIMIT``, e.g. 3125 policies of 1000 states, 25 GB
    gathered): one product per control for the prefixes that use it, in O(N U S) memory."""
    U, S = controls.shape[0], b.shape[-1]
    if U * S * S <= _GATHER_LIMIT:
        return torch.einsum("Yuij,Yuj->Yui", b[:, controls], previous)
    out = previous.new_empty(torch.broadcast_shapes(previous.shape, (b.shape[0], U, S)))
    for control in torch.unique(controls).tolist():
        chosen = (controls == control).nonzero()[:, 0]
        out[:, chosen] = previous[:, chosen] @ b[:, control].transpose(-1, -2)
    return out


def _spread(per_prefix: Tensor, level: _Level) -> Tensor:
    """A step's term per distinct prefix (N, U) as one per policy (N, P)."""
    return per_prefix if level.inverse is None else per_prefix[:, level.inverse]


def transition_novelty_weights(pB: Sequence[Tensor]) -> list[Tensor]:
    """wnorm of transition counts (S, S, U) or (N, S, S, U), masked to positive counts, in the
    by-action layout (N or 1, U, S_next, S_prev)."""
    weights = []
    for p in pB:
        p = p if p.dim() == 4 else p.unsqueeze(0)
        w = wnorm(p.movedim(1, 0)).movedim(0, 1) * (p > 0)
        weights.append(w.permute(0, 3, 1, 2))
    return weights


def batch_likelihoods(A: Sequence[Tensor], num_factors: int) -> list[Tensor]:
    """Each A_m as (N or 1, O_m, S_1..S_F): a shared (O_m, S..) array gets a batch axis of 1."""
    return [a if a.dim() == num_factors + 2 else a.unsqueeze(0) for a in A]


def _joint_likelihood(A: Sequence[Tensor], num_factors: int) -> Tensor:
    """prod_m A_m[o_m, s] as (N or 1, prod O, prod S) from A_m (N or 1, O_m, S_1..S_F)."""
    M = len(A)
    states = _LETTERS[:num_factors]
    outcomes = _LETTERS[num_factors : num_factors + M]
    equation = ",".join(f"Y{o}{states}" for o in outcomes) + f"->Y{outcomes}{states}"
    joint = torch.einsum(equation, *A) if M > 1 else A[0]
    batch = joint.shape[0]
    return joint.reshape(batch, math.prod([a.shape[1] for a in A]), -1)


def xlogy_weighted(probabilities: Tensor, log_values: Tensor) -> Tensor:
    """sum_o q(o) ln v(o) over the last axis, with 0 ln 0 = 0: (N, P) from q (N, P, O), (O,)."""
    # -inf is replaced before the product, and a row that gives it positive weight is -inf by
    # a constant: no 0 * -inf reaches the value or the gradient (an infinite score has none)
    finite = torch.isfinite(log_values).expand_as(probabilities)
    safe = torch.where(finite, log_values, torch.zeros_like(probabilities))
    total = (probabilities * safe).sum(-1)
    ruled_out = ((probabilities > 0) & ~finite).any(-1)
    return torch.where(ruled_out, -torch.inf, total)


def _expect_over_states(array: Tensor, joint_states: Tensor) -> Tensor:
    """sum_s array[o, s] q(s): (N, P, O) from array (N or 1, O, S_1..S_F) and q (N, P, S..)."""
    states = _LETTERS[1 : joint_states.dim() - 1]
    return torch.einsum(f"Ya{states},YZ{states}->YZa", array, joint_states)


def expected_free_energy_terms(
    beliefs: Sequence[Tensor],
    A: Sequence[Tensor],
    transition_by_action: Sequence[Tensor],
    log_preferences: Sequence[Tensor],
    policies: Tensor,
    *,
    pA: Sequence[Tensor] | None = None,
    pB: Sequence[Tensor] | None = None,
) -> EFETerms:
    """Every term of the expected free energy of every policy, batched.

    Parameters
    ----------
    beliefs : F tensors (N, S_f)
        Current beliefs q(s_f) (e.g. the filtered marginals at the present step).
    A : M tensors (O_m, S_1..S_F), or (N, O_m, S_1..S_F) for one likelihood per belief
    transition_by_action : F tensors (U_f, S_next, S_prev)
    log_preferences : M tensors (H, O_m)
        ln p~_m(o) at each step of the horizon (log-softmaxed C, already indexed by time).
    policies : int (P, H, F)
    pA : M tensors like A (shared or per belief), optional; pB : F tensors (S_f, S_f, U_f),
        optional. Dirichlet counts; without them novelty is 0.

    Returns
    -------
    EFETerms, each (N, P)
    """
    F = len(beliefs)
    joint_likelihood, entropy_given_state = _likelihood_quantities(A, F)
    A = batch_likelihoods(A, F)
    pA = None if pA is None else batch_likelihoods(pA, F)
    N = beliefs[0].shape[0]
    P, H, _ = policies.shape
    dtype = beliefs[0].dtype
    zero = torch.zeros(N, P, dtype=dtype, device=beliefs[0].device)
    num_outcomes = [a.shape[1] for a in A]
    # for each step the joint log preference sum_m ln p~_m(o_m) (prod O,)
    joint_preferences = [
        sum(
            log_preferences[m][tau].reshape(*[1] * m, num_outcomes[m], *[1] * (len(A) - m - 1))
            for m in range(len(A))
        ).flatten()
        for tau in range(H)
    ]
    # compiled (``torch.compile`` of the agent's step), always the form that is safe for -inf:
    # the same value, without a data-dependent branch
    finite_preferences = (
        [False] * H
        if torch.compiler.is_compiling()
        else [bool(torch.isfinite(p).all()) for p in joint_preferences]
    )
    novelty_weights_A = (
        None if pA is None else [wnorm(p.movedim(1, 0)).movedim(0, 1) * (p > 0) for p in pA]
    )
    novelty_weights_B = None if pB is None else transition_novelty_weights(pB)
    transitions = batch_transitions(transition_by_action)
    ambiguity, pragmatic, outcome_entropy, novelty = zero, zero, zero, zero
    # each step for the distinct policy prefixes only (``policy_prefix_tree``), each of the
    # step's terms (N, U_tau) then handed to the policies that share the prefix
    current = [q[:, None, :] for q in beliefs]  # (N, 1, S_f): the root
    for tau, level in enumerate(policy_prefix_tree(policies)):
        previous = [q[:, level.parent] for q in current]  # (N, U, S_f)
        states = [
            _predict(b, level.actions[:, f], q)
            for f, (b, q) in enumerate(zip(transitions, previous, strict=True))
        ]
        joint_states = outer(*states, batch_dims=2)  # (N, U, S_1..S_F)
        flat_states = joint_states.flatten(2)  # (N, U, prod S)
        step_ambiguity = (flat_states * entropy_given_state[:, None]).sum(-1)
        joint_outcomes = torch.matmul(flat_states, joint_likelihood.transpose(-1, -2))
        step_entropy = entropy(joint_outcomes)
        log_p = joint_preferences[tau]
        if finite_preferences[tau]:
            step_pragmatic = joint_outcomes @ log_p
        else:  # a preference of -inf: outcomes that cannot occur contribute 0, not nan
            step_pragmatic = xlogy_weighted(joint_outcomes, log_p)
        step_novelty = None
        if novelty_weights_A is not None:
            step_novelty = 0
            for m, a in enumerate(A):
                predicted = _expect_over_states(a, joint_states)  # q(o_m | pi), (N, U, O_m)
                weighted = _expect_over_states(novelty_weights_A[m], joint_states)
                step_novelty = step_novelty - (predicted * weighted).sum(-1)
        if novelty_weights_B is not None:
            step_novelty = 0 if step_novelty is None else step_novelty
            for f, (w, q_now, q_before) in enumerate(
                zip(novelty_weights_B, states, previous, strict=True)
            ):
                w_u = w[:, level.actions[:, f]]  # (N or 1, U, S_next, S_prev)
                step_novelty = step_novelty - torch.einsum("Yui,Yuij,Yuj->Yu", q_now, w_u, q_before)
        ambiguity = ambiguity + _spread(step_ambiguity, level)
        outcome_entropy = outcome_entropy + _spread(step_entropy, level)
        pragmatic = pragmatic + _spread(step_pragmatic, level)
        if step_novelty is not None:
            novelty = novelty + _spread(step_novelty, level)
        current = states
    epistemic = outcome_entropy - ambiguity
    risk = -outcome_entropy - pragmatic
    return EFETerms(
        G=risk + ambiguity,
        risk=risk,
        ambiguity=ambiguity,
        epistemic=epistemic,
        pragmatic=pragmatic,
        novelty=novelty,
    )


class LinearEFE(NamedTuple):
    """The expected free energy of fixed A, B and preferences as linear maps of the joint
    belief Q (N, S), S = prod_f S_f (``linear_efe``): U distinct policy prefixes over all steps,
    O = prod_m O_m joint outcomes, P policies.

    outcomes : (R, S), the R <= U O rows (prefix, outcome) that some joint state can reach:
    q(o | prefix) = outcomes Q; grouping : (R, P), 1 where the row's prefix starts the policy
    (so that H[q(o | pi)] summed over the steps is (-y ln y) grouping, y = outcomes Q); linear :
    (S, 2 P), the ambiguity and pragmatic value of each policy.
    """

    outcomes: Tensor
    grouping: Tensor
    linear: Tensor


def linear_efe(
    A: Sequence[Tensor],
    transition_by_action: Sequence[Tensor],
    log_preferences: Sequence[Tensor],
    policies: Tensor,
    *,
    limit: int = 2**22,
) -> LinearEFE | None:
    """``expected_free_energy_terms`` of one shared A and B as linear maps of the joint belief:
    a fast path for a likelihood that scores policies from thousands of beliefs per call.

    The kernel propagates each factor's marginal, q(s_f,tau | pi) = B_f(u) q(s_f,tau-1), and
    takes their product, so from a product belief Q = prod_f q_f every predicted joint state is
    (prod_f B_f) Q, linear in Q; so are the predicted outcomes q(o | pi, tau), the ambiguity and
    the pragmatic value, and only H[q(o | pi, tau)] is not. The maps are built here once, by
    running the kernel's own recursion from each joint state; ``linear_efe_terms`` then needs
    two matrix products and one entropy per call, whatever the horizon.

    Returns None (use the kernel) where a preference is -inf (0 ln 0 needs the kernel's care)
    or the maps would hold more than ``limit`` entries.
    """
    F = len(transition_by_action)
    P, H, _ = policies.shape
    joint_likelihood, entropy_given_state = _likelihood_quantities(A, F)
    if joint_likelihood.shape[0] != 1 or entropy_given_state.shape[0] != 1:
        return None  # one likelihood per belief
    num_states = [b.shape[-1] for b in transition_by_action]
    S, outcomes_joint = math.prod(num_states), joint_likelihood.shape[1]
    tree = policy_prefix_tree(policies)
    U = sum(level.actions.shape[0] for level in tree)
    if U * outcomes_joint * (S + P) + 2 * P * S > limit:
        return None
    num_outcomes = [a.shape[-F - 1] for a in A]
    M = len(A)
    joint_preferences = [
        sum(
            log_preferences[m][tau].reshape(*[1] * m, num_outcomes[m], *[1] * (M - m - 1))
            for m in range(M)
        ).flatten()
        for tau in range(H)
    ]
    if not all(bool(torch.isfinite(p).all()) for p in joint_preferences):
        return None
    predictions = predictions_from_each_state(transition_by_action, policies)
    outcomes, membership = [], []
    ambiguity = torch.zeros(S, P, dtype=joint_likelihood.dtype, device=joint_likelihood.device)
    pragmatic = torch.zeros_like(ambiguity)
    for tau, (flat_states, member) in enumerate(predictions):
        predicted = flat_states @ joint_likelihood[0].T  # (S, U_tau, O)
        ambiguity = ambiguity + (flat_states @ entropy_given_state[0]) @ member
        pragmatic = pragmatic + (predicted @ joint_preferences[tau]) @ member
        outcomes.append(predicted.permute(1, 2, 0).reshape(-1, S))  # (U_tau O, S)
        membership.append(member.repeat_interleave(outcomes_joint, 0))  # (U_tau O, P)
    outcomes, membership = torch.cat(outcomes), torch.cat(membership)
    reachable = (outcomes > 0).any(-1)  # the others are 0 from every belief: -0 ln 0 = 0
    return LinearEFE(
        outcomes[reachable], membership[reachable], torch.cat([ambiguity, pragmatic], -1)
    )


def predictions_from_each_state(
    transition_by_action: Sequence[Tensor], policies: Tensor
) -> list[tuple[Tensor, Tensor]]:
    """The kernel's predicted joint states from each joint state as the belief, per step of
    the policies' prefix tree: H tuples (states (S, U_tau, S): from state s, prefix u; and
    membership (U_tau, P), 1 where the prefix starts the policy). With the factors' marginals
    propagated one by one and multiplied, as ``expected_free_energy_terms`` does."""
    num_states = [b.shape[-1] for b in transition_by_action]
    S, P = math.prod(num_states), policies.shape[0]
    dtype, device = transition_by_action[0].dtype, transition_by_action[0].device
    index = torch.arange(S, device=device)
    current = []  # every joint state as a belief: F one-hot factor marginals (S, 1, S_f)
    for f, size in enumerate(num_states):
        stride = math.prod(num_states[f + 1 :])
        current.append(
            torch.nn.functional.one_hot((index // stride) % size, size).to(dtype)[:, None]
        )
    transitions = batch_transitions(transition_by_action)
    out = []
    for level in policy_prefix_tree(policies):
        previous = [q[:, level.parent] for q in current]
        states = [
            _predict(b, level.actions[:, f], q)
            for f, (b, q) in enumerate(zip(transitions, previous, strict=True))
        ]
        inverse = level.inverse if level.inverse is not None else torch.arange(P, device=device)
        count = level.actions.shape[0]
        member = inverse[None, :] == torch.arange(count, device=device)[:, None]
        out.append((outer(*states, batch_dims=2).flatten(2), member.to(dtype)))
        current = states
    return out


def linear_efe_terms(joint_beliefs: Tensor, maps: LinearEFE) -> EFETerms:
    """``expected_free_energy_terms`` from the joint beliefs (N, S) (the product of the factor
    marginals) by the maps of ``linear_efe``: EFETerms, each (N, P)."""
    P = maps.grouping.shape[1]
    outcome_entropy = entropy_terms(joint_beliefs @ maps.outcomes.T) @ maps.grouping  # (N, P)
    linear = joint_beliefs @ maps.linear
    ambiguity, pragmatic = linear[..., :P], linear[..., P:]
    risk = -outcome_entropy - pragmatic
    return EFETerms(
        G=risk + ambiguity,
        risk=risk,
        ambiguity=ambiguity,
        epistemic=outcome_entropy - ambiguity,
        pragmatic=pragmatic,
        novelty=torch.zeros_like(ambiguity),
    )


def _mean_and_stderr(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over the leading sample axis K and its standard error std / sqrt(K)."""
    K = values.shape[0]
    return values.mean(0), values.std(0, correction=1) / math.sqrt(K)


def _one_hot_mean(index: Tensor, size: int, dtype) -> Tensor:
    """The empirical distribution of samples (K, *rest): (*rest, size)."""
    return torch.nn.functional.one_hot(index, size).to(dtype).mean(0)


def sampled_expected_free_energy_terms(
    state_samples: Sequence[Sequence[Tensor]],
    A: Sequence[Tensor],
    transition_by_action: Sequence[Tensor],
    log_preferences: Sequence[Tensor],
    policies: Tensor,
    *,
    pA: Sequence[Tensor] | None = None,
    pB: Sequence[Tensor] | None = None,
) -> tuple[EFETerms, EFETerms]:
    """Monte Carlo estimates of every term, with standard errors, from sampled state rollouts.

    Parameters
    ----------
    state_samples : list over tau = 0..H of F tensors int (K, N, P)
        Hidden states of K rollouts of the generative model under each policy (tau = 0 drawn
        from the current beliefs), e.g. from ``Predictive(pp_aif.programs.policy_rollout)``.
    A, transition_by_action, log_preferences, policies, pA, pB
        As in :func:`expected_free_energy_terms`.

    Returns
    -------
    (estimates, standard errors), each an EFETerms of (N, P) tensors.

    Estimators, each Rao-Blackwellised over outcomes given the sampled states (the conditional
    expectation given s is closed form, so no outcome sample is needed):

    - ambiguity: mean of h(s^k) = sum_m H[A_m(. | s^k)];
    - pragmatic: mean of sum_m sum_o A_m[o, s^k] ln p~_m(o);
    - H[q(o)]: mean of c_k = -sum_o p(o | s^k) ln q^(o), with q^(o) = mean_k p(o | s^k), the
      Rao-Blackwellised predictive (a plug-in, biased by O(1/K); its delta-method error is the
      spread of c_k); epistemic = H - ambiguity, risk = -H - pragmatic;
    - novelty: the exact formula at the empirical state distributions (plug-in, O(1/K) bias),
      with the delta-method standard error of its linearisation.

    Each term is summed over tau per rollout before averaging, so the standard errors account for
    the dependence between the steps of one rollout.
    """
    H = len(state_samples) - 1
    K, N, P = state_samples[0][0].shape
    dtype = A[0].dtype
    F = len(state_samples[0])
    A = batch_likelihoods(A, F)
    pA = None if pA is None else batch_likelihoods(pA, F)
    num_states = tuple(A[0].shape[2:])
    # the batch index of each sample into a (N or 1, ...) array
    rows = torch.arange(N, device=A[0].device)[None, :, None]

    def at(array: Tensor, index: tuple[Tensor, ...]) -> Tensor:
        return array[(rows if array.shape[0] == N else torch.zeros_like(rows), *index)]

    entropy_given_state = sum(-xlogy(a, a).sum(1) for a in A)  # (N or 1, S_1..S_F)
    weights_A = None if pA is None else [wnorm(p.movedim(1, 0)).movedim(0, 1) * (p > 0) for p in pA]
    weights_B = None if pB is None else transition_novelty_weights(pB)
    zeros = torch.zeros(K, N, P, dtype=dtype, device=A[0].device)
    ambiguity, pragmatic, cross_entropy, novelty_linear = zeros, zeros, zeros, zeros
    novelty_plug_in = torch.zeros(N, P, dtype=dtype, device=A[0].device)
    for tau in range(1, H + 1):
        states = tuple(state_samples[tau])
        ambiguity = ambiguity + at(entropy_given_state, states)
        # p(o_1..o_M | s^k): (K, N, P, O_1..O_M), and the Rao-Blackwellised predictive q^(o)
        conditional = None
        for m, a in enumerate(A):
            given = at(a.movedim(1, -1), states)  # (K, N, P, O_m)
            log_p = log_preferences[m][tau - 1]
            pragmatic = pragmatic + torch.where(
                given > 0, given * log_p, torch.zeros_like(given)
            ).sum(-1)
            conditional = (
                given
                if conditional is None
                else (conditional[..., None] * given.reshape(*given.shape[:3], *([1] * m), -1))
            )
        predictive = conditional.mean(0)
        terms = torch.where(
            conditional > 0, conditional * torch.log(predictive), torch.zeros_like(conditional)
        )
        cross_entropy = cross_entropy - terms.flatten(3).sum(-1)
        if weights_A is not None:
            flat_index = torch.zeros_like(states[0])
            for f, s in enumerate(states):
                flat_index = flat_index * num_states[f] + s
            q_states = _one_hot_mean(flat_index, math.prod(num_states), dtype)  # (N, P, S)
            for a, w in zip(A, weights_A, strict=True):
                a_flat, w_flat = a.flatten(2), w.flatten(2)  # (N or 1, O, S)
                q_outcomes = torch.einsum("YZs,Yos->YZo", q_states, a_flat)
                w_q_states = torch.einsum("YZs,Yos->YZo", q_states, w_flat)  # W q(s)
                novelty_plug_in = novelty_plug_in - (q_outcomes * w_q_states).sum(-1)
                wt_q_outcomes = torch.einsum("YZo,Yos->YZs", q_outcomes, w_flat)  # W^T q(o)
                a_given = at(a_flat.transpose(1, 2), (flat_index,))  # (K, N, P, O)
                novelty_linear = novelty_linear - (
                    (a_given * w_q_states).sum(-1)
                    + torch.gather(wt_q_outcomes.expand(K, -1, -1, -1), -1, flat_index[..., None])[
                        ..., 0
                    ]
                )
        if weights_B is not None:
            for f, w in enumerate(weights_B):
                S = w.shape[-1]
                w_u = w[:, policies[:, tau - 1, f]]  # (N or 1, P, S_next, S_prev)
                now, before = state_samples[tau][f], state_samples[tau - 1][f]
                q_now = _one_hot_mean(now, S, dtype)
                q_before = _one_hot_mean(before, S, dtype)
                w_q_before = torch.einsum("Ypij,Ypj->Ypi", w_u, q_before)
                wt_q_now = torch.einsum("Ypij,Ypi->Ypj", w_u, q_now)
                novelty_plug_in = novelty_plug_in - (q_now * w_q_before).sum(-1)
                novelty_linear = novelty_linear - (
                    torch.gather(w_q_before.expand(K, -1, -1, -1), -1, now[..., None])[..., 0]
                    + torch.gather(wt_q_now.expand(K, -1, -1, -1), -1, before[..., None])[..., 0]
                )
    estimates, errors = {}, {}
    per_rollout = {
        "G": -cross_entropy - pragmatic + ambiguity,
        "risk": -cross_entropy - pragmatic,
        "ambiguity": ambiguity,
        "epistemic": cross_entropy - ambiguity,
        "pragmatic": pragmatic,
    }
    for name, values in per_rollout.items():
        estimates[name], errors[name] = _mean_and_stderr(values)
    estimates["novelty"] = novelty_plug_in
    errors["novelty"] = _mean_and_stderr(novelty_linear)[1]
    return EFETerms(**estimates), EFETerms(**errors)

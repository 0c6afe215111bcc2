"""Sophisticated inference (``pp_aif.planning.sophisticated``) against independent oracles: a
plain-numpy recursion over joint states and joint outcomes written from the definitions (with
SPM's pruning rule as an option), today's one-step expected free energy, one agent at a time,
and pymdp 1.0's ``si_policy_search``."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.planning import Lesions, policy_score
from pp_aif.planning.sophisticated import (
    sophisticated_expected_free_energy,
    sophisticated_scores,
)
from tests.common import assert_close, random_arrays, random_columns

# ---------------------------------------------------------------------------------------------
# the oracle: plain numpy, dictionaries over joint states and outcomes, recursion by definition


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def brute_force_sophisticated(
    A,
    B,
    C,
    root,
    depth,
    *,
    time=0,
    gamma=1.0,
    epistemic=True,
    pragmatic=True,
    action_threshold=0.0,
    outcome_threshold=0.0,
    penalty=512.0,
):
    """G(u | root) for every joint action u (all combinations, the last factor fastest).

    ``root`` is a joint belief (S_1, ..., S_F). At each level l (outcomes at time + l + 1) and
    action u: q_u = B_u q, q(o | u) over joint outcomes, the one-step score
    -(H[q(o|u)] - E H[A] (epistemic) + E ln softmax(C) (pragmatic)); below the last level,
    G(u) = score(u) + sum_o q(o|u) sum_u' softmax(-gamma G(.|q_o))[u'] G(u'|q_o).
    Pruning (SPM's rule): where softmax(-gamma score)[u] <= action_threshold, G(u) =
    min(score) + penalty and nothing is expanded; outcomes with q(o|u) <= outcome_threshold
    are skipped (they add 0). A threshold of 0 is off.
    """
    F, M = len(B), len(A)
    states = list(itertools.product(*[range(b.shape[0]) for b in B]))
    outcomes = list(itertools.product(*[range(a.shape[0]) for a in A]))
    actions = list(itertools.product(*[range(b.shape[2]) for b in B]))
    ambiguity_of = {
        s: sum(-x * math.log(x) for a in A for x in a[(slice(None), *s)] if x > 0) for s in states
    }

    def log_preference(m, level):
        c = C[m] if C[m].ndim == 1 else C[m][:, time + level + 1]
        return np.log(_softmax(np.asarray(c, dtype=float)))

    def likelihood(o, s):
        return math.prod(float(A[m][(o[m], *s)]) for m in range(M))

    def evaluate(q, level):
        scores, branches = [], []
        preferences = [log_preference(m, level) for m in range(M)]
        for u in actions:
            predicted = {
                after: sum(
                    q[before] * math.prod(float(B[f][after[f], before[f], u[f]]) for f in range(F))
                    for before in states
                )
                for after in states
            }
            p_o = {o: sum(predicted[s] * likelihood(o, s) for s in states) for o in outcomes}
            ambiguity = sum(predicted[s] * ambiguity_of[s] for s in states)
            entropy = -sum(p * math.log(p) for p in p_o.values() if p > 0)
            utility = sum(
                p * sum(preferences[m][o[m]] for m in range(M)) for o, p in p_o.items() if p > 0
            )
            score = 0.0
            if epistemic:
                score -= entropy - ambiguity
            if pragmatic:
                score -= utility
            scores.append(score)
            branches.append((predicted, p_o))
        scores = np.array(scores)
        if level == depth - 1:
            return scores
        prior = _softmax(-gamma * scores)
        G = scores.copy()
        for i, (predicted, p_o) in enumerate(branches):
            if action_threshold and prior[i] <= action_threshold:
                G[i] = scores.min() + penalty
                continue
            for o, p in p_o.items():
                if p == 0 or (outcome_threshold and p <= outcome_threshold):
                    continue
                posterior = {s: predicted[s] * likelihood(o, s) / p for s in states}
                child = evaluate(posterior, level + 1)
                G[i] += p * (_softmax(-gamma * child) @ child)
        return G

    root = np.asarray(root, dtype=float)
    return evaluate({s: float(root[s]) for s in states}, 0)


# ---------------------------------------------------------------------------------------------
# random cases

SHAPES = {  # (num_states, num_outcomes, num_controls): 2 factors, 2 modalities
    "2x3": ((2, 3), (3, 2), (2, 2)),
    "3x2": ((3, 2), (2, 2), (3, 1)),
}


def make_case(rng, shape, *, time_varying=False, zero_fraction=0.25):
    num_states, num_outcomes, num_controls = SHAPES[shape]
    arrays = random_arrays(rng, num_states, num_outcomes, num_controls, zero_fraction)
    C = [rng.normal(scale=2, size=(o, 6) if time_varying else o) for o in num_outcomes]
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, C=C, D=arrays.D)
    # a joint belief that is not a product of marginals, with a structural zero
    root = random_columns(rng, (math.prod(num_states),), 0.2).reshape(num_states)
    return arrays, C, model, root


def run(model, root, depth, **kwargs):
    kwargs.setdefault("action_threshold", None)
    kwargs.setdefault("outcome_threshold", None)
    return sophisticated_scores(model, torch.as_tensor(root)[None], depth=depth, **kwargs)


def _flags(lesions):
    return {"epistemic": lesions.epistemic, "pragmatic": lesions.pragmatic}


# ---------------------------------------------------------------------------------------------
# 1. brute force, no pruning


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_equals_brute_force(rng, shape, depth):
    """A joint (not factorised) root belief, structural zeros in A, B and the belief."""
    arrays, C, model, root = make_case(rng, shape)
    expected = brute_force_sophisticated(arrays.A, arrays.B, C, root, depth)
    scores = run(model, root, depth)
    assert_close(scores.G[0], expected)
    if depth > 1:  # the recursion adds something: depth d is not depth 1 plus a constant
        one_step = brute_force_sophisticated(arrays.A, arrays.B, C, root, 1)
        assert np.ptp(expected - one_step) > 1e-3


@pytest.mark.parametrize(
    "lesions", [Lesions(), Lesions(epistemic=False), Lesions(pragmatic=False)], ids=str
)
def test_equals_brute_force_time_varying_preferences_precision_lesions(rng, lesions):
    """C (O_m, T) read at the absolute time of each level (present step 2: outcomes at 3, 4, 5),
    gamma = 2.5, and the lesioned terms left out at every level."""
    arrays, C, model, root = make_case(rng, "2x3", time_varying=True)
    expected = brute_force_sophisticated(
        arrays.A, arrays.B, C, root, 3, time=2, gamma=2.5, **_flags(lesions)
    )
    scores = run(model, root, 3, time=2, precision=2.5, lesions=lesions)
    assert_close(scores.G[0], expected)
    shifted = brute_force_sophisticated(
        arrays.A, arrays.B, C, root, 3, time=1, gamma=2.5, **_flags(lesions)
    )
    if lesions.pragmatic:  # another time reads other preferences
        assert np.abs(shifted - expected).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# 2. depth 1 is today's exact expected free energy of the one-step policies


@pytest.mark.parametrize(
    "lesions",
    [Lesions(), Lesions(epistemic=False), Lesions(pragmatic=False)],
    ids=str,
)
def test_depth_one_is_todays_expected_free_energy(rng, lesions):
    num_states, num_outcomes, num_controls = SHAPES["2x3"]
    arrays = random_arrays(rng, num_states, num_outcomes, num_controls, 0.25)
    pA = [1 + a * rng.uniform(1, 4, size=a.shape) for a in arrays.A]
    pB = [(b > 0) * rng.uniform(0.5, 4, size=b.shape) for b in arrays.B]
    C = [rng.normal(size=(o, 4)) for o in num_outcomes]
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, C=C, D=arrays.D, pA=pA, pB=pB)
    marginals = [torch.as_tensor(random_columns(rng, (s, 3))).T for s in num_states]  # (3, S_f)
    policies = pp_aif.construct_policies(num_controls, 1)
    today = pp_aif.expected_free_energy(model, marginals, policies, time=1)
    scores = sophisticated_scores(
        model, marginals, depth=1, time=1, lesions=lesions, action_threshold=0.5
    )
    assert torch.equal(scores.actions, policies[:, 0])
    for name in ("G", "risk", "ambiguity", "epistemic", "pragmatic", "novelty"):
        assert_close(getattr(scores.first_step, name), getattr(today, name), msg=name)
    without_novelty = Lesions(lesions.epistemic, lesions.pragmatic, novelty=False)
    assert_close(scores.G, policy_score(today, without_novelty))
    assert (today.novelty.abs() > 1e-3).all()  # novelty was there to compare


# ---------------------------------------------------------------------------------------------
# 3. pruning


@pytest.mark.parametrize(
    "thresholds", [(1 / 16, 1 / 16), (0.3, None), (None, 0.3), (0.2, 0.2)], ids=str
)
def test_pruning_equals_brute_force_with_the_same_rule(rng, thresholds):
    """SPM's rule in both: actions of one-step probability <= threshold are not expanded and
    take G = min one-step G + 512; outcomes of probability <= threshold add nothing."""
    action_threshold, outcome_threshold = thresholds
    arrays, C, model, root = make_case(rng, "2x3")
    depth = 3
    expected = brute_force_sophisticated(
        arrays.A,
        arrays.B,
        C,
        root,
        depth,
        gamma=2.0,
        action_threshold=action_threshold or 0,
        outcome_threshold=outcome_threshold or 0,
    )
    kwargs = {"action_threshold": action_threshold, "outcome_threshold": outcome_threshold}
    pruned = run(model, root, depth, precision=2.0, **kwargs)
    full = run(model, root, depth, precision=2.0)
    assert_close(pruned.G[0], expected)
    # pruning changes the answer, and evaluates fewer nodes
    assert (pruned.G - full.G).abs().max() > 1e-4
    assert sum(pruned.nodes) < sum(full.nodes)
    # depth 1 is never pruned
    assert_close(run(model, root, 1, **kwargs).G, run(model, root, 1).G)
    if action_threshold:
        # a first action of one-step probability <= threshold takes the penalty, the rest not
        first = pruned.first_step.G[0]
        out = torch.softmax(-2.0 * first, -1) <= action_threshold
        assert out.any() or action_threshold < 1 / 4  # of 4 actions, one has p <= 1/4
        assert_close(pruned.G[0][out], (first.min() + 512).expand(int(out.sum())))
        assert (pruned.G[0][~out] < first.min() + 100).all()


# ---------------------------------------------------------------------------------------------
# 4. the search tree (``keep_tree``): every node is the recursion from its own belief


@pytest.mark.parametrize("thresholds", [(None, None), (0.2, 0.2)], ids=str)
def test_every_node_of_the_tree_is_the_recursion_from_its_belief(rng, thresholds):
    """Each node of level l holds the brute force's G from its belief at depth D - l (the same
    pruning), q(u) = softmax(-gamma G), and each branch leads to Bayes' posterior of its
    outcome with its probability q(o | u)."""
    action_threshold, outcome_threshold = thresholds
    arrays, C, model, root = make_case(rng, "2x3")
    depth, gamma = 3, 2.0
    kwargs = {"action_threshold": action_threshold, "outcome_threshold": outcome_threshold}
    scores = run(model, root, depth, precision=gamma, keep_tree=True, **kwargs)
    assert len(scores.tree) == depth and scores.tree[-1].branches is None
    assert_close(scores.tree[0].G[scores.root[0]], scores.G[0])
    shape = root.shape
    actions = scores.actions.numpy()
    for level, layer in enumerate(scores.tree):
        assert layer.beliefs.shape[0] == scores.nodes[level]
        assert_close(layer.q_u, torch.softmax(-gamma * layer.G, -1))
        for k in range(layer.beliefs.shape[0]):
            belief = layer.beliefs[k].numpy().reshape(shape)
            expected = brute_force_sophisticated(
                arrays.A, arrays.B, C, belief, depth - level, time=level, gamma=gamma,
                action_threshold=action_threshold or 0, outcome_threshold=outcome_threshold or 0,
            )  # fmt: skip
            assert_close(layer.G[k], expected, msg=f"level {level}, node {k}")
        if layer.branches is None:
            continue
        node, action, outcome, probability, child = (x.numpy() for x in layer.branches)
        assert len(node) > 0
        for e in range(len(node)):
            u = actions[action[e]]
            parent = layer.beliefs[node[e]].numpy().reshape(shape)
            predicted = np.einsum(
                "ac,bd,cd->ab", arrays.B[0][..., u[0]], arrays.B[1][..., u[1]], parent
            )
            o = np.unravel_index(outcome[e], [a.shape[0] for a in arrays.A])
            joint = predicted * arrays.A[0][o[0]] * arrays.A[1][o[1]]
            assert_close(probability[e], joint.sum())
            posterior = scores.tree[level + 1].beliefs[child[e]].numpy()
            assert_close(posterior, (joint / joint.sum()).ravel())


# ---------------------------------------------------------------------------------------------
# 5. agents at once


def test_agents_at_once_equal_one_at_a_time(rng):
    """Each agent's own beliefs, A and B, gamma and preference scale."""
    num_states, num_outcomes, num_controls = SHAPES["2x3"]
    N, depth = 3, 3
    cases = [random_arrays(rng, num_states, num_outcomes, num_controls, 0.25) for _ in range(N)]
    A = [torch.as_tensor(np.stack([c.A[m] for c in cases])) for m in range(2)]
    B = [torch.as_tensor(np.stack([c.B[f] for c in cases])) for f in range(2)]
    C = [torch.as_tensor(rng.normal(size=(o, depth))).log_softmax(0).T for o in num_outcomes]
    beliefs = torch.as_tensor(random_columns(rng, (6, N), 0.2).T.reshape(N, *num_states))
    beliefs[2] = beliefs[0]  # the same belief under other arrays: not to be shared
    actions = pp_aif.construct_policies(num_controls, 1)[:, 0]
    gamma = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    scale = torch.tensor([1.0, 1.5, 0.7], dtype=torch.float64)
    by_action = [b.permute(0, 3, 1, 2) for b in B]
    together = sophisticated_expected_free_energy(
        beliefs, A, by_action, C, actions, depth=depth, precision=gamma, preference_scale=scale
    )
    for n in range(N):
        alone = sophisticated_expected_free_energy(
            beliefs[n : n + 1],
            [a[n] for a in A],
            [b[n] for b in by_action],
            C,
            actions,
            depth=depth,
            precision=float(gamma[n]),
            preference_scale=float(scale[n]),
        )
        assert_close(together.G[n], alone.G[0], msg=f"agent {n}")
        for name in ("G", "epistemic", "pragmatic"):
            assert_close(getattr(together.first_step, name)[n], getattr(alone.first_step, name)[0])
    assert (together.G[0] - together.G[1]).abs().max() > 1e-3


def test_coinciding_beliefs_are_evaluated_once(rng):
    """Agents with equal beliefs (shared arrays) share their nodes; the answer is unchanged."""
    arrays, C, model, root = make_case(rng, "2x3")
    other = random_columns(rng, (6,), 0.2).reshape(2, 3)
    beliefs = torch.as_tensor(np.stack([root, other, root, root]))
    shared = sophisticated_scores(model, beliefs, depth=3, action_threshold=None)
    separate = sophisticated_scores(
        model, beliefs, depth=3, action_threshold=None, deduplicate=False
    )
    assert_close(shared.G, separate.G)
    assert shared.nodes[0] == 2 and separate.nodes[0] == 4
    assert sum(shared.nodes) * 3 < sum(separate.nodes) * 2
    alone = sophisticated_scores(model, beliefs[:2], depth=3, action_threshold=None)
    assert shared.nodes == alone.nodes


# ---------------------------------------------------------------------------------------------
# 4. pymdp 1.0's si_policy_search


@pytest.mark.slow
def test_against_pymdp_si_policy_search(rng):
    """pymdp 1.0's ``si_policy_search`` computes the same recursion where the settings agree.

    What is equal: one factor and one modality (pymdp predicts each modality's outcomes
    separately and forms joint observations as the product of the marginals, which is the joint
    predictive only for M = 1; its posterior is its FPI, exact for one factor up to its log
    floor of 2e-16), every action expanded (``policy_prune_threshold=0``), the early stop off
    (``entropy_stop_threshold=-1``: pymdp stops deepening once the root's q(pi) has entropy <=
    0.5), no node reuse (``kl_threshold=-1``), C passed as ln p~ (pymdp uses C as given, we use
    log_softmax(C)). pymdp's neg_efe = utility + info gain = -G and q_pi = softmax(gamma *
    neg_efe): we compare q(u) = softmax(-gamma G) with its root q_pi, without pruning and with
    outcome pruning (outcomes of probability <= threshold add 0 in both, not renormalised).

    What differs, hence not compared: pymdp's action pruning applies at every level including
    the last (a leaf action of one-step probability <= threshold gets neg_efe -512 where SPM
    and we keep its one-step G), its backward pass prunes again by the recursive q_pi (a child
    pruned there is worth -512 in later passes), and an action whose every outcome is pruned is
    worth -512 (here: its one-step G).

    Tolerance: pymdp keeps its tree's probabilities in float32 (``Tree.children_probs``) and
    its search does not run under jax_enable_x64.
    """
    jax = pytest.importorskip("jax")
    pytest.importorskip("equinox")
    jnp = pytest.importorskip("jax.numpy")
    from pymdp.agent import Agent
    from pymdp.planning.si import si_policy_search

    S, U = 3, 2
    A = random_columns(rng, (3, S))
    B = random_columns(rng, (S, S, U))
    C = rng.normal(scale=2, size=3)
    root = random_columns(rng, (S,))
    gamma = 2.0
    model = pp_aif.GenerativeModel([A], [B], C=[C])
    log_preference = np.log(_softmax(C))
    tolerance = {"atol": 2e-6, "rtol": 0, "reason": "pymdp's search tree is float32"}
    with jax.enable_x64(False):
        agent = Agent(
            [jnp.asarray(A, dtype=jnp.float32)[None]],
            [jnp.asarray(B, dtype=jnp.float32)[None]],
            C=[jnp.asarray(log_preference, dtype=jnp.float32)[None]],
            policies=jnp.arange(U).reshape(U, 1, 1),
            batch_size=1,
            gamma=gamma,
        )
        qs = [jnp.asarray(root, dtype=jnp.float32)[None, None]]
        answers = []
        for depth, outcome_threshold in [(2, None), (3, None), (3, 0.2)]:
            search = si_policy_search(
                horizon=depth,
                max_nodes=512,
                max_branching=4,
                policy_prune_threshold=0.0,
                observation_prune_threshold=outcome_threshold or 0.0,
                entropy_stop_threshold=-1.0,
                gamma=gamma,
            )
            q_pi, _ = search(agent, qs)
            scores = run(model, root, depth, precision=gamma, outcome_threshold=outcome_threshold)
            ours = torch.softmax(-gamma * scores.G[0], -1)
            assert_close(ours, np.asarray(q_pi[0], dtype=np.float64), **tolerance)
            answers.append(ours)
            if outcome_threshold:  # the threshold pruned something here
                assert sum(scores.nodes) < sum(run(model, root, depth).nodes)
    # each setting's answer differs from the others by far more than the tolerance
    assert min((a - b).abs().max() for a, b in itertools.combinations(answers, 2)) > 1e-3

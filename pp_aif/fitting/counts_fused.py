"""The likelihood of agents that learn pA where they see their states, in numpy, with its
gradient by hand: the count recursion's fast path (``CountsLikelihood``) for NUTS.

Dimension symbols: B parameter rows (draws x chains), N subjects, K trials, T1 steps with an
action, S joint states, M modalities (O_m outcomes, O = prod_m O_m joint), U policy prefixes
of all steps (``predictions_from_each_state``), P policies of all steps side by side.

As ``pp_aif.fitting.plan_likelihood`` for the pD learner: NUTS calls the potential thousands
of times with a handful of rows, and as torch operations with autograd the bandit's likelihood
(100 trials) was some 800 operations a call; the same arithmetic in numpy, its derivatives
written out, is a few dozen. Every quantity is ``CountsLikelihood``'s (tested equal to 1e-10,
gradients too). Where the agent sees its states, each step's belief is the data's, and the
predicted joint states of every prefix are fixed: X (N, K, U, S). Per trial,

    pA_k     = kappa decay_k pA_0 + sum_{j<k} w_kj c_j           (only where pA_0 > 0)
               w_kj = eta (1 - omega)^(m_k - m_j - 1), decay_k = (1 - omega)^m_k
    A_k      = pA_k normalised;  W_k = wnorm(pA_k) where pA_0 > 0   (SPM's spm_wnorm)
    y        = X prod_m A_m,k  (the joint outcome of each prefix);  a_m = X A_m,k; w_m = X W_m,k
    per prefix: entropy H[y], ambiguity X . sum_m H[A_m,k(. | s)], pragmatic sum_m a_m . ln p~_m,
               novelty -sum_m a_m . w_m; each summed into its policies (grouping)
    score    = -(H - ambiguity) [epistemic] - novelty [novelty] + c (-pragmatic) [pragmatic]

then the action probabilities of ``plan_likelihood.actions_forward``. The counts' derivatives
in eta, omega and kappa are carried forward (they are closed forms in each), so the gradient
needs no pass over the trials.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import block_diag

from pp_aif.agent import policies_at
from pp_aif.fitting.plan_likelihood import (
    ActionLayout,
    _rows,
    _sum_last,
    actions_backward,
    actions_forward,
    weighted_value_and_gradient,
)
from pp_aif.ops.contractions import outer
from pp_aif.ops.efe import WNORM_FLOOR, predictions_from_each_state
from pp_aif.planning.efe import log_preferences

__all__ = ["CountsConstants", "counts_value_and_gradient"]


class CountsConstants:
    """What the fused count likelihood reads from a ``CountsLikelihood`` (a learner of pA
    only), as numpy arrays: X (N, K, U, S), grouping (U, P), each prefix's ln p~_m (U, O_m);
    state-major (each state's outcomes last): pA_0 (S, O_m) and where it is positive, the
    counts c_m (N, J, S O_m) and their running sums (N, K, S O_m) without forgetting; the
    present trials before each (N, K) and which are earlier (N, K, J)."""

    def __init__(self, likelihood):
        model, settings = likelihood.model, likelihood.settings
        N, K, T = likelihood.observations.shape[:3]
        T1 = T - 1
        self.layout = ActionLayout(model, settings, likelihood.actions.numpy())
        self.num_outcomes = tuple(model.num_outcomes)
        S = math.prod(model.num_states)
        beliefs = outer(*likelihood.marginals, batch_dims=3).reshape(N, K, T, S)
        states, groups, preferences = [], [], [[] for _ in self.num_outcomes]
        for t in range(T1):
            policies, _ = policies_at(model, settings, t, T)
            predictions = predictions_from_each_state(model.transition_by_action, policies)
            lp = log_preferences(model, t, policies.shape[1])
            members = []
            for tau, (predicted, member) in enumerate(predictions):
                # each row's prediction from its own belief: (N, K, U_tau, S)
                flat = predicted.reshape(S, -1)
                states.append((beliefs[:, :, t] @ flat).reshape(N, K, member.shape[0], S))
                members.append(member)
                for m, log_p in enumerate(lp):
                    preferences[m].append(log_p[tau].expand(member.shape[0], -1))
            groups.append(np.concatenate([x.numpy() for x in members]))
        self.X = np.ascontiguousarray(np.concatenate([x.numpy() for x in states], 2))
        self.grouping = block_diag(*groups)
        self.preferences = [np.concatenate([x.numpy() for x in p]) for p in preferences]
        # the counts state-major, (S, O_m): each state's outcomes last, where numpy sums fast
        self.initial = [p.reshape(p.shape[0], -1).T.numpy() for p in model.pA]  # (S, O_m)
        self.learned = [p > 0 for p in self.initial]
        self.counts = [
            c.reshape(N, K, c.shape[2], -1).transpose(2, 3).reshape(N, K, -1).numpy()
            for c in likelihood.counts["pA"]
        ]  # (N, J, S O_m), absent trials 0
        self.before = likelihood.before.numpy()  # (N, K)
        self.earlier = likelihood.earlier.numpy()  # (N, K, J)
        self.exponent = (self.before[:, :, None] - self.before[:, None, :] - 1) * self.earlier
        self.running = [np.einsum("nkj,nje->nke", self.earlier, c) for c in self.counts]
        # (the data's counts are 0 where pA_0 is: an outcome the model forbids is refused)
        self.running = [
            np.where(m.reshape(-1), r, 0.0) for m, r in zip(self.learned, self.running, strict=True)
        ]
        # every prefix predicts one state for sure (deterministic B), under one preference per
        # modality: then y is a product, H[y] = ambiguity (no epistemic value), and every term
        # is a per-state quantity of A picked by the prefix's state (``_forward_certain``)
        self.certain = bool(
            np.isclose(self.X.max(-1), 1.0).all() and ((self.X > 0).sum(-1) == 1).all()
        ) and all(bool((p == p[:1]).all()) for p in self.preferences)
        self.epistemic = settings.lesions.epistemic
        self.pragmatic = settings.lesions.pragmatic
        self.novelty = settings.lesions.novelty


def _learned_counts(const: CountsConstants, eta, omega, kappa, wanted):
    """Each trial's pA_m (B, N, K, S O_m) and its tangents in the wanted of (eta, omega,
    kappa): M lists of (B, N, K, S O_m)."""
    remembers = not wanted[1] and not omega.any()
    out = []
    if remembers:  # no forgetting: the running sums of the data's counts
        for p0, running in zip(const.initial, const.running, strict=True):
            flat = p0.reshape(-1)  # (0 where not learned, as are the running counts)
            value = kappa[..., None, None] * flat + eta[..., None, None] * running
            tangents = []
            if wanted[0]:
                tangents.append(running)
            if wanted[2]:
                tangents.append(flat)
            out.append((value, tangents))
        return out
    log_keep = np.log1p(-omega)[..., None, None]  # (B, N, 1, 1)
    weights = np.exp(const.exponent * log_keep) * const.earlier  # (B, N, K, J), without eta
    decay = np.exp(const.before * log_keep[..., 0])  # (B, N, K)
    slope = -1.0 / (1.0 - omega)  # d ln(1 - omega) / d omega
    for p0, learned, counts in zip(const.initial, const.learned, const.counts, strict=True):
        flat, mask = p0.reshape(-1), learned.reshape(-1)
        added = np.einsum("bnkj,nje->bnke", weights, counts)
        start = (decay * kappa[..., None])[..., None] * flat
        value = np.where(mask, start + eta[..., None, None] * added, flat)
        tangents = []
        if wanted[0]:
            tangents.append(np.where(mask, added, 0.0))
        if wanted[1]:
            moved = np.einsum("bnkj,nje->bnke", weights * const.exponent, counts)
            d = slope[..., None, None] * (
                const.before[..., None] * start + eta[..., None, None] * moved
            )
            tangents.append(np.where(mask, d, 0.0))
        if wanted[2]:
            tangents.append(np.where(mask, (decay[..., None] * flat), 0.0))
        out.append((value, tangents))
    return out


def _entropy_terms(x):
    positive = x > 0
    log_x = np.log(np.where(positive, x, 1.0))
    return -x * log_x, np.where(positive, -1.0 - log_x, 0.0)


def _normalised(const: CountsConstants, learned, B, N, K, S):
    """A_m and W_m (B, N, K, S, O_m), state-major, from the learned counts, with what their
    derivatives need (1 / sum_o pA, 1 / (pA + floor), 1 / sum_o (pA + floor))."""
    A, W, shapes = [], [], []
    for (pA, _), outcomes, mask in zip(learned, const.num_outcomes, const.learned, strict=True):
        p = pA.reshape(B, N, K, S, outcomes)
        inverse_total = 1.0 / _sum_last(p)[..., None]
        A.append(p * inverse_total)
        inverse = 1.0 / (p + WNORM_FLOOR)
        inverse_sum = 1.0 / _sum_last(p + WNORM_FLOOR)[..., None]
        W.append((inverse_sum - inverse) * mask)
        shapes.append((inverse_total, inverse, inverse_sum))
    return A, W, shapes


def _counts_backward(const, learned, A, shapes, d_A, d_W, wanted, B, N, K):
    """d eta, d omega, d kappa (B, N) from the gradients of A_m and W_m (B, N, K, S, O_m)."""
    zeros = np.zeros((B, N))
    d_theta = [zeros, zeros, zeros]
    for m, ((_, tangents), (inverse_total, inverse, inverse_sum)) in enumerate(
        zip(learned, shapes, strict=True)
    ):
        d_w = d_W[m] * const.learned[m]
        d_pA = d_w * inverse**2 - _sum_last(d_w)[..., None] * inverse_sum**2
        d_pA += (d_A[m] - _sum_last(d_A[m] * A[m])[..., None]) * inverse_total
        d_flat = d_pA.reshape(B, N, K, -1)
        found = iter(tangents)
        for j, flag in enumerate(wanted):
            if flag:
                d_theta[j] = d_theta[j] + _sum_last(d_flat * next(found), 2)
    return d_theta


def _learned_arrays(const: CountsConstants, theta, wanted):
    """What both paths start from: the rows' sizes, the learned counts with their tangents,
    A_m and W_m, and each state's H[A_m(. | s)] summed over modalities with the slopes."""
    eta, omega, kappa = theta[:3]
    B, N = eta.shape
    K, U, S = const.X.shape[1:]
    learned = _learned_counts(const, eta, omega, kappa, wanted)
    A, W, shapes = _normalised(const, learned, B, N, K, S)
    column_entropy, slope_A = zip(*[_entropy_terms(a) for a in A], strict=True)
    ambiguity = sum(_sum_last(e) for e in column_entropy)  # (B, N, K, S)
    return (B, N, K, U, S), learned, A, W, shapes, ambiguity, slope_A


def _scored(const: CountsConstants, theta, parts, sizes):
    """ln p of the chosen actions (B, N, K, T1) from each policy's parts (rows, 4, P): H[y],
    ambiguity, pragmatic value, novelty; or None (``actions_forward``). With the pragmatic
    part of the score, and the actions' cache."""
    gamma, alpha, c = theta[3:]
    B, N, K = sizes[:3]
    base = np.zeros_like(parts[:, 0])
    if const.epistemic:
        base = base - (parts[:, 0] - parts[:, 1])
    if const.novelty:
        base = base - parts[:, 3]
    part = -parts[:, 2] if const.pragmatic else np.zeros_like(base)
    found = actions_forward(
        const.layout, base + _rows(c, K) * part, _rows(gamma, K), _rows(alpha, K), B
    )
    if found is None:
        return None
    total, actions = found
    return total.reshape(B, N, K, -1), part, actions


def _parts_backward(const: CountsConstants, theta, actions, part, grad, sizes):
    """(d parts (rows, 4, P), and d gamma, d alpha, d c per subject (B, N)) from d ln p of
    the chosen actions."""
    gamma, alpha, c = theta[3:]
    B, N, K = sizes[:3]
    rows = B * N * K
    d_score, d_gamma, d_alpha = actions_backward(
        const.layout, actions, grad.reshape(rows, -1), _rows(gamma, K), _rows(alpha, K)
    )
    d_parts = np.zeros((rows, 4, d_score.shape[1]))
    if const.epistemic:
        d_parts[:, 0], d_parts[:, 1] = -d_score, d_score
    if const.novelty:
        d_parts[:, 3] = -d_score
    if const.pragmatic:
        d_parts[:, 2] = -_rows(c, K) * d_score
    precisions = (d_gamma, d_alpha, _sum_last(d_score * part))
    return d_parts, [x.reshape(B, N, K).sum(-1) for x in precisions]


def _forward_certain(const: CountsConstants, theta, wanted):
    """``_forward`` where every prefix predicts one state (``CountsConstants.certain``): each
    term a per-state quantity picked by the prefix's state, and H[y] = ambiguity."""
    sizes, learned, A, W, shapes, ambiguity, slope_A = _learned_arrays(const, theta, wanted)
    B, N, K = sizes[:3]
    per_state = np.stack(
        [
            ambiguity,
            sum(a @ lp[0] for lp, a in zip(const.preferences, A, strict=True)),  # pragmatic
            -sum(_sum_last(a * w) for a, w in zip(A, W, strict=True)),  # novelty
        ],
        -1,
    )  # (B, N, K, S, 3)
    parts = np.swapaxes(const.X @ per_state, -1, -2) @ const.grouping  # (B, N, K, 3, P)
    found = _scored(const, theta, parts.reshape(B * N * K, 3, -1)[:, [0, 0, 1, 2]], sizes)
    if found is None:
        return None
    total, part, actions = found
    return total, (sizes, learned, A, W, shapes, slope_A, part, actions)


def _backward_certain(const: CountsConstants, theta, state, grad, wanted):
    sizes, learned, A, W, shapes, slope_A, part, actions = state
    B, N, K, U = sizes[:4]
    d_parts, precisions = _parts_backward(const, theta, actions, part, grad, sizes)
    d_parts = np.stack([d_parts[:, 0] + d_parts[:, 1], d_parts[:, 2], d_parts[:, 3]], 1)
    d_prefix = (d_parts @ const.grouping.T).reshape(B, N, K, 3, U)
    d_state = np.swapaxes(np.swapaxes(const.X, -1, -2) @ np.swapaxes(d_prefix, -1, -2), -1, -2)
    d_ambiguity, d_pragmatic, d_novelty = (x[..., None] for x in np.moveaxis(d_state, -2, 0))
    d_A = [
        d_ambiguity * slope + d_pragmatic * lp[0] - d_novelty * w
        for lp, w, slope in zip(const.preferences, W, slope_A, strict=True)
    ]
    d_W = [-d_novelty * a for a in A]
    d_theta = _counts_backward(const, learned, A, shapes, d_A, d_W, wanted, B, N, K)
    return (*d_theta, *precisions)


def _forward(const: CountsConstants, theta, wanted):
    sizes, learned, A, W, shapes, per_state, slope_A = _learned_arrays(const, theta, wanted)
    B, N, K, U, S = sizes
    joint = A[0]
    for a in A[1:]:  # prod_m A_m over the joint outcome: (B, N, K, S, O)
        joint = (joint[..., :, None] * a[..., None, :]).reshape(B, N, K, S, -1)
    X = const.X
    y = X @ joint  # (B, N, K, U, O)
    entropy_y, slope_y = _entropy_terms(y)
    entropy = _sum_last(entropy_y)  # (B, N, K, U)
    ambiguity = (X @ per_state[..., None])[..., 0]
    predicted = [X @ a for a in A]  # (B, N, K, U, O_m)
    weighted = [X @ w for w in W]
    pragmatic = sum(_sum_last(p * lp) for p, lp in zip(predicted, const.preferences, strict=True))
    novelty = -sum(_sum_last(p * w) for p, w in zip(predicted, weighted, strict=True))
    parts = np.stack([entropy, ambiguity, pragmatic, novelty], -2) @ const.grouping
    found = _scored(const, theta, parts.reshape(B * N * K, 4, -1), sizes)
    if found is None:
        return None
    total, part, actions = found
    return total, (
        sizes,
        learned,
        A,
        W,
        shapes,
        slope_y,
        slope_A,
        predicted,
        weighted,
        part,
        actions,
    )


def _backward(const: CountsConstants, theta, state, grad, wanted):
    sizes, learned, A, W, shapes, slope_y, slope_A, predicted, weighted, part, actions = state
    B, N, K, U = sizes[:4]
    d_parts, precisions = _parts_backward(const, theta, actions, part, grad, sizes)
    d_prefix = (d_parts @ const.grouping.T).reshape(B, N, K, 4, U)
    d_entropy, d_ambiguity, d_pragmatic, d_novelty = np.moveaxis(d_prefix, -2, 0)
    Xt = np.swapaxes(const.X, -1, -2)  # (N, K, S, U)
    d_joint = Xt @ (d_entropy[..., None] * slope_y)  # (B, N, K, S, O)
    d_A = _joint_backward(d_joint, A)
    d_per_state = (Xt @ d_ambiguity[..., None])[..., 0]  # (B, N, K, S)
    d_W = []
    for m, (lp, p, w) in enumerate(zip(const.preferences, predicted, weighted, strict=True)):
        d_predicted = d_pragmatic[..., None] * lp - d_novelty[..., None] * w
        d_A[m] = d_A[m] + d_per_state[..., None] * slope_A[m] + Xt @ d_predicted
        d_W.append(Xt @ (-d_novelty[..., None] * p))
    d_theta = _counts_backward(const, learned, A, shapes, d_A, d_W, wanted, B, N, K)
    return (*d_theta, *precisions)


def _joint_backward(d_joint, A):
    """The gradient of each A_m (..., S, O_m) from that of their product over the joint
    outcome (..., S, O)."""
    sizes = [a.shape[-1] for a in A]
    M = len(A)
    shaped = d_joint.reshape(*d_joint.shape[:-1], *sizes)
    out = []
    for m in range(M):
        weighted = shaped
        for g, a in enumerate(A):
            if g != m:
                weighted = weighted * a.reshape(
                    *a.shape[:-1], *[1] * g, sizes[g], *[1] * (M - g - 1)
                )
        others = tuple(-M + g for g in range(M) if g != m)
        out.append(np.add.reduce(weighted, others) if others else weighted)
    return out


def counts_value_and_gradient(const: CountsConstants, theta, wanted, weights):
    """As ``plan_likelihood.numpy_value_and_gradient``, for the count likelihood: (B, N) and
    the 6 gradients, or None where an action's probability is too small for probability
    space."""
    return _value_and_gradient(const, theta, wanted, weights)


def _value_and_gradient(const: CountsConstants, theta, wanted, weights):
    forward, backward = (
        (_forward_certain, _backward_certain) if const.certain else (_forward, _backward)
    )
    return weighted_value_and_gradient(forward, backward, const, theta, wanted, weights)

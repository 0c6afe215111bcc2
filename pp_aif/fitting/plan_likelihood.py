"""The likelihood of a pD learner under a ``LinearPlan``, in numpy, with its adjoint by hand.

Dimension symbols: B parameter rows (draws x chains), N subjects, K trials, T steps (T1 = T-1
with an action), F factors (S = prod_f S_f joint states), P_t policies at step t, U_f controls,
R_t reachable (prefix, outcome) rows of step t's EFE maps.

NUTS calls the potential thousands of times with a handful of rows, so a call's cost is the
number of operations, not their size: as torch operations with autograd, the likelihood of
SPM's T-maze learner (50 trials) was about 150 operations forward and as many backward, some
5 ms. The same arithmetic in numpy, forward and its reverse-mode adjoint written out, costs
about 1.4 ms with the gradient for 4 chains (``docs/benchmarks.md``). Every quantity is the one of
``pp_aif.fitting.likelihood`` (``BehaviourLikelihood`` with its LinearPlan, and
``action_log_probabilities``), so the tests hold the two equal to 1e-10, gradients too.

Forward, for theta = (eta, omega, kappa, gamma, alpha, c), each (B, N):

    H_k          counts before trial k (``count_history.numpy_history``); D_k = H_k / sum H_k
    Q_k          prod_f D_k,f over the joint state (certain factors one-hot)
    q_k,t        filters[n, k, t] Q_k, normalised (the forward filter)
    Q'_k,t       prod_f of q_k,t's factor marginals (the EFE kernel's mean-field belief)
    y            Q' W_t^T;  ent = (-y ln y) G_t;  amb, prag = Q' L_t  (``LinearEFE``)
    score        (amb - ent) [epistemic] + c (-prag) [pragmatic]
    ln q(pi)     log_softmax(ln E - gamma score)
    ln m_f(u)    ln sum_{pi: pi_0,f = u} q(pi)
    ln p(u_f)    log_softmax(alpha ln m_f)(u_f), summed over the factors with a choice

and backward the chain rule through each line in turn, ending in the count recursion's adjoint.
Second derivatives (the grid's Laplace approximation) are taken through the torch path: a
backward pass that must be differentiable calls it and differentiates that.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.linalg import block_diag
from torch import Tensor

from pp_aif.agent import policies_at
from pp_aif.fitting.count_history import (
    QUIET,
    numpy_adjoint,
    numpy_history,
    single_factor_tangents,
)

__all__ = ["PlanConstants", "plan_log_likelihood"]


class ActionLayout:
    """The policies of a trial's T1 steps side by side, for the action probabilities of every
    step at once: P = sum_t P_t policies; log_prior (P,); starts (T1,), each step's first
    policy, and step (P,), each policy's step; member[f] (P, T1 U_f), 1 where the policy starts
    with u at its step, for the factors with a choice; actions (N, K, T1, F)."""

    def __init__(self, model, settings, actions: np.ndarray):
        T1 = actions.shape[2]
        policies = [policies_at(model, settings, t, T1 + 1) for t in range(T1)]
        counts = [pi.shape[0] for pi, _ in policies]
        self.T1, self.P, self.actions = T1, sum(counts), actions
        self.log_prior = np.concatenate([prior.numpy() for _, prior in policies])
        self.starts = np.cumsum([0, *counts[:-1]])
        self.step = np.repeat(np.arange(T1), counts)
        self.member = {}
        for f, U in enumerate(model.num_controls):
            if U > 1:
                self.member[f] = block_diag(
                    *[
                        (pi[:, 0, f, None].numpy() == np.arange(U)).astype(float)
                        for pi, _ in policies
                    ]
                )
        self._chosen = {}

    def chosen(self, B: int, f: int) -> np.ndarray:
        """Where the chosen controls of factor f lie among the rows' (rows, T1 U_f) action
        values flattened, for B copies of the data's rows: int (B N K, T1)."""
        if (B, f) not in self._chosen:
            U = self.member[f].shape[1] // self.T1
            at = self.actions[..., f].reshape(-1, self.T1) + U * np.arange(self.T1)
            at = np.tile(at, (B, 1))
            self._chosen[(B, f)] = at + self.T1 * U * np.arange(at.shape[0])[:, None]
        return self._chosen[(B, f)]


def actions_forward(layout: ActionLayout, score, gamma_r, alpha_r, B: int):
    """ln p of the chosen actions (rows, T1) from the policies' scores (rows, P) and the rows'
    precisions (rows, 1): q(pi) = softmax(ln E - gamma score) per step, m_f(u) its marginal over
    the first actions, ln p = log_softmax(alpha ln m_f). (total, cache) or None where an action's
    q is too small for probability space."""
    rows = score.shape[0]
    log_q = _segments(layout.log_prior - gamma_r * score, layout)
    q = np.exp(log_q)
    total = np.zeros((rows, layout.T1))
    per_factor = []
    for f, member in layout.member.items():
        marginal = q @ member  # (rows, T1 U): each step's actions' q
        if marginal.min() < _SMALLEST_MARGINAL:  # (an action of q(pi) ~ e^-576 or less)
            return None
        log_m = np.log(marginal)
        scaled = (alpha_r * log_m).reshape(rows, layout.T1, -1)
        scaled = scaled - scaled.max(-1, keepdims=True)
        log_p = (scaled - np.log(_sum_last(np.exp(scaled)))[..., None]).reshape(rows, -1)
        chosen = layout.chosen(B, f)
        total += log_p.reshape(-1)[chosen]
        per_factor.append((member, chosen, log_m, marginal, np.exp(log_p)))
    return total, (score, q, per_factor)


def actions_backward(layout: ActionLayout, cache, g, gamma_r, alpha_r):
    """(d score (rows, P), d gamma (rows,), d alpha (rows,)) from d total (rows, T1)."""
    score, q, per_factor = cache
    rows, T1 = g.shape
    d_alpha = np.zeros(rows)
    d_log_q = np.zeros_like(q)
    for member, chosen, log_m, marginal, p in per_factor:
        d_scaled = -(p.reshape(rows, T1, -1) * g[..., None]).reshape(rows, -1)
        d_scaled.reshape(-1)[chosen] += g  # (each row's chosen controls, once a step)
        d_alpha += _sum_last(d_scaled * log_m)
        # d ln m(u) / d ln q(pi) = q(pi) / m(u) for the policies that start with u
        d_log_q += q * ((alpha_r * d_scaled / marginal) @ member.T)
    if len(layout.starts) == 1:
        d_logits = d_log_q - q * _sum_last(d_log_q)[:, None]
    else:
        d_logits = d_log_q - q * np.add.reduceat(d_log_q, layout.starts, 1)[:, layout.step]
    return -gamma_r * d_logits, -_sum_last(d_logits * score), d_alpha


class PlanConstants:
    """What the fused likelihood reads from the data, the model and the plan, as numpy arrays.

    The T1 steps of a trial are laid side by side, so that each operation covers all of them:
    a row's beliefs are (T1 S) wide, and the steps' maps are block diagonal.

    filters (N, K, T1, S, L): the plan's filters at the L joint states the learnable factors
    range over (the others certain), in the order of their outer product; W (T1 S, R),
    G (R, P), L (T1 S, 2 P): the steps' ``LinearEFE`` maps (P = sum_t P_t policies); layout:
    the steps' policies and the chosen actions (``ActionLayout``); marginal (S, sum S_f) and
    spread (sum S_f, F S): the factor marginals of a joint and each marginal back over the
    joint; kept (N, K); evidence (N, K, S_l..) and evidence_t (K, N, S_l..), the learnable
    factors' evidence, trial-major in the second; priors: their pD. Where the task starts new
    games, ``games`` (``count_history.GameRows``): kept and the evidence are then the games'
    rows, (N G, Lg) and (N G, Lg, S_l..).
    """

    def __init__(self, model, settings, plan, evidence, actions, present, games=None):
        N, K, T1 = actions.shape[:3]
        F, num_states = model.num_factors, tuple(model.num_states)
        S = math.prod(num_states)
        learnable, certain = model.learnable_initial_factors
        grid = np.arange(S).reshape(num_states)
        columns = grid[tuple(slice(None) if c is None else c for c in certain)].reshape(-1)
        self.filters = np.ascontiguousarray(plan.filters[:, :, :T1].numpy()[..., columns])
        self.layout = ActionLayout(model, settings, actions.numpy())
        self.W = block_diag(*[m.outcomes.numpy().T for m in plan.efe])
        self.G = block_diag(*[m.grouping.numpy() for m in plan.efe])
        halves = [np.split(m.linear.numpy(), 2, 1) for m in plan.efe]  # ambiguity, pragmatic
        self.L = np.concatenate([block_diag(*[h[i] for h in halves]) for i in (0, 1)], 1)
        self.P = self.layout.P
        self.F = F
        self.marginal = np.concatenate(
            [(grid.reshape(-1)[:, None] // math.prod(num_states[f + 1 :]) % num_states[f]
              == np.arange(num_states[f])).astype(float) for f in range(F)], 1
        )  # fmt: skip
        self.spread = block_diag(
            *[self.marginal[:, sum(num_states[:f]) : sum(num_states[: f + 1])].T for f in range(F)]
        )
        self.kept = np.ones((N, K)) if present is None else present.numpy().astype(np.float64)
        index = tuple(slice(None) if s is None else s for s in certain)
        self.evidence = evidence[(Ellipsis, *index)].numpy()
        self.games = games  # where the counts start again: the recursion's rows are games
        if games is not None:
            self.kept = games.kept(self.kept)  # (N G, Lg)
            self.evidence = games.split(self.evidence, -len(learnable) - 1)
        self.evidence_t = np.ascontiguousarray(np.moveaxis(self.evidence, 1, 0))
        self.priors = [model.pD[f].numpy() for f in learnable]
        self.epistemic = settings.lesions.epistemic
        self.pragmatic = settings.lesions.pragmatic


def _sum_last(x: np.ndarray, axes: int = 1) -> np.ndarray:
    """x summed over its last ``axes`` axes. numpy's reduction over a short last axis runs an
    inner loop of a few elements per row (26 us for (400, 4, 4)); einsum's sum is a third of
    that, though slower for a few numbers (the count recursion's steps)."""
    if x.size <= 64:
        return np.add.reduce(x, tuple(range(-axes, 0)))
    return np.einsum("..." + "ij"[:axes] + "->...", x)


def _rows(x: np.ndarray, K: int) -> np.ndarray:
    """A parameter (B, N) as one value per row (B N K, 1)."""
    return np.repeat(x.reshape(-1), K)[:, None]


def _outer(factors: list[np.ndarray]) -> np.ndarray:
    """prod_f x_f over the joint state, flattened: (..., S) from F arrays (..., S_f)."""
    joint = factors[0]
    for x in factors[1:]:
        joint = (joint[..., :, None] * x[..., None, :]).reshape(*joint.shape[:-1], -1)
    return joint


def _outer_backward(grad: np.ndarray, factors: list[np.ndarray]) -> list[np.ndarray]:
    """d/dx_f of sum(grad * _outer(factors)), (..., S_f) each."""
    sizes = [x.shape[-1] for x in factors]
    out = []
    for f in range(len(factors)):
        before, after = math.prod(sizes[:f]), math.prod(sizes[f + 1 :])
        weighted = grad.reshape(*grad.shape[:-1], before, sizes[f], after)
        if f > 0:
            weighted = weighted * _outer(factors[:f])[..., :, None, None]
        if f < len(factors) - 1:
            weighted = weighted * _outer(factors[f + 1 :])[..., None, None, :]
        out.append(np.add.reduce(np.add.reduce(weighted, -1), -2))
    return out


def _segments(x: np.ndarray, const) -> np.ndarray:
    """log_softmax of (rows, P) within each step's policies."""
    if len(const.starts) == 1:  # one step
        shifted = x - x.max(-1, keepdims=True)
        return shifted - np.log(_sum_last(np.exp(shifted)))[:, None]
    shifted = x - np.maximum.reduceat(x, const.starts, 1)[:, const.step]
    return shifted - np.log(np.add.reduceat(np.exp(shifted), const.starts, 1))[:, const.step]


def _forward(const: PlanConstants, theta: list[np.ndarray], wanted=(False,) * 3):
    """(ln p of the chosen actions (B, N, K, T1), what the adjoint needs), or None where a
    filtered normaliser is below the filter's threshold for leaving probability space or an
    action's probability under q(pi) is too small for probability space.
    wanted: which of (eta, omega, kappa) the adjoint will differentiate (with one learnable
    factor, their tangents are carried forward)."""
    eta, omega, kappa, gamma, alpha, c = theta
    B, N = eta.shape
    K, T1 = const.filters.shape[1:3]
    S = len(const.marginal)
    tangents = None
    games = const.games
    learning = (
        (eta, omega, kappa) if games is None else tuple(map(games.repeat, (eta, omega, kappa)))
    )
    if len(const.priors) == 1:
        history, tangents = single_factor_tangents(
            *learning, const.evidence_t, const.kept, const.priors[0], wanted
        )
        history = [history]
    elif const.priors:
        history = numpy_history(*learning, const.evidence, const.kept, const.priors)
    else:
        history = [np.ones((B, N, K, 1))]
    own_rows = history  # the recursion's own rows (the games', where there are games)
    if games is not None and const.priors:
        history = [games.join(h, -2) for h in history]
        tangents = None if tangents is None else games.join(tangents, -2)
    totals = [_sum_last(h)[..., None] for h in history]
    beliefs = [h / z for h, z in zip(history, totals, strict=True)]
    start = _outer(beliefs)  # (B, N, K, L): over the learnable factors' joint states
    unnormalised = (const.filters @ start[:, :, :, None, :, None])[..., 0]  # (B, N, K, T1, S)
    normaliser = _sum_last(unnormalised)[..., None]
    if normaliser.min() < SMALLEST_NORMALISER:
        return None
    filtered = unnormalised / normaliser
    rows = B * N * K
    if const.F > 1:  # the product of the factor marginals, by two products with 0/1 matrices
        spread = ((filtered @ const.marginal) @ const.spread).reshape(B, N, K, T1, const.F, S)
        belief = np.multiply.reduce(spread, -2)
    else:
        spread, belief = None, filtered
    X = belief.reshape(rows, T1 * S)
    y = X @ const.W  # (rows, R): every step's predicted outcomes
    positive = y > 0
    log_y = np.log(np.where(positive, y, 1.0))
    entropy = (-y * log_y) @ const.G  # (rows, P)
    linear = X @ const.L
    P = const.P
    base = linear[:, :P] - entropy if const.epistemic else np.zeros_like(entropy)
    part = -linear[:, P:] if const.pragmatic else np.zeros_like(entropy)
    c_r, gamma_r, alpha_r = _rows(c, K), _rows(gamma, K), _rows(alpha, K)
    found = actions_forward(const.layout, base + c_r * part, gamma_r, alpha_r, B)
    if found is None:
        return None
    total, actions = found
    state = (history, tangents, totals, beliefs, normaliser, filtered, spread, X, positive)
    state += (log_y, part, actions, own_rows)
    return total.reshape(B, N, K, T1), state


def _backward(const: PlanConstants, theta, state, grad: np.ndarray, wanted=(True,) * 3):
    """dL/dtheta (6 arrays (B, N)) from dL/d(ln p of the chosen actions) (B, N, K, T1)."""
    eta, omega, kappa, gamma, alpha, c = theta
    B, N = eta.shape
    K, T1 = const.filters.shape[1:3]
    S = len(const.marginal)
    rows = B * N * K
    history, tangents, totals, beliefs, normaliser, filtered, spread, X, positive = state[:9]
    log_y, part, actions, rows_history = state[9:]
    c_r, gamma_r, alpha_r = _rows(c, K), _rows(gamma, K), _rows(alpha, K)
    d_score, d_gamma, d_alpha = actions_backward(
        const.layout, actions, grad.reshape(rows, T1), gamma_r, alpha_r
    )
    d_c = _sum_last(d_score * part)
    P = const.P
    d_linear = np.zeros((rows, 2 * P))
    d_X = np.zeros((rows, T1 * S))
    if const.epistemic:
        d_linear[:, :P] = d_score  # ambiguity
        d_X += (np.where(positive, -1.0 - log_y, 0.0) * (-d_score @ const.G.T)) @ const.W.T
    if const.pragmatic:
        d_linear[:, P:] = -c_r * d_score
    d_X += d_linear @ const.L.T
    d_belief = d_X.reshape(B, N, K, T1, S)
    if spread is not None:  # through the product of the marginals
        others = np.empty_like(spread)
        for f in range(const.F):
            others[..., f, :] = np.multiply.reduce(np.delete(spread, f, -2), -2)
        d_spread = (d_belief[..., None, :] * others).reshape(*d_belief.shape[:-1], -1)
        d_filtered = (d_spread @ const.spread.T) @ const.marginal.T
    else:
        d_filtered = d_belief
    d_unnormalised = (d_filtered - _sum_last(d_filtered * filtered)[..., None]) / normaliser
    # the filters^T: the start's gradient (B, N, K, L)
    d_start = np.add.reduce(
        (np.swapaxes(const.filters, -1, -2) @ d_unnormalised[..., None])[..., 0], -2
    )
    zeros = np.zeros((B, N))
    d_eta = d_omega = d_kappa = zeros
    if const.priors:
        d_beliefs = _outer_backward(d_start, beliefs) if len(beliefs) > 1 else [d_start]
        d_history = [
            (d - _sum_last(d * b)[..., None]) / z
            for d, b, z in zip(d_beliefs, beliefs, totals, strict=True)
        ]
        games = const.games
        if tangents is None:  # the adjoint over the recursion's rows (each game one, if any)
            d_rows, eta_r, omega_r = d_history, eta, omega
            if games is not None:
                d_rows = [games.scatter(d, -2) for d in d_history]
                eta_r, omega_r = games.repeat(eta), games.repeat(omega)
            found = numpy_adjoint(
                rows_history, d_rows, eta_r, omega_r, const.evidence, const.kept, const.priors
            )
            if games is not None:
                found = [games.sum_games(d) for d in found]
            d_eta, d_omega, d_kappa = found
        else:  # forward mode: each wanted parameter's tangent, in order
            found = iter(_sum_last(d_history[0] * tangent, 2) for tangent in tangents)
            d_eta, d_omega, d_kappa = (next(found) if w else zeros for w in wanted)

    def per_subject(x):
        return x.reshape(B, N, K).sum(-1)

    return d_eta, d_omega, d_kappa, per_subject(d_gamma), per_subject(d_alpha), per_subject(d_c)


#: the forward filter's own threshold for leaving probability space (``ops.hmm.forward_filter``)
SMALLEST_NORMALISER = float(np.sqrt(np.finfo(np.float64).tiny))
#: below it an action's probability under q(pi) is left to the torch route's log-sum-exp (the
#: sum of the q(pi) keeps its relative precision well above the subnormal range, 2.2e-308)
_SMALLEST_MARGINAL = 1e-250


class _PlanLikelihood(torch.autograd.Function):
    """The fused likelihood as one autograd node (see the module docstring)."""

    @staticmethod
    def forward(ctx, const, torch_path, *theta):
        values = [x.detach().numpy() for x in theta]
        ctx.wanted = tuple(ctx.needs_input_grad[2:5])  # (eta, omega, kappa)
        with np.errstate(**QUIET):
            found = _forward(const, values, ctx.wanted)
        ctx.torch_path = torch_path
        ctx.save_for_backward(*theta)
        if found is None:  # the filter leaves probability space: the torch path, recorded
            with torch.enable_grad():
                leaves = [x.detach().requires_grad_(True) for x in theta]
                output = torch_path(*leaves)
            ctx.recorded = (leaves, output)
            return output.detach()
        ctx.recorded = None
        ctx.const, ctx.values, ctx.state = const, values, found[1]
        return torch.from_numpy(found[0])

    @staticmethod
    def backward(ctx, grad):
        theta = ctx.saved_tensors
        wanted = [x.requires_grad for x in theta]
        if torch.is_grad_enabled():  # a differentiable backward: through the torch path
            with torch.enable_grad():
                output = ctx.torch_path(*theta)
                inputs = [x for x, w in zip(theta, wanted, strict=True) if w]
                found = iter(torch.autograd.grad(output, inputs, grad, create_graph=True))
            return (None, None, *[next(found) if w else None for w in wanted])
        if ctx.recorded is not None:
            leaves, output = ctx.recorded
            found = torch.autograd.grad(output, leaves, grad, allow_unused=True)
            return (None, None, *[g if w else None for g, w in zip(found, wanted, strict=True)])
        with np.errstate(**QUIET):
            found = _backward(ctx.const, ctx.values, ctx.state, grad.numpy(), ctx.wanted)
        return (
            None,
            None,
            *[
                torch.from_numpy(np.ascontiguousarray(g)) if w else None
                for g, w in zip(found, wanted, strict=True)
            ],
        )


def numpy_value_and_gradient(
    const: PlanConstants, theta: list[np.ndarray], wanted, weights: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """sum over trials and steps of weights * ln p of the chosen actions, (B, N), and its
    gradient in each of theta's 6 parameters (zeros where not ``wanted``), all in numpy; None
    where the filter leaves probability space. weights : (N, K, T1), e.g. the present trials."""
    return weighted_value_and_gradient(_forward, _backward, const, theta, wanted, weights)


def weighted_value_and_gradient(forward, backward, const, theta, wanted, weights):
    """sum of weights * ln p of the chosen actions (B, N) and the 6 gradients, by a fused
    route's forward and backward (numpy's warnings quiet); None where forward declines. With
    nothing ``wanted``, the value alone (gradients None: the backward pass is skipped)."""
    with np.errstate(**QUIET):
        found = forward(const, theta, tuple(wanted[:3]))
        if found is None:
            return None
        value, state = found
        grad = np.broadcast_to(weights, value.shape)
        if not any(wanted):
            return _sum_last(value * grad, 2), [None] * len(wanted)
        gradients = backward(const, theta, state, grad, tuple(wanted[:3]))
        return _sum_last(value * grad, 2), list(gradients)


#: the fused likelihoods' parameters, in their order
FUSED_ORDER = ("learning_rate", "forgetting", "concentration", "gamma", "alpha", "preference")


def fused_value_and_gradient(
    route, const, defaults: dict, actions_shape, theta: dict, present, gradient: bool = True
):
    """(sum of ln p of the present chosen actions (B, N), {name: its gradient (B, N)}) for
    theta {name: (B, N) numpy} by a fused route (``numpy_value_and_gradient`` here, or
    ``counts_fused.counts_value_and_gradient``), the other parameters at ``defaults``; None
    where the route declines the point. present : float (N, K) or None; gradient : False for
    the value alone (the gradients None, about half the time)."""
    first = next(iter(theta.values()))
    values = [
        theta[name] if name in theta else np.full(first.shape, defaults[name])
        for name in FUSED_ORDER
    ]
    N, K, T1 = actions_shape[:3]
    weights = np.ones((N, K, T1)) if present is None else np.repeat(present[..., None], T1, -1)
    wanted = [gradient and name in theta for name in FUSED_ORDER]
    found = route(const, values, wanted, weights)
    if found is None:
        return None
    total, gradients = found
    return total, dict(zip(FUSED_ORDER, gradients, strict=True))


def plan_log_likelihood(
    const: PlanConstants, theta: list[Tensor], torch_path: Callable[..., Tensor]
) -> Tensor:
    """ln p of the chosen actions (B, N, K, T1) from theta = (eta, omega, kappa, gamma, alpha,
    c), each (B, N) float64 on the CPU; ``torch_path(*theta)`` computes the same in torch
    operations (for second derivatives and the filter's log-space cases)."""
    return _PlanLikelihood.apply(const, torch_path, *theta)

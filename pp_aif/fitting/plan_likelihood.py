"""The likelihood of a pD learner under a ``LinearPlan``, in numpy, with its adjoint by hand.

Dimension symbols: B parameter rows (draws x chains), N subjects, K trials, T steps (T1 = T-1
with an action), F factors (S = prod_f S_f joint states), P_t policies at step t, U_f controls,
R_t reachable (prefix, outcome) rows of step t's EFE maps.

NUTS calls the potential thousands of times with a handful of rows, so a call's cost is the
number of operations, not their size: as torch operations with autograd, the likelihood of
SPM's T-maze learner (50 trials) was about 150 operations forward and as many backward, some
5 ms. The same arithmetic in numpy, forward and its reverse-mode adjoint written out, costs a
fraction of that (``docs/benchmarks.md``). Every quantity is the one of
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
from torch import Tensor

from pp_aif.agent import policies_at
from pp_aif.fitting.count_history import numpy_adjoint, numpy_history, single_factor_tangents

__all__ = ["PlanConstants", "plan_log_likelihood"]


class PlanConstants:
    """What the fused likelihood reads from the data, the model and the plan, as numpy arrays.

    filters (N, K, T1, S, S); steps: per step (W (R, S), G (R, P), L (S, 2P), ln E (P,),
    per factor with a choice (its index, log mask (P, U): 0 where the policy starts with u,
    -inf elsewhere)); actions (N, K, T1, F); kept (N, K); evidence (N, K, S_l..) of the
    learnable factors; priors: their pD; num_states, learnable (factor indices), certain
    (one-hot D of the other factors, or None); epistemic, pragmatic: the lesions.
    """

    def __init__(self, model, settings, plan, evidence, actions, present):
        N, K, T1 = actions.shape[:3]
        self.filters = plan.filters[:, :, :T1].numpy()
        self.steps = []
        for t, maps in enumerate(plan.efe):
            policies, log_prior = policies_at(model, settings, t, T1 + 1)
            first = policies[:, 0, :].numpy()
            self.steps.append(
                {
                    "W": maps.outcomes.numpy(),
                    "G": maps.grouping.numpy(),
                    "L": maps.linear.numpy(),
                    "P": maps.grouping.shape[1],
                    "log_prior": log_prior.numpy(),
                    "choices": [
                        (f, (first[:, f, None] == np.arange(U)).astype(np.float64))
                        for f, U in enumerate(model.num_controls)
                        if U > 1
                    ],
                }
            )
        self.actions = actions.numpy()
        self._chosen = {}
        self.kept = np.ones((N, K)) if present is None else present.numpy().astype(np.float64)
        learnable, certain = model.learnable_initial_factors
        self.learnable = learnable
        self.num_states = tuple(model.num_states)
        self.certain = [
            None if s is None else np.eye(S)[s]
            for s, S in zip(certain, self.num_states, strict=True)
        ]
        index = tuple(slice(None) if s is None else s for s in certain)
        self.evidence = evidence[(Ellipsis, *index)].numpy()
        self.priors = [model.pD[f].numpy() for f in learnable]
        self.epistemic = settings.lesions.epistemic
        self.pragmatic = settings.lesions.pragmatic

    def chosen(self, B: int, t: int, f: int) -> np.ndarray:
        """The chosen controls of factor f at step t for B copies of the data's rows:
        int (B N K,)."""
        key = (B, t, f)
        if key not in self._chosen:
            self._chosen[key] = np.tile(self.actions[:, :, t, f].reshape(-1), B)
        return self._chosen[key]


def _rows(x: np.ndarray, K: int) -> np.ndarray:
    """A parameter (B, N) as one value per row (B N K, 1)."""
    return np.repeat(x.reshape(-1), K)[:, None]


def _outer(factors: list[np.ndarray]) -> np.ndarray:
    """prod_f x_f over the joint state, flattened: (..., S) from F arrays (..., S_f)."""
    joint = factors[0]
    for x in factors[1:]:
        joint = (joint[..., :, None] * x[..., None, :]).reshape(*joint.shape[:-1], -1)
    return joint


def _split(array: np.ndarray, num_states, f: int) -> np.ndarray:
    """A flattened joint (..., S) as (..., before f, S_f, after f)."""
    before, after = math.prod(num_states[:f]), math.prod(num_states[f + 1 :])
    return array.reshape(*array.shape[:-1], before, num_states[f], after)


def _marginals(joint: np.ndarray, num_states) -> list[np.ndarray]:
    """Each factor's marginal (..., S_f) of a flattened joint (..., S)."""
    add = np.add.reduce
    return [add(add(_split(joint, num_states, f), -1), -2) for f in range(len(num_states))]


def _outer_backward(grad: np.ndarray, factors: list[np.ndarray], num_states, wanted) -> list:
    """d/dx_f of sum(grad * _outer(factors)) for f in ``wanted``: (..., S_f) each."""
    add = np.add.reduce
    out = []
    for f in wanted:
        weighted = _split(grad, num_states, f)
        if f > 0:
            weighted = weighted * _outer(factors[:f])[..., :, None, None]
        if f < len(num_states) - 1:
            weighted = weighted * _outer(factors[f + 1 :])[..., None, None, :]
        out.append(add(add(weighted, -1), -2))
    return out


def _marginals_backward(parts: list[np.ndarray], num_states) -> np.ndarray:
    """The gradient of a flattened joint (..., S) from its marginals' gradients (..., S_f)."""
    total = np.zeros((*parts[0].shape[:-1], math.prod(num_states)))
    for f, part in enumerate(parts):
        _split(total, num_states, f)[...] += part[..., None, :, None]
    return total


def _forward(const: PlanConstants, theta: list[np.ndarray], wanted=(False,) * 3):
    """(ln p of the chosen actions (B, N, K, T1), what the adjoint needs), or None where a
    filtered normaliser is below the filter's threshold for leaving probability space.
    wanted: which of (eta, omega, kappa) the adjoint will differentiate (with one learnable
    factor, their tangents are carried forward)."""
    eta, omega, kappa, gamma, alpha, c = theta
    B, N = eta.shape
    K, T1 = const.filters.shape[1:3]
    S = const.filters.shape[-1]
    tangents = None
    if len(const.priors) == 1:
        found = single_factor_tangents(
            eta, omega, kappa, const.evidence, const.kept, const.priors[0], wanted
        )
        history, tangents = [found[0]], found[1]
    elif const.priors:
        history = numpy_history(eta, omega, kappa, const.evidence, const.kept, const.priors)
    else:
        history = []
    totals = [np.add.reduce(h, -1)[..., None] for h in history]
    beliefs = [h / z for h, z in zip(history, totals, strict=True)]
    factors = []
    for f, one_hot in enumerate(const.certain):
        if one_hot is None:
            factors.append(beliefs[const.learnable.index(f)])
        else:
            factors.append(np.broadcast_to(one_hot, (B, N, K, one_hot.shape[0])))
    start = _outer(factors)  # (B, N, K, S)
    unnormalised = (const.filters @ start[:, :, :, None, :, None])[..., 0]  # (B, N, K, T1, S)
    normaliser = np.add.reduce(unnormalised, -1)[..., None]
    if normaliser.min() < _SMALLEST_NORMALISER:
        return None
    filtered = unnormalised / normaliser
    F = len(const.num_states)
    marginals = _marginals(filtered, const.num_states) if F > 1 else None
    belief = _outer(marginals) if F > 1 else filtered  # (B, N, K, T1, S)
    rows = B * N * K
    gamma_r = _rows(gamma, K)
    alpha_r = _rows(alpha, K)
    c_r = _rows(c, K)
    total = np.zeros((rows, T1))
    cache = []
    for t, step in enumerate(const.steps):
        X = belief[:, :, :, t].reshape(rows, S)
        y = X @ step["W"].T  # (rows, R)
        positive = y > 0
        log_y = np.log(np.where(positive, y, 1.0))
        entropy = (-y * log_y) @ step["G"]  # (rows, P)
        P = step["P"]
        linear = X @ step["L"]
        ambiguity, pragmatic = linear[:, :P], linear[:, P:]
        base = ambiguity - entropy if const.epistemic else np.zeros_like(entropy)
        part = -pragmatic if const.pragmatic else np.zeros_like(entropy)
        score = base + c_r * part
        logits = step["log_prior"] - gamma_r * score
        log_q = logits - logits.max(-1, keepdims=True)
        log_q = log_q - np.log(np.add.reduce(np.exp(log_q), -1))[:, None]
        q = np.exp(log_q)
        per_factor = []
        for f, member in step["choices"]:
            marginal = q @ member  # (rows, U): q of the policies that start with each u
            if marginal.min() < _SMALLEST_MARGINAL:  # (an action of q(pi) ~ e^-576 or less)
                return None
            log_m = np.log(marginal)
            scaled = alpha_r * log_m
            scaled = scaled - scaled.max(-1, keepdims=True)
            log_p = scaled - np.log(np.add.reduce(np.exp(scaled), -1))[:, None]
            chosen = const.chosen(B, t, f)
            total[:, t] += log_p[np.arange(rows), chosen]
            per_factor.append((member, chosen, log_m, marginal, np.exp(log_p)))
        cache.append((X, positive, log_y, part, score, q, per_factor))
    state = (history, tangents, totals, beliefs, factors, normaliser, filtered, marginals, cache)
    return total.reshape(B, N, K, T1), state


def _backward(const: PlanConstants, theta, state, grad: np.ndarray, wanted=(True,) * 3):
    """dL/dtheta (6 arrays (B, N)) from dL/d(ln p of the chosen actions) (B, N, K, T1)."""
    eta, omega, kappa, gamma, alpha, c = theta
    B, N = eta.shape
    K, T1 = const.filters.shape[1:3]
    S = const.filters.shape[-1]
    rows = B * N * K
    history, tangents, totals, beliefs, factors, normaliser, filtered, marginals, cache = state
    gamma_r = _rows(gamma, K)
    alpha_r = _rows(alpha, K)
    c_r = _rows(c, K)
    flat = grad.reshape(rows, T1)
    d_gamma, d_alpha, d_c = np.zeros(rows), np.zeros(rows), np.zeros(rows)
    d_belief = np.zeros((B, N, K, T1, S))
    for t, step in enumerate(const.steps):
        X, positive, log_y, part, score, q, per_factor = cache[t]
        g = flat[:, t : t + 1]
        d_log_q = np.zeros_like(q)
        for member, chosen, log_m, marginal, p in per_factor:
            d_scaled = -g * p
            d_scaled[np.arange(rows), chosen] += g[:, 0]
            d_alpha += np.add.reduce(d_scaled * log_m, -1)
            # d ln m(u) / d ln q(pi) = q(pi) / m(u) for the policies that start with u
            d_log_q += q * ((alpha_r * d_scaled / marginal) @ member.T)
        d_logits = d_log_q - q * np.add.reduce(d_log_q, -1)[:, None]
        d_gamma -= np.add.reduce(d_logits * score, -1)
        d_score = -gamma_r * d_logits
        d_c += np.add.reduce(d_score * part, -1)
        P = step["P"]
        d_linear = np.zeros((rows, 2 * P))
        d_X = np.zeros((rows, S))
        if const.epistemic:
            d_linear[:, :P] = d_score  # ambiguity
            d_y = np.where(positive, -1.0 - log_y, 0.0) * (-d_score @ step["G"].T)
            d_X += d_y @ step["W"]
        if const.pragmatic:
            d_linear[:, P:] = -c_r * d_score
        d_X += d_linear @ step["L"].T
        d_belief[:, :, :, t] = d_X.reshape(B, N, K, S)
    if marginals is not None:  # through the product of the marginals
        parts = _outer_backward(d_belief, marginals, const.num_states, range(len(marginals)))
        d_filtered = _marginals_backward(parts, const.num_states)
    else:
        d_filtered = d_belief
    d_unnormalised = (d_filtered - np.add.reduce(d_filtered * filtered, -1)[..., None]) / normaliser
    # filters^T: (N, K, T1, S, S) -> the start's gradient (B, N, K, S)
    d_start = np.add.reduce(
        (np.swapaxes(const.filters, -1, -2) @ d_unnormalised[..., None])[..., 0], -2
    )
    zeros = np.zeros((B, N))
    d_eta = d_omega = d_kappa = zeros
    if const.priors:
        d_beliefs = _outer_backward(d_start, factors, const.num_states, const.learnable)
        d_history = [
            (d - np.add.reduce(d * b, -1)[..., None]) / z
            for d, b, z in zip(d_beliefs, beliefs, totals, strict=True)
        ]
        if tangents is None:
            d_eta, d_omega, d_kappa = numpy_adjoint(
                history, d_history, eta, omega, const.evidence, const.kept, const.priors
            )
        else:  # forward mode: each wanted parameter's tangent, in order
            found = iter(np.add.reduce(d_history[0] * tangent, (-1, -2)) for tangent in tangents)
            d_eta, d_omega, d_kappa = (next(found) if w else zeros for w in wanted)

    def per_subject(x):
        return x.reshape(B, N, K).sum(-1)

    return d_eta, d_omega, d_kappa, per_subject(d_gamma), per_subject(d_alpha), per_subject(d_c)


#: the forward filter's own threshold for leaving probability space
_SMALLEST_NORMALISER = float(np.sqrt(np.finfo(np.float64).tiny))
#: below it an action's probability under q(pi) is left to the torch route's log-sum-exp (the
#: sum of the q(pi) keeps its relative precision well above the subnormal range, 2.2e-308)
_SMALLEST_MARGINAL = 1e-250


class _PlanLikelihood(torch.autograd.Function):
    """The fused likelihood as one autograd node (see the module docstring)."""

    @staticmethod
    def forward(ctx, const, torch_path, *theta):
        values = [x.detach().numpy() for x in theta]
        ctx.wanted = tuple(ctx.needs_input_grad[2:5])  # (eta, omega, kappa)
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
    found = _forward(const, theta, tuple(wanted[:3]))
    if found is None:
        return None
    value, state = found
    grad = np.broadcast_to(weights, value.shape)
    return np.add.reduce(value * grad, (-1, -2)), list(
        _backward(const, theta, state, grad, tuple(wanted[:3]))
    )


def plan_log_likelihood(
    const: PlanConstants, theta: list[Tensor], torch_path: Callable[..., Tensor]
) -> Tensor:
    """ln p of the chosen actions (B, N, K, T1) from theta = (eta, omega, kappa, gamma, alpha,
    c), each (B, N) float64 on the CPU; ``torch_path(*theta)`` computes the same in torch
    operations (for second derivatives and the filter's log-space cases)."""
    return _PlanLikelihood.apply(const, torch_path, *theta)

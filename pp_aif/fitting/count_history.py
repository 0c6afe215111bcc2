"""The pD recursion over trials, in numpy, with its adjoint written out: a fast path.

Dimension symbols: B rows (parameter draws x subjects... flattened by the caller, here N is
kept apart), N subjects, K trials, L learnable factors (S_i states each).

``pp_aif.fitting.likelihood.learned_initial_beliefs`` follows an agent that learns its
initial-state counts: before trial k the counts of each learnable factor are p_k,i (B, N, S_i),
p_0,i = kappa pD_i, and after it

    J_k     = (p_k,1 (x) ... (x) p_k,L) * lambda_k           (the unnormalised posterior of s_0)
    Z_k     = sum J_k
    r_k,i   = the factor-i marginal of J_k, / Z_k
    p_k+1,i = (1 - omega kept_k) p_k,i + eta kept_k r_k,i

with lambda_k the trial's evidence (fixed by the data) and kept_k whether the trial is present.
The recursion is K dependent steps of a few operations on tiny arrays. As torch operations with
autograd it costs about 45 us a step forward and as much again backward (dispatch, not
arithmetic: 4.7 ms of a 12 ms NUTS call for the T-maze's 50 trials); numpy's operations cost a
tenth of that. So ``count_history`` runs the forward recursion in numpy and its reverse-mode
adjoint by hand (below), as one autograd node.

The adjoint, with a_i = dL/dp_k+1,i carried backwards from a_i = 0 after the last trial and
g_k,i = dL/dp_k,i from the outputs:

    dL/d omega += -kept_k sum_i a_i . p_k,i          dL/d eta += kept_k sum_i a_i . r_k,i
    dL/dJ_k     = (eta kept_k / Z_k) (sum_i a_i expanded along axis i - sum_i a_i . r_k,i)
    a_i        <- (1 - omega kept_k) a_i + marginal_i(dL/dJ_k * lambda_k * prod_{j != i} p_k,j)
                  + g_k,i
    dL/d kappa  = sum_i a_i . pD_i                                          (after trial 0)

Second derivatives (the Laplace approximation of ``pp_aif.fitting.quadrature`` asks for them):
a backward pass that must itself be differentiable runs the same recursion in torch
(``torch_count_history``) and differentiates that, so every order is exact.
Tested against ``torch_count_history`` (values, gradients, ``gradgradcheck``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "GameRows",
    "count_history",
    "torch_count_history",
    "numpy_history",
    "numpy_adjoint",
    "single_factor_tangents",
]


#: numpy's warnings off inside the numpy routes: at a wild point of a trajectory or a Newton
#: step (alpha = inf, a learning rate of e^-800) they give the torch route's non-finite
#: values, which the sampler and the Laplace step treat as such, without a warning
QUIET = {"invalid": "ignore", "divide": "ignore", "over": "ignore", "under": "ignore"}


def _expand(vector, i: int, L: int):
    """(..., S_i) -> (..., 1.., S_i, ..1): factor i's axis among L state axes."""
    return vector.reshape(*vector.shape[:-1], *[1] * i, vector.shape[-1], *[1] * (L - i - 1))


def _joint(counts, evidence_k, L: int):
    """(prod_i p_i) * lambda_k: (..., S_1..S_L), numpy or torch alike."""
    joint = evidence_k
    for i, p in enumerate(counts):
        joint = joint * _expand(p, i, L)
    return joint


def _marginal(joint, i: int, L: int):
    """The factor-i marginal of (..., S_1..S_L): (..., S_i)."""
    others = tuple(-L + j for j in range(L) if j != i)
    return joint.sum(others) if others else joint


def torch_count_history(eta, omega, kappa, evidence, priors, kept) -> list[Tensor]:
    """The recursion in torch operations: each learnable factor's counts before every trial,
    L tensors (B, N, K, S_i), from eta, omega, kappa (B, N), evidence (N, K, S_1..S_L) or
    (B, N, K, S_1..S_L), priors L tensors (S_i,) (pD of the learnable factors), kept (N, K)."""
    L = len(priors)
    K = kept.shape[1]
    counts = [kappa[..., None] * p for p in priors]
    history = [[] for _ in priors]
    for k in range(K):
        for trials, p in zip(history, counts, strict=True):
            trials.append(p)
        joint = _joint(counts, evidence[..., k, *[slice(None)] * L], L)
        total = joint.flatten(-L).sum(-1)[..., None]
        keep = (1.0 - omega * kept[:, k])[..., None]
        rate = (eta * kept[:, k])[..., None]
        counts = [keep * p + rate * _marginal(joint, i, L) / total for i, p in enumerate(counts)]
    return [torch.stack(trials, -2) for trials in history]


class _CountHistory(torch.autograd.Function):
    """``torch_count_history`` as one node: numpy forward, the adjoint of the module docstring
    backward (a differentiable backward falls back to torch's recursion)."""

    @staticmethod
    def forward(ctx, eta, omega, kappa, evidence, kept, *priors):
        e, w, c = (x.detach().numpy() for x in (eta, omega, kappa))
        pD = [p.numpy() for p in priors]
        with np.errstate(**QUIET):
            history = numpy_history(e, w, c, evidence.numpy(), kept.numpy(), pD)
        ctx.save_for_backward(eta, omega, kappa, evidence, kept, *priors)
        ctx.history = history
        return tuple(torch.from_numpy(h) for h in history)

    @staticmethod
    def backward(ctx, *grads):
        eta, omega, kappa, evidence, kept, *priors = ctx.saved_tensors
        if torch.is_grad_enabled():  # a differentiable backward (second derivatives)
            with torch.enable_grad():
                outputs = torch_count_history(eta, omega, kappa, evidence, priors, kept)
                wanted = [x for x in (eta, omega, kappa) if x.requires_grad]
                found = iter(
                    torch.autograd.grad(
                        outputs, wanted, grads, create_graph=True, allow_unused=True
                    )
                )
            back = [next(found) if x.requires_grad else None for x in (eta, omega, kappa)]
            return (*back, None, None, *[None] * len(priors))
        e, w = eta.detach().numpy(), omega.detach().numpy()
        g = [None if x is None else x.numpy() for x in grads]
        pD = [p.numpy() for p in priors]
        with np.errstate(**QUIET):
            found = numpy_adjoint(ctx.history, g, e, w, evidence.numpy(), kept.numpy(), pD)
        back = [
            torch.from_numpy(np.asarray(d)) if x.requires_grad else None
            for d, x in zip(found, (eta, omega, kappa), strict=True)
        ]
        return (*back, None, None, *[None] * len(priors))


def numpy_history(eta, omega, kappa, evidence, kept, priors) -> list[np.ndarray]:
    """``torch_count_history`` in numpy: L arrays (B, N, K, S_i) from eta, omega, kappa (B, N),
    evidence (N, K, S_1..S_L), kept (N, K) and priors L arrays (S_i,)."""
    L = len(priors)
    K = kept.shape[1]
    keeps = 1.0 - omega[..., None] * kept  # (B, N, K)
    rates = eta[..., None] * kept
    if L == 1:  # the commonest case, without the general case's bookkeeping
        return [_single_factor_history(kappa[..., None] * priors[0], evidence, keeps, rates)]
    history = [np.empty((*eta.shape, K, p.shape[-1])) for p in priors]
    counts = [kappa[..., None] * p for p in priors]
    for k in range(K):
        for h, p in zip(history, counts, strict=True):
            h[..., k, :] = p
        joint = _joint(counts, evidence[:, k], L)
        total = joint.reshape(*joint.shape[:-L], -1).sum(-1)[..., None]
        counts = [
            keeps[..., k, None] * p + rates[..., k, None] * _marginal(joint, i, L) / total
            for i, p in enumerate(counts)
        ]
    return history


def single_factor_tangents(eta, omega, kappa, evidence_t, kept, prior, wanted):
    """One learnable factor's history (B, N, K, S) and its derivatives in forward mode: (D, B,
    N, K, S) for the D of (eta, omega, kappa) that ``wanted`` flags; the evidence trial-major,
    evidence_t (K, N, S). Then a gradient is a sum of
    products, with no backward loop: the tangents ride along the forward recursion,

        dJ = dp lambda;  dr = (dJ - r sum dJ) / Z;  dp' = keep dp + rate dr
             (+ kept r for eta, - kept p for omega; dp_0 = pD for kappa),

    with p and its tangents stacked, so that a step is one set of operations for all of them
    (cheaper than the forward pass and the adjoint's backward loop together)."""
    add = np.add.reduce
    D = sum(wanted)
    if D == 0:
        keeps, rates = 1.0 - omega[..., None] * kept, eta[..., None] * kept
        evidence = np.moveaxis(evidence_t, 0, 1)
        history = _single_factor_history(kappa[..., None] * prior, evidence, keeps, rates)
        return history, history[None, :0]
    lam_t = evidence_t  # (K, N, S)
    K = lam_t.shape[0]
    keep_t = np.ascontiguousarray((1.0 - omega[..., None] * kept).transpose(2, 0, 1))[..., None]
    rate_t = np.ascontiguousarray((eta[..., None] * kept).transpose(2, 0, 1))[..., None]
    kept_t = np.ascontiguousarray(kept.T)[:, :, None]  # (K, N, 1)
    names = [name for name, w in zip(("eta", "omega", "kappa"), wanted, strict=True) if w]
    slots = {name: i for i, name in enumerate(names, 1)}  # each tangent's place after p
    state = np.zeros((1 + D, *eta.shape, prior.shape[-1]))
    state[0] = kappa[..., None] * prior
    if "kappa" in slots:
        state[slots["kappa"]] = prior
    at_eta, at_omega = slots.get("eta"), slots.get("omega")
    history = np.empty((K, *state.shape))
    remembers = at_omega is None and not omega.any()  # keep = 1: nothing to multiply
    every = bool(kept.all())  # kept = 1: eta's own term is r itself
    for k in range(K):
        history[k] = state
        joint = state * lam_t[k]
        totals = add(joint, -1)[..., None]
        total = totals[0].copy()
        totals[0] = 0.0  # so that one expression gives r (row 0) and each dr (the others)
        r = joint[0] / total
        ratio = (joint - r * totals) / total
        forgotten = None if at_omega is None else kept_t[k] * state[0]
        state = state + rate_t[k] * ratio if remembers else keep_t[k] * state + rate_t[k] * ratio
        if at_eta is not None:
            state[at_eta] += r if every else kept_t[k] * r
        if forgotten is not None:
            state[at_omega] -= forgotten
    history = np.moveaxis(history, 0, -2)  # (1 + D, B, N, K, S)
    return history[0], history[1:]


def numpy_adjoint(history, grads, eta, omega, evidence, kept, priors):
    """(dL/d eta, dL/d omega, dL/d kappa), each (B, N), from dL/dhistory (L arrays like
    ``numpy_history``'s, None for none) by the adjoint of the module docstring."""
    keeps = 1.0 - omega[..., None] * kept  # (B, N, K)
    rates = eta[..., None] * kept
    if len(priors) == 1:
        adjoint, dots = _single_factor_adjoint(history[0], evidence, keeps, rates, grads[0])
    else:
        adjoint, dots = _adjoint(history, evidence, keeps, rates, grads)
    d_omega = -(kept * dots[0]).sum(-1)
    d_eta = (kept * dots[1]).sum(-1)
    d_kappa = sum((a * p).sum(-1) for a, p in zip(adjoint, priors, strict=True))
    return d_eta, d_omega, d_kappa


def _single_factor_history(counts, lam, keeps, rates):
    """The counts before each trial (B, N, K, S) of one learnable factor from its first (B, N, S),
    lam (N, K, S), keeps and rates (B, N, K). Trial-major copies make each step's operands
    plain views; ``np.add.reduce`` skips ``ndarray.sum``'s wrapper (a step is a dozen calls on
    arrays of a few numbers, so their overhead is the cost)."""
    add = np.add.reduce
    lam_t = np.ascontiguousarray(np.moveaxis(lam, 1, 0))  # (K, N, S)
    keep_t = np.ascontiguousarray(np.moveaxis(keeps, -1, 0))[..., None]  # (K, B, N, 1)
    rate_t = np.ascontiguousarray(np.moveaxis(rates, -1, 0))  # (K, B, N)
    K = lam_t.shape[0]
    history = np.empty((K, *counts.shape))
    p = counts
    for k in range(K):
        history[k] = p
        joint = p * lam_t[k]
        p = keep_t[k] * p + (rate_t[k] / add(joint, -1))[..., None] * joint
    return np.moveaxis(history, 0, -2)


def _single_factor_adjoint(history, lam, keeps, rates, grad):
    """The adjoint of one learnable factor: (dL/dp_0 (B, N, S), (a_k+1 . p_k, a_k+1 . r_k)
    (B, N, K) each), from its history (B, N, K, S) and dL/dhistory (or None)."""
    add = np.add.reduce
    lam_t = np.ascontiguousarray(np.moveaxis(lam, 1, 0))  # (K, N, S)
    keep_t = np.ascontiguousarray(np.moveaxis(keeps, -1, 0))[..., None]  # (K, B, N, 1)
    rate_t = np.ascontiguousarray(np.moveaxis(rates, -1, 0))  # (K, B, N)
    history_t = np.moveaxis(history, -2, 0)  # (K, B, N, S)
    grad_t = None if grad is None else np.moveaxis(grad, -2, 0)
    K = lam_t.shape[0]
    a = np.zeros_like(history_t[0])
    kept_dot, ratio_dot = np.empty(rate_t.shape), np.empty(rate_t.shape)  # (K, B, N)
    for k in range(K - 1, -1, -1):
        p, lam_k = history_t[k], lam_t[k]
        joint = p * lam_k
        total = add(joint, -1)
        through = add(a * joint, -1) / total
        kept_dot[k] = add(a * p, -1)
        ratio_dot[k] = through
        a = keep_t[k] * a + ((rate_t[k] / total)[..., None] * (a - through[..., None])) * lam_k
        if grad_t is not None:
            a = a + grad_t[k]
    return [a], (np.moveaxis(kept_dot, 0, -1), np.moveaxis(ratio_dot, 0, -1))


def _adjoint(history, lam, keeps, rates, grads):
    """``_single_factor_adjoint`` for L factors: ([dL/dp_0,i], ((a . p)_k, (a . r)_k))."""
    L = len(history)
    K = history[0].shape[-2]
    adjoint = [np.zeros_like(h[..., 0, :]) for h in history]
    kept_dot, ratio_dot = np.empty(keeps.shape), np.empty(keeps.shape)
    for k in range(K - 1, -1, -1):
        counts = [h[..., k, :] for h in history]
        joint = _joint(counts, lam[:, k], L)
        total = joint.reshape(*joint.shape[:-L], -1).sum(-1)
        through = sum((a * _marginal(joint, i, L)).sum(-1) for i, a in enumerate(adjoint)) / total
        kept_dot[..., k] = sum((a * p).sum(-1) for a, p in zip(adjoint, counts, strict=True))
        ratio_dot[..., k] = through
        d_joint = sum(_expand(a, i, L) for i, a in enumerate(adjoint))
        scale = (rates[..., k] / total)[(...,) + (None,) * L]
        d_joint = scale * (d_joint - through[(...,) + (None,) * L]) * lam[:, k]
        updated = []
        for i, a in enumerate(adjoint):
            others = [p if j != i else np.ones_like(p) for j, p in enumerate(counts)]
            a = keeps[..., k, None] * a + _marginal(_joint(others, d_joint, L), i, L)
            if grads[i] is not None:
                a = a + grads[i][..., k, :]
            updated.append(a)
        adjoint = updated
    return adjoint, (kept_dot, ratio_dot)


def count_history(eta, omega, kappa, evidence, priors, kept) -> list[Tensor]:
    """``torch_count_history``'s value and derivatives, computed in numpy where it can be (CPU,
    float64, evidence without a gradient); arguments and result as there, eta, omega and kappa
    already (B, N)."""
    tensors = (eta, omega, kappa, evidence, kept, *priors)
    if (
        evidence.requires_grad
        or any(x.device.type != "cpu" or x.dtype != torch.float64 for x in tensors)
        or evidence.dim() != kept.dim() + len(priors)  # evidence with its own batch axis
    ):
        return torch_count_history(eta, omega, kappa, evidence, priors, kept)
    return list(_CountHistory.apply(eta, omega, kappa, evidence, kept, *priors))


class GameRows:
    """Games as rows of the recursion, where a task restarts the counts (``Task.restarts``):
    each game of each subject is a row of its own that starts from kappa pD, so that the
    recursions above (and their adjoints and tangents) serve unchanged.

    From ``starts`` bool (K,) (trial 0 True): G games of at most Lg trials. ``split`` takes an
    array (..., N, K, ...) to (..., N G, Lg, ...) (row n G + g: subject n's game g; a game
    shorter than Lg is padded with its last trial, which ``kept`` marks absent, so that it
    teaches nothing and its outputs are dropped); ``join`` takes (..., N G, Lg, ...) back to
    (..., N, K, ...), and ``scatter`` is its adjoint in numpy (zeros at the padding);
    ``repeat`` gives each game its subject's parameter, (B, N) -> (B, N G), and ``sum_games``
    is its adjoint. numpy arrays and torch tensors alike (torch's indexing is differentiable).
    """

    def __init__(self, starts):
        starts = np.asarray(starts, dtype=bool)
        K = len(starts)
        first = np.flatnonzero(starts)
        if len(first) == 0 or first[0] != 0:
            raise ValueError("starts: trial 0 must start a game")
        lengths = np.diff(np.append(first, K))
        self.G, self.Lg = len(first), int(lengths.max())
        within = np.arange(self.Lg)
        self.source = np.minimum(first[:, None] + within, K - 1).reshape(-1)  # (G Lg,)
        self.valid = (within[None, :] < lengths[:, None]).reshape(-1)  # (G Lg,)
        game = np.cumsum(starts) - 1
        self.position = game * self.Lg + np.arange(K) - first[game]  # (K,) into G Lg

    @staticmethod
    def _take(x, index: np.ndarray, axis: int):
        if isinstance(x, Tensor):
            return x.index_select(axis, torch.as_tensor(index, device=x.device))
        return np.take(x, index, axis)

    def split(self, x, axis: int):
        """(..., N, K, ...), the trials on ``axis`` (negative) -> (..., N G, Lg, ...)."""
        taken = self._take(x, self.source, axis)
        shape = taken.shape
        at = len(shape) + axis  # the trials' axis, counted from the left
        return taken.reshape(*shape[: at - 1], shape[at - 1] * self.G, self.Lg, *shape[at + 1 :])

    def kept(self, kept):
        """Which trials of each row teach: kept (N, K) -> (N G, Lg), 0 at the padding."""
        rows = self.split(kept, -1)
        valid = self.valid.reshape(self.G, self.Lg)
        if isinstance(kept, Tensor):
            valid = torch.as_tensor(valid, dtype=kept.dtype, device=kept.device)
        return (rows.reshape(-1, self.G, self.Lg) * valid).reshape(rows.shape)

    def join(self, x, axis: int):
        """(..., N G, Lg, ...), the trials on ``axis`` (negative) -> (..., N, K, ...)."""
        shape = x.shape
        at = len(shape) + axis  # the trials' axis, counted from the left
        N = shape[at - 1] // self.G
        merged = x.reshape(*shape[: at - 1], N, self.G * self.Lg, *shape[at + 1 :])
        return self._take(merged, self.position, axis)

    def scatter(self, x: np.ndarray, axis: int) -> np.ndarray:
        """``join``'s adjoint: (..., N, K, ...) -> (..., N G, Lg, ...), zeros at the padding."""
        shape = x.shape
        at = len(shape) + axis
        out = np.zeros((*shape[:at], self.G * self.Lg, *shape[at + 1 :]))
        index = [slice(None)] * len(shape)
        index[at] = self.position
        out[tuple(index)] = x
        N = shape[at - 1]
        return out.reshape(*shape[: at - 1], N * self.G, self.Lg, *shape[at + 1 :])

    def repeat(self, x):
        """A parameter (B, N) -> (B, N G): each game its subject's value."""
        if isinstance(x, Tensor):
            return x.repeat_interleave(self.G, -1)
        return np.repeat(x, self.G, -1)

    def sum_games(self, x: np.ndarray) -> np.ndarray:
        """``repeat``'s adjoint: (B, N G) -> (B, N)."""
        return x.reshape(*x.shape[:-1], -1, self.G).sum(-1)

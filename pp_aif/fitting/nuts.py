"""NUTS for many chains at once: each chain runs its own trajectory, and the potential's
gradient is one batched call for all of them.

Dimension symbols: C chains, d unconstrained dimensions, D draws.

The sampler is Stan's: Hoffman & Gelman's NUTS with Betancourt's multinomial sampling of the
trajectory, biased progressive sampling at the top of the tree, and the generalised U-turn
criterion checked across merged subtrees as well (Stan >= 2.26). Its warm-up is Stan's too:
dual averaging of the step size towards an acceptance statistic of ``target_accept``, and a
diagonal or dense metric estimated in doubling windows (75 / 25, 50, 100, ... / 50 iterations).

What differs is the bookkeeping. Each chain is a generator that runs that algorithm step by
step and yields each position whose potential and gradient it needs. A driver gathers the
positions of all chains, evaluates them in one (C, d) call, and sends each running chain its
result. So every batched call advances every chain by one leapfrog step, and no chain waits for
another's longer trajectory. A chain that has finished stays in the batch at its last position
(its result unused): the calls keep one shape, and row c is always chain c, so the chains may
sample different densities side by side (each subject of a fit without a population model has
its own chains: ``pp_aif.fitting.fit``). A run costs about the leapfrog steps of its longest
chain. For the small, overhead-bound likelihoods of behavioural fits, C chains therefore cost
little more than one.

``potential(z)``: (C, d) -> (C,) potential energies (the negative log density on the
unconstrained scale), row c chain c's. A non-finite value marks the point as
impossible, and the step then diverges. Each chain draws from its own generator, seeded from
``seed`` and its index, so draws do not depend on how the calls are batched. Checked against
known densities and against Pyro's NUTS in ``tests/fitting/test_nuts.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyro
import torch
from pyro.distributions.transforms import biject_to
from pyro.poutine.util import site_is_subsample
from torch import Tensor

__all__ = ["NUTSSamples", "ProgramPotential", "nuts", "adaptation_windows"]

#: what a chain's generator yields (a position) and is sent back (U, its gradient)
_Evaluation = Generator[np.ndarray, tuple[float, np.ndarray], object]


@dataclass(frozen=True)
class NUTSSamples:
    """The draws and their diagnostics.

    samples (C, D, d) on the unconstrained scale; diverging, bool (C, D); tree_depth, int
    (C, D); accept (C, D), the mean Metropolis acceptance over each trajectory; leapfrogs, int
    (C, D), the steps of each trajectory; step_size (C,) and inverse_mass ((C, d) diagonal or
    (C, d, d) dense) after the warm-up; gradients, the number of batched potential calls
    (warm-up included).
    """

    samples: Tensor
    diverging: Tensor
    tree_depth: Tensor
    accept: Tensor
    leapfrogs: Tensor
    step_size: Tensor
    inverse_mass: Tensor
    gradients: int


class _Point(NamedTuple):
    z: np.ndarray
    p: np.ndarray
    g: np.ndarray  # the gradient of the potential
    U: float


class _Tree(NamedTuple):
    end: _Point  # the last leaf, where a further subtree starts
    propose: _Point  # the tree's multinomial draw
    log_w: float  # log of the sum of the leaves' weights exp(H0 - H)
    rho: np.ndarray  # the sum of the leaves' momenta
    p_beg: np.ndarray
    s_beg: np.ndarray  # M^-1 p at the first leaf
    p_end: np.ndarray
    s_end: np.ndarray
    valid: bool  # neither turned nor diverged
    diverging: bool
    metro: float  # the sum of min(1, exp(H0 - H)) over the leaves
    n: int  # leapfrog steps


def _persists(s_minus: np.ndarray, s_plus: np.ndarray, rho: np.ndarray) -> bool:
    """The generalised no-U-turn criterion: both ends still move along rho."""
    return float(s_plus @ rho) > 0 and float(s_minus @ rho) > 0


class _Metric:
    """The kinetic energy p' M^-1 p / 2, M^-1 diagonal (d,) or dense (d, d)."""

    def __init__(self, inverse: np.ndarray):
        self.inverse, self.dense = inverse, inverse.ndim == 2
        # p ~ Normal(0, M): with M^-1 = L L', p = L'^-1 e
        self.root = np.linalg.cholesky(inverse).T if self.dense else 1.0 / np.sqrt(inverse)

    def sharp(self, p: np.ndarray) -> np.ndarray:
        return self.inverse @ p if self.dense else self.inverse * p

    def kinetic(self, p: np.ndarray) -> float:
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging step: inf or NaN
            return 0.5 * float(p @ self.sharp(p))

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        e = rng.standard_normal(self.inverse.shape[0])
        return np.linalg.solve(self.root, e) if self.dense else e * self.root


class _DualAveraging:
    """Nesterov dual averaging of the log step size (Stan's gamma 0.05, t0 10, kappa 0.75)."""

    def __init__(self, step_size: float, target: float):
        self.target, self.mu = target, math.log(10 * step_size)
        self.t, self.h_bar, self.log_bar = 0, 0.0, 0.0

    def update(self, accept: float) -> float:
        self.t += 1
        eta = 1.0 / (self.t + 10.0)
        self.h_bar = (1 - eta) * self.h_bar + eta * (self.target - accept)
        log_step = self.mu - math.sqrt(self.t) / 0.05 * self.h_bar
        weight = self.t**-0.75
        self.log_bar = weight * log_step + (1 - weight) * self.log_bar
        return math.exp(log_step)

    def final(self) -> float:
        return math.exp(self.log_bar)


def adaptation_windows(warmup: int) -> list[tuple[int, int]]:
    """Stan's metric-adaptation windows [start, end) within the warm-up: a first 75 iterations
    of step size only, windows of 25, 50, 100, ... (the last stretched to fill), and a last 50
    of step size only; 15% / 75% / 10% when the warm-up is shorter than 150; none under 20."""
    if warmup < 20:
        return []
    if warmup < 150:
        first, last = int(0.15 * warmup), int(0.1 * warmup)
        size = warmup - first - last
    else:
        first, last, size = 75, 50, 25
    windows, start, end_of_slow = [], first, warmup - last
    while start < end_of_slow:
        end = start + size
        if end + 2 * size > end_of_slow:
            end = end_of_slow
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


def _regularised(window: np.ndarray, dense: bool) -> np.ndarray:
    """Stan's shrunk estimate of the posterior (co)variance from a window (n, d)."""
    n, d = window.shape
    shrink, floor = n / (n + 5.0), 1e-3 * 5.0 / (n + 5.0)
    if dense:
        return shrink * np.cov(window, rowvar=False).reshape(d, d) + floor * np.eye(d)
    return shrink * window.var(0, ddof=1) + floor


class _Chain:
    """One chain's NUTS, as generators that yield positions and receive (U, gradient)."""

    def __init__(self, rng, dense, target_accept, max_depth, max_energy_error):
        self.rng, self.dense, self.target = rng, dense, target_accept
        self.max_depth, self.max_energy_error = max_depth, max_energy_error
        self.metric: _Metric | None = None

    def leapfrog(self, start: _Point, eps: float) -> _Evaluation:
        p_half = start.p - 0.5 * eps * start.g
        z = start.z + eps * self.metric.sharp(p_half)
        U, g = yield z
        return _Point(z, p_half - 0.5 * eps * g, g, U)

    def tree(self, start: _Point, eps: float, depth: int, H0: float) -> _Evaluation:
        """2^depth leapfrog steps from start (backwards in time if eps < 0): a _Tree."""
        if depth == 0:
            point = yield from self.leapfrog(start, eps)
            H = point.U + self.metric.kinetic(point.p)
            delta = H0 - H if not math.isnan(H) else -math.inf
            diverging = -delta > self.max_energy_error
            s = self.metric.sharp(point.p)
            return _Tree(
                point, point, delta, point.p, point.p, s, point.p, s,
                not diverging, diverging, math.exp(min(delta, 0.0)), 1,  # no overflow
            )  # fmt: skip
        a = yield from self.tree(start, eps, depth - 1, H0)
        if not a.valid:
            return a
        b = yield from self.tree(a.end, eps, depth - 1, H0)
        metro, n = a.metro + b.metro, a.n + b.n
        if not b.valid:
            return b._replace(metro=metro, n=n)
        log_w = np.logaddexp(a.log_w, b.log_w)
        take = self.rng.random() < math.exp(b.log_w - log_w)  # uniform progressive sampling
        rho = a.rho + b.rho
        persists = (
            _persists(a.s_beg, b.s_end, rho)
            and _persists(a.s_beg, b.s_beg, a.rho + b.p_beg)
            and _persists(a.s_end, b.s_end, b.rho + a.p_end)
        )
        return _Tree(
            b.end, b.propose if take else a.propose, float(log_w), rho, a.p_beg, a.s_beg,
            b.p_end, b.s_end, persists, False, metro, n,
        )  # fmt: skip

    def transition(self, current: _Point, step_size: float) -> _Evaluation:
        """One NUTS transition: (the new point, accept statistic, depth, diverging, steps)."""
        p0 = self.metric.sample(self.rng)
        H0 = current.U + self.metric.kinetic(p0)
        start = current._replace(p=p0)
        left = right = sample = start
        rho, log_w = p0, 0.0
        depth, diverging, metro, n = 0, False, 0.0, 0
        while depth < self.max_depth:
            forward = self.rng.random() < 0.5
            adjacent, far = (right, left) if forward else (left, right)
            new = yield from self.tree(adjacent, step_size if forward else -step_size, depth, H0)
            metro, n, diverging = metro + new.metro, n + new.n, diverging or new.diverging
            if not new.valid:
                break
            depth += 1
            # biased progressive sampling: min(1, w_new / w_old), without overflow
            if self.rng.random() < math.exp(min(new.log_w - log_w, 0.0)):
                sample = new.propose
            s_far, s_adjacent = self.metric.sharp(far.p), self.metric.sharp(adjacent.p)
            merged = rho + new.rho
            persists = (
                _persists(s_far, new.s_end, merged)
                and _persists(s_far, new.s_beg, rho + new.p_beg)
                and _persists(s_adjacent, new.s_end, new.rho + adjacent.p)
            )
            log_w, rho = float(np.logaddexp(log_w, new.log_w)), merged
            if forward:
                right = new.end
            else:
                left = new.end
            if not persists:
                break
        return sample, metro / max(n, 1), depth, diverging, n

    def initial_step_size(self, current: _Point, step_size: float) -> _Evaluation:
        """Stan's heuristic: double or halve until one leapfrog step's acceptance crosses 0.8."""
        threshold, direction = math.log(0.8), 0
        for _ in range(100):
            p = self.metric.sample(self.rng)
            H0 = current.U + self.metric.kinetic(p)
            point = yield from self.leapfrog(current._replace(p=p), step_size)
            H = point.U + self.metric.kinetic(point.p)
            delta = H0 - H if not math.isnan(H) else -math.inf
            if direction == 0:
                direction = 1 if delta > threshold else -1
                continue
            if (direction == 1) != (delta > threshold):
                break
            step_size *= 2.0**direction
        return step_size

    def run(self, start: _Point, draws: int, warmup: int, report) -> _Evaluation:
        """The whole chain from ``start`` (its potential and gradient known): warm-up, then
        ``draws`` transitions; returns its record."""
        d = start.z.shape[0]
        self.metric = _Metric(np.eye(d) if self.dense else np.ones(d))
        current = start
        step_size = yield from self.initial_step_size(current, 1.0)
        averaging = _DualAveraging(step_size, self.target)
        windows = adaptation_windows(warmup)
        ends = {end for _, end in windows}
        window: list[np.ndarray] = []
        record = {key: [] for key in ("z", "diverging", "depth", "accept", "n")}
        for i in range(warmup + draws):
            current, accept, depth, diverging, n = yield from self.transition(current, step_size)
            if i < warmup:
                step_size = averaging.update(accept)
                if any(start <= i < end for start, end in windows):
                    window.append(current.z)
                if i + 1 in ends:
                    self.metric = _Metric(_regularised(np.stack(window), self.dense))
                    window = []
                    step_size = yield from self.initial_step_size(current, step_size)
                    averaging = _DualAveraging(step_size, self.target)
                if i + 1 == warmup:
                    step_size = averaging.final()
            else:
                for key, value in zip(
                    record, (current.z, diverging, depth, accept, n), strict=True
                ):
                    record[key].append(value)
            report(i + 1)
        return record, step_size, self.metric.inverse


def nuts(
    potential: Callable[[Tensor], Tensor],
    initial: Tensor,
    draws: int,
    warmup: int,
    *,
    seed: int = 0,
    dense: bool = False,
    target_accept: float = 0.8,
    max_depth: int = 10,
    max_energy_error: float = 1000.0,
    progress: Callable[[str, int, int], None] | None = None,
    restrict: Callable[[np.ndarray], Callable[[Tensor], Tensor]] | None = None,
) -> NUTSSamples:
    """Draw from exp(-potential) by NUTS, C chains at once.

    potential : (C, d) -> (C,), row c chain c's; initial : (C, d), where the potential is finite;
    draws, warmup : iterations kept and adapted; seed : chain c draws from
    ``numpy.random.default_rng([seed, c])``; dense : estimate a dense metric (else diagonal);
    target_accept : dual averaging's target; max_depth : at most 2^max_depth - 1 leapfrog steps
    a transition; max_energy_error : an energy error beyond it is a divergence; progress :
    callable(stage, done, total), optional ("warmup", "sampling": the slowest chain);
    restrict : optional, (the chains still running, ascending) -> the potential of just those
    rows, in that order. Given, the calls leave out finished chains once they are half the rows
    or more (a potential whose cost grows with its rows then costs less as chains finish); the
    draws are the same.
    """
    if draws < 1 or warmup < 0:
        raise ValueError(f"draws must be >= 1 and warmup >= 0; got {draws}, {warmup}")
    if initial.dim() != 2:
        raise ValueError(f"initial: (chains, dimensions) expected, got {tuple(initial.shape)}")
    C, d = initial.shape
    z = initial.detach().cpu().numpy().astype(np.float64)
    U, g = _evaluate(potential, z, initial)
    if not np.isfinite(U).all():
        bad = np.flatnonzero(~np.isfinite(U)).tolist()
        raise ValueError(f"initial: the potential is not finite for chain(s) {bad}")
    done = [0] * C
    shown = [0]

    def report(chain: int):
        def at(i: int):
            done[chain] = i
            slowest = min(done)
            if progress is None or slowest == shown[0]:
                return
            shown[0] = slowest
            stage, k, total = (
                ("warmup", slowest, warmup)
                if slowest <= warmup and warmup
                else ("sampling", slowest - warmup, draws)
            )
            if k == total or k % max(1, total // 50) == 0:
                progress(stage, k, total)

        return at

    chains = [
        _Chain(np.random.default_rng([seed, c]), dense, target_accept, max_depth, max_energy_error)
        for c in range(C)
    ]
    runs = {
        c: chain.run(_Point(z[c], np.zeros(d), g[c], float(U[c])), draws, warmup, report(c))
        for c, chain in enumerate(chains)
    }
    asked = {c: next(run) for c, run in runs.items()}
    results, calls = {}, 0
    positions = z.copy()  # (C, d): each chain's latest position
    rows, current = np.arange(C), potential  # the chains in the calls, and their potential
    while asked:
        if restrict is not None and 2 * len(asked) <= len(rows):
            rows = np.array(sorted(asked))
            current = restrict(rows)
        # each row of the calls, always: a finished chain's at its last position (a constant
        # shape, and a potential whose rows belong to different models can rely on its rows)
        for c, position in asked.items():
            positions[c] = position
        U, g = _evaluate(current, positions[rows], initial)
        calls += 1
        for i, c in enumerate(rows):
            if c not in asked:
                continue
            try:
                asked[c] = runs[c].send((float(U[i]), g[i]))
            except StopIteration as finished:
                results[c] = finished.value
                del asked[c]
    records = [results[c][0] for c in range(C)]

    def stacked(key, dtype):
        return torch.as_tensor(np.array([r[key] for r in records]), dtype=dtype)

    return NUTSSamples(
        samples=stacked("z", initial.dtype),
        diverging=stacked("diverging", torch.bool),
        tree_depth=stacked("depth", torch.long),
        accept=stacked("accept", initial.dtype),
        leapfrogs=stacked("n", torch.long),
        step_size=torch.tensor([results[c][1] for c in range(C)], dtype=initial.dtype),
        inverse_mass=torch.as_tensor(np.stack([results[c][2] for c in range(C)])),
        gradients=calls,
    )


def _evaluate(potential, z: np.ndarray, like: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """U(z) (B,) and its gradient (B, d), computed in the dtype and on the device of ``like``;
    non-finite values give U = inf and a zero gradient. A potential with a
    ``value_and_gradient(z)`` method (numpy in, (U, gradient) or None out) is asked that first."""
    direct = getattr(potential, "value_and_gradient", None)
    found = None if direct is None else direct(z)
    if found is not None:
        U, g = found
        finite = np.isfinite(U) & np.isfinite(g).all(-1)
        return np.where(finite, U, np.inf), np.where(finite[:, None], g, 0.0)
    with torch.enable_grad():
        x = torch.as_tensor(z, dtype=like.dtype, device=like.device).requires_grad_(True)
        U = potential(x)
        finite = torch.isfinite(U)
        (g,) = torch.autograd.grad(torch.where(finite, U, 0.0).sum(), x)
    finite = finite & torch.isfinite(g).all(-1)
    U = torch.where(finite, U.detach(), torch.inf)
    return U.cpu().numpy(), torch.where(finite[:, None], g, 0.0).cpu().numpy()


class ProgramPotential:
    """The potential of a Pyro program's latent sites for C chains at once: (C, d) -> (C,).

    The latent sites of one trace of ``program`` (drawn from its priors) fix the layout: each
    site's unconstrained values, ``biject_to(support).inv``, side by side in d. Each chain's
    values are given to the program conditioned on them, with a leading chain axis left of
    its plates (the program's tensors must broadcast on the left, as vectorised Pyro programs
    do), and the potential is -(sum of the log densities of the chain's sites, masks and
    scales applied, + log |Jacobian| of the transforms). The sites' values live where z does
    (the CPU, for ``nuts``); a program may compute on another device (a likelihood on a GPU),
    and each site's log density comes back to z's device. Pyro's validation is off inside (a
    wild point of a trajectory gives a non-finite potential, which the sampler treats as a
    divergence, instead of an error).
    """

    def __init__(self, program: Callable[[], None]):
        self.program = program
        with pyro.validation_enabled(False):
            trace = pyro.poutine.trace(program).get_trace()
        self.sites, self.depth = [], 0
        start = 0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            dims = [-frame.dim for frame in site["cond_indep_stack"] if frame.vectorized]
            self.depth = max([self.depth, *dims, len(site["fn"].batch_shape)])
            if site["is_observed"]:
                continue
            if site["fn"].support.is_discrete:
                raise ValueError(f"program: site {name!r} is discrete; NUTS needs continuous sites")
            transform = biject_to(site["fn"].support)
            shape = tuple(site["value"].shape)
            size = math.prod(shape)
            self.sites.append((name, shape, slice(start, start + size), transform))
            start += size
        self.dimension = start

    def constrained(self, z: Tensor) -> dict[str, Tensor]:
        """{site: (C, *shape)} on the program's own scale, from (C, d) unconstrained values."""
        return {
            name: transform(z[:, where].reshape(z.shape[0], *shape))
            for name, shape, where, transform in self.sites
        }

    def __call__(self, z: Tensor) -> Tensor:
        C = z.shape[0]
        values, log_jacobian = {}, torch.zeros(C, dtype=z.dtype, device=z.device)
        for name, shape, where, transform in self.sites:
            pad = (1,) * (self.depth - len(shape))
            u = z[:, where].reshape(C, *pad, *shape)
            values[name] = transform(u)
            log_jacobian = log_jacobian + (
                transform.log_abs_det_jacobian(u, values[name]).reshape(C, -1).sum(-1)
            )
        with pyro.validation_enabled(False):
            conditioned = pyro.poutine.condition(self.program, data=values)
            trace = pyro.poutine.trace(conditioned).get_trace()
            trace.compute_log_prob()
        log_density = log_jacobian
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            log_p = site["log_prob"]
            if log_p.dim() > self.depth:  # one value per chain
                log_density = log_density + log_p.reshape(C, -1).sum(-1).to(z.device)
            else:  # the same for every chain
                log_density = log_density + log_p.sum().to(z.device)
        return -log_density

    def initial(self, chains: int, generator: torch.Generator, radius: float = 2.0) -> Tensor:
        """(C, d) uniform in [-radius, radius] on the unconstrained scale (Stan's default),
        redrawn where the potential is not finite (up to 100 times)."""
        z = torch.rand(chains, self.dimension, generator=generator, dtype=torch.float64) - 0.5
        z = 2 * radius * z
        for _ in range(100):
            with torch.no_grad():
                bad = ~torch.isfinite(self(z))
            if not bool(bad.any()):
                return z
            fresh = torch.rand(chains, self.dimension, generator=generator, dtype=z.dtype)
            z = torch.where(bad[:, None], 2 * radius * (fresh - 0.5), z)
        raise ValueError("program: no finite starting point found in 100 tries")

"""Log model evidence of a fitted agent, per subject: Laplace, importance-weighted ELBO, grid.

Dimension symbols: N subjects, d fitted parameters, S samples, G grid points.

Subjects are independent (a non-hierarchical fit), so the evidence of the data is the product of
the subjects' evidence, and each is an integral over that subject's d parameters. On the link
scale u (theta = link^-1(u): log for positive parameters, logit for the forgetting rate),

    ln p(y_n) = ln ∫ exp l_n(u) du
    l_n(u)    = ln p(y_n | theta(u)) + ln p(theta(u)) + ln |dtheta / du|

Three estimators of it:

- ``"laplace"``: damped Newton to the mode u* of l_n (batched over subjects; the d x d Hessian
  blocks by autograd, d backward passes), then ln p(y_n) ~ l_n(u*) + d/2 ln 2 pi - 1/2 ln det H
  with H = -grad^2 l_n(u*). Exact for a Gaussian l_n; biased otherwise.
- ``"iwelbo"``: an importance-weighted ELBO (Burda et al. 2016) with the Gaussian proposal q_n
  of an SVI fit (``AutoNormal``, the guide of ``pp_aif.fit(method="svi")``):
  ln (1/S) sum_s exp(l_n(u_s) - ln q_n(u_s)), u_s ~ q_n; a lower bound in expectation that tends
  to ln p(y_n) as S grows, with the delta-method standard error of the log of a mean.
- ``"grid"``: the reference for d <= 2: trapezoidal quadrature of exp l_n on a grid centred on
  the Laplace mode, +-``width`` Laplace standard deviations per axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from torch import Tensor

from pp_aif.agent import AgentSettings
from pp_aif.data import BehaviourData
from pp_aif.errors import ConvergenceWarning
from pp_aif.fitting.fit import LINKS, default_priors
from pp_aif.fitting.likelihood import BehaviourLikelihood

__all__ = ["Evidence", "log_evidence", "METHODS"]

METHODS = ("laplace", "iwelbo", "grid")


@dataclass(frozen=True)
class Evidence:
    """log_evidence : (N,) ln p(y_n) per subject; stderr : (N,) its Monte Carlo standard error
    (0 for deterministic methods); mode : (N, d) the Laplace mode on the link scale; method."""

    log_evidence: Tensor
    stderr: Tensor
    mode: Tensor
    params: tuple[str, ...]
    method: str

    @property
    def total(self) -> float:
        """ln p(y) of all subjects: the sum."""
        return float(self.log_evidence.sum())


class _LogJoint:
    """l_n(u) for all subjects at once: u (*b, N, d) -> (*b, N)."""

    def __init__(self, task, data, params, priors, settings):
        self.params = tuple(params)
        model = task.model
        self.likelihood = BehaviourLikelihood(
            model, settings, data.observations, data.actions, self.params, data.present
        )
        self.present = data.present
        all_priors = {**default_priors(model.dtype), **(priors or {})}
        self.priors = [all_priors[name] for name in self.params]
        self.links = [LINKS[name] for name in self.params]
        self.initial = torch.stack(
            [
                _median_on_link_scale(p, link)
                for p, link in zip(self.priors, self.links, strict=True)
            ]
        )

    def __call__(self, u: Tensor) -> Tensor:
        theta, total = {}, 0.0
        for i, (name, prior, link) in enumerate(
            zip(self.params, self.priors, self.links, strict=True)
        ):
            value = link(u[..., i])
            theta[name] = value
            base = getattr(prior, "base_dist", None)
            if isinstance(base, pyro.distributions.Normal) and len(prior.transforms) == 1:
                total = total + base.log_prob(u[..., i])  # the prior's density of u itself
            else:
                density = prior.log_prob(value) + link.log_abs_det_jacobian(u[..., i], value)
                total = total + density
        pointwise = self.likelihood(theta).sum(-1)  # (*b, N, K)
        pointwise = torch.where(self.present, pointwise, torch.zeros_like(pointwise))
        return total + pointwise.sum(-1)


def _median_on_link_scale(prior, link) -> Tensor:
    base = getattr(prior, "base_dist", None)
    if isinstance(base, pyro.distributions.Normal):
        return base.loc.to(torch.float64)
    return link.inv(prior.icdf(torch.tensor(0.5, dtype=torch.float64)))


def _gradient_and_hessian(objective, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """l (N,), its gradient (N, d) and Hessian blocks (N, d, d): subjects are independent, so
    d backward passes through the summed gradient give every block."""
    u = u.detach().requires_grad_(True)
    value = objective(u)
    (gradient,) = torch.autograd.grad(value.sum(), u, create_graph=True)
    rows = []
    for j in range(u.shape[-1]):
        (row,) = torch.autograd.grad(gradient[..., j].sum(), u, retain_graph=True)
        rows.append(row)
    hessian = torch.stack(rows, -2)
    return value.detach(), gradient.detach(), hessian.detach()


def _laplace(objective, iterations: int = 100, tolerance: float = 1e-8):
    """Damped Newton ascent per subject; returns (mode (N, d), l at it (N,), -Hessian)."""
    N = objective.present.shape[0]
    d = len(objective.params)
    u = objective.initial.expand(N, d).clone()
    value, gradient, hessian = _gradient_and_hessian(objective, u)
    for _ in range(iterations):
        curvature = -hessian
        # keep the step an ascent direction: shift the curvature until it is positive definite
        eigenvalues = torch.linalg.eigvalsh(curvature)
        shift = torch.clamp(1e-6 - eigenvalues.min(-1).values, min=0.0)
        curvature = curvature + shift[:, None, None] * torch.eye(d, dtype=u.dtype)
        step = torch.linalg.solve(curvature, gradient[..., None])[..., 0]
        scale = torch.ones(N, dtype=u.dtype)
        for _ in range(30):  # halve each subject's step until its l does not fall
            with torch.no_grad():
                trial = objective(u + scale[:, None] * step)
            worse = ~(trial >= value - 1e-12) | ~torch.isfinite(trial)
            if not worse.any():
                break
            scale = torch.where(worse, scale / 2, scale)
        u = u + scale[:, None] * step
        value, gradient, hessian = _gradient_and_hessian(objective, u)
        if gradient.abs().max() < tolerance:
            break
    else:
        import warnings

        warnings.warn(
            f"log_evidence: Newton's method stopped after {iterations} iterations with a "
            f"gradient of {gradient.abs().max():.2e}",
            ConvergenceWarning,
            stacklevel=3,
        )
    return u, value, -hessian


def log_evidence(
    task,
    data: BehaviourData,
    params,
    priors: dict | None = None,
    *,
    method: str = "laplace",
    settings: AgentSettings | None = None,
    num_samples: int = 1000,
    steps: int = 2000,
    learning_rate: float = 0.02,
    grid_points: int = 201,
    width: float = 8.0,
    seed: int = 0,
) -> Evidence:
    """ln p(y_n) of each subject's actions under the agent with ``params`` fitted (see the
    module docstring). method : "laplace", "iwelbo" (``num_samples`` importance samples from an
    SVI guide fitted for ``steps`` Adam steps) or "grid" (d <= 2; ``grid_points`` per axis).
    """
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {METHODS}")
    settings = settings or task.settings or AgentSettings()
    objective = _LogJoint(task, data, params, priors, settings)
    d = len(objective.params)
    mode, value, curvature = _laplace(objective)
    N = mode.shape[0]
    zero = torch.zeros(N, dtype=torch.float64)
    if method == "laplace":
        estimate = value + 0.5 * d * math.log(2 * math.pi) - 0.5 * torch.logdet(curvature)
        return Evidence(estimate, zero, mode, objective.params, method)
    if method == "grid":
        if d > 2:
            raise ValueError(f"params: the grid reference is for 1 or 2 parameters, got {d}")
        return Evidence(
            _grid(objective, mode, curvature, grid_points, width),
            zero,
            mode,
            objective.params,
            method,
        )
    loc, scale = _svi_guide(
        task, data, objective.params, priors, settings, steps, learning_rate, seed
    )
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(num_samples, N, d, generator=generator, dtype=torch.float64)
    samples = loc + scale * noise  # (S, N, d)
    log_q = torch.distributions.Normal(loc, scale).log_prob(samples).sum(-1)  # (S, N)
    with torch.no_grad():
        log_weights = (
            torch.cat([objective(samples[i : i + 50]) for i in range(0, num_samples, 50)]) - log_q
        )
    estimate = torch.logsumexp(log_weights, 0) - math.log(num_samples)
    weights = torch.exp(log_weights - log_weights.amax(0))
    mean = weights.mean(0)
    stderr = weights.std(0) / (math.sqrt(num_samples) * mean)  # delta method: se of ln(mean)
    return Evidence(estimate, stderr, mode, objective.params, method)


def _grid(objective, mode, curvature, points: int, width: float) -> Tensor:
    """Trapezoidal quadrature of exp l_n around each subject's mode: (N,)."""
    N, d = mode.shape
    sd = torch.sqrt(torch.diagonal(torch.linalg.inv(curvature), dim1=-2, dim2=-1))  # (N, d)
    offsets = torch.linspace(-width, width, points, dtype=torch.float64)
    axes = mode[None] + offsets[:, None, None] * sd[None]  # (points, N, d)
    if d == 1:
        u = axes  # (G, N, 1)
        spacing = axes[1, :, 0] - axes[0, :, 0]
    else:
        first = axes[:, None, :, 0].expand(points, points, N)
        second = axes[None, :, :, 1].expand(points, points, N)
        u = torch.stack([first, second], -1).reshape(points * points, N, 2)
        spacing = (axes[1, :, 0] - axes[0, :, 0]) * (axes[1, :, 1] - axes[0, :, 1])
    with torch.no_grad():
        values = torch.cat([objective(u[i : i + 200]) for i in range(0, u.shape[0], 200)])
    weights = torch.ones(points, dtype=torch.float64)
    weights[0] = weights[-1] = 0.5
    if d == 2:
        weights = (weights[:, None] * weights[None, :]).reshape(-1)
    return torch.logsumexp(values + torch.log(weights)[:, None], 0) + torch.log(spacing)


def _svi_guide(task, data, params, priors, settings, steps, learning_rate, seed):
    """The Gaussian of ``fit(method="svi")`` on the link scale, per subject: loc, scale (N, d)."""
    from pp_aif.fitting.fit import _run_svi
    from pp_aif.programs import behaviour

    model = task.model
    likelihood = BehaviourLikelihood(
        model, settings, data.observations, data.actions, params, data.present
    )
    all_priors = {**default_priors(model.dtype), **(priors or {})}
    chosen = {name: all_priors[name] for name in params}

    def program():
        behaviour(likelihood, priors=chosen, present=data.present)

    with pyro.get_param_store().scope():
        pyro.clear_param_store()
        _run_svi(program, 1, steps, learning_rate, seed, None)
        store = pyro.get_param_store()
        loc = torch.stack(
            [store[f"AutoNormal.locs.{name}"].detach().reshape(-1) for name in params], -1
        )
        scale = torch.stack(
            [store[f"AutoNormal.scales.{name}"].detach().reshape(-1) for name in params], -1
        )
    return loc.to(torch.float64), scale.to(torch.float64)

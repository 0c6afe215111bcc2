"""The posterior of a subject's parameters on the link scale: density, mode, and a quadrature grid.

Dimension symbols: N subjects, d fitted parameters, G grid points.

Subjects of a non-hierarchical fit are independent, so each has its own posterior over its d
parameters. On the link scale u (theta = link^-1(u), ``pp_aif.fitting.LINKS``)

    l_n(u) = ln p(y_n | theta(u)) + ln p(theta(u)) + ln |dtheta / du|

(``LinkScaleDensity``, all subjects at once). ``laplace`` finds each subject's mode by damped
Newton ascent (the d x d Hessian blocks by autograd: d backward passes give every subject's
block, since the subjects do not interact) and ``grid`` lays a trapezoidal quadrature grid of
+-``width`` Laplace standard deviations per axis around it. Both serve ``fit(method="grid")``
(the exact posterior for d <= 2, sampled from the grid) and ``pp_aif.comparison.log_evidence``.
"""

from __future__ import annotations

import math
import warnings

import pyro
import torch
from torch import Tensor

from pp_aif.errors import ConvergenceWarning
from pp_aif.fitting.likelihood import BehaviourLikelihood
from pp_aif.parameters import LINKS, chosen_priors, log_prior_on_link_scale

__all__ = ["LinkScaleDensity", "laplace", "grid", "grid_log_mass"]


class LinkScaleDensity:
    """l_n(u) for all subjects at once: u (*b, N, d) -> (*b, N)."""

    def __init__(self, likelihood: BehaviourLikelihood, priors: dict | None = None):
        self.likelihood, self.params = likelihood, likelihood.params
        self.present = likelihood.present
        if self.present is None:
            self.present = torch.ones(likelihood.actions.shape[:2], dtype=torch.bool)
        self.chosen = chosen = chosen_priors(self.params, priors, likelihood.model.dtype)
        self.priors = [chosen[name] for name in self.params]
        self.links = [LINKS[name] for name in self.params]
        self.initial = torch.stack(
            [median_on_link_scale(p, link) for p, link in zip(self.priors, self.links, strict=True)]
        )

    def __call__(self, u: Tensor) -> Tensor:
        theta = {
            name: link(u[..., i])
            for i, (name, link) in enumerate(zip(self.params, self.links, strict=True))
        }
        total = log_prior_on_link_scale(self.chosen, self.params, u)
        pointwise = self.likelihood(theta).sum(-1)  # (*b, N, K)
        pointwise = torch.where(self.present, pointwise, torch.zeros_like(pointwise))
        return total + pointwise.sum(-1)


def median_on_link_scale(prior, link) -> Tensor:
    base = getattr(prior, "base_dist", None)
    if isinstance(base, pyro.distributions.Normal):
        return base.loc.to(torch.float64)
    return link.inv(prior.icdf(torch.tensor(0.5, dtype=torch.float64)))


def gradient_and_hessian(objective, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
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


def laplace(objective, iterations: int = 100, tolerance: float = 1e-8):
    """Damped Newton ascent per subject; returns (mode (N, d), l at it (N,), -Hessian)."""
    N = objective.present.shape[0]
    d = len(objective.params)
    u = objective.initial.expand(N, d).clone()
    value, gradient, hessian = gradient_and_hessian(objective, u)
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
        value, gradient, hessian = gradient_and_hessian(objective, u)
        if gradient.abs().max() < tolerance:
            break
    else:
        warnings.warn(
            f"laplace: Newton's method stopped after {iterations} iterations with a "
            f"gradient of {gradient.abs().max():.2e}",
            ConvergenceWarning,
            stacklevel=3,
        )
    flat = torch.linalg.eigvalsh(-hessian).min(-1).values <= 0
    if flat.any():
        raise ValueError(
            f"laplace: the posterior of subject(s) {flat.nonzero()[:, 0].tolist()} is not "
            "curved at its mode (a flat or saddle direction): the parameters are not "
            "identified there; fit fewer parameters or give tighter priors"
        )
    return u, value, -hessian


def grid(objective, mode: Tensor, curvature: Tensor, points: int, width: float):
    """A trapezoidal grid around each subject's mode: u (G, N, d), and ln of each point's
    quadrature weight (trapezoid weight times cell volume) (G, N), and the spacing (N, d)."""
    N, d = mode.shape
    if d > 2:
        raise ValueError(f"params: the quadrature grid is for 1 or 2 parameters, got {d}")
    if points < 2 or not width > 0:
        raise ValueError(f"grid: needs >= 2 points and a width > 0, got {points} and {width}")
    sd = torch.sqrt(torch.diagonal(torch.linalg.inv(curvature), dim1=-2, dim2=-1))  # (N, d)
    offsets = torch.linspace(-width, width, points, dtype=torch.float64)
    axes = mode[None] + offsets[:, None, None] * sd[None]  # (points, N, d)
    spacing = axes[1] - axes[0]  # (N, d)
    weights = torch.ones(points, dtype=torch.float64)
    weights[0] = weights[-1] = 0.5
    if d == 1:
        u = axes
    else:
        first = axes[:, None, :, 0].expand(points, points, N)
        second = axes[None, :, :, 1].expand(points, points, N)
        u = torch.stack([first, second], -1).reshape(points * points, N, 2)
        weights = (weights[:, None] * weights[None, :]).reshape(-1)
    log_weights = torch.log(weights)[:, None] + torch.log(spacing).sum(-1)[None]
    return u, log_weights, spacing


def log_density_on(objective, u: Tensor, trials: int = 100_000) -> Tensor:
    """l_n at every grid point: (G, N), in chunks of points of at most ``trials`` trials in all
    (points x subjects x trials per subject), which bounds the memory (a trial's beliefs and
    policy values take about 10 kB on the T-maze: 1 GB a chunk)."""
    per_point = math.prod(objective.present.shape) if hasattr(objective, "present") else 1
    chunk = max(1, trials // per_point)
    with torch.no_grad():
        return torch.cat([objective(u[i : i + chunk]) for i in range(0, u.shape[0], chunk)])


def grid_log_mass(objective, points: int, width: float, mode=None, curvature=None):
    """Each subject's posterior on a grid around its mode: u (G, N, d), ln of the mass of each
    point (l_n(u) plus its quadrature weight; logsumexp over G is ln p(y_n)), spacing (N, d).
    mode, curvature : ``laplace``'s, when the caller has them already."""
    if mode is None:
        mode, _, curvature = laplace(objective)
    u, log_weights, spacing = grid(objective, mode, curvature, points, width)
    return u, log_density_on(objective, u) + log_weights, spacing

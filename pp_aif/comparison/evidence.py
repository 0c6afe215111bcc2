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
from pp_aif.fitting.fit import behavioural_program
from pp_aif.fitting.quadrature import LinkScaleDensity, grid_log_mass, laplace

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
    d = len(params)
    if method == "grid" and d > 2:
        raise ValueError(f"params: the grid reference is for 1 or 2 parameters, got {d}")
    settings = settings or task.settings or AgentSettings()
    likelihood, program = behavioural_program(task, data, params, priors, settings)
    objective = LinkScaleDensity(likelihood, priors)
    mode, value, curvature = laplace(objective)
    N = mode.shape[0]
    zero = torch.zeros(N, dtype=torch.float64)
    if method == "laplace":
        estimate = value + 0.5 * d * math.log(2 * math.pi) - 0.5 * torch.logdet(curvature)
        return Evidence(estimate, zero, mode, objective.params, method)
    if method == "grid":
        _, log_mass, _ = grid_log_mass(objective, grid_points, width, mode, curvature)
        return Evidence(
            torch.logsumexp(log_mass, 0),
            zero,
            mode,
            objective.params,
            method,
        )
    loc, scale = _svi_guide(program, objective.params, steps, learning_rate, seed)
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


def _svi_guide(program, params, steps, learning_rate, seed):
    """The Gaussian of ``fit(method="svi")`` on the link scale, per subject: loc, scale (N, d)."""
    from pp_aif.fitting.fit import _run_svi

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

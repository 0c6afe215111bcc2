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
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyro
import torch
from torch import Tensor

from pp_aif.agent import AgentSettings
from pp_aif.data import BehaviourData
from pp_aif.errors import DataError
from pp_aif.fitting.fit import behavioural_program
from pp_aif.fitting.likelihood import PARAMETERS
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
    module docstring).

    Parameters
    ----------
    task : Task
    data : BehaviourData
        Read for ``task`` (``BehaviourData.read(source, task)``).
    params : sequence of str
        The fitted parameters, d of them, each once (``pp_aif.fitting.PARAMETERS``).
    priors : dict, optional
        As for ``pp_aif.fit``; default ``default_priors()``.
    method : {"laplace", "iwelbo", "grid"}
        "iwelbo": ``num_samples`` (>= 2) importance samples from an SVI guide fitted for
        ``steps`` Adam steps at ``learning_rate``; "grid": d <= 2, ``grid_points`` (>= 3) per
        axis over +-``width`` Laplace standard deviations.
    settings : AgentSettings, optional
    seed : int

    Returns
    -------
    Evidence

    Raises
    ------
    ValueError
        A setting out of its range, unknown or repeated parameters, or data that do not fit
        the task, each named.
    """
    _check_request(
        task,
        data,
        params,
        priors,
        method,
        num_samples,
        steps,
        learning_rate,
        grid_points,
        width,
        seed,
    )
    d = len(params)
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


def _check_request(
    task, data, params, priors, method, num_samples, steps, learning_rate, grid_points, width, seed
) -> None:
    """A ValueError (DataError for the data) naming the first argument that is wrong."""
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {METHODS}")
    if isinstance(params, str) or not isinstance(params, Sequence):
        raise ValueError(
            f"params: {params!r}; give a sequence of parameter names, e.g. ('alpha',), from "
            f"{PARAMETERS}"
        )
    unknown = [p for p in params if p not in PARAMETERS]
    if unknown or not params:
        raise ValueError(f"params: {unknown or 'none'}; choose from {PARAMETERS}")
    if len(set(params)) != len(params):
        raise ValueError(f"params: {list(params)} names a parameter twice")
    if method == "grid" and len(params) > 2:
        raise ValueError(f"params: the grid reference is for 1 or 2 parameters, got {len(params)}")
    if priors is not None and not isinstance(priors, Mapping):
        raise ValueError(f"priors: is a {type(priors).__name__}; give a dict {{name: prior}}")
    if not isinstance(data, BehaviourData):
        raise DataError(
            f"data: is a {type(data).__name__}; read it with BehaviourData.read(source, task)"
        )
    names = (tuple(task.labels.modalities), tuple(task.labels.factors))
    if (data.modalities, data.factors) != names or data.observations.shape[2] != task.trial_length:
        raise DataError(
            f"data: modalities {list(data.modalities)}, factors {list(data.factors)} and "
            f"{data.observations.shape[2]} steps per trial do not fit task {task.name!r} "
            f"({list(names[0])}, {list(names[1])}, {task.trial_length} steps); read the data "
            "with BehaviourData.read(source, task)"
        )
    for name, value, least in (
        ("num_samples", num_samples, 2),
        ("steps", steps, 1),
        ("grid_points", grid_points, 3),
    ):
        if not _is_integer(value) or value < least:
            raise ValueError(f"{name}: must be an integer >= {least}, got {value!r}")
    for name, value in (("learning_rate", learning_rate), ("width", width)):
        if not _is_real(value) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}: must be a positive finite number, got {value!r}")
    if not _is_integer(seed):
        raise ValueError(f"seed: must be an integer, got {seed!r}")


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


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

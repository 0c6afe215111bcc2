"""The agent's fittable parameters: their names, link functions and default priors.

Written here, below everything that uses them (the behavioural program, the likelihoods, the
fitting methods, the CLI), so that none of those imports upward to learn a parameter's name.

``PARAMETERS``: gamma (policy precision), alpha (action precision), preference (the scale c of
ln p~(o) = log_softmax(c C)), learning_rate, forgetting and concentration (of the learned counts
pA, pB, pD), likelihood_precision (zeta: the agent uses A^zeta, renormalised). ``LINKS``: each
one's link^-1 from its unconstrained scale (exp for positive values, sigmoid for forgetting).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ExpTransform, SigmoidTransform

__all__ = [
    "PARAMETERS",
    "LEARNING_PARAMETERS",
    "LINKS",
    "default_priors",
    "chosen_priors",
    "check_parameters",
    "log_prior_on_link_scale",
]

PARAMETERS = (
    "gamma",
    "alpha",
    "preference",
    "learning_rate",
    "forgetting",
    "concentration",
    "likelihood_precision",
)
#: the parameters of learning the counts between trials
LEARNING_PARAMETERS = ("learning_rate", "forgetting", "concentration")

#: link^-1 of each parameter: its unconstrained scale (log for positive values, logit for omega)
LINKS = {
    "gamma": ExpTransform(),
    "alpha": ExpTransform(),
    "preference": ExpTransform(),
    "learning_rate": ExpTransform(),
    "forgetting": SigmoidTransform(),
    "concentration": ExpTransform(),
    "likelihood_precision": ExpTransform(),
}
#: (m, s) of each default prior link^-1(Normal(m, s))
_PRIOR_SCALES = {
    "gamma": (0.0, 1.0),  # median 1, SPM's default
    "alpha": (math.log(4.0), 1.0),  # median 4
    "preference": (0.0, 1.0),  # the task's own C, within a factor of 5 (90%)
    "learning_rate": (0.0, 1.0),
    "forgetting": (-2.0, 1.0),  # median 0.12
    "concentration": (0.0, 1.0),
    "likelihood_precision": (0.0, 0.5),  # the task's own A, within a factor of 2.3 (90%)
}


def default_priors(dtype=torch.float64) -> dict:
    """link^-1(Normal(m, s)) per parameter: gamma ~ LogNormal(0, 1), alpha ~ LogNormal(ln 4, 1),
    preference ~ LogNormal(0, 1), learning_rate ~ LogNormal(0, 1), concentration ~
    LogNormal(0, 1), forgetting ~ logit-normal(-2, 1), likelihood_precision ~ LogNormal(0, 0.5)."""
    priors = {}
    for name, (loc, scale) in _PRIOR_SCALES.items():
        base = dist.Normal(torch.tensor(loc, dtype=dtype), torch.tensor(scale, dtype=dtype))
        priors[name] = dist.TransformedDistribution(base, [LINKS[name]])
    return priors


def chosen_priors(params, priors: dict | None = None, dtype=torch.float64) -> dict:
    """{name: prior} for the fitted parameters: the caller's, else ``default_priors()``."""
    every = {**default_priors(dtype), **(priors or {})}
    return {name: every[name] for name in params}


def log_prior_on_link_scale(priors: dict, params, u: torch.Tensor) -> torch.Tensor:
    """The priors' density of link-scale values u (..., d), one column per name of
    ``params``: sum_i ln p_i(link_i(u_i)) + ln |d link_i / d u_i|, (...). A prior that is
    link^-1(Normal) (the defaults) is the Normal's density of u itself, which stays finite
    where link(u) leaves floating point."""
    total = torch.zeros(u.shape[:-1], dtype=u.dtype, device=u.device)
    for i, name in enumerate(params):
        prior, link = priors[name], LINKS[name]
        base = getattr(prior, "base_dist", None)
        if (
            isinstance(base, dist.Normal)
            and len(prior.transforms) == 1
            and type(prior.transforms[0]) is type(link)
        ):
            total = total + base.log_prob(u[..., i])
        else:
            value = link(u[..., i])
            total = total + prior.log_prob(value) + link.log_abs_det_jacobian(u[..., i], value)
    return total


def check_parameters(what: str, names) -> None:
    """A ValueError naming ``what`` where ``names`` holds one that is not a parameter."""
    unknown = sorted(set(names) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"{what}: unknown parameters {unknown}; known: {', '.join(PARAMETERS)}")

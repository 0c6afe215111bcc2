"""Simulated subjects with given parameters, posterior predictive checks, and choice rates.

Dimension symbols: N subjects, K trials, T steps, D draws, F factors (U_f controls).

``simulate_subjects`` runs the batched agent with one parameter value per agent (the precisions,
learning rate and forgetting as (N, 1) settings tensors, the preference scale as
``AgentSettings.preference_scale``, and pD_0 = kappa * model.pD per agent): the process that the
likelihood of :mod:`pp_aif.fitting.likelihood` scores. ``posterior_predictive`` does so for
posterior draws of every subject; ``choice_rates`` summarises either data set per condition
(factor, step, block of trials, control) for the check and its figure.
"""

from __future__ import annotations

import dataclasses

import arviz as az
import numpy as np
import torch
import xarray as xr

from pp_aif.agent import AgentSettings
from pp_aif.fitting.fit import parameter_draws
from pp_aif.fitting.likelihood import PARAMETERS, parameter_defaults, sharpened_likelihood
from pp_aif.simulation import simulate

__all__ = ["simulate_subjects", "posterior_predictive", "choice_rates"]


def simulate_subjects(
    task,
    theta: dict,
    num_trials: int,
    seed: int = 0,
    *,
    settings: AgentSettings | None = None,
) -> xr.Dataset:
    """Simulate N agents, agent n with parameters {name: theta[name][n]} (``PARAMETERS``; the
    others at ``parameter_defaults(settings)``). Returns ``pp_aif.simulate``'s record."""
    unknown = sorted(set(theta) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"theta: {unknown} are not among {PARAMETERS}")
    settings = settings or task.settings or AgentSettings()
    model = task.model
    sizes = {name: torch.as_tensor(value).reshape(-1).shape[0] for name, value in theta.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"theta: one value per subject for every parameter; got sizes {sizes}")
    N = next(iter(sizes.values()))
    values = {**parameter_defaults(settings), **theta}

    def column(name):
        return torch.as_tensor(values[name], dtype=model.dtype).reshape(-1, 1).expand(N, 1)

    per_agent = dataclasses.replace(
        settings,
        policy_precision=column("gamma"),
        action_precision=column("alpha"),
        preference_scale=column("preference"),
        learning_rate=column("learning_rate"),
        forgetting=column("forgetting"),
    )
    own_A = None
    if "likelihood_precision" in theta:  # each agent infers and plans with its own A^zeta
        if model.pA is not None:
            raise ValueError(
                "theta: 'likelihood_precision' sharpens a fixed A, but this model's agents learn "
                "pA: their A is their normalised counts"
            )
        own_A = sharpened_likelihood(model.A, column("likelihood_precision")[:, 0])
    counts = {name: getattr(model, name) for name in ("pA", "pB", "pD")}
    if "concentration" in theta and all(value is None for value in counts.values()):
        raise ValueError(
            "theta: 'concentration' scales the initial counts pA, pB and pD, which the model "
            "does not have"
        )
    kappa = column("concentration")
    scaled = {  # kappa times each learned array's initial counts, one copy per agent
        name: None
        if value is None
        else [kappa.reshape(N, *[1] * p.dim()) * p.expand(N, *p.shape) for p in value]
        for name, value in counts.items()
    }
    return simulate(task, N, num_trials, seed, settings=per_agent, A=own_A, **scaled)


def posterior_predictive(
    task,
    inference: az.InferenceData,
    num_trials: int,
    *,
    num_draws: int = 100,
    seed: int = 0,
    settings: AgentSettings | None = None,
) -> xr.Dataset:
    """Simulated data sets from posterior draws: ``num_draws`` draws (evenly spaced over the
    chains' draws) for every subject, all simulated at once as D * N agents.

    Returns ``simulate_subjects``' record with its agent axis split into ("draw", "subject").
    """
    draws = parameter_draws(inference)  # {name: (C * D, N)}
    total, N = next(iter(draws.values())).shape
    chosen = np.linspace(0, total - 1, min(num_draws, total)).round().astype(int)
    theta = {name: value[chosen].reshape(-1) for name, value in draws.items()}
    dataset = simulate_subjects(task, theta, num_trials, seed, settings=settings)
    subjects = inference.posterior.coords["subject"].values
    agents = np.arange(len(chosen) * N).reshape(len(chosen), N)
    index = xr.DataArray(agents, dims=("draw", "subject"))
    split = dataset.isel(agent=index).drop_vars("agent", errors="ignore")
    return split.assign_coords(draw=chosen, subject=subjects)


def choice_rates(actions, num_controls, *, blocks: int = 1, present=None) -> xr.DataArray:
    """How often each control was chosen, per factor, step and block of trials.

    actions : int (..., K, T-1, F) (a data set's ``actions``, or a simulated ``action`` array
    without its last step), num_controls : U_f per factor; blocks : the trials split into this
    many consecutive blocks; present : bool (..., K), optional: only these trials count.
    Returns (..., factor, step, block, control) rates; factors with one control are left out.
    """
    actions = np.asarray(actions)
    K, steps, F = actions.shape[-3:]
    if not 1 <= blocks <= K:
        raise ValueError(f"blocks: between 1 and the {K} trials, got {blocks}")
    weight = np.ones(actions.shape[:-2]) if present is None else np.asarray(present, dtype=float)
    edges = np.linspace(0, K, blocks + 1).round().astype(int)
    factors = [f for f in range(F) if num_controls[f] > 1]
    width = max(num_controls[f] for f in factors)
    rates = np.full((*actions.shape[:-3], len(factors), steps, blocks, width), np.nan)
    for i, f in enumerate(factors):
        one_hot = actions[..., f, None] == np.arange(width)  # (..., K, T-1, U)
        for b in range(blocks):
            w = weight[..., edges[b] : edges[b + 1], None, None]
            counts = (one_hot[..., edges[b] : edges[b + 1], :, :] * w).sum(-3)
            total = w.sum(-3)
            with np.errstate(invalid="ignore", divide="ignore"):  # a block with no trials: NaN
                rates[..., i, :, b, :] = np.where(total > 0, counts / total, np.nan)
    dims = [f"dim_{i}" for i in range(actions.ndim - 3)] + ["factor", "step", "block", "control"]
    return xr.DataArray(rates, dims=dims, coords={"factor": factors})

"""``fit``: agents fitted to people's behaviour by NUTS, returned as ``arviz.InferenceData``.

Dimension symbols: N subjects, K trials, C chains, D draws.

The posterior of the precisions (gamma, alpha), one pair per subject, under the behavioural
program ``pp_aif.programs.behaviour``. The InferenceData holds ``posterior`` (chain, draw,
subject), ``sample_stats`` (``diverging``), ``observed_data`` (the actions) and a pointwise
``log_likelihood`` per subject and trial ("actions", (chain, draw, subject, trial)), ready for
``arviz.loo``. Divergences, R-hat > 1.01 and effective sample sizes below 100 per chain are
warned about (``ConvergenceWarning``) with their numbers.
"""

from __future__ import annotations

import time
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import torch

from pp_aif.agent import AgentSettings
from pp_aif.data import BehaviourData
from pp_aif.errors import ConvergenceWarning
from pp_aif.fitting.likelihood import action_log_likelihood, policy_values
from pp_aif.programs import behaviour

__all__ = ["fit", "default_priors", "PARAMETERS"]

PARAMETERS = ("gamma", "alpha")


def default_priors(dtype=torch.float64) -> dict:
    """gamma ~ LogNormal(0, 1) (median 1, SPM's default); alpha ~ LogNormal(ln 4, 1)."""
    return {
        "gamma": dist.LogNormal(torch.tensor(0.0, dtype=dtype), 1.0),
        "alpha": dist.LogNormal(torch.tensor(float(np.log(4.0)), dtype=dtype), 1.0),
    }


def fit(
    task,
    data: BehaviourData,
    params=PARAMETERS,
    priors: dict | None = None,
    *,
    method: str = "nuts",
    chains: int = 4,
    draws: int = 500,
    warmup: int = 500,
    seed: int = 0,
    settings: AgentSettings | None = None,
) -> az.InferenceData:
    """Fit the agent's precisions to each subject's actions.

    task : the Task the data come from (its model and settings define the agent);
    data : BehaviourData (``BehaviourData.read``); params : which of gamma, alpha to infer
    (the others stay at the settings' values); priors : {name: distribution}, defaults
    ``default_priors()``; method : "nuts" (more methods: issue 6); chains are run one after
    another, each seeded from ``seed``.
    """
    if method != "nuts":
        raise ValueError(f"method: {method!r}; only 'nuts' is available so far")
    unknown = set(params) - set(PARAMETERS)
    if unknown or not params:
        raise ValueError(f"params: {sorted(unknown) or 'none'}; choose from {PARAMETERS}")
    if chains < 1 or draws < 1 or warmup < 0:
        raise ValueError(
            f"chains and draws must be >= 1, warmup >= 0; got {chains}, {draws}, {warmup}"
        )
    names = (tuple(task.labels.modalities), tuple(task.labels.factors))
    if (data.modalities, data.factors) != names or data.observations.shape[2] != task.trial_length:
        raise ValueError(
            f"data: modalities {list(data.modalities)}, factors {list(data.factors)} and "
            f"{data.observations.shape[2]} steps per trial do not fit task {task.name!r} "
            f"({list(names[0])}, {list(names[1])}, {task.trial_length} steps); read the data "
            "with BehaviourData.read(source, task)"
        )
    settings = settings or task.settings or AgentSettings()
    model = task.model
    values = policy_values(model, settings, data.observations, data.actions)
    all_priors = {**default_priors(model.dtype), **(priors or {})}
    chosen = {name: all_priors[name] for name in params}
    fixed = {"gamma": settings.policy_precision, "alpha": settings.action_precision}

    def program(values):
        behaviour(values, priors=chosen, fixed=fixed, present=data.present)

    samples = {name: [] for name in params}
    diverging = []
    start = time.perf_counter()
    for chain in range(chains):
        pyro.set_rng_seed(seed + chain)
        mcmc = pyro.infer.MCMC(
            pyro.infer.NUTS(program), num_samples=draws, warmup_steps=warmup, disable_progbar=True
        )
        mcmc.run(values)
        for name, value in mcmc.get_samples().items():
            samples[name].append(value[:, :, 0, 0].detach().numpy())  # (draws, N)
        flags = np.zeros(draws, dtype=bool)
        divergent = mcmc.diagnostics().get("divergences", {})
        for indices in divergent.values():
            flags[np.asarray(indices, dtype=int)[np.asarray(indices, dtype=int) < draws]] = True
        diverging.append(flags)
    seconds = time.perf_counter() - start
    posterior = {name: np.stack(values_, 0) for name, values_ in samples.items()}  # (C, D, N)
    theta = {
        name: torch.as_tensor(posterior[name]) if name in posterior else fixed[name]
        for name in PARAMETERS
    }
    pointwise = action_log_likelihood(values, theta["gamma"], theta["alpha"]).sum(-1)
    pointwise = torch.where(data.present, pointwise, torch.zeros((), dtype=pointwise.dtype))
    subjects = list(data.subjects)
    coords = {"subject": subjects, "trial": np.arange(data.present.shape[1])}
    actions = data.actions.numpy()
    inference = az.from_dict(
        posterior=posterior,
        sample_stats={"diverging": np.stack(diverging, 0)},
        log_likelihood={"actions": pointwise.detach().numpy()},
        observed_data={"actions": actions},
        coords={**coords, "step": np.arange(actions.shape[2]), "factor": list(data.factors)},
        dims={
            **{name: ["subject"] for name in params},
            "actions": ["subject", "trial"],
        },
        attrs={"method": method, "seconds": seconds, "params": list(params)},
    )
    _warn_about(inference, params, chains, draws)
    return inference


def _warn_about(inference: az.InferenceData, params, chains: int, draws: int) -> None:
    divergent = int(inference.sample_stats["diverging"].values.sum())
    if divergent:
        warnings.warn(
            f"fit: {divergent} divergent transitions of {chains * draws}; raise warmup or "
            "reparameterise",
            ConvergenceWarning,
            stacklevel=3,
        )
    if chains > 1:
        rhat = az.rhat(inference, var_names=list(params))
        worst = max(float(rhat[name].max()) for name in params)
        if worst > 1.01:
            warnings.warn(
                f"fit: R-hat up to {worst:.3f} (> 1.01)", ConvergenceWarning, stacklevel=3
            )
    ess = az.ess(inference, var_names=list(params))
    lowest = min(float(ess[name].min()) for name in params)
    if lowest < 100 * chains:
        warnings.warn(
            f"fit: effective sample size down to {lowest:.0f} (< 100 per chain); draw more",
            ConvergenceWarning,
            stacklevel=3,
        )

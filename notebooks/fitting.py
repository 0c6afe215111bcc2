# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fitting an agent to people's choices, and checking the fit
#
# The path a computational-psychiatry study takes, in one probabilistic program:
#
# 1. a small group of "people" (simulated agents with known parameters) do SPM's T-maze for a
#    few dozen trials, in a world where the reward is usually on the left, so that their agents
#    *learn* the context prior (Dirichlet counts pD) and stop visiting the cue;
# 2. their choices are written to a long-format CSV, as a lab's data would be, and read back
#    with validation (`pp_aif.BehaviourData.read`);
# 3. the agent's action precision alpha and learning rate eta are fitted per subject by NUTS
#    (`pp_aif.fit`), the person's actions being observed `Categorical` sites of the behavioural
#    Pyro program, whose likelihood follows the learning from trial to trial;
# 4. recovery: posterior means and 90% intervals against the truth;
# 5. a posterior predictive check: the group's choice rates per block of trials, against data
#    sets simulated from posterior draws;
# 6. the pointwise log-likelihood is ready for PSIS-LOO (`arviz.loo`).
#
# With `SMOKE_TEST=1` (the tests) everything runs at a tiny size.

# %%
import os
import tempfile
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import torch
from pp_aif.tasks.tmaze import with_context_bias

import pp_aif
from pp_aif.data import BehaviourData, long_format
from pp_aif.errors import ConvergenceWarning
from pp_aif.fitting.predictive import choice_rates, posterior_predictive, simulate_subjects
from pp_aif.plots import plot_choice_rates, plot_recovery

SMOKE = os.environ.get("SMOKE_TEST") == "1"
torch.set_num_threads(1)  # tiny tensors: one thread is fastest
SUBJECTS, TRIALS = (4, 12) if SMOKE else (8, 40)
WARMUP, DRAWS, CHAINS = (40, 40, 2) if SMOKE else (300, 300, 2)

# %% [markdown]
# ## 1. The task and the people
#
# The T-maze's world puts the reward on the left in 80% of trials. Each person's alpha and eta
# are drawn from the priors the fit will use (alpha ~ LogNormal(ln 4, 1), eta ~ LogNormal(0, 1));
# the policy precision gamma stays at 1 (with alpha it would trade off, see
# `experiments/parameter_recovery.py`), the preferences at the task's own.

# %%
task = with_context_bias(pp_aif.load_task("tmaze"), 0.8)
m = task.model

generator = torch.Generator().manual_seed(1)
truth = pp_aif.fitting.prior_draws(("alpha", "learning_rate"), SUBJECTS, generator)
record = simulate_subjects(task, truth, TRIALS, seed=1)
print({name: np.round(value.numpy(), 2).tolist() for name, value in truth.items()})

# %% [markdown]
# ## 2. The data file, as a lab would have it

# %%
folder = Path(tempfile.mkdtemp())
table = long_format(record, task)
table.to_csv(folder / "choices.csv", index=False)
print(table.head(6).to_string(index=False))
data = BehaviourData.read(folder / "choices.csv", task)
print(data.observations.shape, data.actions.shape)

# %% [markdown]
# ## 3. The fit
#
# One NUTS run fits every subject (independent subjects in a `pyro.plate`). Warnings about
# convergence come as `ConvergenceWarning`s with their numbers; at the smoke size they are
# expected.

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", ConvergenceWarning)
    inference = pp_aif.fit(
        task, data, ("alpha", "learning_rate"), chains=CHAINS, warmup=WARMUP, draws=DRAWS, seed=0
    )
for warning in caught:
    print("warning:", warning.message)
print(az.summary(inference, var_names=["alpha", "learning_rate"], round_to=2).to_string())

# %% [markdown]
# ## 4. Recovery

# %%
draws = {
    name: inference.posterior[name].values.reshape(-1, SUBJECTS)
    for name in ("alpha", "learning_rate")
}
plot_recovery({name: value.numpy() for name, value in truth.items()}, draws)
covered = {
    name: float(
        (
            (truth[name].numpy() >= np.quantile(draws[name], 0.05, 0))
            & (truth[name].numpy() <= np.quantile(draws[name], 0.95, 0))
        ).mean()
    )
    for name in draws
}
print("share of true values inside their 90% interval:", covered)

# %% [markdown]
# ## 5. Posterior predictive check
#
# Data sets simulated from posterior draws of every subject, summarised like the data: how often
# the group's first move goes to the cue or straight to the left arm, per block of trials.

# %%
blocks = 2 if SMOKE else 4
predicted = posterior_predictive(task, inference, TRIALS, num_draws=10 if SMOKE else 40, seed=2)
observed = choice_rates(data.actions.numpy(), m.num_controls, blocks=blocks)
simulated = choice_rates(predicted.action.values[..., :-1, :], m.num_controls, blocks=blocks)
first_moves = {"cue": 3, "left arm": 1}
plot_choice_rates(
    {
        label: observed.sel(factor=0).isel(step=0, control=u).mean("dim_0").values
        for label, u in first_moves.items()
    },
    {
        label: simulated.sel(factor=0).isel(step=0, control=u).mean("dim_1").values
        for label, u in first_moves.items()
    },
    title="first move per block of trials",
)

# %% [markdown]
# ## 6. Ready for model comparison
#
# The InferenceData holds a pointwise log-likelihood per subject and trial, so PSIS-LOO runs on
# it directly (the Comparison issue builds on this).

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Pareto k at a tiny size
    loo = az.loo(inference)
print(f"elpd_loo = {loo.elpd_loo:.1f} (se {loo.se:.1f}), p_loo = {loo.p_loo:.1f}")
assert inference.log_likelihood["actions"].shape[-2:] == (SUBJECTS, TRIALS)
assert np.isfinite(loo.elpd_loo)

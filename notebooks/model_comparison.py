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
# # Which agent did the people use? From choices to a model-selection figure
#
# A group of "people" (simulated learners on SPM's T-maze, in a world where the reward is
# usually on the left) are fitted by two candidate agents: the learner that generated them, and
# an agent whose context prior never changes. Then:
#
# 1. `pp_aif.comparison.compare`: PSIS-LOO per trial, in ArviZ's table, with unreliable Pareto
#    k's named by subject and trial;
# 2. each subject's log evidence under each agent, three ways (Laplace, an importance-weighted
#    ELBO with its standard error, and the quadrature reference, for these 1-2 parameters);
# 3. random-effects Bayesian model selection (`pp_aif.comparison.bms`): model frequencies,
#    exceedance and protected exceedance probabilities, the Bayesian omnibus risk, and its figure.
#
# With `SMOKE_TEST=1` (the tests) everything runs at a tiny size.

# %%
import os
import warnings

import numpy as np
import torch
from pp_aif.tasks.tmaze import with_context_bias, without_learning

import pp_aif
from pp_aif.comparison import bms, compare, log_evidence
from pp_aif.data import BehaviourData, long_format
from pp_aif.errors import ConvergenceWarning, DiagnosticWarning
from pp_aif.fitting.predictive import simulate_subjects
from pp_aif.plots import plot_model_selection

SMOKE = os.environ.get("SMOKE_TEST") == "1"
torch.set_num_threads(1)
SUBJECTS, TRIALS, STEPS = (4, 10, 200) if SMOKE else (12, 40, 1500)
GRID, SAMPLES = (61, 1000) if SMOKE else (101, 4000)  # quadrature points per axis, IS samples

# %% [markdown]
# ## The people and the candidates

# %%
learner = with_context_bias(pp_aif.load_task("tmaze"), 0.8)
fixed_prior = without_learning(learner)
candidates = {
    "learner": (learner, ("alpha", "learning_rate")),
    "fixed prior": (fixed_prior, ("alpha",)),
}
truth = pp_aif.fitting.prior_draws(
    ("alpha", "learning_rate"), SUBJECTS, torch.Generator().manual_seed(3)
)
data_table = long_format(simulate_subjects(learner, truth, TRIALS, seed=3), learner)
data = BehaviourData.read(data_table, learner)

# %% [markdown]
# ## 1. PSIS-LOO
#
# Both agents are fitted by SVI here (seconds); `method="nuts"` samples the exact posterior.

# %%
fits = {}
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    for name, (task, params) in candidates.items():
        fits[name] = pp_aif.fit(task, data, params, method="svi", steps=STEPS, draws=1000)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", DiagnosticWarning)
    table = compare(fits)
print(table[["rank", "elpd_loo", "p_loo", "elpd_diff", "weight", "se", "dse"]].round(2))
for warning in caught:
    print("warning:", warning.message)

# %% [markdown]
# ## 2. Each subject's log evidence, three ways

# %%
evidence = {}
for name, (task, params) in candidates.items():
    estimates = {
        method: log_evidence(
            task, data, params, method=method, num_samples=SAMPLES, grid_points=GRID
        )
        for method in ("laplace", "iwelbo", "grid")
    }
    evidence[name] = estimates["grid"].log_evidence
    print(
        f"{name:>12}: ln p(y) summed over subjects: "
        + ", ".join(f"{method} {e.total:.2f}" for method, e in estimates.items())
    )
    gap = (estimates["iwelbo"].log_evidence - estimates["grid"].log_evidence).abs()
    assert (gap < 5 * estimates["iwelbo"].stderr + 1e-3).all()

# %% [markdown]
# ## 3. Random-effects Bayesian model selection

# %%
names = list(candidates)
matrix = torch.stack([evidence[name] for name in names], -1).numpy()  # (subjects, models)
result = bms(matrix)
for k, name in enumerate(names):
    print(
        f"{name:>12}: frequency {result.expected_frequencies[k]:.2f}, exceedance "
        f"{result.exceedance[k]:.3f}, protected {result.protected_exceedance[k]:.3f}"
    )
print(f"Bayesian omnibus risk {result.bor:.3f}")
plot_model_selection(names, result)
assert np.isclose(result.expected_frequencies.sum(), 1.0)

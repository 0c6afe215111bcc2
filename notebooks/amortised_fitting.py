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
# # Amortised fitting: train once, fit a group in seconds, check it by simulation
#
# A study that fits hundreds of people need not start every fit from nothing. Here:
#
# 1. a **posterior estimator** of the bandit agent's action precision alpha and learning rate
#    is trained once on subjects simulated from the fit's priors
#    (`pp_aif.fitting.training.train_estimator`; on the command line `pp-aif train`);
# 2. a **group** of new subjects is fitted by it (`pp_aif.fit(method="amortised")`), beside
#    NUTS on the same subjects;
# 3. **simulation-based calibration** (Talts et al. 2018): the rank of each true value among
#    its posterior draws is uniform if the posterior is right; the ECDF of the ranks against
#    its simultaneous 95% band shows where it is not.
#
# With `SMOKE_TEST=1` (the tests) everything runs at a tiny size; the full-size results are in
# docs/experiments.md (`experiments/amortised_fitting.py`, `experiments/calibration.py`).

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import pp_aif
from pp_aif.data import BehaviourData, long_format
from pp_aif.fitting import prior_draws
from pp_aif.fitting.calibration import ecdf_band, ecdf_difference, ranks
from pp_aif.fitting.predictive import simulate_subjects
from pp_aif.fitting.training import train_estimator

SMOKE = os.environ.get("SMOKE_TEST") == "1"
SIMULATIONS, EPOCHS = (200, 2) if SMOKE else (10_000, 30)
SUBJECTS, TRIALS = (6, 10) if SMOKE else (40, 60)
PARAMS = ("alpha", "learning_rate")
task = pp_aif.load_task("bandit")

# %% [markdown]
# ## 1. Train the estimator
#
# Each simulated subject does 20-60 trials (fewer in the smoke test), so the estimator learns
# what fewer trials tell; absent trials are read as trials not done.

# %%
start = time.perf_counter()
estimator, record = train_estimator(
    task,
    PARAMS,
    simulations=SIMULATIONS,
    trials=TRIALS,
    min_trials=max(2, TRIALS // 3),
    epochs=EPOCHS,
    progress=print if not SMOKE else None,
)
print(f"trained in {time.perf_counter() - start:.0f} s; best validation loss "
      f"{min(record['validation_loss']):.3f} nats")  # fmt: skip

# %% [markdown]
# ## 2. Fit a group: amortised beside NUTS

# %%
truth = prior_draws(PARAMS, SUBJECTS, torch.Generator().manual_seed(7))
data = BehaviourData.read(long_format(simulate_subjects(task, truth, TRIALS, 7), task), task)
start = time.perf_counter()
amortised = pp_aif.fit(task, data, PARAMS, method="amortised", estimator=estimator, draws=500)
amortised_seconds = time.perf_counter() - start
start = time.perf_counter()
nuts = pp_aif.fit(
    task, data, PARAMS, chains=2, warmup=50 if SMOKE else 300, draws=50 if SMOKE else 300
)
nuts_seconds = time.perf_counter() - start
print(f"amortised: {amortised_seconds:.1f} s; NUTS: {nuts_seconds:.1f} s")

figure, axes = plt.subplots(1, 2, figsize=(9, 4))
for axis, name in zip(axes, PARAMS, strict=True):
    a = np.log(nuts.posterior[name].values).mean((0, 1))
    b = np.log(amortised.posterior[name].values).mean((0, 1))
    axis.scatter(a, b)
    low, high = min(a.min(), b.min()), max(a.max(), b.max())
    axis.plot([low, high], [low, high], ":", color="grey")
    axis.set_xlabel(f"NUTS: posterior mean of ln {name}")
    axis.set_ylabel(f"amortised: posterior mean of ln {name}")
figure.tight_layout()

# %% [markdown]
# ### Where each subject's posterior must be exact: importance sampling
#
# The estimator's posterior is an approximation. `importance=M` draws M proposals a subject
# from it and weighs each by prior x the agent's exact likelihood / q (Pareto-smoothed
# importance sampling). The reweighted draws are the exact posterior's, up to Monte Carlo error,
# wherever the Pareto shape k stays below 0.7. Each subject's k and effective sample size are
# kept, and a subject above 0.7 is warned about by name. It costs one likelihood evaluation a
# proposal, which is still far less than NUTS.

# %%
start = time.perf_counter()
weighed = pp_aif.fit(
    task, data, PARAMS, method="amortised", estimator=estimator, draws=500,
    importance=200 if SMOKE else 2000,
)  # fmt: skip
k = np.asarray(weighed.attrs["importance_pareto_k"])
print(
    f"importance-sampled: {time.perf_counter() - start:.1f} s; Pareto k at most {k.max():.2f}, "
    f"effective sample size median {np.median(weighed.attrs['importance_ess']):.0f}"
)
for name in PARAMS:
    a = np.log(nuts.posterior[name].values).mean((0, 1))
    for label, fitted in (("amortised", amortised), ("importance-sampled", weighed)):
        b = np.log(fitted.posterior[name].values).mean((0, 1))
        print(f"{name}: r of the posterior means with NUTS, {label}: {np.corrcoef(a, b)[0, 1]:.3f}")

# %% [markdown]
# ## 3. Simulation-based calibration of the amortised fits
#
# For every subject the rank of its true value among 99 posterior draws; under a calibrated
# posterior the ranks are uniform and the ECDF difference stays in the grey band.

# %%
L = 99
N = SUBJECTS
z, lower, upper = ecdf_band(N, L, 500, seed=0)
figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for axis, name in zip(axes, PARAMS, strict=True):
    draws = amortised.posterior[name].values.reshape(-1, N)
    r = ranks(truth[name].numpy(), draws, L)
    axis.fill_between(z, lower, upper, step="post", color="0.85", label="95% band")
    axis.step(z, ecdf_difference(r, L), where="post", label="amortised")
    axis.axhline(0, color="black", linewidth=0.6)
    axis.set_title(name)
    axis.set_xlabel("fractional rank of the truth")
    axis.set_ylabel("ECDF - uniform CDF")
    axis.legend(fontsize=8)
figure.tight_layout()

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
# # Foraging in a 2x2 grid, done right
#
# The seed document of this project sketches an agent that looks for food in a 2x2 grid. The
# idea is sound; three slips in it are worth naming, because each one is a common way to get
# active inference wrong:
#
# 1. **A and B are swapped.** In SPM and pymdp (and here) `A[m]` is the *likelihood*
#    p(o_m | s), shape (O_m, S_1, ..., S_F), and `B[f]` is the *transition* p(s_f' | s_f, u),
#    shape (S_f, S_f, U_f). The seed calls A the transition matrix and B the observation
#    matrix, and then uses B both ways in its code.
# 2. **C is written as a matrix.** Preferences are one vector of log-preferences per outcome
#    modality, `C[m]` of shape (O_m,) (or (O_m, T) when they change in time), turned into a
#    distribution by a softmax. They are preferences over *outcomes*, not a matrix over states.
# 3. **Its "free energy" function is not the expected free energy.** Policies are scored by
#    G(pi) = risk + ambiguity = KL[q(o | pi) || p~(o)] + E_q(s | pi) H[p(o | s)]
#    = -(epistemic value + pragmatic value), computed from *predicted* states and outcomes under
#    each policy. The variational free energy F = E_q[ln q(s) - ln p(o, s)] scores beliefs about
#    observations already made; neither is a distance between the current state and a goal.
#
# Below, the same task built correctly with pp_aif (`models/foraging.py`), an agent acting in it,
# and the decomposition of G that drives it.

# %%
import os

import numpy as np
import torch

import pp_aif
from pp_aif.plots import plot_trial
from pp_aif.simulation import simulate
from pp_aif.task import load_task

SMOKE_TEST = bool(os.environ.get("SMOKE_TEST"))
NUM_AGENTS = 20 if SMOKE_TEST else 500
task = load_task("foraging")
model = task.model
model

# %% [markdown]
# ## Slip 1 is caught, not silently used
#
# Passing the transitions where the likelihood belongs is an error with a clear message: the
# arrays' shapes and normalisation do not fit the roles.

# %%
try:
    pp_aif.GenerativeModel(A=list(model.B), B=list(model.A))
except pp_aif.ModelError as error:
    print(f"ModelError: {error}")

# %% [markdown]
# ## Slip 3: what the agent actually scores at the start
#
# At t = 0 the agent stands top-left and smells nothing, so the food is in one of the other three
# cells. For each first move we show the best policy's terms (nats; G is minimised).

# %%
first = pp_aif.infer_states(model, task.observations[:1], mode="filtering")
beliefs = [q[0] for q in first.marginals]
scores = pp_aif.expected_free_energy(model, beliefs, time=0)
labels = task.labels
print("belief about the food's cell:", np.round(beliefs[1].numpy(), 3))
print(f"{'policy':>18} {'G':>7} {'risk':>7} {'ambiguity':>9} {'epistemic':>9} {'pragmatic':>9}")
order = torch.argsort(scores.G)
for p in order[:6].tolist():
    moves = " then ".join(labels.controls[0][u] for u in model.policies[p, :, 0].tolist())
    print(
        f"{moves:>18} {scores.G[p]:7.3f} {scores.risk[p]:7.3f} {scores.ambiguity[p]:9.3f} "
        f"{scores.epistemic[p]:9.3f} {scores.pragmatic[p]:9.3f}"
    )
assert torch.allclose(scores.G, -(scores.epistemic + scores.pragmatic))

# %% [markdown]
# Moving to an unvisited cell has epistemic value (it may reveal the food) *and* pragmatic value
# (the food may be there); staying put has neither, so the agent moves.
#
# ## Agents acting
#
# Every agent meets a world whose food cell is drawn at random; we record how often it finds the
# food and how sure it is, at the end, of where the food is.

# %%
record = simulate(task, num_agents=NUM_AGENTS, num_trials=1, seed=0)
found = (record["observation"].sel(modality="smell") == 1).any("time").mean().item()
food_accuracy = record["belief_accuracy"].sel(factor="food").isel(time=-1).mean().item()
first_moves = record["action"].sel(factor="location").isel(trial=0, time=0).values
smelled_at_start = record["observation"].sel(modality="smell").isel(trial=0, time=0).values == 1
print(f"found the food: {found:.3f} of {NUM_AGENTS} agents")
print(f"mean belief in the true food cell at the end: {food_accuracy:.3f}")
for name, group in (
    ("food at the start", smelled_at_start),
    ("no food at the start", ~smelled_at_start),
):
    moves = {labels.controls[0][u]: int((first_moves[group] == u).sum()) for u in range(5)}
    print(f"first moves, {name}: {moves}")
# at the top-left, "up", "left" and "stay" all keep the agent where it is
searching = first_moves[~smelled_at_start]
assert np.isin(searching, (2, 4)).all(), "without food in sight the agent moves to a new cell"
assert found > 0.9

# %%
figure = plot_trial(record, labels)
figure

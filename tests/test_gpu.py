"""On a GPU (skipped without CUDA): the agent, the simulator, the fitting likelihood and NUTS
run there with ``device=``, and give the CPU's numbers (float64, to 1e-10) where no random
draw is involved."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.agent import initial_state, step
from pp_aif.data import BehaviourData, long_format
from pp_aif.fitting import BehaviourLikelihood, fit
from tests.common import assert_close

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def tmaze():
    task = pp_aif.load_task("tmaze")
    settings = dataclasses.replace(task.settings, action_precision=4.0)
    return dataclasses.replace(task, settings=settings)


def test_the_agent_gives_the_cpus_numbers(tmaze):
    """One trial of 64 agents stepping through the same observations and actions."""
    record = pp_aif.simulate(tmaze, 64, 1, seed=0)
    observations = torch.as_tensor(record["observation"].values[:, 0])  # (N, T, M)
    actions = torch.as_tensor(record["action"].values[:, 0])  # (N, T, F)
    results = {}
    for device in ("cpu", CUDA):
        task = tmaze.to(device)
        state = initial_state(task.model, 64)
        out = []
        for t in range(task.trial_length):
            action = actions[:, t].to(device) if t < task.trial_length - 1 else None
            state, result = step(
                task.model,
                task.settings,
                state,
                observations[:, t].to(device),
                num_steps=task.trial_length,
                action=action,
            )
            out += [q.cpu() for q in result.beliefs]
            if result.scores is not None:
                out += [result.scores.G.cpu(), result.policy_posterior.cpu()]
                out += [p.cpu() for p in result.action_probabilities]
        results[str(device)] = out
    assert_close(results["cuda"], results["cpu"])


def test_simulate_runs_on_the_gpu(tmaze):
    record = pp_aif.simulate(tmaze, 256, 3, seed=0, device="cuda")
    actions = record["action"].values
    assert actions.shape == (256, 3, tmaze.trial_length, 2)
    assert ((actions[..., :-1, :] >= 0) & (actions[..., :-1, :] < 4)).all()
    assert np.isfinite(record["log_evidence"].values).all()


def test_the_likelihood_and_its_gradient_give_the_cpus_numbers(tmaze):
    data = BehaviourData.read(long_format(pp_aif.simulate(tmaze, 4, 12, seed=1), tmaze), tmaze)
    params = ("alpha", "preference", "learning_rate", "likelihood_precision")
    theta = {name: torch.linspace(0.5, 2.0, 4, dtype=torch.float64) for name in params}
    out = {}
    for device in ("cpu", CUDA):
        task, on = tmaze.to(device), data.to(device)
        likelihood = BehaviourLikelihood(
            task.model, task.settings, on.observations, on.actions, params, on.present
        )
        inputs = {name: v.to(device).requires_grad_(True) for name, v in theta.items()}
        value = likelihood(inputs).sum()
        grads = torch.autograd.grad(value, list(inputs.values()))
        out[str(device)] = [value.detach().cpu(), *[g.cpu() for g in grads]]
    assert_close(out["cuda"], out["cpu"])


@pytest.mark.parametrize("hierarchical", [False, True])
@pytest.mark.parametrize("method", ["nuts", "svi"])
def test_fits_run_on_the_gpu(tmaze, method, hierarchical):
    data = BehaviourData.read(long_format(pp_aif.simulate(tmaze, 2, 10, seed=2), tmaze), tmaze)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short run
        idata = fit(
            tmaze,
            data,
            ("alpha", "learning_rate"),
            method=method,
            hierarchical=hierarchical,
            chains=2,
            draws=50,
            warmup=50,
            steps=50,
            device="cuda",
        )
    chains = 2 if method == "nuts" else 1
    assert idata.posterior["alpha"].shape == (chains, 50, 2)
    assert np.isfinite(idata.log_likelihood["actions"].values).all()

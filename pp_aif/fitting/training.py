"""Training of the posterior estimators of amortised fitting
(``pp_aif.fitting.amortised``): subjects simulated from the priors by the batched agent, and
the estimator fitted to them by maximum likelihood (see that module's docstring)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict

import torch

from pp_aif.agent import AgentSettings
from pp_aif.fitting.amortised import EstimatorSettings, PosteriorEstimator, task_signature
from pp_aif.fitting.fit import prior_draws
from pp_aif.fitting.predictive import simulate_subjects
from pp_aif.parameters import LINKS, check_parameters

__all__ = ["train_estimator"]


def _simulate(task, settings_, params, priors, config: EstimatorSettings, generator, progress):
    """Simulated subjects: (theta {name: (S,)}, observations (S, K, T, M) int8, actions (S, K,
    T-1, F) int8, present (S, K) bool), in chunks of at most 2000 agents."""
    S, K = config.simulations, config.trials
    theta = prior_draws(params, S, generator, priors)
    observations, actions = [], []
    chunk = 2000
    for start in range(0, S, chunk):
        part = {name: value[start : start + chunk] for name, value in theta.items()}
        record = simulate_subjects(task, part, K, config.seed + start, settings=settings_)
        observations.append(torch.as_tensor(record["observation"].values, dtype=torch.int8))
        actions.append(torch.as_tensor(record["action"].values[:, :, :-1], dtype=torch.int8))
        if progress is not None:
            progress(f"simulated {min(start + chunk, S)}/{S} subjects")
    lengths = torch.randint(config.min_trials, K + 1, (S,), generator=generator)
    present = torch.arange(K)[None, :] < lengths[:, None]
    return theta, torch.cat(observations), torch.cat(actions), present


def train_estimator(
    task,
    params,
    settings: EstimatorSettings | None = None,
    *,
    priors: dict | None = None,
    agent_settings: AgentSettings | None = None,
    progress: Callable[[str], None] | None = None,
    **overrides,
) -> tuple[PosteriorEstimator, dict]:
    """Train a posterior estimator of ``params`` for ``task`` (see the module docstring).

    Returns (estimator, record): record has the training and validation loss per epoch (mean
    -ln q(theta | x)), Adam's step size at each epoch's end, the best epoch, and the seconds
    spent simulating and training.
    """
    params = tuple(params)
    check_parameters("params", params)
    if not params or len(set(params)) != len(params):
        raise ValueError(f"params: give each fitted parameter once, got {list(params)}")
    if settings is None:
        settings = EstimatorSettings(**overrides)
    elif overrides:
        settings = EstimatorSettings(**{**asdict(settings), **overrides})
    agent_settings = agent_settings or task.settings or AgentSettings()
    signature = task_signature(task, agent_settings, params, priors)
    model = task.model
    shapes = {
        "num_outcomes": list(model.num_outcomes),
        "num_controls": list(model.num_controls),
        "trial_length": task.trial_length,
        "max_trials": settings.trials,
    }
    generator = torch.Generator().manual_seed(settings.seed)
    start = time.perf_counter()
    theta, observations, actions, present = _simulate(
        task, agent_settings, params, priors, settings, generator, progress
    )
    simulated = time.perf_counter() - start
    u = torch.stack([LINKS[name].inv(theta[name]) for name in params], -1).float()  # (S, d)
    torch.manual_seed(settings.seed)
    estimator = PosteriorEstimator(signature, shapes, settings)
    estimator.shift.copy_(u.mean(0))
    estimator.scale.copy_(u.std(0).clamp_min(1e-6))
    target = (u - estimator.shift) / estimator.scale
    S = target.shape[0]
    held = max(1, int(round(S * settings.validation)))
    order = torch.randperm(S, generator=generator)
    train, valid = order[held:], order[:held]
    optimiser = torch.optim.Adam(estimator.parameters(), lr=settings.learning_rate)
    steps = settings.epochs * math.ceil(len(train) / settings.batch_size)
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
        if settings.schedule == "cosine"
        else None
    )

    def loss_of(index):
        return -estimator.log_prob(
            target[index], observations[index], actions[index], present[index]
        ).mean()

    record: dict = {
        "train_loss": [], "validation_loss": [], "step_size": [], "settings": asdict(settings)
    }  # fmt: skip
    best, best_state, since = math.inf, None, 0
    for epoch in range(1, settings.epochs + 1):
        estimator.train()
        shuffled = train[torch.randperm(len(train), generator=generator)]
        total = 0.0
        for i in range(0, len(shuffled), settings.batch_size):
            batch = shuffled[i : i + settings.batch_size]
            optimiser.zero_grad()
            loss = loss_of(batch)
            loss.backward()
            optimiser.step()
            if schedule is not None:
                schedule.step()
            total += float(loss.detach()) * len(batch)
        estimator.eval()
        with torch.no_grad():
            validation = float(
                sum(loss_of(valid[i : i + 4096]) * len(valid[i : i + 4096])
                    for i in range(0, len(valid), 4096)) / len(valid)
            )  # fmt: skip
        record["train_loss"].append(total / len(train))
        record["validation_loss"].append(validation)
        record["step_size"].append(optimiser.param_groups[0]["lr"])  # at the epoch's end
        if not math.isfinite(validation):
            raise FloatingPointError(f"train_estimator: the validation loss became {validation}")
        if validation < best - 1e-4:
            best, since = validation, 0
            best_state = {k: v.clone() for k, v in estimator.state_dict().items()}
            record["best_epoch"] = epoch
        else:
            since += 1
        if progress is not None:
            progress(
                f"epoch {epoch}/{settings.epochs}: loss {record['train_loss'][-1]:.4f}, "
                f"validation {validation:.4f}" + (" (best)" if since == 0 else "")
            )
        if since >= settings.patience:
            break
    estimator.load_state_dict(best_state)
    record["seconds_simulating"] = simulated
    record["seconds"] = time.perf_counter() - start
    return estimator.eval(), record

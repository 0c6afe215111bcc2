"""Rollouts of batched agents in their task's world, recorded as an ``xarray.Dataset``.

Dimensions: agent (N), trial (K), time (T), policy (the most policies a step considers: P of the
first step, or more where a task's policy set for a later step is larger; NaN where a step
considers fewer), policy_step (H, the deepest policy's steps), modality (M), factor (F), one
state axis per factor ("state_<name>"), one control axis per factor ("control_<name>") and one
outcome axis per modality ("outcome_<name>"), each a coordinate of the names.
Variables:
    observation (agent, trial, time, modality)        int, index into outcome_<modality>
    action (agent, trial, time, factor)               int, index into control_<factor>; -1 at
                                                      the last step (no action)
    true_state (agent, trial, time, factor)           int, index into state_<factor>
    belief_<factor> (agent, trial, time, state_<factor>)  q(s_t | o_<=t)
    belief_accuracy (agent, trial, time, factor)      q(s_t = true state)
    log_evidence (agent, trial, time)                 ln p(o_t | o_<t), nats
    policy_posterior, G, risk, ambiguity, epistemic, pragmatic, novelty
                    (agent, trial, time, policy)      NaN at the last step; the terms in nats
    reward (agent, trial)                             rewards collected in the trial (if defined)
Coordinates of the policies: the policy axis is an index into each step's own set of policies
(``pp_aif.agent.policies_at``: depth min(H, T-1-t), or the task's set for the step), so policy i
at step t is ``policy_actions[t, i]`` (time, policy, policy_step, factor; the control of each
factor at time t + policy_step, -1 beyond the step's policies or the policy's depth), named by
``policy_label[t, i]`` (time, policy), e.g. "go to cue, then go to left" ("" where none).
Every variable and coordinate has CF attributes ``long_name`` and ``units`` ("1" for
probabilities, indices and counts, "nats" for log probabilities and free energies) and a
``description``; the run's settings are plain attributes of the record, each named like the
``AgentSettings`` field it holds (``SETTING_ATTRIBUTES``; lesions as ``lesions_removed``, the
terms left out of the policy score, or "none"), read back by :func:`recorded_settings`.
Loops run over trials and time steps only; agents are a tensor axis.

The world is the task's (``Task.environment``): its model, its process, a process per block of
trials, or any ``Environment``. Each trial starts with ``reset(N, generator, trial=k)``, so a
world can change across trials (environments whose ``reset`` takes no ``trial`` are not told).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pyro
import torch
import xarray as xr

from pp_aif.agent import (
    AgentSettings,
    check_compilable,
    initial_state,
    learn_between_trials,
    policies_at,
    step,
)
from pp_aif.envs import Environment, GenerativeProcess, accepts_trial, check_same_sizes
from pp_aif.planning.policies import Lesions
from pp_aif.spec import NORMALISATION_TOLERANCE, GenerativeModel
from pp_aif.task import Labels, Task
from pp_aif.validation import check_flag, check_integer

__all__ = [
    "simulate",
    "save",
    "recorded_settings",
    "settings_attributes",
    "policy_labels",
    "SETTING_ATTRIBUTES",
    "TERMS",
]

logger = logging.getLogger(__name__)
TERMS = ("G", "risk", "ambiguity", "epistemic", "pragmatic", "novelty")


def _as_task(task, num_steps: int | None) -> tuple[Task, Environment]:
    """A Task and its environment, from a Task or a tuple (model, environment, settings)."""
    if isinstance(task, Task):
        return task, task.environment()
    if not (isinstance(task, tuple) and len(task) == 3):
        raise TypeError(
            "task: expected a Task (pp_aif.load_task) or a tuple (model, environment, settings)"
        )
    model, env, settings = task
    if not isinstance(model, GenerativeModel):
        raise TypeError(f"task[0]: expected a GenerativeModel, got {type(model).__name__}")
    if isinstance(env, GenerativeModel):
        check_same_sizes(env, model, "task[1]")
        env = GenerativeProcess(env)
    if not isinstance(env, Environment):
        raise TypeError(
            f"task[1]: expected a GenerativeModel or an Environment (reset/step), got "
            f"{type(env).__name__}"
        )
    if settings is not None and not isinstance(settings, AgentSettings):
        raise ValueError(
            f"task[2]: expected an AgentSettings or None, got {type(settings).__name__}; build "
            "one with pp_aif.AgentSettings(...) so that every setting is checked"
        )
    steps = num_steps or int(model.policies.shape[1]) + 1
    labels = Labels(
        factors=[f"factor{f}" for f in range(model.num_factors)],
        states=[[str(s) for s in range(S)] for S in model.num_states],
        controls=[[str(u) for u in range(U)] for U in model.num_controls],
        modalities=[f"modality{m}" for m in range(model.num_modalities)],
        outcomes=[[str(o) for o in range(size)] for size in model.num_outcomes],
    )
    built = Task(
        name="custom",
        description="a model, an environment and settings",
        model=model,
        labels=labels,
        observations=torch.zeros(steps, model.num_modalities, dtype=torch.int64),
        actions=torch.zeros(steps - 1, model.num_factors, dtype=torch.int64),
        process=env,
        settings=settings,
        num_steps=steps,
    )
    return built, env


def _checked_observation(observation, model: GenerativeModel, N: int, where: str):
    """The environment's outcomes as int64 (N, M) on the model's device, or a ValueError naming
    the environment's call, the trial and the step."""
    observation = torch.as_tensor(observation).to(model.device)
    M = model.num_modalities
    if tuple(observation.shape) != (N, M) or observation.is_floating_point():
        raise ValueError(
            f"environment: {where} gave {observation.dtype} of shape {tuple(observation.shape)}; "
            f"expected integer outcomes (N, M) = ({N}, {M})"
        )
    sizes = torch.tensor(model.num_outcomes, device=model.device)
    bad = (observation < 0) | (observation >= sizes)
    if bad.any():
        n, m = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"environment: {where} gave agent {n} outcome {int(observation[n, m])} in modality "
            f"{m}, which has outcomes 0..{model.num_outcomes[m] - 1}"
        )
    return observation.long()


def _checked_states(states, model: GenerativeModel, N: int, where: str) -> np.ndarray:
    """The environment's true states as int64 (N, F), within the model's states."""
    states = torch.as_tensor(states).cpu()
    F = model.num_factors
    if tuple(states.shape) != (N, F) or states.is_floating_point():
        raise ValueError(
            f"environment: states after {where} are {states.dtype} of shape "
            f"{tuple(states.shape)}; expected integer states (N, F) = ({N}, {F})"
        )
    sizes = torch.tensor(model.num_states)
    bad = (states < 0) | (states >= sizes)
    if bad.any():
        n, f = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"environment: states after {where}: agent {n} is in state {int(states[n, f])} of "
            f"factor {f}, which has states 0..{model.num_states[f] - 1} in the agent's model"
        )
    return states.numpy()


def _record_width(model: GenerativeModel, settings: AgentSettings, T: int) -> int:
    """The record's policy axis: the most policies any step considers (at least the model's
    when the agents plan at its depth, as the record always had)."""
    widths = [policies_at(model, settings, t, T)[0].shape[0] for t in range(T - 1)]
    if settings.horizon in (None, model.policies.shape[1]):
        widths.append(model.policies.shape[0])
    return max(widths, default=0)


def _initial_counts(model: GenerativeModel, name: str, given, N: int):
    """Each agent's own counts (N, *shape of the model's), checked; None: the model's."""
    if given is None:
        return None
    own = getattr(model, name)
    if own is None:
        raise ValueError(f"{name}: the model has no {name}, so its agents do not learn it")
    given = [torch.as_tensor(p, dtype=model.dtype, device=model.device) for p in given]
    shapes = [tuple(p.shape) for p in given]
    expected = [(N, *p.shape) for p in own]
    if shapes != expected:
        raise ValueError(f"{name}: shapes {shapes}; expected {expected} (one array per agent)")
    for index, p in enumerate(given):
        if not torch.isfinite(p).all() or (p < 0).any() or not (p.sum(1) > 0).all():
            raise ValueError(
                f"{name}[{index}]: counts must be finite and >= 0, with a positive total in "
                "every distribution (each agent's probabilities are the normalised counts)"
            )
    return given


def _own_likelihood(model: GenerativeModel, given, N: int):
    """Each agent's own fixed A (N, O_m, S_1..S_F), checked; None: the model's."""
    if given is None:
        return None
    if model.pA is not None:
        raise ValueError(
            "A: the model has pA, so its agents' A is their normalised counts; an agent's own "
            "fixed A is for agents that do not learn it"
        )
    given = [torch.as_tensor(a, dtype=model.dtype, device=model.device) for a in given]
    shapes = [tuple(a.shape) for a in given]
    expected = [(N, *a.shape) for a in model.A]
    if shapes != expected:
        raise ValueError(f"A: shapes {shapes}; expected {expected} (one array per agent)")
    for index, a in enumerate(given):
        total = a.sum(1)
        if not torch.isfinite(a).all() or (a < 0).any():
            raise ValueError(f"A[{index}]: probabilities must be finite and >= 0")
        if (total - 1).abs().max() > NORMALISATION_TOLERANCE:
            raise ValueError(
                f"A[{index}]: every column p(o | s) must sum to 1 (largest departure "
                f"{float((total - 1).abs().max()):.3g})"
            )
    return given


def simulate(
    task,
    num_agents: int = 1,
    num_trials: int = 1,
    seed: int = 0,
    *,
    settings: AgentSettings | None = None,
    num_steps: int | None = None,
    progress=None,
    pD: list | None = None,
    pA: list | None = None,
    pB: list | None = None,
    A: list | None = None,
    device=None,
    reward: tuple[int, int] | None = None,
    compile: bool = False,  # noqa: A002 - the option's name in torch and on the command line
) -> xr.Dataset:
    """Run ``num_agents`` agents for ``num_trials`` trials of the task; returns the record.

    Parameters
    ----------
    task : Task (see ``pp_aif.load_task``), or a tuple (model, environment, settings)
        The environment is a GenerativeModel (the world's process, with the model's sizes) or
        any object with the ``Environment`` protocol (batched ``reset`` and ``step``, and
        ``states``); a ``reset`` that takes ``trial=`` is told each trial (0-based). A Task's
        world is ``task.environment()`` (its process, a process per block of trials, or its
        environment).
    settings : AgentSettings, optional; default: the task's
    num_steps : int, optional
        T of a trial; default: the task's (for a tuple: the policies' depth + 1).
    progress : callable(int), optional; called with 1 after each trial (e.g. a tqdm update)
    pD : F tensors (N, S_f), optional: each agent's initial-state counts before the first
        trial, as pA (default: the model's pD, when it has one)
    pA, pB : M tensors (N, O_m, S_1..S_F) and F tensors (N, S_f, S_f, U_f), optional: each
        agent's likelihood and transition counts before the first trial (default: the
        model's, when it has them); and before the first trial of every game, where the task
        has ``restarts``
    A : M tensors (N, O_m, S_1..S_F), optional: each agent's own fixed likelihood, for a
        model without pA (e.g. A at each agent's likelihood precision,
        ``pp_aif.fitting.simulate_subjects``); the world keeps its own
    device : run on this device (e.g. "cuda"; default: where the task's model is). The
        record is numpy either way; draws on a GPU come from its own generator, so a seed
        gives other trajectories there than on the CPU.
    reward : (modality, outcome), optional
        The outcome counted as a reward in the record's ``reward`` (default: the task's; a
        tuple (model, environment, settings) has none unless given here).
    compile : run each agent step's inference and planning as one compiled graph
        (``agent.step(compiled=True)``, ``torch.compile``): the same trajectories for the same
        seed; the first trials pay the compilation (1-5 s a process on the development machine,
        a graph per step of the trial and number of agents), and it gains only for long runs
        of few agents (docs/benchmarks.md). Off by default, so nothing compiles on the way to a
        first result. For the exact scheme and open-loop planning with exact EFE (others are
        a ValueError).

    The environment and the actions draw from a generator seeded with ``seed``; with sampled
    expected free energy, Pyro's global generator is seeded with it too.
    """
    num_agents = check_integer("num_agents", num_agents, minimum=1)
    num_trials = check_integer("num_trials", num_trials, minimum=1)
    seed = check_integer("seed", seed, minimum=0)
    if num_steps is not None:
        num_steps = check_integer("num_steps", num_steps, minimum=1, meaning="T of a trial")
    if settings is not None and not isinstance(settings, AgentSettings):
        raise ValueError(
            f"settings: expected an AgentSettings, got {type(settings).__name__}; build one "
            "with pp_aif.AgentSettings(...) so that every setting is checked"
        )
    if device is not None:
        if not isinstance(task, Task):
            raise ValueError(
                "device: give a Task (pp_aif.load_task), or move the model and environment of "
                "the (model, environment, settings) tuple yourself"
            )
        task = task.to(device)
    task, env = _as_task(task, num_steps)
    if reward is not None:
        task = dataclasses.replace(task, reward=reward)  # checked there
    settings = settings or task.settings or AgentSettings()
    check_flag("compile", compile)
    if compile:
        check_compilable(settings)  # before anything runs
    model = task.model
    T, N, K = num_steps or task.trial_length, num_agents, num_trials
    if task.step_policies is not None and T != task.trial_length:
        raise ValueError(
            f"num_steps: task {task.name!r} gives a policy set per step of its trials of "
            f"{task.trial_length} steps; simulate trials of that length (leave num_steps out)"
        )
    F, M = model.num_factors, model.num_modalities
    generator = torch.Generator(device=model.device).manual_seed(seed)
    if settings.efe_method == "sampled":  # Pyro's Predictive draws from the global generator
        pyro.set_rng_seed(seed)
    width = _record_width(model, settings, T)
    told = accepts_trial(env)

    observations = np.zeros((N, K, T, M), dtype=np.int64)
    actions = np.full((N, K, T, F), -1, dtype=np.int64)
    true_states = np.zeros((N, K, T, F), dtype=np.int64)
    beliefs = [np.zeros((N, K, T, S)) for S in model.num_states]
    log_evidence = np.zeros((N, K, T))
    recorded = {}
    pA, pB, pD = (
        _initial_counts(model, name, given, N)
        for name, given in (("pA", pA), ("pB", pB), ("pD", pD))
    )
    own_A = _own_likelihood(model, A, N)
    initial = (pA, pB, pD)
    starts = task.game_starts(K)
    for k in range(K):
        if starts is not None and starts[k]:  # a new game: the counts start again
            pA, pB, pD = initial
        state = initial_state(model, N, pA=pA, pB=pB, pD=pD, A=own_A)
        observation = env.reset(N, generator, trial=k) if told else env.reset(N, generator)
        for t in range(T):
            where = f"trial {k}, step {t} ({'reset' if t == 0 else 'step'})"
            observation = _checked_observation(observation, model, N, where)
            observations[:, k, t] = observation.cpu().numpy()
            true_states[:, k, t] = _checked_states(env.states, model, N, where)
            state, result = step(
                model, settings, state, observation, num_steps=T, generator=generator,
                compiled=compile,
            )  # fmt: skip
            for f, q in enumerate(result.beliefs):
                beliefs[f][:, k, t] = q.detach().cpu().numpy()
            log_evidence[:, k, t] = result.log_evidence.detach().cpu().numpy()
            if result.action is None:
                continue
            actions[:, k, t] = result.action.cpu().numpy()
            values = {
                "policy_posterior": result.policy_posterior,
                **{name: getattr(result.scores, name) for name in TERMS},
            }
            for name, value in values.items():
                if name not in recorded:  # (not setdefault: it would allocate every step)
                    recorded[name] = np.full((N, K, T, width), np.nan)
                array = recorded[name]
                array[:, k, t, : value.shape[-1]] = value.detach().cpu().numpy()
            observation = env.step(result.action)
        pA, pD, pB = learn_between_trials(
            model,
            settings,
            state,
            torch.as_tensor(observations[:, k], device=model.device),
            torch.as_tensor(actions[:, k, :-1], device=model.device),
        )
        logger.info("trial %d of %d done", k + 1, K)
        if progress is not None:
            progress(1)

    labels = task.labels
    coords = {
        "agent": np.arange(N),
        "trial": np.arange(K),
        "time": np.arange(T),
        "modality": labels.modalities,
        "factor": labels.factors,
        **{f"outcome_{m}": labels.outcomes[i] for i, m in enumerate(labels.modalities)},
        **{f"control_{f}": labels.controls[i] for i, f in enumerate(labels.factors)},
    }
    data = {
        "observation": (("agent", "trial", "time", "modality"), observations),
        "action": (("agent", "trial", "time", "factor"), actions),
        "true_state": (("agent", "trial", "time", "factor"), true_states),
        "log_evidence": (("agent", "trial", "time"), log_evidence),
    }
    accuracy = np.zeros((N, K, T, F))
    for f, name in enumerate(labels.factors):
        data[f"belief_{name}"] = (("agent", "trial", "time", f"state_{name}"), beliefs[f])
        coords[f"state_{name}"] = labels.states[f]
        accuracy[..., f] = np.take_along_axis(beliefs[f], true_states[..., f, None], -1)[..., 0]
    data["belief_accuracy"] = (("agent", "trial", "time", "factor"), accuracy)
    for name, array in recorded.items():
        data[name] = (("agent", "trial", "time", "policy"), array)
    if task.reward is not None:
        modality, outcome = task.reward
        data["reward"] = (("agent", "trial"), (observations[..., modality] == outcome).sum(-1))
    if recorded:  # made with the dataset: assign_coords afterwards would align and copy it
        coords.update(_policy_coordinates(model, settings, T, width, labels))
    dataset = xr.Dataset(data, coords=coords)
    return _described(dataset, task, settings, seed)


#: the record's settings attributes: AgentSettings field (or lesions_removed) -> its meaning
SETTING_ATTRIBUTES = {
    "policy_precision": "gamma in q(pi) = softmax(ln E - gamma (G - novelty)); one value per agent "
    "where the agents differ",
    "action_precision": "alpha in p(u) proportional to exp(alpha ln q(u)); one value per agent "
    "where the agents differ",
    "sample_actions": '"true": u drawn from p(u); "false": its most probable value',
    "horizon": 'policy depth H; "none": the depth of the model\'s policies',
    "lesions_removed": "the terms of G left out of the policy score (epistemic, pragmatic, "
    'novelty), comma-separated; "none": every term is kept',
    "efe_method": '"exact" or "sampled" expected free energy',
    "num_samples": 'rollouts per policy where efe_method is "sampled"',
    "learning_rate": "eta: evidence added to the learned counts (pA, pB, pD) per trial",
    "forgetting": "omega: the share of the learned counts forgotten between trials",
    "infer_precision": '"false": gamma is held at policy_precision',
    "inference": "the state-inference scheme (exact, fpi, vmp, mmp, mean_field, structured)",
    "inference_iterations": "iterations of a message-passing scheme",
    "inference_tau": 'step size of a message-passing scheme; "none": the scheme\'s own',
    "preference_scale": "c: the agents plan with ln p~(o) = log_softmax(c C); the recorded "
    "pragmatic values are at c = 1",
    "planner": '"open_loop": policies (fixed action sequences) scored by G; "sophisticated": '
    "each next action by the recursive G over actions, outcomes and updated beliefs, recorded "
    "as one-step policies whose G is the recursion's and whose terms are the first step's",
    "action_threshold": "sophisticated planning expands no action of predictive probability at "
    'or below this; "none": every action',
    "outcome_threshold": "sophisticated planning expands no outcome of probability at or below "
    'this; "none": every outcome',
    "inductive_epsilon": "inductive planning: a predicted state from which the intended states are "
    'no nearer costs ln(1/epsilon) nats of G; "none": off',
}

#: the record's variables and coordinates: name -> (long_name, units, description); "{name}"
#: is the factor's or modality's name
_VARIABLES = {
    "agent": ("agent", "1", "index of the simulated agent"),
    "trial": ("trial", "1", "index of the trial (0-based); each agent's trials in order"),
    "time": ("time step", "1", "step within the trial, 0 .. T-1 (an observation at each)"),
    "modality": ("outcome modality", None, "name of the outcome modality"),
    "factor": ("hidden-state factor", None, "name of the hidden-state factor"),
    "state_{name}": ("state of {name}", None, "names of the states of factor {name}"),
    "control_{name}": ("control of {name}", None, "names of the controls of factor {name}"),
    "outcome_{name}": ("outcome of {name}", None, "names of the outcomes of modality {name}"),
    "policy": (
        "policy index within the step's policy set",
        "1",
        "policy i at step t is policy_actions[t, i], named policy_label[t, i]; each step has "
        "its own set (depth min(H, T-1-t), or the task's set for the step), so the same index "
        "names different policies at different steps",
    ),
    "policy_step": (
        "step of a policy, ahead of the present",
        "1",
        "a policy's action at time t + policy_step",
    ),
    "policy_actions": (
        "actions of each step's policies",
        "1",
        "policy_actions[t, i, h, f]: the control (index into control_<factor>) of factor f at "
        "time t + h under policy i of step t; -1 beyond the step's policies, beyond the "
        "policy's depth, and at the last step (no policies)",
    ),
    "policy_label": (
        "policy named by its actions",
        None,
        'the actions of policy i of step t, e.g. "go to cue, then go to left"; "" where none',
    ),
    "observation": (
        "observed outcome",
        "1",
        "index of the outcome observed in each modality (0-based), named by outcome_<modality>",
    ),
    "action": (
        "action taken",
        "1",
        "index of the control chosen for each factor (0-based), named by control_<factor>; -1 "
        "at the last step (no action follows it)",
    ),
    "true_state": (
        "true hidden state",
        "1",
        "index of the world's state of each factor (0-based), named by state_<factor>",
    ),
    "belief_{name}": (
        "belief about {name}: q({name}_t | o_1:t)",
        "1",
        "the agent's posterior probability of each state of factor {name} after the "
        "observation at time t (filtering)",
    ),
    "belief_accuracy": (
        "belief accuracy: q(s_t = true state)",
        "1",
        "the probability the agent's belief gives the true state of each factor",
    ),
    "log_evidence": (
        "log evidence of the observation: ln p(o_t | o_1:t-1)",
        "nats",
        "the log probability of the observation at time t under the agent's model, given "
        "the trial so far",
    ),
    "policy_posterior": (
        "policy posterior q(pi)",
        "1",
        "q(pi) = softmax(ln E - gamma (G - novelty)) over the step's policies (policy_label), "
        "with lesioned terms left out; NaN beyond the step's policies and at the last step",
    ),
    "G": (
        "expected free energy G",
        "nats",
        "risk + ambiguity = -(epistemic + pragmatic), summed over the policy's steps; "
        "minimised; NaN beyond the step's policies and at the last step",
    ),
    "risk": (
        "risk",
        "nats",
        "KL[q(o | pi) || p~(o)]: expected outcomes against the preferences C, summed over the "
        "policy's steps",
    ),
    "ambiguity": (
        "ambiguity",
        "nats",
        "E_q(s | pi) H[p(o | s)]: expected entropy of the outcomes, summed over the policy's steps",
    ),
    "epistemic": (
        "epistemic value",
        "nats",
        "I(s; o | pi): expected information gain about the states, summed over the policy's steps",
    ),
    "pragmatic": (
        "pragmatic value",
        "nats",
        "E_q(o | pi) ln p~(o): expected log preference of the outcomes (at preference scale "
        "1), summed over the policy's steps",
    ),
    "novelty": (
        "novelty",
        "nats",
        "expected information gain about the learned counts pA and pB (0 without them); not "
        "part of G, subtracted from it in the policy score",
    ),
    "reward": ("rewards collected", "1", "{reward}"),
}


def _attributes(name: str, labels: Labels, reward: str = "") -> dict:
    """The CF attributes of the variable or coordinate ``name``."""
    key, subject = name, ""
    for prefix in ("state_", "control_", "outcome_", "belief_"):
        owners = labels.modalities if prefix == "outcome_" else labels.factors
        if name.startswith(prefix) and name[len(prefix) :] in owners:
            key, subject = prefix + "{name}", name[len(prefix) :]
    long_name, units, description = _VARIABLES[key]
    attributes = {
        "long_name": long_name.format(name=subject),
        "description": description.format(name=subject, reward=reward),
    }
    if units is not None:
        attributes["units"] = units
    return attributes


def policy_labels(policies, labels: Labels, *, then: str = ", then ") -> list[str]:
    """Each policy (P, H, F) named by its actions, "go to cue, then go to left": only factors
    with more than one control are named; with several such factors each action reads
    "factor: control", the factors joined by " & "."""
    policies = np.asarray(policies.cpu() if isinstance(policies, torch.Tensor) else policies)
    controlled = [f for f, names in enumerate(labels.controls) if len(names) > 1]
    names = []
    for policy in policies:
        steps = []
        for actions in policy:
            if len(controlled) == 1:
                parts = [labels.controls[controlled[0]][actions[controlled[0]]]]
            else:
                parts = [
                    f"{labels.factors[f]}: {labels.controls[f][actions[f]]}" for f in controlled
                ]
            steps.append(" & ".join(parts) or "-")
        names.append(then.join(steps))
    return names


def _policy_coordinates(
    model: GenerativeModel, settings: AgentSettings, T: int, width: int, labels: Labels
) -> dict:
    """policy, policy_step, policy_actions (time, policy, policy_step, factor) and
    policy_label (time, policy): the policies of every step (``policies_at``)."""
    per_step = [policies_at(model, settings, t, T)[0].cpu().numpy() for t in range(T - 1)]
    depth = max((p.shape[1] for p in per_step), default=0)
    actions = np.full((T, width, depth, model.num_factors), -1, dtype=np.int64)
    names = np.full((T, width), "", dtype=object)
    for t, policies in enumerate(per_step):
        P, H = policies.shape[:2]
        actions[t, :P, :H] = policies
        names[t, :P] = policy_labels(policies, labels)
    return {
        "policy": np.arange(width),
        "policy_step": np.arange(depth),
        "policy_actions": (("time", "policy", "policy_step", "factor"), actions),
        "policy_label": (("time", "policy"), names.astype(str)),
    }


def _setting_value(value):
    """A setting as a netCDF attribute: a number, a string, or one number per agent."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().to(torch.float64)
        return float(value) if value.numel() == 1 else value.numpy().reshape(-1)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return value


def settings_attributes(settings: AgentSettings) -> dict:
    """The settings as plain attributes (``SETTING_ATTRIBUTES``)."""
    values = {}
    for field in dataclasses.fields(AgentSettings):
        if field.name == "lesions":
            lesions = settings.lesions
            removed = [f.name for f in dataclasses.fields(lesions) if not getattr(lesions, f.name)]
            values["lesions_removed"] = ", ".join(removed) or "none"
        else:
            values[field.name] = _setting_value(getattr(settings, field.name))
    return values


def recorded_settings(record) -> AgentSettings | None:
    """The AgentSettings a record was simulated with, from its attributes (a Dataset, or its
    ``attrs``); None where they are missing or cannot be read (e.g. a record written before
    the settings were plain attributes)."""
    attributes = getattr(record, "attrs", record)
    values = {}
    try:
        for name in SETTING_ATTRIBUTES:
            value = attributes[name]
            if isinstance(value, np.ndarray) and value.ndim > 0:
                value = torch.as_tensor(value, dtype=torch.float64).reshape(-1, 1)
            elif isinstance(value, np.generic):
                value = value.item()
            if name == "lesions_removed":
                removed = set() if value == "none" else {n.strip() for n in value.split(",")}
                values["lesions"] = Lesions(
                    **{f.name: f.name not in removed for f in dataclasses.fields(Lesions)}
                )
            elif value in ("true", "false"):
                values[name] = value == "true"
            elif value == "none":
                values[name] = None
            else:
                values[name] = value
        return AgentSettings(**values)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _described(dataset: xr.Dataset, task: Task, settings: AgentSettings, seed: int):
    """The record with CF attributes on every variable and coordinate, and the run's settings
    as plain attributes."""
    labels = task.labels
    reward = ""
    if task.reward is not None:
        modality, outcome = task.reward
        reward = (
            f"the number of steps of the trial whose {labels.modalities[modality]!r} outcome was "
            f"{labels.outcomes[modality][outcome]!r}"
        )
    for name, variable in dataset.variables.items():  # the variables themselves: no DataArray
        variable.attrs.update(_attributes(str(name), labels, reward))
    N, K, T = (dataset.sizes[d] for d in ("agent", "trial", "time"))
    dataset.attrs.update(
        title=f"pp_aif simulation: {N} agent(s), {K} trial(s) of task {task.name!r}",
        Conventions="CF-1.10",
        source="pp_aif.simulate",
        task=task.name,
        task_description=task.description,
        seed=seed,
        num_agents=N,
        num_trials=K,
        num_steps=T,
        **settings_attributes(settings),
        **_game_attributes(task, K),
        comment="The agents' settings (pp_aif.AgentSettings) are the attributes named after "
        "them: " + "; ".join(f"{name}: {meaning}" for name, meaning in SETTING_ATTRIBUTES.items()),
    )
    return dataset


def _game_attributes(task: Task, K: int) -> dict:
    """``game_starts``: the trials at which the agents' counts started again (a new game;
    ``Task.restarts``), where the task has any."""
    starts = task.game_starts(K)
    if starts is None:
        return {}
    return {"game_starts": [int(k) for k in starts.nonzero()[:, 0]]}


def save(dataset: xr.Dataset, path: str | Path) -> Path:
    """Write the record as netCDF (HDF5, via h5netcdf), atomically: to a temporary file beside
    ``path``, fsynced, read back and checked, then renamed over ``path``
    (``pp_aif.atomic.write_netcdf``): an earlier record there is replaced whole or kept whole,
    and a Ctrl-C raises ``pp_aif.atomic.WriteInterrupted`` with the earlier record kept.
    Returns the path."""
    from pp_aif.atomic import write_netcdf

    path = Path(path)
    write_netcdf(dataset, path, engine="h5netcdf")
    return path

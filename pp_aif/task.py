"""A task: a generative model with human-readable names, as built by a file in ``models/``.

The task files of the top-level ``models/`` folder are installed as ``pp_aif.tasks``; each has a
``build()`` returning a :class:`Task`. ``load_task("two_factor")`` or ``load_task(path)`` loads one.
How to write one: ``docs/tasks.md``.

A task is checked once, when it is made (also by ``dataclasses.replace``): its names fit the
model and are distinct (each factor and modality is a column of the behavioural data), its
settings are an ``AgentSettings``, its reward outcome exists, its world has the model's sizes,
and its policy sets per step fit the model and the trial. Anything else is a ValueError that
names the task and the problem.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import numbers
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pp_aif.agent import AgentSettings
from pp_aif.envs import BlockedProcess, Environment, GenerativeProcess, check_blocks
from pp_aif.envs.process import check_same_sizes
from pp_aif.spec import NORMALISATION_TOLERANCE, GenerativeModel
from pp_aif.validation import check_integer

__all__ = ["Labels", "Task", "load_task", "checked_device", "RESERVED_NAMES"]

#: names no factor or modality may take: the key columns of behavioural data (``pp_aif.data``)
RESERVED_NAMES = ("subject", "trial", "time")


@dataclass(frozen=True)
class Labels:
    """Names for printing, plotting and data: one list per factor / modality.

    The factor and modality names are the columns of behavioural data (``pp_aif.data``) and the
    record's coordinates, so each is a non-empty string, distinct from every other factor and
    modality name and from the key columns ``RESERVED_NAMES``.
    """

    factors: list[str]
    states: list[list[str]]
    controls: list[list[str]]
    modalities: list[str]
    outcomes: list[list[str]]

    def check(self, model: GenerativeModel) -> Labels:
        """Raise ValueError if the names do not fit the model's sizes, or repeat one another."""
        sizes = {
            "factors": (len(self.factors), model.num_factors),
            "modalities": (len(self.modalities), model.num_modalities),
        }
        for what, (given, expected) in sizes.items():
            if given != expected:
                raise ValueError(f"labels.{what}: {given} names for {expected} {what}")
        for what, names, counts in (
            ("states", self.states, model.num_states),
            ("controls", self.controls, model.num_controls),
            ("outcomes", self.outcomes, model.num_outcomes),
        ):
            if len(names) != len(counts):
                raise ValueError(f"labels.{what}: {len(names)} lists of names for {len(counts)}")
            for i, (given, expected) in enumerate(zip(names, counts, strict=True)):
                if len(given) != expected:
                    raise ValueError(f"labels.{what}[{i}]: {len(given)} names for {expected}")
        self._check_names()
        return self

    def _check_names(self) -> None:
        for what, names in (("factors", self.factors), ("modalities", self.modalities)):
            for i, name in enumerate(names):
                if not isinstance(name, str) or not name or name != name.strip():
                    raise ValueError(
                        f"labels.{what}[{i}]: {name!r} is not a name: a non-empty string without "
                        "spaces around it (it names a column of the behavioural data)"
                    )
        names = [*self.factors, *self.modalities]
        repeated = [name for name, count in Counter(names).items() if count > 1]
        if repeated:
            raise ValueError(
                f"labels: {repeated} name more than one of the factors {list(self.factors)} and "
                f"modalities {list(self.modalities)}; each needs its own name, since each is a "
                "column of the behavioural data (pp_aif.data.long_format, BehaviourData.read)"
            )
        reserved = [name for name in names if name in RESERVED_NAMES]
        if reserved:
            raise ValueError(
                f"labels: {reserved} is a key column of the behavioural data "
                f"{list(RESERVED_NAMES)}; name the factor or modality otherwise"
            )
        if "accuracy" in self.factors:
            raise ValueError(
                "labels.factors: 'accuracy' would make the record's belief_accuracy name two "
                "things (the beliefs of that factor, and every factor's accuracy); rename it"
            )


@dataclass(frozen=True)
class Task:
    """A named generative model, the world it meets, and default agent settings.

    Parameters
    ----------
    name, description : str
    model : GenerativeModel
        The agent's generative model.
    labels : Labels
        Names of factors, states, controls, modalities and outcomes (checked against the model).
    observations : int (T, M); actions : int (T-1, F)
        An example sequence for demos and tests.
    process : the world, optional
        None: the agent's model is the world. A GenerativeModel: the world's generative process
        (its A, B and D; the same numbers of states, controls and outcomes as the model). A
        mapping {first trial: GenerativeModel}: a world that changes across blocks of trials
        (0-based; one block starts at trial 0; the last holds for every later trial), stored
        as ((first trial, process), ...) sorted by trial. An ``Environment`` (batched ``reset``
        / ``step`` and ``states``): any world; its ``reset`` may take ``trial=`` to be told the
        trial. :meth:`process_at` gives the process of a trial, :meth:`environment` the world.
    settings : AgentSettings or None
        The agents' default settings (None: ``AgentSettings()``).
    num_steps : int, optional
        T of one trial (None: the example's length).
    reward : (modality, outcome), optional
        The outcome that counts as a reward: ``pp_aif.simulate`` records how many each agent
        collects per trial.
    step_policies : {step: policies or (policies, E)}, or one entry per step, optional
        The policies the agent considers at each step with an action (t = 0..T-2), instead of
        the default (the model's policies and E where they fit the steps left, else every
        policy of the remaining depth under a flat prior). ``policies`` is an integer array
        (P_t, H_t, F) with 1 <= H_t <= T-1-t, ``E`` its prior (P_t,) (default uniform); a step
        left out (or None) keeps the default. Stored as a tuple with one (policies, E) or None
        per step; the model carries it as ``model.step_policies``, where
        ``pp_aif.agent.policies_at`` reads it.
    restarts : int or sequence of ints, optional
        Where the agent starts afresh, as in a new game: before each of these trials (0-based,
        >= 1) its counts pA, pB and pD return to their initial values, as at trial 0 (its
        parameters stay its own). An int n: a new game every n trials (trials n, 2n, ...); a
        sequence: the trials that start a game. Stored as given (an int, or a sorted tuple);
        :meth:`game_starts` gives the trials of a session. The simulation, the replay and the
        count likelihoods all restart there; the world is not told (give it blocks or an
        ``Environment`` for fresh arms).
    """

    name: str
    description: str
    model: GenerativeModel
    labels: Labels
    observations: Tensor
    actions: Tensor
    process: object = None
    settings: AgentSettings | None = None
    num_steps: int | None = None
    reward: tuple[int, int] | None = None
    step_policies: tuple | None = None
    restarts: int | tuple[int, ...] | None = None

    def __post_init__(self):
        try:
            self._check()
        except ValueError as error:
            raise ValueError(f"task {self.name!r}: {error}") from None

    def _check(self) -> None:
        if not isinstance(self.model, GenerativeModel):
            raise ValueError(f"model: expected a GenerativeModel, got {type(self.model).__name__}")
        if not isinstance(self.labels, Labels):
            raise ValueError(f"labels: expected a Labels, got {type(self.labels).__name__}")
        self.labels.check(self.model)
        if self.settings is not None and not isinstance(self.settings, AgentSettings):
            raise ValueError(
                f"settings: expected an AgentSettings or None, got {type(self.settings).__name__}"
                "; build one with pp_aif.agent.AgentSettings(...) so that every setting is checked"
            )
        if self.num_steps is not None:
            steps = check_integer("num_steps", self.num_steps, minimum=1, meaning="T of a trial")
            object.__setattr__(self, "num_steps", steps)
        object.__setattr__(self, "reward", _checked_reward(self.reward, self.model))
        object.__setattr__(self, "process", _checked_process(self.process, self.model))
        sets = _checked_step_policies(self.step_policies, self.model, self.trial_length)
        object.__setattr__(self, "step_policies", sets)
        object.__setattr__(self, "model", _carrying(self.model, sets))
        object.__setattr__(self, "restarts", _checked_restarts(self.restarts))

    @property
    def trial_length(self) -> int:
        return self.num_steps or int(self.observations.shape[0])

    def game_starts(self, num_trials: int) -> Tensor | None:
        """Which of ``num_trials`` trials start a game, bool (num_trials,) with trial 0 True;
        None where the task has no ``restarts`` (one game: the counts carry over every trial)."""
        num_trials = check_integer("num_trials", num_trials, minimum=1)
        if self.restarts is None:
            return None
        starts = torch.zeros(num_trials, dtype=torch.bool)
        if isinstance(self.restarts, int):
            starts[:: self.restarts] = True
        else:
            starts[[trial for trial in self.restarts if trial < num_trials]] = True
        starts[0] = True
        return starts

    def process_at(self, trial: int) -> GenerativeModel:
        """The world's generative process in trial ``trial`` (0-based): its block's process, the
        task's process, or the model itself where the task has none. A ValueError where the
        world is an ``Environment`` (its trials are its own)."""
        trial = check_integer("trial", trial, minimum=0, meaning="0-based")
        if self.process is None:
            return self.model
        if isinstance(self.process, GenerativeModel):
            return self.process
        if isinstance(self.process, tuple):
            return BlockedProcess(self.process).process_at(trial)
        raise ValueError(
            f"process_at: task {self.name!r}'s world is an environment "
            f"({type(self.process).__name__}), which has no process to show"
        )

    def environment(self) -> Environment:
        """The world as an ``Environment``: a ``GenerativeProcess`` of the process (or of the
        model), a ``BlockedProcess`` of the blocks, or the task's environment itself."""
        if self.process is None:
            return GenerativeProcess(self.model)
        if isinstance(self.process, GenerativeModel):
            return GenerativeProcess(self.process)
        if isinstance(self.process, tuple):
            return BlockedProcess(self.process)
        return self.process

    def to(self, device=None, dtype=None) -> Task:
        """A copy with the model, the world and the example on ``device`` (and in ``dtype``).
        A device torch does not know, or one this machine lacks, is a ValueError. A world given
        as an ``Environment`` is moved by its own ``to(device=, dtype=)`` where it has one, and
        is otherwise left where it is."""
        device = None if device is None else checked_device(device)

        def move(model):
            return model.to(dtype=dtype, device=device)

        process = self.process
        if isinstance(process, GenerativeModel):
            process = move(process)
        elif isinstance(process, tuple):
            process = tuple((trial, move(block)) for trial, block in process)
        elif process is not None and callable(getattr(process, "to", None)):
            process = process.to(device=device, dtype=dtype)
        return dataclasses.replace(
            self,
            model=move(self.model),
            process=process,
            observations=self.observations.to(device),
            actions=self.actions.to(device),
        )


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _checked_reward(reward, model: GenerativeModel) -> tuple[int, int] | None:
    if reward is None:
        return None
    if not (
        isinstance(reward, tuple | list) and len(reward) == 2 and all(map(_is_integer, reward))
    ):
        raise ValueError(f"reward: expected (modality, outcome), two integers, got {reward!r}")
    modality, outcome = (int(x) for x in reward)
    M = model.num_modalities
    if not 0 <= modality < M:
        raise ValueError(f"reward: modality {modality} does not exist (the model has 0..{M - 1})")
    size = model.num_outcomes[modality]
    if not 0 <= outcome < size:
        raise ValueError(
            f"reward: outcome {outcome} does not exist in modality {modality} (0..{size - 1})"
        )
    return modality, outcome


def _checked_restarts(restarts):
    if restarts is None:
        return None
    if _is_integer(restarts):
        if restarts < 1:
            raise ValueError(f"restarts: {restarts} trials a game; a game needs at least 1 trial")
        return int(restarts)
    if not isinstance(restarts, tuple | list | range):
        raise ValueError(
            f"restarts: expected trials per game (an int) or the trials that start a game (a "
            f"sequence of ints), got {type(restarts).__name__}"
        )
    wrong = [trial for trial in restarts if not _is_integer(trial) or trial < 1]
    if wrong:
        raise ValueError(
            f"restarts: {wrong!r} are not trials >= 1 (trials count from 0, and trial 0 starts "
            "the first game already)"
        )
    repeated = sorted({t for t in restarts if list(restarts).count(t) > 1})
    if repeated:
        raise ValueError(f"restarts: trial(s) {repeated} given more than once")
    return tuple(sorted(int(trial) for trial in restarts)) or None


def _checked_process(process, model: GenerativeModel):
    if process is None or isinstance(process, Environment):
        return process
    if isinstance(process, GenerativeModel):
        check_same_sizes(process, model, "process")
        return process
    if isinstance(process, Mapping | tuple | list):
        blocks = check_blocks(process, "process")
        for trial, block in blocks:
            check_same_sizes(block, model, f"process[{trial}]")
        return blocks
    raise ValueError(
        "process: expected None (the model is the world), a GenerativeModel, {first trial: "
        "GenerativeModel} (a world that changes across blocks of trials) or an Environment "
        f"(reset, step, states), got {type(process).__name__}"
    )


def _checked_step_policies(value, model: GenerativeModel, T: int):
    """One (policies int64 (P_t, H_t, F), E (P_t,)) or None per step with an action."""
    if value is None:
        return None
    n = T - 1
    if n < 1:
        raise ValueError(f"step_policies: a trial of {T} step has no action to plan")
    if isinstance(value, Mapping):
        entries = [None] * n
        for step, entry in value.items():
            if not _is_integer(step) or not 0 <= step < n:
                raise ValueError(
                    f"step_policies: {step!r} is not a step with an action: trials of {T} steps "
                    f"act at steps 0..{n - 1}"
                )
            entries[int(step)] = entry
    elif isinstance(value, tuple | list):
        if len(value) != n:
            raise ValueError(
                f"step_policies: {len(value)} entries for the {n} steps with an action (T = {T});"
                " give one per step (None keeps the default), or a mapping {step: policies}"
            )
        entries = list(value)
    else:
        raise ValueError(
            "step_policies: expected a mapping {step: policies or (policies, E)} or one entry per "
            f"step, got {type(value).__name__}"
        )
    checked = tuple(
        None if entry is None else _checked_policy_set(entry, model, t, T)
        for t, entry in enumerate(entries)
    )
    same = isinstance(value, tuple) and all(a is b for a, b in zip(checked, value, strict=True))
    return value if same else checked


def _checked_policy_set(entry, model: GenerativeModel, t: int, T: int):
    where = f"step_policies[{t}]"
    if isinstance(entry, tuple):
        if len(entry) != 2:
            raise ValueError(
                f"{where}: expected policies (P, H, F) or a pair (policies, E), got a tuple of "
                f"{len(entry)}"
            )
        policies, E = entry
    else:
        policies, E = entry, None
    try:
        array = torch.as_tensor(policies)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"{where}: policies cannot be read as an integer array ({error})"
        ) from None
    if array.is_floating_point() or array.is_complex() or array.dtype == torch.bool:
        raise ValueError(f"{where}: policies must be integers, got dtype {array.dtype}")
    F = model.num_factors
    if array.dim() != 3 or array.shape[0] < 1 or array.shape[1] < 1 or array.shape[2] != F:
        raise ValueError(
            f"{where}: policies of shape {tuple(array.shape)}; expected (P, H, {F}): P >= 1 "
            f"policies of H >= 1 steps, a control per factor"
        )
    depth = array.shape[1]
    if depth > T - 1 - t:
        raise ValueError(
            f"{where}: policies of depth {depth} look past the trial: at step {t} of a trial of "
            f"{T} steps, {T - 1 - t} action(s) remain"
        )
    for f, U in enumerate(model.num_controls):
        bad = (array[..., f] < 0) | (array[..., f] >= U)
        if bad.any():
            p, h = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{where}: policy {p}, step {h}, factor {f} has control {int(array[p, h, f])}; "
                f"factor {f} has controls 0..{U - 1}"
            )
    P = array.shape[0]
    if E is None:
        E = torch.full((P,), 1.0 / P, dtype=model.dtype, device=model.device)
    else:
        try:
            E = torch.as_tensor(E, dtype=model.dtype, device=model.device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"{where}: E cannot be read as an array ({error})") from None
        if tuple(E.shape) != (P,):
            raise ValueError(
                f"{where}: E of shape {tuple(E.shape)}; expected ({P},), one per policy"
            )
        if not bool(torch.isfinite(E).all()) or bool((E < 0).any()):
            raise ValueError(f"{where}: E must be finite and >= 0, got {E.tolist()}")
        if abs(float(E.sum()) - 1.0) > NORMALISATION_TOLERANCE:
            raise ValueError(f"{where}: E sums to {float(E.sum())!r}, not 1")
    policies = array.to(dtype=torch.int64, device=model.device)
    if isinstance(entry, tuple) and policies is entry[0] and E is entry[1]:
        return entry
    return policies, E


def _carrying(model: GenerativeModel, sets) -> GenerativeModel:
    """The model carrying ``sets`` as ``model.step_policies`` (a shallow copy where it changes,
    so a model shared with other tasks is never altered)."""
    if model.step_policies is sets:
        return model
    return model.with_step_policies(sets)


def checked_device(device) -> torch.device:
    """``torch.device(device)``, or a ValueError that names the problem: a device type torch
    does not know, or an accelerator this machine does not have."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device: {device!r} is not a device torch knows (e.g. 'cpu', 'cuda')"
        ) from None
    available = {
        "cpu": lambda: True,
        "cuda": torch.cuda.is_available,
        "mps": lambda: torch.backends.mps.is_available(),
    }.get(resolved.type, lambda: True)
    if not available():
        raise ValueError(f"device: {resolved.type} is not available on this machine")
    if resolved.type == "cuda" and resolved.index is not None:
        if resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device: {resolved} does not exist ({torch.cuda.device_count()} GPU(s) here)"
            )
    return resolved


def load_task(name_or_path: str | Path) -> Task:
    """Build a task by name (a module of ``models/``) or from a path to a task file."""
    path = Path(name_or_path)
    if path.suffix == ".py":
        if not path.is_file():
            raise FileNotFoundError(f"task file not found: {path}")
        spec = importlib.util.spec_from_file_location(f"pp_aif_task_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(f"pp_aif.tasks.{name_or_path}")
        except ModuleNotFoundError as error:
            if error.name != f"pp_aif.tasks.{name_or_path}":
                raise  # the task file itself imports something missing
            known = ", ".join(available_tasks())
            raise ValueError(f"unknown task {str(name_or_path)!r}; known tasks: {known}") from None
    if not hasattr(module, "build"):
        raise ValueError(f"task {name_or_path}: the file has no build() function")
    task = module.build()
    if not isinstance(task, Task):
        raise ValueError(
            f"task {name_or_path}: build() returned {type(task).__name__}, not a pp_aif.Task"
        )
    return task


def available_tasks() -> list[str]:
    import pp_aif.tasks

    return sorted(
        p.stem
        for p in Path(pp_aif.tasks.__file__).parent.glob("*.py")
        if not p.stem.startswith("_")
    )

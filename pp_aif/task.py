"""A task: a generative model with human-readable names, as built by a file in ``models/``.

The task files of the top-level ``models/`` folder are installed as ``pp_aif.tasks``; each has a
``build()`` returning a :class:`Task`. ``load_task("two_factor")`` or ``load_task(path)`` loads one.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pp_aif.spec import GenerativeModel

__all__ = ["Labels", "Task", "load_task", "checked_device"]


@dataclass(frozen=True)
class Labels:
    """Names for printing and plotting: one list per factor / modality."""

    factors: list[str]
    states: list[list[str]]
    controls: list[list[str]]
    modalities: list[str]
    outcomes: list[list[str]]

    def check(self, model: GenerativeModel) -> Labels:
        """Raise ValueError if the names do not fit the model's sizes."""
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
            for i, (given, expected) in enumerate(zip(names, counts, strict=True)):
                if len(given) != expected:
                    raise ValueError(f"labels.{what}[{i}]: {len(given)} names for {expected}")
        return self


@dataclass(frozen=True)
class Task:
    """A named generative model, the world it meets, and default agent settings.

    observations : int (T, M); actions : int (T-1, F) - an example sequence for demos and tests.
    process : the world's generative process (None: the agent's model is the world).
    settings : default AgentSettings; num_steps : T of one trial (None: the example's length).
    reward : (modality, outcome) that counts as a reward, or None.
    """

    name: str
    description: str
    model: GenerativeModel
    labels: Labels
    observations: Tensor
    actions: Tensor
    process: GenerativeModel | None = None
    settings: object = None
    num_steps: int | None = None
    reward: tuple[int, int] | None = None

    @property
    def trial_length(self) -> int:
        return self.num_steps or int(self.observations.shape[0])

    def to(self, device=None, dtype=None) -> Task:
        """A copy with the model, the world and the example on ``device`` (and in ``dtype``).
        A device torch does not know, or one this machine lacks, is a ValueError."""
        device = None if device is None else checked_device(device)
        return dataclasses.replace(
            self,
            model=self.model.to(dtype=dtype, device=device),
            process=None if self.process is None else self.process.to(dtype=dtype, device=device),
            observations=self.observations.to(device),
            actions=self.actions.to(device),
        )


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
        except ModuleNotFoundError:
            known = ", ".join(available_tasks())
            raise ValueError(f"unknown task {str(name_or_path)!r}; known tasks: {known}") from None
    if not hasattr(module, "build"):
        raise ValueError(f"task {name_or_path}: the file has no build() function")
    return module.build()


def available_tasks() -> list[str]:
    import pp_aif.tasks

    return sorted(
        p.stem
        for p in Path(pp_aif.tasks.__file__).parent.glob("*.py")
        if not p.stem.startswith("_")
    )

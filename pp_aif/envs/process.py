"""The environment protocol and the generative process: the world, as distinct from the agent's
model of it (the two may differ).

Dimension symbols: N agents (one environment each, batched), F factors, M modalities.
``reset(num_agents, generator)`` -> observations int (N, M); ``step(actions int (N, F))`` ->
observations int (N, M); ``states`` -> int (N, F), the true hidden states now.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from pp_aif.ops.numerics import categorical
from pp_aif.spec import GenerativeModel

__all__ = ["Environment", "GenerativeProcess"]


@runtime_checkable
class Environment(Protocol):
    """A batch of N independent environments."""

    states: Tensor

    def reset(self, num_agents: int, generator: torch.Generator | None = None) -> Tensor: ...

    def step(self, actions: Tensor) -> Tensor: ...


def _draw(probabilities: Tensor, generator: torch.Generator | None) -> Tensor:
    """One categorical draw per row of (N, K) probabilities: int64 (N,)."""
    return categorical(probabilities, generator)


class GenerativeProcess:
    """The world as a POMDP given by arrays in the SPM layout (validated like a model).

    Parameters
    ----------
    process : GenerativeModel
        Its A, B and D generate outcomes, transitions and initial states; C and E are unused.
    """

    def __init__(self, process: GenerativeModel):
        if not isinstance(process, GenerativeModel):
            raise TypeError(f"process: expected a GenerativeModel, got {type(process).__name__}")
        self.process = process
        self.states: Tensor | None = None
        self._generator: torch.Generator | None = None

    def _observe(self) -> Tensor:
        columns = []
        for a in self.process.A:
            probabilities = a.movedim(0, -1)[tuple(self.states.T)]  # (N, O_m)
            columns.append(_draw(probabilities, self._generator))
        return torch.stack(columns, -1)

    def reset(self, num_agents: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw initial states from D and return the first observations, int (N, M)."""
        if num_agents < 1:
            raise ValueError(f"num_agents: must be at least 1, got {num_agents}")
        self._generator = generator
        self.states = torch.stack(
            [_draw(d.expand(num_agents, -1), generator) for d in self.process.D], -1
        )
        return self._observe()

    def step(self, actions: Tensor) -> Tensor:
        """Move every factor by the agents' actions, int (N, F); return observations (N, M)."""
        if self.states is None:
            raise RuntimeError("step: call reset() first")
        actions = torch.as_tensor(actions)
        if actions.shape != self.states.shape:
            raise ValueError(
                f"actions: shape {tuple(actions.shape)}; expected {tuple(self.states.shape)} "
                "(agents, factors)"
            )
        for f, u in enumerate(self.process.num_controls):
            if ((actions[:, f] < 0) | (actions[:, f] >= u)).any():
                raise ValueError(f"actions: factor {f} takes controls 0..{u - 1}")
        self.states = torch.stack(
            [
                _draw(b.permute(1, 2, 0)[self.states[:, f], actions[:, f]], self._generator)
                for f, b in enumerate(self.process.B)
            ],
            -1,
        )
        return self._observe()

"""The environment protocol and the generative process: the world, as distinct from the agent's
model of it (the two may differ).

Dimension symbols: N agents (one environment each, batched), F factors, M modalities.
``reset(num_agents, generator, trial=k)`` -> observations int (N, M), at the start of trial k
(0-based); ``step(actions int (N, F))`` -> observations int (N, M); ``states`` -> int (N, F), the
true hidden states now. An environment whose ``reset`` takes no ``trial`` is still accepted
(``accepts_trial``): ``pp_aif.simulate`` tells the trial only to those that take it.

A world that changes across trials is either an environment that uses ``trial``, or a
:class:`BlockedProcess`: one generative process per block of trials (e.g. a reversal).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from pp_aif.ops.numerics import categorical
from pp_aif.spec import GenerativeModel

__all__ = [
    "Environment",
    "GenerativeProcess",
    "BlockedProcess",
    "accepts_trial",
    "check_blocks",
    "check_same_sizes",
]


@runtime_checkable
class Environment(Protocol):
    """A batch of N independent environments. ``reset`` may take ``trial`` (keyword)."""

    states: Tensor

    def reset(self, num_agents: int, generator: torch.Generator | None = None) -> Tensor: ...

    def step(self, actions: Tensor) -> Tensor: ...


def accepts_trial(environment) -> bool:
    """Whether ``environment.reset`` takes the keyword ``trial`` (or any keyword)."""
    try:
        parameters = inspect.signature(environment.reset).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return any(
        (p.name == "trial" and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD
        for p in parameters
    )


def _check_trial(trial) -> int:
    if isinstance(trial, bool) or not isinstance(trial, numbers.Integral) or trial < 0:
        raise ValueError(f"trial: expected an integer >= 0 (0-based), got {trial!r}")
    return int(trial)


def check_same_sizes(
    process: GenerativeModel,
    model: GenerativeModel,
    where: str,
    against: str = "the agent model's",
) -> None:
    """A ValueError naming ``where`` if the world's states, controls or outcomes differ in number
    from the agent model's (or ``against``'s): the agent's actions drive the world, its
    observations feed the agent, and the record compares its true states with the agent's
    beliefs."""
    for what in ("num_states", "num_controls", "num_outcomes"):
        given, expected = getattr(process, what), getattr(model, what)
        if tuple(given) != tuple(expected):
            raise ValueError(
                f"{where}: {what} {tuple(given)} differ from {against} {tuple(expected)}; the "
                "world and the model need the same factors, states, controls and outcomes"
            )


def check_blocks(blocks, where: str = "blocks") -> tuple[tuple[int, GenerativeModel], ...]:
    """Blocks of trials as ((first trial, process), ...) sorted by trial, from a mapping
    {first trial: GenerativeModel} or a sequence of such pairs; a ValueError naming ``where``
    for keys that are not integers >= 0, a repeated first trial, no block at trial 0, a value
    that is not a GenerativeModel, or blocks whose sizes differ."""
    pairs = list(blocks.items()) if isinstance(blocks, Mapping) else list(blocks)
    if not pairs:
        raise ValueError(f"{where}: no blocks; give {{first trial: GenerativeModel}}")
    checked = []
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise ValueError(f"{where}: {pair!r} is not a pair (first trial, GenerativeModel)")
        trial, process = pair
        if isinstance(trial, bool) or not isinstance(trial, numbers.Integral) or trial < 0:
            raise ValueError(
                f"{where}: first trial {trial!r} is not an integer >= 0 (trials count from 0)"
            )
        if not isinstance(process, GenerativeModel):
            raise ValueError(
                f"{where}[{trial}]: expected a GenerativeModel, got {type(process).__name__}"
            )
        checked.append((int(trial), process))
    checked.sort(key=lambda pair: pair[0])
    trials = [trial for trial, _ in checked]
    repeated = sorted({t for t in trials if trials.count(t) > 1})
    if repeated:
        raise ValueError(f"{where}: trial(s) {repeated} start more than one block")
    if trials[0] != 0:
        raise ValueError(
            f"{where}: the first block starts at trial {trials[0]}; one must start at trial 0"
        )
    for trial, process in checked[1:]:
        check_same_sizes(process, checked[0][1], f"{where}[{trial}]", f"{where}[0]'s")
    return tuple(checked)


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

    def reset(
        self, num_agents: int, generator: torch.Generator | None = None, *, trial: int = 0
    ) -> Tensor:
        """Draw initial states from D and return the first observations, int (N, M). The
        process is the same in every trial (``trial`` is accepted and ignored)."""
        if num_agents < 1:
            raise ValueError(f"num_agents: must be at least 1, got {num_agents}")
        _check_trial(trial)
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


class BlockedProcess:
    """A world whose generative process changes at given trials: a reversal, a volatile task.

    Parameters
    ----------
    blocks : mapping {first trial: GenerativeModel}, or a sequence of such pairs
        Each process is the world from its first trial (0-based) until the next block starts;
        the last holds for every later trial. One block starts at trial 0, and all have the
        same numbers of states, controls and outcomes (``check_blocks``).

    ``reset(num_agents, generator, trial=k)`` starts trial k in the block that holds it.
    """

    def __init__(self, blocks):
        self.blocks = check_blocks(blocks)
        self._processes = [GenerativeProcess(process) for _, process in self.blocks]
        self._current = self._processes[0]

    @property
    def states(self) -> Tensor | None:
        """The true hidden states now, int (N, F) (None before the first reset)."""
        return self._current.states

    def process_at(self, trial: int) -> GenerativeModel:
        """The generative process of trial ``trial`` (0-based)."""
        return self.blocks[self._block(trial)][1]

    def _block(self, trial: int) -> int:
        trial = _check_trial(trial)
        return max(i for i, (first, _) in enumerate(self.blocks) if first <= trial)

    def reset(
        self, num_agents: int, generator: torch.Generator | None = None, *, trial: int = 0
    ) -> Tensor:
        """Start trial ``trial`` in its block's world: initial states from that block's D, and
        the first observations, int (N, M)."""
        self._current = self._processes[self._block(trial)]
        return self._current.reset(num_agents, generator)

    def step(self, actions: Tensor) -> Tensor:
        """Move every factor by the agents' actions, int (N, F); return observations (N, M)."""
        return self._current.step(actions)

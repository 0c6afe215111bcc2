"""Validation of observation and action sequences against a generative model, and the one
adapter from (model, sequences, each sequence's own A, B, D) to the arrays every state-inference
scheme takes (``scheme_inputs`` -> ``SchemeInputs``; the schemes: ``pp_aif.inference.schemes``).

Public shapes: observations int (T, M) or (*batch, T, M); actions int (T-1, F) or
(*batch, T-1, F). Internally every sequence array is flattened to one batch axis N = prod(batch).
Every problem raises :class:`pp_aif.DataError` naming the sequence, time step and modality or
factor; nothing is computed from bad input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from pp_aif.errors import DataError
from pp_aif.ops.hmm import select_transitions
from pp_aif.ops.numerics import safe_log
from pp_aif.spec import GenerativeModel, computed_once

__all__ = ["Sequences", "prepare_sequences", "format_sequence", "SchemeInputs", "scheme_inputs"]


class Sequences(NamedTuple):
    """Validated sequences, flattened to one batch axis.

    observations : int64 (N, T, M)
    actions : int64 (N, T-1, F)
    batch_shape : the caller's batch shape (``()`` for one unbatched sequence)
    """

    observations: Tensor
    actions: Tensor
    batch_shape: tuple[int, ...]


def format_sequence(batch_shape: tuple[int, ...], flat_index: int) -> str:
    """'' for an unbatched call, else 'sequence (i, j), ' naming the caller's batch index."""
    if not batch_shape:
        return ""
    index = np.unravel_index(flat_index, batch_shape)
    index = tuple(int(i) for i in index)
    return f"sequence {index[0] if len(index) == 1 else index}, "


def _as_index_tensor(value, name: str) -> Tensor:
    if isinstance(value, Tensor):
        tensor = value
    else:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as error:
            raise DataError(f"{name}: cannot be read as an integer array ({error})") from None
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise DataError(f"{name}: must be integers, got dtype {array.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise DataError(f"{name}: must be integers, got dtype {tensor.dtype}")
    if tensor.is_floating_point():
        finite = torch.isfinite(tensor)
        if not finite.all() or (tensor != tensor.round()).any():
            where = (~finite | (tensor != tensor.round())).nonzero()[0].tolist()
            raise DataError(
                f"{name}: entry {tuple(where)} is {tensor[tuple(where)].item()}, "
                "not an integer index"
            )
    return tensor.to(torch.int64)


def _check_range(
    tensor: Tensor, limits: tuple[int, ...], name: str, axis_name: str, batch_shape, offset=0
) -> None:
    """Entries of ``tensor`` (N, T, K) must lie in 0..limits[k]-1."""
    limit = torch.tensor(limits, device=tensor.device)
    bad = (tensor < 0) | (tensor >= limit)
    if bad.any():
        n, t, k = (int(i) for i in bad.nonzero()[0])
        raise DataError(
            f"{name}: {format_sequence(batch_shape, n)}time step {t + offset}, {axis_name} {k} "
            f"has value {int(tensor[n, t, k])}; {axis_name} {k} takes values 0..{limits[k] - 1}"
        )


def prepare_sequences(model: GenerativeModel, observations, actions=None) -> Sequences:
    """Check observations and actions against ``model``; flatten batch axes to one.

    Raises
    ------
    DataError
        Wrong rank or trailing size, empty sequences, non-integer values, indices out of range,
        or batch shapes of observations and actions that disagree.
    """
    M, F = model.num_modalities, model.num_factors
    observations = _as_index_tensor(observations, "observations")
    if observations.dim() < 2 or observations.shape[-1] != M:
        hint = " (for one modality, add a trailing axis: observations[..., None])" if M == 1 else ""
        raise DataError(
            f"observations: shape {tuple(observations.shape)}; expected (T, {M}) or "
            f"(*batch, T, {M}), one column per modality{hint}"
        )
    batch_shape = tuple(observations.shape[:-2])
    T = observations.shape[-2]
    if T == 0 or any(b == 0 for b in batch_shape):
        raise DataError(f"observations: shape {tuple(observations.shape)} has an empty axis")
    N = int(np.prod(batch_shape, dtype=np.int64))
    observations = observations.reshape(N, T, M).to(model.device)
    _check_range(observations, model.num_outcomes, "observations", "modality", batch_shape)

    if actions is None:
        if T > 1 and any(u > 1 for u in model.num_controls):
            factors = [f for f, u in enumerate(model.num_controls) if u > 1]
            raise DataError(
                f"actions: missing; factors {factors} have more than one control, so a sequence "
                f"of {T} steps needs actions of shape (*batch, {T - 1}, {F})"
            )
        actions = torch.zeros(N, T - 1, F, dtype=torch.int64, device=model.device)
    else:
        actions = _as_index_tensor(actions, "actions")
        if actions.dim() < 2 or actions.shape[-2:] != (T - 1, F):
            raise DataError(
                f"actions: shape {tuple(actions.shape)}; expected ({T - 1}, {F}) or "
                f"(*batch, {T - 1}, {F}): one control per factor for each of the T-1 = {T - 1} "
                "steps between observations"
            )
        action_batch = tuple(actions.shape[:-2])
        try:
            actions = actions.to(model.device).expand(*batch_shape, T - 1, F)
        except RuntimeError:
            raise DataError(
                f"actions: batch shape {action_batch} does not match the observations' batch "
                f"shape {batch_shape}"
            ) from None
        actions = actions.reshape(N, T - 1, F)
        _check_range(actions, model.num_controls, "actions", "factor", batch_shape)
    return Sequences(observations, actions, batch_shape)


@dataclass(frozen=True)
class SchemeInputs:
    """The arrays every state-inference scheme takes, made by ``scheme_inputs``.

    model : the generative model; observations int (N, T, M), actions int (N, T-1, F);
    log_likelihoods : M tensors (N, T, S_1..S_F), ln p(o_m,t | s) of the observed outcomes
        under each sequence's A, exact (ln 0 = -inf);
    transitions : F tensors (N, T-1, S_f, S_f), p(s_f,t+1 | s_f,t, u_t) chosen by the actions;
    initial : F tensors (N, S_f), p(s_f,0);
    own : whether A, B or D are the sequences' own (an agent's learned counts), not the model's.
    """

    model: GenerativeModel
    observations: Tensor
    actions: Tensor
    log_likelihoods: tuple[Tensor, ...]
    transitions: tuple[Tensor, ...]
    initial: tuple[Tensor, ...]
    own: bool = False

    @computed_once
    def log_likelihood(self) -> Tensor:
        """ln p(o_t | s) over every modality: (N, T, S_1..S_F), exact."""
        total = self.log_likelihoods[0]
        for term in self.log_likelihoods[1:]:
            total = total + term
        return total

    @computed_once
    def clipped_log_likelihood(self) -> Tensor:
        """sum_m ln max(A_m[o_m], eps), eps the dtype's machine epsilon: pymdp's floor, taken
        per modality (fpi, vmp)."""
        floor = math.log(torch.finfo(self.log_likelihoods[0].dtype).eps)
        total = self.log_likelihoods[0].clamp_min(floor)
        for term in self.log_likelihoods[1:]:
            total = total + term.clamp_min(floor)
        return total

    @property
    def num_sequences(self) -> int:
        return self.observations.shape[0]

    @property
    def num_steps(self) -> int:
        return self.observations.shape[1]


def scheme_inputs(
    model: GenerativeModel,
    observations: Tensor,
    actions: Tensor,
    *,
    A: list[Tensor] | None = None,
    B: list[Tensor] | None = None,
    D: list[Tensor] | None = None,
) -> SchemeInputs:
    """The one adapter from (model, data, each sequence's own A, B, D) to ``SchemeInputs``.

    observations : int (N, T, M); actions : int (N, T-1, F), valid for the model (checked by
    ``prepare_sequences``, or an agent's own). A : M tensors (N, O_m, S_1..S_F); B : F tensors
    (N, S_f, S_f, U_f); D : F tensors (N, S_f): one per sequence (an agent's normalised
    counts), or None for the model's.
    """
    N = observations.shape[0]
    if A is None:
        log_likelihoods = tuple(log_a[observations[..., m]] for m, log_a in enumerate(model.log_A))
    else:
        rows = torch.arange(N, device=observations.device)[:, None]
        log_likelihoods = tuple(safe_log(a[rows, observations[..., m]]) for m, a in enumerate(A))
    if B is None:
        transitions = select_transitions(model.transition_by_action, actions)
    else:
        by_action = [b.permute(0, 3, 1, 2) for b in B]
        transitions = select_transitions(by_action, actions, per_sequence=True)
    initial = tuple(d.expand(N, -1) for d in model.D) if D is None else tuple(D)
    own = A is not None or B is not None or D is not None
    return SchemeInputs(
        model, observations, actions, log_likelihoods, tuple(transitions), initial, own
    )

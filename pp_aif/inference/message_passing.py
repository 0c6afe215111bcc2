"""``infer_states(method="fpi" | "vmp" | "mmp")``: the field's message-passing schemes on a whole
sequence, scored by the same free energy as every other method.

Dimension symbols: N sequences, T steps, F factors (S_f states), M modalities.

``fpi``  a filter (``mode="filtering"`` only): at each step, pymdp's fixed-point iteration with the
         empirical prior q_t|t-1,f = B_f(u_t-1) q_t-1,f (D_f at step 0).
``vmp``  pymdp 1.0's variational message passing over the whole sequence (smoothing).
``mmp``  SPM's marginal message passing over the whole sequence (smoothing): the present is the
         last step, so every step is observed and there is no future step.

The kernels are in :mod:`pp_aif.ops.message_passing`. Free energy: the mean-field F of the
returned marginals (``pp_aif.ops.free_energy.mean_field_free_energy``) with the model's
probabilities floored at the scheme's epsilon (machine eps for fpi/vmp, 1e-16 for mmp), as the
schemes themselves compute. Without structural zeros the floor changes nothing; with them, a
scheme leaves ~1e-16 of mass on impossible states, whose exact F would be +inf, and the floored F
exceeds the mass-free value by ~1e-14 nats.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from pp_aif.errors import ConvergenceWarning
from pp_aif.inference.inputs import Sequences
from pp_aif.inference.variational import Optimisation
from pp_aif.ops.free_energy import mean_field_free_energy
from pp_aif.ops.hmm import select_transitions
from pp_aif.ops.message_passing import (
    SPM_EPSILON,
    clipped_log,
    fixed_point_iteration,
    marginal_message_passing,
    variational_message_passing,
)
from pp_aif.spec import GenerativeModel

__all__ = ["SCHEMES", "MessagePassingSettings", "run_scheme"]

SCHEMES = ("fpi", "vmp", "mmp")


@dataclass(frozen=True)
class MessagePassingSettings:
    """num_iterations : sweeps (per step for fpi). Defaults: pymdp's 16 and SPM's 16.
    tau : gradient step of vmp (pymdp default 1) and mmp (SPM's 1/4); None for the default.
    tolerance : converged when no marginal changed by more than this in the last sweep.
    warn : warn (ConvergenceWarning) when not converged.
    """

    num_iterations: int = 16
    tau: float | None = None
    tolerance: float = 1e-6
    warn: bool = True

    def __post_init__(self):
        if int(self.num_iterations) < 1:
            raise ValueError(f"num_iterations: must be >= 1, got {self.num_iterations}")
        if self.tau is not None and not self.tau > 0:
            raise ValueError(f"tau: must be > 0, got {self.tau}")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance: must be >= 0, got {self.tolerance}")


def _floored_free_energy(model, marginals, log_likelihood, transitions, epsilon) -> Tensor:
    return mean_field_free_energy(
        marginals,
        log_likelihood.clamp_min(math.log(epsilon)),
        [b.clamp_min(epsilon) for b in transitions],
        [d.clamp_min(epsilon) for d in model.D],
    )


def _clipped_log_likelihood(model: GenerativeModel, observations: Tensor) -> Tensor:
    """sum_m ln max(A_m[o_m], eps): (N, T, S_1..S_F) (pymdp's per-modality clipping)."""
    total = 0.0
    for m, a in enumerate(model.A):
        total = total + clipped_log(a[observations[..., m]])  # (N, T, S_1..S_F)
    return total


def _max_change(new: list[Tensor], old: list[Tensor]) -> Tensor:
    """max |q_new - q_old| per sequence: (N,)."""
    return torch.stack(
        [(a - b).abs().flatten(1).amax(1) for a, b in zip(new, old, strict=True)]
    ).amax(0)


def run_scheme(
    model: GenerativeModel, sequences: Sequences, method: str, mode: str, settings
) -> tuple[list[Tensor], Tensor, Optimisation]:
    """(marginals F x (N, T, S_f), F (N,), Optimisation) of a message-passing scheme."""
    if method not in SCHEMES:
        raise ValueError(f"method: {method!r} is not one of {SCHEMES}")
    if (method == "fpi") != (mode == "filtering"):
        wanted = "filtering" if method == "fpi" else "smoothing"
        raise ValueError(f"mode: method {method!r} infers {wanted} posteriors only")
    observations, actions = sequences.observations, sequences.actions
    N, T = observations.shape[:2]
    transitions = select_transitions(model.transition_by_action, actions)  # F x (N, T-1, S, S)
    iterations = settings.num_iterations
    exact_log_likelihood = sum(torch.log(a[observations[..., m]]) for m, a in enumerate(model.A))
    if method == "fpi":
        log_likelihood = _clipped_log_likelihood(model, observations)
        prior = [d.expand(N, d.shape[-1]) for d in model.D]
        steps, change = [], torch.zeros(N, dtype=model.dtype, device=model.device)
        for t in range(T):
            if t > 0:
                prior = [
                    torch.einsum("nij,nj->ni", b[:, t - 1], q)
                    for b, q in zip(transitions, steps[-1], strict=True)
                ]
            log_prior = [clipped_log(p) for p in prior]
            q, last_change = fixed_point_iteration(log_likelihood[:, t], log_prior, iterations)
            change = torch.maximum(change, last_change)
            steps.append(q)
        marginals = [torch.stack([s[f] for s in steps], 1) for f in range(model.num_factors)]
        epsilon = torch.finfo(model.dtype).eps
        free_energy = _floored_free_energy(
            model, marginals, exact_log_likelihood, transitions, epsilon
        )
        trace = free_energy.sum()[None]
    else:
        trace_values, previous = [], None
        if method == "vmp":
            tau = 1.0 if settings.tau is None else settings.tau
            log_likelihood = _clipped_log_likelihood(model, observations)
            log_transitions = [clipped_log(b) for b in transitions]
            log_prior = [clipped_log(d) for d in model.D]
            epsilon = torch.finfo(model.dtype).eps
            marginals = None
            for _ in range(iterations):  # one sweep at a time, to record F and the change
                previous = marginals
                marginals = variational_message_passing(
                    log_likelihood, log_transitions, log_prior, 1, tau, initial=marginals
                )
                trace_values.append(
                    _floored_free_energy(
                        model, marginals, exact_log_likelihood, transitions, epsilon
                    ).sum()
                )
        else:
            tau = 0.25 if settings.tau is None else settings.tau
            likelihood = torch.exp(exact_log_likelihood)
            epsilon = SPM_EPSILON
            marginals = None
            for _ in range(iterations):
                previous = marginals
                marginals, _, _ = marginal_message_passing(
                    likelihood, transitions, model.D, num_iterations=1, tau=tau, initial=marginals
                )
                trace_values.append(
                    _floored_free_energy(
                        model, marginals, exact_log_likelihood, transitions, epsilon
                    ).sum()
                )
        if previous is None:
            uniform = [torch.full_like(q, 1.0 / q.shape[-1]) for q in marginals]
            previous = uniform
        change = _max_change(marginals, previous)
        free_energy = _floored_free_energy(
            model, marginals, exact_log_likelihood, transitions, epsilon
        )
        trace = torch.stack(trace_values)
    converged = bool((change <= settings.tolerance).all())
    record = Optimisation(
        iterations=iterations, final=free_energy, converged=converged, trace=trace
    )
    if not converged and settings.warn:
        warnings.warn(
            f"infer_states(method={method!r}): beliefs still changed by up to "
            f"{float(change.max()):.3g} in the last of {iterations} iterations (tolerance "
            f"{settings.tolerance:g}); raise num_iterations",
            ConvergenceWarning,
            stacklevel=3,
        )
    return marginals, free_energy, record

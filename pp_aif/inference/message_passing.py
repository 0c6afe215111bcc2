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

from pp_aif.errors import ConvergenceWarning, DiagnosticWarning
from pp_aif.inference.exact import log_space_arguments, run_forward_filter
from pp_aif.inference.inputs import Sequences, format_sequence
from pp_aif.inference.variational import Optimisation
from pp_aif.ops.free_energy import mean_field_free_energy
from pp_aif.ops.hmm import factor_marginals, smooth
from pp_aif.ops.message_passing import (
    SPM_EPSILON,
    clipped_log,
    fixed_point_iteration,
    marginal_message_passing,
    variational_message_passing,
)
from pp_aif.spec import GenerativeModel
from pp_aif.validation import check_flag, check_integer, check_number

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
        check_integer("num_iterations", self.num_iterations, minimum=1)
        if self.tau is not None:
            check_number("tau", self.tau, minimum=0, exclusive_minimum=True)
        check_number("tolerance", self.tolerance, minimum=0)
        check_flag("warn", self.warn)


def _floored_free_energy(model, marginals, log_likelihood, transitions, epsilon) -> Tensor:
    return mean_field_free_energy(
        marginals,
        log_likelihood.clamp_min(math.log(epsilon)),
        [b.clamp_min(epsilon) for b in transitions],
        [d.clamp_min(epsilon) for d in model.D],
    )


def exact_log_free_energy(marginals, log_likelihood, transitions, initial, resolution) -> Tensor:
    """F (N,) of a scheme's marginals under the model's exact logarithms (ln 0 = -inf).

    Entries at or below ``resolution`` (the square root of the scheme's floor: 1.5e-8 in
    float64) are first set to 0 and each marginal renormalised: mass the scheme cannot tell from
    zero (it leaves ~eps on states the model rules out) is not counted, which moves F by
    ~resolution nats at most. What remains is scored exactly: +inf where the marginals give
    real mass to states, or (through their product) to transitions or joint states, that the
    model rules out. Comparable across schemes and dtypes, unlike the floored F, which depends
    on the floor (ln eps is -36 in float64, -16 in float32).
    """
    cleaned = []
    for q in marginals:
        kept = torch.where(q > resolution, q, torch.zeros_like(q))
        cleaned.append(kept / kept.sum(-1, keepdim=True))
    return mean_field_free_energy(cleaned, log_likelihood, transitions, initial)


#: Probability on a state the observations rule out above which a scheme's answer is called
#: wrong. Below it lies what a scheme that has not fully settled leaves behind (SPM's 16 MMP
#: sweeps leave ~1e-6 on such states in the inference-schemes experiment); that mass still
#: makes ``exact_log_free_energy`` +inf, which is the honest score of those marginals.
WRONG_MASS = 1e-4


def _warn_if_floor_changed_the_answer(
    method, sequences, floored, log_evidence, marginals, support, epsilon
) -> None:
    """Say so where a scheme's floor on ln p made its answer wrong, for possible sequences:

    - its marginals give probability above ``WRONG_MASS`` to a state that the exact posterior
      (filtering for fpi, smoothing otherwise) rules out: with exact logarithms no scheme of
      the mean-field family would (zero-forcing), so the floor put it there;
    - its floored F is below -ln p(o): no free energy is, so the floor changed the model the
      scheme scored (its F is then no bound).
    """
    wrong = [(q > WRONG_MASS) & ~s for q, s in zip(marginals, support, strict=True)]
    outside = torch.stack([w.flatten(1).any(-1) for w in wrong]).any(0)
    bound = -log_evidence
    below = floored < bound - 1e-9 * bound.abs().clamp_min(1.0)
    if not (below.any() or outside.any()):
        return

    def first(mask):
        n = int(mask.nonzero()[0])
        where = format_sequence(sequences.batch_shape, n).rstrip(", ") or "the sequence"
        return n, f"{int(mask.sum())} sequence(s) (first: {where})"

    problems = []
    if outside.any():
        n, which = first(outside)
        f = next(f for f, w in enumerate(wrong) if w[n].any())
        t, state = (int(i) for i in wrong[f][n].nonzero()[0])
        problems.append(
            f"its marginals give probability to states that the observations rule out, for "
            f"{which}: factor {f}, step {t}, state {state} has q = "
            f"{float(marginals[f][n, t, state]):.3g} where the exact posterior has 0"
        )
    if below.any():
        n, which = first(below)
        problems.append(
            f"its F ({float(floored[n]):.6g} nats, with ln p floored at ln {epsilon:.3g}) is "
            f"below -ln p(o) = {float(bound[n]):.6g} for {which}, so raising every probability "
            "below the floor to it changed the model it scored, and F is no bound there"
        )
    warnings.warn(
        f"infer_states(method={method!r}): the scheme's floor changed its answer: "
        + "; and ".join(problems)
        + ". Beliefs.exact_log_free_energy scores the marginals with exact logarithms; "
        "method='exact' (or 'structured') answers exactly",
        DiagnosticWarning,
        stacklevel=4,
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
) -> tuple[list[Tensor], Tensor, Tensor, Optimisation]:
    """(marginals F x (N, T, S_f), F (N,) with the scheme's floor, F (N,) with exact logs
    (``exact_log_free_energy``), Optimisation) of a message-passing scheme.

    Raises DataError for a sequence the model makes impossible; warns (DiagnosticWarning) where
    the floor changed the answer (``_warn_if_floor_changed_the_answer``)."""
    if method not in SCHEMES:
        raise ValueError(f"method: {method!r} is not one of {SCHEMES}")
    if (method == "fpi") != (mode == "filtering"):
        wanted = "filtering" if method == "fpi" else "smoothing"
        raise ValueError(f"mode: method {method!r} infers {wanted} posteriors only")
    observations = sequences.observations
    N, T = observations.shape[:2]
    # the exact pass first: an impossible sequence is a DataError naming its step and modality
    # (the schemes' floors would otherwise give it a finite F), and ln p(o) checks their F below
    exact, transitions = run_forward_filter(model, sequences)  # F x (N, T-1, S, S)
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
    resolution = math.sqrt(epsilon)
    exact_logs = exact_log_free_energy(
        marginals, exact_log_likelihood, transitions, model.D, resolution
    )
    if method == "fpi":
        joint = exact.filtered
    else:
        joint = smooth(
            exact.filtered,
            exact.predicted,
            transitions,
            **log_space_arguments(model, sequences, exact),
        )
    _warn_if_floor_changed_the_answer(
        method,
        sequences,
        free_energy,
        exact.log_normalisers.sum(-1),
        marginals,
        [q > 0 for q in factor_marginals(joint, 2)],
        epsilon,
    )
    if not converged and settings.warn:
        warnings.warn(
            f"infer_states(method={method!r}): beliefs still changed by up to "
            f"{float(change.max()):.3g} in the last of {iterations} iterations (tolerance "
            f"{settings.tolerance:g}); raise num_iterations",
            ConvergenceWarning,
            stacklevel=3,
        )
    return marginals, free_energy, exact_logs, record

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

import torch
from torch import Tensor

from pp_aif.errors import ConvergenceWarning, DiagnosticWarning
from pp_aif.inference.exact import exact_smoothing, run_forward_filter
from pp_aif.inference.inputs import Sequences, format_sequence
from pp_aif.inference.schemes import MESSAGE_PASSING, SCHEMES, MessagePassingSettings
from pp_aif.inference.variational import Optimisation
from pp_aif.ops.free_energy import mean_field_free_energy
from pp_aif.ops.hmm import factor_marginals
from pp_aif.spec import GenerativeModel

__all__ = ["MESSAGE_PASSING", "MessagePassingSettings", "run_scheme", "exact_log_free_energy"]


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


def run_scheme(
    model: GenerativeModel, sequences: Sequences, method: str, mode: str, settings
) -> tuple[list[Tensor], Tensor, Tensor, Optimisation]:
    """(marginals F x (N, T, S_f), F (N,) with the scheme's floor, F (N,) with exact logs
    (``exact_log_free_energy``), Optimisation) of a message-passing scheme on whole sequences:
    the scheme's own ``sequence`` (``pp_aif.inference.schemes``), checked and scored.

    Raises DataError for a sequence the model makes impossible; warns (DiagnosticWarning) where
    the floor changed the answer (``_warn_if_floor_changed_the_answer``)."""
    if method not in MESSAGE_PASSING:
        raise ValueError(f"method: {method!r} is not one of {MESSAGE_PASSING}")
    scheme = SCHEMES[method]
    if mode != scheme.mode:
        raise ValueError(f"mode: method {method!r} infers {scheme.mode} posteriors only")
    # the exact pass first: an impossible sequence is a DataError naming its step and modality
    # (the schemes' floors would otherwise give it a finite F), and ln p(o) checks their F below
    exact, inputs = run_forward_filter(model, sequences)
    transitions = list(inputs.transitions)
    epsilon = scheme.epsilon(model.dtype)

    def floored(marginals):
        return _floored_free_energy(model, marginals, inputs.log_likelihood, transitions, epsilon)

    trace = []
    run = scheme.sequence(inputs, settings, on_sweep=lambda q: trace.append(floored(q).sum()))
    marginals, change = run.marginals, run.change
    free_energy = floored(marginals)
    converged = bool((change <= settings.tolerance).all())
    iterations = settings.num_iterations
    record = Optimisation(
        iterations=iterations, final=free_energy, converged=converged, trace=torch.stack(trace)
    )
    exact_logs = exact_log_free_energy(
        marginals, inputs.log_likelihood, transitions, model.D, math.sqrt(epsilon)
    )
    joint = exact.filtered if scheme.mode == "filtering" else exact_smoothing(inputs, exact)
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

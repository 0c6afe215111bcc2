"""The exact forward pass on validated sequences, shared by every state-inference method.

Dimension symbols: N sequences, T steps, F factors (S_f states), M modalities.

Every method, exact or approximate, first runs ``run_forward_filter``: it finds the sequences that
are impossible under the model (a ``DataError`` naming the sequence, step and modality) and gives
the exact posterior's support and ln p(o), against which the approximate methods are checked.
"""

from __future__ import annotations

import torch

from pp_aif.errors import DataError
from pp_aif.inference.inputs import SchemeInputs, Sequences, format_sequence, scheme_inputs
from pp_aif.ops.hmm import FilterResult, forward_filter, smooth
from pp_aif.spec import GenerativeModel

__all__ = [
    "run_forward_filter",
    "raise_if_impossible",
    "log_space_arguments",
    "exact_filtering",
    "exact_smoothing",
]


def exact_filtering(inputs: SchemeInputs) -> FilterResult:
    """The exact forward pass (``ops.hmm.forward_filter``) on a scheme's inputs."""
    return forward_filter(inputs.log_likelihood, list(inputs.transitions), list(inputs.initial))


def exact_smoothing(inputs: SchemeInputs, result: FilterResult | None = None):
    """The exact smoothed joint posterior (N, T, S_1..S_F), from the forward pass ``result``
    (run here if not given)."""
    if result is None:
        result = exact_filtering(inputs)
    return smooth(
        result.filtered,
        result.predicted,
        list(inputs.transitions),
        **log_space_arguments(inputs, result),
    )


def run_forward_filter(model: GenerativeModel, sequences: Sequences):
    """The forward pass on validated sequences; raises DataError if any sequence is impossible.

    Returns (FilterResult, SchemeInputs): the inputs of every scheme, with the model's A, B, D.
    """
    inputs = scheme_inputs(model, sequences.observations, sequences.actions)
    result = exact_filtering(inputs)
    raise_if_impossible(model, sequences, result)
    return result, inputs


def log_space_arguments(inputs: SchemeInputs, result: FilterResult) -> dict:
    """What ``smooth`` and ``posterior_as_chain`` need for the sequences that the forward pass
    computed in log space (none: nothing)."""
    if result.log_space is None:
        return {}
    return {
        "log_space": result.log_space,
        "log_likelihood": inputs.log_likelihood,
        "initial": list(inputs.initial),
    }


def raise_if_impossible(model: GenerativeModel, sequences: Sequences, result: FilterResult) -> None:
    """Name the first sequence, step and modality whose outcome has probability zero."""
    impossible = ~(result.log_normalisers > -torch.inf)
    if not impossible.any():
        return
    n, t = (int(i) for i in impossible.nonzero()[0])
    count = int(impossible.any(-1).sum())
    prior = result.predicted[n, t]
    outcomes = sequences.observations[n, t]
    mass = prior
    for modality in range(model.num_modalities):
        mass = mass * model.A[modality][outcomes[modality]]
        if not mass.sum() > 0:
            break
    else:
        raise RuntimeError(
            "forward filter: non-finite log normaliser at "
            f"{format_sequence(sequences.batch_shape, n)}"
            f"time step {t} although the observations are possible; please report this"
        )
    together = (
        f" together with the outcomes of modalities 0..{modality - 1} at that step"
        if modality > 0
        else ""
    )
    others = f" ({count - 1} other sequences are impossible too)" if count > 1 else ""
    raise DataError(
        f"observations: {format_sequence(sequences.batch_shape, n)}time step {t}, modality "
        f"{modality}: outcome {int(outcomes[modality])} has probability 0 under the model"
        f"{together}, "
        f"given the earlier observations and actions{others}"
    )

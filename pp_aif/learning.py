"""Learning at the end of a trial: update the Dirichlet counts pA, pB, pD of a model.

``learn(model, observations, actions)`` infers the states of the trial exactly (smoothing),
accumulates the counts of :mod:`pp_aif.ops.dirichlet` over the steps (and over the sequences of a
batch, all taken as experience of the same agent), and returns a new model whose A, B and D are
the normalised counts. The batched agent keeps per-agent counts with the same ops.
"""

from __future__ import annotations

from collections.abc import Collection

from pp_aif.inference.inputs import prepare_sequences
from pp_aif.inference.states import infer_states
from pp_aif.ops.dirichlet import (
    dirichlet_mean,
    initial_counts,
    observation_counts,
    transition_counts,
    update_concentrations,
)
from pp_aif.spec import GenerativeModel

__all__ = ["learn"]


def learn(
    model: GenerativeModel,
    observations,
    actions=None,
    *,
    learning_rate: float = 1.0,
    forgetting: float = 0.0,
    parameters: Collection[str] = ("A", "B", "D"),
) -> GenerativeModel:
    """A new model after learning from one trial (or a batch of trials) of data.

    Parameters
    ----------
    model : GenerativeModel
        Needs the Dirichlet counts (``pA``, ``pB``, ``pD``) of every parameter it learns.
    observations, actions
        As for :func:`pp_aif.infer_states`.
    learning_rate : float
        eta > 0, the weight of this trial's counts.
    forgetting : float
        omega in [0, 1): the old counts are multiplied by 1 - omega first.
    parameters : subset of {"A", "B", "D"}
        Which parameters learn; each needs its counts in the model.

    Returns
    -------
    GenerativeModel with updated counts and A, B, D equal to their normalised counts.
    """
    unknown = set(parameters) - {"A", "B", "D"}
    if unknown:
        raise ValueError(f"parameters: {sorted(unknown)} are not among 'A', 'B', 'D'")
    for name in parameters:
        if getattr(model, f"p{name}") is None:
            raise ValueError(
                f"parameters: learning {name} needs Dirichlet counts p{name} in the model"
            )
    if learning_rate <= 0:
        raise ValueError(f"learning_rate: must be positive, got {learning_rate}")
    if not 0 <= forgetting < 1:
        raise ValueError(f"forgetting: must lie in [0, 1), got {forgetting}")
    sequences = prepare_sequences(model, observations, actions)
    beliefs = infer_states(model, sequences.observations, sequences.actions)
    marginals = beliefs.marginals  # F tensors (N, T, S_f)

    def updated(concentrations, counts):
        return [
            update_concentrations(p, d.sum(0), learning_rate=learning_rate, forgetting=forgetting)
            for p, d in zip(concentrations, counts, strict=True)
        ]

    A, B, D = list(model.A), list(model.B), list(model.D)
    pA, pB, pD = model.pA, model.pB, model.pD
    if "A" in parameters:
        pA = updated(pA, observation_counts(sequences.observations, marginals, model.num_outcomes))
        A = [dirichlet_mean(p, 0) for p in pA]
    if "B" in parameters:
        pB = updated(pB, transition_counts(sequences.actions, marginals, model.num_controls))
        B = [dirichlet_mean(p, 0) for p in pB]
    if "D" in parameters:
        pD = updated(pD, initial_counts(marginals))
        D = [dirichlet_mean(p, 0) for p in pD]
    return GenerativeModel(A, B, model.C, D, model.E, pA=pA, pB=pB, pD=pD, policies=model.policies)

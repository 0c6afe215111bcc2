"""``free_energy``: the variational free energy of beliefs about a sequence, and the exact posterior
as a Markov chain (``posterior_chain``).

Dimension symbols: *batch sequences, T steps, F factors (S_f), K = prod_f S_f joint states.
F = E_q[ln q(s) - ln p(o, s | u)] >= -ln p(o | u) in nats; see :mod:`pp_aif.ops.free_energy`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pp_aif.errors import DataError
from pp_aif.inference.exact import log_space_arguments, run_forward_filter
from pp_aif.inference.inputs import prepare_sequences
from pp_aif.inference.states import Beliefs
from pp_aif.ops.free_energy import (
    chain_free_energy,
    chain_joint_marginals,
    joint_log_initial,
    joint_log_transitions,
    mean_field_free_energy,
    posterior_as_chain,
)
from pp_aif.ops.hmm import factor_marginals, observation_log_likelihood
from pp_aif.spec import NORMALISATION_TOLERANCE, GenerativeModel

__all__ = ["ChainBeliefs", "free_energy", "posterior_chain"]


@dataclass(frozen=True)
class ChainBeliefs:
    """Beliefs that are a Markov chain over the joint state.

    initial : (*batch, K) q(s_1) over the flattened joint state (factor 0 most significant);
    conditionals : (*batch, T-1, K, K) q(s_t+1 = j | s_t = i) at ``[..., t, i, j]``;
    num_states : (S_1, ..., S_F).
    """

    initial: Tensor
    conditionals: Tensor
    num_states: tuple[int, ...]

    @property
    def marginals(self) -> list[Tensor]:
        """q(s_f,t): F tensors (*batch, T, S_f)."""
        batch = self.initial.shape[:-1]
        K = self.initial.shape[-1]
        T = self.conditionals.shape[-3] + 1
        joint = chain_joint_marginals(
            self.initial.reshape(-1, K), self.conditionals.reshape(-1, T - 1, K, K)
        )
        joint = joint.reshape(-1, T, *self.num_states)
        return [q.reshape(*batch, T, q.shape[-1]) for q in factor_marginals(joint, 2)]


def _flatten_marginals(model, beliefs, batch_shape, T) -> list[Tensor]:
    marginals = beliefs.marginals if isinstance(beliefs, Beliefs) else beliefs
    if len(marginals) != model.num_factors:
        raise DataError(f"beliefs: {len(marginals)} factors; the model has {model.num_factors}")
    flat = []
    for f, (q, S) in enumerate(zip(marginals, model.num_states, strict=True)):
        q = torch.as_tensor(q, dtype=model.dtype, device=model.device)
        if tuple(q.shape) != (*batch_shape, T, S):
            raise DataError(
                f"beliefs[{f}]: shape {tuple(q.shape)}; expected {(*batch_shape, T, S)}"
            )
        _check_distributions(q, f"beliefs[{f}]")
        flat.append(q.reshape(-1, T, S))
    return flat


def _check_distributions(q: Tensor, label: str) -> None:
    if not torch.isfinite(q).all() or (q < 0).any():
        raise DataError(f"{label}: entries must be finite and non-negative")
    bad = (q.sum(-1) - 1).abs() > NORMALISATION_TOLERANCE
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise DataError(f"{label}: the distribution at {index} does not sum to 1")


def free_energy(model: GenerativeModel, observations, actions=None, *, beliefs) -> Tensor:
    """F = E_q[ln q(s_1:T) - ln p(o_1:T, s_1:T | u)] in nats, (*batch).

    Parameters
    ----------
    model, observations, actions
        As for :func:`pp_aif.infer_states`.
    beliefs : Beliefs, list of F arrays (*batch, T, S_f), or ChainBeliefs
        Marginals are read as mean-field beliefs q(s) = prod_t prod_f q(s_f,t) (whatever
        produced them); ChainBeliefs as a Markov chain over the joint state.

    For the exact posterior (``posterior_chain``), F = -ln p(o | u); for any other q, F is larger.
    """
    sequences = prepare_sequences(model, observations, actions)
    batch, T = sequences.batch_shape, sequences.observations.shape[1]
    log_likelihood = observation_log_likelihood(model.log_A, sequences.observations)
    transitions = [b[sequences.actions[..., f]] for f, b in enumerate(model.transition_by_action)]
    if isinstance(beliefs, ChainBeliefs):
        K = math.prod(model.num_states)
        N = log_likelihood.shape[0]
        if tuple(beliefs.num_states) != model.num_states:
            raise DataError(f"beliefs: states {beliefs.num_states} differ from the model's")
        if tuple(beliefs.initial.shape) != (*batch, K) or tuple(beliefs.conditionals.shape) != (
            *batch,
            T - 1,
            K,
            K,
        ):
            raise DataError(
                f"beliefs: initial {tuple(beliefs.initial.shape)} and conditionals "
                f"{tuple(beliefs.conditionals.shape)}; expected {(*batch, K)} and "
                f"{(*batch, T - 1, K, K)}"
            )
        _check_distributions(beliefs.initial, "beliefs.initial")
        _check_distributions(beliefs.conditionals, "beliefs.conditionals")
        log_initial = joint_log_initial(model.log_D)
        value = chain_free_energy(
            beliefs.initial.reshape(N, K),
            beliefs.conditionals.reshape(N, T - 1, K, K),
            log_likelihood.reshape(N, T, K),
            joint_log_transitions(transitions),
            log_initial,
        )
    else:
        marginals = _flatten_marginals(model, beliefs, batch, T)
        value = mean_field_free_energy(marginals, log_likelihood, transitions, model.D)
    return value.reshape(batch)


def posterior_chain(model: GenerativeModel, observations, actions=None) -> ChainBeliefs:
    """The exact posterior p(s_1:T | o_1:T, u) as a Markov chain over the joint state."""
    sequences = prepare_sequences(model, observations, actions)
    result, inputs = run_forward_filter(model, sequences)
    _, initial, conditionals = posterior_as_chain(
        result.filtered,
        result.predicted,
        list(inputs.transitions),
        **log_space_arguments(inputs, result),
    )
    T, K = result.filtered.shape[1], math.prod(model.num_states)
    batch = sequences.batch_shape
    return ChainBeliefs(
        initial.reshape(*batch, K), conditionals.reshape(*batch, T - 1, K, K), model.num_states
    )

"""State inference by Pyro's enumeration of the program ``pp_aif.programs.pomdp``.

This is the specification the exact kernels are tested against, not a fast path.

- ln p(o_1:T | u): minus ``TraceEnum_ELBO.loss`` with an empty guide (every latent
  site is enumerated in the model, so the ELBO is the exact log evidence), one sequence at a
  time (the loss of a plate is the sum over its sequences).
- smoothing marginals: the gradient of that log evidence with respect to zero-valued soft
  evidence ``phi`` at every state site, ``q(s_f,t = s | o) = d ln p(o) / d phi_f[t, s]``, for all
  sequences at once under the program's plate. Linear in T. (Pyro's
  ``TraceEnum_ELBO.compute_marginals`` gives the same numbers but contracts the whole model once
  per site: measured 5.3 s at T = 100 and 20.8 s at T = 200 for a 4x3-state model, quadratic.)
- filtering marginals at step t: the smoothing marginal of s_t in the program cut at step t.
"""

from __future__ import annotations

import torch
from pyro.infer import TraceEnum_ELBO
from torch import Tensor

from pp_aif.inference.inputs import Sequences
from pp_aif.programs import empty_guide, pomdp
from pp_aif.spec import GenerativeModel

__all__ = ["enumerate_states", "enumerated_log_evidence", "enumerated_marginals"]


def _elbo() -> TraceEnum_ELBO:
    # strict_enumeration_warning: a model whose factors all have one state enumerates nothing.
    return TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)


def _unplated(observations: Tensor, actions: Tensor):
    """One sequence runs without a plate (see pp_aif.programs)."""
    return (observations[0], actions[0]) if observations.shape[0] == 1 else (observations, actions)


def enumerated_log_evidence(model: GenerativeModel, observations: Tensor, actions: Tensor) -> Tensor:
    """ln p(o_1:T | u) of each sequence, (N,), from the enumerated ELBO."""
    values = [
        -_elbo().loss(pomdp, empty_guide, model, observations[n], actions[n])  # a float64 float
        for n in range(observations.shape[0])
    ]
    return torch.tensor(values, dtype=model.dtype, device=model.device)


def enumerated_marginals(
    model: GenerativeModel, observations: Tensor, actions: Tensor, steps
) -> list[list[Tensor]]:
    """q(s_f,t | o) at the given steps for the program over (N, T', M) observations.

    Returns a list over ``steps`` of F tensors (N, S_f).
    """
    N, T = observations.shape[:2]
    certain = torch.ones(N, 1, dtype=model.dtype, device=model.device)
    if all(S == 1 for S in model.num_states):  # nothing is enumerated, nothing is uncertain
        return [[certain] * model.num_factors for _ in steps]
    potentials = [torch.zeros(N, T, S, dtype=model.dtype, device=model.device, requires_grad=True)
                  for S in model.num_states]
    observed, acted = _unplated(observations, actions)
    plated = [phi if N > 1 else phi[0] for phi in potentials]
    with torch.enable_grad():
        log_evidence = -_elbo().differentiable_loss(
            pomdp, empty_guide, model, observed, acted, state_log_potentials=plated
        )
        gradients = torch.autograd.grad(log_evidence, potentials, allow_unused=True)
    return [
        [gradients[f][:, t] if S > 1 else certain for f, S in enumerate(model.num_states)]
        for t in steps
    ]


def enumerate_states(model: GenerativeModel, sequences: Sequences, mode: str):
    """(marginals: F tensors (N, T, S_f), log_evidence: (N,)) from the Pyro program."""
    from pp_aif.inference.states import run_forward_filter

    observations, actions = sequences.observations, sequences.actions
    log_evidence = enumerated_log_evidence(model, observations, actions)
    if not torch.isfinite(log_evidence).all():
        run_forward_filter(model, sequences)  # raises DataError naming the impossible step
    T = observations.shape[1]
    if mode == "smoothing":
        per_time = enumerated_marginals(model, observations, actions, range(T))
    else:
        per_time = [
            enumerated_marginals(model, observations[:, :t + 1], actions[:, :t], [t])[0]
            for t in range(T)
        ]
    per_factor = [
        torch.stack([per_time[t][f] for t in range(T)], 1) for f in range(model.num_factors)
    ]
    return per_factor, log_evidence

"""State inference by Pyro's enumeration of the program ``pp_aif.programs.pomdp``.

This is the specification the exact kernels are tested against, not a fast path: it loops over
sequences for the evidence and over time steps for filtering.

- ln p(o_1:T | u): minus ``TraceEnum_ELBO.loss`` with an empty guide (every latent
  site enumerated in the model, so the ELBO is the exact log evidence), one sequence at a time.
- smoothing marginals: ``TraceEnum_ELBO.compute_marginals`` on all sequences at once (plate).
- filtering marginals at step t: the smoothing marginal of s_t of the program cut at step t.
"""

from __future__ import annotations

import torch
from pyro.infer import TraceEnum_ELBO
from torch import Tensor

from pp_aif.inference.inputs import Sequences
from pp_aif.programs import empty_guide, pomdp, state_site
from pp_aif.spec import GenerativeModel

__all__ = ["enumerate_states", "enumerated_log_evidence"]


def _elbo() -> TraceEnum_ELBO:
    # strict_enumeration_warning: a model whose factors all have one state enumerates nothing.
    return TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)


def enumerated_log_evidence(model: GenerativeModel, observations: Tensor, actions: Tensor) -> Tensor:
    """ln p(o_1:T | u) of each sequence, (N,), from the enumerated ELBO."""
    values = []
    for n in range(observations.shape[0]):
        loss = _elbo().loss(pomdp, empty_guide, model, observations[n], actions[n])
        values.append(-loss)  # a Python float: double precision
    return torch.tensor(values, dtype=model.dtype, device=model.device)


def _site_marginals(model: GenerativeModel, observations: Tensor, actions: Tensor, steps):
    """q(s_f,t | o_1:T') at the given steps, for the program over (N, T', M) observations.

    Returns a list over ``steps`` of F tensors (N, S_f).
    """
    N = observations.shape[0]
    if N == 1:  # no plate: compute_marginals fails on a plate of size 1 (pyro-ppl/pyro#3102)
        observations, actions = observations[0], actions[0]
    marginals = _elbo().compute_marginals(pomdp, empty_guide, model, observations, actions)
    certain = torch.ones(N, 1, dtype=model.dtype, device=model.device)
    return [
        [marginals[state_site(f, t)].probs.expand(N, S) if S > 1 else certain
         for f, S in enumerate(model.num_states)]
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
        per_time = _site_marginals(model, observations, actions, range(T))
    else:
        per_time = [
            _site_marginals(model, observations[:, :t + 1], actions[:, :t], [t])[0]
            for t in range(T)
        ]
    per_factor = [
        torch.stack([per_time[t][f] for t in range(T)], 1) for f in range(model.num_factors)
    ]
    return per_factor, log_evidence

"""State inference by Pyro's enumeration of the program ``pp_aif.programs.pomdp``.

This is the specification the exact kernels are tested against, not a fast path.

- ln p(o_1:T | u): minus ``TraceEnum_ELBO.loss`` with an empty guide (every latent site is
  enumerated in the model, so the ELBO is the exact log evidence), one sequence at a time (the
  loss of a plate is the sum over its sequences).
- smoothing marginals: ``TraceEnum_ELBO.compute_marginals``, all sequences at once under the
  program's plate. It contracts the whole model once per site, so its cost grows as T^2
  (measured: 5.3 s at T = 100, 20.8 s at T = 200 for a 4x3-state model).
- filtering marginals at step t: the marginal of s_t in the program cut at step t.

Why not the linear-time identity q(s_t = k | o) = d ln p(o) / d phi_t(k) for zero soft evidence
phi? Pyro's log-space einsum takes its logarithm with ``pyro.ops.special.safe_log``, whose
gradient divides by max(x, eps): wherever a shifted contraction falls below 2.2e-16 the gradient
is wrong (measured: 4.5e-85 instead of 1 for a likelihood of 1e-100 beside an unreachable state
of likelihood 1). A reference must be exact, so it pays the quadratic cost.
"""

from __future__ import annotations

import torch
from pyro.infer import TraceEnum_ELBO
from torch import Tensor

from pp_aif.inference.exact import run_forward_filter
from pp_aif.inference.inputs import Sequences, format_sequence
from pp_aif.programs import empty_guide, pomdp, state_site
from pp_aif.spec import GenerativeModel

__all__ = ["enumerate_states", "enumerated_log_evidence", "enumerated_marginals"]


def _elbo() -> TraceEnum_ELBO:
    # strict_enumeration_warning: a model whose factors all have one state enumerates nothing.
    return TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)


def _unplated(observations: Tensor, actions: Tensor):
    """One sequence runs without a plate: compute_marginals fails on a plate of size 1
    (pyro-ppl/pyro#3102)."""
    return (observations[0], actions[0]) if observations.shape[0] == 1 else (observations, actions)


def enumerated_log_evidence(
    model: GenerativeModel, observations: Tensor, actions: Tensor
) -> Tensor:
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
    N = observations.shape[0]
    certain = torch.ones(N, 1, dtype=model.dtype, device=model.device)
    if all(S == 1 for S in model.num_states):  # nothing is enumerated, nothing is uncertain
        return [[certain] * model.num_factors for _ in steps]
    marginals = _elbo().compute_marginals(
        pomdp, empty_guide, model, *_unplated(observations, actions)
    )
    return [
        [
            marginals[state_site(f, t)].probs.expand(N, S) if S > 1 else certain
            for f, S in enumerate(model.num_states)
        ]
        for t in steps
    ]


def enumerate_states(model: GenerativeModel, sequences: Sequences, mode: str):
    """(marginals: F tensors (N, T, S_f), log_evidence: (N,)) from the Pyro program."""
    observations, actions = sequences.observations, sequences.actions
    log_evidence = enumerated_log_evidence(model, observations, actions)
    if not torch.isfinite(log_evidence).all():
        result, _ = run_forward_filter(model, sequences)  # DataError if truly impossible
        _raise_underflow(sequences, log_evidence, result.log_normalisers.sum(-1))
    T = observations.shape[1]
    try:
        if mode == "smoothing":
            per_time = enumerated_marginals(model, observations, actions, range(T))
        else:
            per_time = [
                enumerated_marginals(model, observations[:, : t + 1], actions[:, :t], [t])[0]
                for t in range(T)
            ]
    except ValueError as error:  # a distribution of NaN logits: Pyro's contraction underflowed
        if "invalid values" not in str(error):
            raise
        result, _ = run_forward_filter(model, sequences)
        _raise_underflow(sequences, log_evidence, result.log_normalisers.sum(-1))
        raise
    per_factor = [
        torch.stack([per_time[t][f] for t in range(T)], 1) for f in range(model.num_factors)
    ]
    return per_factor, log_evidence


def _raise_underflow(sequences: Sequences, enumerated: Tensor, exact: Tensor) -> None:
    """The enumeration failed on sequences the exact route finds possible: say so, by name."""
    failed = (~torch.isfinite(enumerated)).nonzero()[:, 0].tolist() or list(range(len(exact)))
    n = failed[0]
    raise FloatingPointError(
        f"method='enumerate': {format_sequence(sequences.batch_shape, n)}Pyro's enumeration "
        "underflowed: its log-space contraction (pyro.ops.einsum.torch_log) shifts each factor "
        "by its own maximum, so paths far below the most probable one are lost, and here they "
        f"are the only possible ones. ln p(o) = {float(exact[n]):.6g} by method='exact', which "
        "works in log space where this happens; use it"
        + (f" ({len(failed) - 1} other sequences too)" if len(failed) > 1 else "")
    )

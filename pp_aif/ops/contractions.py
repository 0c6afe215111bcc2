"""Contractions of likelihood arrays with factorised beliefs (SPM's ``spm_dot`` and ``spm_cross``).

Shapes: ``A`` is (O, S_1, ..., S_F) in SPM layout (or any array whose trailing F axes are the
factors); ``beliefs`` is a sequence of F vectors (S_f,) or batched (*batch, S_f). Batch axes
sit on the left of the belief vectors and come out on the left of the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["contract_factors", "outer"]

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def contract_factors(A: Tensor, beliefs: Sequence[Tensor], *, skip: Sequence[int] = ()) -> Tensor:
    """Contract the trailing factor axes of ``A`` with beliefs over each factor.

    ``result[*batch, o, (kept factors)] = sum_{s_f, f not in skip} A[o, s_1..s_F] prod_f q_f(s_f)``

    Parameters
    ----------
    A : Tensor (*lead, S_1, ..., S_F)
        Leading axes (e.g. outcomes) are kept; the last ``len(beliefs)`` axes are factors.
    beliefs : sequence of F tensors (*batch, S_f)
        One vector (or batch of vectors) per factor; all share the same batch shape.
    skip : sequence of int
        Factors left uncontracted (SPM's ``spm_dot(A, s, f)``); their axes stay, in order.

    Returns
    -------
    Tensor (*batch, *lead, S_f for f in skip)
    """
    F = len(beliefs)
    lead = A.dim() - F
    if lead < 0:
        raise ValueError(f"A has {A.dim()} axes, fewer than the {F} factors of the beliefs")
    skip = sorted(set(int(f) % F for f in skip)) if F else []
    lead_letters = _LETTERS[:lead]
    factor_letters = _LETTERS[lead : lead + F]
    operands = [A]
    inputs = [lead_letters + factor_letters]
    for f, q in enumerate(beliefs):
        if f in skip:
            continue
        operands.append(q)
        inputs.append("..." + factor_letters[f])
    output = "..." + lead_letters + "".join(factor_letters[f] for f in skip)
    return torch.einsum(",".join(inputs) + "->" + output, *operands)


def outer(*arrays: Tensor, batch_dims: int = 0) -> Tensor:
    """Outer product across factors (SPM's ``spm_cross``), batch axes on the left.

    ``outer(x (*batch, I), y (*batch, J, K), batch_dims=len(batch)) -> (*batch, I, J, K)``:
    the first ``batch_dims`` axes of every argument are shared batch axes (broadcast together);
    every other axis of every argument appears in the result, in argument order.
    """
    if not arrays:
        raise ValueError("outer needs at least one array")
    result = arrays[0]
    for array in arrays[1:]:
        event_so_far = result.dim() - batch_dims
        batch_shape = array.shape[:batch_dims]
        event_shape = array.shape[batch_dims:]
        result = result[(...,) + (None,) * len(event_shape)] * array.reshape(
            *batch_shape, *([1] * event_so_far), *event_shape
        )
    return result

"""Log-space helpers: the one place where logarithms of probabilities meet zeros.

Exact computations keep structural zeros exact: ln 0 = -inf (``torch.log`` does so without a
warning), and ``xlogy`` gives 0 ln 0 = 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["xlogy", "entropy", "entropy_terms", "categorical", "logsumexp", "safe_log"]


def xlogy(x: Tensor, y: Tensor) -> Tensor:
    """x ln y with the convention 0 ln 0 = 0 (and 0 ln y = 0 for every y).

    Where x = 0 the gradient is 0 too (``torch.special.xlogy`` gives NaN for x ln x at 0): a
    probability that is exactly 0 is a structural zero, and stays one, so entropies built from
    it stay differentiable in the parameters that move the other entries.
    """
    # where x = 0 the logarithm is taken of 1: the product is 0 and so are both gradients
    return x * torch.log(torch.where(x == 0, torch.ones_like(y), y))


def safe_log(x: Tensor) -> Tensor:
    """ln x, -inf where x = 0, with a zero gradient there (``torch.log`` sends 1/0 = inf back,
    and inf times the zero gradient that a structural zero receives is NaN: a count that is
    learned next to a structural zero would get a NaN gradient)."""
    positive = x > 0
    return torch.where(
        positive, torch.log(torch.where(positive, x, torch.ones_like(x))), -torch.inf
    )


def logsumexp(x: Tensor, dim: int) -> Tensor:
    """ln sum exp(x) over ``dim``, exact where every term is -inf (the result is -inf) and with a
    zero gradient there (``torch.logsumexp`` gives NaN gradients for a slice of -infs: an
    unreachable state, or a structural zero met by another).

    The shift is the slice's own maximum over the terms being summed, so no term that matters
    underflows: shifting the operands of a product separately (``pyro.ops.einsum.torch_log``)
    loses the terms that a zero in the other operand would have left standing.
    """
    shift = x.detach().amax(dim, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    total = torch.exp(x - shift).sum(dim, keepdim=True)
    positive = total > 0
    value = torch.log(torch.where(positive, total, torch.ones_like(total))) + shift
    value = torch.where(positive, value, torch.full_like(value, -torch.inf))
    return value.squeeze(dim)


class _Entropy(torch.autograd.Function):
    """H[q] = -sum q ln q over the last axis, with 0 ln 0 = 0, and dH/dq = -(ln q + 1) where
    q > 0, 0 where q = 0. Two passes over q forward (``torch.special.entr``) and five back,
    where autograd through ``xlogy`` needs nine: the outcome entropy of every policy is the
    largest tensor of a fit's likelihood."""

    # forward takes ctx (no separate setup_context): torch then skips binding the arguments
    # by ``inspect.signature`` at every call, which cost more than the entropy itself
    @staticmethod
    def forward(ctx, q: Tensor) -> Tensor:
        ctx.save_for_backward(q)
        return torch.special.entr(q).sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (q,) = ctx.saved_tensors
        # the logarithm of 1 where q = 0, so that second derivatives (Laplace's Hessian) stay
        # finite there too
        positive = q > 0
        log_q = torch.log(torch.where(positive, q, 1.0))
        return torch.where(positive, -1.0 - log_q, 0.0) * grad[..., None]


class _EntropyTerms(torch.autograd.Function):
    """-q ln q elementwise (0 at q = 0), with the gradient of ``_Entropy``."""

    @staticmethod
    def forward(ctx, q: Tensor) -> Tensor:
        ctx.save_for_backward(q)
        return torch.special.entr(q)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (q,) = ctx.saved_tensors
        positive = q > 0
        log_q = torch.log(torch.where(positive, q, 1.0))
        return torch.where(positive, -1.0 - log_q, 0.0) * grad


def entropy_terms(q: Tensor) -> Tensor:
    """-q ln q elementwise, 0 at q = 0 with a zero gradient there (``entropy`` before its sum:
    for entropies whose terms are summed by a matrix product)."""
    if torch.is_grad_enabled() and q.requires_grad:
        return _EntropyTerms.apply(q)
    return torch.special.entr(q)


def entropy(q: Tensor) -> Tensor:
    """-sum q ln q over the last axis (0 ln 0 = 0; a zero gradient at q = 0, as ``xlogy``)."""
    if torch.is_grad_enabled() and q.requires_grad:
        return _Entropy.apply(q)
    return torch.special.entr(q).sum(-1)


def categorical(probabilities: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw from each row of (N, K) probabilities (unnormalised is fine): int64 (N,).

    argmax_k p_k / q_k with q_k ~ Exp(1), the Gumbel-max trick in exponential form: the method
    ``torch.multinomial(p, 1)`` uses, and the same numbers from the same generator, without its
    checks of p (a max, a min, sums and two synchronising ``.item()`` calls per draw). For
    probabilities made valid by construction (softmax outputs, validated model arrays): the
    agents' actions and the world's outcomes and states, drawn several times per step."""
    q = torch.empty_like(probabilities).exponential_(1.0, generator=generator)
    return (probabilities / q).argmax(-1)

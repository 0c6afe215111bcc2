"""Log-space helpers: the one place where logarithms of probabilities meet zeros.

Exact computations keep structural zeros exact: ln 0 = -inf (``torch.log`` does so without a
warning), and ``xlogy`` gives 0 ln 0 = 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["xlogy"]


def xlogy(x: Tensor, y: Tensor) -> Tensor:
    """x ln y with the convention 0 ln 0 = 0 (and 0 ln y = 0 for every y).

    Where x = 0 the gradient is 0 too (``torch.special.xlogy`` gives NaN for x ln x at 0): a
    probability that is exactly 0 is a structural zero, and stays one, so entropies built from
    it stay differentiable in the parameters that move the other entries.
    """
    zero = x == 0
    safe = torch.where(zero, torch.ones_like(y), y)
    return torch.where(zero, torch.zeros_like(x), x * torch.log(safe))

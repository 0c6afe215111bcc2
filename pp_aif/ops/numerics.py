"""Log-space helpers: the one place where logarithms of probabilities meet zeros.

Exact computations keep structural zeros exact: ln 0 = -inf (``torch.log`` does so without a
warning), and ``xlogy`` gives 0 ln 0 = 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["xlogy"]


def xlogy(x: Tensor, y: Tensor) -> Tensor:
    """x ln y with the convention 0 ln 0 = 0 (and 0 ln y = 0 for every y)."""
    return torch.special.xlogy(x, y)

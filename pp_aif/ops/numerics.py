"""Log-space helpers: the one place where logarithms of probabilities meet zeros.

Exact inference keeps structural zeros exact: ``ln 0 = -inf`` and ``0 ln 0 = 0``. Schemes that
reproduce SPM use SPM's floor instead, ``spm_log(x) = ln(x + 1e-16)``; that floor lives here too,
under its own name, so that nobody floors by accident.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SPM_LOG_FLOOR", "log_exact", "spm_log", "xlogy"]

#: SPM's additive floor inside its logarithm (``spm_log``).
SPM_LOG_FLOOR = 1e-16


def log_exact(probabilities: Tensor) -> Tensor:
    """ln p with ln 0 = -inf exactly (no floor). Never produces NaN for p >= 0."""
    return torch.log(probabilities)


def spm_log(probabilities: Tensor) -> Tensor:
    """SPM's floored logarithm ``ln(p + 1e-16)``, for reproducing SPM's numbers."""
    return torch.log(probabilities + SPM_LOG_FLOOR)


def xlogy(x: Tensor, y: Tensor) -> Tensor:
    """x ln y with the convention 0 ln 0 = 0 (and 0 ln y = 0 for every y)."""
    return torch.special.xlogy(x, y)

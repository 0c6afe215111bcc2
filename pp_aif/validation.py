"""Checks of settings: each names the setting, the value it got and what it must be.

Settings are checked once, where they are made (``AgentSettings``, ``simulate``,
``expected_free_energy``, the schemes' settings), so that a NaN precision or a negative
learning rate is refused in words instead of turning into NaN beliefs, action 0 for every agent,
or an error blamed on the data. Numbers may be Python or numpy scalars, or tensors (one value per
agent, e.g. (N, 1)); every entry of a tensor is checked.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["check_number", "check_integer", "check_choice", "check_flag"]


def _describe(value) -> str:
    if isinstance(value, torch.Tensor | np.ndarray) and value.ndim > 0:
        return f"a {type(value).__name__} of shape {tuple(value.shape)}"
    return repr(value.item() if isinstance(value, torch.Tensor | np.ndarray) else value)


def check_number(
    name: str,
    value,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
    meaning: str = "",
):
    """Refuse a value that is not a real number (or tensor of them), not finite, or out of
    [minimum, maximum] (bounds exclusive where said). Returns the value unchanged."""
    bounds = []
    if minimum is not None:
        bounds.append(f"{'>' if exclusive_minimum else '>='} {minimum:g}")
    if maximum is not None:
        bounds.append(f"{'<' if exclusive_maximum else '<='} {maximum:g}")
    wanted = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
    suffix = f" ({meaning})" if meaning else ""
    if isinstance(value, bool | np.bool_) or (
        isinstance(value, torch.Tensor | np.ndarray) and value.dtype in (torch.bool, np.bool_)
    ):
        raise ValueError(f"{name}: must be {wanted}, got the boolean {_describe(value)}{suffix}")
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise ValueError(f"{name}: must be {wanted}, got complex {_describe(value)}{suffix}")
        values = value.detach()
    elif isinstance(value, numbers.Real) or (
        isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.number)
    ):
        values = torch.as_tensor(np.asarray(value, dtype=np.float64))
    else:
        raise ValueError(f"{name}: must be {wanted}, got {type(value).__name__} {value!r}{suffix}")
    if values.numel() == 0:
        raise ValueError(f"{name}: must be {wanted}, got an empty {type(value).__name__}")
    values = values.to(torch.float64) if not values.is_floating_point() else values
    bad = ~torch.isfinite(values)
    if minimum is not None:
        bad |= values <= minimum if exclusive_minimum else values < minimum
    if maximum is not None:
        bad |= values >= maximum if exclusive_maximum else values > maximum
    if bad.any():
        first = values.reshape(-1)[bad.reshape(-1)][0].item()
        where = ""
        if values.dim() > 0:
            index = tuple(int(i) for i in bad.nonzero()[0])
            where = f" at index {index}" + (
                f" ({int(bad.sum())} entries in all)" if int(bad.sum()) > 1 else ""
            )
        raise ValueError(f"{name}: must be {wanted}, got {first}{where}{suffix}")
    return value


def check_integer(name: str, value, *, minimum: int | None = None, meaning: str = "") -> int:
    """Refuse anything but an integer (Python or numpy; not a bool, not 2.5, not "3") at least
    ``minimum``. Returns it as a Python int."""
    suffix = f" ({meaning})" if meaning else ""
    wanted = "an integer" + (f" >= {minimum}" if minimum is not None else "")
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: must be {wanted}, got {type(value).__name__} {value!r}{suffix}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be {wanted}, got {value}{suffix}")
    return int(value)


def check_choice(name: str, value, choices) -> str:
    """Refuse a value that is not one of ``choices``, listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {tuple(choices)}")
    return value


def check_flag(name: str, value) -> bool:
    """Refuse anything but True or False (a string "False" would be true)."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name}: must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)

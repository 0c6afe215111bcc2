"""The generative model of a discrete-state POMDP: validation, defaults and layouts.

Dimension symbols
-----------------
F factors (f), M modalities (m), S_f states of factor f, O_m outcomes of modality m,
U_f controls (actions) of factor f, P policies, H policy horizon, T time steps.

Public layout (SPM's and pymdp's, what users know)
--------------------------------------------------
``A[m]``  (O_m, S_1, ..., S_F)   p(o_m | s): every column ``A[m][:, s_1, ..., s_F]`` sums to 1.
``B[f]``  (S_f, S_f, U_f)         p(s_f' | s_f, u_f), indexed ``B[f][s_next, s_prev, u]``.
``C[m]``  (O_m,) or (O_m, T)      log-preferences; the agent uses ``log_softmax(C[m])`` over axis 0.
``D[f]``  (S_f,)                  p(s_f at t = 0).
``E``     (P,)                    prior over policies.
``policies`` int (P, H, F)        ``policies[p, h, f]`` is the control of factor f at step h of
                                  policy p; by default every combination of one step (H = 1).
``pA``, ``pB``, ``pD``            Dirichlet concentrations, shaped like ``A``, ``B``, ``D``.

Note: the seed document of this project calls A the *transition* matrix and B the *observation*
matrix, and uses B both ways in its code. That is a slip: here, as in SPM and pymdp, A is the
likelihood p(o | s) and B the transition p(s' | s, u).

Internally the Pyro program wants the distribution axis last; those layouts are derived once,
on first use, by :attr:`GenerativeModel.log_likelihood_last` and
:attr:`GenerativeModel.log_transition_last`.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet

import numpy as np
import torch
from torch import Tensor

from pp_aif.errors import ModelError

__all__ = ["GenerativeModel", "NORMALISATION_TOLERANCE", "construct_policies", "computed_once"]

#: Largest absolute deviation from 1 allowed for a column of A or B, for D and for E.
NORMALISATION_TOLERANCE = 1e-6


class computed_once:  # noqa: N801 - a decorator, named like ``functools.cached_property``
    """``functools.cached_property`` without its lock: the value is computed on first access
    and kept in the instance's ``__dict__``. Python 3.11's ``cached_property`` takes an
    ``RLock``, which ``torch.compile`` cannot trace (a graph break on every access of, e.g.,
    ``model.log_A`` inside a compiled agent step); 3.12 dropped the lock for the same
    semantics as here (two threads may both compute the value; both get an equal one)."""

    def __init__(self, function):
        self.function = function
        self.name = function.__name__
        self.__doc__ = function.__doc__

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        value = self.function(instance)
        instance.__dict__[self.name] = value
        return value


# ---------------------------------------------------------------------------------------------
# conversion of one array


#: What each argument holds, for the messages.
_EXPECTED = {
    "A": "an array (O_m, S_1, ..., S_F) per modality",
    "B": "an array (S_f, S_f, U_f) per factor",
    "C": "an array (O_m,) or (O_m, T) per modality",
    "D": "an array (S_f,) per factor",
    "E": "an array (P,)",
    "pA": "an array shaped like A[m] per modality",
    "pB": "an array shaped like B[f] per factor",
    "pD": "an array shaped like D[f] per factor",
    "policies": "an integer array (P, H, F)",
}


def _is_scalar(value) -> bool:
    if isinstance(value, np.ndarray | Tensor):
        return value.ndim == 0
    return isinstance(value, numbers.Number | np.generic)


def _screen(value, label: str, name: str) -> None:
    """A ModelError for what cannot be an array: None, a string, a mapping, a set, a scalar, or
    an object that is neither a sequence nor array-like."""
    expected = _EXPECTED[name]
    if value is None:
        raise ModelError(f"{label}: is None; expected {expected}")
    if isinstance(value, str | bytes):
        raise ModelError(f"{label}: is a string ({value!r:.40}), not numbers; expected {expected}")
    if isinstance(value, Mapping | AbstractSet):
        raise ModelError(
            f"{label}: is a {type(value).__name__}; expected {expected} (a list, tuple, numpy "
            "array or torch tensor)"
        )
    if _is_scalar(value):
        shown = value.item() if isinstance(value, np.ndarray | Tensor | np.generic) else value
        raise ModelError(f"{label}: is a scalar ({shown!r}), not an array; expected {expected}")
    array_like = hasattr(value, "__array__") or hasattr(value, "__array_interface__")
    if not (isinstance(value, list | tuple | np.ndarray | Tensor) or array_like):
        raise ModelError(
            f"{label}: is a {type(value).__name__}; expected {expected} (a list, tuple, numpy "
            "array or torch tensor)"
        )


def _as_list(value, name: str) -> list:
    """A list of arrays from a list, tuple, numpy object array, or a single array."""
    _screen(value, name, name)
    if isinstance(value, np.ndarray) and value.dtype == object:
        items = list(value.ravel())
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        items = [value]
    if len(items) == 0:
        raise ModelError(f"{name}: empty list; give one array per {_unit(name)}")
    if isinstance(value, list | tuple) and all(_is_scalar(item) for item in items):
        raise ModelError(
            f"{name}: is a list of numbers; a list is read as one array per {_unit(name)} - "
            f"give {_EXPECTED[name]} (for a single {_unit(name)}, np.asarray(...) of it)"
        )
    if isinstance(value, np.ndarray) and any(_is_scalar(item) for item in items):
        raise ModelError(
            f"{name}: is a numpy object array {value.shape} holding numbers; an object array is "
            f"read as one array per {_unit(name)} (pymdp's layout) - give {_EXPECTED[name]}, "
            "or a numeric array"
        )
    for i, item in enumerate(items):
        _screen(item, f"{name}[{i}]", name)
    return items


def _unit(name: str) -> str:
    return "modality" if name in ("A", "C", "pA") else "factor"


def _to_tensor(value, label: str) -> Tensor:
    """A float tensor from a numpy array, torch tensor or nested list, or a ModelError."""
    if isinstance(value, Tensor):
        tensor = value
    else:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as error:  # ragged nested lists
            raise ModelError(f"{label}: cannot be read as a numeric array ({error})") from None
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise ModelError(
                f"{label}: is not numeric (dtype {array.dtype}); give an array of real numbers"
            )
        if array.dtype.kind == "b":
            raise ModelError(
                f"{label}: is boolean (dtype {array.dtype}); give an array of real numbers "
                "(e.g. x.astype(float))"
            )
        if array.ndim == 0:
            raise ModelError(f"{label}: is a scalar ({array.item()!r}), not an array")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_complex():
        raise ModelError(f"{label}: is complex; give an array of real numbers")
    if tensor.dtype == torch.bool:
        raise ModelError(
            f"{label}: is boolean (dtype {tensor.dtype}); give an array of real numbers (e.g. "
            "x.double())"
        )
    if tensor.dim() == 0:
        raise ModelError(f"{label}: is a scalar ({tensor.item()!r}), not an array")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


def _check_finite(tensor: Tensor, label: str, allow_negative_infinity: bool = False) -> None:
    bad = torch.isnan(tensor) | (tensor == math.inf)
    if not allow_negative_infinity:
        bad |= tensor == -math.inf
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ModelError(
            f"{label}: entry {index} is {tensor[index].item()}; every entry must be finite"
        )


def _check_nonnegative(tensor: Tensor, label: str) -> None:
    if (tensor < 0).any():
        index = tuple(int(i) for i in (tensor < 0).nonzero()[0])
        raise ModelError(
            f"{label}: entry {index} is {tensor[index].item():.6g}, negative; "
            "probabilities and concentrations cannot be negative"
        )


def _check_columns(tensor: Tensor, label: str, what: str) -> None:
    """Columns (slices along axis 0) must sum to 1 within NORMALISATION_TOLERANCE."""
    sums = tensor.sum(0)
    bad = (sums - 1).abs() > NORMALISATION_TOLERANCE
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        count = int(bad.sum())
        more = f" (and {count - 1} more columns)" if count > 1 else ""
        raise ModelError(
            f"{label}: column {index} sums to {sums[index].item():.6g}, not 1{more}; "
            f"columns {what} must sum to 1 over axis 0 (tolerance {NORMALISATION_TOLERANCE:g})"
        )


def _check_vector_sums_to_one(tensor: Tensor, label: str) -> None:
    total = tensor.sum().item()
    if abs(total - 1) > NORMALISATION_TOLERANCE:
        raise ModelError(
            f"{label}: sums to {total:.6g}, not 1 (tolerance {NORMALISATION_TOLERANCE:g}); "
            "normalise it"
        )


def _read(value, name: str, required: bool = False) -> list[Tensor] | None:
    """None (when not ``required``), or the list of tensors of ``value`` labelled ``name[i]``."""
    if value is None and not required:
        return None
    if name == "E":
        _screen(value, "E", "E")
        return [_to_tensor(value, "E")]
    return [_to_tensor(item, f"{name}[{i}]") for i, item in enumerate(_as_list(value, name))]


def _check_transitions(B: Sequence[Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """B[f] (S_f, S_f, U_f) with columns summing to 1; returns (num_states, num_controls)."""
    for f, b in enumerate(B):
        label = f"B[{f}]"
        if b.dim() != 3:
            raise ModelError(
                f"{label}: has {b.dim()} axes {tuple(b.shape)}; expected 3 axes "
                "(S_next, S_prev, U) - give a (S, S, 1) array for a factor without control"
            )
        if b.shape[0] != b.shape[1]:
            raise ModelError(
                f"{label}: shape {tuple(b.shape)} is not square in its first two axes "
                "(S_next, S_prev)"
            )
        if b.shape[0] == 0 or b.shape[2] == 0:
            raise ModelError(f"{label}: shape {tuple(b.shape)} has an empty axis")
        _check_finite(b, label)
        _check_nonnegative(b, label)
        _check_columns(b, label, "B[f][:, s_prev, u] (p(s_next | s_prev, u))")
    return tuple(int(b.shape[0]) for b in B), tuple(int(b.shape[2]) for b in B)


def _check_likelihoods(A: Sequence[Tensor], num_states: tuple[int, ...]) -> tuple[int, ...]:
    """A[m] (O_m, S_1..S_F) agreeing with B, columns summing to 1; returns num_outcomes."""
    F = len(num_states)
    for m, a in enumerate(A):
        label = f"A[{m}]"
        if a.dim() != 1 + F:
            raise ModelError(
                f"{label}: has {a.dim()} axes {tuple(a.shape)}; expected {1 + F} "
                f"(O, S_1, ..., S_F) for the {F} factor(s) of B"
            )
        if tuple(a.shape[1:]) != num_states:
            raise ModelError(
                f"{label}: state axes {tuple(a.shape[1:])} disagree with the numbers of "
                f"states {num_states} given by B"
            )
        if a.shape[0] == 0:
            raise ModelError(f"{label}: has no outcomes (axis 0 is empty)")
        _check_finite(a, label)
        _check_nonnegative(a, label)
        _check_columns(a, label, "A[m][:, s_1, ..., s_F] (p(o | s))")
    return tuple(int(a.shape[0]) for a in A)


def _check_preferences(C: Sequence[Tensor], num_outcomes: tuple[int, ...]) -> None:
    if len(C) != len(num_outcomes):
        raise ModelError(f"C: has {len(C)} arrays; A has {len(num_outcomes)} modalities")
    for m, c in enumerate(C):
        label = f"C[{m}]"
        if c.dim() not in (1, 2) or c.shape[0] != num_outcomes[m]:
            raise ModelError(
                f"{label}: shape {tuple(c.shape)}; expected ({num_outcomes[m]},) or "
                f"({num_outcomes[m]}, T), one log-preference per outcome of A[{m}]"
            )
        _check_finite(c, label, allow_negative_infinity=True)
        if (c == -math.inf).all(0).any():
            raise ModelError(f"{label}: every outcome has log-preference -inf")


def _check_initial(D: Sequence[Tensor], num_states: tuple[int, ...]) -> None:
    if len(D) != len(num_states):
        raise ModelError(f"D: has {len(D)} arrays; B has {len(num_states)} factors")
    for f, d in enumerate(D):
        label = f"D[{f}]"
        if d.dim() != 1 or d.shape[0] != num_states[f]:
            raise ModelError(
                f"{label}: shape {tuple(d.shape)}; expected ({num_states[f]},), one "
                f"probability per state of factor {f}"
            )
        _check_finite(d, label)
        _check_nonnegative(d, label)
        _check_vector_sums_to_one(d, label)


def _check_policy_prior(E: Tensor, num_policies: int) -> None:
    if E.dim() != 1 or E.shape[0] != num_policies:
        raise ModelError(
            f"E: shape {tuple(E.shape)}; expected ({num_policies},), one prior probability per "
            f"policy ({num_policies} policies)"
        )
    _check_finite(E, "E")
    _check_nonnegative(E, "E")
    _check_vector_sums_to_one(E, "E")


def _check_dirichlet(name: str, concentrations, like: Sequence[Tensor]) -> None:
    """Concentrations shaped like ``like``, >= 0, every column with a positive total."""
    if concentrations is None:
        return
    if len(concentrations) != len(like):
        raise ModelError(f"{name}: has {len(concentrations)} arrays; {name[1]} has {len(like)}")
    for i, (p, target) in enumerate(zip(concentrations, like, strict=True)):
        label = f"{name}[{i}]"
        if p.shape != target.shape:
            raise ModelError(
                f"{label}: shape {tuple(p.shape)}; expected {tuple(target.shape)}, the "
                f"shape of {name[1]}[{i}]"
            )
        _check_finite(p, label)
        _check_nonnegative(p, label)
        empty = p.sum(0) <= 0
        if empty.any():
            index = tuple(int(j) for j in empty.nonzero()[0]) if empty.dim() else ()
            raise ModelError(
                f"{label}: column {index} has no positive concentration; every Dirichlet "
                "needs a positive total"
            )


def _check_policies(policies, num_controls) -> Tensor:
    """Integer policies (P, H, F) with every control in range, as int64."""
    _screen(policies, "policies", "policies")
    if isinstance(policies, Tensor):
        tensor = policies
    else:
        try:
            array = np.asarray(policies)
        except (ValueError, TypeError) as error:  # ragged nested lists
            raise ModelError(f"policies: cannot be read as an integer array ({error})") from None
        if array.dtype.kind not in "iu":
            raise ModelError(f"policies: must be integers, got dtype {array.dtype}")
        tensor = torch.from_numpy(array)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ModelError(f"policies: must be integers, got dtype {tensor.dtype}")
    F = len(num_controls)
    if tensor.dim() != 3 or tensor.shape[2] != F or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ModelError(
            f"policies: shape {tuple(tensor.shape)}; expected (P, H, {F}) with P, H >= 1"
        )
    tensor = tensor.to(torch.int64)
    limits = torch.tensor(num_controls, device=tensor.device)
    bad = (tensor < 0) | (tensor >= limits)
    if bad.any():
        p, h, f = (int(i) for i in bad.nonzero()[0])
        raise ModelError(
            f"policies: policy {p}, step {h}, factor {f} has control {int(tensor[p, h, f])}; "
            f"factor {f} has controls 0..{num_controls[f] - 1}"
        )
    return tensor


# ---------------------------------------------------------------------------------------------
# policies


def construct_policies(num_controls: Sequence[int], horizon: int = 1) -> Tensor:
    """Every combination of controls over ``horizon`` steps.

    Parameters
    ----------
    num_controls : sequence of int
        U_f, the number of controls of each factor.
    horizon : int
        H, the number of steps of each policy.

    Returns
    -------
    Tensor, int64 (P, H, F)
        ``P = prod_f U_f ** H`` policies, in lexicographic order (the last factor of the last
        step varies fastest).
    """
    num_controls = [int(u) for u in num_controls]
    if horizon < 1:
        raise ValueError(f"horizon: must be at least 1, got {horizon}")
    if not num_controls or any(u < 1 for u in num_controls):
        raise ValueError(f"num_controls: must be positive integers, got {num_controls}")
    steps = list(itertools.product(*[range(u) for u in num_controls]))
    policies = list(itertools.product(steps, repeat=horizon))
    return torch.tensor(policies, dtype=torch.int64).reshape(len(policies), horizon, -1)


# ---------------------------------------------------------------------------------------------
def _check_step_policies(value, num_controls, dtype, device):
    """None, or a tuple of None / (policies (P, H, F) int64, E (P,)) per step, on the model's
    device and in its dtype (E normalised within ``NORMALISATION_TOLERANCE``)."""
    if value is None:
        return None
    if not isinstance(value, tuple | list):
        raise ModelError(
            f"step_policies: expected a tuple with one entry per step, got {type(value).__name__}"
        )
    checked = []
    for t, entry in enumerate(value):
        if entry is None:
            checked.append(None)
            continue
        if not (isinstance(entry, tuple | list) and len(entry) == 2):
            raise ModelError(f"step_policies[{t}]: expected None or (policies, E)")
        policies = _check_policies(entry[0], num_controls).to(device)
        E = torch.as_tensor(entry[1], dtype=dtype, device=device)
        P = policies.shape[0]
        if E.shape != (P,) or not torch.isfinite(E).all() or (E < 0).any():
            raise ModelError(
                f"step_policies[{t}]: E must be ({P},) finite and >= 0, got shape {tuple(E.shape)}"
            )
        if abs(float(E.sum()) - 1.0) > NORMALISATION_TOLERANCE:
            raise ModelError(f"step_policies[{t}]: E sums to {float(E.sum())!r}, not 1")
        same = isinstance(entry, tuple) and policies is entry[0] and E is entry[1]
        checked.append(entry if same else (policies, E))
    if isinstance(value, tuple) and all(a is b for a, b in zip(checked, value, strict=True)):
        return value  # already checked: the same object, so that a model need not be copied
    return tuple(checked)


def _check_goals(value, num_states, dtype, device):
    """None, or a tuple with one entry per factor: None (no intended states) or an indicator
    (S_f,) of the intended states, of 0s and 1s with at least one 1."""
    if value is None:
        return None
    if not isinstance(value, tuple | list) or len(value) != len(num_states):
        raise ModelError(
            f"H: expected a list with one entry per factor ({len(num_states)}), None or an "
            f"indicator of the intended states, got {type(value).__name__}"
            + (f" of length {len(value)}" if isinstance(value, tuple | list) else "")
        )
    checked = []
    for f, (entry, size) in enumerate(zip(value, num_states, strict=True)):
        if entry is None:
            checked.append(None)
            continue
        try:
            h = torch.as_tensor(np.asarray(entry, dtype=float), dtype=dtype, device=device)
        except (TypeError, ValueError) as error:
            raise ModelError(f"H[{f}]: expected an array of 0s and 1s ({size},): {error}") from None
        if h.shape != (size,):
            raise ModelError(f"H[{f}]: expected shape ({size},), got {tuple(h.shape)}")
        if not bool(((h == 0) | (h == 1)).all()) or float(h.sum()) < 1:
            raise ModelError(f"H[{f}]: expected 0s and 1s with at least one 1 (an intended state)")
        checked.append(h)
    if all(h is None for h in checked):
        raise ModelError("H: no factor has an intended state; leave H out instead")
    return tuple(checked)


# the model


class GenerativeModel:
    """A discrete-state POMDP in SPM/pymdp layout, validated on construction.

    Parameters
    ----------
    A : array or list of M arrays (O_m, S_1, ..., S_F)
        Likelihoods p(o_m | s). A single array means one modality.
    B : array or list of F arrays (S_f, S_f, U_f)
        Transitions p(s_f' | s_f, u_f), indexed ``[s_next, s_prev, u]``.
    C : array or list of M arrays (O_m,) or (O_m, T), optional
        Log-preferences over outcomes (SPM's C). Missing: flat (zeros).
    D : array or list of F arrays (S_f,), optional
        Initial-state prior. Missing: uniform.
    E : array (P,), optional
        Prior over the policies. Missing: uniform.
    pA, pB, pD : like A, B, D, optional
        Dirichlet concentrations. Entries must be >= 0 (a zero keeps a structural zero of A, B
        or D) and every column must have a positive total.
    policies : int array (P, H, F), optional
        The policies the agent considers. Missing: every combination of one step.
    step_policies : tuple with one entry per step of a trial, optional
        A task's own policy set for each step: None (the model's policies, where their depth
        fits) or (policies (P_t, H_t, F) int, E_t (P_t,)). ``pp_aif.Task`` checks its
        ``step_policies`` against the trial and gives them to its model
        (``with_step_policies``); the agent reads them at each step.
    H : list of F entries, optional
        The intended states of inductive planning (Friston et al. 2023; pymdp's ``H``): per
        factor None or an indicator (S_f,) of 0s and 1s. Agents with
        ``AgentSettings(inductive_epsilon=...)`` are steered towards them
        (``pp_aif.planning.inductive``).

    The model is immutable: setting an attribute is an AttributeError. What is derived from
    it (``log_A``, ``transition_by_action``, the policies of each depth, ...) is computed once,
    on first use, and kept on the model itself.

    Numpy arrays and torch tensors are accepted; integer arrays become the default float dtype,
    and all arrays are promoted to the widest floating dtype among them (float64 stays float64).
    Every malformed input raises :class:`ModelError` naming the array, its index and the problem:
    A or B missing (None), a scalar, string, dict, set or other non-array where an array belongs,
    a list of numbers where a list of arrays belongs, ragged nested lists, boolean, complex or
    object (non-numeric) dtypes, non-finite or negative entries, wrong shapes and sums.
    Columns of A and B, and D and E, must sum to 1 within ``NORMALISATION_TOLERANCE`` (1e-6).
    Structural zeros in A, B and D are legal.
    """

    def __init__(
        self,
        A,
        B,
        C=None,
        D=None,
        E=None,
        *,
        pA=None,
        pB=None,
        pD=None,
        policies=None,
        step_policies=None,
        H=None,
    ):
        A_list, B_list = _read(A, "A", required=True), _read(B, "B", required=True)
        C_list, D_list, pA_list, pB_list, pD_list = (
            _read(value, name)
            for value, name in ((C, "C"), (D, "D"), (pA, "pA"), (pB, "pB"), (pD, "pD"))
        )
        E_list = _read(E, "E")
        given = [
            t
            for group in (A_list, B_list, C_list, D_list, E_list, pA_list, pB_list, pD_list)
            if group
            for t in group
        ]
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in given))
        device = A_list[0].device

        def cast(tensors):
            return (
                None
                if tensors is None
                else tuple(t.to(dtype=dtype, device=device) for t in tensors)
            )

        A_list, B_list, C_list, D_list = cast(A_list), cast(B_list), cast(C_list), cast(D_list)
        E_list, pA_list, pB_list, pD_list = (
            cast(E_list),
            cast(pA_list),
            cast(pB_list),
            cast(pD_list),
        )

        num_states, num_controls = _check_transitions(B_list)
        num_outcomes = _check_likelihoods(A_list, num_states)
        if C_list is None:
            C_list = tuple(torch.zeros(o, dtype=dtype, device=device) for o in num_outcomes)
        _check_preferences(C_list, num_outcomes)
        if D_list is None:
            D_list = tuple(torch.full((s,), 1 / s, dtype=dtype, device=device) for s in num_states)
        _check_initial(D_list, num_states)
        if policies is None:
            policies_tensor = construct_policies(num_controls, 1).to(device)
        else:
            policies_tensor = _check_policies(policies, num_controls).to(device)
        P = policies_tensor.shape[0]
        E_tensor = torch.full((P,), 1 / P, dtype=dtype, device=device) if E is None else E_list[0]
        _check_policy_prior(E_tensor, P)
        _check_dirichlet("pA", pA_list, A_list)
        _check_dirichlet("pB", pB_list, B_list)
        _check_dirichlet("pD", pD_list, D_list)

        self.A: tuple[Tensor, ...] = A_list
        self.B: tuple[Tensor, ...] = B_list
        self.C: tuple[Tensor, ...] = C_list
        self.D: tuple[Tensor, ...] = D_list
        self.E: Tensor = E_tensor
        self.pA = pA_list
        self.pB = pB_list
        self.pD = pD_list
        self.policies: Tensor = policies_tensor
        self.num_states = num_states
        self.num_controls = num_controls
        self.num_outcomes = num_outcomes
        self.step_policies = _check_step_policies(step_policies, num_controls, dtype, device)
        self.H = _check_goals(H, num_states, dtype, device)
        self._derived: dict = {}  # caches of derived values, filled on first use
        self._frozen = True

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            raise AttributeError(
                f"GenerativeModel is immutable: cannot set {name!r}; build a new model (or use "
                "with_step_policies for a task's own policy sets)"
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        raise AttributeError(f"GenerativeModel is immutable: cannot delete {name!r}")

    def with_step_policies(self, step_policies) -> GenerativeModel:
        """The same model with a task's own policy set per step (None: none); ``self`` is not
        changed, and its derived values are shared."""
        checked = _check_step_policies(step_policies, self.num_controls, self.dtype, self.device)
        model = copy.copy(self)
        object.__setattr__(model, "step_policies", checked)
        return model

    def policies_of_depth(self, depth: int) -> tuple[Tensor, Tensor]:
        """Every policy of ``depth`` steps (P, depth, F) and ln of a flat prior over them (P,):
        what an agent plans over where the model's own policies are too deep for the steps
        left. Made once per model and depth."""
        key = ("policies_of_depth", depth)
        if key not in self._derived:
            policies = construct_policies(self.num_controls, depth).to(self.device)
            P = policies.shape[0]
            flat = torch.full((P,), -math.log(P), dtype=self.dtype, device=self.device)
            self._derived[key] = (policies, flat)
        return self._derived[key]

    # ---- sizes
    @property
    def num_factors(self) -> int:
        """F."""
        return len(self.num_states)

    @property
    def num_modalities(self) -> int:
        """M."""
        return len(self.num_outcomes)

    @property
    def dtype(self) -> torch.dtype:
        return self.A[0].dtype

    @property
    def device(self) -> torch.device:
        return self.A[0].device

    # ---- derived layouts, computed once
    @computed_once
    def log_A(self) -> tuple[Tensor, ...]:
        """ln A[m], (O_m, S_1, ..., S_F); structural zeros are -inf."""
        return tuple(torch.log(a) for a in self.A)

    @computed_once
    def log_D(self) -> tuple[Tensor, ...]:
        """ln D[f], (S_f,); structural zeros are -inf."""
        return tuple(torch.log(d) for d in self.D)

    @computed_once
    def transition_by_action(self) -> tuple[Tensor, ...]:
        """B[f] as (U_f, S_next, S_prev), so that ``transition_by_action[f][u]`` is a matrix."""
        return tuple(b.permute(2, 0, 1).contiguous() for b in self.B)

    @computed_once
    def log_likelihood_last(self) -> tuple[Tensor, ...]:
        """ln A[m] with the outcome axis last, (S_1, ..., S_F, O_m): Pyro's layout."""
        return tuple(a.movedim(0, -1).contiguous() for a in self.log_A)

    @computed_once
    def log_transition_last(self) -> tuple[Tensor, ...]:
        """ln B[f] as (U_f, S_prev, S_next): Pyro's layout, next state last."""
        return tuple(torch.log(b).permute(2, 1, 0).contiguous() for b in self.B)

    @computed_once
    def learnable_initial_factors(self) -> tuple[tuple[int, ...], tuple[int | None, ...]]:
        """(the factors whose pD has more than one positive entry, and for each factor the one
        state its D is certain of, None for those): a factor with one positive count keeps a
        one-hot D whatever it learns. ((), ()) without pD."""
        if self.pD is None:
            return (), ()
        certain = tuple(
            None if int((p > 0).sum()) > 1 else int((p > 0).nonzero()[0]) for p in self.pD
        )
        return tuple(f for f, s in enumerate(certain) if s is None), certain

    def to(self, dtype: torch.dtype | None = None, device=None) -> GenerativeModel:
        """A copy with every array cast to ``dtype`` and moved to ``device``."""

        def move(tensors):
            if tensors is None:
                return None
            return [t.to(dtype=dtype or self.dtype, device=device or self.device) for t in tensors]

        return GenerativeModel(
            move(self.A),
            move(self.B),
            move(self.C),
            move(self.D),
            move([self.E])[0],
            pA=move(self.pA),
            pB=move(self.pB),
            pD=move(self.pD),
            policies=self.policies.to(device or self.device),
            step_policies=None
            if self.step_policies is None
            else tuple(
                None if entry is None else (entry[0], move([entry[1]])[0])
                for entry in self.step_policies
            ),
            H=None if self.H is None else [None if h is None else move([h])[0] for h in self.H],
        )

    def __repr__(self) -> str:
        return (
            f"GenerativeModel(num_states={self.num_states}, num_outcomes={self.num_outcomes}, "
            f"num_controls={self.num_controls}, policies={tuple(self.policies.shape)}, "
            f"dtype={self.dtype})"
        )

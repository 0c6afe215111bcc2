"""Bayesian model reduction (BMR) of Dirichlet concentration parameters.

Dimension symbols: O outcomes (the Dirichlet axis, axis 0), S_1..S_F the column axes (any number,
including none). Arrays follow SPM's layout of ``A`` (O, S_1..S_F): each column ``a[:, s]`` is
the concentration vector of one Dirichlet distribution over the O outcomes.

Given a full model with prior Dir(p) and (conjugate) posterior Dir(q) and a reduced model that
differs only in its prior Dir(r), the reduced posterior and the change in log evidence follow
without refitting (Friston, Parr & Zeidman 2018, "Bayesian model reduction", arXiv:1805.07092,
table 1; SPM's ``spm_MDP_log_evidence.m``):

    s  = q + r - p                                                   (reduced posterior)
    ln B(a) = sum_o ln Gamma(a_o) - ln Gamma(sum_o a_o)              (multivariate Beta, axis 0)
    ln p(y | reduced) - ln p(y | full) = sum_columns [ln B(s) - ln B(r) - ln B(q) + ln B(p)]
    dF = -(that) = sum_columns [ln B(q) + ln B(r) - ln B(p) - ln B(s)]

Sign convention. SPM's ``[F, sA] = spm_MDP_log_evidence(qA, pA, rA)`` returns
F = ln B(qA) + ln B(rA) - ln B(pA) - ln B(sA), documented there as the "free energy or (negative)
log evidence of reduced model": it is the change in free energy F = -ln p(y), so F < 0 favours
the reduced model. The reference outputs ``bmr_test_a.mat`` and ``bmr_test_b.mat`` confirm this
sign (they match +dF above to 1e-13, not -dF). ``reduced_log_evidence`` returns the same dF
(the project's F is also -ln p(y)); ``ReducedDirichlet.log_evidence_change`` is -dF.

Columns. SPM's ``spm_betaln`` applied to an array returns one ln B per column; ``dF`` here is
their sum (the reduced prior is applied to all columns at once).

Structural zeros. SPM's ``spm_betaln`` drops the zero entries of each vector before summing.
Here a zero is legal only where it stands for a category absent from both sides of a ratio:
an entry may be 0 in ``prior`` and ``posterior`` together, and in ``reduced_prior`` and the
reduced posterior together (the limit r_o -> 0 of a category with no data is exactly "drop it").
Such zeros are left out of ln B, as SPM does; any other zero or negative entry raises.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from pp_aif.errors import ModelError

__all__ = ["ReducedDirichlet", "reduced_log_evidence"]


class ReducedDirichlet(NamedTuple):
    """The result of Bayesian model reduction; unpacks as ``(dF, reduced_posterior)``.

    Attributes
    ----------
    free_energy_change : float
        dF = F(reduced) - F(full) = sum_columns [ln B(q) + ln B(r) - ln B(p) - ln B(s)], with
        F = -ln p(y); SPM's ``F``. Negative values favour the reduced model.
    posterior : array (O, S_1..S_F)
        s = q + r - p, the Dirichlet concentrations of the reduced posterior (a torch tensor if
        ``posterior`` was one, else numpy), float64.
    """

    free_energy_change: float
    posterior: np.ndarray | torch.Tensor

    @property
    def log_evidence_change(self) -> float:
        """ln p(y | reduced) - ln p(y | full) = -free_energy_change."""
        return -self.free_energy_change


def _as_array(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.array(x, dtype=np.float64)
    if a.ndim < 1:
        raise ModelError(f"{name} must have an outcome axis (O, ...), got a scalar")
    if not np.isfinite(a).all():
        index = _first(~np.isfinite(a))
        raise ModelError(f"{name}{list(index)} is {a[index]}, not finite")
    return a


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _check_pair(values: np.ndarray, name: str, partner: np.ndarray, partner_name: str) -> None:
    """Entries positive, or 0 only where the partner is 0 too."""
    if (values < 0).any():
        index = _first(values < 0)
        raise ModelError(f"{name}{list(index)} = {values[index]:.6g} is negative")
    unpaired = (values == 0) != (partner == 0)
    if unpaired.any():
        index = _first(unpaired)
        raise ModelError(
            f"{name}{list(index)} = {values[index]:.6g} but {partner_name}{list(index)} = "
            f"{partner[index]:.6g}: a zero concentration is legal only as a structural zero of "
            f"both"
        )


def _log_multivariate_beta(a: np.ndarray) -> np.ndarray:
    """ln B(a) over axis 0, leaving out zero entries (SPM's spm_betaln): shape a.shape[1:]."""
    log_gamma = _gammaln(a)
    return np.where(a > 0, log_gamma, 0.0).sum(axis=0) - _gammaln(a.sum(axis=0))


def _gammaln(a) -> np.ndarray:
    return torch.special.gammaln(torch.from_numpy(np.asarray(a, dtype=np.float64))).numpy()


def reduced_log_evidence(posterior, prior, reduced_prior) -> ReducedDirichlet:
    """Bayesian model reduction of Dirichlet parameters (SPM's ``spm_MDP_log_evidence``).

    Parameters
    ----------
    posterior : array-like or Tensor (O, S_1..S_F)
        q, Dirichlet concentrations of the full model's posterior (each column over axis 0 one
        Dirichlet).
    prior : same shape
        p, the full model's prior concentrations.
    reduced_prior : same shape
        r, the reduced model's prior concentrations.

    Returns
    -------
    ReducedDirichlet
        ``(dF, reduced_posterior)``: dF = sum_columns [ln B(q) + ln B(r) - ln B(p) - ln B(s)]
        (SPM's F, the change in free energy -ln p(y); negative favours the reduced model) and
        s = q + r - p. ``.log_evidence_change`` is -dF.

    Raises
    ------
    ModelError (a ValueError)
        Shapes differ; an entry is not finite or negative; a zero is not structural (see the
        module docstring); the reduced posterior s = q + r - p has a non-positive entry; or a
        column is all zeros. The message names the array and the first offending index.
    """
    q = _as_array(posterior, "posterior")
    p = _as_array(prior, "prior")
    r = _as_array(reduced_prior, "reduced_prior")
    if not q.shape == p.shape == r.shape:
        raise ModelError(
            f"posterior {q.shape}, prior {p.shape} and reduced_prior {r.shape} must have the "
            f"same shape"
        )
    s = q + r - p
    if (s < 0).any() or ((s == 0) & (r > 0)).any():
        index = _first((s < 0) | ((s == 0) & (r > 0)))
        raise ModelError(
            f"reduced posterior [posterior + reduced_prior - prior]{list(index)} = "
            f"{s[index]:.6g} is not positive: the reduced prior removes more than the prior gave"
        )
    _check_pair(p, "prior", q, "posterior")
    _check_pair(q, "posterior", p, "prior")
    _check_pair(r, "reduced_prior", s, "reduced posterior")
    empty = ~(p > 0).any(axis=0) | ~(r > 0).any(axis=0)
    if empty.any():
        index = _first(empty)
        where = f"column {list(index)} (over axis 0)" if index else "the vector"
        raise ModelError(f"{where} of prior or reduced_prior is all zeros")

    per_column = (
        _log_multivariate_beta(q)
        + _log_multivariate_beta(r)
        - _log_multivariate_beta(p)
        - _log_multivariate_beta(s)
    )
    reduced = torch.from_numpy(s) if isinstance(posterior, torch.Tensor) else s
    return ReducedDirichlet(float(per_column.sum()), reduced)

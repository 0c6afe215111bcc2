"""``compare``: fitted agents ranked by their expected log predictive density (PSIS-LOO or WAIC).

Each fit is an ``arviz.InferenceData`` from ``pp_aif.fit``, whose ``log_likelihood["actions"]``
holds ln p(actions of trial k of subject n | theta) for every draw (chain, draw, subject, trial).
``unit`` chooses what is left out: "trial" (each trial of each subject is one observation: how
well a model predicts a held-out trial of a known subject) or "subject" (the trials of a subject
summed first: how well it predicts a new subject's whole record, the question of a group study).

The ranking is ArviZ's ``compare`` (stacking weights, elpd differences and their standard
errors). PSIS diagnostics: a Pareto k above 0.7 (or ArviZ's lower threshold 1 - 1/log10(S) for
S < 2200 draws) makes that observation's LOO estimate unreliable (Vehtari et al. 2024); they are
reported as one ``DiagnosticWarning`` per model naming
the subjects (and trials) affected, in place of ArviZ's unnamed warning. WAIC likewise: a
posterior variance of the log predictive density above 0.4 (``WAIC_VARIANCE_THRESHOLD``,
Vehtari, Gelman & Gabry 2017) makes WAIC unreliable for that observation; those are named in a
``DiagnosticWarning`` per model.

Fits are checked before anything is computed: each an ``InferenceData`` with a finite
``log_likelihood["actions"]`` (chain, draw, subject, trial) of at least 100 draws, and all of
them of the same subjects (in the same order), trials and actions; a ``DataError`` says which
fit and what is wrong.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import arviz as az
import numpy as np
import pandas as pd

from pp_aif.errors import DataError, DiagnosticWarning

__all__ = [
    "compare",
    "pointwise_fit",
    "subject_elpd",
    "PARETO_K_THRESHOLD",
    "WAIC_VARIANCE_THRESHOLD",
    "UNITS",
    "CRITERIA",
]

PARETO_K_THRESHOLD = 0.7
#: ArviZ's (and Vehtari et al. 2017's) limit on the posterior variance of ln p(y_i | theta).
WAIC_VARIANCE_THRESHOLD = 0.4
#: Fewest posterior draws for PSIS-LOO or WAIC.
MIN_DRAWS = 100
LOG_LIKELIHOOD_DIMS = ("chain", "draw", "subject", "trial")
UNITS = ("trial", "subject")
CRITERIA = ("loo", "waic")


def pointwise_fit(inference: az.InferenceData, unit: str = "trial") -> az.InferenceData:
    """The fit with its log-likelihood in the given unit: "trial" as it is, or "subject" with
    the trials of each subject summed (dims chain, draw, subject)."""
    if unit not in UNITS:
        raise ValueError(f"unit: {unit!r} is not one of {UNITS}")
    _check_fit("fit", inference, min_draws=1)
    pointwise = inference.log_likelihood["actions"]
    if unit == "subject":  # absent trials hold 0: the sum is over the subject's own trials
        pointwise = pointwise.sum("trial")
    else:  # one observation per trial that exists: absent trials are no observations
        present = np.ones(pointwise.shape[2:], dtype=bool)
        if "constant_data" in inference.groups() and "present" in inference.constant_data:
            present = inference.constant_data["present"].values.astype(bool)
        pointwise = (
            pointwise.stack(observation=("subject", "trial"))
            .isel(observation=np.flatnonzero(present.reshape(-1)))
            .reset_index("observation")
        )
    return az.InferenceData(
        posterior=inference.posterior, log_likelihood=pointwise.to_dataset(name="actions")
    )


def subject_elpd(inference: az.InferenceData) -> np.ndarray:
    """Each subject's PSIS-LOO elpd, summed over the trials it has: (N,), in the order of the
    fit's subjects (the per-subject numbers for ``bms``). Pareto-k warnings are ``compare``'s
    to report; ArviZ's own are silenced here."""
    _check_fit("fit", inference)
    subjects = inference.log_likelihood.coords["subject"].values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loo = az.loo(pointwise_fit(inference), pointwise=True)
    return loo.loo_i.groupby("subject").sum().reindex(subject=subjects).values


def compare(
    fits: dict[str, az.InferenceData], ic: str = "loo", unit: str = "trial"
) -> pd.DataFrame:
    """Rank fitted models of the same data by PSIS-LOO (or WAIC), in ArviZ's ``compare`` form.

    fits : {name: InferenceData} (at least two, fitted to the same subjects and trials);
    ic : "loo" or "waic"; unit : "trial" or "subject" (see the module docstring).
    Returns ArviZ's DataFrame (rank, elpd_loo or elpd_waic, p, elpd_diff, weight, se, dse,
    warning, scale), one row per model, best first.
    """
    if ic not in CRITERIA:
        raise ValueError(f"ic: {ic!r} is not one of {CRITERIA}")
    if unit not in UNITS:
        raise ValueError(f"unit: {unit!r} is not one of {UNITS}")
    if not isinstance(fits, Mapping):
        raise TypeError(
            f"fits: is a {type(fits).__name__}; give a dict {{name: InferenceData}} of the fits "
            "to compare"
        )
    if len(fits) < 2:
        raise ValueError(f"fits: need at least two models to compare, got {len(fits)}")
    _check_same_data(fits)
    prepared = {name: pointwise_fit(inference, unit) for name, inference in fits.items()}
    pareto_k = {}
    with warnings.catch_warnings():  # ArviZ's own warnings: ours below name the places
        warnings.filterwarnings("ignore", message=r".*Pareto.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*posterior variance.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*inplace keyword.*")  # ArviZ on pandas 3
        if ic == "loo":  # once per model: the ranking and the diagnostics share it
            estimates = {name: az.loo(fit, pointwise=True) for name, fit in prepared.items()}
            for name, loo in estimates.items():
                pareto_k[name] = (loo.pareto_k, float(loo.get("good_k", PARETO_K_THRESHOLD)))
        else:
            estimates = {name: az.waic(fit, pointwise=True) for name, fit in prepared.items()}
        table = az.compare(estimates, ic=ic)
    for name, (k, threshold) in pareto_k.items():
        _warn_about_pareto_k(name, k, unit, threshold)
    if ic == "waic":
        for name, fit in prepared.items():
            variance = fit.log_likelihood["actions"].var(("chain", "draw"))
            _warn_about_waic_variance(name, variance, unit)
    return table


def _check_fit(label: str, inference, min_draws: int = MIN_DRAWS) -> None:
    """A DataError unless ``inference`` is an InferenceData with a finite
    log_likelihood['actions'] (chain, draw, subject, trial) of at least ``min_draws`` draws."""
    if not isinstance(inference, az.InferenceData):
        raise DataError(
            f"{label}: is a {type(inference).__name__}, not an arviz InferenceData (a fit from "
            "pp_aif.fit)"
        )
    if "log_likelihood" not in inference.groups() or "actions" not in inference.log_likelihood:
        raise DataError(
            f"{label}: has no log_likelihood['actions'] (per subject and trial); fit it with "
            "pp_aif.fit"
        )
    here = inference.log_likelihood["actions"]
    if here.dims != LOG_LIKELIHOOD_DIMS:
        raise DataError(
            f"{label}: log_likelihood['actions'] has dims {here.dims}; expected "
            f"{LOG_LIKELIHOOD_DIMS}, as pp_aif.fit writes it"
        )
    draws = here.shape[0] * here.shape[1]
    if draws < min_draws:
        raise DataError(
            f"{label}: has {draws} posterior draw(s); PSIS-LOO and WAIC need a posterior sample "
            f"(at least {min_draws} draws: fit by 'nuts', 'svi' or 'grid', not 'map')"
        )
    values = here.values
    bad = ~np.isfinite(values)
    if bad.any():
        c, d, n, k = (int(i) for i in np.argwhere(bad)[0])
        subject, trial = here.coords["subject"].values[n], here.coords["trial"].values[k]
        raise DataError(
            f"{label}: log_likelihood['actions'] is {values[c, d, n, k]} at chain {c}, draw {d}, "
            f"subject {subject}, trial {trial} ({int(bad.sum())} non-finite entries in all); "
            "PSIS-LOO and WAIC need a finite log-likelihood at every draw"
        )


def _check_same_data(fits: dict[str, az.InferenceData]) -> None:
    reference_name, reference = None, None
    for name, inference in fits.items():
        _check_fit(f"fits[{name!r}]", inference)
        here = inference.log_likelihood["actions"]
        if reference is None:
            reference_name, reference, shape = name, inference, here.shape[2:]
            subjects = here.coords["subject"].values
            continue
        if here.shape[2:] != shape:
            raise DataError(
                f"fits[{name!r}]: {here.shape[2]} subjects x {here.shape[3]} trials, but "
                f"fits[{reference_name!r}] has {shape[0]} x {shape[1]}: compare fits of the "
                "same data"
            )
        if not np.array_equal(here.coords["subject"].values, subjects):
            raise DataError(
                f"fits[{name!r}]: subjects {here.coords['subject'].values[:5].tolist()}... "
                f"differ from fits[{reference_name!r}]'s {subjects[:5].tolist()}... (or their "
                "order): compare fits of the same data, read in the same order"
            )
        if "observed_data" in inference.groups() and "observed_data" in reference.groups():
            same = np.array_equal(
                inference.observed_data["actions"].values,
                reference.observed_data["actions"].values,
            )
            if not same:
                raise DataError(
                    f"fits[{name!r}] and fits[{reference_name!r}] were fitted to different "
                    "actions: compare fits of the same data"
                )


def _warn_about_pareto_k(name: str, pareto_k, unit: str, threshold: float) -> None:
    """pareto_k : one value per observation (a trial, with its subject and trial coordinates,
    or a subject)."""
    k = np.asarray(pareto_k.values)
    bad = np.flatnonzero(k > threshold)
    if not len(bad):
        return
    subjects = pareto_k.coords["subject"].values
    if unit == "trial":
        trials = pareto_k.coords["trial"].values
        where = [f"({subjects[i]}, trial {trials[i]})" for i in bad[:10]]
    else:
        where = [str(subjects[i]) for i in bad[:10]]
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    remedy = "more draws, or unit='trial'" if unit == "subject" else "more draws"
    warnings.warn(
        f"compare: model {name!r}: Pareto k > {threshold:.2f} for {len(bad)} of {k.size} "
        f"{unit}s (largest {k.max():.2f}), so their LOO estimates are unreliable: "
        f"{', '.join(where)}{more}; refit with {remedy}, or use K-fold cross-validation for "
        "these",
        DiagnosticWarning,
        stacklevel=3,
    )


def _warn_about_waic_variance(name: str, variance, unit: str) -> None:
    """variance : the posterior variance of ln p(y_i | theta), one per observation (a trial, with
    its subject and trial coordinates, or a subject)."""
    v = np.asarray(variance.values)
    bad = np.flatnonzero(v > WAIC_VARIANCE_THRESHOLD)
    if not len(bad):
        return
    subjects = variance.coords["subject"].values
    if unit == "trial":
        trials = variance.coords["trial"].values
        where = [f"({subjects[i]}, trial {trials[i]})" for i in bad[:10]]
    else:
        where = [str(subjects[i]) for i in bad[:10]]
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    warnings.warn(
        f"compare: model {name!r}: WAIC is unreliable for {len(bad)} of {v.size} {unit}s: the "
        f"posterior variance of their log predictive density exceeds "
        f"{WAIC_VARIANCE_THRESHOLD} (largest {v.max():.2f}): {', '.join(where)}{more}; use "
        "ic='loo', whose Pareto k diagnostics say where it fails",
        DiagnosticWarning,
        stacklevel=3,
    )

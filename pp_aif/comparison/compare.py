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
the subjects (and trials) affected, in place of ArviZ's unnamed warning.
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pandas as pd

from pp_aif.errors import DiagnosticWarning

__all__ = ["compare", "pointwise_fit", "subject_elpd", "PARETO_K_THRESHOLD", "UNITS", "CRITERIA"]

PARETO_K_THRESHOLD = 0.7
UNITS = ("trial", "subject")
CRITERIA = ("loo", "waic")


def pointwise_fit(inference: az.InferenceData, unit: str = "trial") -> az.InferenceData:
    """The fit with its log-likelihood in the given unit: "trial" as it is, or "subject" with
    the trials of each subject summed (dims chain, draw, subject)."""
    if unit not in UNITS:
        raise ValueError(f"unit: {unit!r} is not one of {UNITS}")
    if "log_likelihood" not in inference.groups() or ("actions" not in inference.log_likelihood):
        raise ValueError(
            "fit: has no log_likelihood['actions'] (per subject and trial); fit it with pp_aif.fit"
        )
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
            table = az.compare(estimates, ic="loo")
        else:
            table = az.compare(prepared, ic=ic)
    for name, (k, threshold) in pareto_k.items():
        _warn_about_pareto_k(name, k, unit, threshold)
    return table


def _check_same_data(fits: dict[str, az.InferenceData]) -> None:
    reference_name, reference = None, None
    for name, inference in fits.items():
        if "log_likelihood" not in inference.groups() or "actions" not in inference.log_likelihood:
            raise ValueError(
                f"fits[{name!r}]: has no log_likelihood['actions']; fit it with pp_aif.fit"
            )
        here = inference.log_likelihood["actions"]
        draws = here.shape[0] * here.shape[1]
        if draws < 100:
            raise ValueError(
                f"fits[{name!r}]: has {draws} posterior draw(s); PSIS-LOO and WAIC need a "
                "posterior sample (at least 100 draws: fit by 'nuts', 'svi' or 'grid', not 'map')"
            )
        if reference is None:
            reference_name, reference, shape = name, inference, here.shape[2:]
            continue
        if here.shape[2:] != shape:
            raise ValueError(
                f"fits[{name!r}]: {here.shape[2]} subjects x {here.shape[3]} trials, but "
                f"fits[{reference_name!r}] has {shape[0]} x {shape[1]}: compare fits of the "
                "same data"
            )
        if "observed_data" in inference.groups() and "observed_data" in reference.groups():
            same = np.array_equal(
                inference.observed_data["actions"].values,
                reference.observed_data["actions"].values,
            )
            if not same:
                raise ValueError(
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

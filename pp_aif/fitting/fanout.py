"""Fits of many subjects as Dask jobs: the subjects in groups, each group one job, resumable.

Subjects without a population model are independent, so their posteriors can be fitted apart:
``fit_subjects`` splits them into groups of ``subjects_per_job``, runs each group's ``fit`` as a
job (``pp_aif.jobs.fan_out``: a ``LocalCluster`` by default, an existing cluster by its address),
writes each group's InferenceData into a job store as it arrives, and joins the groups into one
InferenceData along ``subject`` (``concat_subjects``). A rerun with the same task, data and
settings finds the finished groups in the store and fits only the others.

The result is the fit of the subjects one group at a time: each group has its own seed
(``seed`` + its index), and with NUTS its own step size and metric, so the draws differ from one
``fit`` of all subjects at once (each subject's posterior is the same). ``sample_stats`` gain a
``subject`` axis: each subject's entries are the stats of its group's sampler. The attrs
``jobs_computed`` and ``jobs_resumed`` say how many groups this call fitted and how many it
found done in the store.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from pathlib import Path

import arviz as az
import numpy as np
import torch
import xarray as xr

from pp_aif.data import BehaviourData
from pp_aif.errors import ConvergenceWarning
from pp_aif.fitting.fit import _check_arguments, fit
from pp_aif.jobs import Job, JobStore, content_digest, fan_out, job_name
from pp_aif.simulation import SETTING_ATTRIBUTES

__all__ = ["fit_subjects", "concat_subjects", "content_digest"]

_ADDITIVE = ("seconds", "gradients", "elbo", "log_density")  # over independent groups
_PER_SUBJECT = ("log_evidence",)


def _fit_group(task, data, params, priors, fit_kwargs, threads):
    """One job: ``fit`` of a group of subjects; its warnings go into the InferenceData's attrs
    (a worker's warnings would not reach the caller)."""
    if threads is not None:
        torch.set_num_threads(threads)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        inference = fit(task, data, params, priors, **fit_kwargs)
    messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    inference.attrs["warnings"] = "\n".join(messages)  # netCDF keeps a string, not a list
    return inference


def fit_subjects(
    task,
    data: BehaviourData,
    params=("gamma", "alpha"),
    priors: dict | None = None,
    *,
    store: str | Path,
    subjects_per_job: int = 10,
    scheduler: str | None = None,
    workers: int | None = None,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    announce: Callable[[str], None] | None = None,
    **fit_kwargs,
) -> az.InferenceData:
    """``fit`` of independent subjects in groups of ``subjects_per_job``, each group a job.

    store : folder of the groups' results (reruns resume from it); scheduler, workers : where
    the jobs run (``pp_aif.jobs.fan_out``: None starts a ``LocalCluster``, an address uses that
    cluster, "inline" runs them here); progress : callable(job name, done, total); announce :
    callable(line), told where to watch the jobs (the Dask dashboard, Prometheus metrics);
    fit_kwargs : ``fit``'s (method, chains, draws, warmup, steps, grid_points, width,
    settings, device, ...), not ``hierarchical``: a population model fits its subjects together.
    Each group's ConvergenceWarnings are warned again here, with the group's subjects named.
    """
    if fit_kwargs.get("hierarchical"):
        raise ValueError(
            "fit_subjects: hierarchical=True fits a population, whose subjects depend on each "
            "other; fit it in one job with fit()"
        )
    unknown = sorted(set(fit_kwargs) - _FIT_KEYWORDS)
    if unknown:
        raise TypeError(f"fit_subjects: unexpected argument(s) {unknown} (not fit's)")
    if not isinstance(subjects_per_job, int) or subjects_per_job < 1:
        raise ValueError(f"subjects_per_job: {subjects_per_job!r}; need an integer >= 1")
    params = tuple(params)
    options = {**_FIT_DEFAULTS, **fit_kwargs}
    _check_arguments(
        task, data, params, *(options[k] for k in ("method", "hierarchical", "chains")),
        *(options[k] for k in ("draws", "warmup", "steps")),
    )  # fmt: skip
    N = data.num_subjects
    settings_digest = content_digest(task.model, task.settings, priors, fit_kwargs)
    threads = None if scheduler == "inline" else 1
    jobs = []
    for j, start in enumerate(range(0, N, subjects_per_job)):
        stop = min(start + subjects_per_job, N)
        group = data.subjects_slice(start, stop)
        spec = {
            "task": task.name,
            "settings": settings_digest,
            "params": params,
            "seed": seed + j,
            "subjects": group.subjects,
            "data": content_digest(group.observations, group.actions, group.present),
        }
        kwargs = {
            "task": task,
            "data": group,
            "params": params,
            "priors": priors,
            "fit_kwargs": {**fit_kwargs, "seed": seed + j},
            "threads": threads,
        }
        jobs.append(Job(job_name(f"fit-{start:05d}-{stop - 1:05d}", spec), _fit_group, kwargs))
    results = fan_out(
        jobs,
        JobStore(store),
        scheduler=scheduler,
        workers=workers,
        progress=progress,
        announce=announce,
    )
    parts = [results[job.name] for job in jobs]
    for job, part in zip(jobs, parts, strict=True):
        first, last = job.kwargs["data"].subjects[0], job.kwargs["data"].subjects[-1]
        for message in filter(None, str(part.attrs.get("warnings", "")).split("\n")):
            warnings.warn(f"subjects {first}..{last}: {message}", ConvergenceWarning, stacklevel=2)
    joined = concat_subjects(parts)
    joined.attrs["jobs_computed"] = len(results.computed)
    joined.attrs["jobs_resumed"] = len(results.resumed)
    return joined


#: ``fit``'s keyword arguments that a group's fit takes (the rest are fit_subjects' own), with
#: their defaults
_FIT_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(fit).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("seed", "progress")
}
_FIT_KEYWORDS = set(_FIT_DEFAULTS)


def concat_subjects(parts: list[az.InferenceData]) -> az.InferenceData:
    """One InferenceData from fits of disjoint groups of subjects (same parameters, method,
    chains and draws): every group's variables joined along ``subject``; the sample stats given
    a ``subject`` axis (each subject's: its group's sampler's); per-subject attrs joined,
    additive ones (seconds, gradients, ELBO) summed, the others required equal. The parts'
    netCDF encodings are dropped (they describe the parts' files: a string width kept from the
    first part would cut longer ids short when the join is written)."""
    if not parts:
        raise ValueError("concat_subjects: no fits")
    first = parts[0]
    for i, part in enumerate(parts[1:], 1):
        for key in ("method", "params", "hierarchical", *SETTING_ATTRIBUTES):  # the same agent
            a, b = first.attrs.get(key), part.attrs.get(key)
            if not np.array_equal(np.asarray(a), np.asarray(b)):
                raise ValueError(f"concat_subjects: fit {i} has {key} {b!r}, fit 0 has {a!r}")
        for name in ("chain", "draw"):
            if part.posterior.sizes[name] != first.posterior.sizes[name]:
                raise ValueError(
                    f"concat_subjects: fit {i} has {part.posterior.sizes[name]} {name}s, "
                    f"fit 0 has {first.posterior.sizes[name]}"
                )
    if int(first.attrs.get("hierarchical", 0)):
        raise ValueError("concat_subjects: hierarchical fits do not split by subject")
    subjects = [s for part in parts for s in part.posterior.coords["subject"].values.tolist()]
    if len(set(subjects)) != len(subjects):
        raise ValueError("concat_subjects: a subject appears in more than one fit")
    groups = {}
    for group in first.groups():
        datasets = []
        for part in parts:
            dataset = part[group]
            if "subject" not in dataset.dims:
                dataset = dataset.expand_dims(subject=part.posterior.coords["subject"].values)
            datasets.append(dataset)
        joined = xr.concat(datasets, dim="subject", combine_attrs="drop")
        leading = [d for d in ("chain", "draw") if d in joined.dims]
        joined = joined.transpose(*leading, ...)
        # the parts' encodings (read from their files) describe those files, not this join: the
        # first part's string width (<U7 for 'agent-9') would cut 'agent-10' to 'agent-1'
        joined.encoding = {}
        for variable in joined.variables.values():
            variable.encoding = {}
        groups[group] = joined
    attrs = {}
    for key, value in first.attrs.items():
        if key in _ADDITIVE:
            attrs[key] = float(sum(float(p.attrs[key]) for p in parts))
        elif key in _PER_SUBJECT:
            attrs[key] = [float(v) for p in parts for v in np.atleast_1d(p.attrs[key])]
        elif key in ("params", "population"):  # netCDF reads a list of one as a string
            attrs[key] = [str(v) for v in np.atleast_1d(value)]
        elif key == "hierarchical":
            attrs[key] = int(value)
        elif key == "warnings":
            attrs[key] = "\n".join(filter(None, (str(p.attrs.get(key, "")) for p in parts)))
        else:
            attrs[key] = value.tolist() if isinstance(value, np.ndarray) else value
    attrs["jobs"] = len(parts)
    inference = az.InferenceData(**groups)
    inference.attrs.update(attrs)
    return inference

"""Many jobs on Dask: fits of many subjects, recovery runs and sweeps, resumable.

A ``Job`` is a name, a function and its arguments. ``fan_out`` runs the jobs that have no result
yet on a Dask cluster (a ``LocalCluster`` of worker processes by default, or an existing cluster
given its scheduler's address) and writes each result as it arrives into a ``JobStore``:

- **atomically** (``pp_aif.atomic``): to a temporary file in the store's folder, flushed to
  disk, read back and checked (netCDF), then linked to its final name; a reader sees a whole
  result or none, whatever is killed when, and the temporary files of a killed client are
  removed by the next run;
- **exactly once**: the link fails if the name exists, so a job that a scheduler ran twice (a
  worker lost after it finished) keeps its first result;
- **under a deterministic name**: ``job_name(prefix, spec)`` is the prefix and a digest of the
  job's specification, so a rerun with the same settings finds the results of the last one and
  skips those jobs, and one with other settings does not mistake them for its own.

The results are written by this process (the client), not by the workers: the workers need no
shared file system, and a worker killed mid-job loses only that job, which the scheduler runs
again elsewhere. A job that raises does not stop the others; ``fan_out`` raises ``JobsFailed``
naming the failures once the rest are written, so a rerun computes only those.

Results are ``arviz.InferenceData`` (netCDF, ``.nc``) or JSON-serialisable values (``.json``).
A result file that cannot be read (truncated or damaged by something outside this module) is
set aside as ``NAME.nc.damaged-TIME`` with a ``DamagedResultWarning`` naming it, and its job
is run again. ``fan_out`` returns the results as a ``FanOutResults`` mapping that also says
which jobs this call computed and which it found done (``computed``, ``resumed``), so that a
timing can say what it measured.

A local cluster's workers are new processes (spawned): a script that calls ``fan_out`` (or
``fit_subjects``, or ``pp-aif fit`` from Python) must do so under
``if __name__ == "__main__":``, and a job's function must be importable by the workers (a
module's top-level function; a remote cluster needs the module installed there too, or
registered with ``cloudpickle.register_pickle_by_value``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pp_aif.atomic import RoundTripError, atomic_write, is_stale, write_netcdf

__all__ = [
    "content_digest",
    "DamagedResult",
    "DamagedResultWarning",
    "FanOutResults",
    "Job",
    "JobStore",
    "JobsFailed",
    "fan_out",
    "job_name",
    "monitoring_lines",
    "spec_digest",
    "timing_note",
]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")
_SUFFIXES = (".nc", ".json")


class DamagedResult(OSError):
    """A result file in a job store that cannot be read (truncated, or not what it claims to
    be); ``path`` names it."""

    def __init__(self, path: Path, error: BaseException):
        self.path = path
        super().__init__(
            f"job store: the result file {path} cannot be read ({type(error).__name__}: "
            f"{error}); it is truncated or damaged: fan_out sets such a file aside and runs "
            "its job again"
        )


class DamagedResultWarning(RuntimeWarning):
    """A damaged result file was set aside and its job will be run again."""


class FanOutResults(dict):
    """``{name: result}`` of every job, and which jobs this call ran (``computed``) and which
    it found in the store (``resumed``), as lists of names in the order of the jobs."""

    def __init__(self, results, computed, resumed):
        super().__init__(results)
        self.computed = list(computed)
        self.resumed = list(resumed)

    def summary(self) -> dict:
        """``{"computed": n, "resumed": m}``, for a record of the run."""
        return {"computed": len(self.computed), "resumed": len(self.resumed)}


def timing_note(computed: int, resumed: int) -> str:
    """What a wall-clock time around a fan-out measured, for a record of the run: whether its
    jobs were computed in it or read from an earlier run's store."""
    total = computed + resumed
    if not resumed:
        return f"computed: all {total} job(s) ran in this run"
    if not computed:
        return (
            f"resumed: all {total} job(s) were read from an earlier run's store; the time is "
            "of reading them, not of computing them"
        )
    return (
        f"resumed: {resumed} of {total} job(s) were read from an earlier run's store and "
        f"{computed} computed; the time is of those {computed} only"
    )


class JobsFailed(RuntimeError):
    """Some jobs raised; ``failures`` maps their names to the exceptions. The others' results
    are in the store."""

    def __init__(self, failures: Mapping[str, BaseException], done: int):
        self.failures = dict(failures)
        first_name, first = next(iter(self.failures.items()))
        names = ", ".join(list(self.failures)[:5]) + (" ..." if len(self.failures) > 5 else "")
        super().__init__(
            f"{len(self.failures)} job(s) failed ({names}); the first, {first_name}: "
            f"{type(first).__name__}: {first}. The {done} finished result(s) are kept: "
            "a rerun computes only the failed jobs"
        )


def spec_digest(spec: Any) -> str:
    """12 hexadecimal digits of SHA-256 over ``spec`` as canonical JSON (keys sorted; tuples as
    lists; paths as strings). Anything else in ``spec`` is refused: a digest of ``repr`` would
    change between runs or versions."""

    def plain(value):
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError(
            f"spec_digest: {type(value).__name__} is not a plain value (dict, list, tuple, str, "
            "int, float, bool, None, Path); describe the job by its settings"
        )

    text = json.dumps(plain(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def job_name(prefix: str, spec: Any) -> str:
    """``prefix-digest``: the same prefix and specification give the same name in every run."""
    name = f"{prefix}-{spec_digest(spec)}"
    if not _NAME.match(name):
        raise ValueError(
            f"job_name: {prefix!r} makes a name that is not a safe file name (letters, digits "
            "and _ . = + -, starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class Job:
    """``function(**kwargs)`` under ``name``. The function must be importable by the workers (a
    module's top-level function) and return an InferenceData or a JSON-serialisable value."""

    name: str
    function: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"Job: name {self.name!r} is not a safe file name (letters, digits and "
                "_ . = + -, starting with a letter or digit)"
            )
        if not callable(self.function):
            raise TypeError(f"Job {self.name}: function {self.function!r} is not callable")


class JobStore:
    """A folder of results, one file per job name, each written once and atomically."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, name: str) -> Path | None:
        """The result's file, or None if the job has none yet."""
        for suffix in _SUFFIXES:
            candidate = self.directory / f"{name}{suffix}"
            if candidate.exists():
                return candidate
        return None

    def done(self, name: str) -> bool:
        return self.path(name) is not None

    def names(self) -> list[str]:
        """The names of the results present."""
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.iterdir() if p.suffix in _SUFFIXES)

    def write(self, name: str, result: Any) -> bool:
        """Write ``result`` under ``name`` unless a result is there: True if written, False if
        the name had one (which is kept). Nothing appears under the name until it is whole (an
        InferenceData is read back and checked first: ``pp_aif.atomic.RoundTripError``)."""
        import arviz as az

        if not _NAME.match(name):
            raise ValueError(f"JobStore.write: {name!r} is not a safe file name")
        if self.done(name):
            return False
        if isinstance(result, az.InferenceData):
            return write_netcdf(result, self.directory / f"{name}.nc", exclusive=True)
        try:
            text = json.dumps(result, indent=1, allow_nan=True)
        except TypeError as error:
            raise TypeError(
                f"job {name}: its result is neither an InferenceData nor "
                f"JSON-serialisable ({error})"
            ) from None
        return atomic_write(
            self.directory / f"{name}.json",
            lambda p: p.write_text(text, encoding="utf-8"),
            exclusive=True,
        )

    def read(self, name: str) -> Any:
        """The result of job ``name``; ``DamagedResult`` (naming the file) if it cannot be
        read, FileNotFoundError if there is none."""
        import arviz as az

        path = self.path(name)
        if path is None:
            raise FileNotFoundError(f"JobStore: no result for job {name} in {self.directory}")
        try:
            if path.suffix == ".nc":
                inference = az.from_netcdf(str(path))
                try:
                    inference.load()  # into memory,
                finally:  # and the file closed: a handle left in xarray's cache would be read
                    for group in inference.groups():  # again, whatever the file is now
                        inference[group].close()
                return inference
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError) as error:  # truncated HDF5, bad JSON, ...
            raise DamagedResult(path, error) from error

    def set_aside(self, name: str) -> Path | None:
        """Rename the result of ``name`` to ``NAME.SUFFIX.damaged-TIME`` (so that its job runs
        again, and the file can still be looked at) with a ``DamagedResultWarning`` naming
        both; returns the new path (None if the result was gone already)."""
        path = self.path(name)
        if path is None:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = path.with_name(f"{path.name}.damaged-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:  # another run set it aside first
            return None
        warnings.warn(
            f"job store: {path} could not be read (truncated or damaged); set aside as "
            f"{aside.name}, and its job will be run again",
            DamagedResultWarning,
            stacklevel=2,
        )
        return aside

    def remove_partials(self, older_than: float = 3600.0) -> int:
        """Delete the temporary files of killed writes: those whose process (on this host) is
        gone, and any more than ``older_than`` s old."""
        if not self.directory.is_dir():
            return 0
        now = time.time()
        removed = 0
        for p in self.directory.glob(".*.partial"):
            try:
                old = now - p.stat().st_mtime > older_than
            except FileNotFoundError:
                continue
            if old or is_stale(p, now=now):
                p.unlink(missing_ok=True)
                removed += 1
        return removed


def fan_out(
    jobs: Iterable[Job],
    store: JobStore | str | Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> FanOutResults:
    """Run the jobs without a result in ``store`` and return every job's result by name, as a
    ``FanOutResults`` (a dict) whose ``computed`` and ``resumed`` name the jobs this call ran
    and those it found done. A result file that cannot be read is set aside (a
    ``DamagedResultWarning`` names it) and its job run again.

    scheduler : None (default) starts a ``LocalCluster`` of ``workers`` processes (default: the
        CPU count, at most the number of jobs to run), one thread each; an address such as
        ``"tcp://10.0.0.5:8786"`` uses that cluster; ``"inline"`` runs the jobs one after
        another in this process (no Dask). A single job to run always runs inline.
    progress : callable(name, done, total), called after each result is written (and once,
        with done = the results already there, before any job runs).
    announce : callable(line), optional: told where to watch the jobs once the cluster runs
        (``monitoring_lines``: the Dask dashboard's address, and the scheduler's Prometheus
        metrics where ``prometheus-client`` is installed).
    """
    jobs = list(jobs)
    store = store if isinstance(store, JobStore) else JobStore(store)
    seen: set[str] = set()
    for job in jobs:
        if not isinstance(job, Job):
            raise TypeError(f"fan_out: expected Jobs, got {type(job).__name__}")
        if job.name in seen:
            raise ValueError(f"fan_out: two jobs are named {job.name}; names must be unique")
        seen.add(job.name)
    if workers is not None and workers < 1:
        raise ValueError(f"fan_out: workers = {workers}; need at least 1")
    if scheduler not in (None, "inline") and (
        not isinstance(scheduler, str) or ("://" not in scheduler and ":" not in scheduler)
    ):
        raise ValueError(
            f"fan_out: scheduler {scheduler!r} is not an address such as "
            "tcp://127.0.0.1:8786 (or None for a local cluster, 'inline' for none)"
        )
    store.remove_partials()
    found: dict[str, Any] = {}
    for job in jobs:
        if store.done(job.name):
            try:
                found[job.name] = store.read(job.name)
            except DamagedResult:
                store.set_aside(job.name)  # warns, naming the file; the job runs again
    pending = [job for job in jobs if job.name not in found]
    total = len(jobs)
    done = total - len(pending)
    logger.info("fan_out: %d of %d job(s) already in %s", done, total, store.directory)
    if progress is not None:
        progress("", done, total)
    failures: dict[str, BaseException] = {}

    def record(name: str, result: Any) -> None:
        nonlocal done
        try:
            store.write(name, result)
        except (TypeError, RoundTripError) as error:  # a result not stored fails its job only
            failures[name] = error
            return
        done += 1
        if progress is not None:
            progress(name, done, total)

    if pending and (scheduler == "inline" or len(pending) == 1):
        for job in pending:
            try:
                result = job.function(**job.kwargs)
            except Exception as error:  # noqa: BLE001 - reported together below
                failures[job.name] = error
                continue
            record(job.name, result)
    elif pending:
        _run_on_dask(pending, scheduler, workers, record, failures, announce)
    if failures:
        raise JobsFailed(failures, done)
    computed = {job.name: store.read(job.name) for job in pending}
    return FanOutResults(
        {job.name: found[job.name] if job.name in found else computed[job.name] for job in jobs},
        computed=list(computed),
        resumed=list(found),
    )


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def monitoring_lines(client, local: bool) -> list[str]:
    """Where to watch a cluster's jobs: the Dask dashboard's address (a local cluster serves
    it on a free port where bokeh is installed: ``pip install 'pp_aif[monitor]'``), and on it
    the scheduler's Prometheus metrics (``/metrics``, served where ``prometheus-client`` is
    installed)."""
    link = client.dashboard_link if (not local or _installed("bokeh")) else None
    if not link:
        return ["Dask dashboard: off (it needs bokeh: pip install 'pp_aif[monitor]')"]
    lines = [f"Dask dashboard: {link}"]
    if local and _installed("prometheus_client"):
        base = link.rsplit("/", 1)[0] if link.endswith("/status") else link.rstrip("/")
        lines.append(f"Prometheus metrics of the scheduler: {base}/metrics")
    return lines


def _run_on_dask(pending, scheduler, workers, record, failures, announce=None) -> None:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as error:  # pragma: no cover - a dependency of the project
        raise ImportError(
            "fan_out: dask.distributed is needed to run jobs on a cluster "
            "(pip install 'dask[distributed]'), or pass scheduler='inline'"
        ) from error
    cluster = None
    if scheduler is None:
        n = min(workers or os.cpu_count() or 1, len(pending))
        try:
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                # a free port (never a clash with another run's 8787), where bokeh can serve it
                dashboard_address=":0" if _installed("bokeh") else None,
                host="127.0.0.1",
            )
        except RuntimeError as error:
            raise RuntimeError(
                f"fan_out: the local cluster's {n} worker process(es) did not start ({error}). "
                "Workers are spawned: a script must call fan_out under "
                "`if __name__ == \"__main__\":`; or pass scheduler='inline' to run the jobs here"
            ) from error
        client = Client(cluster)
    else:
        client = Client(scheduler, timeout="30s")
    try:
        if announce is not None:
            for line in monitoring_lines(client, local=cluster is not None):
                announce(line)
        futures = {
            client.submit(
                job.function, **job.kwargs, key=f"{job.name}-{uuid.uuid4().hex[:6]}", pure=False
            ): job.name
            for job in pending
        }
        for future in as_completed(futures):
            name = futures[future]
            try:
                # a result held by a worker that died since is computed again, and waited for
                result = future.result()
            except (Exception, asyncio.CancelledError) as error:  # noqa: BLE001
                failures[name] = error  # the job raised, was cancelled, or killed its workers
            else:
                record(name, result)
            future.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def content_digest(*values) -> str:
    """12 hexadecimal digits of SHA-256 over the contents of tensors, arrays, generative models,
    dataclasses, Pyro distributions, mappings, sequences and plain values (what a fit depends
    on), so that a change to any of them changes the job names."""
    import dataclasses  # here: ``pp_aif.jobs`` itself imports neither torch nor numpy

    import numpy as np
    import torch

    from pp_aif.spec import GenerativeModel

    digest = hashlib.sha256()

    def feed(value):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            digest.update(f"array{value.dtype}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, GenerativeModel):
            for name in ("A", "B", "C", "D", "E", "pA", "pB", "pD", "policies"):
                digest.update(name.encode())
                feed(getattr(value, name))
            steps = value.step_policies  # a task's own policy set per step
            if steps is not None:
                digest.update(b"step_policies")
                feed(list(steps))
            if value.H is not None:  # the intended states of inductive planning
                digest.update(b"H")
                feed(list(value.H))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            digest.update(type(value).__name__.encode())
            for f in dataclasses.fields(value):
                digest.update(f.name.encode())
                feed(getattr(value, f.name))
        elif isinstance(value, torch.distributions.Distribution):
            digest.update(type(value).__name__.encode())
            for name in sorted(value.arg_constraints):
                if name in value.__dict__:
                    feed(getattr(value, name))
            feed(getattr(value, "transforms", None) and [repr(t) for t in value.transforms])
            feed(getattr(value, "base_dist", None))
        elif isinstance(value, Mapping):
            for k in sorted(value, key=str):
                digest.update(repr(k).encode())
                feed(value[k])
        elif isinstance(value, list | tuple):
            digest.update(f"seq{len(value)}".encode())
            for v in value:
                feed(v)
        elif value is None or isinstance(value, bool | int | float | str | Path):
            digest.update(repr(value).encode())
        elif (hasattr(value, "__dict__") or hasattr(value, "__slots__")) and (
            " at 0x" not in repr(value)  # a repr with an address differs from run to run
        ):
            digest.update(repr(value).encode())
        else:
            raise TypeError(f"content_digest: cannot digest a {type(value).__name__}")

    for value in values:
        feed(value)
    return digest.hexdigest()[:12]

"""Many jobs on Dask: fits of many subjects, recovery runs and sweeps, resumable.

A ``Job`` is a name, a function and its arguments. ``fan_out`` runs the jobs that have no result
yet on a Dask cluster (a ``LocalCluster`` of worker processes by default, or an existing cluster
given its scheduler's address) and writes each result as it arrives into a ``JobStore``:

- **atomically**: to a temporary file in the store's folder, flushed to disk, then linked to its
  final name; a reader sees a whole result or none, whatever is killed when;
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Job", "JobStore", "JobsFailed", "fan_out", "job_name", "spec_digest"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")
_SUFFIXES = (".nc", ".json")


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
        the name had one (which is kept). Nothing appears under the name until it is whole."""
        import arviz as az

        if not _NAME.match(name):
            raise ValueError(f"JobStore.write: {name!r} is not a safe file name")
        if self.done(name):
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        suffix = ".nc" if isinstance(result, az.InferenceData) else ".json"
        final = self.directory / f"{name}{suffix}"
        partial = self.directory / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
        try:
            if suffix == ".nc":
                result.to_netcdf(str(partial))
            else:
                try:
                    text = json.dumps(result, indent=1, allow_nan=True)
                except TypeError as error:
                    raise TypeError(
                        f"job {name}: its result is neither an InferenceData nor "
                        f"JSON-serialisable ({error})"
                    ) from None
                partial.write_text(text)
            with open(partial, "rb+") as handle:
                os.fsync(handle.fileno())
            try:
                os.link(partial, final)  # fails if the name exists: exactly once
            except FileExistsError:
                return False
            _sync_directory(self.directory)
            return True
        finally:
            partial.unlink(missing_ok=True)

    def read(self, name: str) -> Any:
        import arviz as az

        path = self.path(name)
        if path is None:
            raise FileNotFoundError(f"JobStore: no result for job {name} in {self.directory}")
        if path.suffix == ".nc":
            inference = az.from_netcdf(str(path))
            inference.load()  # into memory, so the file is not held open
            return inference
        return json.loads(path.read_text())

    def remove_partials(self, older_than: float = 3600.0) -> int:
        """Delete temporary files left by a killed client more than ``older_than`` s ago."""
        if not self.directory.is_dir():
            return 0
        now = time.time()
        removed = 0
        for p in self.directory.glob(".*.partial"):
            if now - p.stat().st_mtime > older_than:
                p.unlink(missing_ok=True)
                removed += 1
        return removed


def _sync_directory(directory: Path) -> None:
    """Make the new name durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fan_out(
    jobs: Iterable[Job],
    store: JobStore | str | Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the jobs without a result in ``store`` and return every job's result by name.

    scheduler : None (default) starts a ``LocalCluster`` of ``workers`` processes (default: the
        CPU count, at most the number of jobs to run), one thread each; an address such as
        ``"tcp://10.0.0.5:8786"`` uses that cluster; ``"inline"`` runs the jobs one after
        another in this process (no Dask). A single job to run always runs inline.
    progress : callable(name, done, total), called after each result is written (and once,
        with done = the results already there, before any job runs).
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
    pending = [job for job in jobs if not store.done(job.name)]
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
        except TypeError as error:  # a result that cannot be stored fails its job only
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
        _run_on_dask(pending, scheduler, workers, record, failures)
    if failures:
        raise JobsFailed(failures, done)
    return {job.name: store.read(job.name) for job in jobs}


def _run_on_dask(pending, scheduler, workers, record, failures) -> None:
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
                dashboard_address=None,
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

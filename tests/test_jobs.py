"""Jobs on Dask: atomic, exactly-once results under deterministic names; reruns resume; a real
scheduler and two workers on 127.0.0.1, one of them killed mid-run."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import arviz as az
import numpy as np
import pytest

from pp_aif.jobs import Job, JobsFailed, JobStore, fan_out, job_name, spec_digest

ROOT = Path(__file__).resolve().parents[1]


def slow_square(x: int, seconds: float = 0.0) -> dict:
    """A job: x squared, and which worker computed it."""
    time.sleep(seconds)
    try:
        from distributed import get_worker

        worker = str(get_worker().name)
    except (ImportError, ValueError):
        worker = "inline"
    return {"x": x, "square": x * x, "worker": worker}


def failing_job(x: int) -> dict:
    if x == 2:
        raise ArithmeticError("job 2 always fails")
    return {"x": x}


def test_names_are_deterministic_and_follow_the_spec():
    spec = {"subjects": (0, 10), "seed": 3, "method": "grid"}
    assert job_name("fit", spec) == job_name(
        "fit", {"seed": 3, "method": "grid", "subjects": [0, 10]}
    )
    assert job_name("fit", spec) != job_name("fit", {**spec, "seed": 4})
    assert len(spec_digest(spec)) == 12
    with pytest.raises(TypeError, match="ndarray is not a plain value"):
        spec_digest({"data": np.zeros(3)})
    with pytest.raises(ValueError, match="not a safe file name"):
        job_name("../escape", spec)
    with pytest.raises(ValueError, match="not a safe file name"):
        Job("a/b", slow_square)


def test_store_writes_once_and_atomically(tmp_path):
    store = JobStore(tmp_path)
    assert store.write("a", {"value": 1})
    assert not store.write("a", {"value": 2})  # the first result stands
    assert store.read("a") == {"value": 1}

    class Unserialisable:
        pass

    with pytest.raises(TypeError, match="job b: its result is neither"):
        store.write("b", {"value": Unserialisable()})
    assert not store.done("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no partial left
    inference = az.from_dict(posterior={"theta": np.arange(6.0).reshape(1, 6)})
    assert store.write("c", inference)
    np.testing.assert_array_equal(
        store.read("c").posterior["theta"].values, inference.posterior["theta"].values
    )
    with pytest.raises(FileNotFoundError, match="no result for job d"):
        store.read("d")


def test_inline_runs_resume_and_report_failures(tmp_path):
    jobs = [Job(f"j{x}", failing_job, {"x": x}) for x in range(4)]
    with pytest.raises(JobsFailed, match=r"1 job\(s\) failed \(j2\).*ArithmeticError.*3 finished"):
        fan_out(jobs, tmp_path, scheduler="inline")
    assert JobStore(tmp_path).names() == ["j0", "j1", "j3"]
    calls = []
    jobs = [Job(f"j{x}", slow_square, {"x": x}) for x in range(4)]
    results = fan_out(jobs, tmp_path, scheduler="inline", progress=lambda *a: calls.append(a))
    assert calls == [("", 3, 4), ("j2", 4, 4)]  # only the failed job was run again
    assert results["j2"]["square"] == 4 and results["j0"] == {"x": 0}  # j0 kept from the first run
    with pytest.raises(ValueError, match="two jobs are named j0"):
        fan_out([jobs[0], jobs[0]], tmp_path, scheduler="inline")
    unstorable = [Job("bad", set, {}), Job("good", slow_square, {"x": 3})]  # a set: not JSON
    with pytest.raises(JobsFailed, match=r"\(bad\).*TypeError: job bad: its result is neither"):
        fan_out(unstorable, tmp_path, scheduler="inline")
    assert JobStore(tmp_path).done("good") and not JobStore(tmp_path).done("bad")
    with pytest.raises(ValueError, match="not an address"):
        fan_out([Job("new", slow_square, {"x": 1})], tmp_path, scheduler="nowhere")
    with pytest.raises(ValueError, match="not an address"):
        fan_out(
            [Job("new", slow_square, {"x": 1}), Job("new2", slow_square, {"x": 2})],
            tmp_path,
            scheduler="nowhere",
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(arguments: list[str]) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", *arguments],
        env=environment,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_for_workers(address: str, n: int, timeout: float = 60.0) -> None:
    """Until ``n`` workers are up, each with this module imported (so that neither pays for
    the import in its first job, and both start working at once)."""
    import importlib

    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(n, timeout=timeout)
        client.run(importlib.import_module, __name__)


@pytest.mark.slow
@pytest.mark.integration
def test_a_killed_worker_loses_nothing_and_reruns_resume(tmp_path):
    pytest.importorskip("distributed")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = _start(
        [
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-address",
            ":0",
            "--no-show",
        ]
    )
    workers = {
        name: _start(
            [
                "distributed.cli.dask_worker",
                address,
                "--nthreads",
                "1",
                "--no-nanny",
                "--name",
                name,
                "--no-dashboard",
            ]
        )
        for name in ("first", "second")
    }
    try:
        _wait_for_workers(address, 2)
        jobs = [
            Job(job_name("square", {"x": x}), slow_square, {"x": x, "seconds": 0.4})
            for x in range(16)
        ]
        killed_after = []

        def progress(name, done, total):
            if done == 3 and not killed_after:
                workers["first"].send_signal(signal.SIGKILL)
                workers["first"].wait(10)
                killed_after.append(done)

        results = fan_out(jobs, tmp_path, scheduler=address, progress=progress)
        assert killed_after == [3]
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == sorted(f"{job.name}.json" for job in jobs)  # each once, no partials
        for x, job in enumerate(jobs):
            on_disk = json.loads((tmp_path / f"{job.name}.json").read_text())
            assert on_disk["square"] == x * x and results[job.name] == on_disk
        ran_on = [results[job.name]["worker"] for job in jobs]
        # the first worker's results gathered before it was killed, and the rest (its lost job
        # among them) from the second
        assert 1 <= ran_on.count("first") <= 3
        assert ran_on.count("second") == 16 - ran_on.count("first")

        # a rerun computes nothing; with one result removed, only that job
        calls = []
        fan_out(jobs, tmp_path, scheduler=address, progress=lambda *a: calls.append(a))
        assert calls == [("", 16, 16)]
        (tmp_path / f"{jobs[5].name}.json").unlink()
        calls.clear()
        again = fan_out(jobs, tmp_path, scheduler=address, progress=lambda *a: calls.append(a))
        assert calls == [("", 15, 16), (jobs[5].name, 16, 16)]
        assert again[jobs[5].name]["square"] == 25
    finally:
        for process in (*workers.values(), scheduler):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


@pytest.mark.integration
def test_a_local_cluster_that_cannot_start_says_why(tmp_path):
    """A script piped to Python has no file for spawned workers to import: the error says what
    to do instead of Dask's "Nanny failed to start"."""
    script = (
        "from pp_aif.jobs import Job, fan_out\n"
        f"fan_out([Job('a', print, {{}}), Job('b', print, {{}})], {str(tmp_path)!r})\n"
    )
    run = subprocess.run(
        [sys.executable, "-"], input=script, capture_output=True, text=True, cwd=tmp_path,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: fan_out: the local cluster's 2 worker process(es)")
    assert 'if __name__ == "__main__":' in last and "scheduler='inline'" in last
    assert list(tmp_path.iterdir()) == []


def _tiny_inference(x: int = 0):
    """A job: a small InferenceData with a subject coordinate."""
    return az.from_dict(
        posterior={"theta": np.full((1, 3, 2), float(x))},
        coords={"subject": [f"s-{x}", f"s-{x}0"]},
        dims={"theta": ["subject"]},
    )


def test_a_damaged_result_is_named_set_aside_and_computed_again(tmp_path):
    from pp_aif.jobs import DamagedResultWarning

    store = JobStore(tmp_path)
    jobs = [Job("j0", slow_square, {"x": 3}), Job("j1", _tiny_inference, {"x": 4})]
    first = fan_out(jobs, store, scheduler="inline")
    assert first.computed == ["j0", "j1"] and first.resumed == []
    # a rerun says it computed nothing: its timing is not a computation's
    again = fan_out(jobs, store, scheduler="inline")
    assert again.computed == [] and again.resumed == ["j0", "j1"]
    assert again.summary() == {"computed": 0, "resumed": 2}
    for name in ("j0.json", "j1.nc"):
        path = tmp_path / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut short
    with pytest.raises(OSError, match=r"the result file .*j1\.nc cannot be read .*truncated"):
        store.read("j1")
    with pytest.raises(OSError, match=r"the result file .*j0\.json cannot be read"):
        store.read("j0")
    with pytest.warns(DamagedResultWarning) as caught:
        results = fan_out(jobs, store, scheduler="inline")
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert f"{tmp_path / 'j0.json'} could not be read" in messages[0]
    assert f"{tmp_path / 'j1.nc'} could not be read" in messages[1]
    assert results.computed == ["j0", "j1"]  # both computed again
    assert results["j0"]["square"] == 9
    assert results["j1"].posterior["theta"].values.tolist() == [[[4.0, 4.0]] * 3]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[:2] == ["j0.json", "j0.json.damaged-" + names[1].split("damaged-")[1]]
    assert names[2] == "j1.nc" and names[3].startswith("j1.nc.damaged-") and len(names) == 4
    assert store.names() == ["j0", "j1"]  # the set-aside files are not results


def test_partials_of_dead_processes_are_removed(tmp_path):
    """The temporary files of killed writes (this module's names, and the older ones) go; a
    live process's stay."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = os.getppid()
    left = [
        f".a.json.{dead.pid}@elsewhere.0123abcd.partial",  # another host's: kept
        f".a.nc.{dead.pid}.0123abcd.partial",  # the store's older name
        f".fit.nc.{dead.pid}.partial",  # pp-aif fit's older name
        f".a.json.{live}.0123abcd.partial",
    ]
    for name in left:
        (tmp_path / name).write_text("half")
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])  # this host's
    (tmp_path / f".a.json.{dead.pid}@{host}.0123abcd.partial").write_text("half")
    assert JobStore(tmp_path).remove_partials() == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([left[0], left[3]])
    # this process's own, from before the current write of the same target: gone with it
    own = tmp_path / f".b.json.{os.getpid()}@{host}.0123abcd.partial"
    own.write_text("half")
    os.utime(own, (time.time() - 10, time.time() - 10))
    assert JobStore(tmp_path).write("b", {"value": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([left[0], left[3], "b.json"])


def test_a_result_that_does_not_read_back_fails_its_job(tmp_path):
    """A result whose netCDF encoding would cut its subject ids short is not stored."""
    stale = _tiny_inference(10)
    stale.posterior["subject"].encoding["dtype"] = np.dtype("<U4")  # as read from 's-10'
    jobs = [Job("stale", lambda: stale), Job("fine", _tiny_inference, {"x": 1})]
    with pytest.raises(JobsFailed, match=r"\(stale\).*RoundTripError: .*stale\.nc: "
                       r"posterior/subject\[\(1,\)\] was written as 's-100' and reads back as "
                       r"'s-10'"):  # fmt: skip
        fan_out(jobs, tmp_path, scheduler="inline")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fine.nc"]


@pytest.mark.integration
def test_a_local_cluster_announces_its_dashboard_and_metrics(tmp_path):
    """Both addresses are announced before the jobs run, and answer while they do."""
    import urllib.request

    answers = []

    def fetch(line: str) -> None:
        url = line.split(": ", 1)[1]
        with urllib.request.urlopen(url, timeout=30) as response:
            answers.append((line, response.status, response.read(200)))

    jobs = [Job(f"j{x}", slow_square, {"x": x}) for x in range(2)]
    results = fan_out(jobs, tmp_path, workers=1, announce=fetch)
    assert results["j1"]["square"] == 1
    (dashboard, status, _), (metrics, metrics_status, body) = answers
    assert re.fullmatch(r"Dask dashboard: http://127\.0\.0\.1:\d+/status", dashboard)
    assert metrics.startswith("Prometheus metrics of the scheduler: http://127.0.0.1:")
    assert status == metrics_status == 200 and body.startswith(b"# HELP")


def test_without_bokeh_the_dashboard_is_off_and_says_what_to_install(monkeypatch):
    import pp_aif.jobs as jobs

    class Client:
        dashboard_link = "http://127.0.0.1:8787/status"

    monkeypatch.setattr(jobs, "_installed", lambda module: False)
    assert jobs.monitoring_lines(Client(), local=True) == [
        "Dask dashboard: off (it needs bokeh: pip install 'pp_aif[monitor]')"
    ]
    # a remote scheduler's own dashboard is announced whatever is installed here
    assert jobs.monitoring_lines(Client(), local=False) == [
        "Dask dashboard: http://127.0.0.1:8787/status"
    ]

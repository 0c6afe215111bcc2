"""Fault injection: a command killed (SIGKILL) or interrupted (SIGINT) in the middle of each
write the project makes leaves the earlier file whole and readable, says so and exits non-zero
(130 for SIGINT), and a rerun leaves no temporary file behind; a truncated job result is set
aside and computed again; two runs into one job store keep every result once, whole.

How a write is cut: the command runs in a child process (forked from a server that has pp_aif
imported already, so that a child starts in milliseconds) in which the writer (xarray's or
arviz's ``to_netcdf``, matplotlib's ``savefig``) is wrapped: it writes, cuts its file to half
(as a kill in the middle of a write leaves it), tells the parent and sleeps, and the parent
sends the signal. The "swallowed" variant catches the KeyboardInterrupt inside the writer and
carries on, as the netCDF library's callbacks do ("Exception ignored in ..."). Nothing in
pp_aif knows of any of this.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="signals to a forked child: Linux"
)

PRELOAD = [
    "pp_aif.cli",
    "pp_aif.simulation",
    "pp_aif.plots",
    "pp_aif.fitting.fanout",
    "pp_aif.comparison",
    "arviz",
    "h5netcdf",
    "tqdm",
    "tests.test_fault_injection",
]


def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


# ---------------------------------------------------------------------------------------------
# in the child


def _redirect(log: Path) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def _cut_and_wait(writer: str, nth: int, folder: Path, mode: str) -> None:
    """Wrap ``writer`` ("module.Class.method", whose first argument is the path written) so
    that its ``nth`` call writes, cuts the file to half, tells the parent (``blocked``) and
    sleeps until a signal comes."""
    module, owner_name, method = writer.rsplit(".", 2)
    owner = getattr(importlib.import_module(module), owner_name)
    real = getattr(owner, method)
    calls = []

    def cut(self, path, *args, **kwargs):
        result = real(self, path, *args, **kwargs)
        calls.append(path)
        if len(calls) == nth:
            os.truncate(path, os.path.getsize(path) // 2)
            (folder / "blocked").write_text(str(path))
            if mode == "swallowed":
                try:
                    time.sleep(60)
                except KeyboardInterrupt:
                    pass  # as the netCDF library's callbacks do: "Exception ignored in ..."
            else:
                time.sleep(60)
        return result

    setattr(owner, method, cut)


def _child(case: str, folder: str, mode: str, paths: dict) -> None:
    import signal

    from pp_aif.cli import main

    # Ctrl-C as it reaches a command run from a terminal: the suite itself may run where SIGINT
    # is ignored (a background job of a shell), and a child inherits that
    signal.signal(signal.SIGINT, signal.default_int_handler)

    folder = Path(folder)
    _redirect(folder / "child.log")
    first, second, writer, nth, _ = CASES[case]
    if first is not None:
        if main(_arguments(first, folder, paths)) != 0:
            sys.exit(99)
        hashes = {p.name: _digest(p) for p in folder.iterdir() if p.is_file()}
        (folder / "before.json").write_text(json.dumps(hashes))
    _cut_and_wait(writer, nth, folder, mode)
    sys.exit(main(_arguments(second, folder, paths)))


# ---------------------------------------------------------------------------------------------
# the cases: (first command or None, the command cut, the writer, its call to cut, target)

_SIMULATE = ["simulate", "tmaze", "--out", "{out}"]
_FIT = ["fit", "tmaze", "{data}", "--params", "alpha", "--method", "map", "--out", "{out}/fit.nc"]
_JOBS = ["fit", "tmaze", "{data}", "--params", "alpha", "--method", "grid", "--draws", "10"]
_JOBS += ["--subjects-per-job", "1", "--scheduler", "inline", "--out", "{out}/fit.nc"]
_COMPARE = ["compare", "{fit_a}", "{fit_b}", "--bms", "--out", "{out}"]

CASES = {
    "simulate record": (
        [*_SIMULATE, "--seed", "0"],
        [*_SIMULATE, "--seed", "1"],
        "xarray.Dataset.to_netcdf",
        1,
        "tmaze_simulation.nc",
    ),
    "simulate figure": (
        [*_SIMULATE, "--seed", "0"],
        [*_SIMULATE, "--seed", "1"],
        "matplotlib.figure.Figure.savefig",
        1,
        "tmaze_trial.png",
    ),
    "fit": (
        [*_FIT, "--steps", "5"],
        [*_FIT, "--steps", "6"],
        "arviz.InferenceData.to_netcdf",
        1,
        "fit.nc",
    ),
    "job store": (None, _JOBS, "arviz.InferenceData.to_netcdf", 2, "fit.jobs"),
    "compare figure": (
        _COMPARE,
        _COMPARE,
        "matplotlib.figure.Figure.savefig",
        1,
        "model_selection.png",
    ),
}


def _arguments(template, folder: Path, paths: dict) -> list[str]:
    return [a.format(out=folder, **paths) for a in template]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _readable(path: Path) -> None:
    """Read the whole file as what it claims to be."""
    if path.suffix == ".png":
        import matplotlib.image

        assert matplotlib.image.imread(path).size > 0
    else:
        import arviz as az
        import xarray as xr

        if path.name.endswith("simulation.nc"):
            with xr.open_dataset(path, engine="h5netcdf") as record:
                record.load()
        else:
            az.from_netcdf(path).load()


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.partial"))


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Three subjects' choices (CSV) and two fits of them (for compare)."""
    import pp_aif
    from pp_aif.data import BehaviourData, long_format

    folder = tmp_path_factory.mktemp("inputs")
    task = pp_aif.load_task("tmaze")
    table = long_format(pp_aif.simulate(task, 3, 2, seed=3), task)
    table.to_csv(folder / "choices.csv", index=False)
    data = BehaviourData.read(table, task)
    fits = {}
    for name in ("alpha", "gamma"):
        inference = pp_aif.fit(task, data, (name,), method="grid", grid_points=9, draws=100)
        fits[f"fit_{'a' if name == 'alpha' else 'b'}"] = str(folder / f"{name}.nc")
        inference.to_netcdf(fits[f"fit_{'a' if name == 'alpha' else 'b'}"])
    return {"data": str(folder / "choices.csv"), **fits}


def _cut(case: str, sig: int, mode: str, folder: Path, paths: dict):
    """Run ``case`` in a child, cut its write, send ``sig``; the child's exit code and log."""
    process = _context().Process(target=_child, args=(case, str(folder), mode, paths))
    process.start()
    blocked = folder / "blocked"
    deadline = time.monotonic() + 120
    while not blocked.exists():
        log = folder / "child.log"
        if not process.is_alive() or time.monotonic() > deadline:
            process.kill()
            process.join(10)
            output = log.read_text() if log.exists() else ""
            pytest.fail(f"{case}: the write was not reached (exit {process.exitcode}):\n{output}")
        time.sleep(0.02)
    os.kill(process.pid, sig)
    process.join(60)
    assert process.exitcode is not None, f"{case}: the child did not end after {sig}"
    return process.exitcode, (folder / "child.log").read_text()


SIGNALS = [
    ("simulate record", signal.SIGKILL, "sleeping"),
    ("simulate record", signal.SIGINT, "sleeping"),
    ("simulate record", signal.SIGINT, "swallowed"),
    ("simulate figure", signal.SIGKILL, "sleeping"),
    ("simulate figure", signal.SIGINT, "swallowed"),
    ("fit", signal.SIGKILL, "sleeping"),
    ("fit", signal.SIGINT, "sleeping"),
    ("fit", signal.SIGINT, "swallowed"),
    ("compare figure", signal.SIGKILL, "sleeping"),
    ("compare figure", signal.SIGINT, "sleeping"),
]


@pytest.mark.integration
@pytest.mark.parametrize(
    "case, sig, mode", SIGNALS, ids=[f"{c}-{s.name}-{m}" for c, s, m in SIGNALS]
)
def test_a_cut_write_keeps_the_earlier_file(tmp_path, capsys, paths, case, sig, mode):
    from pp_aif.cli import main

    exit_code, log = _cut(case, sig, mode, tmp_path, paths)
    target = tmp_path / CASES[case][4]
    before = json.loads((tmp_path / "before.json").read_text())
    assert _digest(target) == before[target.name], f"{target.name} changed:\n{log}"
    _readable(target)
    if sig == signal.SIGINT:
        assert exit_code == 130, log
        message = (
            f"pp-aif: interrupted while writing {target}: nothing was written (the earlier "
            f"{target.name} is kept unchanged)"
        )
        assert log.strip().splitlines()[-1].startswith(message), log
        assert _partials(tmp_path) == []  # removed by the interrupted command itself
        return
    assert exit_code == -signal.SIGKILL
    assert len(_partials(tmp_path)) == 1  # the killed write's temporary file, cut short
    # a rerun writes the file and removes the killed command's temporary file
    assert main(_arguments(CASES[case][1], tmp_path, paths)) == 0
    capsys.readouterr()
    _readable(target)
    assert _digest(target) != before[target.name] or case == "compare figure"
    assert _partials(tmp_path) == []


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_cut_job_store_write_loses_only_that_job(tmp_path, capsys, paths, sig):
    """pp-aif fit of three subjects as jobs, cut while the second job's result is written: the
    first result is kept, whole; a rerun computes the other two and leaves no temporary file."""
    from pp_aif.cli import main
    from pp_aif.jobs import JobStore

    exit_code, log = _cut("job store", sig, "sleeping", tmp_path, paths)
    store = JobStore(tmp_path / "fit.jobs")
    assert len(store.names()) == 1, log
    store.read(store.names()[0])
    assert not (tmp_path / "fit.nc").exists()
    if sig == signal.SIGKILL:
        assert exit_code == -signal.SIGKILL
        assert len(_partials(tmp_path)) == 1  # the killed write's, cleaned by the rerun
    else:
        assert exit_code == 130, log
        last = log.strip().splitlines()[-1]  # one line says what was kept and what was not
        assert last == (
            f"pp-aif: interrupted; the 1 finished job(s) are kept in {store.directory}/, and "
            f"the same command resumes from them; {tmp_path / 'fit.nc'} was not written"
        ), log
        assert _partials(tmp_path) == []
    assert main(_arguments(_JOBS, tmp_path, paths)) == 0
    assert f"resuming: 1 of 3 jobs already in {store.directory}/" in capsys.readouterr().out
    assert len(store.names()) == 3 and _partials(tmp_path) == []
    _readable(tmp_path / "fit.nc")


@pytest.mark.integration
def test_a_truncated_job_result_is_set_aside_and_fitted_again(tmp_path, capsys, paths):
    import arviz as az

    from pp_aif.cli import main

    arguments = _arguments(_JOBS, tmp_path, paths)
    assert main(arguments) == 0
    first = az.from_netcdf(tmp_path / "fit.nc").posterior["alpha"].values
    damaged = sorted((tmp_path / "fit.jobs").iterdir())[1]
    os.truncate(damaged, damaged.stat().st_size // 2)
    capsys.readouterr()
    assert main(arguments) == 0
    output = capsys.readouterr()
    assert f"{damaged} could not be read (truncated or damaged); set aside as " in output.out
    aside = [p.name for p in damaged.parent.iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1 and aside[0].startswith(damaged.name)
    assert "resuming: 2 of 3 jobs" in output.out
    np.testing.assert_array_equal(az.from_netcdf(tmp_path / "fit.nc").posterior["alpha"], first)


def _tagged(x: int):
    """A job: its number and the process that computed it, as JSON (even x) or netCDF."""
    time.sleep(0.01)
    if x % 2 == 0:
        return {"x": x, "pid": os.getpid()}
    import arviz as az

    inference = az.from_dict(posterior={"x": np.full((1, 2), float(x))})
    inference.attrs["pid"] = os.getpid()
    return inference


def _concurrent_child(folder: str, name: str) -> None:
    from pp_aif.jobs import Job, fan_out

    folder = Path(folder)
    _redirect(folder / f"{name}.log")
    while not (folder / "go").exists():
        time.sleep(0.005)
    jobs = [Job(f"c{x:02d}", _tagged, {"x": x}) for x in range(12)]
    results = fan_out(jobs, folder / "store", scheduler="inline")
    pids = {
        key: int(value["pid"] if isinstance(value, dict) else value.attrs["pid"])
        for key, value in results.items()
    }
    (folder / f"{name}.json").write_text(json.dumps({"pids": pids, "computed": results.computed}))


@pytest.mark.integration
def test_two_runs_into_one_store_keep_every_result_once(tmp_path):
    from pp_aif.jobs import JobStore

    context = _context()
    processes = [
        context.Process(target=_concurrent_child, args=(str(tmp_path), name)) for name in ("a", "b")
    ]
    for process in processes:
        process.start()
    time.sleep(0.3)
    (tmp_path / "go").touch()
    for process in processes:
        process.join(120)
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("a", "b")}
    assert [p.exitcode for p in processes] == [0, 0], logs
    reports = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("a", "b")}
    store = JobStore(tmp_path / "store")
    names = [f"c{x:02d}" for x in range(12)]
    files = sorted(p.name for p in store.directory.iterdir())
    assert files == sorted(f"{n}.json" if int(n[1:]) % 2 == 0 else f"{n}.nc" for n in names)
    for name in names:  # one result each, whole, and both runs returned that one
        result = store.read(name)
        pid = result["pid"] if isinstance(result, dict) else int(result.attrs["pid"])
        assert reports["a"]["pids"][name] == reports["b"]["pids"][name] == pid
        assert pid in (processes[0].pid, processes[1].pid)
    assert len(reports["a"]["computed"]) + len(reports["b"]["computed"]) >= 12


def test_json_records_take_paths_and_refuse_the_unwritable_before_writing(tmp_path):
    """``write_json`` writes a path as its string (an experiment's ``asdict(config)`` as it
    is); a value it cannot write raises TypeError and leaves the earlier file whole."""
    from pp_aif.atomic import write_json

    target = tmp_path / "record.json"
    write_json(target, {"config": {"out": tmp_path / "results", "sizes": (1, 2)}})
    assert json.loads(target.read_text()) == {
        "config": {"out": str(tmp_path / "results"), "sizes": [1, 2]}
    }
    with pytest.raises(TypeError, match="object is not JSON serializable|not JSON serializable"):
        write_json(target, {"config": object()})
    assert json.loads(target.read_text())["config"]["sizes"] == [1, 2]

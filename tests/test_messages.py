"""Messages that point at the line (issue 17, items 3 and 4): argument errors before any
header, "did you mean", files named with what they should be, an interrupted fan-out in one
line, help without torch, simulate's own folder per run, and summaries of what can vary."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys

import pytest

import pp_aif
from pp_aif import cli
from pp_aif.cli import main
from tests.conftest import REPOSITORY


@pytest.fixture(scope="module")
def choices_csv(tmp_path_factory):
    """Three T-maze subjects' choices, 2 trials each."""
    from pp_aif.data import long_format

    task = pp_aif.load_task("tmaze")
    path = tmp_path_factory.mktemp("data") / "choices.csv"
    long_format(pp_aif.simulate(task, 3, 2, seed=3), task).to_csv(path, index=False)
    return path


def _error(capsys, arguments) -> str:
    """The one line on stderr of a command refused with status 2; nothing on stdout."""
    assert main(arguments) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no header before the error
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--params", ""],
            "pp-aif: error: --params: '' names no parameter; give one or more of gamma, alpha, "
            "preference, learning_rate, forgetting, concentration, likelihood_precision, "
            "separated by commas (e.g. --params gamma,alpha)",
        ),
        (
            ["--params", "alpha,learnrate"],
            "pp-aif: error: --params: unknown parameter 'learnrate' (did you mean "
            "'learning_rate'?); known: gamma, alpha, preference, learning_rate, forgetting, "
            "concentration, likelihood_precision (pp-aif fit --help says what each means)",
        ),
        (
            ["--params", "alpha,alpha"],
            "pp-aif: error: --params: alpha named more than once in 'alpha,alpha'",
        ),
        (
            ["--subjects-per-job", "0"],
            "pp-aif: error: --subjects-per-job: 0; need at least 1",
        ),
        (["--chains", "0"], "pp-aif: error: --chains: 0; need at least 1"),
        (
            ["--method", "grid", "--params", "alpha,gamma,preference"],
            "pp-aif: error: --method grid (the exact posterior by quadrature) is for 1 or 2 "
            "parameters per subject without --hierarchical; got 3 parameter(s)",
        ),
        (["--out", "fit.json"], "pp-aif: error: --out: fit.json should end in .nc (the "
         "InferenceData is netCDF)"),
    ],
    ids=["empty", "near miss", "twice", "subjects per job", "chains", "grid", "out"],
)  # fmt: skip
def test_fit_argument_errors_come_before_any_header(tmp_path, capsys, choices_csv, extra, message):
    arguments = ["fit", "tmaze", str(choices_csv), "--out", str(tmp_path / "fit.nc"), *extra]
    assert _error(capsys, arguments) == message
    assert list(tmp_path.iterdir()) == []


def test_near_miss_names_get_did_you_mean(tmp_path, capsys, choices_csv):
    assert _error(capsys, ["fit", "tmze", str(choices_csv)]) == (
        "pp-aif: error: unknown task 'tmze' (did you mean 'tmaze'?); known tasks: bandit, "
        "cue_chain, foraging, maze, reversal, tmaze, two_factor"
    )
    for arguments, usage, message in (
        (
            ["fit", "tmaze", str(choices_csv), "--method", "nut"],
            "pp-aif fit",
            "argument --method: invalid choice: 'nut' (did you mean 'nuts'?); choose from "
            "'nuts', 'svi', 'map', 'grid', 'amortised'",
        ),
        (
            ["simulate", "tmaze", "--inference", "mmmp"],
            "pp-aif simulate",
            "argument --inference: invalid choice: 'mmmp' (did you mean 'mmp'?); choose from "
            "'exact', 'fpi', 'vmp', 'mmp', 'mean_field', 'structured'",
        ),
        (
            ["simulat", "tmaze"],
            "pp-aif",
            "argument command: invalid choice: 'simulat' (did you mean 'simulate'?); choose "
            "from 'simulate', 'demo', 'fit', 'train', 'infer', 'train-guide', 'compare'",
        ),
    ):
        with pytest.raises(SystemExit) as exit_status:
            main(arguments)
        assert exit_status.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"{usage}: error: {message}"


def test_the_cli_lists_the_packages_names(capsys):
    from pp_aif.agent import INFERENCE_SCHEMES
    from pp_aif.fitting.fit import METHODS

    assert cli.INFERENCE_SCHEMES == INFERENCE_SCHEMES and cli.FIT_METHODS == METHODS
    from pp_aif.agent import PLANNERS

    assert cli.PLANNERS == PLANNERS
    from pp_aif.inference.states import METHODS as STATE_METHODS

    # infer's methods: infer_states's, but the Pyro program's enumeration (an oracle)
    assert cli.INFER_METHODS == tuple(m for m in STATE_METHODS if m != "enumerate")


def test_a_file_of_another_kind_is_named_with_what_it_should_be(tmp_path, capsys, choices_csv):
    record = tmp_path / "tmaze_simulation.nc"
    pp_aif.simulation.save(pp_aif.simulate(pp_aif.load_task("tmaze"), 1, 1), record)
    assert _error(capsys, ["compare", str(record), str(choices_csv)]) == (
        f"pp-aif: error: {record} is not a fit file (the netCDF InferenceData written by pp-aif "
        "fit): it is a simulation record (pp-aif simulate) without the posterior and "
        "log_likelihood groups"
    )
    assert _error(capsys, ["compare", str(choices_csv), str(record)]) == (
        f"pp-aif: error: {choices_csv} is not a fit file (the netCDF InferenceData written by "
        "pp-aif fit): it is not netCDF but text (a table of choices? fit it first: pp-aif fit "
        "TASK DATA)"
    )
    assert _error(capsys, ["fit", "tmaze", str(record)]) == (
        f"pp-aif: error: {record}: unknown format '.nc' for behavioural data; give a .csv or "
        ".parquet file (a table: one row per subject, trial and time step; pp-aif fit --help)"
    )
    assert _error(capsys, ["simulate", str(choices_csv)]) == (
        f"pp-aif: error: {choices_csv} is not a task: give a task's name (bandit, cue_chain, "
        "foraging, maze, reversal, tmaze, two_factor) or a task file (a .py file with a build() "
        "function; docs/tasks.md)"
    )


def test_a_csv_error_names_the_files_line(tmp_path, capsys, choices_csv):
    lines = choices_csv.read_text().splitlines()
    fields = lines[5].split(",")
    fields[3] = "9"  # where, line 6 of the file
    lines[5] = ",".join(fields)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    assert _error(capsys, ["fit", "tmaze", str(bad), "--out", str(tmp_path / "x.nc")]) == (
        f"pp-aif: error: {bad}: column 'where': line 6 holds [9], out of range; outcomes of "
        "modality 'where' take values 0..4"
    )


@pytest.mark.parametrize("finished", [0, 2])
def test_an_interrupted_fan_out_says_one_line(tmp_path, capsys, choices_csv, monkeypatch, finished):
    """Ctrl-C while the jobs run: one line, naming the jobs' folder only where it holds
    results; distributed's log lines held back while the jobs ran, and restored after."""
    import pp_aif.fitting.fanout

    seen = {}

    def interrupted(task, data, names, *, store, **kwargs):
        seen["level"] = logging.getLogger("distributed").getEffectiveLevel()
        seen["variable"] = os.environ.get("DASK_LOGGING__DISTRIBUTED")
        if finished:
            store.mkdir()
            for j in range(finished):
                (store / f"fit-0000{j}-0000{j}-0123456789ab.nc").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(pp_aif.fitting.fanout, "fit_subjects", interrupted)
    monkeypatch.delenv("DASK_LOGGING__DISTRIBUTED", raising=False)
    level = logging.getLogger("distributed").level
    out = tmp_path / "fit.nc"
    arguments = ["fit", "tmaze", str(choices_csv), "--subjects-per-job", "1", "--out", str(out)]
    assert main(arguments) == 130
    error = capsys.readouterr().err.strip().splitlines()
    kept = (
        f"the 2 finished job(s) are kept in {tmp_path / 'fit.jobs'}/, and the same command "
        "resumes from them"
        if finished
        else "no job had finished, so none is kept"
    )
    assert error[-1] == f"pp-aif: interrupted; {kept}; {out} was not written"
    assert [line for line in error if line.startswith("pp-aif")] == [error[-1]]
    assert seen == {"level": logging.ERROR, "variable": "error"}
    assert logging.getLogger("distributed").level == level
    assert "DASK_LOGGING__DISTRIBUTED" not in os.environ
    assert (tmp_path / "fit.jobs").exists() == bool(finished)


def test_help_is_parsed_before_anything_heavy_is_imported():
    """cli.py imports only the standard library and pp_aif's light modules (atomic, jobs) at
    its top, and neither of those imports torch; the fit command's epilog (which loads every
    task) is built only when its help is shown."""
    for name in ("cli", "atomic", "jobs"):
        tree = ast.parse((REPOSITORY / "pp_aif" / f"{name}.py").read_text())
        top = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
        modules = {
            alias.name if isinstance(node, ast.Import) else node.module
            for node in top
            for alias in node.names
        }
        heavy = {m for m in modules if m.split(".")[0] in ("torch", "numpy", "pyro", "xarray")}
        assert not heavy, (name, heavy)
        assert {m for m in modules if m.startswith("pp_aif")} <= {"pp_aif.atomic", "pp_aif.jobs"}
    script = (
        "import sys\n"
        "from pp_aif.cli import main\n"
        "before = set(sys.modules)\n"
        "for arguments in (['--help'], ['simulate', '--help']):\n"
        "    try:\n"
        "        main(arguments)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in set(sys.modules) - before if m.startswith('pp_aif.tasks')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPOSITORY
    )
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr


def test_simulate_writes_a_new_folder_per_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "RUNS_FOLDER", tmp_path / "out")
    for run in ("001", "002"):
        assert main(["simulate", "tmaze"]) == 0
        folder = tmp_path / "out" / f"tmaze-{run}"
        output = capsys.readouterr().out
        assert f"record: {folder / 'tmaze_simulation.nc'}\n" in output
        assert f"figure: {folder / 'tmaze_trial.png'} (agent 0, trial 0)\n" in output
        assert sorted(p.name for p in folder.iterdir()) == [
            "tmaze_simulation.nc",
            "tmaze_trial.png",
        ]
    # a folder given is the user's: an earlier run's files there are replaced, and it says so
    given = tmp_path / "given"
    assert main(["simulate", "tmaze", "--out", str(given)]) == 0
    capsys.readouterr()
    assert main(["simulate", "tmaze", "--out", str(given), "--seed", "1"]) == 0
    output = capsys.readouterr().out
    assert f"record: {given / 'tmaze_simulation.nc'} (replaces the earlier one)\n" in output
    assert f"figure: {given / 'tmaze_trial.png'} (agent 0, trial 0; replaces the earlier one)" in (
        output
    )


def test_an_interrupted_run_leaves_no_empty_folder(tmp_path, capsys, monkeypatch):
    import pp_aif.simulation

    def interrupted(dataset, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "RUNS_FOLDER", tmp_path)
    monkeypatch.setattr(pp_aif.simulation, "save", interrupted)
    assert main(["simulate", "tmaze"]) == 130
    assert capsys.readouterr().err.strip() == "pp-aif: interrupted; nothing was written"
    assert list(tmp_path.iterdir()) == []


def _summary(capsys, task: str, tmp_path) -> list[str]:
    arguments = ["simulate", task, "--agents", "20", "--trials", "2", "--out", str(tmp_path)]
    assert main(arguments) == 0
    return capsys.readouterr().out.splitlines()


def test_summaries_show_only_the_accuracy_of_hidden_factors(tmp_path, capsys):
    """The bandit's position is seen (the where modality), so its accuracy, always 1, is not a
    column; the T-maze's context is hidden, its location seen."""
    lines = _summary(capsys, "bandit", tmp_path)
    header = next(line for line in lines if "trial" in line and "agents" in line)
    assert header.split() == ["trial", "agents", "mean", "reward"]
    assert (
        "(not shown: the accuracy of beliefs about position (revealed by 'where'), always 1; "
        "the record's belief_accuracy holds every factor's)"
    ) in lines
    lines = _summary(capsys, "tmaze", tmp_path)
    header = next(line for line in lines if "trial" in line and "agents" in line)
    assert header.split() == "trial agents mean reward accuracy (context) at t=2".split()
    assert cli._revealing_modalities(pp_aif.load_task("foraging").model) == [0, None]


def test_a_move_off_the_grid_is_said_to_have_no_effect(capsys):
    """The foraging agent at top-left moving up stays there (the task's B: a move off the grid
    stays put); the narrative says so instead of leaving it to read as a bug."""
    task = pp_aif.load_task("foraging")
    record = pp_aif.simulate(task, 1, 1, seed=0)
    record["action"][0, 0, 0, 0] = 1  # up, from top-left
    record["true_state"][0, 0, 1, 0] = 0  # still top-left
    cli._narrate(record, task)
    line = capsys.readouterr().out.splitlines()[2]
    assert line.startswith("  t=0: observed where=top-left, smell=")
    assert line.endswith("| action: up (no effect from there: location stays top-left)")


def test_help_answers_without_importing_torch():
    """`pp-aif --help` and `pp-aif simulate --help` parse their arguments before anything heavy
    is imported: `import pp_aif` is lazy (PEP 562), and torch is not loaded to print help."""
    import subprocess
    import sys

    probe = (
        "import sys, runpy; sys.argv = ['pp-aif', {args}]\n"
        "try:\n    runpy.run_module('pp_aif.cli', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')"
    )
    for args in ("'--help'", "'simulate', '--help'"):
        result = subprocess.run(
            [sys.executable, "-c", probe.format(args=args)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.strip().endswith("NO TORCH"), (args, result.stdout[-300:])
    import pp_aif

    assert pp_aif.errors.ConvergenceWarning.__name__ == "ConvergenceWarning"  # submodules too
    assert set(pp_aif.__all__) <= set(dir(pp_aif))

"""The pp-aif command: the demo runs end to end, writes its figure, and bad input gets one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pp_aif.cli import main


@pytest.mark.integration
def test_demo_prints_agreement_and_writes_the_figure(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert "log evidence ln p(o | u) of the 6 steps = -5.210062 nats" in output
    assert "largest difference" in output
    figure = tmp_path / "two_factor_beliefs.png"
    assert figure.is_file() and figure.stat().st_size > 10_000
    assert f"figure: {figure}" in output


def test_unknown_task_is_one_line(tmp_path, capsys):
    assert main(["demo", "--task", "nonexistent", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "pp-aif: error: unknown task 'nonexistent'; known tasks: bandit, foraging, tmaze, "
        "two_factor"
    )


def test_missing_task_file_is_one_line(tmp_path, capsys):
    assert main(["demo", "--task", str(tmp_path / "missing.py")]) == 2
    assert capsys.readouterr().err.startswith("pp-aif: error: task file not found")


@pytest.mark.integration
def test_console_script_bad_arguments():
    result = subprocess.run(
        [sys.executable, "-m", "pp_aif.cli", "demo", "--bogus"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "unrecognized arguments: --bogus" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_simulate_one_agent_narrates(tmp_path, capsys):
    assert main(["simulate", "tmaze", "--out", str(tmp_path), "--seed", "0"]) == 0
    output = capsys.readouterr().out
    assert "t=0: observed where=start, what=neutral" in output
    assert "action: go to cue" in output
    assert (tmp_path / "tmaze_simulation.nc").is_file()
    assert (tmp_path / "tmaze_trial.png").stat().st_size > 10_000


@pytest.mark.integration
def test_simulate_many_agents_summarises(tmp_path, capsys):
    assert (
        main(["simulate", "tmaze", "--agents", "50", "--trials", "2", "--out", str(tmp_path)]) == 0
    )
    output = capsys.readouterr().out
    assert "mean reward" in output and "100 agent-trials" in output


def test_simulate_bad_counts_are_one_line(tmp_path, capsys):
    assert main(["simulate", "tmaze", "--agents", "0", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "pp-aif: error: --agents and --trials must be at least 1, got 0 and 1"
    )


def test_simulate_with_another_inference_scheme(tmp_path, capsys):
    arguments = [
        "simulate",
        "tmaze",
        "--agents",
        "20",
        "--inference",
        "mmp",
        "--out",
        str(tmp_path),
    ]
    assert main(arguments) == 0
    output = capsys.readouterr().out
    assert "state inference by mmp" in output and "20 agent-trials" in output
    with pytest.raises(SystemExit):
        main(["simulate", "tmaze", "--inference", "bp"])

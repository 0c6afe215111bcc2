"""The pp-aif command: the demo runs end to end, writes its figure, and bad input gets one line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from pp_aif.cli import main
from tests.common import assert_close


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
        "pp-aif: error: unknown task 'nonexistent'; known tasks: bandit, cue_chain, foraging, "
        "maze, reversal, tmaze, two_factor"
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


def _simulated_choices(folder, name: str, agents: int, trials: int, seed: int):
    """Simulated T-maze subjects' choices as a long-format CSV."""
    import pp_aif
    from pp_aif.data import long_format

    task = pp_aif.load_task("tmaze")
    path = folder / name
    long_format(pp_aif.simulate(task, agents, trials, seed=seed), task).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def choices_csv(tmp_path_factory):
    """Two subjects, 6 trials each."""
    return _simulated_choices(tmp_path_factory.mktemp("data"), "choices.csv", 2, 6, 3)


@pytest.mark.integration
def test_fit_prints_a_summary_and_writes_inference_data(tmp_path, capsys, choices_csv):
    import arviz as az

    out = tmp_path / "fit.nc"
    arguments = ["fit", "tmaze", str(choices_csv), "--params", "alpha,learning_rate"]
    arguments += ["--chains", "2", "--draws", "25", "--warmup", "25", "--out", str(out)]
    assert main(arguments) == 0
    output = capsys.readouterr().out
    assert (
        "pp_aif fit: alpha, learning_rate of 'tmaze' by nuts, 2 subject(s), 12 trial(s)" in output
    )
    assert "r_hat" in output and "ess_bulk" in output  # ArviZ's summary table
    assert "warning: fit: effective sample size down to" in output  # 50 draws: in words
    assert f"posterior: {out}" in output
    inference = az.from_netcdf(out)
    assert inference.posterior["learning_rate"].shape == (2, 25, 2)
    assert inference.log_likelihood["actions"].shape == (2, 25, 2, 6)
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left beside it


def test_fit_map_and_anonymised_subjects(tmp_path, capsys, choices_csv):
    import arviz as az

    out = tmp_path / "map.nc"
    arguments = ["fit", "tmaze", str(choices_csv), "--params", "alpha", "--method", "map"]
    arguments += ["--steps", "50", "--anonymise", "--salt", "pepper", "--out", str(out)]
    assert main(arguments) == 0
    subjects = az.from_netcdf(out).posterior.coords["subject"].values.tolist()
    assert all(s not in ("agent-0", "agent-1") for s in subjects) and len(set(subjects)) == 2


def test_interrupted_or_failed_fit_writes_nothing(tmp_path, capsys, choices_csv, monkeypatch):
    import arviz as az

    out = tmp_path / "fit.nc"

    def interrupted(self, path, *args, **kwargs):
        with open(path, "w") as handle:
            handle.write("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(az.InferenceData, "to_netcdf", interrupted)
    arguments = ["fit", "tmaze", str(choices_csv), "--params", "alpha", "--method", "map"]
    assert main([*arguments, "--steps", "5", "--out", str(out)]) == 130
    assert (
        capsys.readouterr()
        .err.rstrip()
        .endswith(
            f"pp-aif: interrupted while writing {out}: nothing was written (there is no fit.nc)"
        )
    )
    assert list(tmp_path.iterdir()) == []
    assert main([*arguments, "--params", "beta", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("pp-aif: error: --params: unknown parameter 'beta'")
    assert list(tmp_path.iterdir()) == []


def test_fit_bad_data_is_one_line_with_rows(tmp_path, capsys, choices_csv):
    import pandas as pd

    table = pd.read_csv(choices_csv)
    table.loc[4, "where"] = 9
    bad = tmp_path / "bad.csv"
    table.to_csv(bad, index=False)
    assert main(["fit", "tmaze", str(bad), "--out", str(tmp_path / "x.nc")]) == 2
    assert capsys.readouterr().err == (
        f"pp-aif: error: {bad}: column 'where': line 6 holds [9], out of range; outcomes of "
        "modality 'where' take values 0..4\n"
    )  # line 6 of the file: data row 4 (0-based) below the header
    assert not (tmp_path / "x.nc").exists()


@pytest.mark.integration
def test_compare_ranks_fit_files_and_runs_bms(tmp_path, capsys, choices_csv):
    files = []
    for name, params in (("precision", "alpha"), ("learner", "alpha,learning_rate")):
        out = tmp_path / f"{name}.nc"
        arguments = ["fit", "tmaze", str(choices_csv), "--params", params, "--method", "svi"]
        assert main([*arguments, "--steps", "200", "--draws", "200", "--out", str(out)]) == 0
        files.append(str(out))
    capsys.readouterr()
    assert main(["compare", *files, "--bms", "--out", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert "pp_aif compare: 2 fits by loo, left-out unit: trial" in output
    assert "elpd_loo" in output and "precision" in output and "learner" in output
    assert "random-effects BMS over 2 subjects" in output
    assert "Bayesian omnibus risk:" in output
    figure = tmp_path / "model_selection.png"
    assert figure.stat().st_size > 10_000 and f"figure: {figure}" in output
    assert main(["compare", files[0]]) == 2
    assert "at least two fit files" in capsys.readouterr().err
    assert main(["compare", files[0], str(tmp_path / "missing.nc")]) == 2
    assert "fit file not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def five_subjects_csv(tmp_path_factory):
    return _simulated_choices(tmp_path_factory.mktemp("data"), "five.csv", 5, 4, 5)


@pytest.mark.slow
@pytest.mark.integration
def test_fit_of_many_subjects_fans_out_and_resumes(tmp_path, capsys, five_subjects_csv):
    """Groups of 2 subjects as jobs: on a local Dask cluster (the default) and inline, the same
    draws, each group equal to its own fit; a rerun fits nothing; one group lost, only it."""
    import arviz as az
    import numpy as np

    import pp_aif
    from pp_aif.data import BehaviourData
    from pp_aif.fitting import fit

    base = ["fit", "tmaze", str(five_subjects_csv), "--params", "alpha", "--method", "grid"]
    base += ["--draws", "40", "--subjects-per-job", "2", "--seed", "7"]
    cluster, inline = tmp_path / "cluster.nc", tmp_path / "inline.nc"
    assert main([*base, "--workers", "2", "--out", str(cluster)]) == 0
    output = capsys.readouterr().out
    assert "3 jobs of up to 2 subjects on a local cluster of 2 worker(s)" in output
    assert re.search(r"^Dask dashboard: http://127\.0\.0\.1:\d+/status$", output, re.M)
    finished = re.findall(
        r"^job fit-\d{5}-\d{5}-\w+ done: (\d) of 3 after [\d.]+ min$", output, re.M
    )
    assert sorted(finished) == ["1", "2", "3"]
    assert re.search(
        r"^Prometheus metrics of the scheduler: http://127\.0\.0\.1:\d+/metrics$", output, re.M
    )
    jobs = sorted((tmp_path / "cluster.jobs").iterdir())
    assert [p.name[:15] for p in jobs] == ["fit-00000-00001", "fit-00002-00003", "fit-00004-00004"]
    assert main([*base, "--scheduler", "inline", "--out", str(inline)]) == 0
    capsys.readouterr()
    a, b = az.from_netcdf(cluster), az.from_netcdf(inline)
    assert a.posterior["alpha"].shape == (1, 40, 5)
    assert a.sample_stats["diverging"].dims == ("chain", "draw", "subject")
    np.testing.assert_array_equal(a.posterior["alpha"].values, b.posterior["alpha"].values)
    task = pp_aif.load_task("tmaze")
    data = BehaviourData.read(five_subjects_csv, task)
    for j, start in enumerate(range(0, 5, 2)):
        group = data.subjects_slice(start, start + 2)
        alone = fit(task, group, ("alpha",), method="grid", draws=40, seed=7 + j)
        np.testing.assert_array_equal(
            a.posterior["alpha"].values[..., start : start + 2], alone.posterior["alpha"].values
        )
        np.testing.assert_array_equal(
            a.log_likelihood["actions"].values[:, :, start : start + 2],
            alone.log_likelihood["actions"].values,
        )
    np.testing.assert_allclose(
        a.attrs["log_evidence"],
        fit(task, data, ("alpha",), method="grid", draws=40).attrs["log_evidence"],
        rtol=1e-12,
    )
    # a rerun finds every group; with one removed, fits it alone (inline: one job)
    jobs[1].unlink()
    assert main([*base, "--out", str(cluster)]) == 0
    assert f"resuming: 2 of 3 jobs already in {tmp_path / 'cluster.jobs'}/" in (
        capsys.readouterr().out
    )
    assert sorted((tmp_path / "cluster.jobs").iterdir()) == jobs
    np.testing.assert_array_equal(
        az.from_netcdf(cluster).posterior["alpha"].values, b.posterior["alpha"].values
    )
    assert main([*base, "--subjects-per-job", "0", "--out", str(cluster)]) == 2
    assert "--subjects-per-job: 0; need at least 1" in capsys.readouterr().err


def _files(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("installed", ["python's", "a library's"])
def test_an_interrupted_simulate_keeps_the_earlier_record(
    tmp_path, capsys, monkeypatch, request, installed
):
    """Ctrl-C while the record is written, raised or swallowed by the writer (h5py may print
    "Exception ignored in ..." and carry on): exit 130, the earlier files as they were, no
    temporary file. Also where a library has replaced Python's SIGINT handler by its own (one
    that does not raise): the write still sees the Ctrl-C (it once went unseen, and the new
    record replaced the earlier one)."""
    import signal

    # Python's handler (the suite may run where SIGINT is ignored), or a library's own
    handler = (lambda signum, frame: None) if installed == "a library's" else None
    previous = signal.signal(signal.SIGINT, handler or signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

    import xarray as xr

    arguments = ["simulate", "tmaze", "--out", str(tmp_path)]
    assert main([*arguments, "--seed", "0"]) == 0
    before = _files(tmp_path)
    assert sorted(before) == ["tmaze_simulation.nc", "tmaze_trial.png"]
    capsys.readouterr()
    real = xr.Dataset.to_netcdf

    def raised(self, path, *args, **kwargs):
        real(self, path, *args, **kwargs)
        raise KeyboardInterrupt

    def swallowed(self, path, *args, **kwargs):
        real(self, path, *args, **kwargs)
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # as a callback inside the netCDF library does

    record = tmp_path / "tmaze_simulation.nc"
    for writer in (raised, swallowed):
        monkeypatch.setattr(xr.Dataset, "to_netcdf", writer)
        code = main([*arguments, "--seed", "1"])
        assert _files(tmp_path) == before, writer.__name__
        assert code == 130, writer.__name__
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error == (
            f"pp-aif: interrupted while writing {record}: nothing was written (the earlier "
            "tmaze_simulation.nc is kept unchanged)"
        )


def test_ids_of_different_lengths_reach_the_fit_file(tmp_path, capsys):
    """Subjects fitted as jobs, their ids of different lengths: the joined file holds them
    whole (the first job's string width once cut 's-100' to 's-1')."""
    import arviz as az
    import pandas as pd

    table = pd.read_csv(_simulated_choices(tmp_path, "choices.csv", 3, 2, 1))
    table["subject"] = table["subject"].map(
        {"agent-0": "s-1", "agent-1": "s-10", "agent-2": "s-100"}
    )
    data = tmp_path / "uneven.csv"
    table.to_csv(data, index=False)
    out = tmp_path / "fit.nc"
    arguments = ["fit", "tmaze", str(data), "--params", "alpha", "--method", "grid"]
    arguments += ["--draws", "100", "--subjects-per-job", "1", "--scheduler", "inline"]
    assert main([*arguments, "--out", str(out)]) == 0
    capsys.readouterr()
    fitted = az.from_netcdf(out)
    for group in ("posterior", "log_likelihood", "observed_data", "constant_data"):
        assert fitted[group].coords["subject"].values.tolist() == ["s-1", "s-10", "s-100"]
    other = tmp_path / "again.nc"
    other.write_bytes(out.read_bytes())
    assert main(["compare", str(out), str(other), "--out", str(tmp_path)]) == 0


def test_compare_refuses_damaged_fit_files(tmp_path, capsys, choices_csv):
    """A fit whose subject ids were cut short (two subjects both 's-1') is refused, not
    compared; so is a truncated file."""
    import pp_aif
    from pp_aif.data import BehaviourData

    task = pp_aif.load_task("tmaze")
    data = BehaviourData.read(choices_csv, task)
    fitted = pp_aif.fit(task, data, ("alpha",), method="grid", grid_points=9, draws=100)
    for group in fitted.groups():
        if "subject" in fitted[group].coords:
            fitted[group] = fitted[group].assign_coords(subject=["s-1", "s-1"])
    cut = tmp_path / "cut.nc"
    fitted.to_netcdf(str(cut))
    copy = tmp_path / "copy.nc"
    copy.write_bytes(cut.read_bytes())
    assert main(["compare", str(cut), str(copy)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"pp-aif: error: fit file {cut}: posterior's subject coordinate repeats ['s-1']; the "
        "file is damaged (ids cut short?), fit again"
    )
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(cut.read_bytes()[:1000])
    assert main(["compare", str(truncated), str(cut)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"pp-aif: error: fit file {truncated} cannot be read (OSError: ")
    assert error.endswith("is it truncated?")


def test_fit_help_gives_the_columns_and_every_parameter(capsys):
    """The data's columns, each task's own names, and every fittable parameter with its meaning
    and the default prior that fit.default_priors really uses."""
    import math
    import re

    from pp_aif.cli import FIT_PARAMETERS
    from pp_aif.fitting.fit import default_priors
    from pp_aif.fitting.likelihood import PARAMETERS
    from pp_aif.task import available_tasks, load_task

    with pytest.raises(SystemExit) as exit_status:
        main(["fit", "--help"])
    assert exit_status.value.code == 0
    text = capsys.readouterr().out
    for column in ("subject", "trial", "time", "<modality>", "<factor>", "covariate"):
        assert column in text
    for name in available_tasks():
        task = load_task(name)
        names = f"{', '.join(task.labels.modalities)}; {', '.join(task.labels.factors)}"
        assert f"{name:<12} {names}; T = {task.trial_length}" in text
    assert set(FIT_PARAMETERS) == set(PARAMETERS)
    priors = default_priors()
    for name, (meaning, prior) in FIT_PARAMETERS.items():
        assert re.search(rf"\n  {name} +{re.escape(meaning)}\n +prior {re.escape(prior)}\n", text)
        kind, loc, scale = re.fullmatch(r"(LogNormal|logit-Normal)\((.+), (.+)\)", prior).groups()
        loc = math.log(float(loc[3:])) if loc.startswith("ln ") else float(loc)
        base = priors[name].base_dist
        assert (float(base.loc), float(base.scale)) == (loc, float(scale)), name
        transform = type(priors[name].transforms[0]).__name__
        assert transform == {"LogNormal": "ExpTransform", "logit-Normal": "SigmoidTransform"}[kind]


def test_fit_announces_a_long_fit_before_it_starts(tmp_path, capsys, monkeypatch):
    """LongFitWarning is printed in words at once (the fit's header, then the warning, then
    the sampling), not with the other warnings after the fit."""
    import importlib

    import pp_aif
    from pp_aif.data import long_format

    fitting = importlib.import_module("pp_aif.fitting.fit")
    monkeypatch.setattr(fitting, "LONG_FIT_SECONDS", 0.0)
    task = pp_aif.load_task("tmaze")
    long_format(pp_aif.simulate(task, 1, 2, seed=0), task).to_csv(tmp_path / "c.csv", index=False)
    arguments = ["fit", "tmaze", str(tmp_path / "c.csv"), "--params", "alpha"]
    arguments += ["--chains", "1", "--draws", "5", "--warmup", "5", "--out", str(tmp_path / "f.nc")]
    main(arguments)
    out = capsys.readouterr().out
    announced = out.index("warning: fit: this NUTS run will take about")
    assert out.index("pp_aif fit:") < announced < out.index("fitted in")


def test_a_parameter_the_task_cannot_fit_is_refused_before_the_header(tmp_path, capsys):
    """The learning rate of a task whose agents learn nothing is an argument error: said
    before anything is printed, with the reason, and the data are not read."""
    import pp_aif
    from pp_aif.data import long_format

    task = pp_aif.load_task("two_factor")
    long_format(pp_aif.simulate(task, 1, 1, seed=0), task).to_csv(tmp_path / "c.csv", index=False)
    code = main(["fit", "two_factor", str(tmp_path / "c.csv"), "--params", "learning_rate"])
    captured = capsys.readouterr()
    assert code != 0 and "pp_aif fit:" not in captured.out
    assert "shape learning, but the model has no pA, pB or pD" in captured.err + captured.out


def test_fit_of_sophisticated_agents_says_so_and_records_the_agent(tmp_path, capsys, choices_csv):
    import arviz as az

    from pp_aif.simulation import recorded_settings

    out = tmp_path / "fit.nc"
    arguments = ["fit", "tmaze", str(choices_csv), "--params", "alpha", "--method", "map"]
    arguments += ["--steps", "20", "--planning", "sophisticated", "--out", str(out)]
    assert main(arguments) == 0
    assert "of 'tmaze' by map, sophisticated planning, 2 subject(s)" in capsys.readouterr().out
    inference = az.from_netcdf(out)
    assert inference.attrs["likelihood"] == "ReplayLikelihood"  # no closed form plans this way
    settings = recorded_settings(inference)  # its attrs: the agent fitted
    assert settings.planner == "sophisticated" and settings.inference == "exact"
    with pytest.raises(SystemExit):
        main(["fit", "tmaze", str(choices_csv), "--planning", "closed_loop"])


def test_simulate_inductive_agents_and_a_task_without_intended_states(tmp_path, capsys):
    arguments = ["simulate", "maze", "--agents", "20", "--inductive", "1e-3"]
    assert main([*arguments, "--out", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert "'maze'" in output and "inductive planning (epsilon 0.001)" in output
    assert main(["simulate", "tmaze", "--inductive", "1e-3", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "pp-aif: error: --inductive: task 'tmaze' has no intended states "
        "(GenerativeModel(H=...)); the maze task has them"
    )
    assert main(["simulate", "maze", "--inductive", "2", "--out", str(tmp_path)]) == 2
    assert "inductive_epsilon" in capsys.readouterr().err


def test_train_then_fit_amortised(tmp_path, capsys, choices_csv):
    """``pp-aif train`` shows its progress and validation loss and writes the estimator;
    ``fit --method amortised --estimator`` uses it; a wrong or missing estimator is one line."""
    import arviz as az

    estimator = tmp_path / "tmaze.pt"
    train = ["train", "tmaze", "--params", "alpha", "--simulations", "60", "--trials", "6"]
    train += ["--min-trials", "2", "--epochs", "2", "--schedule", "cosine"]
    assert main([*train, "--out", str(estimator)]) == 0
    output = capsys.readouterr().out
    assert "pp_aif train: a posterior estimator of alpha for 'tmaze'" in output
    assert "epoch 2/2: loss" in output and "validation" in output
    assert f"estimator: {estimator}" in output
    out = tmp_path / "fit.nc"
    fit = ["fit", "tmaze", str(choices_csv), "--params", "alpha", "--method", "amortised"]
    assert main([*fit, "--estimator", str(estimator), "--draws", "30", "--out", str(out)]) == 0
    assert az.from_netcdf(out).posterior["alpha"].shape == (1, 30, 2)
    capsys.readouterr()
    assert main([*fit, "--out", str(tmp_path / "x.nc")]) == 2
    assert "--method amortised needs the file of a trained estimator" in capsys.readouterr().err
    wrong = [*fit[:4], "alpha,learning_rate", *fit[5:], "--estimator", str(estimator)]
    assert main([*wrong, "--out", str(tmp_path / "y.nc")]) == 2
    assert "estimator: trained for parameters ['alpha']" in capsys.readouterr().err
    assert main([*fit, "--estimator", str(tmp_path / "none.pt")]) == 2
    assert "no file" in capsys.readouterr().err
    # corrected by importance sampling: each subject's Pareto k and ESS kept and summarised
    weighed = tmp_path / "weighed.nc"
    assert main([*fit, "--estimator", str(estimator), "--importance", "200", "--draws", "30",
                 "--out", str(weighed)]) == 0  # fmt: skip
    output = capsys.readouterr().out
    assert "importance sampling: 200 proposals a subject; Pareto k at most" in output
    saved = az.from_netcdf(weighed)
    assert saved.posterior["alpha"].shape == (1, 30, 2)
    assert len(saved.attrs["importance_pareto_k"]) == len(saved.attrs["importance_ess"]) == 2
    assert main([*fit, "--estimator", str(estimator), "--importance", "1"]) == 2
    assert "--importance: 1 proposal(s) a subject; give 2 or more" in capsys.readouterr().err
    assert main([*fit[:5], "--method", "grid", "--importance", "10"]) == 2
    assert "--importance: only --method amortised" in capsys.readouterr().err


@pytest.mark.integration
def test_train_guide_then_infer_states(tmp_path, capsys, choices_csv):
    """``pp-aif infer`` writes each trial's marginals, F and ln p(o) (exact: those of
    infer_states on the same trials; amortised: F above -ln p(o)); ``train-guide`` writes the
    guide it takes; trial numbers are the data's; misuse and impossible trials are one line
    naming the subject and trial."""
    import numpy as np
    import pandas as pd

    import pp_aif
    from pp_aif.data import BehaviourData

    task = pp_aif.load_task("tmaze")
    table = pd.read_csv(choices_csv)
    table["trial"] = table["trial"] * 10 + 5  # trials 5, 15, ... as the data names them
    data_path = tmp_path / "choices.csv"
    table.to_csv(data_path, index=False)
    guide = tmp_path / "guide.pt"
    train = ["train-guide", "tmaze", "--steps", "30", "--batch-size", "16", "--hidden", "8"]
    assert main([*train, "--out", str(guide)]) == 0
    output = capsys.readouterr().out
    assert "pp_aif train-guide: an amortised state-inference guide for 'tmaze'" in output
    assert "step 30/30" in output and "on 1000 fresh sequences F - (-ln p(o)) per step" in output
    assert f"guide: {guide}" in output

    exact_out = tmp_path / "exact.csv"
    assert main(["infer", "tmaze", str(data_path), "--out", str(exact_out)]) == 0
    output = capsys.readouterr().out
    assert (
        "pp_aif infer: smoothing posteriors of 12 trials (2 subjects) of 'tmaze' by exact" in output
    )
    written = pd.read_csv(exact_out, dtype={"subject": str})
    T = task.trial_length
    labels = task.labels
    pairs = zip(labels.factors, labels.states, strict=True)
    states = [f"{factor}={state}" for factor, names in pairs for state in names]
    assert list(written.columns) == ["subject", "trial", "time", *states, "free_energy",
                                     "log_evidence"]  # fmt: skip
    assert len(written) == 12 * T
    assert sorted(set(written["trial"])) == [5, 15, 25, 35, 45, 55]
    data = BehaviourData.read(data_path, task)
    expected = pp_aif.infer_states(task.model, data.observations, data.actions)
    n, k = 1, 2  # agent-1's third trial, trial 25
    rows = written[(written["subject"] == data.subjects[n]) & (written["trial"] == 25)]
    assert rows["time"].tolist() == list(range(T))
    for f, factor in enumerate(labels.factors):
        columns = [f"{factor}={s}" for s in labels.states[f]]
        assert_close(rows[columns].to_numpy(), expected.marginals[f][n, k], atol=1e-9,
                     reason="written with 10 significant digits")  # fmt: skip
    assert_close(rows["log_evidence"].to_numpy(), expected.log_evidence[n, k].repeat(T),
                 atol=1e-9, reason="written with 10 significant digits")  # fmt: skip
    assert_close(written["free_energy"], -written["log_evidence"], atol=0.0, reason="exact")

    amortised_out = tmp_path / "amortised.csv"
    infer = ["infer", "tmaze", str(data_path), "--method", "amortised"]
    assert main([*infer, "--guide", str(guide), "--out", str(amortised_out)]) == 0
    assert "by amortised (guide" in capsys.readouterr().out
    amortised = pd.read_csv(amortised_out, dtype={"subject": str})
    assert bool((amortised["free_energy"] >= -amortised["log_evidence"] - 1e-9).all())
    for factor, names in zip(labels.factors, labels.states, strict=True):  # each sums to 1
        total = amortised[[f"{factor}={state}" for state in names]].sum(axis=1).to_numpy()
        assert_close(total, np.ones(len(amortised)), atol=1e-9, reason="10 significant digits")

    # a subject's absent trial has no rows; anonymised subjects are the data's salted hashes
    fewer = table[~((table["subject"] == "agent-1") & (table["trial"] == 35))]
    fewer_path = tmp_path / "fewer.csv"
    fewer.to_csv(fewer_path, index=False)
    hidden = tmp_path / "anonymous.csv"
    anonymise = ["--anonymise", "--salt", "s3cret", "--out", str(hidden)]
    assert main(["infer", "tmaze", str(fewer_path), *anonymise]) == 0
    assert "11 trials (2 subjects)" in capsys.readouterr().out
    anonymous = pd.read_csv(hidden, dtype={"subject": str})
    hashed = BehaviourData.read(fewer_path, task, anonymise=True, salt="s3cret").subjects
    assert list(dict.fromkeys(anonymous["subject"])) == list(hashed)
    assert not set(anonymous["subject"]) & {"agent-0", "agent-1"}
    assert len(anonymous) == 11 * T and 35 not in set(anonymous.loc[
        anonymous["subject"] == hashed[1], "trial"])  # fmt: skip
    assert main(["infer", "tmaze", str(fewer_path), "--anonymise"]) == 2
    assert "needs a salt" in capsys.readouterr().err

    assert main([*infer, "--out", str(tmp_path / "x.csv")]) == 2
    assert "--method amortised needs the file of a trained guide" in capsys.readouterr().err
    assert main(["infer", "tmaze", str(data_path), "--guide", str(guide)]) == 2
    assert "--guide: only --method amortised takes a guide" in capsys.readouterr().err
    assert main(["infer", "bandit", str(data_path), "--method", "amortised", "--guide",
                 str(guide)]) == 2  # fmt: skip
    assert "guide: trained for a model with" in capsys.readouterr().err
    assert main([*infer, "--guide", str(guide), "--out", str(tmp_path / "x.nc")]) == 2
    assert "is not a .csv file" in capsys.readouterr().err
    assert main([*infer, "--guide", str(guide), "--mode", "filtering"]) == 2
    refused = capsys.readouterr()
    assert refused.out == "" and "infers smoothing posteriors only" in refused.err
    # agent-0's trial 15 starts somewhere the model rules out
    broken = table.copy()
    first = (broken["subject"] == "agent-0") & (broken["trial"] == 15) & (broken["time"] == 0)
    start = int(broken.loc[first, "where"].iloc[0])
    broken.loc[first, "where"] = (start + 1) % len(labels.outcomes[0])
    broken_path = tmp_path / "broken.csv"
    broken.to_csv(broken_path, index=False)
    before = set(tmp_path.iterdir())
    assert main(["infer", "tmaze", str(broken_path), "--out", str(tmp_path / "b.csv")]) == 2
    error = capsys.readouterr().err
    assert "1 trial(s) have probability 0 under task 'tmaze'" in error
    assert "subject 'agent-0' trial 15" in error and "time step 0, modality 0" in error
    assert set(tmp_path.iterdir()) == before  # nothing written

"""Every experiment runs at tiny size and writes its JSON and figure."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from experiments.tmaze_epistemic import Config, run
from tests.common import assert_close


@pytest.mark.integration
def test_tmaze_epistemic_smoke(tmp_path):
    results = run(Config(num_agents=20, seed=0, out=tmp_path))
    written = json.loads((tmp_path / "tmaze_epistemic.json").read_text())
    for key in (
        "cue_first_rate_epistemic",
        "correct_arm_after_cue_rate_epistemic",
        "cue_first_rate_no_epistemic",
        "reward_rate_epistemic",
        "reward_rate_no_epistemic",
    ):
        assert 0 <= written[key] <= 1
        assert written[key] == results[key]
    assert (tmp_path / "tmaze_epistemic.png").stat().st_size > 10_000


@pytest.mark.integration
def test_inference_schemes_smoke(tmp_path):
    from experiments.inference_schemes import Config as SchemesConfig
    from experiments.inference_schemes import run as run_schemes

    config = SchemesConfig(
        num_sequences=2, sizes=((2, 2, 4),), num_agents=10, iterations=4, out=tmp_path
    )
    results = run_schemes(config)
    written = json.loads((tmp_path / "inference_schemes.json").read_text())
    assert written["cases"].keys() == results["cases"].keys()
    random_case = written["cases"]["random F=2 S=2 T=4"]["schemes"]
    assert set(random_case) == {"exact", "mean_field", "structured", "fpi", "vmp", "mmp"}
    for scheme, row in random_case.items():
        assert row["gap"] >= -1e-9 and row["kl"] >= -1e-12, scheme
    assert set(written["tmaze_closed_loop"]) == {"exact", "fpi", "vmp", "mmp"}
    assert (tmp_path / "inference_schemes.png").stat().st_size > 10_000


@pytest.mark.integration
def test_parameter_recovery_smoke(tmp_path):
    from experiments.parameter_recovery import Config as RecoveryConfig
    from experiments.parameter_recovery import run as run_recovery

    config = RecoveryConfig(
        num_subjects=3,
        num_trials=4,
        chains=1,
        warmup=10,
        draws=10,
        blocks=2,
        predictive_draws=3,
        subjects_per_job=2,
        scheduler="inline",
        out=tmp_path,
    )
    results = run_recovery(config)
    assert len(list((tmp_path / "parameter_recovery.jobs").iterdir())) == 2  # groups of 2 and 1
    written = json.loads((tmp_path / "parameter_recovery.json").read_text())
    assert set(written["recovery"]) == {"alpha", "learning_rate"}
    for row in written["recovery"].values():
        assert len(row["true"]) == 3 and 0 <= row["coverage_90"] <= 1
    assert set(written["identifiability"]) == {"subjects", "gamma:alpha", "alpha:preference"}
    first_move = written["posterior_predictive"]["cue"]
    assert len(first_move["observed"]) == 2 and len(first_move["predicted_5"]) == 2
    assert results["recovery"].keys() == written["recovery"].keys()
    assert written["jobs"] == {"computed": 2, "resumed": 0}  # what fit_seconds measured
    assert written["fit_seconds_measures"] == "computed: all 2 job(s) ran in this run"
    for name in ("parameter_recovery.png", "parameter_recovery_ppc.png"):
        assert (tmp_path / name).stat().st_size > 10_000


@pytest.mark.integration
def test_model_recovery_smoke(tmp_path):
    from experiments.model_recovery import KINDS, run_sweep
    from experiments.model_recovery import Config as ModelConfig
    from experiments.model_recovery import run as run_models

    config = ModelConfig(num_subjects=3, num_trials=4, draws=100, grid_points=9, out=tmp_path)
    results = run_models(config)  # on a local Dask cluster
    jobs = sorted((tmp_path / "model_recovery.jobs").iterdir())
    assert len(jobs) == len(KINDS) ** 2  # every kind fitted to every data set
    assert jobs[0].name.startswith("bias0.7-fixed_prior-fixed_prior-")
    written = json.loads((tmp_path / "model_recovery.json").read_text())
    for name in ("confusion_loo", "confusion_laplace", "confusion_exact"):
        matrix = written[name]
        assert len(matrix) == len(KINDS)
        for row in matrix:  # shares of subjects: each row sums to 1
            assert abs(sum(row) - 1) < 1e-12
    assert written["diagonal_loo"] == results["diagonal_loo"]
    assert written["jobs"] == {"computed": len(KINDS) ** 2, "resumed": 0}
    assert written["seconds_measures"].startswith("computed: all 9 job(s)")
    bms = written["data_sets"]["learner"]["bms"]["loo"]
    assert abs(sum(bms["expected_frequencies"]) - 1) < 1e-12
    assert (tmp_path / "model_recovery.png").stat().st_size > 10_000
    # a sweep over two worlds finds the default world's fits and runs only the other's
    sweep = run_sweep(dataclasses.replace(config, scheduler="inline"), (0.7, 0.8))
    assert len(list((tmp_path / "model_recovery.jobs").iterdir())) == 2 * len(KINDS) ** 2
    assert sweep["worlds"]["0.7"]["confusion_exact"] == results["confusion_exact"]
    # the sweep's time is of the new world's fits only, and its record says so
    assert sweep["jobs"] == {"computed": 9, "resumed": 9}
    swept = json.loads((tmp_path / "model_recovery_sweep.json").read_text())
    assert swept["seconds_measures"] == (
        "resumed: 9 of 18 job(s) were read from an earlier run's store and 9 computed; the time "
        "is of those 9 only"
    )
    assert set(sweep["diagonals"]["exact"]) == {"0.7", "0.8"}
    assert (tmp_path / "model_recovery_sweep.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="need distinct values in"):
        run_sweep(config, (0.7, 0.7))
    svi = run_models(
        ModelConfig(
            num_subjects=2,
            num_trials=3,
            method="svi",
            steps=20,
            draws=100,
            out=tmp_path,
            scheduler="inline",
        )
    )
    assert "confusion_exact" not in svi


@pytest.mark.integration
def test_bandit_recovery_smoke(tmp_path):
    """The pA learner, which could not be fitted before, through the whole experiment."""
    from experiments.bandit_recovery import Config as BanditConfig
    from experiments.bandit_recovery import run as run_bandit

    config = BanditConfig(
        num_subjects=3,
        num_trials=6,
        forgetting=0.1,  # known to the fit
        game_length=3,  # two games: the counts start again at trial 3
        warmup=20,
        draws=20,
        subjects_per_job=2,
        scheduler="inline",
        out=tmp_path,
    )
    results = run_bandit(config)
    written = json.loads((tmp_path / "bandit_recovery.json").read_text())
    assert written["recovery"].keys() == {"alpha", "learning_rate"}
    for name, row in written["recovery"].items():
        assert len(row["true"]) == 3 and -1 <= row["r"] <= 1, name
        assert row == results["recovery"][name]
    assert set(written["posterior_correlations"]) == {"alpha:learning_rate"}
    assert written["config"]["reward_probabilities"] == [0.7, 0.5, 0.3]
    assert (written["config"]["forgetting"], written["config"]["game_length"]) == (0.1, 3)
    assert written["likelihood"] == "CountsLikelihood"
    assert (tmp_path / "bandit_recovery.png").stat().st_size > 10_000
    assert written["jobs"] == {"computed": 2, "resumed": 0}  # groups of 2 and 1


@pytest.mark.integration
def test_sophisticated_smoke(tmp_path):
    from experiments.sophisticated import Config as SophisticatedConfig
    from experiments.sophisticated import run as run_sophisticated

    results = run_sophisticated(SophisticatedConfig(num_agents=20, seed=0, out=tmp_path))
    written = json.loads((tmp_path / "sophisticated.json").read_text())
    assert written["goal"] == results["goal"]
    for row in written["agents"].values():
        assert 0 <= row["cue_first_rate"] <= 1 and 0 <= row["reward_rate"] <= 1
    assert (tmp_path / "sophisticated.png").stat().st_size > 10_000
    # the plan tree of the first decision: the cue is the sophisticated agent's best action
    plan = written["plan"]
    assert plan["actions"][int(np.argmax(plan["q_u"]))] == "go to cue"
    assert abs(sum(plan["q_u"]) - 1) < 1e-12 and plan["nodes"][0] == 1
    assert (tmp_path / "sophisticated_plan_tree.png").stat().st_size > 10_000
    # the deeper tasks: every agent row, rates in [0, 1], and the figure
    deeper = written["deeper"]
    assert set(deeper) == {"cue_chain", "maze"}
    assert len(deeper["cue_chain"]["agents"]) == 6 and len(deeper["maze"]["agents"]) == 7
    for task in deeper.values():
        assert all(0 <= row["success_rate"] <= 1 for row in task["agents"].values())
    maze = deeper["maze"]["agents"]
    assert maze["inductive (open loop, 1 move deep)"]["success_rate"] == 1.0
    assert maze["open loop (1 move deep)"]["success_rate"] == 0.0
    assert (tmp_path / "sophisticated_deeper.png").stat().st_size > 10_000


@pytest.mark.integration
def test_every_experiment_runs_as_the_docs_run_it(tmp_path):
    """``python experiments/NAME.py`` from another folder: each script finds its package (one
    did not: ModuleNotFoundError: No module named 'experiments')."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    scripts = sorted(p for p in (root / "experiments").glob("*.py") if p.name != "__init__.py")
    assert len(scripts) >= 6
    for script in scripts:
        run = subprocess.run(
            [sys.executable, str(script), "--help"],
            capture_output=True, text=True, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, f"{script.name}: {run.stderr.strip().splitlines()[-1:]}"
        assert run.stdout.startswith("usage:"), script.name


@pytest.mark.integration
def test_amortisation_gap_smoke(tmp_path):
    from experiments.amortisation_gap import Config as GapConfig
    from experiments.amortisation_gap import run as run_gap

    config = GapConfig(
        num_sequences=3,
        two_factor_lengths=(3, 6),
        random_sequences=2,
        random_states=(2,),
        random_length=4,
        batch_sizes=(2, 3),
        steps=6,
        batch_size=4,
        hidden=4,
        other_hidden=(3,),
        out=tmp_path,
    )
    results = run_gap(config)
    written = json.loads((tmp_path / "amortisation_gap.json").read_text())
    assert written["cases"].keys() == results["cases"].keys() == {"two_factor", "random S=2"}
    assert [row["T"] for row in written["cases"]["two_factor"]["rows"]] == [3, 6]
    for case in written["cases"].values():
        for row in case["rows"]:
            # F of every guide is above -ln p(o); the structured family holds the posterior
            assert row["amortised_minus_exact"]["mean"] >= -1e-10
            for method in ("structured", "structured_from_prior", "mean_field"):
                assert row["approximation_gap"][method]["mean"] >= -1e-9, method
            # started at the posterior, the per-sequence guide is the family's optimum
            assert abs(row["approximation_gap"]["structured"]["mean"]) < 1e-8
            assert set(row["seconds_per_sequence"]) == {
                "exact", "amortised", "structured", "structured_from_prior", "mean_field"
            }  # fmt: skip
            times = row["seconds_per_sequence"]
            assert_close(
                row["speed_up_over_optimisation"],
                times["structured_from_prior"] / times["amortised"],
            )
            # timed again in batches smaller than the held-out set only
            held_out = row["sequences"]
            assert list(row["in_batches"]) == [str(n) for n in (2, 3) if n < held_out]
            for batched in row["in_batches"].values():
                each = batched["seconds_per_sequence"]
                assert_close(
                    batched["speed_up_over_optimisation"],
                    each["structured_from_prior"] / each["amortised"],
                )
    assert [r["sequences"] for r in written["cases"]["random S=2"]["rows"]] == [2]
    for row in written["cases"]["two_factor"]["rows"]:  # a guide of another size beside it
        assert list(row["other_hidden"]) == ["3"]
        assert row["other_hidden"]["3"]["amortisation_gap"]["mean"] >= -1e-10
    assert list(written["cases"]["two_factor"]["other_hidden_training"]) == ["3"]
    assert (tmp_path / "amortisation_gap.png").stat().st_size > 10_000


def test_calibration_band_and_ranks():
    """The simultaneous band holds about 95% of uniform rank samples (its oracle: fresh
    simulations, another seed), the ranks of a true value among draws of its own posterior are
    uniform, and ranks of a biased posterior are not."""
    from pp_aif.fitting.calibration import ecdf_band, ecdf_difference, ranks, uniformity_p_value

    N, L = 200, 99
    _, lower, upper = ecdf_band(N, L, 2000, seed=0)
    rng = np.random.default_rng(1)
    inside = [
        bool(
            np.all(
                (ecdf_difference(s, L) >= lower - 1e-12) & (ecdf_difference(s, L) <= upper + 1e-12)
            )
        )
        for s in rng.integers(0, L + 1, size=(1000, N))
    ]
    rate = float(np.mean(inside))
    assert abs(rate - 0.95) < 4 * np.sqrt(0.05 * 0.95 / 1000), rate  # within 4 standard errors
    # calibrated: truth and draws from the same distribution; biased: draws shifted
    truth = rng.normal(size=N)
    calibrated = ranks(truth, rng.normal(size=(400, N)), L)
    shifted = ranks(truth, rng.normal(1.0, 1.0, size=(400, N)), L)  # one sd off
    assert 0 <= calibrated.min() and calibrated.max() <= L
    assert uniformity_p_value(calibrated, L, 10) > 0.001
    assert uniformity_p_value(shifted, L, 10) < 1e-6


@pytest.mark.integration
def test_calibration_smoke(tmp_path):
    import importlib

    import pp_aif
    from experiments.calibration import Config as CalibrationConfig
    from experiments.calibration import run as run_calibration
    from pp_aif.data import BehaviourData, long_format

    config = CalibrationConfig(
        num_subjects=4, trials={"tmaze": 3, "bandit": 4}, rank_draws=9, bins=5, chains=1,
        warmup=10, draws=10, svi_steps=20, subjects_per_job=2, scheduler="inline",
        band_simulations=100, amortised_simulations=40, amortised_epochs=1,
        importance_proposals=30, out=tmp_path,
    )  # fmt: skip
    results = run_calibration(config)
    written = json.loads((tmp_path / "calibration.json").read_text())
    assert written["tasks"].keys() == results["tasks"].keys() == {"tmaze", "bandit"}
    for name in ("tmaze", "bandit"):  # each task's estimator kept, and reused by a rerun
        assert (tmp_path / f"calibration_estimator_{name}.pt").exists()
    calibration = importlib.import_module("experiments.calibration")
    task = pp_aif.load_task("bandit")
    data = BehaviourData.read(long_format(pp_aif.simulate(task, 1, 4, seed=0), task), task)
    kept = calibration.estimator_for(task, "bandit", data, config)
    assert kept.settings.simulations == 40  # loaded, not trained again
    for task in written["tasks"].values():
        assert set(task["methods"]) == {"nuts", "grid", "svi", "amortised", "importance"}
        assert task["methods"]["importance"]["importance"]["ess_median"] > 0
        for row in task["methods"].values():
            for values in row["parameters"].values():
                assert len(values["ranks"]) == 4 and all(0 <= r <= 9 for r in values["ranks"])
                assert 0 <= values["uniformity_p"] <= 1
                assert set(values["coverage"]) == {"0.5", "0.8", "0.9"}
    assert (tmp_path / "calibration.png").stat().st_size > 10_000


@pytest.mark.integration
def test_amortised_fitting_smoke(tmp_path):
    from experiments.amortised_fitting import Config as AmortisedConfig
    from experiments.amortised_fitting import run as run_amortised

    config = AmortisedConfig(
        simulations=60, trials=5, min_trials=2, epochs=1, held_out=3, chains=1, warmup=10,
        draws=10, amortised_draws=20, subjects_per_job=3, scheduler="inline",
        speed_subjects=4, hidden=8, transforms=1, importance=30, out=tmp_path,
    )  # fmt: skip
    results = run_amortised(config)
    written = json.loads((tmp_path / "amortised_fitting.json").read_text())
    from pp_aif.fitting.amortised import PosteriorEstimator

    kept = PosteriorEstimator.load(tmp_path / "amortised_fitting_estimator.pt")
    assert (kept.settings.hidden, kept.settings.transforms) == (8, 1)  # the sizes asked for
    assert set(written["flows"]) == {"zuko", "pyro"} and written["chosen_flow"] in written["flows"]
    for row in written["held_out"]["parameters"].values():
        assert len(row["sd_ratios"]) == 3 and all(r > 0 for r in row["sd_ratios"])
    assert written["speed"]["without_pointwise"] > 0 and results["speed"]["subjects"] == 4
    assert (tmp_path / "amortised_fitting.png").stat().st_size > 10_000
    assert (tmp_path / "amortised_fitting_estimator.pt").is_file()
    weighed = written["held_out"]["importance"]
    assert weighed["proposals"] == 30 and weighed["ess_min"] > 0
    assert set(weighed["parameters"]) == {"alpha", "learning_rate"}
    # a rerun on the estimator written: no training, the same flows' record
    again = run_amortised(dataclasses.replace(config, reuse_estimator=True, importance=0))
    assert again["flows"] == written["flows"] and "importance" not in again["held_out"]
    assert again["reused_estimator_of"]["simulations"] == 60
    with pytest.raises(FileNotFoundError, match="no earlier run"):
        run_amortised(dataclasses.replace(config, reuse_estimator=True, out=tmp_path / "new"))


@pytest.mark.integration
def test_bandit_designs_smoke(tmp_path):
    """Two designs (one game; games of 2 trials with forgetting) at a tiny size; bad designs
    are named."""
    from experiments.bandit_designs import Config as DesignsConfig
    from experiments.bandit_designs import parse_design
    from experiments.bandit_designs import run as run_designs

    results = run_designs(
        DesignsConfig(designs=("4:0:0", "4:2:0.1"), num_subjects=4, steps=3, out=tmp_path)
    )
    written = json.loads((tmp_path / "bandit_designs.json").read_text())
    assert written["designs"] == results["designs"]
    assert [(d["trials"], d["game"], d["forgetting"]) for d in written["designs"]] == [
        (4, 0, 0.0),
        (4, 2, 0.1),
    ]
    for row in written["designs"]:
        assert -1 <= row["r_log_alpha"] <= 1 and -1 <= row["r_log_learning_rate"] <= 1
    assert (tmp_path / "bandit_designs.png").stat().st_size > 10_000
    for bad in ("300:10", "x:1:0", "300:-1:0", "300:0:1"):
        with pytest.raises(ValueError, match=rf"design '{bad}'"):
            parse_design(bad)

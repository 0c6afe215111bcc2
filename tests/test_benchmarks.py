"""The benchmark runs at tiny size and writes JSON whose answers agree (not a timing test)."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_inference import Config, run


@pytest.mark.integration
def test_inference_benchmark_smoke(tmp_path):
    results = run(
        Config(
            lengths=(3, 6),
            enumerate_lengths=(3,),
            state_sizes=(2, 3),
            state_growth_length=5,
            repeats=1,
            out=tmp_path,
        )
    )
    written = json.loads((tmp_path / "bench_inference.json").read_text())
    assert written["lengths"][0]["T"] == 3
    assert written["lengths"][0]["max_abs_difference"] < 1e-10
    assert all(row["max_abs_difference"] < 1e-10 for row in results["state_growth"])
    assert [row["T"] for row in results["linearity"]] == [3, 6]


@pytest.mark.integration
def test_agent_benchmark_smoke(tmp_path):
    from benchmarks.bench_agent import Config as AgentConfig
    from benchmarks.bench_agent import run as run_agents

    results = run_agents(
        AgentConfig(agents=(1, 3), sampled_agents=(2,), num_samples=5, repeats=1, out=tmp_path)
    )
    assert [row["agents"] for row in results["exact"]] == [1, 3]
    assert (tmp_path / "bench_agent.json").is_file()


@pytest.mark.integration
def test_fit_benchmark_smoke(tmp_path):
    from benchmarks.bench_fit import Config as FitConfig
    from benchmarks.bench_fit import run as run_fit

    results = run_fit(
        FitConfig(
            num_trials=3,
            chains=1,
            warmup=5,
            draws=5,
            batch=4,
            evaluations=2,
            out=tmp_path,
        )
    )
    assert [row["agent"] for row in results["likelihood"]] == ["no learning", "learning pD"]
    assert results["likelihood"][0]["choices"] == 6
    assert [(row["agent"], row["sampler"]) for row in results["nuts"]] == [
        ("learning pD", "pp_aif"),
        ("learning pD", "pyro"),
        ("no learning", "pp_aif"),
        ("no learning", "pyro"),
        ("learning pA (bandit)", "pp_aif"),
        ("learning pA (bandit)", "pyro"),
    ]
    assert all(row["ess_per_second"] > 0 for row in results["nuts"])
    cost = results["sampler_cost"]
    assert cost["calls"] >= 10 and cost["seconds_per_call"] > 0  # at least one call a step
    assert (tmp_path / "bench_fit.json").is_file()


def test_device_benchmark_smoke(tmp_path):
    from benchmarks.bench_device import Config as DeviceConfig
    from benchmarks.bench_device import run as run_device

    results = run_device(
        DeviceConfig(device="cpu", agents=(2,), trials=1, draws=(1, 3), num_trials=2, out=tmp_path)
    )
    assert [row["draws"] for row in results["likelihood"]] == [1, 3]
    assert results["agents"][0]["agent_steps_per_second"] > 0
    assert (tmp_path / "bench_device_cpu.json").is_file()


def test_scaling_benchmark_smoke(tmp_path):
    from benchmarks.bench_scaling import Config as ScalingConfig
    from benchmarks.bench_scaling import run as run_scaling

    results = run_scaling(ScalingConfig(states=(3, 4), horizons=(1, 2), repeats=1, out=tmp_path))
    assert [row["policies"] for row in results["rows"]] == [5, 25, 5, 25]
    assert all(row["seconds"] > 0 and row["pymdp_seconds"] > 0 for row in results["rows"])
    skipped = run_scaling(
        ScalingConfig(states=(3,), horizons=(1,), repeats=1, pymdp_max_entries=10, out=tmp_path)
    )
    assert "pymdp_skipped" in skipped["rows"][0] and "pymdp_seconds" not in skipped["rows"][0]
    # pymdp 1.0 computes the same G and q(pi) on these random models (depth-2 policies too)
    assert max(row["max_abs_G_difference"] for row in results["rows"]) < 1e-10
    assert max(row["max_abs_q_pi_difference"] for row in results["rows"]) < 1e-10
    assert (tmp_path / "bench_scaling.json").is_file()


@pytest.mark.slow
@pytest.mark.integration
def test_one_command_runs_the_side_by_side_benchmarks_and_checks_the_goals(tmp_path, capsys):
    from benchmarks.__main__ import main

    main(["--quick", "--out", str(tmp_path)])
    for name in ("bench_pymdp", "bench_scaling", "bench_fit", "bench_population", "benchmarks"):
        assert (tmp_path / f"{name}.json").is_file(), name
    summary = json.loads((tmp_path / "benchmarks.json").read_text())
    assert summary["quick"] and set(summary["seconds"]) == {"pymdp", "scaling", "fit", "population"}
    goals = [row["goal"] for row in summary["goals"]]
    assert goals[0] == "T-maze, 1 agent(s): first result >= 10x faster than pymdp"
    assert "NUTS, learning pD: ESS/s at least Pyro's NUTS's" in goals
    assert any(goal.startswith("NUTS, 2 bandit subjects x 3 trials together") for goal in goals)
    assert all(row["met"] == (row["measured"] >= row["target"]) for row in summary["goals"])
    assert "measured     met" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--only", "nothing", "--out", str(tmp_path)])


def test_goals_compare_each_ratio_with_its_target():
    from benchmarks.__main__ import goals

    pymdp = {
        "ratios": [
            {"agents": 100, "first_result_pymdp_over_pp_aif": 50.0,
             "steady_throughput_pp_aif_over_pymdp": 0.5},
            {"agents": 1000, "first_result_pymdp_over_pp_aif": 9.0,
             "steady_throughput_pp_aif_over_pymdp": 3.0},
        ]
    }  # fmt: skip
    rows = goals({"pymdp": pymdp})
    assert [(row["target"], row["met"]) for row in rows] == [
        (10.0, True),
        (1.0, False),
        (10.0, False),
        (3.0, True),
    ]
    # a compiled row where the run has one; ESS/s in its own unit; the smallest scaling ratio
    pymdp["ratios"][0]["steady_throughput_compiled_over_pymdp"] = 1.5
    scaling = {"rows": [
        {"states": 10, "policies": 5, "seconds": 1.0, "pymdp_seconds": 0.5},
        {"states": 100, "policies": 25, "seconds": 1.0, "pymdp_seconds": 2.0},
        {"states": 1000, "policies": 5, "seconds": 1.0},  # pymdp not run
    ]}  # fmt: skip
    rows = goals({"pymdp": pymdp, "scaling": scaling})
    compiled = [row for row in rows if "compiled" in row["goal"]]
    assert [(row["measured"], row["met"]) for row in compiled] == [(1.5, True)]
    assert [(row["measured"], row["met"]) for row in rows[-2:]] == [(2.0, True), (0.5, False)]
    assert "10 states x 5 policies" in rows[-1]["goal"]


@pytest.mark.integration
def test_against_benchmark_smoke(tmp_path):
    """This tree against a commit (HEAD here: always in a clone), alternating processes."""
    from benchmarks.bench_against import Config as AgainstConfig
    from benchmarks.bench_against import run as run_against

    results = run_against(
        AgainstConfig(against="HEAD", cases=((1, "exact"),), repeats=1, rounds=1, out=tmp_path)
    )
    row = json.loads((tmp_path / "bench_against.json").read_text())["cases"][0]
    assert row["agents"] == 1 and row["seconds_this_tree"] > 0 and row["seconds_earlier"] > 0
    assert results["earlier"] == results["this_tree"]


@pytest.mark.integration
def test_sophisticated_benchmark_smoke(tmp_path):
    """Both libraries decide once per case; the JSON pairs them (speed only: pymdp's search
    differs where documented, and tests/planning/test_sophisticated.py compares the values)."""
    pytest.importorskip("pymdp")
    from benchmarks.bench_sophisticated import Config as SophisticatedConfig
    from benchmarks.bench_sophisticated import run as run_sophisticated

    results = run_sophisticated(
        SophisticatedConfig(tasks=("maze",), depths=(2,), agents=(1,), repeats=1, out=tmp_path)
    )
    assert [row["library"] for row in results["rows"]] == ["pp_aif", "pymdp"]
    assert results["rows"][0]["nodes"][0] == 1  # one root belief
    (ratio,) = results["ratios"]
    assert ratio["depth"] == 2 and ratio["steady_pp_aif_over_pymdp"] > 0
    assert (tmp_path / "bench_sophisticated.json").is_file()


@pytest.mark.integration
def test_guides_benchmark_smoke(tmp_path):
    """Both objectives fit one sequence to the same F; the batch is within reach of the exact
    evidence (speed only is what the full run adds)."""
    from benchmarks.bench_guides import Config as GuidesConfig
    from benchmarks.bench_guides import run as run_guides

    results = run_guides(
        GuidesConfig(states=(2,), T=6, batch=3, joint_sequences=2, joint_iterations=10,
                     out=tmp_path)
    )  # fmt: skip
    assert [row["method"] for row in results["rows"]] == ["mean_field", "structured"]
    for row in results["rows"]:
        assert abs(row["one_sequence_F_difference"]) < 1e-6
        assert row["batch_converged"] and row["batch_F_minus_exact_max"] > -1e-10
    posterior, prior = results["joint"]
    assert (posterior["chain_start"], prior["chain_start"]) == ("posterior", "prior")
    assert abs(posterior["gap_max"]) < 1e-10 and prior["gap_mean"] >= -1e-10
    assert (tmp_path / "bench_guides.json").is_file()


def test_amortised_benchmark_smoke(tmp_path):
    import pp_aif
    from benchmarks.bench_amortised import Config as AmortisedConfig
    from benchmarks.bench_amortised import run as run_amortised
    from pp_aif.fitting.training import train_estimator

    estimator, _ = train_estimator(
        pp_aif.load_task("bandit"), ("alpha",), simulations=40, trials=4, min_trials=2,
        epochs=1, hidden=4, transforms=1,
    )  # fmt: skip
    path = estimator.save(tmp_path / "estimator.pt")
    results = run_amortised(
        AmortisedConfig(
            estimator=path,
            subjects=3,
            trials=4,
            draws=(5,),
            importance=(20,),
            repeats=1,
            out=tmp_path,
        )  # fmt: skip
    )
    assert [(row["draws"], row["pointwise"], row.get("importance")) for row in results["rows"]] == [
        (5, False, None), (5, True, None), (500, False, 20)
    ]  # fmt: skip
    assert all(row["seconds"] > 0 for row in results["rows"])
    assert (tmp_path / "bench_amortised.json").is_file()

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
    ]
    assert all(row["ess_per_second"] > 0 for row in results["nuts"])
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

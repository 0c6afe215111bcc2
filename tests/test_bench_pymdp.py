"""The pp_aif-vs-pymdp benchmark runs at tiny size and writes its JSON (not a timing test)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pymdp")

from benchmarks.bench_pymdp import Config, run  # noqa: E402


@pytest.mark.integration
def test_pymdp_benchmark_smoke(tmp_path):
    results = run(Config(agents=(1, 2), steps=3, repeats=1, out=tmp_path))
    written = json.loads((tmp_path / "bench_pymdp.json").read_text())
    assert written["rows"] == results["rows"]
    for library in ("pp_aif", "pymdp", "pp_aif compiled"):
        rows = [row for row in written["rows"] if row["library"] == library]
        assert [row["agents"] for row in rows] == [1, 2]
        for row in rows:
            assert row["agent_steps"] == row["agents"] * 3
            for key in ("steady_seconds", "agent_steps_per_second", "first_result_seconds"):
                assert row[key] > 0, (library, key)
    assert [ratio["agents"] for ratio in written["ratios"]] == [1, 2]
    # the same problem: the same q(pi) at the first step of a trial
    assert all(r["first_step_q_pi_max_abs_difference"] < 1e-10 for r in written["ratios"])
    assert written["machine"]["torch_threads"] == 1
    compiled = [row for row in written["rows"] if row["library"] == "pp_aif compiled"]
    assert all(row["same_actions_as_eager"] for row in compiled)
    assert all(r["steady_throughput_compiled_over_pymdp"] > 0 for r in written["ratios"])

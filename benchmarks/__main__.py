"""Every side-by-side benchmark in one run, and the issue's goals checked against it.

``python -m benchmarks --out benchmarks/results`` runs, in this order:

- ``bench_pymdp``: T-maze rollouts of 20 steps for 1, 100 and 1000 agents, pp_aif and pymdp 1.0
  (steady agent-steps per second, and the wall time to the first result, compilation included);
- ``bench_scaling``: one agent step (belief update and policy evaluation) on random models of
  10-1000 states and 5-3125 policies, pp_aif and pymdp, with the fitted slopes of the cost;
- ``bench_fit``: the fitting likelihood's evaluations per second, and NUTS's effective samples
  per second, pp_aif's sampler beside Pyro's;
- ``bench_population``: 30 bandit subjects x 60 trials fitted together by NUTS at the defaults
  (the wall time, R-hat, ESS and the recovery of the parameters).

Each writes its own JSON (``bench_*.json``); this writes ``benchmarks.json``: the goals, the
ratio measured for each in this run and whether it is met. ``--only pymdp,fit`` runs a subset;
``--quick`` runs each at a tiny size (a smoke test: its ratios mean nothing).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks import bench_fit, bench_population, bench_pymdp, bench_scaling
from benchmarks.common import machine, write_results

__all__ = ["BENCHMARKS", "goals", "run"]

BENCHMARKS = ("pymdp", "scaling", "fit", "population")


def _configs(out: Path, quick: bool) -> dict:
    if quick:
        return {
            "pymdp": bench_pymdp.Config(agents=(1, 2), steps=3, repeats=1, out=out),
            "scaling": bench_scaling.Config(states=(3, 4), horizons=(1,), repeats=1, out=out),
            "fit": bench_fit.Config(
                num_trials=3, chains=1, warmup=5, draws=5, batch=4, evaluations=2, out=out
            ),
            "population": bench_population.Config(
                num_subjects=2, num_trials=3, chains=1, warmup=5, draws=5, out=out
            ),
        }
    return {
        "pymdp": bench_pymdp.Config(out=out),
        "scaling": bench_scaling.Config(out=out),
        "fit": bench_fit.Config(out=out),
        "population": bench_population.Config(out=out),
    }


def goals(results: dict) -> list[dict]:
    """The goals of the speed issue, each with what this run measured and whether it is met."""
    rows = []
    if "pymdp" in results:
        for ratio in results["pymdp"]["ratios"]:
            n = ratio["agents"]
            rows.append(
                {
                    "goal": f"T-maze, {n} agent(s): first result >= 10x faster than pymdp",
                    "measured": ratio["first_result_pymdp_over_pp_aif"],
                    "target": 10.0,
                }
            )
            target = {1: 1.0, 100: 1.0, 1000: 3.0}.get(n)
            if target is not None:
                rows.append(
                    {
                        "goal": f"T-maze, {n} agent(s): steady agent-steps/s >= {target:g}x "
                        "pymdp's",
                        "measured": ratio["steady_throughput_pp_aif_over_pymdp"],
                        "target": target,
                    }
                )
                if "steady_throughput_compiled_over_pymdp" in ratio:
                    rows.append(
                        {
                            "goal": f"T-maze, {n} agent(s), compiled steps: steady agent-steps/s "
                            f">= {target:g}x pymdp's",
                            "measured": ratio["steady_throughput_compiled_over_pymdp"],
                            "target": target,
                        }
                    )
    if "fit" in results:
        for row in results["fit"]["nuts"]:
            if row["sampler"] == "pp_aif":
                pyro = next(
                    r
                    for r in results["fit"]["nuts"]
                    if r["sampler"] == "pyro" and r["agent"] == row["agent"]
                )
                rows.append(
                    {
                        "goal": f"NUTS, {row['agent']}: ESS/s at least Pyro's NUTS's",
                        "measured": row["ess_per_second"] / pyro["ess_per_second"],
                        "target": 1.0,
                    }
                )
                if row["agent"] != "no learning":  # issue 16, goal A: learners
                    rows.append(
                        {
                            "goal": f"NUTS, {row['agent']}: at least 50 bulk ESS/s (smallest "
                            "over the 3 parameters; one subject, 4 chains x (500 + 500))",
                            "measured": row["ess_per_second"],
                            "target": 50.0,
                            "unit": "ESS/s",
                        }
                    )
    if "population" in results:  # issue 16, goal B
        row = results["population"]
        config = row["config"]
        rows.append(
            {
                "goal": f"NUTS, {config['num_subjects']} bandit subjects x "
                f"{config['num_trials']} trials together in <= 10 min (600 s / time taken)",
                "measured": row["goal_seconds"] / row["seconds"],
                "target": 1.0,
            }
        )
    if "scaling" in results:
        compared = [r for r in results["scaling"]["rows"] if "pymdp_seconds" in r]
        largest = max(compared, key=lambda r: (r["states"] * r["policies"], r["states"]))
        rows.append(
            {
                "goal": (
                    f"one step, {largest['states']} states x {largest['policies']} policies "
                    "(the largest both ran): as fast as pymdp"
                ),
                "measured": largest["pymdp_seconds"] / largest["seconds"],
                "target": 1.0,
            }
        )
        slowest = min(compared, key=lambda r: r["pymdp_seconds"] / r["seconds"])
        rows.append(
            {
                "goal": "one step, every size both ran: as fast as pymdp (the smallest ratio, "
                f"{slowest['states']} states x {slowest['policies']} policies)",
                "measured": slowest["pymdp_seconds"] / slowest["seconds"],
                "target": 1.0,
            }
        )
    for row in rows:
        row["met"] = bool(row["measured"] >= row["target"])
    return rows


def run(out: Path, only=BENCHMARKS, quick: bool = False) -> dict:
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown or not only:
        raise ValueError(f"--only: {unknown or 'nothing'}; choose from {', '.join(BENCHMARKS)}")
    modules = {
        "pymdp": bench_pymdp,
        "scaling": bench_scaling,
        "fit": bench_fit,
        "population": bench_population,
    }
    configs = _configs(out, quick)
    results, seconds = {}, {}
    for name in BENCHMARKS:
        if name in only:
            print(f"== bench_{name}")
            start = time.perf_counter()
            results[name] = modules[name].run(configs[name])
            seconds[name] = time.perf_counter() - start
    summary = {
        "machine": machine(),
        "quick": quick,
        "seconds": seconds,
        "goals": goals(results),
    }
    print_goals(summary["goals"])
    write_results(summary, out, "benchmarks.json")
    return summary


def print_goals(rows: list[dict]) -> None:
    print("\ngoal" + " " * 90 + "measured     met")
    for row in rows:
        mark = "yes" if row["met"] else "NO"
        unit = row.get("unit", "x")
        print(f"{row['goal']:<94}{row['measured']:>8.2f} {unit:<6} {mark}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    arguments = parser.parse_args(argv)
    only = tuple(name.strip() for name in arguments.only.split(",") if name.strip())
    try:
        run(arguments.out, only, arguments.quick)
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()

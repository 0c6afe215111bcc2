"""Benchmark: batched agents acting in the T-maze (one trial), exact and sampled EFE.

Writes ``<out>/bench_agent.json``: seconds per trial for N agents in one tensor batch, and the
cost per agent-step. Agents are a tensor axis, so the cost per agent should fall as N grows.

Run: ``python -m benchmarks.bench_agent --out benchmarks/results`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.common import best_time, machine, write_results
from pp_aif.agent import AgentSettings
from pp_aif.simulation import simulate
from pp_aif.task import load_task


@dataclass
class Config:
    agents: tuple[int, ...] = (1, 10, 100, 1000, 10000)
    sampled_agents: tuple[int, ...] = (1, 100)
    num_samples: int = 1000
    repeats: int = 3
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("benchmarks/results"))


def run(config: Config) -> dict:
    task = load_task("tmaze")
    steps = task.trial_length
    results = {
        "config": asdict(config),
        "machine": machine(),
        "exact": [],
        "sampled": [],
    }
    for method, sizes in (("exact", config.agents), ("sampled", config.sampled_agents)):
        settings = AgentSettings(efe_method=method, num_samples=config.num_samples)
        for n in sizes:
            seconds, _ = best_time(
                lambda n=n, s=settings: simulate(task, n, 1, config.seed, settings=s),
                config.repeats,
            )
            row = {
                "agents": n,
                "seconds_per_trial": seconds,
                "microseconds_per_agent_step": 1e6 * seconds / (n * steps),
            }
            results[method].append(row)
            print(json.dumps({"method": method, **row}))
    write_results(results, config.out, "bench_agent.json")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Config().out)
    parser.add_argument("--agents", type=int, nargs="+", default=list(Config.agents))
    parser.add_argument("--repeats", type=int, default=Config.repeats)
    arguments = parser.parse_args(argv)
    run(Config(agents=tuple(arguments.agents), repeats=arguments.repeats, out=arguments.out))


if __name__ == "__main__":
    main()

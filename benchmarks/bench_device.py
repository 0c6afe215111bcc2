"""Benchmark: the same work on a chosen device (a GPU when there is one): agents acting, and the
fitting likelihood in batches of parameter draws.

Writes ``<out>/bench_device_<device>.json``:

1. ``agents``: ``pp_aif.simulate`` of N T-maze agents (exact expected free energy) for
   ``trials`` trials of 3 steps, in one tensor batch: seconds and agent-steps per second
   (after one untimed run that warms the device up).
2. ``likelihood``: the learner's action likelihood of one subject's 100 choices (alpha, c, eta:
   the pD recursion, then every trial's beliefs and policy values at once), forward only, for
   batches of B parameter draws in one call: seconds per call and draws per second. Large
   batches are what the grid method and posterior predictive checks use.

On a GPU, timings synchronise the device before the clock stops.

Run: ``python -m benchmarks.bench_device --device cuda --out benchmarks/results``
(``--device cpu`` gives the same table here; see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import pp_aif
from benchmarks.common import machine, write_results
from pp_aif.data import BehaviourData, long_format
from pp_aif.fitting import BehaviourLikelihood

PARAMS = ("alpha", "preference", "learning_rate")


@dataclass
class Config:
    device: str = "cuda"
    agents: tuple[int, ...] = (100, 1000, 10000, 100000)
    trials: int = 2
    draws: tuple[int, ...] = (1, 4, 100, 1000, 10000)
    num_trials: int = 50  # the subject's trials in the likelihood (2 choices each)
    repeats: int = 3
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("benchmarks/results"))


def _timed(function, device: torch.device, repeats: int) -> float:
    """The shortest of ``repeats`` wall-clock times of ``function()``, the device synchronised."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def run(config: Config) -> dict:
    device = torch.device(config.device)
    task = pp_aif.load_task("tmaze")
    results = {
        "config": asdict(config),
        "machine": {
            **machine(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
        "agents": [],
        "likelihood": [],
    }
    on_device = task.to(device)
    pp_aif.simulate(on_device, 10, 1, config.seed)  # warm-up: kernels, allocator
    steps = config.trials * task.trial_length
    for n in config.agents:
        seconds = _timed(
            lambda n=n: pp_aif.simulate(on_device, n, config.trials, config.seed),
            device,
            config.repeats,
        )
        row = {"agents": n, "seconds": seconds, "agent_steps_per_second": n * steps / seconds}
        results["agents"].append(row)
        print(f"{config.device}: {n:>7} agents, {row['agent_steps_per_second']:12,.0f} steps/s")
    record = pp_aif.simulate(task, 1, config.num_trials, config.seed)
    data = BehaviourData.read(long_format(record, task), task).to(device)
    model = on_device.model
    likelihood = BehaviourLikelihood(
        model, on_device.settings, data.observations, data.actions, PARAMS
    )
    for b in config.draws:
        theta = {name: torch.ones(b, 1, dtype=model.dtype, device=device) for name in PARAMS}
        with torch.no_grad():
            likelihood(theta)  # warm-up
            seconds = _timed(lambda theta=theta: likelihood(theta), device, config.repeats)
        row = {"draws": b, "seconds_per_call": seconds, "draws_per_second": b / seconds}
        results["likelihood"].append(row)
        print(f"{config.device}: likelihood, {b:>6} draws a call, {b / seconds:12,.0f} draws/s")
    write_results(results, config.out, f"bench_device_{device.type}.json")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=Config.device)
    parser.add_argument("--out", type=Path, default=Config().out)
    arguments = parser.parse_args(argv)
    run(Config(device=arguments.device, out=arguments.out))


if __name__ == "__main__":
    main()

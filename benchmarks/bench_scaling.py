"""Benchmark: how one agent step's cost grows with states and policies (random models).

Writes ``<out>/bench_scaling.json``. A random model with one factor of S states, one modality of
S outcomes, U = 5 controls, and every policy of depth H: P = 5^H policies (5 to 3125). One
``pp_aif.agent.step`` at the first step of a trial: the belief update (exact filtering) and the
expected free energy of every policy, the policy posterior and an action, for ``agents``
agents in one batch, float64, torch on 1 thread; best of ``repeats``.

The EFE kernel's cost (``pp_aif.ops.efe``) is O(N sum_tau U_tau S (O + S)), where U_tau <= P
is the number of distinct policy prefixes of length tau + 1: here sum_tau U_tau = 5 + 25 + ...
+ 5^H, about 1.25 P. The step's cost should then grow as P at fixed S, and as S^2 (O = S) at
fixed P, once the arithmetic outweighs the fixed cost of a step. The JSON holds each
measurement and the fitted slopes of log time on log P and log S over the largest sizes.

Run: ``python -m benchmarks.bench_scaling --out benchmarks/results`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import pp_aif
from benchmarks.common import best_time, machine, write_results
from pp_aif.agent import AgentSettings, initial_state, step

CONTROLS = 5


@dataclass
class Config:
    states: tuple[int, ...] = (10, 100, 1000)
    horizons: tuple[int, ...] = (1, 2, 3, 4, 5)
    agents: int = 1
    repeats: int = 3
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("benchmarks/results"))


def random_model(S: int, horizon: int, rng: np.random.Generator) -> pp_aif.GenerativeModel:
    A = rng.dirichlet(np.ones(S), size=S).T  # (O, S), columns sum to 1
    B = np.stack([rng.dirichlet(np.ones(S), size=S).T for _ in range(CONTROLS)], -1)
    C = rng.normal(size=S)
    policies = pp_aif.construct_policies([CONTROLS], horizon)
    return pp_aif.GenerativeModel([A], [B], C=[C], policies=policies)


def _slope(x, y) -> float:
    """Least-squares slope of log y on log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def run(config: Config) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(config.seed)
    rows = []
    try:
        for S in config.states:
            for H in config.horizons:
                model = random_model(S, H, rng)
                settings = AgentSettings(horizon=H)
                observation = torch.zeros(config.agents, 1, dtype=torch.int64)

                def one_step(model=model, settings=settings, observation=observation, H=H):
                    state = initial_state(model, config.agents)
                    return step(model, settings, state, observation, num_steps=H + 1)

                one_step()  # warm-up (and the policy tree, cached per policy set)
                seconds, _ = best_time(one_step, config.repeats)
                P = model.policies.shape[0]
                rows.append({"states": S, "horizon": H, "policies": P, "seconds": seconds})
                print(f"S = {S:>5}, H = {H}, P = {P:>5}: {1e3 * seconds:9.2f} ms")
    finally:
        torch.set_num_threads(threads)
    largest_S = max(config.states)
    by_P = [r for r in rows if r["states"] == largest_S and r["policies"] >= 125]
    largest_P = max(r["policies"] for r in rows)
    by_S = [r for r in rows if r["policies"] == largest_P and r["states"] >= 100]
    slopes = {
        "log_time_on_log_policies_at_largest_S": (
            _slope([r["policies"] for r in by_P], [r["seconds"] for r in by_P])
            if len(by_P) > 1
            else math.nan
        ),
        "log_time_on_log_states_at_largest_P": (
            _slope([r["states"] for r in by_S], [r["seconds"] for r in by_S])
            if len(by_S) > 1
            else math.nan
        ),
    }
    results = {
        "config": {**asdict(config), "out": str(config.out)},
        "machine": {**machine(), "torch_threads": 1},
        "rows": rows,
        "slopes": slopes,
    }
    print(
        f"slopes of log time: {slopes['log_time_on_log_policies_at_largest_S']:.2f} on log P "
        f"(expected 1), {slopes['log_time_on_log_states_at_largest_P']:.2f} on log S "
        "(expected 2)"
    )
    write_results(results, config.out, "bench_scaling.json")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Config().out)
    arguments = parser.parse_args(argv)
    run(Config(out=arguments.out))


if __name__ == "__main__":
    main()

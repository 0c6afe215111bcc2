"""Benchmark: the SVI guides (``infer_states(method="mean_field" | "structured")``) fitted by
L-BFGS on their closed-form F against the same fit on Pyro's ``TraceEnum_ELBO`` (issue 19).

Random models of one factor with S = 2, 3, 4 states (2 controls, 3 outcomes), sequences of
``T`` = 50 steps sampled from them. For each guide and S: the seconds of one sequence by each
objective (and the largest difference of their F), and of a batch of ``batch`` sequences by
the closed form (each sequence leaving the batch once converged; Pyro's objective is timed on
one sequence only, its batch would take minutes). Then ``joint``: the structured guide on a
model of 27 joint states (3 factors of 3 states, the inference-schemes experiment's random
model), ``joint_sequences`` sequences of T = 20, from each ``chain_start`` ("posterior", the
default: its closed-form optimum; "prior": the prior over paths): seconds, iterations and the
largest and mean gap F - (-ln p(o)). Written to ``<out>/bench_guides.json``.

Run: ``python -m benchmarks.bench_guides --out benchmarks/results`` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import pp_aif
from benchmarks.common import machine, write_results
from pp_aif.errors import ConvergenceWarning


@dataclass
class Config:
    states: tuple[int, ...] = (2, 3, 4)
    T: int = 50
    batch: int = 100
    methods: tuple[str, ...] = ("mean_field", "structured")
    joint_sequences: int = 16
    joint_iterations: int = 1000  # L-BFGS's limit (SVISettings.num_steps) in the joint case
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("benchmarks/results"))


def _case(S: int, T: int, N: int, rng):
    """A random model (one factor of S states) and N sequences of T steps from it."""
    A = rng.dirichlet(np.ones(3), size=S).T  # (3, S)
    B = np.stack([rng.dirichlet(np.ones(S), size=S).T for _ in range(2)], -1)  # (S, S, 2)
    D = rng.dirichlet(np.ones(S))
    model = pp_aif.GenerativeModel([A], [B], D=[D])
    observations = np.zeros((N, T, 1), dtype=np.int64)
    actions = rng.integers(0, 2, size=(N, T - 1, 1))
    for n in range(N):
        s = rng.choice(S, p=D)
        for t in range(T):
            observations[n, t, 0] = rng.choice(3, p=A[:, s])
            if t < T - 1:
                s = rng.choice(S, p=B[:, s, actions[n, t, 0]])
    return model, observations, actions


def _fit(model, observations, actions, method, objective):
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        beliefs = pp_aif.infer_states(
            model, observations, actions, method=method, settings={"objective": objective}
        )
    return time.perf_counter() - start, beliefs, len(caught)


def _joint(config: Config, rng) -> list[dict]:
    """The structured guide at 27 joint states and T = 20, from either start."""
    from experiments.inference_schemes import random_model
    from pp_aif.programs import sample_sequences

    model = random_model(rng, 3, 3)
    actions = torch.as_tensor(rng.integers(0, 2, size=(config.joint_sequences, 19, 3)))
    observations, _ = sample_sequences(model, actions, seed=config.seed)
    exact = pp_aif.infer_states(model, observations, actions)
    rows = []
    for start in ("posterior", "prior"):
        began = time.perf_counter()
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always", ConvergenceWarning)
            beliefs = pp_aif.infer_states(
                model, observations, actions, method="structured",
                settings={"chain_start": start, "num_steps": config.joint_iterations},
            )  # fmt: skip
        gap = beliefs.free_energy + exact.log_evidence
        rows.append(
            {
                "chain_start": start,
                "joint_states": 27,
                "T": 20,
                "sequences": config.joint_sequences,
                "seconds": time.perf_counter() - began,
                "iterations": beliefs.optimisation.iterations,
                "converged": beliefs.optimisation.converged,
                "gap_max": float(gap.max()),
                "gap_mean": float(gap.mean()),
            }
        )
        print(
            f"structured, 27 joint states, T = 20, from the {start}: {rows[-1]['seconds']:.2f} s, "
            f"gap max {rows[-1]['gap_max']:.2e}, mean {rows[-1]['gap_mean']:.2e}",
            flush=True,
        )
    return rows


def run(config: Config) -> dict:
    torch.set_num_threads(1)
    rng = np.random.default_rng(config.seed)
    rows = []
    for S in config.states:
        model, observations, actions = _case(S, config.T, config.batch, rng)
        for method in config.methods:
            one_closed, closed, _ = _fit(model, observations[0], actions[0], method, "closed_form")
            one_pyro, pyro, _ = _fit(model, observations[0], actions[0], method, "pyro")
            many, batch, warned = _fit(model, observations, actions, method, "closed_form")
            exact = pp_aif.infer_states(model, observations, actions)
            row = {
                "method": method,
                "states": S,
                "T": config.T,
                "one_sequence_seconds_closed_form": one_closed,
                "one_sequence_seconds_pyro": one_pyro,
                "one_sequence_F_difference": float(closed.free_energy - pyro.free_energy),
                "batch": config.batch,
                "batch_seconds_closed_form": many,
                "batch_iterations": batch.optimisation.iterations,
                "batch_converged": batch.optimisation.converged,
                "batch_warnings": warned,
                "batch_F_minus_exact_max": float((batch.free_energy + exact.log_evidence).max()),
            }
            rows.append(row)
            print(
                f"{method:>10} S={S}: one sequence {one_closed:6.2f} s (Pyro's ELBO {one_pyro:6.2f}"
                f" s, F differs by {row['one_sequence_F_difference']:+.1e}); {config.batch} "
                f"sequences {many:6.2f} s",
                flush=True,
            )
    results = {
        "config": asdict(config),
        "machine": machine(),
        "rows": rows,
        "joint": _joint(config, rng) if config.joint_sequences else [],
    }
    write_results(results, config.out, "bench_guides.json")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--batch", type=int, default=Config.batch)
    arguments = parser.parse_args(argv)
    run(Config(batch=arguments.batch, out=arguments.out))


if __name__ == "__main__":
    main()

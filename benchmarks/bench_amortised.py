"""Benchmark: amortised fits of many subjects at once (issue 20's speed goal).

A trained posterior estimator (by default the one ``experiments/amortised_fitting.py`` saves:
the bandit's pA learner, alpha and learning_rate) fits ``subjects`` simulated subjects of
``trials`` trials by ``fit(method="amortised")``, ``draws`` draws each, without and with the
pointwise log-likelihood (``pointwise=``), best of ``repeats``; then reweighed by importance
sampling with ``importance`` proposals a subject (``fit(importance=...)``, 500 draws kept, one
run: each proposal is one evaluation of the agent's likelihood); torch on 1 thread. Written to
``<out>/bench_amortised.json``.

Run: ``python -m benchmarks.bench_amortised --out benchmarks/results`` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import pp_aif
from benchmarks.common import machine, write_results
from pp_aif.data import BehaviourData, long_format
from pp_aif.fitting import fit, prior_draws
from pp_aif.fitting.amortised import PosteriorEstimator
from pp_aif.fitting.predictive import simulate_subjects


@dataclass
class Config:
    estimator: Path = field(
        default_factory=lambda: Path("experiments/results/amortised_fitting_estimator.pt")
    )
    subjects: int = 1000
    trials: int = 60
    draws: tuple[int, ...] = (100, 500)
    importance: tuple[int, ...] = (500,)
    repeats: int = 2
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("benchmarks/results"))


def run(config: Config) -> dict:
    torch.set_num_threads(1)
    estimator = PosteriorEstimator.load(config.estimator)
    task = pp_aif.load_task(estimator.signature["task"])
    params = tuple(estimator.signature["params"])
    truth = prior_draws(params, config.subjects, torch.Generator().manual_seed(config.seed))
    start = time.perf_counter()
    record = simulate_subjects(task, truth, config.trials, config.seed)
    data = BehaviourData.read(long_format(record, task), task)
    prepared = time.perf_counter() - start
    rows = []
    for draws in config.draws:
        for pointwise in (False, True):
            best = float("inf")
            for _ in range(config.repeats if not pointwise else 1):
                start = time.perf_counter()
                fit(
                    task, data, params, method="amortised", estimator=estimator, draws=draws,
                    pointwise=pointwise,
                )  # fmt: skip
                best = min(best, time.perf_counter() - start)
            rows.append({"draws": draws, "pointwise": pointwise, "seconds": best})
            print(
                f"{config.subjects} subjects x {config.trials} trials, {draws} draws"
                f"{' with the pointwise log-likelihood' if pointwise else ''}: {best:.2f} s",
                flush=True,
            )
    for proposals in config.importance:
        start = time.perf_counter()
        with warnings.catch_warnings(record=True):  # the Pareto k are kept in the row
            warnings.simplefilter("always")
            weighed = fit(
                task, data, params, method="amortised", estimator=estimator, draws=500,
                importance=proposals, pointwise=False,
            )  # fmt: skip
        seconds = time.perf_counter() - start
        k = weighed.attrs["importance_pareto_k"]
        rows.append(
            {"draws": 500, "pointwise": False, "importance": proposals, "seconds": seconds,
             "pareto_k_max": float(max(k)), "pareto_k_above_0.7": sum(x > 0.7 for x in k)}
        )  # fmt: skip
        print(
            f"{config.subjects} subjects x {config.trials} trials, {proposals} proposals a "
            f"subject reweighed: {seconds:.2f} s",
            flush=True,
        )
    results = {
        "config": asdict(config),
        "machine": machine(),
        "task": task.name,
        "params": list(params),
        "simulating_and_reading_seconds": prepared,
        "rows": rows,
    }
    write_results(results, config.out, "bench_amortised.json")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", type=Path, default=Config().estimator)
    parser.add_argument("--subjects", type=int, default=Config.subjects)
    parser.add_argument(
        "--importance", default="500", help="proposals a subject, comma-separated (0: none)"
    )
    parser.add_argument("--out", type=Path, default=Config().out)
    args = parser.parse_args(argv)
    importance = tuple(int(x) for x in args.importance.split(",") if int(x) > 0)
    run(Config(estimator=args.estimator, subjects=args.subjects, importance=importance,
               out=args.out))  # fmt: skip


if __name__ == "__main__":
    main()

"""Benchmark: many bandit subjects fitted together by NUTS (issue 16's goal B).

``num_subjects`` subjects play the 3-armed bandit (arms paying 0.8, 0.5, 0.2; the agent learns
its reward probabilities pA between trials) for ``num_trials`` trials of one choice, each with
its own parameters drawn from the fit's priors (``pp_aif.fitting.prior_draws``; the others at
the task's defaults: no forgetting). They are fitted by one call of ``pp_aif.fit`` at its
defaults (NUTS, 4 chains x (500 + 500), no population model: each subject's own chains, step
size and metric, all in one batch). Written to ``<out>/bench_population.json``: the wall time,
the batched potential calls, each subject's leapfrog steps (the run lasts as long as its
longest chain), the largest R-hat and smallest bulk ESS, divergences, and the recovery (r of
the truths with the posterior means, on the log scale; 90% coverage).

Run: ``python -m benchmarks.bench_population --out benchmarks/results`` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import arviz as az
import numpy as np
import torch

import pp_aif
from benchmarks.common import machine, write_results
from pp_aif.data import BehaviourData, long_format
from pp_aif.fitting import fit, prior_draws
from pp_aif.fitting.predictive import simulate_subjects


@dataclass
class Config:
    num_subjects: int = 30
    num_trials: int = 60
    params: tuple[str, ...] = ("alpha", "learning_rate")
    chains: int = 4
    warmup: int = 500
    draws: int = 500
    threads: int = 1
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("benchmarks/results"))


def _recovery(truth: dict, inference) -> dict:
    rows = {}
    for name, true in truth.items():
        draws = inference.posterior[name].values  # (C, D, N)
        flat = draws.reshape(-1, draws.shape[-1])
        low, high = np.quantile(flat, [0.05, 0.95], axis=0)
        true = true.numpy()
        rows[name] = {
            "r_log": float(np.corrcoef(np.log(true), np.log(flat).mean(0))[0, 1]),
            "coverage_90": float(((true >= low) & (true <= high)).mean()),
        }
    return rows


def run(config: Config) -> dict:
    torch.set_num_threads(config.threads)
    task = pp_aif.load_task("bandit")
    truth = prior_draws(
        config.params, config.num_subjects, torch.Generator().manual_seed(config.seed)
    )
    record = simulate_subjects(task, truth, config.num_trials, config.seed)
    data = BehaviourData.read(long_format(record, task), task)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inference = fit(
            task,
            data,
            config.params,
            chains=config.chains,
            warmup=config.warmup,
            draws=config.draws,
            seed=config.seed,
        )
    seconds = time.perf_counter() - start
    names = list(config.params)
    rhat = az.rhat(inference, var_names=names)
    ess = az.ess(inference, var_names=names)
    leapfrogs = inference.sample_stats["n_steps"].values.sum(1)  # (C, N): sampling only
    results = {
        "config": asdict(config),
        "machine": machine(),
        "seconds": seconds,
        "goal_seconds": 600.0,
        "gradient_calls": inference.attrs.get("gradients"),
        "likelihood": inference.attrs.get("likelihood", ""),
        "rhat_max": max(float(rhat[name].max()) for name in names),
        "ess_bulk_min": min(float(ess[name].min()) for name in names),
        "divergences": int(inference.sample_stats["diverging"].values.sum()),
        "mean_tree_depth": float(inference.sample_stats["tree_depth"].values.mean()),
        "sampling_leapfrogs_per_subject": leapfrogs.max(0).tolist(),
        "recovery": _recovery(truth, inference),
        "warnings": [str(w.message) for w in caught],
    }
    print(
        f"{config.num_subjects} bandit subjects x {config.num_trials} trials, "
        f"{', '.join(names)}: {seconds:.0f} s (goal <= 600 s), R-hat <= "
        f"{results['rhat_max']:.3f}, bulk ESS >= {results['ess_bulk_min']:.0f}, "
        f"{results['divergences']} divergences, {results['gradient_calls']} batched calls"
    )
    for name, row in results["recovery"].items():
        print(f"  {name}: r (log) {row['r_log']:.3f}, 90% coverage {row['coverage_90']:.2f}")
    write_results(results, config.out, "bench_population.json")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Config()
    for name in ("num_subjects", "num_trials", "chains", "warmup", "draws", "threads", "seed"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    parser.add_argument("--params", default=",".join(defaults.params))
    parser.add_argument("--out", type=Path, default=defaults.out)
    args = parser.parse_args(argv)
    args.params = tuple(name.strip() for name in args.params.split(",") if name.strip())
    run(Config(**vars(args)))


if __name__ == "__main__":
    main()

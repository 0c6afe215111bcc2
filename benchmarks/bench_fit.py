"""Benchmark: the fitting likelihood (evaluations per second) and NUTS effective samples per second.

One simulated subject on SPM's T-maze (the agent learns its context prior pD between trials),
``num_trials`` trials of two choices each (100 choices by default). Written to
``<out>/bench_fit.json``:

1. ``likelihood``: evaluations per second of the action likelihood, forward only and forward with
   the gradient, for (a) an agent that does not learn (gamma, alpha, preference: the policy
   values are computed once and the likelihood is a closed form), and (b) the learning agent
   (alpha, preference, learning_rate: the pD recursion over trials, then beliefs and policy values
   of all trials at once). Also with ``batch`` parameter draws in one call (per draw).
2. ``sampler_cost``: our NUTS alone, on a Gaussian potential: its own seconds per call.
3. ``nuts``: NUTS on the behavioural program of each agent (the learner: alpha, preference and
   learning_rate; the agent without learning: gamma, alpha and preference; the bandit's pA
   learner, one subject with as many choices: alpha, learning_rate and preference), ``chains`` x
   (``warmup`` + ``draws``), by ``pp_aif.fit`` (all chains at once) and by Pyro's NUTS (chains
   in turn): wall time, the smallest bulk ESS over the parameters, and ESS per second.

Run: ``python -m benchmarks.bench_fit --out benchmarks/results`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import arviz as az
import torch
from pp_aif.tasks.tmaze import without_learning

import pp_aif
from benchmarks.common import best_time, machine, write_results
from pp_aif.data import BehaviourData, long_format
from pp_aif.fitting import BehaviourLikelihood, fit
from pp_aif.fitting.fit import behavioural_program

LEARNING = ("alpha", "preference", "learning_rate")
STATIC = ("gamma", "alpha", "preference")
BANDIT = ("alpha", "learning_rate", "preference")


@dataclass
class Config:
    num_trials: int = 50
    chains: int = 4
    warmup: int = 500
    draws: int = 500
    #: "pp_aif": ``fit(method="nuts")``, all chains at once; "pyro": Pyro's NUTS on the same
    #: program, chains in turn (the baseline)
    samplers: tuple[str, ...] = ("pp_aif", "pyro")
    batch: int = 1000
    evaluations: int = 200
    threads: int = 1
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("benchmarks/results"))


def subject(config: Config):
    """The T-maze (learning, and a copy without pD) and one simulated subject's data."""
    task = pp_aif.load_task("tmaze")
    settings = dataclasses.replace(task.settings, action_precision=4.0)
    task = dataclasses.replace(task, settings=settings)
    record = pp_aif.simulate(task, 1, config.num_trials, config.seed)
    data = BehaviourData.read(long_format(record, task), task)
    return task, without_learning(task), data


def bandit_subject(config: Config):
    """The bandit whose agent learns pA (fitted by the count recursion: it sees which arm it
    pulled) and one simulated subject: 2 * num_trials trials of one choice each (the same number
    of choices as the T-maze subject)."""
    task = pp_aif.load_task("bandit")
    settings = dataclasses.replace(task.settings, action_precision=3.0, learning_rate=1.0)
    task = dataclasses.replace(task, settings=settings)
    record = pp_aif.simulate(task, 1, 2 * config.num_trials, config.seed)
    return task, BehaviourData.read(long_format(record, task), task)


def _rate(function, evaluations: int) -> float:
    seconds, _ = best_time(lambda: [function() for _ in range(evaluations)], 3)
    return evaluations / seconds


def likelihood_rates(config: Config, task, static, data) -> list[dict]:
    rows = []
    for label, which, params in (
        ("no learning", static, STATIC),
        ("learning pD", task, LEARNING),
    ):
        likelihood = BehaviourLikelihood(
            which.model, which.settings, data.observations, data.actions, params
        )
        one = {name: torch.ones(1, dtype=torch.float64, requires_grad=True) for name in params}
        many = {name: torch.ones(config.batch, 1, dtype=torch.float64) for name in params}

        def gradient(likelihood=likelihood, one=one):
            torch.autograd.grad(likelihood(one).sum(), list(one.values()))

        with torch.no_grad():
            forward = _rate(
                lambda likelihood=likelihood, one=one: likelihood(one), config.evaluations
            )
            batched = config.batch * _rate(
                lambda likelihood=likelihood, many=many: likelihood(many), 5
            )
        rows.append(
            {
                "agent": label,
                "params": list(params),
                "choices": int(data.actions.shape[1] * data.actions.shape[2]),
                "forward_per_second": forward,
                "gradient_per_second": _rate(gradient, config.evaluations),
                "batched_forward_per_second": batched,
                "batch": config.batch,
            }
        )
        print(
            f"{label:>12}: {forward:8.0f} evaluations/s, {rows[-1]['gradient_per_second']:7.0f} "
            f"with gradient, {batched:9.0f}/s in batches of {config.batch} draws"
        )
    return rows


def _pyro_nuts(task, data, params, config: Config):
    """Pyro's NUTS on the same behavioural program, chains one after another (its default
    when chains outnumber the spare cores): {name: (C, D, N)}, divergences."""
    import numpy as np
    import pyro

    _, program = behavioural_program(task, data, params, None, task.settings)
    per_chain, divergences = [], 0
    for chain in range(config.chains):
        pyro.set_rng_seed(config.seed + chain)
        kernel = pyro.infer.NUTS(program, full_mass=len(params) <= 12)
        mcmc = pyro.infer.MCMC(
            kernel, num_samples=config.draws, warmup_steps=config.warmup, disable_progbar=True
        )
        mcmc.run()
        per_chain.append({name: value[:, :, 0, 0] for name, value in mcmc.get_samples().items()})
        found = mcmc.diagnostics().get("divergences", {}).values()
        divergences += sum(int((np.asarray(i) < config.draws).sum()) for i in found)
    draws = {name: np.stack([c[name].numpy() for c in per_chain]) for name in params}
    return az.from_dict(posterior=draws), divergences


def nuts_rates(config: Config, task, static, data) -> list[dict]:
    rows = []
    bandit, bandit_data = bandit_subject(config)
    cases = (
        ("learning pD", task, LEARNING, data),
        ("no learning", static, STATIC, data),
        ("learning pA (bandit)", bandit, BANDIT, bandit_data),
    )
    for label, which, params, data in cases:
        for sampler in config.samplers:
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if sampler == "pp_aif":
                    inference = fit(
                        which,
                        data,
                        params,
                        chains=config.chains,
                        warmup=config.warmup,
                        draws=config.draws,
                        seed=config.seed,
                    )
                    divergences = int(inference.sample_stats["diverging"].values.sum())
                else:
                    inference, divergences = _pyro_nuts(which, data, params, config)
            seconds = time.perf_counter() - start
            ess = az.ess(inference, var_names=list(params))
            lowest = min(float(ess[name].min()) for name in params)
            rows.append(
                {
                    "agent": label,
                    "sampler": sampler,
                    "params": list(params),
                    "chains": config.chains,
                    "warmup": config.warmup,
                    "draws": config.draws,
                    "seconds": seconds,
                    "ess_bulk_min": lowest,
                    "ess_per_second": lowest / seconds,
                    "divergences": divergences,
                    "gradient_calls": inference.attrs.get("gradients"),
                    "warnings": [str(w.message) for w in caught if "fit:" in str(w.message)],
                }
            )
            print(
                f"NUTS, {label}, {sampler}: {seconds:.0f} s, smallest bulk ESS {lowest:.0f}, "
                f"{lowest / seconds:.1f} ESS/s, {divergences} divergences"
            )
    return rows


def sampler_cost(config: Config) -> dict:
    """NUTS's own cost per batched call: ``nuts`` on a 3-dimensional Gaussian potential (the
    bandit learner's posterior correlation of ln alpha and ln c, -0.89), as the fits run it
    (chains x (warmup + draws), dense metric): seconds per call, calls per iteration."""
    from pp_aif.fitting.nuts import nuts

    covariance = torch.tensor(
        [[1.0, -0.89, 0.3], [-0.89, 1.0, 0.0], [0.3, 0.0, 1.0]], dtype=torch.float64
    )
    precision = torch.linalg.inv(covariance)
    calls = [0]

    def potential(z):
        calls[0] += 1
        return 0.5 * ((z @ precision) * z).sum(-1)

    start = time.perf_counter()
    nuts(
        potential, torch.zeros(config.chains, 3, dtype=torch.float64), config.draws,
        config.warmup, seed=config.seed, dense=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    iterations = config.warmup + config.draws
    row = {
        "seconds": seconds,
        "calls": calls[0],
        "seconds_per_call": seconds / calls[0],
        "calls_per_iteration": calls[0] / iterations,
    }
    print(
        f"NUTS alone (Gaussian potential): {row['seconds_per_call'] * 1e3:.2f} ms a call, "
        f"{row['calls_per_iteration']:.1f} calls an iteration"
    )
    return row


def run(config: Config) -> dict:
    torch.set_num_threads(config.threads)
    task, static, data = subject(config)
    results = {
        "config": asdict(config),
        "machine": machine(),
        "likelihood": likelihood_rates(config, task, static, data),
        "sampler_cost": sampler_cost(config),
        "nuts": nuts_rates(config, task, static, data),
    }
    write_results(results, config.out, "bench_fit.json")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Config().out)
    parser.add_argument("--trials", type=int, default=Config().num_trials)
    args = parser.parse_args(argv)
    run(Config(out=args.out, num_trials=args.trials))


if __name__ == "__main__":
    main()

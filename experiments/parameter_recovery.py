"""Parameter recovery on the T-maze with learning: simulate subjects, fit them, compare.

Subjects are simulated on SPM's T-maze (the agents learn the context prior pD between trials)
in a world whose reward is on the left in ``context_bias`` of the trials, so that learning
shows: agents visit the cue early on and go straight to the left arm once they have learned.
Each subject's parameters are drawn from the fit's own priors, and all subjects are fitted
together by NUTS (independent subjects in one plate). Reported per parameter: the correlation of
the true values with the posterior means, the coverage of the central 90% intervals, and the
posterior z-scores; and a posterior predictive check (choice rates per block of trials).

Fitting: ``method="grid"`` (the default) is the exact posterior of each subject's two
parameters by quadrature (``pp_aif.fit(method="grid")``); ``--method nuts`` samples the same
posterior by NUTS, a group's subjects in one plate (at 60 trials the two give the same
correlations to within 0.005; the docs record both). The subjects are fitted in groups of
``subjects_per_job``, each group a Dask job (``pp_aif.fitting.fanout``): on a local cluster by
default, on an existing one with ``--scheduler ADDRESS``. Each group's result is kept under
``<out>/parameter_recovery.jobs/`` as it finishes, and a rerun fits only the groups not there.

Which parameters can be fitted together: with policies one step long, q(pi) and p(u) depend on
gamma and alpha only through their product, and here the second move follows a one-step policy;
at the first move gamma shapes q(pi) over two-step policies, but weakly. The preference scale c
and alpha trade off too: after the cue, the arm chosen depends on alpha * gamma * c alone.
``identifiability`` fits (gamma, alpha) and (alpha, c) to a few subjects and reports the
posterior correlations of their logs (about -0.95 and -0.7), so the experiment holds gamma at 1
and c at 1 (the task's own preferences) and fits alpha and the learning rate eta, which act on
different parts of behaviour: the precision of every choice, and the speed at which the cue
stops being visited. Parameters are reported on the log scale as well as the natural one: they
live there (their priors and the sampler do).

Run: ``python experiments/parameter_recovery.py --out experiments/results`` (JSON + figures).
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pp_aif.tasks.tmaze import with_context_bias  # noqa: E402

import pp_aif  # noqa: E402
from pp_aif.atomic import save_figure, write_json  # noqa: E402
from pp_aif.data import BehaviourData, long_format  # noqa: E402
from pp_aif.fitting import fit, prior_draws  # noqa: E402
from pp_aif.fitting.fanout import fit_subjects  # noqa: E402
from pp_aif.fitting.predictive import (  # noqa: E402
    choice_rates,
    posterior_predictive,
    simulate_subjects,
)
from pp_aif.jobs import timing_note  # noqa: E402
from pp_aif.plots import plot_choice_rates, plot_recovery  # noqa: E402

CUE, LEFT, RIGHT = 3, 1, 2


@dataclass
class Config:
    num_subjects: int = 50
    num_trials: int = 200
    method: str = "grid"  # the exact posterior by quadrature; "nuts" samples it
    context_bias: float = 0.8
    params: tuple[str, ...] = ("alpha", "learning_rate")
    chains: int = 2
    warmup: int = 300
    draws: int = 300
    blocks: int = 4
    grid_points: int = 61
    predictive_draws: int = 50
    seed: int = 0
    threads: int = 1
    subjects_per_job: int = 10  # the fits run as Dask jobs of this many subjects
    scheduler: str | None = None  # None: a local cluster; an address; "inline": no Dask
    workers: int | None = None  # the local cluster's processes (default: one per core)
    out: Path = field(default_factory=lambda: Path("experiments/results"))


def biased_tmaze(bias: float):
    """SPM's T-maze whose world puts the reward on the left in ``bias`` of the trials."""
    return with_context_bias(pp_aif.load_task("tmaze"), bias)


def recovery(truth: dict, inference) -> dict:
    """Per parameter: r of truth with posterior means (log scale too), 90% coverage, z-scores."""
    result = {}
    for name, true in truth.items():
        draws = inference.posterior[name].values.reshape(-1, true.shape[0])  # (C * D, N)
        mean = draws.mean(0)
        low, high = np.quantile(draws, [0.05, 0.95], axis=0)
        true = true.numpy()
        log_draws = np.log(draws)
        z = (np.log(true) - log_draws.mean(0)) / log_draws.std(0)
        result[name] = {
            "r": float(np.corrcoef(true, mean)[0, 1]),
            "r_log": float(np.corrcoef(np.log(true), log_draws.mean(0))[0, 1]),
            "coverage_90": float(((true >= low) & (true <= high)).mean()),
            "mean_z": float(z.mean()),
            "sd_z": float(z.std()),
            "true": true.tolist(),
            "posterior_mean": mean.tolist(),
            "interval_90": [low.tolist(), high.tolist()],
        }
    return result


def _sampler(config: Config) -> dict:
    """fit's arguments for the configured method: the grid draws as many as the chains do."""
    if config.method == "grid":
        return {
            "method": "grid",
            "draws": config.chains * config.draws,
            "grid_points": config.grid_points,
            "width": 7.0,
        }
    return {
        "method": config.method,
        "chains": config.chains,
        "warmup": config.warmup,
        "draws": config.draws,
    }


def posterior_correlations(inference, params) -> dict:
    """The median over subjects of each pair's posterior correlation, on the log scale."""
    N = inference.posterior.sizes["subject"]
    logs = {name: np.log(inference.posterior[name].values.reshape(-1, N)) for name in params}
    pairs = {}
    for i, a in enumerate(params):
        for b in params[i + 1 :]:
            per_subject = [np.corrcoef(logs[a][:, n], logs[b][:, n])[0, 1] for n in range(N)]
            pairs[f"{a}:{b}"] = float(np.median(per_subject))
    return pairs


def identifiability(config: Config, task, data: BehaviourData, num_subjects: int = 5) -> dict:
    """Pairs that trade off: (gamma, alpha) and (alpha, preference), each fitted (with the
    learning rate fixed at the agent's own) to the first few subjects; the median over subjects
    of the posterior correlation of their logs, and of their sds."""
    n = min(num_subjects, data.num_subjects)
    few = data.subjects_slice(0, n)
    result = {"subjects": n}
    for pair in (("gamma", "alpha"), ("alpha", "preference")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pp_aif.errors.ConvergenceWarning)
            inference = fit(task, few, pair, seed=config.seed + 1, **_sampler(config))
        logs = [np.log(inference.posterior[name].values.reshape(-1, n)) for name in pair]
        correlations = [np.corrcoef(logs[0][:, i], logs[1][:, i])[0, 1] for i in range(n)]
        result[":".join(pair)] = {
            "correlation_of_logs": float(np.median(correlations)),
            "sd_logs": [float(np.median(x.std(0))) for x in logs],
            "sd_log_product": float(np.median((logs[0] + logs[1]).std(0))),
        }
    return result


def run(config: Config) -> dict:
    torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    task = biased_tmaze(config.context_bias)
    truth = prior_draws(config.params, config.num_subjects, generator)
    simulated = simulate_subjects(task, truth, config.num_trials, config.seed)
    data = BehaviourData.read(long_format(simulated, task), task)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pp_aif.errors.ConvergenceWarning)
        inference = fit_subjects(
            task,
            data,
            config.params,
            store=config.out / "parameter_recovery.jobs",
            subjects_per_job=config.subjects_per_job,
            scheduler=config.scheduler,
            workers=config.workers,
            announce=print,  # where to watch the jobs: the Dask dashboard
            seed=config.seed,
            **_sampler(config),
        )
    seconds = time.perf_counter() - start
    predicted = posterior_predictive(
        task, inference, config.num_trials, num_draws=config.predictive_draws, seed=config.seed
    )
    num_controls = task.model.num_controls
    observed_rates = choice_rates(data.actions.numpy(), num_controls, blocks=config.blocks)
    predicted_rates = choice_rates(
        predicted.action.values[..., :-1, :], num_controls, blocks=config.blocks
    )
    checks = _predictive_summary(observed_rates, predicted_rates)
    jobs = {
        "computed": int(inference.attrs["jobs_computed"]),
        "resumed": int(inference.attrs["jobs_resumed"]),
    }
    results = {
        "config": asdict(config),
        "recovery": recovery(truth, inference),
        "posterior_correlations": posterior_correlations(inference, config.params),
        "identifiability": identifiability(config, task, data),
        "posterior_predictive": checks,
        "fit_seconds": seconds,
        "jobs": jobs,  # a rerun reads finished jobs from the store: its time is not a fit's
        "fit_seconds_measures": timing_note(jobs["computed"], jobs["resumed"]),
        "divergences": int(inference.sample_stats["diverging"].values.sum()),
        "warnings": [str(w.message) for w in caught],
    }
    config.out.mkdir(parents=True, exist_ok=True)
    N = config.num_subjects
    draws = {name: inference.posterior[name].values.reshape(-1, N) for name in config.params}
    figure = plot_recovery({name: value.numpy() for name, value in truth.items()}, draws)
    save_figure(figure, config.out / "parameter_recovery.png", dpi=110)
    figure = plot_choice_rates(
        {label: c["observed"] for label, c in checks.items()},
        {label: c["draws"] for label, c in checks.items()},
        title="first move per block of trials: data vs posterior predictive",
    )
    save_figure(figure, config.out / "parameter_recovery_ppc.png", dpi=110)
    for c in checks.values():
        del c["draws"]
    write_json(config.out / "parameter_recovery.json", results)
    return results


def _predictive_summary(observed, predicted) -> dict:
    """The first move's rates (cue, left, right) per block: the data's mean over subjects, and
    the predicted mean with its 90% interval over posterior draws (of the subjects' mean)."""
    first = {"cue": CUE, "left": LEFT, "right": RIGHT}
    summary = {}
    for label, control in first.items():
        data_rate = observed.sel(factor=0).isel(step=0, control=control).mean("dim_0").values
        draws = predicted.sel(factor=0).isel(step=0, control=control).mean("dim_1").values
        summary[label] = {
            "observed": data_rate.tolist(),
            "predicted": draws.mean(0).tolist(),
            "predicted_5": np.quantile(draws, 0.05, axis=0).tolist(),
            "predicted_95": np.quantile(draws, 0.95, axis=0).tolist(),
            "draws": draws,
        }
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Config()
    integers = ("num_subjects", "num_trials", "chains", "warmup", "draws", "seed", "threads")
    for name in (*integers, "subjects_per_job"):
        flag = f"--{name.replace('_', '-')}"
        parser.add_argument(flag, type=int, default=getattr(defaults, name))
    parser.add_argument(
        "--scheduler",
        default=None,
        help="Dask scheduler address for the fits (default: a local cluster; 'inline': none)",
    )
    parser.add_argument("--workers", type=int, default=None, help="local cluster's processes")
    parser.add_argument("--context-bias", type=float, default=defaults.context_bias)
    parser.add_argument("--method", choices=("grid", "nuts"), default=defaults.method)
    parser.add_argument("--grid-points", type=int, default=defaults.grid_points)
    parser.add_argument(
        "--params", default=",".join(defaults.params), help="comma-separated parameters to fit"
    )
    parser.add_argument("--out", type=Path, default=defaults.out)
    args = parser.parse_args(argv)
    args.params = tuple(name.strip() for name in args.params.split(",") if name.strip())
    config = Config(**vars(args))
    results = run(config)
    for name, r in results["recovery"].items():
        print(
            f"{name:>14}: r = {r['r']:.3f} (log scale {r['r_log']:.3f}), "
            f"90% coverage = {r['coverage_90']:.2f}"
        )
    for pair, value in results["posterior_correlations"].items():
        print(f"posterior correlation of log {pair.replace(':', ' and log ')}: {value:.2f}")
    for pair, value in results["identifiability"].items():
        if pair != "subjects":
            print(
                f"{pair.replace(':', ' and ')} fitted together: median posterior correlation "
                f"of their logs {value['correlation_of_logs']:.2f}"
            )
    print(
        f"fit: {results['fit_seconds']:.0f} s ({results['fit_seconds_measures']}), "
        f"{results['divergences']} divergences"
    )
    print(f"wrote {config.out / 'parameter_recovery.json'} and its figures")


if __name__ == "__main__":
    main()

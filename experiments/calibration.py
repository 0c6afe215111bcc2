"""Simulation-based calibration of the fitting methods (Talts et al. 2018, "Validating Bayesian
inference algorithms with simulation-based calibration"; Säilynoja, Bürkner & Vehtari 2022,
"Graphical test for discrete uniformity and its applications in goodness-of-fit evaluation and
multiple sample comparison").

For each of ``num_subjects`` simulated subjects, the parameters theta_i are drawn from the fit's
priors, the subject's choices are simulated by the batched agent with theta_i
(``fitting.simulate_subjects``), and the subject is fitted by each method. If the method's
posterior is the Bayesian posterior, the rank of theta_i among L draws of its posterior is
uniform on 0..L, for every parameter. Reported per task, method and parameter:

- the ranks (L = ``rank_draws`` draws, evenly spaced over the chains, so that NUTS's draws are
  nearly independent);
- a chi-square test of their uniformity over ``bins`` bins (p > 0.01: no evidence against);
- the ECDF of the fractional ranks minus the uniform CDF, with its simultaneous 95% band
  (Säilynoja et al.: pointwise binomial intervals at a level chosen by simulation so that a
  uniform sample leaves the band anywhere with probability 0.05), in the figure;
- the coverage of the central 50%, 80% and 90% posterior intervals (from all the draws);
- the wall time of each method.

Tasks: the T-maze, whose agent learns its context prior pD between trials (``tmaze``), and the
3-armed bandit, whose agent learns its reward probabilities pA (``bandit``); parameters alpha
(action precision) and learning_rate, so that every method, the grid's quadrature too, fits
them. Methods: ``nuts`` (groups of ``subjects_per_job`` subjects as Dask jobs, resumable from
``<out>/calibration.jobs/``), ``grid`` (the posterior by quadrature), ``svi`` (a mean-field
normal guide on the link scale), ``amortised`` (a posterior estimator per task, trained on
``amortised_simulations`` subjects from the same priors doing the same trials, kept as
``<out>/calibration_estimator_<task>.pt`` and reused by a rerun) and ``importance`` (the same
estimator's fit reweighed by importance sampling with the exact likelihood,
``importance_proposals`` proposals a subject: ``fit(method="amortised", importance=...)``).

Run: ``python experiments/calibration.py --out experiments/results`` (JSON
``calibration.json``, figure ``calibration.png``).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
import pp_aif  # noqa: E402
from pp_aif.atomic import save_figure, write_json  # noqa: E402
from pp_aif.data import BehaviourData, long_format  # noqa: E402
from pp_aif.fitting import fit, prior_draws  # noqa: E402
from pp_aif.fitting.amortised import (  # noqa: E402
    EstimatorSettings,
    PosteriorEstimator,
    task_signature,
)
from pp_aif.fitting.calibration import (  # noqa: E402
    coverage,
    ecdf_band,
    ecdf_difference,
    ranks,
    uniformity_p_value,
)
from pp_aif.fitting.fanout import fit_subjects  # noqa: E402
from pp_aif.fitting.predictive import simulate_subjects  # noqa: E402
from pp_aif.fitting.training import train_estimator  # noqa: E402

METHODS = ("nuts", "grid", "svi", "amortised", "importance")


@dataclass
class Config:
    tasks: tuple[str, ...] = ("tmaze", "bandit")
    methods: tuple[str, ...] = METHODS
    params: tuple[str, ...] = ("alpha", "learning_rate")
    num_subjects: int = 200
    #: trials per subject: the T-maze's have 2 choices each, the bandit's 1
    trials: dict = field(default_factory=lambda: {"tmaze": 30, "bandit": 60})
    rank_draws: int = 99
    bins: int = 10
    chains: int = 2
    warmup: int = 300
    draws: int = 300
    svi_steps: int = 2000
    #: method "amortised": a posterior estimator per task trained on this many subjects from
    #: the priors (each doing the task's trials), for this many epochs, kept beside the
    #: results (``calibration_estimator_<task>.pt``) and reused when it matches
    amortised_simulations: int = 20_000
    amortised_epochs: int = 40
    #: method "importance": proposals a subject from that estimator, reweighed
    importance_proposals: int = 1000
    #: the grid's points per axis (81 by default in ``fit``; 51 here: 2601 likelihood
    #: evaluations a subject, spaced 0.3 Laplace standard deviations apart)
    grid_points: int = 51
    subjects_per_job: int = 25
    scheduler: str | None = None
    workers: int | None = None
    band_simulations: int = 2000
    seed: int = 0
    threads: int = 1
    out: Path = field(default_factory=lambda: Path("experiments/results"))


def fit_method(task, data, config: Config, method: str, name: str):
    """The InferenceData of ``method`` for every subject of ``data``, and its wall time."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if method == "nuts":
            inference = fit_subjects(
                task,
                data,
                config.params,
                store=config.out / "calibration.jobs" / name,
                subjects_per_job=config.subjects_per_job,
                scheduler=config.scheduler,
                workers=config.workers,
                seed=config.seed,
                chains=config.chains,
                warmup=config.warmup,
                draws=config.draws,
            )
        elif method == "grid":
            inference = fit(
                task, data, config.params, method="grid", draws=config.chains * config.draws,
                seed=config.seed, grid_points=config.grid_points,
            )  # fmt: skip
        elif method in ("amortised", "importance"):
            inference = fit(
                task, data, config.params, method="amortised", draws=config.chains * config.draws,
                seed=config.seed, estimator=estimator_for(task, name.split("-")[0], data, config),
                importance=config.importance_proposals if method == "importance" else None,
                pointwise=False,
            )  # fmt: skip
        else:
            inference = fit(
                task, data, config.params, method="svi", steps=config.svi_steps,
                draws=config.chains * config.draws, seed=config.seed,
            )  # fmt: skip
    seconds = time.perf_counter() - start
    notes = sorted({str(w.message).splitlines()[0][:200] for w in caught})
    return inference, seconds, notes


def estimator_for(task, name: str, data, config: Config):
    """The task's posterior estimator: the one kept beside the results if it was trained for
    this task, these parameters and priors and as many trials, else one trained now (on
    subjects of exactly the data's trials, drawn from the same priors as the SBC's subjects)
    and kept."""
    trials = int(data.actions.shape[1])
    path = config.out / f"calibration_estimator_{name}.pt"
    wanted = (config.amortised_simulations, config.amortised_epochs, trials, trials, config.seed)
    if path.exists():
        estimator = PosteriorEstimator.load(path)
        kept = estimator.settings
        try:
            estimator.check(task_signature(task, task.settings, config.params, None), trials)
        except ValueError:  # another task, model, settings or priors: trained again
            kept = None
        if kept is not None and wanted == (
            kept.simulations,
            kept.epochs,
            kept.trials,
            kept.min_trials,
            kept.seed,
        ):
            return estimator
    print(f"{name}: training an estimator on {config.amortised_simulations} subjects", flush=True)
    settings = EstimatorSettings(
        simulations=config.amortised_simulations, trials=trials, min_trials=trials,
        epochs=config.amortised_epochs, seed=config.seed,
    )  # fmt: skip
    estimator, _ = train_estimator(task, config.params, settings)
    estimator.save(path)
    return estimator


def run(config: Config) -> dict:
    torch.set_num_threads(config.threads)
    L = config.rank_draws
    if L > config.chains * config.draws:
        raise ValueError(f"rank_draws: {L} is more than the {config.chains * config.draws} draws")
    results: dict = {"config": asdict(config), "tasks": {}}
    band = ecdf_band(config.num_subjects, L, config.band_simulations, config.seed)
    results["band"] = {"z": band[0].tolist(), "lower": band[1].tolist(), "upper": band[2].tolist()}
    for t, name in enumerate(config.tasks):
        task = pp_aif.load_task(name)
        generator = torch.Generator().manual_seed(config.seed * 1000 + t)
        truth = prior_draws(config.params, config.num_subjects, generator)
        simulated = simulate_subjects(task, truth, config.trials[name], config.seed + t)
        data = BehaviourData.read(long_format(simulated, task), task)
        rows = {}
        for method in config.methods:
            print(f"{name}: fitting {config.num_subjects} subjects by {method}", flush=True)
            inference, seconds, notes = fit_method(task, data, config, method, f"{name}-{method}")
            per_parameter = {}
            for parameter in config.params:
                draws = inference.posterior[parameter].values  # (C, D, N)
                draws = draws.reshape(-1, config.num_subjects)
                true = truth[parameter].numpy()
                r = ranks(true, draws, L)
                per_parameter[parameter] = {
                    "ranks": r.tolist(),
                    "uniformity_p": uniformity_p_value(r, L, config.bins),
                    "coverage": coverage(true, draws),
                    "ecdf_difference": ecdf_difference(r, L).tolist(),
                    "outside_band": bool(
                        (
                            (ecdf_difference(r, L) < band[1] - 1e-12)
                            | (ecdf_difference(r, L) > band[2] + 1e-12)
                        ).any()
                    ),
                }
            rows[method] = {"seconds": seconds, "warnings": notes, "parameters": per_parameter}
            if "importance_pareto_k" in inference.attrs:
                k = np.asarray(inference.attrs["importance_pareto_k"])
                rows[method]["importance"] = {
                    "pareto_k_max": float(k.max()),
                    "pareto_k_above_0.7": int((k > 0.7).sum()),
                    "ess_median": float(np.median(inference.attrs["importance_ess"])),
                }
            summary = ", ".join(
                f"{p} p={v['uniformity_p']:.3f} cov90={v['coverage']['0.9']:.2f}"
                for p, v in per_parameter.items()
            )
            print(f"  {method}: {seconds:.0f} s; {summary}", flush=True)
        results["tasks"][name] = {
            "choices_per_subject": int(data.actions.shape[1] * data.actions.shape[2]),
            "methods": rows,
        }
    write_json(config.out / "calibration.json", results)
    plot(results, config.out / "calibration.png")
    return results


def plot(results: dict, path: Path) -> None:
    tasks = list(results["tasks"])
    params = results["config"]["params"]
    methods = results["config"]["methods"]
    band = results["band"]
    L = results["config"]["rank_draws"]
    figure, axes = plt.subplots(
        len(tasks), len(params), figsize=(6 * len(params), 4.4 * len(tasks)),
        squeeze=False, constrained_layout=True,
    )  # fmt: skip
    z = np.asarray(band["z"])
    for i, task in enumerate(tasks):
        for j, parameter in enumerate(params):
            axis = axes[i, j]
            axis.fill_between(
                z, band["lower"], band["upper"], step="post", color="0.85",
                label="95% simultaneous band (uniform ranks)",
            )  # fmt: skip
            for k, method in enumerate(methods):
                row = results["tasks"][task]["methods"][method]["parameters"][parameter]
                axis.step(
                    z, row["ecdf_difference"], where="post", color=f"C{k}",
                    label=f"{method} (p = {row['uniformity_p']:.2g}, "
                    f"90% coverage {row['coverage']['0.9']:.2f})",
                )  # fmt: skip
            axis.axhline(0, color="black", linewidth=0.6)
            axis.set_xlim(0, 1)
            axis.set_title(f"{task}: {parameter}")
            axis.set_xlabel(f"fractional rank of the truth among {L} posterior draws")
            axis.set_ylabel("ECDF - uniform CDF")
            axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)
    save_figure(figure, path, dpi=110)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Config()
    parser.add_argument("--tasks", default=",".join(defaults.tasks))
    parser.add_argument("--methods", default=",".join(defaults.methods))
    integers = ("num_subjects", "chains", "warmup", "draws", "svi_steps", "grid_points", "seed")
    for name in (*integers, "amortised_simulations", "amortised_epochs", "importance_proposals"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    parser.add_argument("--subjects-per-job", type=int, default=defaults.subjects_per_job)
    parser.add_argument("--scheduler", default=None, help="Dask scheduler (default: local)")
    parser.add_argument("--workers", type=int, default=None, help="local cluster's processes")
    parser.add_argument("--out", type=Path, default=defaults.out)
    args = parser.parse_args(argv)
    config = Config(
        tasks=tuple(args.tasks.split(",")),
        methods=tuple(args.methods.split(",")),
        num_subjects=args.num_subjects,
        chains=args.chains,
        warmup=args.warmup,
        draws=args.draws,
        svi_steps=args.svi_steps,
        grid_points=args.grid_points,
        amortised_simulations=args.amortised_simulations,
        amortised_epochs=args.amortised_epochs,
        importance_proposals=args.importance_proposals,
        seed=args.seed,
        subjects_per_job=args.subjects_per_job,
        scheduler=args.scheduler,
        workers=args.workers,
        out=args.out,
    )
    unknown = sorted(set(config.methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    results = run(config)
    print(f"{'task':8s} {'method':6s} {'parameter':14s} {'p':>7s} {'50%':>5s} {'80%':>5s} "
          f"{'90%':>5s} {'seconds':>8s}")  # fmt: skip
    for task, values in results["tasks"].items():
        for method, row in values["methods"].items():
            for parameter, v in row["parameters"].items():
                c = v["coverage"]
                print(
                    f"{task:8s} {method:6s} {parameter:14s} {v['uniformity_p']:7.3f} "
                    f"{c['0.5']:5.2f} {c['0.8']:5.2f} {c['0.9']:5.2f} {row['seconds']:8.0f}"
                )
    print(f"results: {config.out / 'calibration.json'}, figure: {config.out / 'calibration.png'}")


if __name__ == "__main__":
    main()

"""Amortised fitting against NUTS: which flow, how close, how fast (issue 20, part 2).

On the 3-armed bandit, whose agent learns its reward probabilities (pA), with alpha and
learning_rate fitted (fit's default priors):

1. **Flow choice by measurement**: zuko's neural spline flow and Pyro's conditional spline
   autoregressive flow, each trained (``train_estimator``) on the same simulated subjects with
   the same budget: the best validation loss (mean -ln q(theta | x), nats) and the seconds.
   The lower validation loss is the estimator used below.
2. **Against NUTS** on ``held_out`` simulated subjects (never in training) of ``trials`` trials:
   NUTS (``fit_subjects``, ``chains`` x (``warmup`` + ``draws``), in Dask groups resumable from
   ``<out>/amortised_fitting.jobs/``) and the amortised fit (``fit(method="amortised")``). Per
   parameter: the correlation of the posterior means (on the log scale) and of the truth with
   each, and the ratio of posterior sds (median, and the fraction within 20%).
   With ``importance`` proposals a subject, the amortised fit corrected by importance sampling
   (``fit(importance=...)``) is compared the same way, with each subject's Pareto k and
   effective sample size.
3. **Speed**: ``speed_subjects`` subjects fitted at once by the amortised estimator, with and
   without the pointwise log-likelihood (``pointwise=False``), and the number of subjects from
   which training plus amortised fits take less time than NUTS.

``--reuse-estimator`` skips training: it reads the estimator and the training record that an
earlier run wrote to ``out`` (to compare more fitting methods without training again).

Run: ``python experiments/amortised_fitting.py --out experiments/results`` (JSON
``amortised_fitting.json``, figure ``amortised_fitting.png``).
"""

from __future__ import annotations

import argparse
import json
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
from pp_aif.fitting.amortised import EstimatorSettings, PosteriorEstimator  # noqa: E402
from pp_aif.fitting.fanout import fit_subjects  # noqa: E402
from pp_aif.fitting.predictive import simulate_subjects  # noqa: E402
from pp_aif.fitting.training import train_estimator  # noqa: E402


@dataclass
class Config:
    task: str = "bandit"
    params: tuple[str, ...] = ("alpha", "learning_rate")
    simulations: int = 20_000
    trials: int = 60
    min_trials: int = 20
    epochs: int = 40
    hidden: int = 64  # the estimator's units (EstimatorSettings.hidden)
    transforms: int = 3  # its flow's layers
    patience: int = 8  # epochs without a better validation loss before training stops
    schedule: str = "constant"  # Adam's step size over training (EstimatorSettings.schedule)
    flows: tuple[str, ...] = ("zuko", "pyro")
    held_out: int = 100
    chains: int = 2
    warmup: int = 500
    draws: int = 500
    amortised_draws: int = 2000
    importance: int = 2000  # proposals a subject for the importance-sampled fit (0: none)
    reuse_estimator: bool = False  # read the estimator and its record from out, do not train
    subjects_per_job: int = 25
    scheduler: str | None = None
    workers: int | None = None
    speed_subjects: int = 1000
    seed: int = 0
    threads: int = 1
    out: Path = field(default_factory=lambda: Path("experiments/results"))


def _subjects(task, params, N: int, trials: int, seed: int):
    truth = prior_draws(params, N, torch.Generator().manual_seed(seed))
    data = BehaviourData.read(long_format(simulate_subjects(task, truth, trials, seed), task), task)
    return truth, data


def compare(truth: dict, nuts, amortised, params) -> dict:
    """Per parameter: r of the posterior means (log scale) between the methods and against the
    truth; the ratio of posterior sds (amortised / NUTS) on the log scale."""
    result = {}
    for name in params:
        a = np.log(nuts.posterior[name].values)  # (C, D, N)
        b = np.log(amortised.posterior[name].values)
        a_mean, b_mean = a.mean((0, 1)), b.mean((0, 1))
        ratio = b.std((0, 1)) / a.std((0, 1))
        true = np.log(truth[name].numpy())
        result[name] = {
            "r_means": float(np.corrcoef(a_mean, b_mean)[0, 1]),
            "r_truth_nuts": float(np.corrcoef(true, a_mean)[0, 1]),
            "r_truth_amortised": float(np.corrcoef(true, b_mean)[0, 1]),
            "sd_ratio_median": float(np.median(ratio)),
            "sd_within_20_percent": float(np.mean(np.abs(ratio - 1) <= 0.2)),
            "nuts_means": a_mean.tolist(),
            "amortised_means": b_mean.tolist(),
            "sd_ratios": ratio.tolist(),
        }
    return result


def run(config: Config) -> dict:
    torch.set_num_threads(config.threads)
    task = pp_aif.load_task(config.task)
    results: dict = {"config": asdict(config), "flows": {}}
    estimators = {}
    if config.reuse_estimator:
        earlier = config.out / "amortised_fitting.json"
        if not earlier.is_file():
            raise FileNotFoundError(f"--reuse-estimator: no earlier run's {earlier}")
        record = json.loads(earlier.read_text())
        results["flows"] = record["flows"]
        results["reused_estimator_of"] = record["config"]
    for flow in () if config.reuse_estimator else config.flows:
        print(f"training the {flow} flow on {config.simulations} subjects", flush=True)
        settings = EstimatorSettings(
            simulations=config.simulations, trials=config.trials, min_trials=config.min_trials,
            epochs=config.epochs, flow=flow, seed=config.seed, hidden=config.hidden,
            transforms=config.transforms, patience=config.patience, schedule=config.schedule,
        )  # fmt: skip
        estimator, record = train_estimator(
            task, config.params, settings, progress=lambda line: print(f"  {line}", flush=True)
        )
        estimators[flow] = estimator
        results["flows"][flow] = {
            "best_validation_loss": min(record["validation_loss"]),
            "best_epoch": record["best_epoch"],
            "epochs_run": len(record["validation_loss"]),
            "seconds": record["seconds"],
            "seconds_simulating": record["seconds_simulating"],
            "validation_loss": record["validation_loss"],
        }
    chosen = min(results["flows"], key=lambda f: results["flows"][f]["best_validation_loss"])
    results["chosen_flow"] = chosen
    if config.reuse_estimator:
        estimator = PosteriorEstimator.load(config.out / "amortised_fitting_estimator.pt")
    else:
        estimator = estimators[chosen]
        estimator.save(config.out / "amortised_fitting_estimator.pt")

    truth, data = _subjects(task, config.params, config.held_out, config.trials, 10_000)
    print(f"NUTS on {config.held_out} held-out subjects", flush=True)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nuts = fit_subjects(
            task, data, config.params, store=config.out / "amortised_fitting.jobs",
            subjects_per_job=config.subjects_per_job, scheduler=config.scheduler,
            workers=config.workers, seed=config.seed, chains=config.chains,
            warmup=config.warmup, draws=config.draws,
        )  # fmt: skip
    nuts_seconds = time.perf_counter() - start
    start = time.perf_counter()
    amortised = fit(
        task, data, config.params, method="amortised", estimator=estimator,
        draws=config.amortised_draws, seed=config.seed,
    )  # fmt: skip
    amortised_seconds = time.perf_counter() - start
    results["held_out"] = {
        "subjects": config.held_out,
        "nuts_seconds": nuts_seconds,
        "nuts_fit_seconds": float(nuts.attrs["seconds"]),
        "nuts_jobs_computed": int(nuts.attrs.get("jobs_computed", 0)),
        "nuts_warnings": sorted({str(w.message).splitlines()[0][:160] for w in caught}),
        "amortised_seconds": amortised_seconds,
        "parameters": compare(truth, nuts, amortised, config.params),
    }
    if config.importance:
        print(f"importance sampling: {config.importance} proposals a subject", flush=True)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            weighed = fit(
                task, data, config.params, method="amortised", estimator=estimator,
                draws=config.amortised_draws, importance=config.importance, seed=config.seed,
                pointwise=False,
            )  # fmt: skip
        k = np.asarray(weighed.attrs["importance_pareto_k"])
        ess = np.asarray(weighed.attrs["importance_ess"])
        results["held_out"]["importance"] = {
            "proposals": config.importance,
            "seconds": time.perf_counter() - start,
            "pareto_k_max": float(k.max()),
            "pareto_k_above_0.7": int((k > 0.7).sum()),
            "pareto_k_above_0.5": int((k > 0.5).sum()),
            "ess_min": float(ess.min()),
            "ess_median": float(np.median(ess)),
            "warnings": sorted({str(w.message).splitlines()[0][:160] for w in caught}),
            "parameters": compare(truth, nuts, weighed, config.params),
        }

    _, many = _subjects(task, config.params, config.speed_subjects, config.trials, 20_000)
    timings = {}
    for pointwise in (False, True):
        start = time.perf_counter()
        fit(
            task, many, config.params, method="amortised", estimator=estimator,
            draws=config.draws, pointwise=pointwise,
        )  # fmt: skip
        timings["with_pointwise" if pointwise else "without_pointwise"] = (
            time.perf_counter() - start
        )
    training = results["flows"][chosen]["seconds"]
    # NUTS's own time: its fits' seconds summed over the jobs, whether computed in this run or
    # resumed from an earlier one (the wall time above counts only those computed now)
    per_subject_nuts = float(nuts.attrs["seconds"]) / config.held_out
    per_subject_amortised = timings["without_pointwise"] / config.speed_subjects
    results["speed"] = {
        "subjects": config.speed_subjects,
        "draws": config.draws,
        **timings,
        "training_seconds": training,
        "nuts_seconds_per_subject": per_subject_nuts,
        "break_even_subjects": training / max(per_subject_nuts - per_subject_amortised, 1e-12),
    }
    write_json(config.out / "amortised_fitting.json", results)
    plot(results, config.out / "amortised_fitting.png")
    return results


def plot(results: dict, path: Path) -> None:
    params = results["config"]["params"]
    figure, axes = plt.subplots(
        1, len(params) + 1, figsize=(4.6 * (len(params) + 1), 4.2), constrained_layout=True
    )
    for axis, name in zip(axes, params, strict=False):
        row = results["held_out"]["parameters"][name]
        x, y = np.asarray(row["nuts_means"]), np.asarray(row["amortised_means"])
        axis.scatter(x, y, s=12, alpha=0.7, label=f"amortised (r = {row['r_means']:.3f})")
        low, high = min(x.min(), y.min()), max(x.max(), y.max())
        weighed = results["held_out"].get("importance")
        if weighed is not None:
            again = weighed["parameters"][name]
            axis.scatter(
                x, again["amortised_means"], s=12, marker="x", alpha=0.7,
                label=f"importance-sampled (r = {again['r_means']:.3f})",
            )  # fmt: skip
            axis.legend(fontsize=8)
        axis.plot([low, high], [low, high], color="grey", linestyle=":")
        axis.set_xlabel(f"NUTS posterior mean of ln {name}")
        axis.set_ylabel(f"amortised posterior mean of ln {name}")
        axis.set_title(
            f"{name}: r = {row['r_means']:.3f}, sd ratio median {row['sd_ratio_median']:.2f}"
        )
    axis = axes[-1]
    for flow, row in results["flows"].items():
        axis.plot(
            np.arange(1, len(row["validation_loss"]) + 1), row["validation_loss"],
            label=f"{flow} ({row['seconds']:.0f} s)",
        )  # fmt: skip
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation loss, -ln q(theta | x) (nats)")
    axis.set_title(f"flows on the same simulations (chosen: {results['chosen_flow']})")
    axis.legend(fontsize=8)
    save_figure(figure, path, dpi=110)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Config()
    integers = ("simulations", "trials", "epochs", "hidden", "transforms", "patience")
    nuts = ("chains", "warmup", "draws")  # the NUTS reference's
    for name in (*integers, *nuts, "held_out", "importance", "speed_subjects", "seed", "threads"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    parser.add_argument("--flows", default=",".join(defaults.flows))
    parser.add_argument("--schedule", default=defaults.schedule, help="constant or cosine")
    parser.add_argument("--scheduler", default=None, help="Dask scheduler (default: local)")
    parser.add_argument("--workers", type=int, default=None, help="local cluster's processes")
    parser.add_argument("--out", type=Path, default=defaults.out)
    parser.add_argument(
        "--reuse-estimator", action="store_true", help="the estimator an earlier run wrote to --out"
    )
    args = parser.parse_args(argv)
    config = Config(
        simulations=args.simulations, trials=args.trials, epochs=args.epochs,
        hidden=args.hidden, transforms=args.transforms, patience=args.patience,
        schedule=args.schedule, chains=args.chains, warmup=args.warmup, draws=args.draws,
        threads=args.threads, importance=args.importance, reuse_estimator=args.reuse_estimator,
        held_out=args.held_out, speed_subjects=args.speed_subjects, seed=args.seed,
        flows=tuple(args.flows.split(",")), scheduler=args.scheduler, workers=args.workers,
        out=args.out,
    )  # fmt: skip
    results = run(config)
    for flow, row in results["flows"].items():
        print(
            f"{flow}: best validation loss {row['best_validation_loss']:.4f} nats "
            f"(epoch {row['best_epoch']}), {row['seconds']:.0f} s"
        )
    print(f"chosen: {results['chosen_flow']}")
    for name, row in results["held_out"]["parameters"].items():
        print(
            f"{name}: r(means) {row['r_means']:.3f}; sd ratio median {row['sd_ratio_median']:.2f}"
            f", within 20% {row['sd_within_20_percent']:.2f}; r with the truth: NUTS "
            f"{row['r_truth_nuts']:.3f}, amortised {row['r_truth_amortised']:.3f}"
        )
    weighed = results["held_out"].get("importance")
    if weighed is not None:
        print(
            f"importance-sampled ({weighed['proposals']} proposals, {weighed['seconds']:.0f} s): "
            f"Pareto k at most {weighed['pareto_k_max']:.2f} "
            f"({weighed['pareto_k_above_0.7']} above 0.7), ESS median {weighed['ess_median']:.0f}"
        )
        for name, row in weighed["parameters"].items():
            print(
                f"  {name}: r(means) {row['r_means']:.3f}; sd ratio median "
                f"{row['sd_ratio_median']:.2f}, within 20% {row['sd_within_20_percent']:.2f}"
            )
    speed = results["speed"]
    print(
        f"{speed['subjects']} subjects: {speed['without_pointwise']:.1f} s amortised "
        f"({speed['with_pointwise']:.1f} s with the pointwise log-likelihood); training "
        f"{speed['training_seconds']:.0f} s; NUTS {speed['nuts_seconds_per_subject']:.1f} s a "
        f"subject; amortisation pays from {speed['break_even_subjects']:.0f} subjects"
    )


if __name__ == "__main__":
    main()

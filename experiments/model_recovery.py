"""Model recovery: agents of three kinds simulate people; every kind is fitted to every data set;
does the comparison pick the kind that generated the data?

The kinds (SPM's T-maze, the reward on the left in ``context_bias`` of the trials):

- ``learner``: the full agent, learning its context prior pD between trials (alpha and the
  learning rate eta fitted);
- ``fixed prior``: the same agent without learning (no pD; D stays 50/50; alpha fitted);
- ``no epistemic``: the learner without the epistemic term in its policy score (alpha and eta
  fitted): it has no reason to visit the cue.

The default world puts the reward on the left in 70% of trials. In an 80% world a learner
that learns fast soon stops visiting the cue (the learned prior leaves little to find out) and
then behaves as the agent with no epistemic drive, so a fifth of the subjects of either kind
are taken for the other (docs/experiments.md records the sweep over 0.65, 0.7 and 0.8); at 70%
the cue stays worth a visit and learning still shows.

Each kind simulates ``num_subjects`` subjects with parameters drawn from the fit's priors. Each
kind is fitted to each data set, by default exactly: every kind has at most two parameters, so
``pp_aif.fit(method="grid")`` gives each subject's exact posterior (draws for PSIS-LOO) and its
exact log evidence (``--method svi``: Gaussian guides). The fits are compared per subject by
their PSIS-LOO elpd (summed over the subject's trials), by the exact evidence and by the Laplace
approximation to it, and per data set by random-effects BMS over those per-subject numbers.
Reported: the confusion matrices (rows: the kind that generated the data; columns: the kind
chosen; entries: the share of subjects), the BMS expected frequencies and protected exceedance
probabilities, and the elpd table of ``pp_aif.compare`` per data set.

The nine fits (every kind to every data set) run as Dask jobs (``pp_aif.jobs.fan_out``: a local
cluster by default, an existing one with ``--scheduler ADDRESS``), each kept under
``<out>/model_recovery.jobs/`` as it finishes, so a rerun fits only those not there. Several
worlds, ``--context-bias 0.65,0.7,0.8``, make a sweep whose fits are all one fan-out.

Run: ``python experiments/model_recovery.py --out experiments/results`` (JSON + figure).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cloudpickle
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pp_aif.tasks.tmaze import with_context_bias, without_learning  # noqa: E402

import pp_aif  # noqa: E402
from pp_aif.atomic import save_figure, write_json  # noqa: E402
from pp_aif.comparison import bms, compare, log_evidence, subject_elpd  # noqa: E402
from pp_aif.data import BehaviourData, long_format  # noqa: E402
from pp_aif.errors import ConvergenceWarning, DiagnosticWarning  # noqa: E402
from pp_aif.fitting import fit, prior_draws  # noqa: E402
from pp_aif.fitting.fanout import content_digest  # noqa: E402
from pp_aif.fitting.predictive import simulate_subjects  # noqa: E402
from pp_aif.jobs import Job, JobStore, fan_out, job_name, timing_note  # noqa: E402
from pp_aif.planning import Lesions  # noqa: E402

if __name__ != "__main__":  # the job function travels to remote workers by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

KINDS = ("learner", "fixed prior", "no epistemic")
PARAMS = {
    "learner": ("alpha", "learning_rate"),
    "fixed prior": ("alpha",),
    "no epistemic": ("alpha", "learning_rate"),
}


@dataclass
class Config:
    num_subjects: int = 30
    num_trials: int = 40
    context_bias: float = 0.7
    method: str = "grid"  # exact posteriors (<= 2 parameters each); "svi": Gaussian guides
    grid_points: int = 61
    steps: int = 1500
    draws: int = 1000
    seed: int = 0
    threads: int = 1
    scheduler: str | None = None  # None: a local Dask cluster; an address; "inline": no Dask
    workers: int | None = None  # the local cluster's processes (default: one per core)
    out: Path = field(default_factory=lambda: Path("experiments/results"))


def tasks(bias: float) -> dict:
    """The three kinds as Tasks on the biased T-maze."""
    base = pp_aif.load_task("tmaze")
    learner = with_context_bias(base, bias)
    fixed = without_learning(learner)
    blind = dataclasses.replace(
        learner, settings=dataclasses.replace(base.settings, lesions=Lesions(epistemic=False))
    )
    return {"learner": learner, "fixed prior": fixed, "no epistemic": blind}


def _fit_kind(task, data, params, method, steps, draws, seed, grid_points, threads):
    """One job: a kind fitted to a data set, with the Laplace log evidence per subject in the
    InferenceData's attrs (``laplace_log_evidence``)."""
    if threads is not None:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        inference = fit(
            task,
            data,
            params,
            method=method,
            steps=steps,
            draws=draws,
            seed=seed,
            grid_points=grid_points,
        )
        laplace = log_evidence(task, data, params).log_evidence
    inference.attrs["laplace_log_evidence"] = laplace.tolist()
    return inference


def _data_sets(config: Config, kinds: dict) -> dict:
    """Each kind's simulated subjects: {kind: BehaviourData}."""
    generator = torch.Generator().manual_seed(config.seed)
    data_sets = {}
    for g, generating in enumerate(KINDS):
        truth = prior_draws(PARAMS[generating], config.num_subjects, generator)
        record = simulate_subjects(kinds[generating], truth, config.num_trials, config.seed + g)
        data_sets[generating] = BehaviourData.read(
            long_format(record, kinds[generating]), kinds[generating]
        )
    return data_sets


def _jobs(config: Config, bias: float) -> dict:
    """{(generating, fitted): Job}: every kind fitted to every data set of the world ``bias``."""
    kinds = tasks(bias)
    fitting = {k: getattr(config, k) for k in ("method", "steps", "draws", "seed", "grid_points")}
    sizes = {"num_subjects": config.num_subjects, "num_trials": config.num_trials}
    threads = None if config.scheduler == "inline" else 1
    jobs = {}
    for generating, data in _data_sets(config, kinds).items():
        digest = content_digest(data.observations, data.actions, data.present)
        for kind in KINDS:
            spec = {"bias": bias, "generating": generating, "kind": kind, "data": digest}
            prefix = f"bias{bias:g}-{generating}-{kind}".replace(" ", "_")
            jobs[generating, kind] = Job(
                job_name(prefix, {**spec, **sizes, **fitting}),
                _fit_kind,
                {"task": kinds[kind], "data": data, "params": PARAMS[kind], **fitting,
                 "threads": threads},
            )  # fmt: skip
    return jobs


def _fit_all(config: Config, biases) -> tuple[dict, dict]:
    """({bias: {(generating, fitted): InferenceData}}, {"computed": n, "resumed": m}): every
    fit of every world as one fan-out of jobs, kept under ``<out>/model_recovery.jobs/``
    (reruns resume: the jobs found there are counted as resumed)."""
    planned = {bias: _jobs(config, bias) for bias in biases}
    every = [job for jobs in planned.values() for job in jobs.values()]
    results = fan_out(
        every,
        JobStore(config.out / "model_recovery.jobs"),
        scheduler=config.scheduler,
        workers=config.workers,
        announce=print,  # where to watch the jobs: the Dask dashboard
    )
    fitted = {
        bias: {key: results[job.name] for key, job in jobs.items()}
        for bias, jobs in planned.items()
    }
    return fitted, results.summary()


def _summarise(config: Config, bias: float, fitted: dict, seconds: float, jobs: dict) -> dict:
    """The confusion matrices, BMS and elpd tables of one world's fits."""
    K = len(KINDS)
    by_loo = np.zeros((K, K))
    by_laplace = np.zeros((K, K))
    by_exact = np.zeros((K, K))
    data_sets = {}
    for g, generating in enumerate(KINDS):
        fits = {kind: fitted[generating, kind] for kind in KINDS}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DiagnosticWarning)
            table = compare(fits)
            elpd = np.stack([subject_elpd(fits[k]) for k in KINDS], -1)  # (N, K)
        laplace = np.stack([fits[k].attrs["laplace_log_evidence"] for k in KINDS], -1)
        pairs = [("loo", elpd, by_loo), ("laplace", laplace, by_laplace)]
        if config.method == "grid":  # the exact evidence, from the same grid
            exact = np.stack([fits[k].attrs["log_evidence"] for k in KINDS], -1)
            pairs.append(("exact", exact, by_exact))
        for _, values, matrix in pairs:
            chosen = values.argmax(-1)
            matrix[g] = np.bincount(chosen, minlength=K) / config.num_subjects
        selection = {name: bms(values) for name, values, _ in pairs}
        data_sets[generating] = {
            "compare": table[["rank", "elpd_loo", "p_loo", "elpd_diff", "weight", "se"]]
            .round(3)
            .to_dict(orient="index"),
            "pareto_warnings": [str(w.message) for w in caught],
            "bms": {
                name: {
                    "expected_frequencies": r.expected_frequencies.tolist(),
                    "protected_exceedance": r.protected_exceedance.tolist(),
                    "bor": r.bor,
                }
                for name, r in selection.items()
            },
        }
    config_record = asdict(config)
    return {
        "config": {**config_record, "context_bias": bias},
        "kinds": list(KINDS),
        "confusion_loo": by_loo.tolist(),
        "confusion_laplace": by_laplace.tolist(),
        "diagonal_loo": np.diag(by_loo).tolist(),
        "diagonal_laplace": np.diag(by_laplace).tolist(),
        **(
            {"confusion_exact": by_exact.tolist(), "diagonal_exact": np.diag(by_exact).tolist()}
            if config.method == "grid"
            else {}
        ),
        "data_sets": data_sets,
        "seconds": seconds,
        "jobs": jobs,  # a rerun reads finished fits from the store: its time is not a fit's
        "seconds_measures": timing_note(jobs["computed"], jobs["resumed"]),
    }


def run(config: Config) -> dict:
    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    bias = config.context_bias
    fitted, jobs = _fit_all(config, (bias,))
    results = _summarise(config, bias, fitted[bias], time.perf_counter() - start, jobs)
    write_json(config.out / "model_recovery.json", results)
    _plot(_panels(config, results), config.out / "model_recovery.png")
    return results


def run_sweep(config: Config, biases) -> dict:
    """Model recovery in each world of ``biases``, all fits as one fan-out of jobs: the
    diagonals per world, in ``model_recovery_sweep.json`` and ``model_recovery_sweep.png``."""
    biases = tuple(float(b) for b in biases)
    if len(set(biases)) != len(biases) or not all(0 < b < 1 for b in biases):
        raise ValueError(f"context_bias: {biases}; need distinct values in (0, 1)")
    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    fitted, jobs = _fit_all(config, biases)
    seconds = time.perf_counter() - start
    worlds = {f"{bias:g}": _summarise(config, bias, fitted[bias], seconds, jobs) for bias in biases}
    criteria = ("loo", "laplace") + (("exact",) if config.method == "grid" else ())
    results = {
        "config": asdict(config),
        "kinds": list(KINDS),
        "context_bias": list(biases),
        "diagonals": {
            name: {b: w[f"diagonal_{name}"] for b, w in worlds.items()} for name in criteria
        },
        "worlds": worlds,
        "seconds": seconds,
        "jobs": jobs,
        "seconds_measures": timing_note(jobs["computed"], jobs["resumed"]),
    }
    write_json(config.out / "model_recovery_sweep.json", results)
    _plot_sweep(results, config.out / "model_recovery_sweep.png")
    return results


def _panels(config: Config, results: dict) -> list:
    panels = [(np.array(results["confusion_loo"]), "per subject: PSIS-LOO elpd")]
    if config.method == "grid":
        panels.append((np.array(results["confusion_exact"]), "per subject: exact log evidence"))
    panels.append((np.array(results["confusion_laplace"]), "per subject: Laplace log evidence"))
    return panels


def _plot_sweep(results: dict, path: Path) -> None:
    """The share of each kind's subjects recovered, against the world, one line per criterion."""
    biases = results["context_bias"]
    fig, axes = plt.subplots(
        1, len(KINDS), figsize=(4.2 * len(KINDS), 3.6), constrained_layout=True, sharey=True
    )
    for k, (ax, kind) in enumerate(zip(axes, KINDS, strict=True)):
        styles = {"loo": ("o", "-", 9), "laplace": ("s", "--", 6), "exact": ("^", ":", 4)}
        for name, diagonals in results["diagonals"].items():
            marker, line, size = styles[name]
            values = [diagonals[f"{b:g}"][k] for b in biases]
            ax.plot(biases, values, marker=marker, ls=line, ms=size, label=name)
        ax.axhline(0.8, color="grey", lw=0.8, ls=":")
        ax.set_title(f"generated by: {kind}")
        ax.set_xlabel("share of trials with the reward on the left")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("share of subjects recovered")
    axes[0].legend(title="criterion (markers overlap where they agree)", loc="lower left")
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def _plot(panels, path: Path) -> None:
    """One confusion matrix per panel: [(matrix (K, K), title)]."""
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.5 * len(panels), 4.2), constrained_layout=True, squeeze=False
    )
    for ax, (matrix, title) in zip(axes[0], panels, strict=True):
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(KINDS)):
            for j in range(len(KINDS)):
                colour = "white" if matrix[i, j] > 0.6 else "black"
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color=colour)
        ax.set_xticks(range(len(KINDS)), KINDS)
        ax.set_yticks(range(len(KINDS)), KINDS if ax is axes[0, 0] else [])
        ax.set_xlabel("chosen")
        ax.set_title(title)
    axes[0, 0].set_ylabel("generated the data")
    fig.colorbar(image, ax=axes[0], shrink=0.8, label="share of subjects")
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Config()
    for name in ("num_subjects", "num_trials", "steps", "draws", "grid_points", "seed", "threads"):
        flag = f"--{name.replace('_', '-')}"
        parser.add_argument(flag, type=int, default=getattr(defaults, name))
    parser.add_argument(
        "--context-bias",
        default=str(defaults.context_bias),
        help="the world's share of trials with the reward on the left; several, comma-separated "
        "(e.g. 0.65,0.7,0.8), make a sweep with all fits as one fan-out",
    )
    parser.add_argument("--method", choices=("grid", "svi"), default=defaults.method)
    parser.add_argument(
        "--scheduler",
        default=None,
        help="Dask scheduler address for the fits (default: a local cluster; 'inline': none)",
    )
    parser.add_argument("--workers", type=int, default=None, help="local cluster's processes")
    parser.add_argument("--out", type=Path, default=defaults.out)
    args = parser.parse_args(argv)
    try:
        biases = [float(b) for b in args.context_bias.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--context-bias: {args.context_bias!r} is not a comma-separated list")
    if len(biases) > 1:
        config = Config(**{**vars(args), "context_bias": biases[0]})
        sweep = run_sweep(config, biases)
        for name, diagonals in sweep["diagonals"].items():
            print(f"diagonal ({name}; {', '.join(KINDS)}) per world:")
            for bias, row in diagonals.items():
                print(f"  {bias:>5}: " + "  ".join(f"{x:.2f}" for x in row))
        print(
            f"{sweep['seconds']:.0f} s ({sweep['seconds_measures']}); "
            f"wrote {config.out / 'model_recovery_sweep.json'}"
        )
        return
    config = Config(**{**vars(args), "context_bias": biases[0]})
    results = run(config)
    for name in ("loo", "laplace") + (("exact",) if config.method == "grid" else ()):
        print(f"confusion ({name}; rows generated, columns chosen: {', '.join(KINDS)}):")
        for kind, row in zip(KINDS, results[f"confusion_{name}"], strict=True):
            print(f"  {kind:>12}: " + "  ".join(f"{x:.2f}" for x in row))
    print(
        f"{results['seconds']:.0f} s ({results['seconds_measures']}); "
        f"wrote {config.out / 'model_recovery.json'} and its figure"
    )


if __name__ == "__main__":
    main()

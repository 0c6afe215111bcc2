"""Parameter recovery of a learner that could not be fitted before: the bandit's pA learner.

Subjects are simulated on the 3-armed bandit (by default arms paying 0.7, 0.5, 0.3, for 300
trials; the agent learns its reward probabilities, pA, between trials from counts of 1 and 1),
each with its own action precision alpha and learning rate eta drawn from the fit's priors (no
forgetting, the task's default; ``--params alpha,learning_rate,forgetting`` adds omega). The
subjects are fitted by NUTS in groups of ``subjects_per_job`` (independent subjects; each group
a Dask job, so that its step size and metric adapt to its own subjects, kept under
``<out>/bandit_recovery.jobs/``); the likelihood is the agent's own (the count recursion of
``pp_aif.fitting.counts``, which equals the agent replaying the choices: the agent sees which
arm it pulled, so its counts are the data's). Reported per parameter: the correlation of the
true values with the posterior means (and of their logs), the coverage of the central 90%
intervals, and the median posterior correlation of each pair of parameters' logs: which of
them the data tell apart.

Why this design: eta scales the counts, so it matters only against the prior counts (1 and 1)
and through novelty, which falls as the counts grow; choices tell eta apart only while the
agent still learns, and tell alpha apart only where choices vary. Arms closer together
(0.7 / 0.5 / 0.3 rather than 0.8 / 0.5 / 0.2) keep the choices varied, and 300 trials give
both enough to go on (maximum a posteriori estimates, 40 subjects: r(log) 0.84 / 0.78 for
alpha / eta at 0.8 / 0.5 / 0.2 and 200 trials, 0.93 / 0.88 at 0.7 / 0.5 / 0.3 and 200, 0.94 /
0.89 at 300). With omega fitted too, eta and omega trade off within a subject (eta adds,
omega forgets).

Two designs let the data carry eta all session long (issue 16's measurements, docs/experiments.md):
``--forgetting omega``, agents that forget at a known rate (a task setting, not fitted: the
counts then stay bounded, near eta / omega times an arm's share of the pulls, so eta keeps
setting their size and with it the novelty that draws the agent to arms it knows little
about), and ``--game-length n``, games of n trials whose counts start
again (``Task.restarts``), so that every game has the early trials in which eta shows.

Run: ``python experiments/bandit_recovery.py --out experiments/results`` (JSON + figure).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pp_aif  # noqa: E402
from experiments.parameter_recovery import posterior_correlations, recovery  # noqa: E402
from pp_aif.atomic import save_figure, write_json  # noqa: E402
from pp_aif.data import BehaviourData, long_format  # noqa: E402
from pp_aif.fitting import prior_draws  # noqa: E402
from pp_aif.fitting.fanout import fit_subjects  # noqa: E402
from pp_aif.fitting.predictive import simulate_subjects  # noqa: E402
from pp_aif.jobs import timing_note  # noqa: E402
from pp_aif.plots import plot_recovery  # noqa: E402


@dataclass
class Config:
    num_subjects: int = 40
    num_trials: int = 300
    reward_probabilities: tuple[float, ...] = (0.7, 0.5, 0.3)
    forgetting: float = 0.0  # the agents' own forgetting rate, known (a task setting, not fitted)
    game_length: int | None = None  # trials per game, where the counts start again (restarts)
    params: tuple[str, ...] = ("alpha", "learning_rate")
    chains: int = 2
    warmup: int = 300
    draws: int = 300
    seed: int = 0
    threads: int = 1
    subjects_per_job: int = 5  # NUTS adapts its step size and metric per group, in parallel
    scheduler: str | None = None  # None: a local cluster; an address; "inline": no Dask
    workers: int | None = None  # the local cluster's processes (default: one per core)
    out: Path = field(default_factory=lambda: Path("experiments/results"))


def bandit_task(reward_probabilities, forgetting: float = 0.0, game_length: int | None = None):
    """The bandit with these arms, its agents forgetting at ``forgetting`` (a task setting,
    so the fit is given it), in games of ``game_length`` trials (None or 0: one game)."""
    from pp_aif.tasks.bandit import build

    task = build(tuple(reward_probabilities))
    settings = dataclasses.replace(task.settings, forgetting=forgetting)
    return dataclasses.replace(task, settings=settings, restarts=game_length or None)


def run(config: Config) -> dict:
    torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    task = bandit_task(config.reward_probabilities, config.forgetting, config.game_length)
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
            store=config.out / "bandit_recovery.jobs",
            subjects_per_job=config.subjects_per_job,
            scheduler=config.scheduler,
            workers=config.workers,
            announce=print,  # where to watch the jobs: the Dask dashboard
            seed=config.seed,
            chains=config.chains,
            warmup=config.warmup,
            draws=config.draws,
        )
    seconds = time.perf_counter() - start
    jobs = {
        "computed": int(inference.attrs["jobs_computed"]),
        "resumed": int(inference.attrs["jobs_resumed"]),
    }
    rewarded = simulated["reward"].values.mean() if "reward" in simulated else None
    results = {
        "config": asdict(config),
        "recovery": recovery(truth, inference),
        "posterior_correlations": posterior_correlations(inference, config.params),
        "fit_seconds": seconds,
        "jobs": jobs,  # a rerun reads finished groups from the store: its time is not a fit's
        "fit_seconds_measures": timing_note(jobs["computed"], jobs["resumed"]),
        "likelihood": inference.attrs.get("likelihood", ""),
        "reward_rate": None if rewarded is None else float(rewarded),
        "divergences": int(inference.sample_stats["diverging"].values.sum()),
        "warnings": [str(w.message) for w in caught],
    }
    config.out.mkdir(parents=True, exist_ok=True)
    N = config.num_subjects
    draws = {name: inference.posterior[name].values.reshape(-1, N) for name in config.params}
    figure = plot_recovery({name: value.numpy() for name, value in truth.items()}, draws)
    save_figure(figure, config.out / "bandit_recovery.png", dpi=110)
    write_json(config.out / "bandit_recovery.json", results)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Config()
    integers = ("num_subjects", "num_trials", "chains", "warmup", "draws", "seed", "threads")
    for name in (*integers, "subjects_per_job"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    parser.add_argument(
        "--params", default=",".join(defaults.params), help="comma-separated parameters to fit"
    )
    parser.add_argument(
        "--reward-probabilities", default=",".join(map(str, defaults.reward_probabilities)),
        help="each arm's probability of paying, comma-separated",
    )  # fmt: skip
    parser.add_argument(
        "--forgetting", type=float, default=defaults.forgetting,
        help="the agents' forgetting rate omega, known to the fit (not fitted unless in --params)",
    )  # fmt: skip
    parser.add_argument(
        "--game-length", type=int, default=None,
        help="trials per game: each agent's counts start again every this many trials",
    )  # fmt: skip
    parser.add_argument(
        "--scheduler",
        default=None,
        help="Dask scheduler address for the fits (default: a local cluster; 'inline': none)",
    )
    parser.add_argument("--workers", type=int, default=None, help="local cluster's processes")
    parser.add_argument("--out", type=Path, default=defaults.out)
    args = parser.parse_args(argv)
    args.params = tuple(name.strip() for name in args.params.split(",") if name.strip())
    args.reward_probabilities = tuple(float(p) for p in args.reward_probabilities.split(","))
    config = Config(**vars(args))
    results = run(config)
    for name, r in results["recovery"].items():
        print(
            f"{name:>14}: r = {r['r']:.3f} (log scale {r['r_log']:.3f}), "
            f"90% coverage = {r['coverage_90']:.2f}"
        )
    for pair, value in results["posterior_correlations"].items():
        print(f"posterior correlation of log {pair.replace(':', ' and log ')}: {value:.2f}")
    print(
        f"fit: {results['fit_seconds']:.0f} s ({results['fit_seconds_measures']}), "
        f"{results['divergences']} divergences"
    )
    print(f"wrote {config.out / 'bandit_recovery.json'} and its figure")


if __name__ == "__main__":
    main()

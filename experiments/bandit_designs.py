"""Which bandit designs tell the learning rate apart: a quick study by maximum a posteriori fits.

The bandit's pA learner (``models/bandit.py``; arms paying 0.7 / 0.5 / 0.3) with alpha and
eta drawn from the fit's priors, in several designs, each a string ``trials:game:forgetting``:

- ``trials``: the trials per subject;
- ``game``: trials per game, where each agent's counts start again (``Task.restarts``; 0 for one
  game the whole session);
- ``forgetting``: the agents' forgetting rate omega, known to the fit (a task setting).

Every design simulates the same subjects' parameters (one seed) and fits them by MAP (Adam on
the posterior's mode, ``pp_aif.fit(method="map")``), a cheap stand-in for the posterior mean:
the correlation of the log truth with the log estimate, per parameter, says which designs are
worth a full NUTS recovery (``experiments/bandit_recovery.py``, which takes the same
``--game-length`` and ``--forgetting``).

Run: ``python experiments/bandit_designs.py --out experiments/results`` (JSON
``bandit_designs.json`` and a figure of r per design).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pp_aif  # noqa: E402
from experiments.bandit_recovery import bandit_task  # noqa: E402
from pp_aif.atomic import save_figure, write_json  # noqa: E402
from pp_aif.data import BehaviourData, long_format  # noqa: E402
from pp_aif.fitting import prior_draws  # noqa: E402
from pp_aif.fitting.predictive import simulate_subjects  # noqa: E402

PARAMS = ("alpha", "learning_rate")


@dataclass
class Config:
    designs: tuple[str, ...] = ("300:0:0", "300:10:0", "300:5:0", "300:0:0.05", "120:0:0.1")
    num_subjects: int = 100
    reward_probabilities: tuple[float, ...] = (0.7, 0.5, 0.3)
    steps: int = 400  # Adam's steps of the MAP fit
    seed: int = 0
    threads: int = 1
    out: Path = field(default_factory=lambda: Path("experiments/results"))


def parse_design(design: str) -> tuple[int, int, float]:
    """``trials:game:forgetting`` -> (trials, game length or 0, omega); a ValueError naming the
    design otherwise."""
    parts = design.split(":")
    try:
        trials, game, omega = int(parts[0]), int(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise ValueError(
            f"design {design!r}: expected trials:game:forgetting, e.g. 300:10:0"
        ) from None
    if len(parts) != 3 or trials < 1 or game < 0 or not 0 <= omega < 1:
        raise ValueError(
            f"design {design!r}: trials >= 1, game >= 0 (0: one game), 0 <= forgetting < 1"
        )
    return trials, game, omega


def run(config: Config) -> dict:
    torch.set_num_threads(config.threads)
    designs = [parse_design(d) for d in config.designs]  # every design checked first
    truth = prior_draws(PARAMS, config.num_subjects, torch.Generator().manual_seed(config.seed))
    rows = []
    for design, (trials, game, omega) in zip(config.designs, designs, strict=True):
        task = bandit_task(config.reward_probabilities, omega, game)
        simulated = simulate_subjects(task, truth, trials, config.seed)
        data = BehaviourData.read(long_format(simulated, task), task)
        start = time.perf_counter()
        fit = pp_aif.fit(task, data, list(PARAMS), method="map", steps=config.steps, seed=0)
        row = {"design": design, "trials": trials, "game": game, "forgetting": omega}
        for name in PARAMS:
            estimate = fit.posterior[name].values.reshape(-1, config.num_subjects).mean(0)
            true = truth[name].numpy()
            row[f"r_log_{name}"] = float(np.corrcoef(np.log(true), np.log(estimate))[0, 1])
        row["seconds"] = time.perf_counter() - start
        print(
            f"{design:>12}: r(log) alpha {row['r_log_alpha']:.3f}, learning_rate "
            f"{row['r_log_learning_rate']:.3f} ({row['seconds']:.0f} s)",
            flush=True,
        )
        rows.append(row)
    results = {
        "config": asdict(config),
        "designs": rows,
    }
    config.out.mkdir(parents=True, exist_ok=True)
    write_json(config.out / "bandit_designs.json", results)
    figure, axis = plt.subplots(figsize=(1.2 * len(rows) + 3, 3.6), constrained_layout=True)
    x = np.arange(len(rows))
    for offset, name in zip((-0.18, 0.18), PARAMS, strict=True):
        axis.bar(x + offset, [row[f"r_log_{name}"] for row in rows], 0.36, label=name)
    axis.axhline(0.9, color="grey", linestyle=":", label="r = 0.9")
    axis.set_xticks(x, [f"{r['trials']} trials\ngame {r['game'] or '-'}\nomega {r['forgetting']}"
                        for r in rows])  # fmt: skip
    axis.set_ylim(0, 1)
    axis.set_ylabel("r(log truth, log MAP estimate)")
    axis.set_title(f"bandit designs, {config.num_subjects} subjects each (the same parameters)")
    axis.legend(fontsize=8, loc="lower right")
    save_figure(figure, config.out / "bandit_designs.png", dpi=110)
    plt.close(figure)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Config()
    parser.add_argument(
        "--designs", default=",".join(defaults.designs),
        help="comma-separated trials:game:forgetting (game 0: one game)",
    )  # fmt: skip
    for name in ("num_subjects", "steps", "seed", "threads"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    parser.add_argument("--out", type=Path, default=defaults.out)
    args = parser.parse_args(argv)
    args.designs = tuple(d.strip() for d in args.designs.split(",") if d.strip())
    run(Config(**vars(args)))
    print(f"wrote {args.out / 'bandit_designs.json'} and its figure")


if __name__ == "__main__":
    main()

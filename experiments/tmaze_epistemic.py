"""The T-maze with and without the epistemic term (Friston et al. 2015, Cogn. Neurosci. 6(4)).

Agents meet their first T-maze trial (context drawn 50/50). The full agent should visit the cue
first and then the signalled arm; without the epistemic term, the cue and staying put have the
same expected free energy (both neutral), so the first move is a coin flip between them and
reward falls with it.

Run: ``python experiments/tmaze_epistemic.py --out experiments/results`` (JSON + figure).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pp_aif.agent import AgentSettings  # noqa: E402
from pp_aif.atomic import save_figure, write_json  # noqa: E402
from pp_aif.planning import Lesions  # noqa: E402
from pp_aif.simulation import simulate  # noqa: E402
from pp_aif.task import load_task  # noqa: E402

CUE, LEFT, RIGHT, START = 3, 1, 2, 0
SAYS_LEFT = 4


@dataclass
class Config:
    num_agents: int = 400
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("experiments/results"))


def behaviour(dataset) -> dict:
    """Rates over agents of the first trial, with binomial standard errors."""
    first = dataset.isel(trial=0)
    moves = first["action"].sel(factor="location").values  # (agent, time)
    where = first["observation"].sel(modality="where").values
    cue_first = moves[:, 0] == CUE
    signalled = np.where(where[:, 1] == SAYS_LEFT, LEFT, RIGHT)
    correct_after_cue = (moves[:, 1] == signalled)[cue_first]
    reward = first["reward"].values > 0

    def rate(x):
        x = np.asarray(x, dtype=float)
        if x.size == 0:
            return float("nan"), float("nan")
        return float(x.mean()), float(np.sqrt(x.mean() * (1 - x.mean()) / x.size))

    return {
        "cue_first": rate(cue_first),
        "stay_first": rate(moves[:, 0] == START),
        "arm_first": rate(np.isin(moves[:, 0], (LEFT, RIGHT))),
        "correct_arm_after_cue": rate(correct_after_cue),
        "reward": rate(reward),
    }


def run(config: Config) -> dict:
    task = load_task("tmaze")
    results = {"config": asdict(config)}
    rates = {}
    for label, lesions in (("epistemic", Lesions()), ("no_epistemic", Lesions(epistemic=False))):
        settings = AgentSettings(lesions=lesions)
        dataset = simulate(task, config.num_agents, 1, config.seed, settings=settings)
        rates[label] = behaviour(dataset)
    for label, values in rates.items():
        for name, (value, stderr) in values.items():
            results[f"{name}_rate_{label}"] = value
            results[f"{name}_rate_{label}_stderr"] = stderr
    write_json(config.out / "tmaze_epistemic.json", results)
    figure, ax = plt.subplots(figsize=(7, 3.4), constrained_layout=True)
    names = ["cue_first", "stay_first", "arm_first", "correct_arm_after_cue", "reward"]
    x = np.arange(len(names))
    for offset, label in ((-0.2, "epistemic"), (0.2, "no_epistemic")):
        values = [rates[label][n][0] for n in names]
        errors = [rates[label][n][1] for n in names]
        ax.bar(
            x + offset,
            values,
            0.4,
            yerr=errors,
            capsize=3,
            label="full agent" if label == "epistemic" else "without the epistemic term",
        )
    ax.set_xticks(
        x, ["cue first", "stay first", "arm first", "signalled arm\nafter cue", "rewarded"]
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"rate over {config.num_agents} agents")
    ax.set_title("T-maze, first trial: epistemic value drives cue sampling")
    ax.legend(fontsize=8)
    save_figure(figure, config.out / "tmaze_epistemic.png", dpi=120)
    plt.close(figure)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=Config.num_agents)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--out", type=Path, default=Config().out)
    arguments = parser.parse_args(argv)
    results = run(Config(num_agents=arguments.agents, seed=arguments.seed, out=arguments.out))
    for key, value in results.items():
        if key != "config" and not key.endswith("_stderr"):
            print(f"{key}: {value:.3f}")
    print(
        f"results: {arguments.out / 'tmaze_epistemic.json'}, figure: "
        f"{arguments.out / 'tmaze_epistemic.png'}"
    )


if __name__ == "__main__":
    main()

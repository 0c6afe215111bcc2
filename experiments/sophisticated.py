"""Sophisticated planning: the value of information without an epistemic term (issue 18 (a)).

In SPM's T-maze with the epistemic term lesioned, agents that plan open loop (fixed action
sequences, SPM's ``spm_MDP_VB_X``) see no value in the cue: going to the cue and staying put are
both neutral, so about half go to the cue first. A sophisticated agent (Friston et al. 2021)
plans over what it would do after each outcome: at depth 2 it values the cue for the arm it then
lets it choose, so (nearly) every agent goes to the cue first and is rewarded. The full agents
(with the epistemic term) are shown beside them, and the search of that first decision is drawn
(``sophisticated_plan_tree.png``).

Still to come (issue 18 (b)): a deeper task where open-loop planning fails, and inductive
planning.

Run: ``python experiments/sophisticated.py --out experiments/results`` (JSON + figure).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.tmaze_epistemic import behaviour  # noqa: E402
from pp_aif.agent import AgentSettings  # noqa: E402
from pp_aif.atomic import save_figure, write_json  # noqa: E402
from pp_aif.planning import Lesions  # noqa: E402
from pp_aif.planning.sophisticated import sophisticated_scores  # noqa: E402
from pp_aif.plots import plot_plan_tree  # noqa: E402
from pp_aif.simulation import simulate  # noqa: E402
from pp_aif.task import load_task  # noqa: E402

#: (label, planner, lesions): the agents compared
AGENTS = (
    ("open loop, no epistemic term", "open_loop", Lesions(epistemic=False)),
    ("sophisticated (depth 2), no epistemic term", "sophisticated", Lesions(epistemic=False)),
    ("open loop, full", "open_loop", Lesions()),
    ("sophisticated (depth 2), full", "sophisticated", Lesions()),
)


@dataclass
class Config:
    num_agents: int = 400
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("experiments/results"))


def run(config: Config) -> dict:
    task = load_task("tmaze")
    results = {"config": {**asdict(config), "out": str(config.out)}, "agents": {}}
    for label, planner, lesions in AGENTS:
        settings = AgentSettings(planner=planner, lesions=lesions)
        start = time.perf_counter()
        dataset = simulate(task, config.num_agents, 1, config.seed, settings=settings)
        seconds = time.perf_counter() - start
        rates = behaviour(dataset)
        results["agents"][label] = {
            "planner": planner,
            "lesions_removed": [t for t in ("epistemic", "pragmatic") if not getattr(lesions, t)],
            **{f"{name}_rate": value for name, (value, _) in rates.items()},
            **{f"{name}_rate_stderr": stderr for name, (_, stderr) in rates.items()},
            "seconds": seconds,
        }
    key = "sophisticated (depth 2), no epistemic term"
    results["goal"] = {
        "cue_first_rate": results["agents"][key]["cue_first_rate"],
        "reward_rate": results["agents"][key]["reward_rate"],
        "met": bool(
            results["agents"][key]["cue_first_rate"] >= 0.9
            and results["agents"][key]["reward_rate"] >= 0.9
        ),
    }
    results["plan"] = _plan_tree(task, config)
    write_json(config.out / "sophisticated.json", results)
    _figure(results, config)
    return results


def _plan_tree(task, config: Config) -> dict:
    """The first decision of the sophisticated agent without the epistemic term, as a figure
    of its search (``sophisticated_plan_tree.png``), and its root's G and q(u)."""
    settings = AgentSettings(planner="sophisticated", lesions=Lesions(epistemic=False))
    model = task.model
    scores = sophisticated_scores(
        model,
        [d[None] for d in model.D],
        depth=2,
        precision=settings.policy_precision,
        lesions=settings.lesions,
        preference_scale=settings.preference_scale,
        action_threshold=settings.action_threshold,
        outcome_threshold=settings.outcome_threshold,
        keep_tree=True,
    )
    figure = plot_plan_tree(
        scores,
        task.labels,
        model.num_states,
        levels=2,
        title="T-maze, first decision of a sophisticated agent (depth 2) without the epistemic "
        "term",
    )
    save_figure(figure, config.out / "sophisticated_plan_tree.png", dpi=110)
    plt.close(figure)
    root = scores.tree[0]
    names = [task.labels.controls[0][int(a)] for a in scores.actions[:, 0]]
    return {
        "actions": names,
        "G": scores.G[0].tolist(),
        "q_u": root.q_u[int(scores.root[0])].tolist(),
        "nodes": list(scores.nodes),
    }


def _figure(results: dict, config: Config) -> None:
    names = ["cue_first", "stay_first", "arm_first", "correct_arm_after_cue", "reward"]
    figure, ax = plt.subplots(figsize=(8, 3.6), constrained_layout=True)
    x = np.arange(len(names))
    width = 0.8 / len(AGENTS)
    for i, (label, _, _) in enumerate(AGENTS):
        row = results["agents"][label]
        ax.bar(
            x + (i - (len(AGENTS) - 1) / 2) * width,
            [row[f"{n}_rate"] for n in names],
            width,
            yerr=[row[f"{n}_rate_stderr"] for n in names],
            capsize=2,
            label=label,
        )
    ax.set_xticks(
        x, ["cue first", "stay first", "arm first", "signalled arm\nafter cue", "rewarded"]
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"rate over {config.num_agents} agents")
    ax.set_title("T-maze, first trial: sophisticated planning values the cue without epistemics")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    save_figure(figure, config.out / "sophisticated.png", dpi=120)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=Config.num_agents)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--out", type=Path, default=Config().out)
    arguments = parser.parse_args(argv)
    results = run(Config(num_agents=arguments.agents, seed=arguments.seed, out=arguments.out))
    for label, row in results["agents"].items():
        print(
            f"{label:<45} cue first {row['cue_first_rate']:.3f}  reward {row['reward_rate']:.3f}"
            f"  ({row['seconds']:.2f} s)"
        )
    print(f"goal (cue first and reward >= 0.9 without the epistemic term): {results['goal']}")
    print(
        f"results: {arguments.out / 'sophisticated.json'}, figures: sophisticated.png, "
        "sophisticated_plan_tree.png"
    )


if __name__ == "__main__":
    main()

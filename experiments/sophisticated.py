"""Sophisticated planning: the value of information without an epistemic term (issue 18 (a)).

In SPM's T-maze with the epistemic term lesioned, agents that plan open loop (fixed action
sequences, SPM's ``spm_MDP_VB_X``) see no value in the cue: going to the cue and staying put are
both neutral, so about half go to the cue first. A sophisticated agent (Friston et al. 2021)
plans over what it would do after each outcome: at depth 2 it values the cue for the arm it then
lets it choose, so (nearly) every agent goes to the cue first and is rewarded. The full agents
(with the epistemic term) are shown beside them, and the search of that first decision is drawn
(``sophisticated_plan_tree.png``).

Deeper tasks (issue 18 (b), ``deeper`` in the JSON, figure ``sophisticated_deeper.png``):

- the cue chain (``models/cue_chain.py``): a first cue tells which of 4 second cues shows the
  paying arm, in exactly the 3 moves the trial allows, and the reward counts at its end. Open
  loop (every 3-move sequence), sophisticated planning to depth 2 and 3, and inductive planning
  (towards the arms), without the epistemic term; and the full open-loop agent, whose epistemic
  term is satisfied as well by the arm's own outcome, which comes too late to use;
- the corridor maze (``models/maze.py``): the goal 14 moves away through a corridor. Open loop
  and sophisticated planning to depths 1-16 (each distinct belief once: the location is
  known, so a level has at most 15 nodes), and inductive planning with policies 1 move deep.

Run: ``python experiments/sophisticated.py --out experiments/results`` (JSON + figure).
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
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


NO_EPISTEMIC = Lesions(epistemic=False)
#: (task, label, settings): the agents of the deeper tasks
DEEPER = (
    ("cue_chain", "open loop, no epistemic term", AgentSettings(lesions=NO_EPISTEMIC)),
    ("cue_chain", "open loop, full", AgentSettings()),
    (
        "cue_chain",
        "sophisticated (depth 2), no epistemic term",
        AgentSettings(lesions=NO_EPISTEMIC, planner="sophisticated", horizon=2),
    ),
    (
        "cue_chain",
        "sophisticated (depth 3), no epistemic term",
        AgentSettings(lesions=NO_EPISTEMIC, planner="sophisticated", horizon=3),
    ),
    (
        "cue_chain",
        "inductive (open loop, to the arms), no epistemic term",
        AgentSettings(lesions=NO_EPISTEMIC, inductive_epsilon=1e-3),
    ),
    (
        "cue_chain",
        "sophisticated (depth 3) and inductive, no epistemic term",
        AgentSettings(
            lesions=NO_EPISTEMIC, planner="sophisticated", horizon=3, inductive_epsilon=1e-3
        ),
    ),
    ("maze", "open loop (1 move deep)", AgentSettings()),
    *(
        ("maze", f"sophisticated (depth {d})", AgentSettings(planner="sophisticated", horizon=d))
        for d in (1, 4, 8, 14, 16)
    ),
    ("maze", "inductive (open loop, 1 move deep)", AgentSettings(inductive_epsilon=1e-3)),
)


@dataclass
class Config:
    num_agents: int = 400
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("experiments/results"))


def run(config: Config) -> dict:
    task = load_task("tmaze")
    results = {"config": asdict(config), "agents": {}}
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
    results["deeper"] = _deeper(config)
    write_json(config.out / "sophisticated.json", results)
    _figure(results, config)
    _deeper_figure(results["deeper"], config)
    return results


def _deeper(config: Config) -> dict:
    """Each agent of ``DEEPER`` on its task, one trial: the share rewarded at the trial's end
    (the cue chain) or that reached the goal (the maze), with its standard error."""
    tasks = {name: load_task(name) for name in ("cue_chain", "maze")}
    out = {name: {"description": task.description, "agents": {}} for name, task in tasks.items()}
    for name, label, settings in DEEPER:
        task = tasks[name]
        start = time.perf_counter()
        record = simulate(task, config.num_agents, 1, config.seed, settings=settings)
        seconds = time.perf_counter() - start
        if name == "cue_chain":  # rewarded at the last step
            modality, outcome = task.reward
            success = record["observation"].values[:, 0, -1, modality] == outcome
        else:  # at the goal at some step
            success = record["reward"].values[:, 0] > 0
        rate = float(success.mean())
        out[name]["agents"][label] = {
            "success_rate": rate,
            "success_rate_stderr": math.sqrt(rate * (1 - rate) / len(success)),
            "planner": settings.planner,
            "depth": settings.horizon,
            "inductive_epsilon": settings.inductive_epsilon,
            "seconds": seconds,
        }
    return out


def _deeper_figure(deeper: dict, config: Config) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    titles = {
        "cue_chain": "cue chain: rewarded at the end",
        "maze": "corridor maze: reached the goal",
    }
    for ax, (name, result) in zip(axes, deeper.items(), strict=True):
        labels = list(result["agents"])
        rates = [result["agents"][x]["success_rate"] for x in labels]
        errors = [result["agents"][x]["success_rate_stderr"] for x in labels]
        y = np.arange(len(labels))
        ax.barh(y, rates, xerr=errors, capsize=2, color="#4a6fa5")
        for i, (rate, error) in enumerate(zip(rates, errors, strict=True)):  # beside each bar
            ax.text(rate + error + 0.02, i, f"{rate:.2f}", va="center", fontsize=7)
        if name == "cue_chain":
            ax.axvline(0.5, color="0.5", linestyle=":", linewidth=1, label="a guess between arms")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_yticks(y, [textwrap.fill(x, 34) for x in labels], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.15)
        ax.set_xlabel(f"share of {config.num_agents} agents")
        ax.set_title(titles[name], fontsize=10)
    figure.suptitle("Where open-loop planning fails: sophisticated and inductive planning")
    save_figure(figure, config.out / "sophisticated_deeper.png", dpi=120)
    plt.close(figure)


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
    for name, result in results["deeper"].items():
        print(f"{name}: {result['description']}")
        for label, row in result["agents"].items():
            print(
                f"  {label:<58} success {row['success_rate']:.3f} "
                f"± {row['success_rate_stderr']:.3f}  ({row['seconds']:.2f} s)"
            )
    print(
        f"results: {arguments.out / 'sophisticated.json'}, figures: sophisticated.png, "
        "sophisticated_plan_tree.png, sophisticated_deeper.png"
    )


if __name__ == "__main__":
    main()

"""The ``pp-aif`` command.

``pp-aif simulate TASK [--agents N --trials K --seed S --out DIR]``: agents act in a task; for one
agent a narrative of each step, for many a summary table; writes the record (netCDF) and an
SPM-style figure of the first agent's first trial, and prints their paths.

``pp-aif demo [--out DIR] [--task NAME]``: exact state inference on a small two-factor model;
prints the observations, both kinds of marginals and the log evidence (checked against Pyro's
enumeration of the same program), and writes a figure whose path it prints.

Bad arguments get one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import torch

from pp_aif.agent import INFERENCE_SCHEMES, AgentSettings

__all__ = ["main"]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )


def demo(task_name: str, out: Path) -> int:
    import pp_aif
    from pp_aif.plots import plot_state_beliefs
    from pp_aif.task import load_task

    task = load_task(task_name)
    model, labels = task.model, task.labels
    observations, actions = task.observations, task.actions
    T = observations.shape[0]
    print(f"pp_aif demo: exact state inference in '{task.name}' ({task.description})")
    print(
        "factors:    "
        + ", ".join(
            f"{n} ({len(s)} states)" for n, s in zip(labels.factors, labels.states, strict=True)
        )
    )
    print(
        "modalities: "
        + ", ".join(
            f"{n} ({len(o)} outcomes)"
            for n, o in zip(labels.modalities, labels.outcomes, strict=True)
        )
    )
    print()
    rows = [["t", *labels.modalities, *[f"action ({n})" for n in labels.factors]]]
    for t in range(T):
        rows.append(
            [
                str(t),
                *[labels.outcomes[m][int(observations[t, m])] for m in range(model.num_modalities)],
                *[
                    labels.controls[f][int(actions[t, f])] if t < T - 1 else ""
                    for f in range(model.num_factors)
                ],
            ]
        )
    print(_table(rows))

    start = time.perf_counter()
    filtering = pp_aif.infer_states(model, observations, actions, mode="filtering")
    smoothing = pp_aif.infer_states(model, observations, actions, mode="smoothing")
    exact_seconds = time.perf_counter() - start
    start = time.perf_counter()
    enumerated = pp_aif.infer_states(model, observations, actions, method="enumerate")
    enumerate_seconds = time.perf_counter() - start

    for f in range(model.num_factors):
        print(f"\nq({labels.factors[f]}_t): filtering q(s_t | o_1:t) | smoothing q(s_t | o_1:T)")
        states = labels.states[f]
        rows = [["t", *states, "|", *states]]
        for t in range(T):
            rows.append(
                [
                    str(t),
                    *[f"{p:.3f}" for p in filtering.marginals[f][t].tolist()],
                    "|",
                    *[f"{p:.3f}" for p in smoothing.marginals[f][t].tolist()],
                ]
            )
        print(_table(rows))

    difference = max(
        float((smoothing.log_evidence - enumerated.log_evidence).abs()),
        *[
            float((a - b).abs().max())
            for a, b in zip(smoothing.marginals, enumerated.marginals, strict=True)
        ],
    )
    print(f"\nlog evidence ln p(o | u) of the {T} steps = {float(smoothing.log_evidence):.6f} nats")
    print(
        f"exact kernel: {exact_seconds * 1e3:.1f} ms for both modes; Pyro enumeration of the "
        f"same program: {enumerate_seconds * 1e3:.1f} ms; largest difference {difference:.1e}"
    )

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{task.name}_beliefs.png"
    figure = plot_state_beliefs(
        filtering, smoothing, labels, observations, title=f"{task.name}: exact state inference"
    )
    figure.savefig(path, dpi=120)
    print(f"figure: {path}")
    return 0


def _narrate(dataset, labels) -> None:
    for trial in range(dataset.sizes["trial"]):
        record = dataset.isel(agent=0, trial=trial)
        print(
            f"\ntrial {trial}"
            + (f" (reward {int(record['reward'])})" if "reward" in record else "")
        )
        for t in range(dataset.sizes["time"]):
            seen = ", ".join(
                f"{m}={labels.outcomes[i][int(record['observation'][t, i])]}"
                for i, m in enumerate(labels.modalities)
            )
            believed = "; ".join(
                f"{name} " + " ".join(f"{p:.2f}" for p in record[f"belief_{name}"][t].values)
                for name in labels.factors
            )
            chosen = ", ".join(
                labels.controls[f][int(u)]
                for f, u in enumerate(record["action"][t].values)
                if u >= 0 and len(labels.controls[f]) > 1
            )
            print(
                f"  t={t}: observed {seen} | beliefs {believed}"
                + (f" | action: {chosen}" if chosen else "")
            )


def _summarise(dataset, labels) -> None:
    rows = [
        [
            "trial",
            "agents",
            *(["mean reward"] if "reward" in dataset else []),
            *[f"accuracy ({n}) at t={dataset.sizes['time'] - 1}" for n in labels.factors],
        ]
    ]
    last = dataset.isel(time=-1)
    for trial in range(dataset.sizes["trial"]):
        record = last.isel(trial=trial)
        rows.append(
            [
                str(trial),
                str(dataset.sizes["agent"]),
                *(
                    [f"{float(dataset['reward'].isel(trial=trial).mean()):.3f}"]
                    if "reward" in dataset
                    else []
                ),
                *[
                    f"{float(record['belief_accuracy'].isel(factor=f).mean()):.3f}"
                    for f in range(len(labels.factors))
                ],
            ]
        )
    print(_table(rows))


def simulate_command(
    task_name: str, agents: int, trials: int, seed: int, out: Path, inference: str = "exact"
) -> int:
    from tqdm import tqdm

    from pp_aif.plots import plot_trial
    from pp_aif.simulation import save, simulate
    from pp_aif.task import load_task

    if agents < 1 or trials < 1:
        raise ValueError(f"--agents and --trials must be at least 1, got {agents} and {trials}")
    task = load_task(task_name)
    settings = dataclasses.replace(task.settings or AgentSettings(), inference=inference)
    print(
        f"pp_aif simulate: {agents} agent(s), {trials} trial(s) of '{task.name}' "
        f"({task.description}), seed {seed}"
        + ("" if inference == "exact" else f", state inference by {inference}")
    )
    start = time.perf_counter()
    with tqdm(
        total=trials, desc="trials", disable=trials * agents < 20_000 or None, leave=False
    ) as bar:
        dataset = simulate(task, agents, trials, seed, settings=settings, progress=bar.update)
    seconds = time.perf_counter() - start
    if agents == 1:
        _narrate(dataset, task.labels)
    else:
        _summarise(dataset, task.labels)
    print(f"\n{agents * trials} agent-trials in {seconds:.2f} s")
    record = save(dataset, out / f"{task.name}_simulation.nc")
    figure = plot_trial(dataset, task.labels)
    path = out / f"{task.name}_trial.png"
    figure.savefig(path, dpi=110)
    print(f"record: {record}")
    print(f"figure: {path} (agent 0, trial 0)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pp-aif", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True)
    simulate_parser = commands.add_parser("simulate", help="agents act in a task")
    simulate_parser.add_argument("task", help="task name (e.g. tmaze) or task file")
    simulate_parser.add_argument("--agents", type=int, default=1, help="agents (default 1)")
    simulate_parser.add_argument("--trials", type=int, default=1, help="trials (default 1)")
    simulate_parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    simulate_parser.add_argument(
        "--inference",
        choices=INFERENCE_SCHEMES,
        default="exact",
        help="the agents' state inference (default exact)",
    )
    simulate_parser.add_argument(
        "--out",
        type=Path,
        default=Path("out"),
        help="folder for the record and figure (default: ./out)",
    )
    demo_parser = commands.add_parser("demo", help="exact state inference on a two-factor model")
    demo_parser.add_argument("--task", default="two_factor", help="task name or task file")
    demo_parser.add_argument(
        "--out", type=Path, default=Path("out"), help="folder for the figure (default: ./out)"
    )
    arguments = parser.parse_args(argv)
    if arguments.verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_printoptions(precision=3)
    try:
        if arguments.command == "demo":
            return demo(arguments.task, arguments.out)
        if arguments.command == "simulate":
            return simulate_command(
                arguments.task,
                arguments.agents,
                arguments.trials,
                arguments.seed,
                arguments.out,
                arguments.inference,
            )
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"pp-aif: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

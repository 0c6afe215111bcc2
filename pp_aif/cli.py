"""The ``pp-aif`` command.

``pp-aif simulate TASK [--agents N --trials K --seed S --out DIR]``: agents act in a task; for one
agent a narrative of each step, for many a summary table; writes the record (netCDF) and an
SPM-style figure of the first agent's first trial, and prints their paths. Without ``--out`` each
run writes to a new folder ``out/<task>-001``, ``out/<task>-002``, ..., so no run overwrites
another's; ``--out DIR`` writes ``DIR/<task>_simulation.nc`` and ``DIR/<task>_trial.png``,
replacing (and saying so) those of an earlier run there.

``pp-aif demo [--out DIR] [--task NAME]``: exact state inference on a small two-factor model;
prints the observations, both kinds of marginals and the log evidence (checked against Pyro's
enumeration of the same program), and writes a figure whose path it prints.

``pp-aif fit TASK DATA [--params a,b --method nuts|svi|map --hierarchical --out FILE.nc]``: fits
the agent's parameters to people's choices (long-format CSV or Parquet), shows progress bars,
prints ArviZ's summary and the convergence warnings in words, and writes the InferenceData
atomically (a failed or interrupted fit leaves no file).

``pp-aif infer TASK DATA [--method exact|...|amortised --guide FILE --mode M --out FILE.csv]``:
the hidden states of each trial in the data under the task's model, with each trial's F and
ln p(o), written as a long-format CSV. ``pp-aif train-guide TASK --out FILE`` trains the guide
that ``--method amortised`` takes.

``pp-aif compare FIT.nc FIT.nc ... [--ic loo|waic --unit trial|subject --bms --out DIR]``: ranks
fits of the same data in ArviZ's form, names unreliable Pareto k's, and with ``--bms`` runs
random-effects BMS over each subject's summed PSIS-LOO elpd and writes its figure.

Every file is written atomically (``pp_aif.atomic``): to a temporary file beside it, flushed
to disk, read back and checked where it is netCDF, then renamed over the target; a killed or
interrupted command leaves the earlier file as it was. A Ctrl-C exits with status 130 and says,
in one line, what was and was not written.

Bad arguments get one line on stderr and exit status 2, before anything else is printed; no
traceback. A name that is not known (a task, a parameter, a method, a scheme) is answered with
the known ones and, where one is close, "did you mean". A file that is not what the command
takes is named, with what it should be.

The arguments are parsed before anything heavy is imported: ``pp-aif --help`` and ``pp-aif
simulate --help`` import neither torch nor the tasks (``pp-aif fit --help`` loads the tasks to
list their columns).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys
import time
from pathlib import Path

from pp_aif.atomic import WriteInterrupted, save_figure, write_netcdf
from pp_aif.jobs import DamagedResultWarning, JobsFailed

__all__ = ["main"]


#: the files this command has written so far (for the message of an interrupted command)
_written: list[Path] = []


def _wrote(path: Path) -> Path:
    _written.append(path)
    return path


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )


#: the agents' state-inference schemes (``pp_aif.agent.INFERENCE_SCHEMES``; a test holds the two
#: equal), written out so that parsing the arguments imports no torch
INFERENCE_SCHEMES = ("exact", "fpi", "vmp", "mmp", "mean_field", "structured")
#: how agents plan (``pp_aif.agent.PLANNERS``; a test holds the two equal)
PLANNERS = ("open_loop", "sophisticated")
#: the fitting methods (``pp_aif.fitting.fit.METHODS``; a test holds the two equal)
FIT_METHODS = ("nuts", "svi", "map", "grid", "amortised")


def _did_you_mean(given: str, known) -> str:
    """' (did you mean 'x'?)' where one of ``known`` is close to ``given`` (difflib), else ''."""
    close = difflib.get_close_matches(str(given), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with "did you mean" for a choice that is not known, and an epilog
    that may be a function, called only when the help is shown (the fit command's lists the
    tasks' columns, which loads the tasks)."""

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            hint = _did_you_mean(value, action.choices)
            if hint:
                choices = ", ".join(repr(choice) for choice in action.choices)
                raise argparse.ArgumentError(
                    action, f"invalid choice: {value!r}{hint}; choose from {choices}"
                )
        super()._check_value(action, value)

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _load_task(name: str):
    """The task of that name or file; a ValueError naming what was given and, for a name that
    is close to a task's, the task meant."""
    from pp_aif.task import available_tasks, load_task

    known = available_tasks()
    path = Path(name)
    if path.suffix != ".py" and path.is_file():
        raise ValueError(
            f"{name} is not a task: give a task's name ({', '.join(known)}) or a task file "
            "(a .py file with a build() function; docs/tasks.md)"
        )
    try:
        return load_task(name)
    except ValueError as error:
        if not str(error).startswith(f"unknown task {name!r}"):
            raise
        raise ValueError(
            f"unknown task {name!r}{_did_you_mean(name, known)}; known tasks: {', '.join(known)}"
        ) from None


def demo(task_name: str, out: Path) -> int:
    import pp_aif
    from pp_aif.plots import plot_state_beliefs

    task = _load_task(task_name)
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
    _wrote(save_figure(figure, path, dpi=120))
    print(f"figure: {path}")
    return 0


def _narrate(dataset, task) -> None:
    """Each step of agent 0's trials: what it saw, believed and did. A move that leaves its
    factor's state where it was (into a wall of the foraging grid, out of an absorbing arm) is
    marked, since the next step's state would otherwise read as a move that failed."""
    import torch

    labels = task.labels
    moves = [
        [
            not torch.equal(B[:, :, u], torch.eye(B.shape[0], dtype=B.dtype))
            for u in range(B.shape[2])
        ]
        for B in (b.cpu() for b in task.model.B)
    ]
    T = dataset.sizes["time"]
    for trial in range(dataset.sizes["trial"]):
        record = dataset.isel(agent=0, trial=trial)
        print(
            f"\ntrial {trial}"
            + (f" (reward {int(record['reward'])})" if "reward" in record else "")
        )
        states = record["true_state"].values
        for t in range(T):
            seen = ", ".join(
                f"{m}={labels.outcomes[i][int(record['observation'][t, i])]}"
                for i, m in enumerate(labels.modalities)
            )
            believed = "; ".join(
                f"{name} " + " ".join(f"{p:.2f}" for p in record[f"belief_{name}"][t].values)
                for name in labels.factors
            )
            chosen = []
            for f, u in enumerate(int(u) for u in record["action"][t].values):
                if u < 0 or len(labels.controls[f]) == 1:
                    continue
                text = labels.controls[f][u]
                if moves[f][u] and t + 1 < T and states[t + 1, f] == states[t, f]:
                    state = labels.states[f][int(states[t, f])]
                    text += f" (no effect from there: {labels.factors[f]} stays {state})"
                chosen.append(text)
            print(
                f"  t={t}: observed {seen} | beliefs {believed}"
                + (f" | action: {', '.join(chosen)}" if chosen else "")
            )


def _revealing_modalities(model) -> list[int | None]:
    """For each factor, a modality whose outcome reveals its state (every outcome is possible
    under at most one of the factor's states, whatever the other factors' states: A's
    structural zeros, which learning keeps), or None where none does: the factor is hidden."""
    found = []
    for f in range(model.num_factors):
        others = tuple(1 + g for g in range(model.num_factors) if g != f)
        revealing = None
        for m, A in enumerate(model.A):  # (O_m, S_1..S_F)
            possible = (A > 0).to(float)
            possible = possible.sum(others) if others else possible  # (O_m, S_f)
            if ((possible > 0).sum(-1) <= 1).all():
                revealing = m
                break
        found.append(revealing)
    return found


def _summarise(dataset, task) -> None:
    """A row per trial: the agents, their mean reward, and the mean accuracy of the beliefs
    about each hidden factor at the last step (a factor some modality reveals is always
    believed at 1 and is left out, with a note that says so)."""
    labels = task.labels
    revealing = _revealing_modalities(task.model)
    hidden = [f for f, m in enumerate(revealing) if m is None]
    last_step = dataset.sizes["time"] - 1
    rows = [
        [
            "trial",
            "agents",
            *(["mean reward"] if "reward" in dataset else []),
            *[f"accuracy ({labels.factors[f]}) at t={last_step}" for f in hidden],
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
                *[f"{float(record['belief_accuracy'].isel(factor=f).mean()):.3f}" for f in hidden],
            ]
        )
    print(_table(rows))
    seen = [
        f"{labels.factors[f]} (revealed by {labels.modalities[m]!r})"
        for f, m in enumerate(revealing)
        if m is not None
    ]
    if seen:
        print(
            f"(not shown: the accuracy of beliefs about {', '.join(seen)}, always 1; the "
            "record's belief_accuracy holds every factor's)"
        )


def _fresh_folder(parent: Path, stem: str) -> Path:
    """A new folder ``parent/stem-NNN``, NNN one more than the largest there; made here (mkdir
    fails where another run took the name first, and the next is tried)."""
    stem = re.sub(r"[^\w.-]", "_", stem)
    pattern = re.compile(rf"{re.escape(stem)}-(\d+)")
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in parent.iterdir() if (m := pattern.fullmatch(p.name))]
    number = max(taken, default=0) + 1
    while True:
        folder = parent / f"{stem}-{number:03d}"
        try:
            folder.mkdir()
        except FileExistsError:
            number += 1
            continue
        return folder


#: the folder in which ``simulate`` makes a new folder per run when ``--out`` is not given
RUNS_FOLDER = Path("out")


def simulate_command(
    task_name: str,
    agents: int,
    trials: int,
    seed: int,
    out: Path | None,
    inference: str = "exact",
    device: str | None = None,
    planning: str | None = None,
    inductive: float | None = None,
    compile: bool = False,  # noqa: A002 - simulate's option
) -> int:
    """Simulate, narrate or summarise, write the record and the figure: into ``out``
    (replacing an earlier run's files there, and saying so), or, where ``out`` is None, into a
    new folder ``out/<task>-NNN``."""
    import dataclasses

    from tqdm import tqdm

    from pp_aif.agent import AgentSettings
    from pp_aif.plots import plot_trial
    from pp_aif.simulation import save, simulate

    if agents < 1 or trials < 1:
        raise ValueError(f"--agents and --trials must be at least 1, got {agents} and {trials}")
    task = _load_task(task_name)
    settings = dataclasses.replace(task.settings or AgentSettings(), inference=inference)
    if planning is not None:
        settings = dataclasses.replace(settings, planner=planning)
    settings = _with_inductive(task, settings, inductive)
    print(
        f"pp_aif simulate: {agents} agent(s), {trials} trial(s) of '{task.name}' "
        f"({task.description}), seed {seed}"
        + ("" if inference == "exact" else f", state inference by {inference}")
        + ("" if settings.planner == "open_loop" else f", {settings.planner} planning")
        + _inductive_note(settings)
        + (", compiled steps (the first trials compile)" if compile else "")
    )
    start = time.perf_counter()
    with tqdm(
        total=trials, desc="trials", disable=trials * agents < 20_000 or None, leave=False
    ) as bar:
        dataset = simulate(
            task, agents, trials, seed, settings=settings, progress=bar.update, device=device,
            compile=compile,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    if agents == 1:
        _narrate(dataset, task)
    else:
        _summarise(dataset, task)
    print(f"\n{agents * trials} agent-trials in {seconds:.2f} s")
    fresh = out is None
    folder = _fresh_folder(RUNS_FOLDER, task.name) if fresh else out
    targets = [folder / f"{task.name}_simulation.nc", folder / f"{task.name}_trial.png"]
    earlier = [path.exists() for path in targets]
    try:
        record = _wrote(save(dataset, targets[0]))
        print(f"record: {record}" + (" (replaces the earlier one)" if earlier[0] else ""))
        figure = plot_trial(dataset, task.labels)
        path = _wrote(save_figure(figure, targets[1], dpi=110))
        print(
            f"figure: {path} (agent 0, trial 0"
            + ("; replaces the earlier one)" if earlier[1] else ")")
        )
    except BaseException:
        if fresh and not any(folder.iterdir()):
            folder.rmdir()  # the run's own folder, left empty: no trace of the run
        raise
    return 0


def _fit_parameters(text: str) -> list[str]:
    """The names of ``--params``: at least one, each known (else "did you mean"), none twice."""
    known = list(FIT_PARAMETERS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(
            f"--params: {text!r} names no parameter; give one or more of {', '.join(known)}, "
            "separated by commas (e.g. --params gamma,alpha)"
        )
    for name in names:
        if name not in FIT_PARAMETERS:
            raise ValueError(
                f"--params: unknown parameter {name!r}{_did_you_mean(name, known)}; known: "
                f"{', '.join(known)} (pp-aif fit --help says what each means)"
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"--params: {', '.join(repeated)} named more than once in {text!r}")
    return names


def _check_fit_arguments(
    names, method, out, hierarchical, chains, draws, warmup, steps, subjects_per_job, workers
) -> None:
    """A ValueError, naming the option, for arguments ``fit`` would refuse (before the fit's
    header is printed)."""
    if out.suffix != ".nc":
        raise ValueError(f"--out: {out} should end in .nc (the InferenceData is netCDF)")
    for option, value, least in (
        ("--chains", chains, 1),
        ("--draws", draws, 1),
        ("--warmup", warmup, 0),
        ("--steps", steps, 1),
        ("--subjects-per-job", subjects_per_job, 1),
        ("--workers", 1 if workers is None else workers, 1),
    ):
        if value < least:
            raise ValueError(f"{option}: {value}; need at least {least}")
    if method == "map" and hierarchical:
        raise ValueError(
            "--method map with --hierarchical has no useful mode (the density grows without "
            "bound as the population scales shrink to 0); use nuts or svi"
        )
    if method == "grid" and (hierarchical or len(names) > 2):
        raise ValueError(
            "--method grid (the exact posterior by quadrature) is for 1 or 2 parameters per "
            f"subject without --hierarchical; got {len(names)} parameter(s)"
            + (" and --hierarchical" if hierarchical else "")
        )


def train_command(
    task_name: str,
    params: str,
    out: Path,
    *,
    simulations: int,
    trials: int,
    min_trials: int,
    epochs: int,
    flow: str,
    seed: int,
    schedule: str = "constant",
) -> int:
    """Train a posterior estimator, printing its progress and validation loss, and write it
    atomically to ``out``."""
    from pp_aif.fitting.amortised import EstimatorSettings
    from pp_aif.fitting.training import train_estimator

    names = _fit_parameters(params)
    settings = EstimatorSettings(
        simulations=simulations,
        trials=trials,
        min_trials=min_trials,
        epochs=epochs,
        flow=flow,
        seed=seed,
        schedule=schedule,
    )  # fmt: skip (checked before anything runs)
    task = _load_task(task_name)
    print(
        f"pp_aif train: a posterior estimator of {', '.join(names)} for '{task.name}': "
        f"{simulations} simulated subjects of {min_trials}-{trials} trials, seed {seed}"
    )
    start = time.perf_counter()
    estimator, record = train_estimator(
        task, names, settings, progress=lambda line: print(line, flush=True)
    )
    path = _wrote(estimator.save(out))
    best = min(record["validation_loss"])
    print(
        f"trained in {time.perf_counter() - start:.0f} s (simulating "
        f"{record['seconds_simulating']:.0f} s); best validation loss {best:.4f} nats at "
        f"epoch {record['best_epoch']}"
    )
    print(f"estimator: {path}  (pp-aif fit {task_name} DATA --params {','.join(names)} "
          f"--method amortised --estimator {path})")  # fmt: skip
    return 0


#: infer's methods (``pp_aif.infer_states``'s, but the Pyro program's enumeration, an oracle;
#: a test holds the two equal)
INFER_METHODS = ("exact", "mean_field", "structured", "fpi", "vmp", "mmp", "amortised")


def infer_command(
    task_name: str,
    data_path: Path,
    method: str,
    mode: str,
    out: Path,
    guide_path: Path | None = None,
    anonymise: bool = False,
    salt: str | None = None,
) -> int:
    """Infer the hidden states of every trial in the data under the task's model (as it is:
    no learning across trials) and write them atomically as a long-format CSV: subject, trial,
    time, q(factor=state) per factor and state, and per trial the method's free energy F and
    the exact ln p(o) (F >= -ln p(o); equal for exact inference)."""
    import warnings

    import numpy as np
    import pandas as pd
    import torch

    import pp_aif
    from pp_aif.atomic import write_text
    from pp_aif.data import BehaviourData
    from pp_aif.errors import DataError
    from pp_aif.inference.amortised import AmortisedGuide
    from pp_aif.inference.exact import exact_filtering
    from pp_aif.inference.inputs import scheme_inputs

    if (guide_path is None) != (method != "amortised"):
        raise ValueError(
            "--guide: --method amortised needs the file of a trained guide (pp-aif train-guide)"
            if guide_path is None
            else "--guide: only --method amortised takes a guide"
        )
    if guide_path is not None and not Path(guide_path).is_file():
        raise FileNotFoundError(f"--guide: no file {guide_path}")
    if Path(out).suffix.lower() != ".csv":
        raise ValueError(f"--out: {out} is not a .csv file (infer writes a CSV table)")
    task = _load_task(task_name)
    model = task.model
    guide = None if guide_path is None else AmortisedGuide.load(guide_path, model)
    data = BehaviourData.read(data_path, task, anonymise=anonymise, salt=salt)
    where = data.present.nonzero()  # (P, 2): subject, trial position
    observations, actions = data.observations[data.present], data.actions[data.present]
    P, T = observations.shape[:2]

    def trial_name(i: int) -> str:
        n, k = (int(x) for x in where[i])
        return f"subject {data.subjects[n]!r} trial {data.trials[n][k]}"

    # the exact forward pass, which never raises: ln p(o) of every trial, -inf if impossible
    result = exact_filtering(scheme_inputs(model, observations, actions))
    log_evidence = result.log_normalisers.sum(-1)
    impossible = (~(log_evidence > -torch.inf)).nonzero()[:, 0].tolist()
    if impossible:
        first = impossible[0]
        try:
            pp_aif.infer_states(model, observations[first], actions[first])
            reason = ""
        except DataError as error:
            reason = f" ({trial_name(first)}: {str(error).removeprefix('observations: ')})"
        named = ", ".join(trial_name(i) for i in impossible[:5])
        more = f" and {len(impossible) - 5} more" if len(impossible) > 5 else ""
        raise DataError(
            f"{data_path}: {len(impossible)} trial(s) have probability 0 under task "
            f"{task.name!r}'s model: {named}{more}{reason}"
        )
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # said in words below
        warnings.simplefilter("always")
        beliefs = pp_aif.infer_states(  # a method that has no such mode is refused here
            model, observations, actions, method=method, mode=mode, guide=guide
        )
    seconds = time.perf_counter() - start
    print(
        f"pp_aif infer: {mode} posteriors of {P} trials ({data.num_subjects} subjects) of "
        f"'{task.name}' by {method}" + (f" (guide {guide_path})" if guide is not None else "")
    )
    F = -log_evidence if beliefs.free_energy is None else beliefs.free_energy
    n, k = where[:, 0].numpy(), where[:, 1].numpy()
    columns = {
        "subject": np.repeat([data.subjects[i] for i in n], T),
        "trial": np.repeat([data.trials[a][b] for a, b in zip(n, k, strict=True)], T),
        "time": np.tile(np.arange(T), P),
    }
    labels = task.labels
    for f, factor in enumerate(labels.factors):
        marginal = beliefs.marginals[f].detach().cpu().numpy().reshape(P * T, -1)
        for s, state in enumerate(labels.states[f]):
            columns[f"{factor}={state}"] = marginal[:, s]
    columns["free_energy"] = np.repeat(F.detach().cpu().numpy(), T)
    columns["log_evidence"] = np.repeat(log_evidence.cpu().numpy(), T)
    table = pd.DataFrame(columns)
    gap = (F + log_evidence) / T
    each = seconds / P
    each = f"{each * 1e3:.3g} ms" if each >= 1e-3 else f"{each * 1e6:.3g} us"
    print(
        f"{P} trials in {seconds:.3g} s ({each} a trial); F - (-ln p(o)) per step: mean "
        f"{float(gap.mean()):.3g}, largest {float(gap.max()):.3g} nats"
    )
    for warning in caught:
        print(f"warning: {warning.message}")
    write_text(out, table.to_csv(index=False, float_format="%.10g"))
    print(f"beliefs: {_wrote(Path(out))}")
    return 0


def train_guide_command(
    task_name: str,
    out: Path,
    *,
    steps: int,
    batch_size: int,
    hidden: int | None,
    learning_rate: float,
    seed: int,
) -> int:
    """Train an amortised state-inference guide for the task's model on its trials' length,
    printing its progress and, at the end, its gap on fresh sequences; write it atomically."""
    import pyro
    import torch

    import pp_aif
    from pp_aif.inference.amortised import (
        AmortisedTraining,
        random_sequences,
        train_amortised_guide,
    )

    task = _load_task(task_name)
    T = task.trial_length
    settings = AmortisedTraining(
        steps=steps,
        batch_size=batch_size,
        min_length=T,
        max_length=T,
        **({} if hidden is None else {"hidden": hidden}),  # None: the library's default
        learning_rate=learning_rate,
        validation=256,
        every=max(steps // 10, 1),
        seed=seed,
    )  # fmt: skip (checked before anything runs)
    hidden = settings.hidden
    print(
        f"pp_aif train-guide: an amortised state-inference guide for '{task.name}' "
        f"(trials of {T} steps): {steps} steps of {batch_size} sequences, {hidden} hidden "
        f"units, seed {seed}"
    )
    guide, record = train_amortised_guide(
        task.model, settings, progress=lambda line: print(line, flush=True)
    )
    generator = torch.Generator().manual_seed(seed + 1)
    pyro.set_rng_seed(seed + 1)  # the program's draws of the fresh sequences
    fresh = random_sequences(task.model, 1000, T, generator)
    observations, actions = fresh.observations, fresh.actions
    exact = pp_aif.infer_states(task.model, observations, actions)
    amortised = pp_aif.infer_states(
        task.model, observations, actions, method="amortised", guide=guide
    )
    gap = (amortised.free_energy + exact.log_evidence) / T
    print(
        f"trained in {record['seconds']:.0f} s; on 1000 fresh sequences F - (-ln p(o)) per "
        f"step: mean {float(gap.mean()):.3g}, largest {float(gap.max()):.3g} nats"
    )
    path = _wrote(guide.save(out))
    print(f"guide: {path}  (pp-aif infer {task_name} DATA --method amortised --guide {path})")
    return 0


def _with_inductive(task, settings, epsilon: float | None):
    """The settings with inductive planning at ``epsilon`` (None: as they are); a task without
    intended states is refused before anything runs."""
    import dataclasses

    if epsilon is None:
        return settings
    if task.model.H is None:
        raise ValueError(
            f"--inductive: task {task.name!r} has no intended states (GenerativeModel(H=...)); "
            "the maze task has them"
        )
    return dataclasses.replace(settings, inductive_epsilon=epsilon)


def _inductive_note(settings) -> str:
    epsilon = settings.inductive_epsilon
    return "" if epsilon is None else f", inductive planning (epsilon {epsilon:g})"


def fit_command(
    task_name: str,
    data_path: Path,
    params: str,
    method: str,
    out: Path,
    *,
    chains: int,
    draws: int,
    warmup: int,
    steps: int,
    seed: int,
    hierarchical: bool,
    anonymise: bool,
    salt: str | None,
    device: str | None = None,
    subjects_per_job: int = 10,
    scheduler: str | None = None,
    workers: int | None = None,
    planning: str | None = None,
    inductive: float | None = None,
    estimator: Path | None = None,
    importance: int | None = None,
) -> int:
    """Fit, print the ArviZ summary and the warnings in words, write the InferenceData
    atomically: to a temporary file beside ``out``, read back and checked, renamed only once
    it is whole.

    Without a population model, more subjects than ``subjects_per_job`` are fitted in groups,
    each a Dask job (``pp_aif.fitting.fanout``): on a local cluster of ``workers`` processes, or
    on the cluster at ``scheduler`` ("inline": one after another here). The groups' results go
    to ``<out>.jobs/`` as they finish, and a rerun fits only the groups not there."""
    import dataclasses
    import warnings

    import arviz as az
    from tqdm import tqdm

    from pp_aif.agent import AgentSettings
    from pp_aif.data import BehaviourData
    from pp_aif.errors import ConvergenceWarning, LongFitWarning
    from pp_aif.fitting import fit
    from pp_aif.fitting.replay import check_fittable

    # every argument checked before anything is printed
    names = _fit_parameters(params)
    _check_fit_arguments(
        names, method, out, hierarchical, chains, draws, warmup, steps, subjects_per_job, workers
    )
    if (estimator is None) != (method != "amortised"):
        raise ValueError(
            "--estimator: --method amortised needs the file of a trained estimator (pp-aif train)"
            if estimator is None
            else "--estimator: only --method amortised takes an estimator"
        )
    if importance is not None and method != "amortised":
        raise ValueError("--importance: only --method amortised reweighs its draws")
    if importance is not None and importance < 2:
        raise ValueError(f"--importance: {importance} proposal(s) a subject; give 2 or more")
    if estimator is not None and not Path(estimator).is_file():
        raise FileNotFoundError(f"--estimator: no file {estimator}")
    task = _load_task(task_name)
    if planning is not None or inductive is not None:  # the agents fitted plan this way
        settings = task.settings or AgentSettings()
        if planning is not None:
            settings = dataclasses.replace(settings, planner=planning)
        settings = _with_inductive(task, settings, inductive)
        task = dataclasses.replace(task, settings=settings)
    check_fittable(task.model, task.settings or AgentSettings(), names)  # whatever the data
    data = BehaviourData.read(data_path, task, anonymise=anonymise, salt=salt)
    N, K = data.present.shape
    planner = (task.settings or AgentSettings()).planner
    print(
        f"pp_aif fit: {', '.join(names)} of '{task.name}' by {method}"
        + (" (hierarchical)" if hierarchical else "")
        + ("" if planner == "open_loop" else f", {planner} planning")
        + _inductive_note(task.settings or AgentSettings())
        + f", {N} subject(s), {int(data.present.sum())} trial(s), "
        f"{int(data.present.sum()) * data.actions.shape[2]} choices, seed {seed}"
    )
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=stage, leave=False)
        bar = bars[stage]
        bar.update(done - bar.n)

    arguments = dict(
        method=method, chains=chains, draws=draws, warmup=warmup, steps=steps, device=device
    )
    if estimator is not None:  # every subject at once: no optimisation to spread over jobs
        arguments["estimator"] = estimator
        arguments["importance"] = importance
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.simplefilter("always", DamagedResultWarning)
        warnings.simplefilter("always", LongFitWarning)

        def now_or_later(message, category, filename, lineno, file=None, line=None):
            """A long fit is announced before it starts; every other warning after it."""
            if issubclass(category, LongFitWarning):
                print(f"warning: {message}", flush=True)
            else:
                caught.append(
                    warnings.WarningMessage(message, category, filename, lineno, file, line)
                )

        warnings.showwarning = now_or_later  # restored by catch_warnings
        if hierarchical or N <= subjects_per_job or method == "amortised":
            inference = fit(
                task,
                data,
                names,
                hierarchical=hierarchical,
                seed=seed,
                progress=progress,
                **arguments,
            )
        else:
            from pp_aif.fitting.fanout import fit_subjects
            from pp_aif.jobs import JobStore

            store = out.with_name(f"{out.stem}.jobs")
            jobs = -(-N // subjects_per_job)
            where = scheduler or (
                f"a local cluster of {workers} worker(s)"
                if workers
                else "a local cluster (a worker per core, at most one per job)"
            )
            print(f"{jobs} jobs of up to {subjects_per_job} subjects on {where}")
            print(f"each job's result goes to {store}/ as it finishes (a rerun fits only the rest)")

            def job_progress(name: str, done: int, total: int) -> None:
                if not name and done:
                    print(f"resuming: {done} of {total} jobs already in {store}/")
                elif name:  # each job as it finishes, above the bar of them all
                    minutes = (time.perf_counter() - start) / 60
                    tqdm.write(f"job {name} done: {done} of {total} after {minutes:.1f} min")
                progress("jobs", done, total)

            try:
                with _quiet_dask():
                    inference = fit_subjects(
                        task,
                        data,
                        names,
                        store=store,
                        subjects_per_job=subjects_per_job,
                        scheduler=scheduler,
                        workers=workers,
                        seed=seed,
                        progress=job_progress,
                        announce=lambda line: print(line, flush=True),
                        **arguments,
                    )
            except KeyboardInterrupt:
                for bar in bars.values():
                    bar.close()
                raise _Interrupted(
                    f"{_jobs_kept(JobStore(store))}; {out} was not written"
                ) from None
            except JobsFailed as error:
                for bar in bars.values():
                    bar.close()
                error.args = (f"{error}; {_jobs_kept(JobStore(store))}",)
                raise
    for bar in bars.values():
        bar.close()
    seconds = time.perf_counter() - start
    variables = names + list(inference.attrs.get("population", []))
    if method == "map":  # one draw: the estimates themselves
        import pandas as pd

        posterior = inference.posterior
        table = pd.DataFrame(
            {name: posterior[name].values[0, 0] for name in names},
            index=pd.Index(posterior.coords["subject"].values, name="subject"),
        )
        print("posterior mode:\n" + table.round(4).to_string())
    else:
        single_chain = method in ("svi", "grid") or chains < 2
        kind = "stats" if single_chain else "all"
        summary = az.summary(inference, var_names=variables, kind=kind, round_to=3)
        print(summary.to_string())
    print(f"\nfitted in {seconds:.1f} s")
    if importance is not None:
        import numpy as np

        from pp_aif.fitting.fit import PARETO_K_LIMIT

        k = np.asarray(inference.attrs["importance_pareto_k"])
        ess = np.asarray(inference.attrs["importance_ess"])
        print(
            f"importance sampling: {importance} proposals a subject; Pareto k at most "
            f"{k.max():.2f} ({int((k > PARETO_K_LIMIT).sum())} subject(s) above "
            f"{PARETO_K_LIMIT}); effective sample "
            f"size {ess.min():.0f} at least, median {np.median(ess):.0f}"
        )
    _report(caught, (ConvergenceWarning, DamagedResultWarning))
    write_netcdf(inference, out)  # read back and checked before it takes the name
    _wrote(out)
    print(f"posterior: {out}")
    return 0


class _Interrupted(KeyboardInterrupt):
    """A Ctrl-C with the one line that says what was kept."""


def _jobs_kept(store) -> str:
    """What an interrupted or failed fan-out leaves: the finished jobs' folder, named only if
    it holds results."""
    done = len(store.names())
    if not done:
        return "no job had finished, so none is kept"
    return (
        f"the {done} finished job(s) are kept in {store.directory}/, and the same command "
        "resumes from them"
    )


class _quiet_dask:
    """distributed's log lines (timestamped warnings of cancelled tasks and workers killed at
    shutdown, which an interrupted or failed fan-out prints in every process) held back: its
    loggers here at ERROR, and its worker processes, which read the level from the
    environment when they start, likewise. Restored on exit."""

    _LOGGERS = ("distributed", "distributed.client", "distributed.nanny", "distributed.scheduler")
    _VARIABLE = "DASK_LOGGING__DISTRIBUTED"

    def __enter__(self):
        self._levels = {name: logging.getLogger(name).level for name in self._LOGGERS}
        for name in self._LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        self._variable = os.environ.get(self._VARIABLE)
        os.environ[self._VARIABLE] = "error"
        return self

    def __exit__(self, *exception):
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        if self._variable is None:
            os.environ.pop(self._VARIABLE, None)
        else:
            os.environ[self._VARIABLE] = self._variable
        return False


def _report(caught, category) -> None:
    """Print the recorded warnings of ``category`` (a class or a tuple of them) in words; pass
    every other one on."""
    import warnings

    for warning in caught:
        if issubclass(warning.category, category):
            print(f"warning: {warning.message}")
        else:
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )


def compare_command(paths: list[Path], ic: str, unit: str, use_bms: bool, out: Path) -> int:
    """Rank fits by PSIS-LOO / WAIC; with ``use_bms``, random-effects BMS over each subject's
    summed pointwise elpd (PSIS-LOO per trial, summed over the subject's trials) and a figure."""
    import warnings

    import numpy as np

    from pp_aif.comparison import bms, compare, subject_elpd
    from pp_aif.errors import DiagnosticWarning
    from pp_aif.plots import plot_model_selection

    if len(paths) < 2:
        raise ValueError(f"give at least two fit files to compare, got {len(paths)}")
    names = [path.stem for path in paths]
    if len(set(names)) != len(names):
        names = [str(path) for path in paths]
    fits = {name: _read_fit(path) for name, path in zip(names, paths, strict=True)}
    print(f"pp_aif compare: {len(fits)} fits by {ic}, left-out unit: {unit}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DiagnosticWarning)
        table = compare(fits, ic=ic, unit=unit)
    columns = [c for c in table.columns if c != "scale"]
    print(table[columns].round(3).to_string())
    _report(caught, DiagnosticWarning)
    if not use_bms:
        return 0
    # each subject's elpd over its own trials: (N, models); Pareto k was reported above
    per_subject = np.stack([subject_elpd(fits[name]) for name in names], -1)
    result = bms(per_subject)
    rows = [["model", "frequency", "exceedance", "protected"]]
    for k, name in enumerate(names):
        rows.append(
            [
                name,
                f"{result.expected_frequencies[k]:.3f}",
                f"{result.exceedance[k]:.3f}",
                f"{result.protected_exceedance[k]:.3f}",
            ]
        )
    print(
        f"\nrandom-effects BMS over {per_subject.shape[0]} subjects (log evidence: each "
        "subject's summed PSIS-LOO elpd)"
    )
    print(_table(rows))
    print(f"Bayesian omnibus risk: {result.bor:.3f}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model_selection.png"
    _wrote(save_figure(plot_model_selection(names, result), path, dpi=110))
    print(f"figure: {path}")
    return 0


#: the first bytes of a netCDF file: HDF5 (netCDF-4) or the classic format
_NETCDF_SIGNATURES = (b"\x89HDF\r\n\x1a\n", b"CDF\x01", b"CDF\x02", b"CDF\x05")
_FIT_FILE = "a fit file (the netCDF InferenceData written by pp-aif fit)"


def _read_fit(path: Path):
    """An InferenceData file for ``compare``, refused (naming it, and what it should be) if it
    is not netCDF, cannot be read, is netCDF of something else than a fit (a simulation
    record), or if a coordinate that names subjects or trials repeats a value (a damaged
    file, such as one whose subject ids were cut short)."""
    import arviz as az
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"fit file not found: {path}")
    with open(path, "rb") as file:
        start = file.read(8)
    if not start.startswith(_NETCDF_SIGNATURES):
        text = bool(start) and all(32 <= byte < 127 or byte in b"\t\r\n" for byte in start)
        hint = ""
        if text:
            hint = " but text" + (
                " (a table of choices? fit it first: pp-aif fit TASK DATA)"
                if path.suffix.lower() in (".csv", ".tsv", ".txt")
                else ""
            )
        raise ValueError(f"{path} is not {_FIT_FILE}: it is not netCDF{hint}")
    try:
        inference = az.from_netcdf(path)
        inference.load()
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"fit file {path} cannot be read ({type(error).__name__}: {error}); is it truncated?"
        ) from None
    missing = [
        group for group in ("posterior", "log_likelihood") if group not in inference.groups()
    ]
    if missing:
        simulated = str(getattr(inference, "attrs", {}).get("source", "")) == "pp_aif.simulate"
        raise ValueError(
            f"{path} is not {_FIT_FILE}: "
            + ("it is a simulation record (pp-aif simulate)" if simulated else "it is netCDF")
            + f" without the {' and '.join(missing)} group{'s' if len(missing) > 1 else ''}"
        )
    for group in inference.groups():
        for name in ("subject", "trial"):
            if name in inference[group].coords:
                values = np.asarray(inference[group].coords[name].values)
                unique, counts = np.unique(values.astype(str), return_counts=True)
                if (counts > 1).any():
                    raise ValueError(
                        f"fit file {path}: {group}'s {name} coordinate repeats "
                        f"{unique[counts > 1].tolist()[:5]}; the file is damaged (ids cut "
                        "short?), fit again"
                    )
    return inference


#: what each fittable parameter means, and its default prior (``pp_aif.fitting.likelihood``'s
#: PARAMETERS and ``pp_aif.fitting.fit.default_priors``; the tests hold the three together)
FIT_PARAMETERS = {
    "gamma": ("policy precision: q(pi) = softmax(ln E - gamma G)", "LogNormal(0, 1)"),
    "alpha": ("action precision: p(u) prop. to exp(alpha ln q(u))", "LogNormal(ln 4, 1)"),
    "preference": ("scale c of the preferences: ln p~(o) = log_softmax(c C)", "LogNormal(0, 1)"),
    "learning_rate": ("eta: evidence added to the learned counts per trial", "LogNormal(0, 1)"),
    "forgetting": (
        "omega: the share of the counts forgotten between trials",
        "logit-Normal(-2, 1)",
    ),
    "concentration": ("kappa: the first trial's counts are kappa * the model's", "LogNormal(0, 1)"),
    "likelihood_precision": (
        "zeta: inference and planning use A^zeta, renormalised",
        "LogNormal(0, 0.5)",
    ),
}


def _fit_epilog() -> str:
    """The fit command's help after the options: the data's columns, the columns of the tasks
    here, and what each parameter means."""
    from pp_aif.task import available_tasks, load_task

    lines = [
        "data: one row per subject, trial and time step, with the columns",
        "  subject        an identifier (a CSV's text as it is: '01' and '1' differ)",
        "  trial          an integer; a subject's trials are taken in increasing order",
        "  time           the step within the trial, 0 .. T-1, every step present",
        "  <modality>     one column per modality of the task, named after it: the",
        "                 outcome observed at that step, 0-based",
        "  <factor>       one column per factor of the task, named after it: the",
        "                 control chosen at that step, 0-based; empty at a trial's last",
        "                 step (no action follows it), and may be empty throughout for a",
        "                 factor with one control",
        "  anything else  a covariate, kept per subject and not fitted",
        "The names come from the task's labels (a task file's are its own); a table that",
        "does not fit the task is refused, naming its rows.",
        "",
        "columns of the tasks here (modalities; factors; T):",
    ]
    for name in available_tasks():
        labels, T = (task := load_task(name)).labels, task.trial_length
        lines.append(
            f"  {name:<12} {', '.join(labels.modalities)}; {', '.join(labels.factors)}; T = {T}"
        )
    lines += ["", "parameters (--params), what each means, and its default prior:"]
    width = max(map(len, FIT_PARAMETERS))
    for name, (meaning, prior) in FIT_PARAMETERS.items():
        lines.append(f"  {name:<{width}}  {meaning}")
        lines.append(f"  {'':<{width}}  prior {prior}")
    lines += [
        "The learned counts are the model's pA, pB and pD: learning_rate, forgetting and",
        "concentration need a model with some; likelihood_precision, agents that do not",
        "learn pA (their A is their counts). Parameters not fitted keep the task's settings",
        "(concentration = likelihood_precision = 1). G is the policy's expected free",
        "energy less its novelty; E, C and A are the task's.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="pp-aif", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
        "--planning",
        choices=PLANNERS,
        default=None,
        help="open_loop: score fixed action sequences (SPM's spm_MDP_VB_X); sophisticated: the "
        "recursive expected free energy over actions, outcomes and updated beliefs (Friston et "
        "al. 2021) to the policies' depth (default: the task's, open_loop)",
    )
    simulate_parser.add_argument(
        "--inductive",
        type=float,
        default=None,
        metavar="EPSILON",
        help="inductive planning (Friston et al. 2023) towards the task's intended states: a "
        "move that brings them no nearer costs ln(1/EPSILON) nats; e.g. 1e-3 (default: off)",
    )
    simulate_parser.add_argument(
        "--compile",
        action="store_true",
        help="compile each step's inference and planning (torch.compile): the same trajectories; "
        "the first trials spend seconds to a minute compiling, so only long runs gain, and only "
        "at small batches (docs/benchmarks.md); exact inference, open-loop planning",
    )
    simulate_parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the record and figure; files of an earlier run there are replaced "
        f"(default: a new folder per run, {RUNS_FOLDER}/TASK-001, {RUNS_FOLDER}/TASK-002, ...)",
    )
    simulate_parser.add_argument(
        "--device", default=None, help="where the agents compute, e.g. cuda (default: cpu)"
    )
    demo_parser = commands.add_parser("demo", help="exact state inference on a two-factor model")
    demo_parser.add_argument("--task", default="two_factor", help="task name or task file")
    demo_parser.add_argument(
        "--out", type=Path, default=Path("out"), help="folder for the figure (default: ./out)"
    )
    fit_parser = commands.add_parser(
        "fit",
        help="fit agents to people's choices",
        description="Fit the parameters of TASK's agents to people's choices in DATA, a\n"
        "long-format CSV or Parquet table: one row per subject, trial and time step.",
        epilog=_fit_epilog,  # called only when the help is shown
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit_parser.add_argument("task", help="task name (e.g. tmaze) or task file")
    fit_parser.add_argument(
        "data", type=Path, help="long-format CSV or Parquet file (columns: see below)"
    )
    fit_parser.add_argument(
        "--params",
        default="gamma,alpha",
        help="comma-separated, from the parameters below (default gamma,alpha)",
    )
    fit_parser.add_argument(
        "--method",
        choices=FIT_METHODS,
        default="nuts",
        help="nuts (default), svi, map, grid (the exact posterior of 1-2 parameters), or "
        "amortised (a trained estimator's draws: --estimator, pp-aif train)",
    )
    fit_parser.add_argument("--hierarchical", action="store_true", help="population model")
    fit_parser.add_argument(
        "--planning",
        choices=PLANNERS,
        default=None,
        help="how the fitted agents plan: open_loop or sophisticated (see simulate --planning; "
        "default: the task's, open_loop)",
    )
    fit_parser.add_argument(
        "--inductive",
        type=float,
        default=None,
        metavar="EPSILON",
        help="the fitted agents plan inductively (see simulate --inductive; default: off)",
    )
    fit_parser.add_argument("--chains", type=int, default=4, help="NUTS chains (default 4)")
    fit_parser.add_argument("--draws", type=int, default=500, help="draws (default 500)")
    fit_parser.add_argument("--warmup", type=int, default=500, help="NUTS warm-up (default 500)")
    fit_parser.add_argument("--steps", type=int, default=2000, help="SVI/MAP steps (default 2000)")
    fit_parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit_parser.add_argument(
        "--anonymise", action="store_true", help="salted hashes instead of subject ids"
    )
    fit_parser.add_argument("--salt", default=None, help="the salt of --anonymise")
    fit_parser.add_argument(
        "--device", default=None, help="where the likelihood computes, e.g. cuda (default: cpu)"
    )
    fit_parser.add_argument(
        "--subjects-per-job",
        type=int,
        default=10,
        help="without --hierarchical, more subjects are fitted in groups of this many, each a "
        "Dask job (default 10)",
    )
    fit_parser.add_argument(
        "--scheduler",
        default=None,
        help="the jobs' Dask scheduler address, e.g. tcp://10.0.0.5:8786 (default: a local "
        "cluster; 'inline': one after another in this process)",
    )
    fit_parser.add_argument(
        "--workers", type=int, default=None, help="local cluster's processes (default: cores)"
    )
    fit_parser.add_argument(
        "--out",
        type=Path,
        default=Path("out/fit.nc"),
        help="InferenceData file (default out/fit.nc)",
    )
    fit_parser.add_argument(
        "--estimator",
        type=Path,
        default=None,
        help="with --method amortised: the file of a posterior estimator trained for this task "
        "and these parameters (pp-aif train)",
    )
    fit_parser.add_argument(
        "--importance",
        type=int,
        default=None,
        metavar="M",
        help="with --method amortised: reweigh M proposals a subject by the agent's exact "
        "likelihood (Pareto-smoothed importance sampling) and resample --draws of them; each "
        "subject's Pareto k and effective sample size are kept (default: the estimator's draws)",
    )
    train_parser = commands.add_parser(
        "train",
        help="train a posterior estimator for amortised fits",
        description="Train a neural posterior estimator of TASK's agents' parameters on "
        "simulations drawn from fit's priors; `pp-aif fit TASK DATA --method amortised "
        "--estimator FILE` then fits any number of subjects in seconds.",
    )
    train_parser.add_argument("task", help="task name (e.g. bandit) or task file")
    train_parser.add_argument(
        "--params", required=True, help="comma-separated parameters (as fit's --params)"
    )
    train_parser.add_argument(
        "--simulations", type=int, default=20_000, help="simulated subjects (default 20000)"
    )
    train_parser.add_argument(
        "--trials", type=int, default=60, help="the most trials a subject (default 60)"
    )
    train_parser.add_argument(
        "--min-trials", type=int, default=20, help="the fewest trials a subject (default 20)"
    )
    train_parser.add_argument("--epochs", type=int, default=60, help="at most (default 60)")
    train_parser.add_argument(
        "--flow", choices=("zuko", "pyro"), default="zuko", help="the flow (default zuko)"
    )
    train_parser.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="Adam's step size over the epochs (default constant)",
    )
    train_parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train_parser.add_argument(
        "--out", type=Path, required=True, help="the estimator's file, e.g. estimator.pt"
    )
    infer_parser = commands.add_parser(
        "infer",
        help="infer the hidden states of each trial",
        description="Infer the hidden states of each trial in DATA (fit's long-format table) "
        "under TASK's model as it is (no learning across trials), and write them as a CSV: "
        "subject, trial, time, q(factor=state) for each factor and state, and per trial the "
        "method's free energy F and the exact ln p(o).",
    )
    infer_parser.add_argument("task", help="task name (e.g. tmaze) or task file")
    infer_parser.add_argument("data", help="long-format CSV or Parquet file (as fit's DATA)")
    infer_parser.add_argument(
        "--method",
        choices=INFER_METHODS,
        default="exact",
        help="exact (default), mean_field, structured, fpi, vmp, mmp, or amortised (a trained "
        "guide: --guide, pp-aif train-guide)",
    )
    infer_parser.add_argument(
        "--mode",
        choices=("smoothing", "filtering"),
        default="smoothing",
        help="smoothing (default: from the whole trial) or filtering (from the steps so far; "
        "exact and fpi)",
    )
    infer_parser.add_argument(
        "--guide", type=Path, default=None, help="with --method amortised: the guide's file"
    )
    infer_parser.add_argument(
        "--anonymise", action="store_true", help="salted hashes instead of subject ids"
    )
    infer_parser.add_argument("--salt", default=None, help="the salt of --anonymise")
    infer_parser.add_argument(
        "--out", type=Path, default=Path("out/beliefs.csv"), help="default out/beliefs.csv"
    )
    guide_parser = commands.add_parser(
        "train-guide",
        help="train a guide for amortised state inference",
        description="Train an amortised state-inference guide for TASK's model by SVI on "
        "sequences of its trials' length drawn from the model; `pp-aif infer TASK DATA "
        "--method amortised --guide FILE` then infers every trial's states without optimising.",
    )
    guide_parser.add_argument("task", help="task name (e.g. tmaze) or task file")
    guide_parser.add_argument("--steps", type=int, default=2000, help="Adam steps (default 2000)")
    guide_parser.add_argument(
        "--batch-size", type=int, default=64, help="sequences a step (default 64)"
    )
    guide_parser.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="GRU units (default: train_amortised_guide's, 16)",
    )
    guide_parser.add_argument(
        "--learning-rate", type=float, default=3e-3, help="Adam's (default 0.003)"
    )
    guide_parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    guide_parser.add_argument(
        "--out", type=Path, required=True, help="the guide's file, e.g. guide.pt"
    )
    compare_parser = commands.add_parser("compare", help="rank fits; random-effects BMS")
    compare_parser.add_argument("fits", type=Path, nargs="+", help="InferenceData files (.nc)")
    compare_parser.add_argument("--ic", choices=("loo", "waic"), default="loo")
    compare_parser.add_argument("--unit", choices=("trial", "subject"), default="trial")
    compare_parser.add_argument("--bms", action="store_true", help="random-effects BMS, figure")
    compare_parser.add_argument(
        "--out", type=Path, default=Path("out"), help="folder for the figure (default: ./out)"
    )
    arguments = parser.parse_args(argv)
    _written.clear()
    if arguments.verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
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
                arguments.device,
                arguments.planning,
                arguments.inductive,
                arguments.compile,
            )
        if arguments.command == "compare":
            return compare_command(
                arguments.fits, arguments.ic, arguments.unit, arguments.bms, arguments.out
            )
        if arguments.command == "fit":
            return fit_command(
                arguments.task,
                arguments.data,
                arguments.params,
                arguments.method,
                arguments.out,
                chains=arguments.chains,
                draws=arguments.draws,
                warmup=arguments.warmup,
                steps=arguments.steps,
                seed=arguments.seed,
                hierarchical=arguments.hierarchical,
                anonymise=arguments.anonymise,
                salt=arguments.salt,
                device=arguments.device,
                subjects_per_job=arguments.subjects_per_job,
                scheduler=arguments.scheduler,
                workers=arguments.workers,
                planning=arguments.planning,
                inductive=arguments.inductive,
                estimator=arguments.estimator,
                importance=arguments.importance,
            )
        if arguments.command == "infer":
            return infer_command(
                arguments.task,
                arguments.data,
                arguments.method,
                arguments.mode,
                arguments.out,
                arguments.guide,
                anonymise=arguments.anonymise,
                salt=arguments.salt,
            )
        if arguments.command == "train-guide":
            return train_guide_command(
                arguments.task,
                arguments.out,
                steps=arguments.steps,
                batch_size=arguments.batch_size,
                hidden=arguments.hidden,
                learning_rate=arguments.learning_rate,
                seed=arguments.seed,
            )
        if arguments.command == "train":
            return train_command(
                arguments.task,
                arguments.params,
                arguments.out,
                simulations=arguments.simulations,
                trials=arguments.trials,
                min_trials=arguments.min_trials,
                epochs=arguments.epochs,
                flow=arguments.flow,
                seed=arguments.seed,
                schedule=arguments.schedule,
            )
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"pp-aif: error: {error}", file=sys.stderr)
        return 2
    except JobsFailed as error:
        print(f"pp-aif: error: {error}", file=sys.stderr)
        return 1
    except WriteInterrupted as interrupt:
        print(f"pp-aif: {interrupt}{_already_written()}", file=sys.stderr)
        return 130
    except _Interrupted as interrupt:  # says itself what was kept
        print(f"pp-aif: interrupted; {interrupt}", file=sys.stderr)
        return 130
    except KeyboardInterrupt as interrupt:  # not while writing (or just after a file was)
        said = f" ({interrupt})" if str(interrupt) else ""
        tail = _already_written() or ("" if said else "; nothing was written")
        print(f"pp-aif: interrupted{said}{tail}", file=sys.stderr)
        return 130
    return 0


def _already_written() -> str:
    if not _written:
        return ""
    return "; written before the interrupt: " + ", ".join(str(p) for p in _written)


if __name__ == "__main__":
    sys.exit(main())

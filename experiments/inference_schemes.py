"""Every state-inference scheme on the same sequences: accuracy, free energy, cost, behaviour.

Schemes: the exact kernel (reference), SVI guides (mean field, structured chain), pymdp's FPI (a
filter) and VMP, SPM's MMP. Cases: the T-maze and the foraging grid (sequences from exact agents
acting in them) and random models of growing size (factors, states per factor, T), sequences
sampled from the models themselves. Per case and scheme:

- KL(exact || scheme) of the marginals, summed over factors, averaged over steps and sequences
  (FPI, a filter, against exact filtering; every other scheme against exact smoothing);
- the free-energy gap F - (-ln p(o)) in nats, per sequence (for FPI: the F of its filtered
  marginals read as beliefs about the whole sequence);
- seconds per sequence (one batched call over all sequences, divided by their number);
- whether the iterations converged (fraction of calls).

In closed loop, T-maze agents run on each scheme (``AgentSettings.inference``): reward rate and
cue-first rate.

Run: ``python experiments/inference_schemes.py --out experiments/results`` (JSON + figure).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
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
from experiments.tmaze_epistemic import behaviour  # noqa: E402
from pp_aif.agent import AgentSettings  # noqa: E402
from pp_aif.atomic import save_figure, write_json  # noqa: E402
from pp_aif.errors import ConvergenceWarning, DiagnosticWarning  # noqa: E402
from pp_aif.programs import sample_sequences  # noqa: E402
from pp_aif.simulation import simulate  # noqa: E402

SCHEMES = ("mean_field", "structured", "fpi", "vmp", "mmp")
AGENT_SCHEMES = ("exact", "fpi", "vmp", "mmp")


@dataclass
class Config:
    num_sequences: int = 16
    #: random models: (factors, states per factor, T)
    sizes: tuple = ((1, 4, 10), (2, 3, 10), (2, 4, 20), (3, 3, 20), (3, 4, 40))
    #: SVI guides only where the joint state space is at most this (their cost grows as K^2 T)
    svi_max_joint_states: int = 27
    iterations: int = 16  # message passing: SPM's and pymdp's default
    num_agents: int = 400
    seed: int = 0
    #: torch threads: these kernels are small, and thread hand-offs dominate them (measured: a
    #: 4x4 softmax takes 1 us on one thread, 40 us on two, 16 ms on two under load)
    threads: int = 1
    out: Path = field(default_factory=lambda: Path("experiments/results"))


def random_model(rng: np.random.Generator, factors: int, states: int) -> pp_aif.GenerativeModel:
    """Random A (one modality of 2 outcomes per factor plus one over all factors), B with 2
    controls per factor, D: every entry positive (so every scheme's F is finite)."""
    shape = (states,) * factors

    def columns(*dims):
        x = rng.gamma(1.0, size=dims)
        return x / x.sum(0, keepdims=True)

    A = [columns(3, *shape)] + [
        np.moveaxis(
            np.broadcast_to(
                columns(2, states).reshape(2, *[states if g == f else 1 for g in range(factors)]),
                (2, *shape),
            ),
            0,
            0,
        ).copy()
        for f in range(factors)
    ]
    B = [columns(states, states, 2) for _ in range(factors)]
    D = [columns(states) for _ in range(factors)]
    return pp_aif.GenerativeModel(A, B, D=D)


def kl(reference: list[torch.Tensor], approximate: list[torch.Tensor]) -> torch.Tensor:
    """sum_f KL(reference || approximate), averaged over steps: (N,)."""
    total = 0.0
    for p, q in zip(reference, approximate, strict=True):
        q = q.clamp_min(1e-300)
        terms = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - torch.log(q)), 0.0)
        total = total + terms.sum(-1).mean(-1)
    return total


def evaluate(model, observations, actions, iterations: int, svi: bool) -> dict:
    """Every scheme on a batch of sequences (N, T, M)."""
    N = observations.shape[0]
    smoothing = pp_aif.infer_states(model, observations, actions)
    filtering = pp_aif.infer_states(model, observations, actions, mode="filtering")
    minus_log_evidence = -smoothing.log_evidence
    start = time.perf_counter()
    pp_aif.infer_states(model, observations, actions)
    results = {
        "exact": {
            "kl": 0.0,
            "gap": 0.0,
            "seconds_per_sequence": (time.perf_counter() - start) / N,
            "converged": 1.0,
        }
    }
    for scheme in SCHEMES:
        if scheme in ("mean_field", "structured") and not svi:
            continue
        mode = "filtering" if scheme == "fpi" else "smoothing"
        settings = (
            {"num_iterations": iterations, "warn": False}
            if scheme in ("fpi", "vmp", "mmp")
            # the structured guide from the prior over paths: a study of the optimiser (its
            # default start is its optimum, the exact chain)
            else {"chain_start": "prior"}
            if scheme == "structured"
            else None
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # convergence and the floor: recorded below instead
            start = time.perf_counter()
            beliefs = pp_aif.infer_states(
                model, observations, actions, method=scheme, mode=mode, settings=settings
            )
            seconds = time.perf_counter() - start
        unexpected = [
            w for w in caught if not issubclass(w.category, ConvergenceWarning | DiagnosticWarning)
        ]
        for w in unexpected:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        reference = filtering if scheme == "fpi" else smoothing
        gap = beliefs.free_energy - minus_log_evidence
        results[scheme] = {
            "kl": float(kl(reference.marginals, beliefs.marginals).mean()),
            "gap": float(gap.mean()),
            "gap_min": float(gap.min()),
            "seconds_per_sequence": seconds / N,
            "converged": float(beliefs.optimisation.converged),
            "iterations": beliefs.optimisation.iterations,
            # the scheme's floor put probability > 1e-4 on states the observations rule out
            "floor_changed_answer": any(issubclass(w.category, DiagnosticWarning) for w in caught),
            # share of sequences whose marginals have finite F under exact logarithms
            "exact_log_finite": float(
                torch.isfinite(beliefs.exact_log_free_energy).double().mean()
            ),
        }
    return results


def task_sequences(name: str, num_sequences: int, seed: int):
    """Observations and actions of exact agents acting in a task: (N, T, M), (N, T-1, F)."""
    task = pp_aif.load_task(name)
    dataset = simulate(task, num_sequences, 1, seed)
    observations = torch.as_tensor(dataset["observation"].isel(trial=0).values)
    actions = torch.as_tensor(dataset["action"].isel(trial=0).values)[:, :-1]
    return task.model, observations, actions


def closed_loop(config: Config) -> dict:
    task = pp_aif.load_task("tmaze")
    rates = {}
    for scheme in AGENT_SCHEMES:
        settings = dataclasses.replace(
            task.settings or AgentSettings(),
            inference=scheme,
            inference_iterations=config.iterations,
        )
        start = time.perf_counter()
        dataset = simulate(task, config.num_agents, 1, config.seed, settings=settings)
        seconds = time.perf_counter() - start
        values = behaviour(dataset)
        rates[scheme] = {
            "cue_first": values["cue_first"],
            "reward": values["reward"],
            "correct_arm_after_cue": values["correct_arm_after_cue"],
            "seconds": seconds,
        }
    return rates


def run(config: Config) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(config)
    finally:
        torch.set_num_threads(threads)


def _run(config: Config) -> dict:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    cases = {}
    for name in ("tmaze", "foraging"):
        model, observations, actions = task_sequences(name, config.num_sequences, config.seed)
        K = math.prod(model.num_states)
        cases[name] = {
            "num_states": list(model.num_states),
            "T": observations.shape[1],
            "schemes": evaluate(
                model, observations, actions, config.iterations, K <= config.svi_max_joint_states
            ),
        }
    for factors, states, T in config.sizes:
        model = random_model(rng, factors, states)
        controls = torch.as_tensor(rng.integers(0, 2, size=(config.num_sequences, T - 1, factors)))
        observations, _ = sample_sequences(model, controls, seed=int(rng.integers(1 << 31)))
        K = states**factors
        cases[f"random F={factors} S={states} T={T}"] = {
            "num_states": [states] * factors,
            "T": T,
            "schemes": evaluate(
                model, observations, controls, config.iterations, K <= config.svi_max_joint_states
            ),
        }
    results = {
        "config": asdict(config),
        "cases": cases,
        "tmaze_closed_loop": closed_loop(config),
    }
    write_json(config.out / "inference_schemes.json", results)
    figure(results, config.out / "inference_schemes.png")
    return results


def figure(results: dict, path: Path) -> None:
    cases = list(results["cases"])
    schemes = ["exact", *SCHEMES]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), constrained_layout=True)
    x = np.arange(len(cases))
    width = 0.8 / len(schemes)
    panels = (
        ("kl", "KL(exact || q), nats per step", True),
        ("gap", "F - (-ln p(o)), nats per sequence", True),
        ("seconds_per_sequence", "seconds per sequence", True),
    )
    for ax, (key, label, log) in zip(axes[:3], panels, strict=False):
        for i, scheme in enumerate(schemes):
            values = [
                results["cases"][c]["schemes"].get(scheme, {}).get(key, np.nan) for c in cases
            ]
            values = [v if v > 0 else np.nan for v in values] if log else values
            ax.bar(x + (i - len(schemes) / 2 + 0.5) * width, values, width, label=scheme)
        ax.set_xticks(x, [c.replace("random ", "").replace(" ", "\n") for c in cases], fontsize=7)
        if log:
            ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()  # below the panels, not on the bars
    fig.legend(handles, labels, loc="outside lower center", ncols=len(schemes), fontsize=8)
    loop = results["tmaze_closed_loop"]
    names = list(loop)
    positions = np.arange(len(names))
    for offset, key in ((-0.2, "cue_first"), (0.2, "reward")):
        axes[3].bar(
            positions + offset,
            [loop[n][key][0] for n in names],
            0.4,
            yerr=[loop[n][key][1] for n in names],
            capsize=3,
            label=key.replace("_", " "),
        )
    axes[3].set_xticks(positions, names)
    axes[3].set_ylim(0, 1.3)  # room above the bars (at most 1) for the legend
    axes[3].set_title("T-maze agents on each scheme (first trial)", fontsize=10)
    axes[3].legend(fontsize=8, loc="upper center", ncols=2)
    fig.suptitle("State-inference schemes against exact inference (empty bar: zero or not run)")
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=Config.num_sequences)
    parser.add_argument("--agents", type=int, default=Config.num_agents)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--out", type=Path, default=Config().out)
    arguments = parser.parse_args(argv)
    config = Config(
        num_sequences=arguments.sequences,
        num_agents=arguments.agents,
        seed=arguments.seed,
        out=arguments.out,
    )
    results = run(config)
    print(f"{'case':28s} {'scheme':11s} {'KL/step':>10s} {'F gap':>10s} {'s/seq':>9s} {'conv':>5s}")
    for case, values in results["cases"].items():
        for scheme, row in values["schemes"].items():
            print(
                f"{case:28s} {scheme:11s} {row['kl']:10.2e} {row['gap']:10.2e} "
                f"{row['seconds_per_sequence']:9.2e} {row['converged']:5.2f}"
            )
    for scheme, row in results["tmaze_closed_loop"].items():
        print(
            f"T-maze agents, {scheme:5s}: cue first {row['cue_first'][0]:.3f}, "
            f"reward {row['reward'][0]:.3f}"
        )
    print(
        f"results: {config.out / 'inference_schemes.json'}, figure: "
        f"{config.out / 'inference_schemes.png'}"
    )


if __name__ == "__main__":
    main()

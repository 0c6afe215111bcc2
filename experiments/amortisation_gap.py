"""The amortisation gap and the approximation gap of state inference, against T and the states.

After Cremer, Li & Duvenaud 2018, "Inference suboptimality in variational autoencoders". On
held-out sequences (drawn from each model under uniformly random actions, never seen in
training), in nats per time step:

- amortisation gap: F of the amortised guide (``infer_states(method="amortised")``, one trained
  network for all sequences) minus F of the per-sequence structured guide
  (``method="structured"``): what amortising costs. Both guides have the same family (a Markov
  chain over the joint state), which holds the exact posterior, and the per-sequence guide
  starts at it (``SVISettings.chain_start="posterior"``, the default), so its F is the family's
  optimum;
- approximation gap: F of a per-sequence guide minus -ln p(o) (exact): what the family costs,
  or what the optimiser leaves. For the structured guide started at the posterior, 0 up to
  rounding; for the structured guide optimised from the prior over paths
  (``chain_start="prior"``: per-sequence variational inference that does not know the answer,
  the comparison of Cremer et al.), what L-BFGS leaves; for the mean-field guide, a family that
  is not exact;
- seconds per sequence of each method, on one batched call over the held-out sequences. The
  speed-up is the per-sequence optimisation's time (from the prior) over the amortised guide's;
  the structured guide started at the posterior is exact inference confirmed by the optimiser,
  and is timed beside them. The amortised guide and the optimisation are timed again called
  ``batch_sizes`` sequences at a time over the same sequences (a call has a fixed cost, which
  small batches feel most).

Cases: the two-factor task (``models/two_factor.py``, 6 joint states) at T = 5, 10, 20, 40 (one
guide of 16 hidden units, trained on lengths 2..40; guides of 32 and 64 units beside it, their
gap and time only; 1000 held-out sequences per T), and random one-factor models
(every entry of A, B, D positive; 3 outcomes, 2 controls) with S = 2, 4, 8, 16 states at T = 20
(a guide each; 50 held-out sequences, as optimising one from the prior takes up to 1 s).

Run: ``python experiments/amortisation_gap.py --out experiments/results`` (JSON and figure
``amortisation_gap.json`` / ``.png``).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
import pp_aif  # noqa: E402
from pp_aif.atomic import save_figure, write_json  # noqa: E402
from pp_aif.errors import ConvergenceWarning  # noqa: E402
from pp_aif.inference.amortised import (  # noqa: E402
    AmortisedTraining,
    random_sequences,
    train_amortised_guide,
)
from pp_aif.inference.variational import SVISettings  # noqa: E402

#: the methods' names in the figure
LABELS = {
    "structured": "structured, from the posterior",
    "structured_from_prior": "structured, from the prior",
    "mean_field": "mean field",
}
#: the per-sequence guides: name -> (infer_states' method, its SVISettings or None)
PER_SEQUENCE = {
    "structured": ("structured", None),
    "structured_from_prior": ("structured", SVISettings(chain_start="prior")),
    "mean_field": ("mean_field", None),
}


@dataclass
class Config:
    #: held-out sequences per T of the two-factor task
    num_sequences: int = 1000
    two_factor_lengths: tuple = (5, 10, 20, 40)
    #: held-out sequences of each random model
    random_sequences: int = 50
    random_states: tuple = (2, 4, 8, 16)
    random_length: int = 20
    #: the amortised guide and the optimisation from the prior timed again, called this many
    #: sequences at a time (where fewer than the held-out sequences)
    batch_sizes: tuple = (50,)
    #: training of each amortised guide
    steps: int = 2000
    batch_size: int = 64
    hidden: int = 16
    #: two-factor guides of these other sizes too (their gap and time only), by which
    #: ``hidden`` was chosen
    other_hidden: tuple = (32, 64)
    learning_rate: float = 3e-3
    seed: int = 0
    threads: int = 1
    out: Path = field(default_factory=lambda: Path("experiments/results"))


def random_model(rng: np.random.Generator, states: int) -> pp_aif.GenerativeModel:
    """One factor of ``states`` states, 2 controls, one modality of 3 outcomes; every entry of
    A, B and D positive (Dirichlet(1) columns)."""

    def columns(*dims):
        x = rng.gamma(1.0, size=dims)
        return x / x.sum(0, keepdims=True)

    return pp_aif.GenerativeModel(
        [columns(3, states)], [columns(states, states, 2)], D=[columns(states)]
    )


def _timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def _in_batches(method, model, observations, actions, size: int, **keywords) -> float:
    """Seconds per sequence of infer_states called ``size`` sequences at a time."""
    N = observations.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # counted in the one-call run
        start = time.perf_counter()
        for first in range(0, N, size):
            chunk = slice(first, first + size)
            pp_aif.infer_states(
                model, observations[chunk], actions[chunk], method=method, **keywords
            )
    return (time.perf_counter() - start) / N


def evaluate(model, guide, sequences, T: int, batch_sizes=(), others=None) -> dict:
    """The gaps (nats per step, mean and standard error over sequences) and seconds per
    sequence of the amortised guide, the per-sequence guides and the exact answer; and of
    ``others`` (hidden size -> guide), the amortisation gap and time alone."""
    observations, actions = sequences.observations, sequences.actions
    N = observations.shape[0]
    exact, exact_seconds = _timed(lambda: pp_aif.infer_states(model, observations, actions))
    minus_log_evidence = -exact.log_evidence
    amortised, amortised_seconds = _timed(
        lambda: pp_aif.infer_states(model, observations, actions, method="amortised", guide=guide)
    )
    row = {
        "T": T,
        "sequences": N,
        "seconds_per_sequence": {
            "exact": exact_seconds / N,
            "amortised": amortised_seconds / N,
        },
        "converged": {},
    }
    free_energies = {"amortised": amortised.free_energy}
    for method, (name, settings) in PER_SEQUENCE.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            beliefs, seconds = _timed(
                lambda name=name, settings=settings: pp_aif.infer_states(
                    model, observations, actions, method=name, settings=settings
                )
            )
        for w in caught:
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        row["seconds_per_sequence"][method] = seconds / N
        row["converged"][method] = bool(beliefs.optimisation.converged)
        free_energies[method] = beliefs.free_energy

    def per_step(values: torch.Tensor) -> dict:
        values = values / T
        return {
            "mean": float(values.mean()),
            "stderr": float(values.std() / np.sqrt(len(values))) if len(values) > 1 else 0.0,
        }

    row["amortisation_gap"] = per_step(free_energies["amortised"] - free_energies["structured"])
    row["other_hidden"] = {}
    for hidden, other in (others or {}).items():
        beliefs, seconds = _timed(
            lambda other=other: pp_aif.infer_states(
                model, observations, actions, method="amortised", guide=other
            )
        )
        row["other_hidden"][str(hidden)] = {
            "amortisation_gap": per_step(beliefs.free_energy - free_energies["structured"]),
            "seconds_per_sequence": seconds / N,
        }
    row["approximation_gap"] = {
        method: per_step(free_energies[method] - minus_log_evidence) for method in PER_SEQUENCE
    }
    row["amortised_minus_exact"] = per_step(free_energies["amortised"] - minus_log_evidence)
    times = row["seconds_per_sequence"]
    row["speed_up_over_optimisation"] = times["structured_from_prior"] / times["amortised"]
    row["speed_up_over_structured"] = times["structured"] / times["amortised"]
    row["in_batches"] = {}
    for size in (size for size in batch_sizes if size < N):
        amortised = _in_batches("amortised", model, observations, actions, size, guide=guide)
        optimised = _in_batches(
            "structured", model, observations, actions, size,
            settings=PER_SEQUENCE["structured_from_prior"][1],
        )  # fmt: skip
        row["in_batches"][str(size)] = {
            "seconds_per_sequence": {"amortised": amortised, "structured_from_prior": optimised},
            "speed_up_over_optimisation": optimised / amortised,
        }
    return row


def _train(model, config: Config, max_length: int, label: str, hidden: int | None = None):
    settings = AmortisedTraining(
        steps=config.steps,
        batch_size=config.batch_size,
        max_length=max_length,
        hidden=config.hidden if hidden is None else hidden,
        learning_rate=config.learning_rate,
        seed=config.seed,
        validation=min(config.num_sequences, 64),
        every=max(config.steps // 5, 1),
    )
    guide, record = train_amortised_guide(
        model, settings, progress=lambda line: print(f"  {label}: {line}", flush=True)
    )
    return guide, {
        "seconds": record["seconds"],
        "final_batch_loss": float(np.mean(record["loss"][-50:])),
        "validation": record["validation"],
    }


def run(config: Config) -> dict:
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    results: dict = {"config": asdict(config), "cases": {}}

    model = pp_aif.load_task("two_factor").model
    longest = max(config.two_factor_lengths)
    guide, training = _train(model, config, longest, "two_factor")
    others, other_training = {}, {}
    for hidden in config.other_hidden:
        label = f"two_factor, hidden {hidden}"
        others[hidden], other_training[str(hidden)] = _train(model, config, longest, label, hidden)
    rows = []
    for i, T in enumerate(config.two_factor_lengths):
        generator = torch.Generator().manual_seed(10_000 + config.seed * 100 + i)
        pyro.set_rng_seed(10_000 + config.seed * 100 + i)
        held_out = random_sequences(model, config.num_sequences, T, generator)
        rows.append(evaluate(model, guide, held_out, T, config.batch_sizes, others))
    results["cases"]["two_factor"] = {
        "states": 6,
        "training": training,
        "other_hidden_training": other_training,
        "rows": rows,
    }

    for S in config.random_states:
        model = random_model(rng, S)
        label = f"random S={S}"
        guide, training = _train(model, config, config.random_length, label)
        generator = torch.Generator().manual_seed(20_000 + config.seed * 100 + S)
        pyro.set_rng_seed(20_000 + config.seed * 100 + S)
        held_out = random_sequences(model, config.random_sequences, config.random_length, generator)
        row = evaluate(model, guide, held_out, config.random_length, config.batch_sizes)
        results["cases"][label] = {"states": S, "training": training, "rows": [row]}

    write_json(config.out / "amortisation_gap.json", results)
    plot(results, config.out / "amortisation_gap.png")
    return results


def plot(results: dict, path: Path) -> None:
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.8), constrained_layout=True)
    two = results["cases"]["two_factor"]["rows"]
    randoms = [
        (case["states"], case["rows"][0])
        for name, case in results["cases"].items()
        if name != "two_factor"
    ]
    series = (
        ("amortisation gap (amortised - the optimum)", lambda r: r["amortisation_gap"], "C0"),
        (
            "approximation gap, structured from the prior",
            lambda r: r["approximation_gap"]["structured_from_prior"],
            "C1",
        ),
        (
            "approximation gap, mean field",
            lambda r: r["approximation_gap"]["mean_field"],
            "C2",
        ),
    )
    for axis, xs, rows, xlabel, title in (
        (axes[0], [r["T"] for r in two], two, "T (steps)", "two-factor task (6 joint states)"),
        (
            axes[1],
            [s for s, _ in randoms],
            [r for _, r in randoms],
            "states S",
            f"random one-factor models, T = {randoms[0][1]['T'] if randoms else '-'}",
        ),
    ):
        for label, get, colour in series:
            means = [get(r)["mean"] for r in rows]
            errors = [get(r)["stderr"] for r in rows]
            axis.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=label, color=colour)
        axis.axhline(0.05, color="grey", linestyle=":", label="goal for the amortisation gap")
        axis.axhline(0.0, color="black", linewidth=0.6)
        # gaps from 1e-7 to 0.4 nats, and below 0 where the per-sequence guide stopped short
        axis.set_yscale("symlog", linthresh=1e-6)
        axis.set_xscale("log", base=2)
        axis.set_xticks(xs, [str(x) for x in xs])
        axis.set_xlabel(xlabel)
        axis.set_ylabel("nats per time step (linear within ±1e-6)")
        axis.set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower left", ncols=4, fontsize=9)
    methods = ("exact", "amortised", "structured", "structured_from_prior", "mean_field")
    ticks = [f"T={r['T']}" for r in two] + [f"S={s}" for s, _ in randoms]
    rows = two + [r for _, r in randoms]
    width = 0.16
    positions = np.arange(len(rows))
    for i, method in enumerate(methods):
        axes[2].bar(
            positions + (i - 2) * width,
            [r["seconds_per_sequence"][method] for r in rows],
            width,
            label=LABELS.get(method, method),
        )
    for method, offset in (("amortised", -1), ("structured_from_prior", 1)):
        sizes = sorted({size for r in rows for size in r["in_batches"]}, key=int)
        for size, marker in zip(sizes, "vs^<>" * len(sizes), strict=False):  # a marker a size
            xs = [p for p, r in zip(positions, rows, strict=True) if size in r["in_batches"]]
            times = [r["in_batches"][size]["seconds_per_sequence"][method] for r in rows
                     if size in r["in_batches"]]  # fmt: skip
            axes[2].scatter(
                np.asarray(xs) + offset * width,
                times,
                marker=marker,
                facecolors="none",
                edgecolors="black",
                zorder=3,
                label=f"called {size} at a time" if method == "amortised" else None,
            )
    axes[2].set_yscale("log")
    axes[2].set_xticks(positions, ticks, rotation=45, ha="right")
    axes[2].set_ylabel("seconds per sequence (batched call / N)")
    axes[2].set_title("time per sequence")
    axes[2].legend(fontsize=7, loc="upper left")
    save_figure(figure, path, dpi=120)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sequences", type=int, default=Config.num_sequences, help="two-factor, per T"
    )
    parser.add_argument(
        "--random-sequences", type=int, default=Config.random_sequences, help="per random model"
    )
    parser.add_argument("--hidden", type=int, default=Config.hidden)
    parser.add_argument("--steps", type=int, default=Config.steps)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--out", type=Path, default=Config().out)
    arguments = parser.parse_args(argv)
    config = Config(
        num_sequences=arguments.sequences,
        random_sequences=arguments.random_sequences,
        hidden=arguments.hidden,
        steps=arguments.steps,
        seed=arguments.seed,
        out=arguments.out,
    )
    results = run(config)
    print(
        f"{'case':14s} {'T':>3s} {'amortisation':>12s} {'approx (opt)':>12s} "
        f"{'approx (mf)':>12s} {'s/seq amort':>11s} {'s/seq opt':>10s} {'speed-up':>9s} "
        f"{'s/seq str':>10s}"
    )
    for case, values in results["cases"].items():
        for row in values["rows"]:
            times = row["seconds_per_sequence"]
            print(
                f"{case:14s} {row['T']:3d} {row['amortisation_gap']['mean']:12.2e} "
                f"{row['approximation_gap']['structured_from_prior']['mean']:12.2e} "
                f"{row['approximation_gap']['mean_field']['mean']:12.2e} "
                f"{times['amortised']:11.2e} {times['structured_from_prior']:10.2e} "
                f"{row['speed_up_over_optimisation']:8.0f}x {times['structured']:10.2e}"
            )
            for hidden, other in row["other_hidden"].items():
                print(
                    f"{'':14s} {'':3s} {f'hidden {hidden}:':>12s} "
                    f"{other['amortisation_gap']['mean']:12.2e} {'':12s} {'':12s} "
                    f"{other['seconds_per_sequence']:11.2e}"
                )
            for size, batched in row["in_batches"].items():
                each = batched["seconds_per_sequence"]
                print(
                    f"{'':14s} {'':3s} {f'called {size} sequences at a time:':>38s} "
                    f"{each['amortised']:11.2e} {each['structured_from_prior']:10.2e} "
                    f"{batched['speed_up_over_optimisation']:8.0f}x"
                )
    print(
        "(gaps in nats per time step, means over held-out sequences; opt: the per-sequence "
        "structured guide optimised from the prior, whose time the speed-up divides; str: the "
        "per-sequence structured guide started at the exact posterior)"
    )
    print(
        f"results: {config.out / 'amortisation_gap.json'}, figure: "
        f"{config.out / 'amortisation_gap.png'}"
    )


if __name__ == "__main__":
    main()

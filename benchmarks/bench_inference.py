"""Benchmark: exact state inference (closed-form kernel) against Pyro's enumeration of the program.

Three measurements, written to ``<out>/bench_inference.json``:

1. ``lengths``: a two-factor model at T = 10, 100, 1000: seconds per call of
   ``infer_states(method="exact")`` and ``method="enumerate"`` (smoothing marginals and
   evidence), the speed-up, and the largest difference between their answers.
2. ``linearity``: the exact kernel's seconds per time step at each T (constant = linear in T).
3. ``state_growth``: two factors of S states each, T fixed: the factorised kernel against a
   dense-joint forward-backward that multiplies by the prod(S) x prod(S) transition matrix.

Run: ``python -m benchmarks.bench_inference --out benchmarks/results`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import pp_aif
from benchmarks.common import best_time, machine, write_results
from pp_aif.programs import sample_sequences


@dataclass
class Config:
    num_states: tuple[int, ...] = (4, 3)
    num_outcomes: tuple[int, ...] = (3, 2)
    num_controls: tuple[int, ...] = (2, 2)
    lengths: tuple[int, ...] = (10, 100, 1000)
    enumerate_lengths: tuple[int, ...] = (10, 100, 1000)  # Pyro is slow: choose where to run it
    state_sizes: tuple[int, ...] = (2, 4, 8, 16, 32)
    state_growth_length: int = 100
    repeats: int = 5  # exact kernel: best of this many calls
    enumerate_repeats: int = 1
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("benchmarks/results"))


def random_model(rng, num_states, num_outcomes, num_controls) -> pp_aif.GenerativeModel:
    def columns(shape):
        x = rng.gamma(1.0, size=shape)
        return x / x.sum(0, keepdims=True)

    return pp_aif.GenerativeModel(
        [columns((o, *num_states)) for o in num_outcomes],
        [columns((s, s, u)) for s, u in zip(num_states, num_controls, strict=True)],
        D=[columns((s,)) for s in num_states],
    )


def random_sequence(rng, model, T, seed):
    actions = torch.stack(
        [torch.as_tensor(rng.integers(0, u, size=T - 1)) for u in model.num_controls], -1
    )[None]
    observations, _ = sample_sequences(model, actions, seed=seed)
    return observations[0], actions[0]


def dense_joint_smoother(model, observations, actions):
    """Forward-backward over the flattened joint state with a dense prod(S)^2 transition matrix.

    A baseline for the state-growth measurement (what a step costs without the factorisation);
    its answer is checked against the kernel's.
    """
    K = int(np.prod(model.num_states))
    T = observations.shape[0]
    likelihood = torch.ones(T, K, dtype=model.dtype)
    for m, a in enumerate(model.A):
        likelihood = likelihood * a[observations[:, m]].reshape(T, K)
    transitions = []
    for t in range(T - 1):
        joint = model.B[0][:, :, actions[t, 0]]
        for f in range(1, model.num_factors):
            joint = torch.kron(joint, model.B[f][:, :, actions[t, f]])
        transitions.append(joint)
    prior = model.D[0]
    for f in range(1, model.num_factors):
        prior = torch.kron(prior, model.D[f])
    alphas, log_evidence = [], 0.0
    for t in range(T):
        if t > 0:
            prior = transitions[t - 1] @ alphas[-1]
        joint = prior * likelihood[t]
        total = joint.sum()
        log_evidence = log_evidence + torch.log(total)
        alphas.append(joint / total)
    beta = torch.ones(K, dtype=model.dtype)
    smoothed = [alphas[-1]]
    for t in range(T - 2, -1, -1):
        beta = transitions[t].T @ (likelihood[t + 1] * beta)
        beta = beta / beta.sum()
        gamma = alphas[t] * beta
        smoothed.append(gamma / gamma.sum())
    smoothed.reverse()
    return torch.stack(smoothed), log_evidence


def run(config: Config) -> dict:
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    model = random_model(rng, config.num_states, config.num_outcomes, config.num_controls)
    results = {
        "config": asdict(config),
        "machine": machine(),
        "lengths": [],
        "linearity": [],
        "state_growth": [],
    }

    for T in config.lengths:
        observations, actions = random_sequence(rng, model, T, config.seed + T)
        exact_seconds, exact = best_time(
            lambda o=observations, a=actions: pp_aif.infer_states(model, o, a), config.repeats
        )
        row = {"T": T, "exact_seconds": exact_seconds}
        if T in config.enumerate_lengths:
            enumerate_seconds, enumerated = best_time(
                lambda o=observations, a=actions: pp_aif.infer_states(
                    model, o, a, method="enumerate"
                ),
                config.enumerate_repeats,
            )
            difference = max(
                float((exact.log_evidence - enumerated.log_evidence).abs()),
                *[
                    float((p - q).abs().max())
                    for p, q in zip(exact.marginals, enumerated.marginals, strict=True)
                ],
            )
            row.update(
                enumerate_seconds=enumerate_seconds,
                speedup=enumerate_seconds / exact_seconds,
                max_abs_difference=difference,
            )
        results["lengths"].append(row)
        results["linearity"].append({"T": T, "exact_seconds_per_step": exact_seconds / T})
        print(json.dumps(row))

    for S in config.state_sizes:
        grown = random_model(rng, (S, S), config.num_outcomes, config.num_controls)
        observations, actions = random_sequence(
            rng, grown, config.state_growth_length, config.seed + S
        )
        exact_seconds, exact = best_time(
            lambda g=grown, o=observations, a=actions: pp_aif.infer_states(g, o, a),
            config.repeats,
        )
        dense_seconds, (dense, dense_log_evidence) = best_time(
            lambda g=grown, o=observations, a=actions: dense_joint_smoother(g, o, a),
            max(1, config.repeats // 2),
        )
        joint = dense.reshape(-1, S, S)
        difference = max(
            float((exact.marginals[0] - joint.sum(2)).abs().max()),
            float((exact.log_evidence - dense_log_evidence).abs()),
        )
        row = {
            "states_per_factor": S,
            "joint_states": S * S,
            "T": config.state_growth_length,
            "exact_seconds": exact_seconds,
            "dense_joint_seconds": dense_seconds,
            "exact_vs_dense": dense_seconds / exact_seconds,
            "max_abs_difference": difference,
        }
        results["state_growth"].append(row)
        print(json.dumps(row))

    write_results(results, config.out, "bench_inference.json")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Config().out)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(Config.lengths))
    parser.add_argument(
        "--enumerate-lengths", type=int, nargs="+", default=list(Config.enumerate_lengths)
    )
    parser.add_argument("--state-sizes", type=int, nargs="+", default=list(Config.state_sizes))
    parser.add_argument("--repeats", type=int, default=Config.repeats)
    parser.add_argument("--seed", type=int, default=Config.seed)
    arguments = parser.parse_args(argv)
    run(
        Config(
            lengths=tuple(arguments.lengths),
            enumerate_lengths=tuple(arguments.enumerate_lengths),
            state_sizes=tuple(arguments.state_sizes),
            repeats=arguments.repeats,
            seed=arguments.seed,
            out=arguments.out,
        )
    )


if __name__ == "__main__":
    main()

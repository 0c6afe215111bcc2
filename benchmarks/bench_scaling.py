"""Benchmark: how one agent step's cost grows with states and policies (random models).

Writes ``<out>/bench_scaling.json``. A random model with one factor of S states, one modality of
S outcomes, U = 5 controls, and every policy of depth H: P = 5^H policies (5 to 3125). One
``pp_aif.agent.step`` at the first step of a trial: the belief update (exact filtering) and the
expected free energy of every policy, the policy posterior and an action, for ``agents``
agents in one batch, float64, torch on 1 thread; best of ``repeats``.

The EFE kernel's cost (``pp_aif.ops.efe``) is O(N sum_tau U_tau S (O + S)), where U_tau <= P
is the number of distinct policy prefixes of length tau + 1: here sum_tau U_tau = 5 + 25 + ...
+ 5^H, about 1.25 P. The step's cost should then grow as P at fixed S, and as S^2 (O = S) at
fixed P, once the arithmetic outweighs the fixed cost of a step. The JSON holds each
measurement and the fitted slopes of log time on log P and log S over the largest sizes.

Side by side, in the same run (``pymdp=True``): pymdp 1.0's agent on the same arrays
(``Agent(A, B, C=log_softmax(C), D, policies, gamma=1, inference_algo="fpi")``), one jitted
call of ``infer_states`` then ``infer_policies``: the first call (tracing and compilation
included) and the best of ``repeats`` after it, JAX on the CPU in float64 with one thread
(``benchmarks.bench_pymdp``'s set-up). Both solve the same problem: the largest differences of
G (pymdp's negative EFE) and of q(pi) are recorded for every size.

Run: ``python -m benchmarks.bench_scaling --out benchmarks/results`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import pp_aif
from benchmarks.common import best_time, machine, write_results
from pp_aif.agent import AgentSettings, initial_state, step

CONTROLS = 5


@dataclass
class Config:
    states: tuple[int, ...] = (10, 100, 1000)
    horizons: tuple[int, ...] = (1, 2, 3, 4, 5)
    agents: int = 1
    repeats: int = 3
    pymdp: bool = True  # pymdp 1.0 on the same models, in the same run
    #: pymdp is not run where P S^2 exceeds this: at 3125 policies of 1000 states it was
    #: killed for memory here (27 GB of virtual memory on a 24 GB machine), as pp_aif's kernel
    #: was while it gathered a transition matrix per policy
    pymdp_max_entries: int = 2**30
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("benchmarks/results"))


def random_model(S: int, horizon: int, rng: np.random.Generator) -> pp_aif.GenerativeModel:
    A = rng.dirichlet(np.ones(S), size=S).T  # (O, S), columns sum to 1
    B = np.stack([rng.dirichlet(np.ones(S), size=S).T for _ in range(CONTROLS)], -1)
    C = rng.normal(size=S)
    policies = pp_aif.construct_policies([CONTROLS], horizon)
    return pp_aif.GenerativeModel([A], [B], C=[C], policies=policies)


def _pymdp_step(model, horizon: int, result, repeats: int) -> dict:
    """pymdp's belief update and policy evaluation on the same model, against pp_aif's
    ``result`` (its StepResult)."""
    import jax
    import jax.numpy as jnp
    from pymdp.agent import Agent

    start = time.perf_counter()
    agent = Agent(
        [jnp.asarray(a.numpy()) for a in model.A],
        [jnp.asarray(b.numpy()) for b in model.B],
        C=[jax.nn.log_softmax(jnp.asarray(c.numpy())) for c in model.C],
        D=[jnp.asarray(d.numpy()) for d in model.D],
        policies=jnp.asarray(model.policies.numpy()),
        policy_len=horizon,
        gamma=1.0,
        inference_algo="fpi",
        batch_size=1,
    )

    def update_and_plan(agent, observation):
        beliefs = agent.infer_states([observation], agent.D)
        return agent.infer_policies(beliefs)

    program = jax.jit(update_and_plan)
    observation = jnp.zeros((1, 1), dtype=jnp.int64)
    q_pi, neg_efe = jax.block_until_ready(program(agent, observation))
    first = time.perf_counter() - start
    seconds, _ = best_time(lambda: jax.block_until_ready(program(agent, observation)), repeats)
    G = result.scores.G.numpy()[0]
    return {
        "pymdp_seconds": seconds,
        "pymdp_first_seconds": first,
        "max_abs_G_difference": float(np.abs(np.asarray(neg_efe)[0] + G).max()),
        "max_abs_q_pi_difference": float(
            np.abs(np.asarray(q_pi)[0] - result.policy_posterior.numpy()[0]).max()
        ),
    }


def _slope(x, y) -> float:
    """Least-squares slope of log y on log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def run(config: Config) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(config.seed)
    rows = []
    if config.pymdp:
        from benchmarks.bench_pymdp import _start_jax

        jax, _ = _start_jax()
    try:
        for S in config.states:
            for H in config.horizons:
                model = random_model(S, H, rng)
                settings = AgentSettings(horizon=H)
                observation = torch.zeros(config.agents, 1, dtype=torch.int64)

                def one_step(model=model, settings=settings, observation=observation, H=H):
                    state = initial_state(model, config.agents)
                    return step(model, settings, state, observation, num_steps=H + 1)

                one_step()  # warm-up (and the policy tree, cached per policy set)
                seconds, (_, result) = best_time(one_step, config.repeats)
                P = model.policies.shape[0]
                row = {"states": S, "horizon": H, "policies": P, "seconds": seconds}
                if config.pymdp and P * S * S <= config.pymdp_max_entries:
                    row.update(_pymdp_step(model, H, result, config.repeats))
                elif config.pymdp:
                    row["pymdp_skipped"] = (
                        f"P S^2 = {P * S * S:.2g} > {config.pymdp_max_entries:.2g}: more memory "
                        "than this machine has (a transition matrix per policy, 8 bytes each)"
                    )
                rows.append(row)
                print(
                    f"S = {S:>5}, H = {H}, P = {P:>5}: {1e3 * seconds:9.2f} ms"
                    + (
                        f"   pymdp {1e3 * row['pymdp_seconds']:9.2f} ms "
                        f"(first call {row['pymdp_first_seconds']:.2f} s), "
                        f"|dG| {row['max_abs_G_difference']:.1e}"
                        if "pymdp_seconds" in row
                        else ("   pymdp not run: " + row["pymdp_skipped"] if config.pymdp else "")
                    )
                )
    finally:
        torch.set_num_threads(threads)
    largest_S = max(config.states)
    by_P = [r for r in rows if r["states"] == largest_S and r["policies"] >= 125]
    largest_P = max(r["policies"] for r in rows)
    by_S = [r for r in rows if r["policies"] == largest_P and r["states"] >= 100]
    slopes = {
        "log_time_on_log_policies_at_largest_S": (
            _slope([r["policies"] for r in by_P], [r["seconds"] for r in by_P])
            if len(by_P) > 1
            else math.nan
        ),
        "log_time_on_log_states_at_largest_P": (
            _slope([r["states"] for r in by_S], [r["seconds"] for r in by_S])
            if len(by_S) > 1
            else math.nan
        ),
    }
    extra = {}
    if config.pymdp:
        from importlib.metadata import version

        extra = {"jax": jax.__version__, "pymdp": version("inferactively-pymdp")}
    results = {
        "config": asdict(config),
        "machine": {**machine(), "torch_threads": 1, **extra},
        "rows": rows,
        "slopes": slopes,
    }
    print(
        f"slopes of log time: {slopes['log_time_on_log_policies_at_largest_S']:.2f} on log P "
        f"(expected 1), {slopes['log_time_on_log_states_at_largest_P']:.2f} on log S "
        "(expected 2)"
    )
    write_results(results, config.out, "bench_scaling.json")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Config().out)
    arguments = parser.parse_args(argv)
    run(Config(out=arguments.out))


if __name__ == "__main__":
    main()

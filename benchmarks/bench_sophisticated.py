"""Benchmark: sophisticated planning, pp_aif against pymdp 1.0's ``si_policy_search``, side by
side in one run (issue 18).

One decision: the recursive expected free energy of every next action from the first step's
belief, for N agents (1 and 100), at depths 2, 3, 4, ... on two tasks: SPM's T-maze and the
corridor maze of issue 18 (b) (``models/maze.py``; the cue chain's preferences vary with time,
which pymdp's search does not take). Written to ``<out>/bench_sophisticated.json``:

- ``first_seconds``: the first decision of that shape, compilation included (pymdp: tracing and
  XLA-compiling its jitted search; pp_aif: nothing to compile);
- ``steady_per_second``: decisions per second after it (the best of ``repeats`` calls);
- the agents' beliefs are the same (the first decision of a simulation: every agent starts from
  D) or ``distinct`` (each agent its own random context prior in the T-maze; pp_aif evaluates
  each distinct belief once, pymdp every agent's tree);
- where each library runs out: a decision over ``limit_seconds`` (60) stops that library's
  deeper depths for the case.

Settings shared: gamma = 1, actions and outcomes of probability <= 1/16 not expanded, C passed
to pymdp as log_softmax(C) (what pp_aif plans with). What differs: pymdp keeps its tree in
float32 and bounds it by ``max_nodes`` (here 1024; its cost grows with it) and
``max_branching`` (8 outcomes per modality), so a deeper search fills its tree and stops
expanding (pymdp prints "Used up all ... nodes"); pp_aif computes in float64 and its tree is
as large as the pruning leaves it (``nodes``); pymdp's early stop is off
(``entropy_stop_threshold=-1``), so both search to the full depth. Both on the CPU, one
thread (``XLA_FLAGS`` as ``bench_pymdp``).

Run: ``python -m benchmarks.bench_sophisticated --out benchmarks/results`` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import pp_aif
from benchmarks.common import machine, write_results
from pp_aif.planning.sophisticated import sophisticated_scores

SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@dataclass
class Config:
    tasks: tuple[str, ...] = ("tmaze", "maze")
    depths: tuple[int, ...] = (2, 3, 4, 5, 6)
    agents: tuple[int, ...] = (1, 100)
    repeats: int = 3
    limit_seconds: float = 60.0
    max_nodes: int = 1024
    max_branching: int = 8
    libraries: tuple[str, ...] = ("pp_aif", "pymdp")
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("benchmarks/results"))


def _beliefs(task, N: int, distinct: bool, rng) -> list[np.ndarray]:
    """Each factor's belief (N, S_f): D, or (the T-maze) a random context prior per agent."""
    beliefs = [np.broadcast_to(d.numpy(), (N, d.shape[0])).copy() for d in task.model.D]
    if distinct:
        beliefs[-1] = rng.dirichlet(np.ones(beliefs[-1].shape[1]), size=N)
    return beliefs


def _time(function, repeats: int) -> tuple[float, float]:
    """(the first call's seconds, the best of ``repeats`` more)."""
    start = time.perf_counter()
    function()
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return first, best


def _pp_aif(task, beliefs, depth: int, repeats: int) -> dict:
    model = task.model
    marginals = [torch.as_tensor(b) for b in beliefs]
    nodes = []

    def decide():
        scores = sophisticated_scores(model, marginals, depth=depth, precision=1.0)
        nodes[:] = list(scores.nodes)
        return scores.G

    first, best = _time(decide, repeats)
    return {"first_seconds": first, "steady_seconds": best, "nodes": nodes}


def _pymdp(task, beliefs, depth: int, repeats: int, config: Config) -> dict:
    import jax
    import jax.numpy as jnp
    from pymdp.agent import Agent
    from pymdp.planning.si import si_policy_search

    model, N = task.model, beliefs[0].shape[0]
    log_c = [torch.log_softmax(c if c.dim() == 1 else c[:, 0], -1).numpy() for c in model.C]
    policies = np.asarray(model.policies_of_depth(1)[0].numpy())

    def batched(array):
        return jnp.asarray(np.broadcast_to(array, (N, *array.shape)), dtype=jnp.float32)

    with jax.enable_x64(False):
        start = time.perf_counter()
        agent = Agent(
            [batched(a.numpy()) for a in model.A],
            [batched(b.numpy()) for b in model.B],
            C=[batched(c) for c in log_c],
            policies=jnp.asarray(policies),
            batch_size=N,
            gamma=1.0,
        )
        qs = [jnp.asarray(b[:, None, :], dtype=jnp.float32) for b in beliefs]
        search = si_policy_search(
            horizon=depth,
            max_nodes=config.max_nodes,
            max_branching=config.max_branching,
            policy_prune_threshold=1 / 16,
            observation_prune_threshold=1 / 16,
            entropy_stop_threshold=-1.0,
            gamma=1.0,
        )
        built = time.perf_counter() - start
        used = []

        def decide():
            q_pi, info = search(agent, qs)
            jax.block_until_ready(q_pi)
            used[:] = [int(np.asarray(info["tree"].used).sum())]
            return q_pi

        first, best = _time(decide, repeats)
    return {
        "first_seconds": built + first,
        "steady_seconds": best,
        "nodes_used": used[0],  # as its tree reports them (a full tree also prints a warning)
    }


def run(config: Config) -> dict:
    torch.set_num_threads(1)
    if "pymdp" in config.libraries:
        os.environ.setdefault("XLA_FLAGS", SINGLE_THREAD_XLA)
        import jax

        jax.block_until_ready(jax.numpy.zeros(1) + 1.0)  # start the backend before any clock
    rng = np.random.default_rng(config.seed)
    rows, stopped = [], set()
    for name in config.tasks:
        task = pp_aif.load_task(name)
        cases = [(N, False) for N in config.agents]
        if name == "tmaze":
            cases += [(N, True) for N in config.agents if N > 1]
        for N, distinct in cases:
            beliefs = _beliefs(task, N, distinct, rng)
            for depth in config.depths:
                for library in config.libraries:
                    key = (name, N, distinct, library)
                    if key in stopped:
                        continue
                    if library == "pp_aif":
                        result = _pp_aif(task, beliefs, depth, config.repeats)
                    else:
                        result = _pymdp(task, beliefs, depth, config.repeats, config)
                    row = {
                        "task": name,
                        "agents": N,
                        "distinct_beliefs": distinct,
                        "depth": depth,
                        "library": library,
                        **result,
                        "steady_per_second": 1.0 / result["steady_seconds"],
                    }
                    rows.append(row)
                    print(
                        f"{name:>6} N={N:<4} {'distinct' if distinct else 'same':<8} depth {depth} "
                        f"{library:<7} first {result['first_seconds']:8.3f} s, steady "
                        f"{1e3 * result['steady_seconds']:9.2f} ms",
                        flush=True,
                    )
                    if result["steady_seconds"] > config.limit_seconds:
                        stopped.add(key)
    ratios = []
    for row in rows:
        if row["library"] != "pp_aif":
            continue
        other = next(
            (
                r
                for r in rows
                if r["library"] == "pymdp"
                and all(r[k] == row[k] for k in ("task", "agents", "distinct_beliefs", "depth"))
            ),
            None,
        )
        if other is not None:
            ratios.append(
                {
                    **{k: row[k] for k in ("task", "agents", "distinct_beliefs", "depth")},
                    "first_pymdp_over_pp_aif": other["first_seconds"] / row["first_seconds"],
                    "steady_pp_aif_over_pymdp": other["steady_seconds"] / row["steady_seconds"],
                }
            )
    results = {
        "config": asdict(config),
        "machine": machine(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "rows": rows,
        "ratios": ratios,
    }
    write_results(results, config.out, "bench_sophisticated.json")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="2,3,4,5,6")
    parser.add_argument("--agents", default="1,100")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    arguments = parser.parse_args(argv)
    run(
        Config(
            depths=tuple(int(x) for x in arguments.depths.split(",")),
            agents=tuple(int(x) for x in arguments.agents.split(",")),
            out=arguments.out,
        )
    )


if __name__ == "__main__":
    main()

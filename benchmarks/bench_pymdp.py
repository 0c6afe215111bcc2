"""Benchmark: pp_aif against pymdp 1.0.x (JAX) on the same T-maze, side by side in one run.

Writes ``<out>/bench_pymdp.json``. For batches of N agents (1, 100, 1000) acting for ``steps``
steps (20), on the CPU in both libraries, it measures:

1. ``first_result_seconds``: the wall time to the first result, compilation included. pp_aif:
   the first ``pp_aif.simulate`` call at that N (there is nothing to compile). pymdp: building
   the ``Agent`` and the ``PymdpEnv``, then tracing, XLA-compiling and running the jitted
   rollout once, blocked on with ``jax.block_until_ready``.
2. ``agent_steps_per_second``: steady state, the best of ``repeats`` calls after that first
   (warm) call, divided into the exact number of agent-steps run (``agent_steps``).
3. The same for pp_aif with compiled steps (library ``"pp_aif compiled"``,
   ``simulate(compile=True)``, unless ``--no-compiled``): its first result includes
   ``torch.compile``'s compilation of each step of the trial, and ``same_actions_as_eager``
   records that its trajectories are the eager run's.

JAX caches traced and compiled functions inside a process, per shape. Every N builds a new agent
(its batch size is static in pymdp), a new environment and a new ``jax.jit`` function, so the
whole program is traced and compiled afresh for each N, and its first-result time is measured
the first time that shape is used. Pieces traced per agent under ``vmap`` have the same shapes
for every N and may be served from JAX's in-process caches after the first N, so a later N's
first result can be a little cheaper than in a new process. Neither library is charged for
importing itself or for starting JAX's CPU backend (done before any clock starts); the first N
of each library pays its other one-off costs (e.g. torch's first kernels).

The task: SPM's T-maze (``pp_aif.load_task("tmaze")``): trials of T = 3 steps (two moves), so
``steps`` is run as ceil(steps / 3) trials (20 steps: 7 trials, 21 agent-steps per agent). The
pymdp agent and environment are built from the same arrays: A (5x4x2, 3x4x2), B (4x4x4, 2x2x1),
D, the same 16 two-step policies (``task.model.policies``, (16, 2, 2)), uniform E, C passed as
``log_softmax(C)``, the log preferences pp_aif plans with (raw C would shift every policy's
utility by the same constant, leaving q(pi) as it is), policy precision gamma = 1 and action
precision alpha = 512 (pp_aif's defaults), actions drawn from the first-step action marginal
(``sampling_mode="marginal"``, ``action_selection="stochastic"``), as pp_aif draws them. The
world is ``pymdp.envs.env.PymdpEnv(A, B, D)``: the context is drawn 50/50 at every reset. One
compiled pymdp call runs all the trials: ``lax.scan`` over the trials of
``pymdp.envs.rollout.rollout(agent, env, num_timesteps=2)`` (which scans 3 steps and resets the
environment and the beliefs to D at its start), so both libraries run the same trials of the same
length. By default the pp_aif agents do not learn their context prior between trials
(``pp_aif.tasks.tmaze.without_learning``), since pymdp's rollout has no D learning;
``--learn-context`` keeps the task's pD learning on the pp_aif side.

What remains different, per trial of 3 steps:
- pp_aif infers states exactly (joint filtering); pymdp by fixed-point iteration (``fpi``, 16
  iterations) on factorised beliefs. In this T-maze the location is always known, so both
  posteriors are the same.
- pp_aif plans at the first two steps only, with policies cut to the steps left in the trial
  (depth 2, then 1), and draws no action at the last step; pymdp plans with the 16 depth-2
  policies, draws an action and steps the environment at all 3 steps (the last move of a trial
  is discarded at the reset; the arms are absorbing).
- pp_aif builds its record (an xarray Dataset of beliefs, actions, G and its terms, in numpy)
  on the host with a Python loop over trials and steps; pymdp returns its trace (beliefs, q(pi),
  negative EFE, actions, observations) as JAX arrays from one compiled call.
- float64 in both: JAX runs with ``jax_enable_x64``. pymdp 1.0.4's rollout then needs its
  initial "no action yet" carry in the sampled actions' dtype (int64; its default is int32, which
  ``lax.scan`` rejects), passed through ``rollout(..., initial_carry=...)``.

Two checks that both solve the same problem (from the last steady call): ``rewards_per_trial``
(rewards observed per trial, averaged over agents and trials; near 0.98 when the cue is used),
and, in ``ratios``, the largest differences of q(pi) and G between the libraries at the first
step of every trial (where both start from D and the same first observation; with
``--learn-context`` the pp_aif priors move after the first trial, so these differ).

Threads: torch runs with 1 thread (``torch.set_num_threads(1)``, restored after the run). JAX is
forced to the CPU (``JAX_PLATFORMS=cpu``, and its computations are placed on the CPU device)
and, where ``XLA_FLAGS`` is not set already, asked for one thread
(``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``); both environment
variables act only if JAX's backend has not started in this process yet (true for the command
below), and XLA's CPU runtime may still use more than one thread. The JSON records both.

Run: ``python -m benchmarks.bench_pymdp --out benchmarks/results`` (pymdp is a test extra:
``pip install -e '.[test]'``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from pp_aif.tasks.tmaze import without_learning

import pp_aif
import pp_aif.simulation  # noqa: F401 - ``pp_aif`` imports its modules on first use: before any clock
from benchmarks.common import best_time, machine, write_results

SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@dataclass
class Config:
    agents: tuple[int, ...] = (1, 100, 1000)
    steps: int = 20
    repeats: int = 3
    seed: int = 0
    learn_context: bool = False  # pp_aif agents learn pD between trials (pymdp's cannot)
    #: also run pp_aif with compiled steps (``simulate(compile=True)``; library "pp_aif
    #: compiled": its first result includes torch.compile's compilation)
    compiled: bool = True
    out: Path = field(default_factory=lambda: Path("benchmarks/results"))


def _start_jax():
    """JAX on the CPU in float64, pymdp imported and JAX's backend started (outside any clock);
    returns (jax, the CPU device)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("XLA_FLAGS", SINGLE_THREAD_XLA)
    import jax

    jax.config.update("jax_enable_x64", True)
    import pymdp.agent  # noqa: F401 - imported here, not on the clock
    import pymdp.envs.rollout  # noqa: F401

    cpu = jax.devices("cpu")[0]
    jax.block_until_ready(jax.device_put(np.zeros(1), cpu) + 1.0)
    return jax, cpu


def _pymdp_program(task, num_agents: int):
    """(agent, env, jitted function of (agent, trial keys)): pymdp's T-maze rollout, a trial
    of ``task.trial_length`` steps per key, from the task's own arrays."""
    import jax
    import jax.numpy as jnp
    from pymdp.agent import Agent
    from pymdp.envs.env import PymdpEnv
    from pymdp.envs.rollout import rollout

    m = task.model
    A = [jnp.asarray(a.numpy()) for a in m.A]
    B = [jnp.asarray(b.numpy()) for b in m.B]
    C = [jax.nn.log_softmax(jnp.asarray(c.numpy())) for c in m.C]
    D = [jnp.asarray(d.numpy()) for d in m.D]
    policies = jnp.asarray(m.policies.numpy())
    agent = Agent(
        A,
        B,
        C=C,
        D=D,
        E=jnp.asarray(m.E.numpy()),
        policies=policies,
        policy_len=int(policies.shape[1]),
        gamma=1.0,
        alpha=512.0,
        action_selection="stochastic",
        sampling_mode="marginal",
        inference_algo="fpi",
        batch_size=num_agents,
    )
    env = PymdpEnv(A=A, B=B, D=D)
    num_timesteps = task.trial_length - 1  # rollout scans num_timesteps + 1 steps

    def trials(agent, keys):
        # "no action yet": in the dtype of the sampled actions (int64 under x64)
        no_action = -jnp.ones((agent.batch_size, agent.num_factors), dtype=jnp.int64)

        def trial(carry, key):
            _, info = rollout(agent, env, num_timesteps, key, initial_carry={"action": no_action})
            return carry, info

        return jax.lax.scan(trial, None, keys)[1]

    return agent, env, jax.jit(trials)


def _pymdp_rewards(info, task) -> float:
    """Rewards observed per trial, averaged over agents and trials (pp_aif's ``reward``)."""
    modality, outcome = task.reward
    observed = np.asarray(info["observation"][modality])[..., 0]  # (trials, N, T)
    return float((observed == outcome).sum(-1).mean())


def _first_step_differences(record, info) -> dict:
    """Largest differences of q(pi) and G between the libraries at the first step of every
    trial (beliefs D and the first observation, the same in both whatever was sampled)."""
    q_pi = np.asarray(info["qpi"])[:, :, 0].transpose(1, 0, 2)  # (N, trials, P)
    G = -np.asarray(info["neg_efe"])[:, :, 0].transpose(1, 0, 2)
    return {
        "first_step_q_pi_max_abs_difference": float(
            np.abs(q_pi - record["policy_posterior"].values[:, :, 0]).max()
        ),
        "first_step_G_max_abs_difference": float(np.abs(G - record["G"].values[:, :, 0]).max()),
    }


def _row(library: str, n: int, agent_steps: int, first: float, steady: float, **extra) -> dict:
    return {
        "library": library,
        "agents": n,
        "agent_steps": agent_steps,
        "steady_seconds": steady,
        "agent_steps_per_second": agent_steps / steady,
        "first_result_seconds": first,
        **extra,
    }


def run(config: Config) -> dict:
    if config.steps < 1 or config.repeats < 1 or min(config.agents) < 1:
        raise ValueError("steps, repeats and every batch size must be at least 1")
    jax, cpu = _start_jax()
    import jax.random as jr

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        task = pp_aif.load_task("tmaze")
        if not config.learn_context:
            task = without_learning(task)
        T = task.trial_length
        num_trials = math.ceil(config.steps / T)
        results = {
            "config": asdict(config),
            "machine": {
                **machine(),
                "jax": jax.__version__,
                "jaxlib": importlib.metadata.version("jaxlib"),
                "pymdp": importlib.metadata.version("inferactively-pymdp"),
                "jax_device": str(cpu),
                "jax_x64": bool(jax.config.jax_enable_x64),
                "jax_platforms": os.environ.get("JAX_PLATFORMS"),
                "xla_flags": os.environ.get("XLA_FLAGS"),
            },
            "task": {
                "name": task.name,
                "trial_length": T,
                "trials": num_trials,
                "steps_per_agent": num_trials * T,
                "policies": list(task.model.policies.shape),
                "pp_aif_learns_context": config.learn_context,
            },
            "rows": [],
            "ratios": [],
        }
        keys = jr.split(jr.PRNGKey(config.seed), num_trials)
        for n in config.agents:
            agent_steps = n * num_trials * T

            def simulate(n=n):
                return pp_aif.simulate(task, n, num_trials, config.seed)

            start = time.perf_counter()
            record = simulate()
            first = time.perf_counter() - start
            steady, record = best_time(simulate, config.repeats)
            ours = _row(
                "pp_aif",
                n,
                agent_steps,
                first,
                steady,
                dtype=str(task.model.dtype).removeprefix("torch."),
                rewards_per_trial=float(record["reward"].mean()),
            )

            with warnings.catch_warnings(), jax.default_device(cpu):
                # pymdp's environment emits observations as floats, which jax.nn.one_hot
                # deprecates (a warning at trace time only)
                warnings.filterwarnings(
                    "ignore",
                    message=r"jax\.nn\.one_hot input should be integer-typed",
                    category=DeprecationWarning,
                )
                start = time.perf_counter()
                agent, _, program = _pymdp_program(task, n)
                info = jax.block_until_ready(program(agent, keys))
                first = time.perf_counter() - start
                steady, info = best_time(
                    lambda agent=agent, program=program: jax.block_until_ready(
                        program(agent, keys)
                    ),
                    config.repeats,
                )
            theirs = _row(
                "pymdp",
                n,
                agent_steps,
                first,
                steady,
                dtype=str(info["qs"][0].dtype),
                rewards_per_trial=_pymdp_rewards(info, task),
            )
            results["rows"] += [ours, theirs]
            ratio = {
                "agents": n,
                "steady_throughput_pp_aif_over_pymdp": ours["agent_steps_per_second"]
                / theirs["agent_steps_per_second"],
                "first_result_pymdp_over_pp_aif": theirs["first_result_seconds"]
                / ours["first_result_seconds"],
                **_first_step_differences(record, info),
            }
            if config.compiled:

                def compiled(n=n):
                    return pp_aif.simulate(task, n, num_trials, config.seed, compile=True)

                start = time.perf_counter()
                compiled_record = compiled()
                first = time.perf_counter() - start
                steady, compiled_record = best_time(compiled, config.repeats)
                results["rows"].append(
                    _row(
                        "pp_aif compiled",
                        n,
                        agent_steps,
                        first,
                        steady,
                        dtype=str(task.model.dtype).removeprefix("torch."),
                        rewards_per_trial=float(compiled_record["reward"].mean()),
                        same_actions_as_eager=bool(
                            (compiled_record["action"] == record["action"]).all()
                        ),
                    )
                )
                ratio["steady_throughput_compiled_over_pymdp"] = (
                    results["rows"][-1]["agent_steps_per_second"] / theirs["agent_steps_per_second"]
                )
            results["ratios"].append(ratio)
        _print_table(results)
        write_results(results, config.out, "bench_pymdp.json")
    finally:
        torch.set_num_threads(threads)
    return results


def _print_table(results: dict) -> None:
    task = results["task"]
    print(
        f"T-maze, {task['trials']} trials of {task['trial_length']} steps "
        f"({task['steps_per_agent']} steps per agent), CPU, float64"
    )
    print(
        f"{'library':<15} {'agents':>7} {'agent-steps':>12} {'steady s':>10} "
        f"{'agent-steps/s':>14} {'first result s':>15} {'rewards/trial':>14}"
    )
    for row in results["rows"]:
        print(
            f"{row['library']:<15} {row['agents']:>7} {row['agent_steps']:>12} "
            f"{row['steady_seconds']:>10.4f} {row['agent_steps_per_second']:>14,.0f} "
            f"{row['first_result_seconds']:>15.3f} {row['rewards_per_trial']:>14.3f}"
        )
    for ratio in results["ratios"]:
        print(
            f"{ratio['agents']:>7} agents: steady throughput pp_aif / pymdp "
            f"{ratio['steady_throughput_pp_aif_over_pymdp']:.2f}x, first result pymdp / pp_aif "
            f"{ratio['first_result_pymdp_over_pp_aif']:.1f}x"
            + (
                f"; compiled pp_aif / pymdp {ratio['steady_throughput_compiled_over_pymdp']:.2f}x"
                if "steady_throughput_compiled_over_pymdp" in ratio
                else ""
            )
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Config().out)
    parser.add_argument("--agents", type=int, nargs="+", default=list(Config.agents))
    parser.add_argument("--steps", type=int, default=Config.steps)
    parser.add_argument("--repeats", type=int, default=Config.repeats)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument(
        "--learn-context",
        action="store_true",
        help="pp_aif agents learn their context prior pD between trials (pymdp's cannot)",
    )
    parser.add_argument(
        "--no-compiled",
        action="store_true",
        help="skip pp_aif with compiled steps (simulate(compile=True))",
    )
    arguments = parser.parse_args(argv)
    run(
        Config(
            agents=tuple(arguments.agents),
            steps=arguments.steps,
            repeats=arguments.repeats,
            seed=arguments.seed,
            learn_context=arguments.learn_context,
            compiled=not arguments.no_compiled,
            out=arguments.out,
        )
    )


if __name__ == "__main__":
    main()

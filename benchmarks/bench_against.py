"""Benchmark: the T-maze simulation of this tree against an earlier commit, in one run.

"No speed lost": each case (``pp_aif.simulate`` of N agents for one T-maze trial, exact and
sampled expected free energy) is timed in a fresh process for this working tree and for the
commit ``--against`` (checked out into a temporary git worktree), the two alternating, so that
both see the same machine load. Each process reports the best of ``repeats`` timings after one
warm-up run. Written to ``<out>/bench_against.json``: seconds per trial for both, and the ratio
(this tree / the commit; below 1 is faster).

Run: ``python -m benchmarks.bench_against --against 3a8de19 --out benchmarks/results``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.common import machine, write_results

ROOT = Path(__file__).resolve().parents[1]

#: the timed program: arguments N, method, repeats; prints the best seconds per trial
PROBE = """
import sys, time, torch
torch.set_num_threads(1)
from pp_aif.agent import AgentSettings
from pp_aif.simulation import simulate
from pp_aif.task import load_task
N, method, repeats = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
task = load_task("tmaze")
settings = AgentSettings(efe_method=method, num_samples=200)
simulate(task, N, 1, 0, settings=settings)
best = float("inf")
for _ in range(repeats):
    start = time.perf_counter()
    simulate(task, N, 1, 0, settings=settings)
    best = min(best, time.perf_counter() - start)
print(best)
"""


@dataclass
class Config:
    against: str = "3a8de19"
    cases: tuple[tuple[int, str], ...] = (
        (1, "exact"),
        (100, "exact"),
        (10000, "exact"),
        (1, "sampled"),
        (100, "sampled"),
    )
    repeats: int = 5
    rounds: int = 2
    out: Path = field(default_factory=lambda: Path("benchmarks/results"))


def _time(path: Path, N: int, method: str, repeats: int) -> float:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(N), method, str(repeats)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin"},
        cwd=path,
    )
    return float(result.stdout.strip().splitlines()[-1])


def run(config: Config) -> dict:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", config.against],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        earlier = Path(folder) / "earlier"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(earlier), commit],
            capture_output=True,
            check=True,
        )
        try:
            for N, method in config.cases:
                now, then = float("inf"), float("inf")
                for _ in range(config.rounds):  # alternating: both see the same load
                    now = min(now, _time(ROOT, N, method, config.repeats))
                    then = min(then, _time(earlier, N, method, config.repeats))
                rows.append(
                    {
                        "agents": N,
                        "efe_method": method,
                        "seconds_this_tree": now,
                        "seconds_earlier": then,
                        "ratio": now / then,
                    }
                )
                print(
                    f"{N:>6} agents, {method:<8}: this tree {now * 1e3:9.2f} ms, {commit} "
                    f"{then * 1e3:9.2f} ms, ratio {now / then:.2f}",
                    flush=True,
                )
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(earlier)],
                capture_output=True,
            )
    results = {
        "config": asdict(config),
        "machine": machine(),
        "this_tree": head,
        "earlier": commit,
        "cases": rows,
    }
    write_results(results, config.out, "bench_against.json")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default=Config.against, help="the earlier commit")
    parser.add_argument("--out", type=Path, default=Config().out)
    parser.add_argument("--repeats", type=int, default=Config.repeats)
    arguments = parser.parse_args(argv)
    results = run(Config(against=arguments.against, out=arguments.out, repeats=arguments.repeats))
    print(json.dumps({row["agents"]: row["ratio"] for row in results["cases"]}))


if __name__ == "__main__":
    main()

"""What every benchmark shares: timing, the machine's description, writing the JSON."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from pp_aif.atomic import write_json

__all__ = ["best_time", "machine", "write_results"]


def best_time(function, repeats: int) -> tuple[float, object]:
    """(the shortest of ``repeats`` wall-clock times of ``function()``, its last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def machine() -> dict:
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def write_results(results: dict, out: Path, name: str) -> Path:
    """``results`` as JSON in ``out/name``, atomically (a killed run keeps the earlier file)."""
    path = out / name
    write_json(path, results)
    print(f"results: {path}")
    return path

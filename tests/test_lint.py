"""ruff finds nothing (the rules are in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPOSITORY


def test_ruff_check_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr

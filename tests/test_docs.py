"""The README's code runs, and .ci/run runs the README's test command."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPOSITORY


def test_readme_python_example_runs():
    readme = (REPOSITORY / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    readme = (REPOSITORY / "README.md").read_text()
    after_marker = readme.split("<!-- test command")[1]
    command = after_marker.split("```bash\n")[1].split("\n")[0]
    extracted = subprocess.run(
        [
            "awk",
            "/<!-- test command/ {found = 1; next} found && /^```/ {fence++; next} "
            "found && fence == 1 {print; exit}",
            "README.md",
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert extracted == command
    assert "pytest" in command
    assert "awk '/<!-- test command/" in (REPOSITORY / ".ci/run").read_text()

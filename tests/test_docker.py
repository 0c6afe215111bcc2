"""The container: the Dockerfile builds an image that installs the project and runs the main job.

Where a docker daemon answers, the image is built and run. Everywhere, the files the Dockerfile
copies are installed on their own (no dependencies, no network) and the image's command is run
from that installation: a package or task file the image would miss fails here too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(instruction, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def _command() -> list[str]:
    """ENTRYPOINT + CMD, in their JSON (exec) form."""
    found = dict(_instructions())
    return json.loads(found["ENTRYPOINT"]) + json.loads(found["CMD"])


def _readme_main_job() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Two commands.*?```bash\n(.*?)\n```", readme, re.S).group(1)
    return shlex.split(block.split("&&")[-1].strip().replace(".venv/bin/", ""))


def test_the_image_runs_the_readmes_main_job():
    command = _command()
    assert command[:3] == _readme_main_job() == ["pp-aif", "simulate", "tmaze"]
    assert command[3:] == ["--out", "/work/out"]  # into the folder a user mounts


def test_what_the_image_copies_installs_and_runs_the_main_job(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for instruction, arguments in _instructions():
        if instruction == "COPY":
            *sources, destination = arguments.split()
            for name in sources:
                target = source / (destination if destination not in ("./", ".") else name)
                if (ROOT / name).is_dir():
                    shutil.copytree(
                        ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy(ROOT / name, source / name)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(site), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    out = tmp_path / "out"
    arguments = [str(out) if a == "/work/out" else a for a in _command()[1:]]
    script = (
        "import sys, pp_aif, pp_aif.tasks; from pp_aif.cli import main; "
        "print('package:', pp_aif.__file__, pp_aif.tasks.__file__); "
        f"sys.exit(main({arguments!r}))"
    )
    environment = {**os.environ, "PYTHONPATH": str(site), "MPLBACKEND": "Agg"}
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert f"package: {site}" in run.stdout and f"{site}/pp_aif/tasks/" in run.stdout
    assert "action: go to" in run.stdout
    assert (out / "tmaze_simulation.nc").stat().st_size > 1000
    assert (out / "tmaze_trial.png").stat().st_size > 10_000


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not _docker_answers(), reason="no docker daemon answers here")
def test_docker_image_builds_and_runs_the_main_job(tmp_path):
    tag = "pp_aif-test:latest"
    build = subprocess.run(
        ["docker", "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=3600
    )
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run(
        ["docker", "run", "--rm", tag], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "action: go to" in run.stdout
    assert "record: /work/out/tmaze_simulation.nc" in run.stdout

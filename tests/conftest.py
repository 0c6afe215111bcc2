"""Fixed seeds, the hypothesis profile, and the SPM reference folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "pp_aif",
    derandomize=True,  # the same examples on every run and on CI
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("pp_aif")

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fixed_seeds():
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - seeds any legacy global use in third-party code
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def spm_reference() -> Path:
    """``tests/data/spm``: SPM's reference outputs, kept in the repository (see its README.md).

    A missing folder or file is a failure, never a skip: these files are an oracle.
    """
    path = REPOSITORY / "tests" / "data" / "spm"
    if not (path / "README.md").is_file():
        pytest.fail(f"SPM reference outputs not found at {path}: they belong to the repository")
    return path

"""The oracles' data live in the repository, so that every clone runs the tests that use them
(they used to be read from ../shared, and 23 tests skipped on a fresh clone)."""

from __future__ import annotations

import re

import pytest
import scipy.io

from tests.conftest import REPOSITORY

SPM = REPOSITORY / "tests" / "data" / "spm"


def test_every_spm_reference_file_is_in_the_repository_and_loads():
    files = sorted(p.name for p in SPM.glob("*.mat"))
    assert len(files) == 19, files
    for name in files:
        assert scipy.io.loadmat(SPM / name), name  # whole and readable, not an LFS pointer
    named = set(re.findall(r"[a-z0-9_]+\.mat", (SPM / "README.md").read_text()))
    assert named <= set(files), named - set(files)


@pytest.mark.parametrize("folder", ["tests", "pp_aif", "experiments", "benchmarks", "notebooks"])
def test_nothing_reads_the_shared_folder(folder):
    needles = ("shared" + "/reference", "PP_AIF_SPM" + "_REFERENCE")  # not this file's own text
    for path in (REPOSITORY / folder).rglob("*.py"):
        text = path.read_text()
        assert not any(needle in text for needle in needles), path

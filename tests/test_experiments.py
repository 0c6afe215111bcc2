"""Every experiment runs at tiny size and writes its JSON and figure."""

from __future__ import annotations

import json

import pytest

from experiments.tmaze_epistemic import Config, run


@pytest.mark.integration
def test_tmaze_epistemic_smoke(tmp_path):
    results = run(Config(num_agents=20, seed=0, out=tmp_path))
    written = json.loads((tmp_path / "tmaze_epistemic.json").read_text())
    for key in (
        "cue_first_rate_epistemic",
        "correct_arm_after_cue_rate_epistemic",
        "cue_first_rate_no_epistemic",
        "reward_rate_epistemic",
        "reward_rate_no_epistemic",
    ):
        assert 0 <= written[key] <= 1
        assert written[key] == results[key]
    assert (tmp_path / "tmaze_epistemic.png").stat().st_size > 10_000

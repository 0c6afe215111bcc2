"""Amortised fitting: the posterior estimator trains, saves and loads, fits through ``fit`` into
the same InferenceData as the other methods, reads absent trials as trials not done, and refuses
what it was not trained for, naming it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.data import BehaviourData, long_format
from pp_aif.fitting import prior_draws
from pp_aif.fitting.amortised import EstimatorSettings, PosteriorEstimator
from pp_aif.fitting.predictive import simulate_subjects
from pp_aif.fitting.training import train_estimator
from pp_aif.parameters import default_priors
from tests.fitting.conftest import PARAMS, TINY


@pytest.fixture(scope="module")
def data(bandit):
    truth = prior_draws(PARAMS, 5, torch.Generator().manual_seed(3))
    return BehaviourData.read(long_format(simulate_subjects(bandit, truth, 6, 2), bandit), bandit)


def test_training_record(trained):
    estimator, record = trained
    assert len(record["train_loss"]) == len(record["validation_loss"]) == 2
    assert all(np.isfinite(record["validation_loss"]))
    assert record["best_epoch"] in (1, 2) and record["seconds"] > record["seconds_simulating"]
    assert estimator.signature["task"] == "bandit" and estimator.signature["params"] == list(PARAMS)
    assert estimator.shapes["max_trials"] == 8


def test_fit_gives_the_inference_data_of_the_other_methods(bandit, trained, data):
    estimator, _ = trained
    inference = pp_aif.fit(bandit, data, PARAMS, method="amortised", estimator=estimator, draws=40)
    for name in PARAMS:
        values = inference.posterior[name]
        assert values.dims == ("chain", "draw", "subject") and values.shape == (1, 40, 5)
        assert bool((values > 0).all())  # on the natural scale
    assert inference.attrs["method"] == "amortised"
    assert inference.log_likelihood["actions"].shape == (1, 40, 5, 6)
    assert list(inference.posterior.subject.values) == list(data.subjects)
    quick = pp_aif.fit(
        bandit, data, PARAMS, method="amortised", estimator=estimator, draws=40, pointwise=False
    )
    assert "log_likelihood" not in quick.groups() and quick.posterior["alpha"].shape == (1, 40, 5)
    with pytest.raises(ValueError, match="pointwise: must be True or False"):
        pp_aif.fit(bandit, data, PARAMS, method="amortised", estimator=estimator, pointwise=0)


def test_absent_trials_are_trials_not_done(bandit, trained, data):
    """A subject with trials absent reads as the subject who did only the present ones, in
    order (the likelihood lets absent trials teach nothing)."""
    estimator, _ = trained
    encoder = estimator.encoder
    observations, actions = data.observations[:1], data.actions[:1]
    present = torch.tensor([[True, False, True, True, False, True]])
    keep = present[0].nonzero()[:, 0]
    with torch.no_grad():
        gapped = encoder(observations, actions, present)
        compact = encoder(
            observations[:, keep], actions[:, keep], torch.ones(1, len(keep), dtype=torch.bool)
        )
    assert torch.allclose(gapped, compact, atol=1e-6)


def test_save_and_load(tmp_path, trained, data):
    estimator, _ = trained
    path = estimator.save(tmp_path / "estimators" / "bandit.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["bandit.pt"]
    loaded = PosteriorEstimator.load(path)
    arrays = (data.observations, data.actions, data.present)
    torch.manual_seed(0)
    before = estimator.draws(*arrays, 7)
    torch.manual_seed(0)
    after = loaded.draws(*arrays, 7)
    for name in PARAMS:
        assert torch.equal(before[name], after[name])
    (tmp_path / "junk.pt").write_text("not an estimator")
    with pytest.raises(ValueError, match="is not a saved"):
        PosteriorEstimator.load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="no file"):
        PosteriorEstimator.load(tmp_path / "absent.pt")


def test_what_it_was_not_trained_for_is_refused(bandit, trained, data):
    estimator, _ = trained
    fit = pp_aif.fit
    with pytest.raises(ValueError, match="trained for parameters"):
        fit(bandit, data, ("alpha",), method="amortised", estimator=estimator)
    priors = {"alpha": default_priors()["learning_rate"]}
    with pytest.raises(ValueError, match="trained for priors"):
        fit(bandit, data, PARAMS, priors=priors, method="amortised", estimator=estimator)
    tmaze = pp_aif.load_task("tmaze")
    truth = prior_draws(PARAMS, 2, torch.Generator().manual_seed(1))
    tmaze_data = BehaviourData.read(
        long_format(simulate_subjects(tmaze, truth, 2, 0), tmaze), tmaze
    )
    with pytest.raises(ValueError, match="trained for task 'bandit'|trained for task bandit"):
        fit(tmaze, tmaze_data, PARAMS, method="amortised", estimator=estimator)
    longer = BehaviourData.read(long_format(simulate_subjects(bandit, truth, 9, 0), bandit), bandit)
    with pytest.raises(ValueError, match="at most 8 trials"):
        fit(bandit, longer, PARAMS, method="amortised", estimator=estimator)
    with pytest.raises(ValueError, match="needs a trained estimator"):
        fit(bandit, data, PARAMS, method="amortised")
    with pytest.raises(ValueError, match="only method 'amortised' takes an estimator"):
        fit(bandit, data, PARAMS, method="grid", estimator=estimator)
    with pytest.raises(ValueError, match="population model"):
        fit(bandit, data, PARAMS, method="amortised", estimator=estimator, hierarchical=True)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="min_trials"):
        EstimatorSettings(trials=5, min_trials=6)
    with pytest.raises(ValueError, match="flow"):
        EstimatorSettings(flow="maf")
    with pytest.raises(ValueError, match="validation"):
        EstimatorSettings(simulations=5, validation=0.1)
    with pytest.raises(ValueError, match="schedule: 'linear' is not one of"):
        EstimatorSettings(schedule="linear")


def test_the_cosine_schedule_takes_the_step_size_down_to_zero(bandit):
    """Each batch a step of lr (1 + cos(pi t / steps)) / 2: at the end of epoch e of E (b
    batches each) the step size is lr (1 + cos(pi e / E)) / 2, 0 after the last."""
    _, record = train_estimator(bandit, PARAMS, schedule="cosine", **{**TINY, "epochs": 4})
    expected = [1e-3 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(1, 5)]
    assert np.allclose(record["step_size"], expected, atol=1e-12), record["step_size"]
    _, constant = train_estimator(bandit, PARAMS, **TINY)
    assert constant["step_size"] == [1e-3, 1e-3]


def test_pyros_flow_trains_too(bandit, data):
    estimator, record = train_estimator(bandit, ("alpha",), flow="pyro", **TINY)
    assert all(np.isfinite(record["validation_loss"]))
    draws = estimator.draws(data.observations, data.actions, data.present, 5)
    assert draws["alpha"].shape == (5, 5) and bool((draws["alpha"] > 0).all())

"""Fixtures shared by the amortised-fitting tests: the bandit task and one tiny posterior
estimator of its alpha and learning rate, trained once for the session (2 epochs on 240
simulations: fast, and far from the exact posterior, which the importance tests need)."""

from __future__ import annotations

import pytest

import pp_aif
from pp_aif.fitting.training import train_estimator

#: the parameters the tiny estimator is trained for
PARAMS = ("alpha", "learning_rate")
#: the tiny estimator's settings (``EstimatorSettings`` overrides)
TINY = dict(simulations=240, trials=8, min_trials=3, epochs=2, hidden=8, transforms=1)


@pytest.fixture(scope="session")
def bandit():
    return pp_aif.load_task("bandit")


@pytest.fixture(scope="session")
def trained(bandit):
    """(estimator, training record) of the tiny estimator; tests that change it copy it."""
    return train_estimator(bandit, PARAMS, **TINY)

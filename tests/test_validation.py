"""Settings are refused in words, once, where they are made: each bad value names the setting
(issue: NaN precisions gave NaN q(pi) and action 0 for every agent; a NaN learning rate was
blamed on the data; horizon=0, num_steps=0 and num_agents=2.5 were accepted or crashed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.agent import AgentSettings
from pp_aif.inference.message_passing import MessagePassingSettings
from pp_aif.inference.variational import SVISettings
from pp_aif.validation import check_integer, check_number

BAD_AGENT_SETTINGS = [
    ("policy_precision", float("nan"), r"policy_precision: must be a finite number >= 0, got nan"),
    ("policy_precision", float("inf"), r"policy_precision: must be a finite number >= 0, got inf"),
    ("policy_precision", -1.0, r"policy_precision: must be a finite number >= 0, got -1"),
    ("action_precision", float("nan"), r"action_precision: must be a finite number >= 0, got nan"),
    ("action_precision", -0.5, r"action_precision: .* got -0.5"),
    ("action_precision", torch.tensor([[1.0], [float("nan")]]), r"got nan at index \(1, 0\)"),
    ("action_precision", "512", r"action_precision: .* got str '512'"),
    ("action_precision", True, r"action_precision: .* got the boolean True"),
    ("learning_rate", float("nan"), r"learning_rate: must be a finite number >= 0, got nan"),
    ("learning_rate", -1.0, r"learning_rate: .* got -1"),
    ("forgetting", 2.0, r"forgetting: must be a finite number >= 0 and < 1, got 2"),
    ("forgetting", 1.0, r"forgetting: must be a finite number >= 0 and < 1, got 1"),
    ("forgetting", -0.1, r"forgetting: .* got -0.1"),
    ("horizon", 0, r"horizon: must be an integer >= 1, got 0"),
    ("horizon", 2.5, r"horizon: must be an integer >= 1, got float 2.5"),
    ("num_samples", 0, r"num_samples: must be an integer >= 1, got 0"),
    ("inference_iterations", 2.5, r"inference_iterations: must be an integer >= 1, got float"),
    ("inference_tau", 0.0, r"inference_tau: must be a finite number > 0, got 0"),
    ("inference_tau", float("nan"), r"inference_tau: .* got nan"),
    ("preference_scale", 0.0, r"preference_scale: must be a finite number > 0, got 0"),
    ("efe_method", "mc", r"efe_method: 'mc' is not one of \('exact', 'sampled'\)"),
    ("sample_actions", "False", r"sample_actions: must be True or False, got str 'False'"),
    ("infer_precision", 1, r"infer_precision: must be True or False, got int 1"),
    ("lesions", None, r"lesions: expected a Lesions, got NoneType"),
]


@pytest.mark.parametrize("name, value, message", BAD_AGENT_SETTINGS)
def test_bad_agent_settings_are_refused_by_name(name, value, message):
    with pytest.raises(ValueError, match=message):
        AgentSettings(**{name: value})


def test_good_agent_settings_are_kept():
    per_agent = torch.tensor([[0.0], [4.0]])
    settings = AgentSettings(
        policy_precision=np.float64(16.0),
        action_precision=per_agent,
        horizon=np.int64(2),
        learning_rate=0.0,
        forgetting=0.5,
    )
    assert settings.action_precision is per_agent and settings.horizon == 2


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"num_agents": 2.5}, r"num_agents: must be an integer >= 1, got float 2.5"),
        ({"num_agents": 0}, r"num_agents: must be an integer >= 1, got 0"),
        ({"num_trials": "3"}, r"num_trials: must be an integer >= 1, got str '3'"),
        ({"num_steps": 0}, r"num_steps: must be an integer >= 1, got 0"),
        ({"seed": -1}, r"seed: must be an integer >= 0, got -1"),
        ({"settings": {"action_precision": 4}}, r"settings: expected an AgentSettings, got dict"),
    ],
)
def test_bad_simulation_arguments_are_refused_by_name(arguments, message):
    task = pp_aif.load_task("tmaze")
    with pytest.raises(ValueError, match=message):
        pp_aif.simulate(task, **arguments)


def test_a_one_step_trial_is_run_not_replaced_by_the_default():
    record = pp_aif.simulate(pp_aif.load_task("tmaze"), 2, 1, num_steps=1)
    assert record.sizes["time"] == 1


def test_expected_free_energy_refuses_a_fractional_time():
    task = pp_aif.load_task("tmaze")
    with pytest.raises(ValueError, match=r"time: must be an integer >= 0, got float 2.5"):
        pp_aif.expected_free_energy(task.model, list(task.model.D), time=2.5)
    with pytest.raises(ValueError, match=r"num_samples: must be an integer >= 1, got 0"):
        pp_aif.expected_free_energy(task.model, list(task.model.D), num_samples=0)


def test_scheme_settings_refuse_fractions():
    with pytest.raises(ValueError, match=r"num_iterations: must be an integer >= 1, got float"):
        MessagePassingSettings(num_iterations=2.5)
    with pytest.raises(ValueError, match=r"tolerance: must be a finite number >= 0, got nan"):
        MessagePassingSettings(tolerance=float("nan"))
    with pytest.raises(ValueError, match=r"num_steps: must be an integer >= 1, got float 10.5"):
        SVISettings(num_steps=10.5)
    with pytest.raises(ValueError, match=r"learning_rate: must be a finite number > 0, got inf"):
        SVISettings(learning_rate=float("inf"))


def test_preferences_that_leave_no_policy_to_prefer_are_named():
    """Every policy reaches outcome 0, whose preference overflows G: q(pi) would be NaN and
    every agent would take action 0; the step says so instead."""
    A = [np.array([[1.0, 1.0], [0.0, 0.0]])]
    B = [np.stack([np.eye(2), np.eye(2)[::-1]], -1)]
    C = [np.array([-1e308, 1e308])]  # finite, but ln p~ spans 2e308: G overflows to +inf
    model = pp_aif.GenerativeModel(A, B, C=C)
    with pytest.raises(ValueError, match=r"q\(pi\) is not finite at time step 0 .* agent 0"):
        pp_aif.simulate((model, model, AgentSettings()), 2, 1, num_steps=2)


def test_the_checks_themselves():
    assert check_integer("n", np.int32(3), minimum=1) == 3
    assert check_integer("n", torch.tensor(3), minimum=1) == 3
    with pytest.raises(ValueError, match=r"n: must be an integer >= 1, got bool True"):
        check_integer("n", True, minimum=1)
    with pytest.raises(ValueError, match=r"x: must be a finite number, got an empty Tensor"):
        check_number("x", torch.zeros(0))
    with pytest.raises(ValueError, match=r"x: .* got inf at index \(2,\) \(2 entries in all\)"):
        check_number("x", np.array([0.0, 1.0, np.inf, -np.inf]))
    with pytest.raises(ValueError, match=r"x: .* got complex"):
        check_number("x", torch.tensor(1j))

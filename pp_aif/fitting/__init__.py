"""Fitting agents to people's behaviour: the action likelihood, the NUTS fit (issue 6, started)."""

from pp_aif.fitting.fit import default_priors, fit
from pp_aif.fitting.likelihood import (
    PolicyValues,
    action_log_likelihood,
    action_log_probabilities,
    policy_values,
)

__all__ = [
    "PolicyValues",
    "policy_values",
    "action_log_probabilities",
    "action_log_likelihood",
    "fit",
    "default_priors",
]

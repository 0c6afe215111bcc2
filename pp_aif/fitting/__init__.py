"""Fitting agents to people's behaviour: the action likelihood (more to come: issue 6)."""

from pp_aif.fitting.likelihood import PolicyValues, action_log_likelihood, policy_values

__all__ = ["PolicyValues", "policy_values", "action_log_likelihood"]

"""Fitting agents to people's behaviour: the action likelihood, ``fit`` (NUTS, SVI, MAP;
single subjects or hierarchical), ``fit_subjects`` (many subjects in groups, as Dask jobs),
posterior predictive checks."""

from pp_aif.fitting.fanout import concat_subjects, fit_subjects
from pp_aif.fitting.fit import LINKS, METHODS, default_priors, fit, parameter_draws, prior_draws
from pp_aif.fitting.likelihood import (
    LEARNING_PARAMETERS,
    PARAMETERS,
    BehaviourLikelihood,
    PolicyValues,
    action_log_likelihood,
    action_log_probabilities,
    initial_state_evidence,
    learned_initial_beliefs,
    parameter_defaults,
    policy_values,
    sharpened_likelihood,
)

__all__ = [
    "PARAMETERS",
    "LEARNING_PARAMETERS",
    "LINKS",
    "METHODS",
    "BehaviourLikelihood",
    "PolicyValues",
    "policy_values",
    "initial_state_evidence",
    "learned_initial_beliefs",
    "action_log_probabilities",
    "action_log_likelihood",
    "parameter_defaults",
    "sharpened_likelihood",
    "parameter_draws",
    "fit",
    "fit_subjects",
    "concat_subjects",
    "default_priors",
    "prior_draws",
]

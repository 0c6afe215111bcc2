"""Planning: policies, their expected free energy, the policy posterior and action selection."""

from pp_aif.planning.efe import PolicyScores, expected_free_energy, policy_scores
from pp_aif.planning.policies import (
    DEFAULT_ACTION_PRECISION,
    DEFAULT_POLICY_PRECISION,
    Lesions,
    action_marginals,
    action_probabilities,
    infer_precision,
    policy_posterior,
    policy_score,
    select_actions,
)
from pp_aif.planning.sophisticated import (
    SophisticatedScores,
    sophisticated_expected_free_energy,
    sophisticated_scores,
)

__all__ = [
    "PolicyScores",
    "expected_free_energy",
    "policy_scores",
    "Lesions",
    "policy_score",
    "policy_posterior",
    "action_marginals",
    "action_probabilities",
    "select_actions",
    "infer_precision",
    "DEFAULT_POLICY_PRECISION",
    "DEFAULT_ACTION_PRECISION",
    "SophisticatedScores",
    "sophisticated_expected_free_energy",
    "sophisticated_scores",
]

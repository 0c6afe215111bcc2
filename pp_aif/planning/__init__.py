"""Planning: policies and their expected free energy."""

from pp_aif.planning.efe import PolicyScores, expected_free_energy

__all__ = ["PolicyScores", "expected_free_energy"]

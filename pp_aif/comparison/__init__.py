"""Model comparison: random-effects Bayesian model selection and Bayesian model reduction."""

from pp_aif.comparison.bms import BMSResult, bms
from pp_aif.comparison.reduction import ReducedDirichlet, reduced_log_evidence

__all__ = ["bms", "BMSResult", "reduced_log_evidence", "ReducedDirichlet"]

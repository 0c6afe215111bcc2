"""Model comparison: PSIS-LOO / WAIC rankings of fits, random-effects Bayesian model selection,
and Bayesian model reduction."""

from pp_aif.comparison.bms import BMSResult, bms
from pp_aif.comparison.compare import compare, pointwise_fit, subject_elpd
from pp_aif.comparison.evidence import Evidence, log_evidence
from pp_aif.comparison.reduction import ReducedDirichlet, reduced_log_evidence

__all__ = [
    "compare",
    "pointwise_fit",
    "subject_elpd",
    "log_evidence",
    "Evidence",
    "bms",
    "BMSResult",
    "reduced_log_evidence",
    "ReducedDirichlet",
]

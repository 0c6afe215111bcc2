"""Pure tensor math: no ``pyro.sample``, no globals, log-space. Shapes: each module's docstring."""

from pp_aif.ops.contractions import contract_factors, outer
from pp_aif.ops.hmm import factor_marginals, forward_filter, propagate, smooth
from pp_aif.ops.numerics import xlogy

__all__ = [
    "contract_factors",
    "outer",
    "forward_filter",
    "smooth",
    "propagate",
    "factor_marginals",
    "xlogy",
]

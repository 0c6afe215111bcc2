"""The exceptions and warnings of pp_aif. The errors are ``ValueError`` and name the array, index
and problem."""

__all__ = [
    "ModelError",
    "DataError",
    "ConvergenceWarning",
    "DiagnosticWarning",
    "DataWarning",
    "LongFitWarning",
]


class ModelError(ValueError):
    """A generative model is malformed (e.g. ``A[1]: column (2, 0) sums to 1.3, not 1``)."""


class DataError(ValueError):
    """Observations or actions are malformed, out of range, or impossible under the model."""


class ConvergenceWarning(UserWarning):
    """An iterative scheme (SVI, message passing) stopped at its limit without converging."""


class DiagnosticWarning(UserWarning):
    """A diagnostic says an estimate is unreliable (e.g. PSIS-LOO's Pareto k above 0.7)."""


class DataWarning(UserWarning):
    """Data were read with a change the reader made and names (e.g. spaces stripped from subject
    identifiers)."""


class LongFitWarning(UserWarning):
    """A fit is expected to take long (minutes): said before it starts, with the numbers and
    what would be faster. It depends on the machine's speed at the time, so the test suite
    ignores it (``pyproject.toml``) except where a test asks for it."""

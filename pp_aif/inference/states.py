"""State inference: ``infer_states`` and its result type ``Beliefs``.

Dimension symbols: *batch sequences, T time steps, F factors (S_f states), M modalities.

Every method returns the same ``Beliefs``. Two answer the question exactly:

``method="exact"``      closed-form torch (``pp_aif.ops.hmm``): scaled forward filtering and
                        alpha-gamma smoothing over the joint state, contracted factor by factor.
``method="enumerate"``  the Pyro program ``pp_aif.programs.pomdp`` under ``TraceEnum_ELBO``:
                        its loss with an empty guide is -ln p(o | u), and
                        ``TraceEnum_ELBO.compute_marginals`` gives the posterior marginals.

Both must agree with each other and with brute-force enumeration of every state path to 1e-10
in float64 (see ``tests/inference/test_states.py``). The variational methods minimise the free
energy F >= -ln p(o | u) within a family of beliefs:

``method="mean_field"``, ``"structured"``  SVI guides of the Pyro program
                        (:mod:`pp_aif.inference.variational`).
``method="fpi"``, ``"vmp"``, ``"mmp"``     the field's message-passing schemes
                        (:mod:`pp_aif.inference.message_passing`).
``method="amortised"``  the structured guide's chain with its parameters computed by a trained
                        network (``guide=``, :mod:`pp_aif.inference.amortised`): no optimisation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from torch import Tensor

from pp_aif.inference.amortised import amortised_beliefs
from pp_aif.inference.exact import run_forward_filter
from pp_aif.inference.inputs import prepare_sequences
from pp_aif.inference.message_passing import MESSAGE_PASSING, run_scheme
from pp_aif.inference.schemes import SCHEMES
from pp_aif.inference.variational import GUIDES, Optimisation
from pp_aif.ops.hmm import factor_marginals
from pp_aif.spec import GenerativeModel

__all__ = ["Beliefs", "infer_states", "METHODS", "MODES"]

EXACT_METHODS = ("exact", "enumerate")
METHODS = (*EXACT_METHODS, *GUIDES, *MESSAGE_PASSING, "amortised")
MODES = ("smoothing", "filtering")


@dataclass(frozen=True)
class Beliefs:
    """Posterior beliefs about hidden states.

    Attributes
    ----------
    marginals : list of F tensors (*batch, T, S_f)
        ``mode="smoothing"``: q(s_f,t) = p(s_f,t | o_1:T, u_1:T-1);
        ``mode="filtering"``: q(s_f,t) = p(s_f,t | o_1:t, u_1:t-1).
        Each row sums to 1.
        The approximate methods give their marginals (smoothing only; fpi filtering only).
    log_evidence : Tensor (*batch) or None
        ln p(o_1:T | u_1:T-1), in nats (the same in both modes); None for the approximate
        methods, which do not compute it.
    method, mode : str
        How the beliefs were computed.
    free_energy : Tensor (*batch)
        F = E_q[ln q(s) - ln p(o, s | u)] in nats of the beliefs the method found. For the exact
        methods q is the posterior and F = -log_evidence; otherwise F >= -ln p(o | u).
    optimisation : Optimisation or None
        For the iterative methods: iterations, final F, converged, and the loss trace.
    exact_log_free_energy : Tensor (*batch)
        F of the same beliefs under the model's exact logarithms (ln 0 = -inf). It equals
        ``free_energy`` except for the message-passing schemes, whose ``free_energy`` floors
        ln p at their epsilon (as they compute it); for them this is the F of their marginals
        with the mass at or below the floor removed, +inf where they give real mass to what
        the model rules out. Compare schemes on this one.
    """

    marginals: list[Tensor]
    log_evidence: Tensor | None
    method: str
    mode: str
    free_energy: Tensor | None = None
    optimisation: Optimisation | None = None
    exact_log_free_energy: Tensor | None = None

    def __post_init__(self):
        if self.free_energy is None:
            if self.log_evidence is None:
                raise ValueError("Beliefs: give log_evidence or free_energy")
            object.__setattr__(self, "free_energy", -self.log_evidence)
        if self.exact_log_free_energy is None:
            object.__setattr__(self, "exact_log_free_energy", self.free_energy)


def infer_states(
    model: GenerativeModel,
    observations,
    actions=None,
    *,
    method: str = "exact",
    mode: Literal["smoothing", "filtering"] = "smoothing",
    settings=None,
    guide=None,
) -> Beliefs:
    """Posterior marginals over each hidden-state factor, and the log evidence.

    Parameters
    ----------
    model : GenerativeModel
    observations : int array (T, M) or (*batch, T, M)
        ``observations[..., t, m]`` is the outcome of modality m at step t.
    actions : int array (T-1, F) or (*batch, T-1, F), optional
        ``actions[..., t, f]`` is the control of factor f between steps t and t+1. May be
        omitted when every factor has one control, or T = 1. Unbatched actions are shared by
        every sequence of a batch.
    method : {"exact", "enumerate", "mean_field", "structured", "fpi", "vmp", "mmp", "amortised"}
        ``"exact"`` (default, fast) or ``"enumerate"`` (the Pyro program; slow, the reference);
        ``"mean_field"`` or ``"structured"``: an SVI guide; ``"fpi"`` (a filter), ``"vmp"``,
        ``"mmp"``: message passing; ``"amortised"``: a trained guide (see module docstring).
    mode : {"smoothing", "filtering"}
        Condition each q(s_t) on all observations, or on o_1:t only. The variational methods
        answer "smoothing" only.
    settings : SVISettings, MessagePassingSettings or dict, optional
        For the SVI methods, how the guide is fitted; for message passing, iterations and step
        size (a dict overrides fields of the defaults).
    guide : AmortisedGuide
        For ``method="amortised"`` (and only for it): the trained guide
        (``pp_aif.inference.amortised.train_amortised_guide`` or ``AmortisedGuide.load``),
        which refuses a model other than its own.

    Returns
    -------
    Beliefs

    Raises
    ------
    DataError
        Malformed or out-of-range observations or actions, or a sequence that has probability
        zero under the model; the message names the sequence, time step and modality.
    ValueError
        An unknown ``method`` or ``mode``, or settings for a method that takes none.

    Warns
    -----
    ConvergenceWarning
        An iterative method stopped at its limit before converging.
    """
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {METHODS}")
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not one of {MODES}")
    if not isinstance(model, GenerativeModel):
        raise TypeError(f"model: expected a GenerativeModel, got {type(model).__name__}")
    if method in (*EXACT_METHODS, "amortised") and settings is not None:
        raise ValueError(f"settings: method {method!r} takes no settings")
    if (guide is None) != (method != "amortised"):
        raise ValueError(
            "guide: method 'amortised' needs a trained guide (guide=...)"
            if guide is None
            else f"guide: only method 'amortised' takes a guide, not {method!r}"
        )
    if method == "amortised" and mode != "smoothing":
        raise ValueError("mode: method 'amortised' infers smoothing posteriors only")
    sequences = prepare_sequences(model, observations, actions)
    batch = sequences.batch_shape
    T = sequences.observations.shape[1]
    free_energy, record, exact_logs, log_evidence = None, None, None, None
    if method == "enumerate":  # the Pyro program itself: the oracle, not a scheme
        from pp_aif.inference.enumeration import enumerate_states

        marginals, log_evidence = enumerate_states(model, sequences, mode)
    elif method == "amortised":
        marginals, free_energy = amortised_beliefs(model, guide, sequences)
    elif method in MESSAGE_PASSING:  # scored and checked: F per sweep, the floor's warnings
        marginals, free_energy, exact_logs, record = run_scheme(
            model, sequences, method, mode, _settings(SCHEMES[method].settings, settings)
        )
    else:
        scheme = SCHEMES[method]
        if method != "exact" and mode != scheme.mode:
            raise ValueError(f"mode: method {method!r} infers {scheme.mode} posteriors only")
        # the exact pass first: impossible sequences are a DataError; the posterior's support
        result, inputs = run_forward_filter(model, sequences)
        if method == "exact":
            log_evidence = result.log_normalisers.sum(-1)
            marginals = (
                factor_marginals(result.filtered, 2)
                if mode == "filtering"
                else scheme.sequence(inputs, None, result=result).marginals
            )
        else:
            run = scheme.sequence(inputs, _settings(scheme.settings, settings), result=result)
            marginals, free_energy, record = run.marginals, run.free_energy, run.optimisation
    if free_energy is not None:
        free_energy = free_energy.reshape(batch)
    if record is not None:
        record = replace(record, final=record.final.reshape(batch))
    if exact_logs is not None:
        exact_logs = exact_logs.reshape(batch)
    return Beliefs(
        marginals=[q.reshape(*batch, T, q.shape[-1]) for q in marginals],
        log_evidence=None if log_evidence is None else log_evidence.reshape(batch),
        method=method,
        mode=mode,
        free_energy=free_energy,
        optimisation=record,
        exact_log_free_energy=exact_logs,
    )


def _settings(kind, settings):
    if settings is None:
        return kind()
    if isinstance(settings, kind):
        return settings
    if isinstance(settings, dict):
        unknown = set(settings) - set(kind.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"settings: unknown {sorted(unknown)}; {kind.__name__} has "
                f"{sorted(kind.__dataclass_fields__)}"
            )
        return kind(**settings)
    raise TypeError(f"settings: expected {kind.__name__} or dict, got {type(settings).__name__}")

"""One state-inference interface: every scheme written once, as pure functions on one set of arrays.

Dimension symbols: N sequences (or agents), T steps, F factors (S_f states), M modalities.

``pp_aif.inference.inputs.scheme_inputs`` is the one adapter: it turns (model, observations,
actions, and each sequence's own A, B and D where an agent has learned them) into
``SchemeInputs``, the arrays every scheme takes. Each scheme in ``SCHEMES`` then has two pure
functions of them:

``online(inputs, settings, prior, posterior)``
    the agent's filter step at the last step of ``inputs``: (joint q(s_t) (N, S_1..S_F), its
    factor marginals F x (N, S_f)). ``prior`` is the joint belief the agent carried into the
    step, ``posterior`` Bayes' rule applied to it (``ops.hmm.bayes_update``, which every step
    runs first for ln p(o_t | o_<t)). "exact" keeps that posterior; "fpi" iterates on the
    marginals of the prior; the others infer over the trial so far, which ``inputs`` hold, and
    read its last step. The joint of an approximate scheme is the product of its marginals.
``sequence(inputs, settings, on_sweep=None, result=None)``
    the scheme over whole sequences: a ``SchemeRun`` with F x (N, T, S_f) marginals, smoothing
    ones (filtering for "fpi", which is a filter). ``on_sweep(marginals)`` sees each sweep of
    the message-passing schemes (``infer_states`` records F per sweep with it); ``result`` is
    the exact forward pass on the same inputs, where the caller has it.

``pp_aif.infer_states``, ``pp_aif.agent.step``, ``pp_aif.agent.learn_between_trials`` and so
the fitting likelihood (the agent replaying a person's actions) all reach the schemes here.

The schemes: "exact" (Bayes' rule over the joint state; the forward filter and alpha-gamma
smoother of :mod:`pp_aif.ops.hmm`), "fpi" (pymdp 1.0's fixed-point iteration, a filter with the
empirical prior B_f(u_t-1) q_t-1,f), "vmp" (pymdp 1.0's variational message passing), "mmp"
(SPM's marginal message passing), and the SVI guides "mean_field" and "structured" of the Pyro
program (:mod:`pp_aif.inference.variational`; the model's own A, B and D only). fpi and vmp
take the likelihood with pymdp's floor per modality, ln max(A_m[o_m], eps); mmp takes the
likelihood itself and floors as SPM does (ln(x + 1e-16)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pp_aif.inference.exact import exact_filtering, exact_smoothing
from pp_aif.inference.inputs import Sequences
from pp_aif.inference.variational import GUIDES, Optimisation, SVISettings, fit_guide
from pp_aif.ops.contractions import outer
from pp_aif.ops.hmm import factor_marginals
from pp_aif.ops.message_passing import (
    SPM_EPSILON,
    clipped_log,
    fixed_point_iteration,
    marginal_message_passing,
    variational_message_passing,
)
from pp_aif.validation import check_flag, check_integer, check_number

__all__ = [
    "Scheme",
    "SchemeRun",
    "SCHEMES",
    "MESSAGE_PASSING",
    "MessagePassingSettings",
]

#: the schemes of the message-passing family
MESSAGE_PASSING = ("fpi", "vmp", "mmp")


@dataclass(frozen=True)
class MessagePassingSettings:
    """num_iterations : sweeps (per step for fpi). Defaults: pymdp's 16 and SPM's 16.
    tau : gradient step of vmp (pymdp default 1) and mmp (SPM's 1/4); None for the default.
    tolerance : converged when no marginal changed by more than this in the last sweep.
    warn : warn (ConvergenceWarning) when not converged.
    """

    num_iterations: int = 16
    tau: float | None = None
    tolerance: float = 1e-6
    warn: bool = True

    def __post_init__(self):
        check_integer("num_iterations", self.num_iterations, minimum=1)
        if self.tau is not None:
            check_number("tau", self.tau, minimum=0, exclusive_minimum=True)
        check_number("tolerance", self.tolerance, minimum=0)
        check_flag("warn", self.warn)


@dataclass(frozen=True)
class SchemeRun:
    """A scheme over whole sequences. marginals : F tensors (N, T, S_f); change : (N,) the
    largest change of a marginal in the last sweep (message passing), else None; free_energy
    and optimisation : the guide's F (N,) and its ``Optimisation`` (the SVI guides), else None."""

    marginals: list[Tensor]
    change: Tensor | None = None
    free_energy: Tensor | None = None
    optimisation: Optimisation | None = None


@dataclass(frozen=True)
class Scheme:
    """A state-inference scheme (see the module docstring).

    mode : what ``sequence`` infers, "smoothing" or "filtering"; floor : the floor its logs
    take in its own F (0: exact logs; None: the dtype's machine epsilon); history : whether
    ``online`` infers over the trial so far (an agent then keeps the trial's observations and
    actions); default_tau : its gradient step when none is set; settings : the type of its
    settings (None: it takes none)."""

    name: str
    mode: str
    floor: float | None
    history: bool
    online: Callable
    sequence: Callable
    default_tau: float | None = None
    settings: type | None = None

    def epsilon(self, dtype: torch.dtype) -> float:
        """The floor of its logs in this dtype (``floor``, or the machine epsilon)."""
        return torch.finfo(dtype).eps if self.floor is None else self.floor


# --- exact ----------------------------------------------------------------------------------


def _exact_online(inputs, settings, prior, posterior):
    return posterior, factor_marginals(posterior, 1)


def _exact_sequence(inputs, settings=None, on_sweep=None, result=None):
    """The exact smoothing posterior's marginals."""
    return SchemeRun(factor_marginals(exact_smoothing(inputs, result), 2))


# --- message passing ------------------------------------------------------------------------


def _max_change(new: list[Tensor], old: list[Tensor]) -> Tensor:
    """max |q_new - q_old| per sequence: (N,)."""
    return torch.stack(
        [(a - b).abs().flatten(1).amax(1) for a, b in zip(new, old, strict=True)]
    ).amax(0)


def _fpi_step(log_likelihood: Tensor, prior: list[Tensor], settings: MessagePassingSettings):
    """pymdp's FPI at one step: log_likelihood (N, S_1..S_F) floored per modality, prior the
    empirical prior F x (N, S_f). Returns (q F x (N, S_f), the change in its last iteration)."""
    return fixed_point_iteration(
        log_likelihood, [clipped_log(p) for p in prior], settings.num_iterations
    )


def _fpi_online(inputs, settings, prior, posterior):
    q, _ = _fpi_step(inputs.clipped_log_likelihood[:, -1], factor_marginals(prior, 1), settings)
    return outer(*q, batch_dims=1), q


def _fpi_sequence(inputs, settings, on_sweep=None, result=None):
    """FPI as a filter: prior D at step 0, B_f(u_t-1) q_t-1,f after."""
    prior = list(inputs.initial)
    change = torch.zeros(inputs.num_sequences, dtype=prior[0].dtype, device=prior[0].device)
    steps = []
    for t in range(inputs.num_steps):
        if t > 0:
            prior = [
                torch.einsum("nij,nj->ni", b[:, t - 1], q)
                for b, q in zip(inputs.transitions, steps[-1], strict=True)
            ]
        q, last_change = _fpi_step(inputs.clipped_log_likelihood[:, t], prior, settings)
        change = torch.maximum(change, last_change)
        steps.append(q)
    marginals = [torch.stack([s[f] for s in steps], 1) for f in range(len(prior))]
    if on_sweep is not None:
        on_sweep(marginals)
    return SchemeRun(marginals, change)


def _sweeps(sweep, settings: MessagePassingSettings, on_sweep) -> SchemeRun:
    """``sweep(marginals or None) -> marginals`` run ``num_iterations`` times; the change is
    that of the last sweep (from uniform beliefs after a single sweep)."""
    marginals = previous = None
    for _ in range(settings.num_iterations):
        previous, marginals = marginals, sweep(marginals)
        if on_sweep is not None:
            on_sweep(marginals)
    if previous is None:
        previous = [torch.full_like(q, 1.0 / q.shape[-1]) for q in marginals]
    return SchemeRun(marginals, _max_change(marginals, previous))


def _vmp_sequence(inputs, settings, on_sweep=None, result=None):
    """pymdp's VMP over the sequence: Jacobi sweeps with step tau (default 1)."""
    tau = 1.0 if settings.tau is None else settings.tau
    log_likelihood = inputs.clipped_log_likelihood
    log_transitions = [clipped_log(b) for b in inputs.transitions]
    log_prior = [clipped_log(d) for d in inputs.initial]

    def sweep(marginals):
        return variational_message_passing(
            log_likelihood, log_transitions, log_prior, 1, tau, initial=marginals
        )

    return _sweeps(sweep, settings, on_sweep)


def _mmp_sequence(inputs, settings, on_sweep=None, result=None):
    """SPM's MMP over the sequence: Gauss-Seidel sweeps with step tau (default 1/4)."""
    tau = 0.25 if settings.tau is None else settings.tau
    likelihood = torch.exp(inputs.log_likelihood)

    def sweep(marginals):
        marginals, _, _ = marginal_message_passing(
            likelihood,
            list(inputs.transitions),
            list(inputs.initial),
            num_iterations=1,
            tau=tau,
            initial=marginals,
        )
        return marginals

    return _sweeps(sweep, settings, on_sweep)


# --- the SVI guides -------------------------------------------------------------------------


def _guide_sequence(method: str) -> Callable:
    def sequence(inputs, settings, on_sweep=None, result=None):
        """The guide fitted by SVI to the Pyro program, on the posterior's support."""
        if result is None:
            result = exact_filtering(inputs)
        sequences = Sequences(inputs.observations, inputs.actions, (inputs.num_sequences,))
        marginals, free_energy, record = fit_guide(
            inputs.model, sequences, method, settings, result, inputs
        )
        return SchemeRun(marginals, free_energy=free_energy, optimisation=record)

    return sequence


# --- the registry ---------------------------------------------------------------------------


def _history_online(name: str) -> Callable:
    """The online step of a scheme that infers over the trial so far: its last marginal."""

    def online(inputs, settings, prior, posterior):
        q = [x[:, -1] for x in SCHEMES[name].sequence(inputs, settings).marginals]
        return outer(*q, batch_dims=1), q

    return online


SCHEMES: dict[str, Scheme] = {
    "exact": Scheme("exact", "smoothing", 0.0, False, _exact_online, _exact_sequence),
    "fpi": Scheme(
        "fpi",
        "filtering",
        None,
        False,
        _fpi_online,
        _fpi_sequence,
        settings=MessagePassingSettings,
    ),
    "vmp": Scheme(
        "vmp",
        "smoothing",
        None,
        True,
        _history_online("vmp"),
        _vmp_sequence,
        1.0,
        MessagePassingSettings,
    ),
    "mmp": Scheme(
        "mmp",
        "smoothing",
        SPM_EPSILON,
        True,
        _history_online("mmp"),
        _mmp_sequence,
        0.25,
        MessagePassingSettings,
    ),
    **{
        name: Scheme(
            name,
            "smoothing",
            0.0,
            True,
            _history_online(name),
            _guide_sequence(name),
            settings=SVISettings,
        )
        for name in GUIDES
    },
}

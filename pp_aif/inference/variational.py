"""Variational state inference: Pyro guides for ``pp_aif.programs.pomdp`` fitted by ``SVI``.

Dimension symbols: N sequences, T steps, F factors (S_f states), K = prod_f S_f joint states.

The loss is the negative ELBO of the program, i.e. the variational free energy

    F[q] = E_q[ln q(s_1:T) - ln p(o_1:T, s_1:T | u)]  >=  -ln p(o_1:T | u)

(Wainwright & Jordan 2008; Friston et al. 2017, Neural Comput. 29(1), eq. 3). ``TraceEnum_ELBO``
computes it exactly when the guide's sites are enumerated in parallel (under ``pyro.markov``, so
the cost is linear in T), or by Monte Carlo over guide samples with a score-function gradient
(``elbo="sampled"``). Two guide families:

``mean_field``  q(s) = prod_t prod_f q(s_f,t); parameters: logits (N, T, S_f) per factor.
``structured``  a Markov chain over the joint state, q(s_1) prod_t q(s_t+1 | s_t), started at the
                model's prior over paths; parameters:
                joint logits (N, K) for t = 0 and (N, T-1, K, K) for the transitions. Each
                factor's site is drawn from its chain-rule conditional
                q(s_f,t | s_1..f-1,t, s_t-1), so the family is every Markov chain over the joint
                state and contains the exact posterior.

Support. Where the model has structural zeros, any q that puts mass on an impossible state has
F = +inf and no gradient. Both guides are therefore restricted to the support of the exact
posterior (states, and for the chain, transitions with posterior mass; computed by the exact
forward-backward pass): masked logits are ``LOG_ZERO``, whose probability is exactly 0 in float64
and float32. A product of marginals over the whole posterior support may still have F = +inf:
when a structural zero couples consecutive steps of a factor (or factors within a step), it puts
mass on the impossible pairs. Mean field is zero-forcing, so its optimum has finite F for every
possible sequence: there the guide's support is that of a mean-field optimum found by coordinate
ascent with exact logarithms from the most probable path (``_mean_field_start``), and L-BFGS
refines it from there. Its F lies between -ln p(o) and the most probable path's -ln p(o, s).
"""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.ops.indexing import Vindex
from torch import Tensor

from pp_aif.errors import ConvergenceWarning
from pp_aif.inference.exact import log_space_arguments
from pp_aif.inference.inputs import SchemeInputs, Sequences
from pp_aif.ops.contractions import outer
from pp_aif.ops.free_energy import (
    chain_free_energy,
    chain_joint_marginals,
    joint_log_initial,
    joint_log_transitions,
    mean_field_free_energy,
    posterior_as_chain,
)
from pp_aif.ops.hmm import factor_marginals, most_probable_path, observation_log_likelihood
from pp_aif.ops.message_passing import mean_field_coordinate_ascent
from pp_aif.programs import pomdp, state_site
from pp_aif.spec import GenerativeModel
from pp_aif.validation import check_integer, check_number

__all__ = ["GUIDES", "Optimisation", "SVISettings", "fit_guide", "LOG_ZERO"]

GUIDES = ("mean_field", "structured")
LOG_ZERO = -1.0e4  # exp(LOG_ZERO - 0) underflows to exactly 0 in float32 and float64


@dataclass(frozen=True)
class SVISettings:
    """How a guide is fitted.

    optimiser : ``"lbfgs"`` minimises the exact (enumerated) ELBO with ``torch.optim.LBFGS`` on
        ``TraceEnum_ELBO.differentiable_loss`` (Pyro's ``SVI.step`` cannot pass the closure that
        L-BFGS needs); ``"adam"`` runs ``pyro.infer.SVI`` with ``pyro.optim.Adam``; ``"auto"``:
        L-BFGS for the exact ELBO, Adam for the sampled one (a noisy objective).
    num_steps : the most optimiser iterations; fitting stops earlier once converged.
    learning_rate : Adam's step size (L-BFGS uses a strong-Wolfe line search).
    tolerance : Adam: converged when the loss changed by less than ``tolerance`` x max(1, |F|)
        nats at each of the last ``patience`` steps. L-BFGS: its ``tolerance_change``; converged
        when it stops before ``num_steps`` iterations.
    elbo : ``"exact"`` enumerates the guide (exact F, linear in T; the chain's cost grows as K^2);
        ``"sampled"`` draws ``num_particles`` guide samples per step (score-function gradients);
        ``"auto"`` enumerates when K <= ``max_enumerated_states``.
    seed : seeds Pyro before fitting (only the sampled ELBO is random).
    objective : for the exact ELBO, ``"closed_form"`` (default) minimises the guide's F in
        closed form (``pp_aif.ops.free_energy``, the same number as Pyro's enumerated
        ``TraceEnum_ELBO``, tested to 1e-10) by L-BFGS, all sequences in one batch, each leaving
        the batch once it has converged; ``"pyro"`` minimises ``TraceEnum_ELBO`` itself (the
        specification, about 10-25 ms an evaluation). The sampled ELBO is always Pyro's.
    round : L-BFGS iterations between the checks of each sequence's convergence (closed form).
    chain_start : where the structured guide's chain starts. ``"posterior"`` (default): at its
        closed-form coordinate update, which for the whole chain is the exact posterior as a
        chain (forward-backward, ``ops.free_energy.posterior_as_chain``): the family holds it,
        so the optimiser only confirms it (its gradient is at most 1e-10 there, F = -ln p(o)).
        ``"prior"``: at the prior over paths, for studies of the optimiser itself (L-BFGS then
        creeps towards logits that diverge where the posterior is near-deterministic).
    """

    optimiser: str = "auto"
    num_steps: int = 1000
    learning_rate: float = 0.05
    tolerance: float = 1e-9
    patience: int = 20
    elbo: str = "auto"
    num_particles: int = 64
    max_enumerated_states: int = 64
    seed: int = 0
    objective: str = "closed_form"
    round: int = 25
    chain_start: str = "posterior"

    def __post_init__(self):
        if self.elbo not in ("auto", "exact", "sampled"):
            raise ValueError(f"elbo: {self.elbo!r} is not one of ('auto', 'exact', 'sampled')")
        if self.optimiser not in ("auto", "lbfgs", "adam"):
            raise ValueError(
                f"optimiser: {self.optimiser!r} is not one of ('auto', 'lbfgs', 'adam')"
            )
        if self.objective not in ("closed_form", "pyro"):
            raise ValueError(f"objective: {self.objective!r} is not one of ('closed_form', 'pyro')")
        if self.chain_start not in ("posterior", "prior"):
            raise ValueError(
                f"chain_start: {self.chain_start!r} is not one of ('posterior', 'prior')"
            )
        for name in ("num_steps", "patience", "num_particles", "max_enumerated_states", "round"):
            check_integer(name, getattr(self, name), minimum=1)
        check_number("learning_rate", self.learning_rate, minimum=0, exclusive_minimum=True)
        check_number("tolerance", self.tolerance, minimum=0)
        check_integer("seed", self.seed, minimum=0)


@dataclass(frozen=True)
class Optimisation:
    """The record of an iterative scheme: what it did and whether it converged.

    iterations : steps (SVI) or sweeps (message passing) taken.
    final : F at the end, (N,) nats (for SVI with ``elbo="sampled"``, a Monte Carlo estimate).
    converged : whether the stopping rule was met before the limit.
    trace : the loss (summed over sequences) at every iteration, (iterations,).
    """

    iterations: int
    final: Tensor
    converged: bool
    trace: Tensor


def posterior_support(model: GenerativeModel, inputs: SchemeInputs, result, chain=False):
    """Posterior support: joint states (N, T, K) and transitions (N, T-1, K, K) with mass
    (after the smoothed joint); with ``chain``, the exact posterior as a chain too (initial
    (N, K), conditionals (N, T-1, K, K))."""
    smoothed, first, conditionals = posterior_as_chain(
        result.filtered,
        result.predicted,
        list(inputs.transitions),
        **log_space_arguments(inputs, result),
    )
    N, T = smoothed.shape[:2]
    K = math.prod(model.num_states)
    states = smoothed.reshape(N, T, K) > 0
    pairs = states[:, :-1, :, None] & (conditionals > 0)
    if chain:
        return smoothed, states, pairs, (first, conditionals)
    return smoothed, states, pairs


def _chain_start(model, transitions, N, settings: SVISettings, exact_chain):
    """The structured guide's starting logits (N, K) and (N, T-1, K, K): the exact posterior's
    chain (``chain_start="posterior"``), or the prior over paths."""
    if settings.chain_start == "prior":
        return _prior_chain(model, transitions, N)
    first, conditionals = exact_chain
    return (
        torch.log(first).clamp_min(LOG_ZERO),
        torch.log(conditionals).clamp_min(LOG_ZERO),
    )


def _product_is_finite(masks, log_likelihood, transitions) -> Tensor:
    """(N,) bool: whether every product of marginals on ``masks`` F x (N, T, S_f) has finite F,
    i.e. no joint state of a step has ln p(o_t | s_t) = -inf and no pair of consecutive states
    of a factor has p(s_t+1 | s_t) = 0 (D is positive on the posterior's support)."""
    impossible = (~torch.isfinite(log_likelihood)).to(log_likelihood.dtype)  # (N, T, S_1..S_F)
    joint = outer(*[m.to(log_likelihood.dtype) for m in masks], batch_dims=2)
    finite = ~((joint * impossible).flatten(2).sum(-1) > 0).any(-1)
    for mask, b in zip(masks, transitions, strict=True):
        if mask.shape[1] > 1:
            both = mask[:, 1:, :, None] & mask[:, :-1, None, :]  # (N, T-1, S_next, S_prev)
            finite = finite & ~(both & ~(b > 0)).flatten(1).any(-1)
    return finite


def _mean_field_start(model, masks, log_likelihood, transitions):
    """The guide's support and starting logits, F x (N, T, S_f) each.

    Where a product of the posterior's marginal supports has finite F, that support, from
    uniform logits. Elsewhere structural zeros couple the factors or the steps, and the product
    would put mass on an impossible joint state or pair: the support is then that of a
    mean-field optimum found by coordinate ascent with exact logs from the most probable path
    (``mean_field_coordinate_ascent``), and the guide starts there. Mean field is zero-forcing:
    its optimum has finite F for every possible sequence, at most the most probable path's.
    """
    starts = [torch.zeros_like(m, dtype=model.dtype) for m in masks]
    coupled = ~_product_is_finite(masks, log_likelihood, transitions)
    if not coupled.any():
        return masks, starts
    index = coupled.nonzero()[:, 0]
    chosen = [b[index] for b in transitions]
    path = most_probable_path(log_likelihood[index], chosen, model.D)  # (n, T, F)
    start = [
        torch.nn.functional.one_hot(path[..., f], S).to(model.dtype)
        for f, S in enumerate(model.num_states)
    ]
    optimum, _, _ = mean_field_coordinate_ascent(log_likelihood[index], chosen, model.D, start)
    masks = [m.index_put((index,), q > 0) for m, q in zip(masks, optimum, strict=True)]
    starts = [
        s.index_put((index,), torch.log(q).clamp_min(LOG_ZERO))
        for s, q in zip(starts, optimum, strict=True)
    ]
    return masks, starts


def _mean_field_guide(masks: list[Tensor], batched: bool, starts: list[Tensor]):
    """q(s) = prod_t prod_f q(s_f,t), logits (N, T, S_f) from ``starts``, with masked entries
    at LOG_ZERO."""

    def guide(model, observations, actions, **_):
        logits = [
            torch.where(mask, pyro.param(f"q_logits_{f}", start), LOG_ZERO)
            for f, (mask, start) in enumerate(zip(masks, starts, strict=True))
        ]
        T = masks[0].shape[1]
        plate = pyro.plate("sequences", masks[0].shape[0], dim=-1) if batched else nullcontext()
        with plate:
            for t in pyro.markov(range(T)):
                for f, S in enumerate(model.num_states):
                    if S == 1:
                        continue
                    row = logits[f][:, t] if batched else logits[f][0, t]
                    pyro.sample(
                        state_site(f, t),
                        dist.Categorical(logits=row),
                        infer={"enumerate": "parallel"},
                    )

    return guide


def _prior_chain(model: GenerativeModel, transitions, N: int) -> tuple[Tensor, Tensor]:
    """The guide's starting point: the model's prior over paths, p(s_1) prod_t p(s_t+1 | s_t, u),
    as logits (N, K) and (N, T-1, K, K) (impossible entries at LOG_ZERO)."""
    log_initial = joint_log_initial(model.log_D)
    log_transitions = joint_log_transitions(transitions)
    return (
        log_initial.clamp_min(LOG_ZERO).expand(N, -1).clone(),
        log_transitions.clamp_min(LOG_ZERO).clone(),
    )


def _chain_conditionals(joint_logits: Tensor, num_states: tuple[int, ...]) -> list[Tensor]:
    """Chain-rule conditionals of a joint over factors.

    joint_logits : (..., K) over the flattened joint (factor 0 most significant).
    Returns F tensors (..., S_1, ..., S_f): unnormalised ln q(s_1..s_f), marginalised over the
    later factors; indexing the leading factors gives the logits of q(s_f | s_1..s_f-1).
    """
    joint = joint_logits.reshape(*joint_logits.shape[:-1], *num_states)
    F = len(num_states)
    return [
        torch.logsumexp(joint, tuple(range(-(F - f - 1), 0))) if f < F - 1 else joint
        for f in range(F)
    ]


def _structured_guide(
    initial_mask: Tensor, pair_mask: Tensor, batched: bool, start: tuple[Tensor, Tensor]
):
    """A Markov chain over the joint state, sampled factor by factor (chain rule); its logits
    are the parameters ``q_initial`` and ``q_transitions``, started at ``start``."""

    def guide(model, observations, actions, **_):
        init = torch.where(initial_mask, pyro.param("q_initial", start[0]), LOG_ZERO)  # (N, K)
        trans = torch.where(pair_mask, pyro.param("q_transitions", start[1]), LOG_ZERO)
        sample_chain(model, init, trans, batched)

    return guide


def sample_chain(model: GenerativeModel, init: Tensor, trans: Tensor, batched: bool) -> None:
    """The guide's sites ``state_site(f, t)`` of a Markov chain over the joint state, drawn
    factor by factor from the chain-rule conditionals (each enumerable in parallel): logits
    init (N, K) of q(s_1) and trans (N, T-1, K, K) ``[.., s_t, s_t+1]`` of q(s_t+1 | s_t)
    (entries at LOG_ZERO have probability 0). One sequence (``batched`` False) has N = 1 and
    no plate."""
    num_states = model.num_states
    N, T = init.shape[0], trans.shape[1] + 1
    strides = [math.prod(num_states[f + 1 :]) for f in range(len(num_states))]
    rows = torch.arange(N, device=model.device) if batched else torch.tensor(0)
    plate = pyro.plate("sequences", N, dim=-1) if batched else nullcontext()
    with plate:
        previous = None
        for t in pyro.markov(range(T)):
            if t == 0:
                conditionals = _chain_conditionals(init, num_states)  # (N, S_1..S_f)
                lead = (rows,)
            else:
                conditionals = _chain_conditionals(trans[:, t - 1], num_states)
                joint_previous = sum(s * k for s, k in zip(previous, strides, strict=True))
                lead = (rows, joint_previous)
            states = []
            for f, S in enumerate(num_states):
                if S == 1:
                    states.append(torch.zeros((), dtype=torch.int64, device=model.device))
                    continue
                logits = Vindex(conditionals[f])[(*lead, *states, slice(None))]
                states.append(
                    pyro.sample(
                        state_site(f, t),
                        dist.Categorical(logits=logits),
                        infer={"enumerate": "parallel"},
                    )
                )
            previous = states


def fit_guide(
    model: GenerativeModel,
    sequences: Sequences,
    method: str,
    settings: SVISettings,
    result,
    inputs: SchemeInputs,
):
    """Fit a guide by SVI. Returns (marginals F x (N, T, S_f), free energy (N,), Optimisation).

    ``result`` and ``inputs`` are the exact forward pass and the arrays it ran on (from
    ``pp_aif.inference.exact.run_forward_filter``: the posterior's support). The guides fit
    the Pyro program, whose A, B and D are the model's: ``inputs`` must hold those.
    """
    if inputs.own:
        raise ValueError(
            f"inference: the SVI guides ({method!r}) infer with the model's own A, B and D; "
            "agents that learn pA, pB or pD need 'exact', 'fpi', 'vmp' or 'mmp'"
        )
    transitions = list(inputs.transitions)
    if method not in GUIDES:
        raise ValueError(f"method: {method!r} is not one of {GUIDES}")
    observations, actions = sequences.observations, sequences.actions
    N, T = observations.shape[:2]
    K = math.prod(model.num_states)
    if all(S == 1 for S in model.num_states):  # nothing to infer: q is the one path
        return _certain(model, N, T, result)
    smoothed, state_support, pair_support, exact_chain = posterior_support(
        model, inputs, result, chain=True
    )
    marginal_support = [q > 0 for q in factor_marginals(smoothed, 2)]
    batched = N > 1
    starts = None
    if method == "mean_field":
        log_likelihood = inputs.log_likelihood
        marginal_support, starts = _mean_field_start(
            model, marginal_support, log_likelihood, transitions
        )
        guide = _mean_field_guide(marginal_support, batched, starts)
    else:
        guide = _structured_guide(
            state_support[:, 0],
            pair_support,
            batched,
            _chain_start(model, transitions, N, settings, exact_chain),
        )
    enumerate_guide = settings.elbo == "exact" or (
        settings.elbo == "auto" and K <= settings.max_enumerated_states
    )
    if not enumerate_guide:
        guide = pyro.poutine.infer_config(guide, lambda site: {})  # sample every guide site
    elbo = TraceEnum_ELBO(
        max_plate_nesting=1,
        num_particles=1 if enumerate_guide else settings.num_particles,
        vectorize_particles=not enumerate_guide,
        strict_enumeration_warning=False,
    )
    if not batched:
        observations, actions = observations[0], actions[0]
    optimiser = settings.optimiser
    if optimiser == "auto":
        optimiser = "lbfgs" if enumerate_guide else "adam"
    if optimiser == "lbfgs" and not enumerate_guide:
        raise ValueError("optimiser: 'lbfgs' needs the exact ELBO (elbo='exact'); use 'adam'")
    supports = (marginal_support, state_support, pair_support)
    if enumerate_guide and optimiser == "lbfgs" and settings.objective == "closed_form":
        if method == "mean_field":
            start = {f"q_logits_{f}": s for f, s in enumerate(starts) if model.num_states[f] > 1}
        else:
            initial, transition = _chain_start(model, transitions, N, settings, exact_chain)
            start = {"q_initial": initial, "q_transitions": transition}
        return _fit_closed_form(model, method, start, supports, sequences, transitions, settings)
    pyro.set_rng_seed(settings.seed)
    with pyro.get_param_store().scope():
        pyro.clear_param_store()
        arguments = (model, observations, actions)
        if optimiser == "lbfgs":
            losses, converged = _run_lbfgs(elbo, guide, arguments, settings, method)
        else:
            losses, converged = _run_adam(elbo, guide, arguments, settings, method)
        with torch.no_grad():
            store = pyro.get_param_store()
            marginals, free_energy = _read_guide(
                model, method, store, supports, sequences, transitions
            )
    record = Optimisation(
        iterations=len(losses),
        final=free_energy,
        converged=converged,
        trace=torch.tensor(losses, dtype=model.dtype),
    )
    if not converged:
        warnings.warn(
            f"infer_states(method={method!r}): {optimiser} did not converge in "
            f"{settings.num_steps} iterations (last change "
            f"{abs(losses[-1] - losses[-2]) if len(losses) > 1 else float('nan'):.3g} nats, "
            f"tolerance {settings.tolerance:g}); raise num_steps",
            ConvergenceWarning,
            stacklevel=3,
        )
    return marginals, free_energy, record


def _certain(model: GenerativeModel, N: int, T: int, result):
    """A model whose every factor has one state: q is that path, exact; F = -ln p(o)."""
    ones = torch.ones(N, T, 1, dtype=model.dtype, device=model.device)
    free_energy = -result.log_normalisers.sum(-1)
    record = Optimisation(
        iterations=0,
        final=free_energy,
        converged=True,
        trace=torch.zeros(0, dtype=model.dtype, device=model.device),
    )
    return [ones] * model.num_factors, free_energy, record


def _finite(loss: float, method: str) -> float:
    if not math.isfinite(loss):
        raise FloatingPointError(f"{method}: the free energy became {loss} during fitting")
    return loss


def _run_adam(elbo, guide, arguments, settings: SVISettings, method: str):
    """``pyro.infer.SVI`` with Adam. Returns (losses per step, converged)."""
    svi = SVI(pomdp, guide, pyro.optim.Adam({"lr": settings.learning_rate}), elbo)
    losses, stalled = [], 0
    for _ in range(settings.num_steps):
        loss = _finite(svi.step(*arguments), method)
        change = abs(losses[-1] - loss) if losses else math.inf
        losses.append(loss)
        stalled = stalled + 1 if change <= settings.tolerance * max(1.0, abs(loss)) else 0
        if stalled >= settings.patience:
            return losses, True
    return losses, False


def _run_lbfgs(elbo, guide, arguments, settings: SVISettings, method: str):
    """L-BFGS on the exact ELBO. Returns (losses per function evaluation, converged)."""
    elbo.differentiable_loss(pomdp, guide, *arguments)  # creates the parameters
    parameters = [p.unconstrained() for p in pyro.get_param_store().values()]
    optimiser = torch.optim.LBFGS(
        parameters,
        lr=1.0,
        max_iter=settings.num_steps,
        max_eval=settings.num_steps * 5 // 4 + 1,
        tolerance_grad=1e-10,
        tolerance_change=settings.tolerance,
        history_size=50,
        line_search_fn="strong_wolfe",
    )
    losses = []

    def closure():
        optimiser.zero_grad()
        loss = elbo.differentiable_loss(pomdp, guide, *arguments)
        losses.append(_finite(loss.item(), method))
        loss.backward()
        return loss

    optimiser.step(closure)
    state = optimiser.state[optimiser._params[0]]
    converged = (
        state["n_iter"] < settings.num_steps
        and state["func_evals"] < optimiser.defaults["max_eval"]
    )
    return losses, converged


def _read_guide(model, method, store, supports, sequences, transitions, log_likelihood=None):
    """Marginals and closed-form F (N,) of the guide whose parameters are ``store`` (Pyro's
    parameter store, or a dict of the same names; see ``pp_aif.ops.free_energy``)."""
    marginal_support, state_support, pair_support = supports
    N, T = sequences.observations.shape[:2]
    if log_likelihood is None:
        log_likelihood = observation_log_likelihood(model.log_A, sequences.observations)
    if method == "mean_field":
        marginals = [
            torch.softmax(torch.where(mask, store[f"q_logits_{f}"], LOG_ZERO), -1)
            if S > 1
            else torch.ones(N, T, 1, dtype=model.dtype, device=model.device)
            for f, (mask, S) in enumerate(zip(marginal_support, model.num_states, strict=True))
        ]
        value = mean_field_free_energy(marginals, log_likelihood, transitions, model.D)
        return marginals, value
    init = torch.where(state_support[:, 0], store["q_initial"], LOG_ZERO)
    trans = torch.where(pair_support, store["q_transitions"], LOG_ZERO) if T > 1 else None
    return chain_beliefs(model, init, trans, log_likelihood, transitions)


def chain_beliefs(
    model, init, trans, log_likelihood, transitions, log_transitions=None
) -> tuple[list[Tensor], Tensor]:
    """(marginals F x (N, T, S_f), closed-form F (N,)) of the chain guide whose logits are init
    (N, K) and trans (N, T-1, K, K) (None for T = 1); log_likelihood (N, T, S_1..S_F) and
    transitions F x (N, T-1, S_next, S_prev) are the sequences' (``SchemeInputs``);
    log_transitions, their ``joint_log_transitions``, is computed if not given."""
    N, T, K = init.shape[0], log_likelihood.shape[1], init.shape[-1]
    initial = torch.softmax(init, -1)
    if T > 1:
        conditionals = torch.softmax(trans, -1)
    else:
        conditionals = torch.zeros(N, 0, K, K, dtype=model.dtype, device=model.device)
    joint = chain_joint_marginals(initial, conditionals)  # (N, T, K)
    value = chain_free_energy(
        initial,
        conditionals,
        log_likelihood.reshape(N, T, K),
        joint_log_transitions(transitions) if log_transitions is None else log_transitions,
        joint_log_initial(model.log_D),
        joint,
    )
    return factor_marginals(joint.reshape(N, T, *model.num_states), 2), value


def _fit_closed_form(model, method, start, supports, sequences, transitions, settings):
    """L-BFGS on the guide's closed-form F, every sequence in one batch. After each ``round``
    of iterations a sequence whose F changed by at most ``tolerance`` nats over each of two
    rounds in a row (L-BFGS's own ``tolerance_change`` is per iteration; in a batch the line
    search is shared, and one round can stall a sequence short of its optimum), or whose
    gradient vanished (below 1e-10), has
    converged and leaves the batch; the others go on (L-BFGS keeps its history while the
    batch stays the same, and starts afresh on a smaller one), so that one slow
    sequence neither holds the others' answers nor costs them iterations. Returns (marginals,
    F (N,), Optimisation); warns (``ConvergenceWarning``) naming the sequences that did not
    converge in ``num_steps`` iterations. The trace is the batch's summed F at each evaluation.
    """
    N = sequences.observations.shape[0]
    log_likelihood = observation_log_likelihood(model.log_A, sequences.observations)
    values = {name: value.detach().clone() for name, value in start.items()}
    rows = torch.arange(N, device=model.device)

    def inputs_of(active):
        """_read_guide's arrays for the sequences ``active``: sliced once per batch."""
        chosen = sequences._replace(
            observations=sequences.observations[active], actions=sequences.actions[active]
        )
        parts = ([m[active] for m in supports[0]], supports[1][active], supports[2][active])
        return parts, chosen, [b[active] for b in transitions], log_likelihood[active]

    def free_energy(params, inputs):
        parts, chosen, chosen_transitions, chosen_likelihood = inputs
        return _read_guide(
            model, method, params, parts, chosen, chosen_transitions, chosen_likelihood
        )

    converged = torch.zeros(N, dtype=torch.bool, device=model.device)
    stalled = torch.zeros(N, dtype=torch.int64, device=model.device)  # rounds in a row
    with torch.no_grad():
        before = free_energy(values, inputs_of(rows))[1]
    trace, iterations, optimiser = [], 0, None
    while not bool(converged.all()) and iterations < settings.num_steps:
        if optimiser is None:  # (re)built for the sequences still running, else continued
            active = rows[~converged]
            inputs = inputs_of(active)
            params = {k: v[active].clone().requires_grad_(True) for k, v in values.items()}
            optimiser = torch.optim.LBFGS(
                list(params.values()),
                lr=1.0,
                max_iter=settings.round,
                tolerance_grad=1e-10,
                tolerance_change=settings.tolerance,
                history_size=50,
                line_search_fn="strong_wolfe",
            )
            counted = 0

            def closure(params=params, inputs=inputs, optimiser=optimiser):
                optimiser.zero_grad()
                loss = free_energy(params, inputs)[1].sum()
                trace.append(_finite(loss.item(), method))
                loss.backward()
                for value in params.values():  # L-BFGS views each gradient flat
                    # (none where F does not depend on it: a chain of one step has no transitions)
                    grad = value.grad
                    value.grad = torch.zeros_like(value) if grad is None else grad.contiguous()
                return loss

        optimiser.param_groups[0]["max_iter"] = min(settings.round, settings.num_steps - iterations)
        optimiser.param_groups[0]["max_eval"] = optimiser.param_groups[0]["max_iter"] * 5 // 4 + 1
        optimiser.step(closure)
        total = optimiser.state[optimiser._params[0]].get("n_iter", 0)
        iterations += max(1, total - counted)
        counted = total
        with torch.enable_grad():
            after = free_energy(params, inputs)[1]
            gradients = torch.autograd.grad(
                after.sum(), list(params.values()), allow_unused=True, materialize_grads=True
            )
        steepest = torch.stack(
            [g.flatten(1).abs().amax(1) for g in gradients if g[0].numel() > 0]
        ).amax(0)
        after = after.detach()
        change = (before[active] - after).abs()
        # over the whole round: stricter than L-BFGS's own rule, which is per iteration
        # and a small gradient: in a batch the line search is shared, and a sequence whose step
        # is cut short by the others' can stall for a round without being at its optimum
        stalled[active] = torch.where(change <= settings.tolerance, stalled[active] + 1, 0)
        settled = (stalled[active] >= 2) | (steepest <= 1e-10)
        for name, value in params.items():
            values[name][active] = value.detach()
        before[active] = after
        if bool(settled.any()):
            converged[active[settled]] = True
            optimiser = None  # the rest go on in a smaller batch
    with torch.no_grad():
        marginals, value = free_energy(values, inputs_of(rows))
    trace.append(float(value.sum()))
    record = Optimisation(
        iterations=iterations,
        final=value,
        converged=bool(converged.all()),
        trace=torch.tensor(trace, dtype=model.dtype),
    )
    if not record.converged:
        unsettled = (~converged).nonzero()[:, 0].tolist()
        warnings.warn(
            f"infer_states(method={method!r}): sequence(s) {unsettled[:10]}"
            + (" ..." if len(unsettled) > 10 else "")
            + f" did not converge in {settings.num_steps} iterations (L-BFGS on the closed-form "
            f"F, still changing by more than {settings.tolerance:g} nats a round of "
            f"{settings.round}); raise num_steps",
            ConvergenceWarning,
            stacklevel=3,
        )
    return marginals, value, record

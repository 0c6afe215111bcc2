"""``expected_free_energy``: score every policy from the current beliefs.

Dimension symbols: *batch belief batch, P policies, H horizon, F factors, M modalities.
The definitions of every term are in :mod:`pp_aif.ops.efe`; ``G`` is minimised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pyro
import torch
from pyro.infer import Predictive
from torch import Tensor

from pp_aif.errors import DataError
from pp_aif.ops.efe import EFETerms, expected_free_energy_terms, sampled_expected_free_energy_terms
from pp_aif.programs import policy_rollout, state_site
from pp_aif.spec import NORMALISATION_TOLERANCE, GenerativeModel, _check_policies
from pp_aif.validation import check_integer

__all__ = ["PolicyScores", "expected_free_energy", "policy_scores", "METHODS"]

METHODS = ("exact", "sampled")
#: Rollouts per policy of the sampled method, by default.
DEFAULT_NUM_SAMPLES = 1000


@dataclass(frozen=True)
class PolicyScores:
    """Expected free energy of each policy and its terms, in nats, summed over the horizon.

    Attributes (each (*batch, P))
    ----------
    G : risk + ambiguity = -(epistemic + pragmatic); minimised.
    risk : KL[q(o | pi) || prod_m p~_m(o_m)] over the joint outcome.
    ambiguity : E_q(s | pi) H[p(o | s)].
    epistemic : I(s; o | pi), the expected information gain about states.
    pragmatic : sum_m E_q(o_m | pi) ln p~_m(o_m).
    novelty : expected information gain about A and B from their Dirichlet counts (SPM's
        ``spm_wnorm`` form); 0 without counts. Not part of G: a policy posterior subtracts it.
    policies : int (P, H, F), the policies scored.
    method : how the terms were computed.
    stderr : EFETerms of (*batch, P) standard errors (method "sampled"), else None.
    """

    G: Tensor
    risk: Tensor
    ambiguity: Tensor
    epistemic: Tensor
    pragmatic: Tensor
    novelty: Tensor
    policies: Tensor
    method: str
    stderr: EFETerms | None = None


def _prepare_beliefs(model: GenerativeModel, beliefs) -> tuple[list[Tensor], tuple[int, ...]]:
    """F tensors (N, S_f) and the caller's batch shape, or a DataError."""
    if hasattr(beliefs, "marginals"):
        raise DataError(
            "beliefs: got a Beliefs result over a whole sequence; pass the marginals at one step, "
            "e.g. [q[..., t, :] for q in beliefs.marginals]"
        )
    if isinstance(beliefs, Tensor | np.ndarray) and model.num_factors == 1:
        beliefs = [beliefs]
    if not isinstance(beliefs, Sequence) or len(beliefs) != model.num_factors:
        raise DataError(
            f"beliefs: expected a list of {model.num_factors} arrays (one per factor), got "
            f"{type(beliefs).__name__}"
            + (f" of length {len(beliefs)}" if isinstance(beliefs, Sequence) else "")
        )
    tensors = []
    batch_shape = None
    for f, (q, S) in enumerate(zip(beliefs, model.num_states, strict=True)):
        q = torch.as_tensor(np.asarray(q) if not isinstance(q, Tensor) else q)
        q = q.to(dtype=model.dtype, device=model.device)
        if q.dim() < 1 or q.shape[-1] != S:
            raise DataError(
                f"beliefs[{f}]: shape {tuple(q.shape)}; expected ({S},) or (*batch, {S})"
            )
        if batch_shape is None:
            batch_shape = tuple(q.shape[:-1])
        elif tuple(q.shape[:-1]) != batch_shape:
            raise DataError(
                f"beliefs[{f}]: batch shape {tuple(q.shape[:-1])} differs from beliefs[0]'s "
                f"{batch_shape}"
            )
        if not torch.isfinite(q).all() or (q < 0).any():
            raise DataError(f"beliefs[{f}]: entries must be finite and non-negative")
        sums = q.sum(-1)
        if ((sums - 1).abs() > NORMALISATION_TOLERANCE).any():
            index = tuple(int(i) for i in ((sums - 1).abs() > NORMALISATION_TOLERANCE).nonzero()[0])
            raise DataError(
                f"beliefs[{f}]: the distribution at batch index {index} sums to "
                f"{sums[index].item():.6g}, not 1"
            )
        tensors.append(q.reshape(-1, S))
    return tensors, batch_shape


def _distinct_beliefs(
    states: list[Tensor], weights: Tensor | None = None
) -> tuple[list[Tensor], Tensor] | None:
    """The distinct beliefs of a batch and each belief's index among them, or None where there
    is nothing to share (every belief distinct, a batch of one, or a gradient to keep).

    Many agents often hold the same beliefs (in the T-maze, a few per step), and a policy's
    expected free energy depends on the agent only through them (when A, B and their counts
    are shared): each distinct belief is scored once. Rows are grouped by a key, O(N log N):
    a weighted sum of their entries' bits in integer arithmetic (exact, so equal rows get equal
    keys whatever the order of summation); the grouping is then checked entry by entry, so only
    equal beliefs share a score (keys that collide fall back to scoring every belief).
    """
    N = states[0].shape[0]
    if N < 2 or any(q.requires_grad for q in states) or torch.compiler.is_compiling():
        return None  # (compiled: the number of groups is data, not a static shape)
    rows = torch.cat(states, -1)  # (N, sum S_f)
    if weights is None:  # odd multipliers, wrapping around in int64
        weights = torch.arange(rows.shape[-1], device=rows.device) * 0x9E3779B97F4A7C + 0x3C6EF373
        weights = weights * 2 + 1
    if rows.element_size() not in (4, 8) or not rows.is_floating_point():
        return None
    bits = rows.contiguous().view(torch.int64 if rows.element_size() == 8 else torch.int32)
    keys, inverse = torch.unique((bits * weights).sum(-1), return_inverse=True)
    if keys.shape[0] == N:
        return None
    first = torch.empty(keys.shape[0], dtype=torch.int64, device=rows.device)
    first.scatter_(0, inverse, torch.arange(N, device=rows.device))  # a member of each group
    if not torch.equal(rows[first][inverse], rows):
        return None
    return [q[first] for q in states], inverse


def _per_belief(arrays, shapes, name: str, unit: str, batch_shape) -> list[Tensor] | None:
    """``arrays`` (one per belief, shaped (*batch, *shapes[i].shape)) flattened to (N, ...);
    None stays None (the model's own arrays)."""
    if arrays is None:
        return None
    if len(arrays) != len(shapes):
        raise DataError(f"{name}: {len(arrays)} arrays for {len(shapes)} {unit}")
    N = int(np.prod(batch_shape, dtype=np.int64))
    flat = []
    for i, (array, like) in enumerate(zip(arrays, shapes, strict=True)):
        array = torch.as_tensor(array, dtype=like.dtype, device=like.device)
        if tuple(array.shape) != (*batch_shape, *like.shape):
            raise DataError(
                f"{name}[{i}]: shape {tuple(array.shape)}; expected "
                f"{(*batch_shape, *like.shape)}, one array per belief"
            )
        flat.append(array.reshape(N, *like.shape))
    return flat


def log_preferences(model: GenerativeModel, time: int, horizon: int) -> list[Tensor]:
    """ln p~_m = log_softmax(C_m) at the absolute times time+1..time+H: M tensors (H, O_m)."""
    result = []
    for m, c in enumerate(model.C):
        if c.dim() == 1:
            result.append(torch.log_softmax(c, 0).expand(horizon, -1))
            continue
        last = time + horizon
        if time < 0 or last >= c.shape[1]:
            raise ValueError(
                f"C[{m}]: has preferences for times 0..{c.shape[1] - 1}, but policies of "
                f"{horizon} steps from time {time} predict outcomes up to time {last}"
            )
        result.append(torch.log_softmax(c[:, time + 1 : last + 1], 0).T)
    return result


def expected_free_energy(
    model: GenerativeModel,
    beliefs,
    policies=None,
    *,
    time: int = 0,
    method: Literal["exact", "sampled"] = "exact",
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int | None = None,
    A=None,
    pA=None,
    B=None,
    pB=None,
) -> PolicyScores:
    """Score every policy by its expected free energy G (minimised) and G's terms.

    Parameters
    ----------
    model : GenerativeModel
    beliefs : list of F arrays (S_f,) or (*batch, S_f)
        The current beliefs q(s_f), e.g. the filtered marginals at the present step.
    policies : int (P, H, F), optional
        Defaults to ``model.policies``.
    time : int
        The present step; a time-varying ``C[m]`` (O_m, T) is read at the absolute times
        ``time + 1 .. time + H`` of the predicted outcomes.
    method : {"exact", "sampled"}
        ``"exact"``: batched tensor contractions over all policies at once.
        ``"sampled"``: the Pyro program :func:`pp_aif.programs.policy_rollout` is run forward
        ``num_samples`` times per policy with ``pyro.infer.Predictive``, and each term is
        estimated from the sampled states, Rao-Blackwellised over outcomes, with a standard
        error in ``.stderr`` (see :func:`pp_aif.ops.efe.sampled_expected_free_energy_terms`).
    num_samples : int
        Rollouts per policy (and per belief in the batch) for ``"sampled"``.
    seed : int, optional
        Seeds Pyro's random number generator before sampling.
    A, pA : M arrays (*batch, O_m, S_1..S_F), optional
        One likelihood (and its Dirichlet counts) per belief in the batch, e.g. each agent's
        learned A; default: the model's ``A`` and ``pA``, shared.
    B, pB : F arrays (*batch, S_f, S_f, U_f), optional
        One transition array (and its counts) per belief; default: the model's, shared.

    Returns
    -------
    PolicyScores, each term (*batch, P)
    """
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {METHODS}")
    time = check_integer("time", time, minimum=0, meaning="the present step")
    num_samples = check_integer("num_samples", num_samples, minimum=1)
    states, batch_shape = _prepare_beliefs(model, beliefs)
    policies = (
        model.policies
        if policies is None
        else _check_policies(policies, model.num_controls).to(model.device)
    )
    A = _per_belief(A, model.A, "A", "modalities", batch_shape)
    pA = _per_belief(pA, model.A, "pA", "modalities", batch_shape)
    B = _per_belief(B, model.B, "B", "factors", batch_shape)
    pB = _per_belief(pB, model.B, "pB", "factors", batch_shape)
    scores = policy_scores(
        model, states, policies, time=time, method=method, num_samples=num_samples, seed=seed,
        A=A, pA=pA, B=B, pB=pB,
    )  # fmt: skip
    if batch_shape == (states[0].shape[0],):
        return scores
    return replace(
        scores,
        **{name: getattr(scores, name).reshape(*batch_shape, -1) for name in EFETerms._fields},
        stderr=None
        if scores.stderr is None
        else EFETerms(*(value.reshape(*batch_shape, -1) for value in scores.stderr)),
    )


def policy_scores(
    model: GenerativeModel,
    states: list[Tensor],
    policies: Tensor,
    *,
    time: int = 0,
    method: str = "exact",
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int | None = None,
    A: list[Tensor] | None = None,
    pA: list[Tensor] | None = None,
    B: list[Tensor] | None = None,
    pB: list[Tensor] | None = None,
) -> PolicyScores:
    """``expected_free_energy`` without checking its inputs, for callers that made them (the
    agent, at every step): beliefs F x (N, S_f) that are distributions, valid policies (P, H,
    F) on the model's device, and A, pA (N, O_m, S..), B, pB (N, S_f, S_f, U_f) per belief or
    None for the model's own. Returns PolicyScores of (N, P)."""
    P, H, _ = policies.shape
    likelihood = list(model.A) if A is None else A
    counts = None if pA is None and model.pA is None else list(pA or model.pA)
    transitions = model.transition_by_action if B is None else [b.permute(0, 3, 1, 2) for b in B]
    transition_counts = None if pB is None and model.pB is None else list(pB or model.pB)
    preferences = log_preferences(model, time, H)
    stderr = None
    arrays = (likelihood, transitions, preferences, policies)
    dirichlet = {"pA": counts, "pB": transition_counts}
    if method == "exact":
        shared = A is None and pA is None and B is None and pB is None
        distinct = _distinct_beliefs(states) if shared else None
        if distinct is None:
            terms = expected_free_energy_terms(states, *arrays, **dirichlet)
        else:  # each distinct belief once, then handed to the beliefs equal to it
            representatives, inverse = distinct
            terms = expected_free_energy_terms(representatives, *arrays, **dirichlet)
            terms = EFETerms(*(value[inverse] for value in terms))
    else:
        if num_samples < 2:
            raise ValueError(
                f"num_samples: needs at least 2 for a standard error, got {num_samples}"
            )
        if seed is not None:
            pyro.set_rng_seed(seed)
        draws = Predictive(policy_rollout, num_samples=num_samples, parallel=True)(
            model,
            states,
            policies,
            None if A is None else likelihood,
            None if B is None else transitions,
        )
        samples = [
            [draws[state_site(f, tau)] for f in range(model.num_factors)] for tau in range(H + 1)
        ]
        terms, errors = sampled_expected_free_energy_terms(samples, *arrays, **dirichlet)
        stderr = errors
    return PolicyScores(**terms._asdict(), policies=policies, method=method, stderr=stderr)

"""The pD recursion in numpy with its adjoint written out (``pp_aif.fitting.count_history``)
equals the same recursion in torch operations: values, gradients and second derivatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pp_aif.fitting.count_history import (
    _CountHistory,
    count_history,
    numpy_adjoint,
    numpy_history,
    single_factor_tangents,
    torch_count_history,
)
from tests.common import assert_close


def _case(seed: int, num_states, B=3, N=2, K=7):
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape):
        return torch.rand(*shape, dtype=torch.float64, generator=generator)

    eta = uniform(B, N).requires_grad_(True)
    omega = (0.3 * uniform(B, N)).requires_grad_(True)
    kappa = (0.5 + uniform(B, N)).requires_grad_(True)
    evidence = uniform(N, K, *num_states)
    kept = (uniform(N, K) > 0.3).to(torch.float64)  # absent trials teach nothing
    priors = [0.2 + uniform(s) for s in num_states]
    priors[0][0] = 0.0  # a structural zero stays one
    return (eta, omega, kappa), evidence, priors, kept


@pytest.mark.parametrize("num_states", [(3,), (2, 3)])
def test_the_numpy_recursion_is_the_torch_one(num_states, monkeypatch):
    parameters, evidence, priors, kept = _case(0, num_states)
    calls = []
    monkeypatch.setattr(
        _CountHistory, "forward", staticmethod(_recorded(_CountHistory.forward, calls))
    )
    fast = count_history(*parameters, evidence, priors, kept)
    assert calls, "the numpy recursion did not run"
    slow = torch_count_history(*parameters, evidence, priors, kept)
    assert_close(fast, slow)
    assert all(bool((h[..., 0] == 0).all()) for h in fast[:1])  # the zero stays
    weights = [torch.rand(h.shape, dtype=torch.float64) for h in fast]

    def weighted(history):
        return sum((h * w).sum() for h, w in zip(history, weights, strict=True))

    got = torch.autograd.grad(weighted(fast), parameters)
    want = torch.autograd.grad(weighted(slow), parameters)
    assert_close(got, want)
    assert all(bool((g.abs() > 0).all()) for g in got)


def _recorded(forward, calls):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize("num_states", [(3,), (2, 3)])
def test_first_and_second_derivatives_pass_gradcheck(num_states):
    parameters, evidence, priors, kept = _case(1, num_states, B=2, N=1, K=4)

    def history(*values):
        return tuple(count_history(*values, evidence, priors, kept))

    assert torch.autograd.gradcheck(history, parameters)
    assert torch.autograd.gradgradcheck(history, parameters)


def test_evidence_that_depends_on_the_parameters_takes_the_torch_recursion():
    """(zeta sharpens A, so the evidence has a gradient of its own and a batch axis)"""
    parameters, evidence, priors, kept = _case(2, (3,))
    sharp = evidence.expand(3, *evidence.shape).clone().requires_grad_(True)
    history = count_history(*parameters, sharp, priors, kept)
    (gradient,) = torch.autograd.grad(history[0].sum(), sharp)
    assert torch.isfinite(gradient).all() and (gradient.abs() > 0).any()
    assert_close(history, torch_count_history(*parameters, sharp, priors, kept))


@pytest.mark.parametrize("forgets", [False, True])
@pytest.mark.parametrize("gaps", [False, True])
@pytest.mark.parametrize("wanted", [(True, False, False), (True, True, True), (False, True, True)])
def test_forward_mode_tangents_are_the_adjoints_gradients(forgets, gaps, wanted):
    """``single_factor_tangents`` (the fused likelihood's recursion) against the adjoint: the
    same history and the same gradient, with and without forgetting and absent trials."""
    parameters, evidence, priors, kept = _case(3, (3,))
    eta, omega, kappa = (x.detach().numpy() for x in parameters)
    if not forgets:
        omega = np.zeros_like(omega)
    kept = kept.numpy() if gaps else np.ones(kept.shape)
    lam, prior = evidence.numpy(), priors[0].numpy()
    history, tangents = single_factor_tangents(
        eta, omega, kappa, np.ascontiguousarray(np.moveaxis(lam, 1, 0)), kept, prior, wanted
    )
    (expected,) = numpy_history(eta, omega, kappa, lam, kept, [prior])
    assert_close(history, expected)
    weights = np.random.default_rng(0).random(history.shape)
    adjoint = numpy_adjoint([expected], [weights], eta, omega, lam, kept, [prior])
    found = iter(tangents)
    for flag, gradient in zip(wanted, adjoint, strict=True):
        if flag:
            assert_close((weights * next(found)).sum((-1, -2)), gradient)
    assert next(found, None) is None


def test_game_rows_round_trip_and_their_adjoints(rng):
    """``GameRows``: games of 3, 2 and 4 trials as rows; join undoes split; scatter and
    sum_games are the adjoints of join and repeat (<join x, y> = <x, scatter y>); the padding
    teaches nothing."""
    from pp_aif.fitting.count_history import GameRows

    starts = np.array([1, 0, 0, 1, 0, 1, 0, 0, 0], dtype=bool)
    games = GameRows(starts)
    assert (games.G, games.Lg) == (3, 4)
    x = rng.normal(size=(2, 5, 9, 3))  # (B, N, K, S)
    rows = games.split(x, -2)
    assert rows.shape == (2, 15, 4, 3)
    assert_close(games.join(rows, -2), x)
    assert_close(games.join(games.split(torch.as_tensor(x), -2), -2), torch.as_tensor(x))
    u, y = rng.normal(size=rows.shape), rng.normal(size=x.shape)
    assert_close(np.sum(games.join(u, -2) * y), np.sum(u * games.scatter(y, -2)))
    p, q = rng.normal(size=(2, 5)), rng.normal(size=(2, 15))
    assert_close(np.sum(games.repeat(p) * q), np.sum(p * games.sum_games(q)))
    kept = games.kept(np.ones((5, 9)))
    assert kept.sum() == 5 * 9 and kept[:3].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1] * 4]
    with pytest.raises(ValueError, match="trial 0 must start a game"):
        GameRows(np.array([0, 1, 0], dtype=bool))

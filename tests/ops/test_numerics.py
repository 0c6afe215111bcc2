"""The log-space helpers: 0 ln 0 = 0 with finite (zero) gradients at structural zeros."""

from __future__ import annotations

import numpy as np
import torch

from pp_aif.ops.numerics import entropy, xlogy
from tests.common import assert_close


def test_xlogy_values_and_gradients_at_zero():
    x = torch.tensor([0.0, 0.5, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.0, 0.25, 3.0, 0.0], dtype=torch.float64, requires_grad=True)
    value = xlogy(x, y)
    assert value[0] == 0 and value[2] == 0 and value[3] == -np.inf
    assert_close(value[1], 0.5 * np.log(0.25))
    gx, gy = torch.autograd.grad(value[:3].sum(), (x, y))
    assert_close(gx[:3], torch.tensor([0.0, np.log(0.25), 0.0], dtype=torch.float64))
    assert_close(gy[:3], torch.tensor([0.0, 0.5 / 0.25, 0.0], dtype=torch.float64))


def test_entropy_equals_the_definition_and_passes_gradcheck(rng):
    q = torch.as_tensor(rng.dirichlet(np.ones(6), size=(3, 4)))
    q[0, 1, 2] = 0.0
    q = q / q.sum(-1, keepdim=True)
    expected = -np.where(q.numpy() > 0, q.numpy() * np.log(np.where(q.numpy() > 0, q, 1)), 0)
    assert_close(entropy(q), expected.sum(-1))
    logits = torch.tensor(rng.normal(size=(2, 5)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: entropy(torch.softmax(z, -1)), (logits,))
    leaf = q.clone().requires_grad_()
    (grad,) = torch.autograd.grad(entropy(leaf).sum(), leaf)
    assert grad[0, 1, 2] == 0 and torch.isfinite(grad).all()
    assert_close(grad[1, 0], -(torch.log(q[1, 0]) + 1))


def test_weighted_log_with_minus_infinity_keeps_gradients_finite():
    """A preference of -inf on an outcome that cannot occur: value and gradient stay finite."""
    from pp_aif.ops.efe import xlogy_weighted

    q = torch.tensor([[0.3, 0.7, 0.0]], dtype=torch.float64, requires_grad=True)
    log_values = torch.tensor([0.0, -1.0, -np.inf], dtype=torch.float64)
    value = xlogy_weighted(q, log_values)
    assert_close(value, torch.tensor([-0.7], dtype=torch.float64))
    (grad,) = torch.autograd.grad(value.sum(), q)
    assert torch.isfinite(grad).all()
    assert_close(grad, torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64))


def test_categorical_draws_as_torch_multinomial_does():
    """The same numbers as ``torch.multinomial(p, 1)`` from the same generator, and frequencies
    within 4 standard errors of p; a category of probability 0 is never drawn."""
    from pp_aif.ops.numerics import categorical

    p = torch.tensor([[0.2, 0.0, 0.5, 0.3], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    p = p.repeat(5000, 1)
    ours = categorical(p, torch.Generator().manual_seed(3))
    theirs = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(3))[:, 0]
    assert torch.equal(ours, theirs)
    first = torch.bincount(ours[0::2], minlength=4).double() / 5000
    se = (p[0] * (1 - p[0]) / 5000).sqrt()
    assert ((first - p[0]).abs() <= 4 * se + 1e-12).all()
    assert first[1] == 0 and (ours[1::2] == 2).all()

"""contract_factors and outer against SPM's spm_dot and spm_cross (tests/data/spm)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

from pp_aif.ops import contract_factors, outer
from tests.common import assert_close


def load(path):
    return scipy.io.loadmat(path)


def factor_list(cell):
    """A MATLAB cell (or a plain vector, for one factor) as a list of float64 tensors."""
    if cell.dtype == object:
        return [torch.as_tensor(np.asarray(x, dtype=np.float64).ravel()) for x in cell.ravel()]
    return [torch.as_tensor(np.asarray(cell, dtype=np.float64).ravel())]


@pytest.mark.parametrize("case", "abcde")
def test_spm_dot(spm_reference, case):
    m = load(spm_reference / f"dot_{case}.mat")
    A = torch.as_tensor(m["A"], dtype=torch.float64)
    states = factor_list(m["s"])
    o = torch.as_tensor(m["o"], dtype=torch.float64).ravel()
    # result1: A contracted with the outcome vector over axis 0 (spm_dot on the outcome axis)
    result1 = torch.einsum("o...,o->...", A, o)
    assert_close(result1, m["result1"].reshape(result1.shape))
    # result2: A contracted with every factor -> p(o)
    assert_close(contract_factors(A, states), m["result2"].ravel())
    # result3: every factor but the first -> (O, S_1)
    assert_close(contract_factors(A, states, skip=[0]), m["result3"])


def test_spm_dot_is_batched(spm_reference):
    m = load(spm_reference / "dot_e.mat")
    A = torch.as_tensor(m["A"], dtype=torch.float64)
    states = factor_list(m["s"])
    batched = [torch.stack([q, q.flip(0)]) for q in states]
    result = contract_factors(A, batched)
    assert result.shape == (2, 3)
    assert_close(result[0], m["result2"].ravel())
    assert_close(result[1], contract_factors(A, [q.flip(0) for q in states]))


@pytest.mark.parametrize("case", "abcde")
def test_spm_cross(spm_reference, case):
    m = load(spm_reference / f"cross_{case}.mat")

    def t(x):
        return torch.as_tensor(np.asarray(x, dtype=np.float64))

    if case in "ab":
        vectors = factor_list(m["s"])
        expected = m["result1"]
        result = outer(*vectors)
        # MATLAB keeps a trailing singleton axis for one vector
        assert_close(result, expected.reshape(result.shape))
        assert_close(outer(*vectors), m["result2"].reshape(result.shape))
    elif case == "c":
        result = outer(t(m["random_vec"]).ravel(), t(m["random_matrix"]))
        assert_close(result, m["result1"])
    elif case == "d":
        result = outer(t(m["random_vec"]).ravel(), *factor_list(m["s"]))
        assert_close(result, m["result1"])
    else:
        result = outer(*factor_list(m["s1"]), *factor_list(m["s2"]))
        assert_close(result, m["result1"])


def test_outer_with_batch_axes():
    x = torch.rand(4, 2, dtype=torch.float64)
    y = torch.rand(4, 3, 5, dtype=torch.float64)
    result = outer(x, y, batch_dims=1)
    assert result.shape == (4, 2, 3, 5)
    for n in range(4):
        assert_close(result[n], outer(x[n], y[n]))

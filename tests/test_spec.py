"""GenerativeModel: conversions, defaults, and one test per kind of ModelError."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif import GenerativeModel, ModelError
from tests.common import assert_close, random_arrays


@pytest.fixture
def arrays(rng):
    return random_arrays(rng, (2, 3), (3, 2), (2, 1))


def build(arrays, **overrides):
    kwargs = {"A": arrays.A, "B": arrays.B, "D": arrays.D}
    kwargs.update(overrides)
    return pp_aif.GenerativeModel(**kwargs)


def raises(match):
    return pytest.raises(ModelError, match=re.escape(match))


# ---- conversions and defaults


def test_model_error_is_a_value_error():
    assert issubclass(ModelError, ValueError)
    assert issubclass(pp_aif.DataError, ValueError)


def test_single_arrays_and_lists_are_the_same_model(rng):
    arrays = random_arrays(rng, (3,), (4,), (2,))
    single = pp_aif.GenerativeModel(arrays.A[0], arrays.B[0], D=arrays.D[0])
    listed = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D)
    assert single.num_states == listed.num_states == (3,)
    assert_close(single.A[0], listed.A[0])
    assert_close(single.B[0], listed.B[0])


def test_numpy_object_arrays_as_pymdp_makes_them(arrays):
    A = np.empty(2, dtype=object)
    A[0], A[1] = arrays.A
    model = build(arrays, A=A)
    assert model.num_outcomes == (3, 2)


def test_dtype_follows_inputs(arrays):
    assert build(arrays).dtype == torch.float64
    as32 = build(
        arrays,
        A=[a.astype(np.float32) for a in arrays.A],
        B=[torch.as_tensor(b, dtype=torch.float32) for b in arrays.B],
        D=[d.astype(np.float32) for d in arrays.D],
    )
    assert as32.dtype == torch.float32
    mixed = build(arrays, A=[a.astype(np.float32) for a in arrays.A])
    assert mixed.dtype == torch.float64  # promoted to the widest input


def test_integer_identity_arrays_are_accepted():
    model = pp_aif.GenerativeModel(np.eye(3, dtype=int), np.eye(3, dtype=int)[:, :, None])
    assert model.A[0].is_floating_point()


def test_defaults(arrays):
    model = build(arrays, D=None)
    assert_close(model.D[0], np.full(2, 0.5))
    assert_close(model.D[1], np.full(3, 1 / 3))
    assert_close(model.C[0], np.zeros(3))
    assert model.policies.shape == (2, 1, 2)  # every one-step combination of U = (2, 1)
    assert_close(model.E, np.full(2, 0.5))
    assert model.pA is None


def test_time_varying_preferences_and_custom_policies(arrays):
    policies = pp_aif.construct_policies([2, 1], horizon=3)
    assert policies.shape == (8, 3, 2)
    model = build(arrays, C=[np.zeros((3, 5)), np.zeros(2)], policies=policies, E=np.full(8, 1 / 8))
    assert model.C[0].shape == (3, 5)


def test_structural_zeros_are_legal(arrays):
    A = np.zeros((3, 2, 3))
    A[0] = 1.0
    build(arrays, A=[A, arrays.A[1]], pA=[A * 4 + (A == 0) * 0, np.ones((2, 2, 3))])


def test_layouts_for_pyro(arrays):
    model = build(arrays)
    assert model.log_likelihood_last[0].shape == (2, 3, 3)
    assert model.log_transition_last[0].shape == (2, 2, 2)
    assert_close(model.log_transition_last[0][1, 0], np.log(arrays.B[0][:, 0, 1]))
    assert_close(model.log_likelihood_last[1][1, 2], np.log(arrays.A[1][:, 1, 2]))


# ---- one test per kind of ModelError


def test_empty_list(arrays):
    with raises("A: empty list"):
        build(arrays, A=[])


def test_non_numeric_array(arrays):
    with raises("A[0]: is not numeric"):
        build(arrays, A=[np.array([["a", "b"]]), arrays.A[1]])


def test_ragged_array(arrays):
    with raises("B[0]: cannot be read as a numeric array"):
        build(arrays, B=[[[1.0], [1.0, 0.0]], arrays.B[1]])


def test_complex_array(arrays):
    with raises("D[1]: is not numeric (dtype complex128)"):
        build(arrays, D=[arrays.D[0], arrays.D[1].astype(complex)])
    with raises("D[1]: is complex"):
        build(arrays, D=[arrays.D[0], torch.as_tensor(arrays.D[1]).to(torch.complex128)])


def test_column_of_A_not_summing_to_one(arrays):
    A1 = arrays.A[1].copy()
    A1[:, 1, 0] *= 1.3
    with raises("A[1]: column (1, 0) sums to 1.3, not 1"):
        build(arrays, A=[arrays.A[0], A1])


def test_column_of_B_not_summing_to_one(arrays):
    B0 = arrays.B[0].copy()
    B0[:, 1, 1] = 0.0
    with raises("B[0]: column (1, 1) sums to 0, not 1"):
        build(arrays, B=[B0, arrays.B[1]])


def test_tolerance_is_one_in_a_million(arrays):
    A0 = arrays.A[0].copy()
    A0[0, 0, 0] += 5e-7
    build(arrays, A=[A0, arrays.A[1]])  # within 1e-6
    A0[0, 0, 0] += 1e-6
    with raises("A[0]: column (0, 0) sums to"):
        build(arrays, A=[A0, arrays.A[1]])


def test_negative_entry(arrays):
    B1 = arrays.B[1].copy()
    B1[:, 2, 0] = [0.6, -0.1, 0.5]  # sums to 1, one entry negative
    with raises("B[1]: entry (1, 2, 0) is -0.1, negative"):
        build(arrays, B=[arrays.B[0], B1])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_entry(arrays, bad):
    A0 = arrays.A[0].copy()
    A0[2, 1, 1] = bad
    with raises("A[0]: entry (2, 1, 1) is"):
        build(arrays, A=[A0, arrays.A[1]])


def test_wrong_rank_of_A(arrays):
    with raises("A[0]: has 2 axes (3, 2); expected 3 (O, S_1, ..., S_F)"):
        build(arrays, A=[arrays.A[0][:, :, 0], arrays.A[1]])


def test_wrong_rank_of_B(arrays):
    with raises("B[1]: has 2 axes (3, 3); expected 3 axes"):
        build(arrays, B=[arrays.B[0], arrays.B[1][:, :, 0]])


def test_state_counts_disagree_between_A_and_B(arrays):
    with raises("A[1]: state axes (2, 2) disagree with the numbers of states (2, 3) given by B"):
        build(arrays, A=[arrays.A[0], arrays.A[1][:, :, :2] / arrays.A[1][:, :, :2].sum(0)])


def test_B_not_square(arrays):
    with raises("B[0]: shape (3, 2, 2) is not square"):
        build(arrays, B=[np.full((3, 2, 2), 1 / 3), arrays.B[1]])


def test_D_of_wrong_length(arrays):
    with raises("D[1]: shape (2,); expected (3,)"):
        build(arrays, D=[arrays.D[0], np.array([0.5, 0.5])])


def test_D_count_disagrees_with_B(arrays):
    with raises("D: has 1 arrays; B has 2 factors"):
        build(arrays, D=[arrays.D[0]])


def test_D_not_summing_to_one(arrays):
    with raises("D[0]: sums to 1.5, not 1"):
        build(arrays, D=[np.array([1.0, 0.5]), arrays.D[1]])


def test_C_of_wrong_length(arrays):
    with raises("C[0]: shape (2,); expected (3,) or (3, T)"):
        build(arrays, C=[np.zeros(2), np.zeros(2)])


def test_C_count_disagrees_with_A(arrays):
    with raises("C: has 1 arrays; A has 2 modalities"):
        build(arrays, C=[np.zeros(3)])


def test_C_nan(arrays):
    with raises("C[1]: entry (0,) is nan"):
        build(arrays, C=[np.zeros(3), np.array([np.nan, 0.0])])


def test_E_of_wrong_length(arrays):
    with raises("E: shape (3,); expected (2,), one prior probability per policy (2 policies)"):
        build(arrays, E=np.full(3, 1 / 3))


def test_E_not_summing_to_one(arrays):
    with raises("E: sums to 2, not 1"):
        build(arrays, E=np.ones(2))


def test_policies_out_of_range(arrays):
    with raises("policies: policy 0, step 0, factor 1 has control 1; factor 1 has controls 0..0"):
        build(arrays, policies=np.array([[[0, 1]]]))


def test_policies_wrong_shape(arrays):
    with raises("policies: shape (2, 2); expected (P, H, 2)"):
        build(arrays, policies=np.zeros((2, 2), dtype=int))


@pytest.mark.parametrize("name, like", [("pA", "A"), ("pB", "B"), ("pD", "D")])
def test_dirichlet_of_wrong_shape(arrays, name, like):
    good = [np.ones_like(x) for x in getattr(arrays, like)]
    good[0] = np.ones((*good[0].shape[:-1], good[0].shape[-1] + 1))
    with raises(f"{name}[0]: shape {good[0].shape}; expected"):
        build(arrays, **{name: good})


@pytest.mark.parametrize("name, like", [("pA", "A"), ("pB", "B"), ("pD", "D")])
def test_dirichlet_not_positive(arrays, name, like):
    negative = [np.ones_like(x) for x in getattr(arrays, like)]
    negative[0].flat[0] = -1.0
    with raises(f"{name}[0]: entry {(0,) * negative[0].ndim} is -1, negative"):
        build(arrays, **{name: negative})
    zero_column = [np.ones_like(x) for x in getattr(arrays, like)]
    zero_column[0][...,] = 0.0
    with raises(f"{name}[0]: column"):
        build(arrays, **{name: zero_column})


def test_dirichlet_count_disagrees(arrays):
    with raises("pA: has 1 arrays; A has 2"):
        build(arrays, pA=[np.ones_like(arrays.A[0])])


# ---- arguments that are not arrays of real numbers (issue #15, item 8)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("A", None, "A: is None; expected an array (O_m, S_1, ..., S_F) per modality"),
        ("B", None, "B: is None; expected an array (S_f, S_f, U_f) per factor"),
        ("A", 1.0, "A: is a scalar (1.0), not an array"),
        ("B", np.float64(1.0), "B: is a scalar (1.0), not an array"),
        ("D", torch.tensor(0.5), "D: is a scalar (0.5), not an array"),
        ("E", 1.0, "E: is a scalar (1.0), not an array; expected an array (P,)"),
        ("policies", 0, "policies: is a scalar (0), not an array"),
        ("A", "A.npy", "A: is a string ('A.npy'), not numbers"),
        ("C", "flat", "C: is a string ('flat'), not numbers"),
        ("policies", "all", "policies: is a string ('all'), not numbers"),
        ("A", {"colour": np.eye(2)}, "A: is a dict; expected an array (O_m, S_1, ..., S_F)"),
        ("E", {}, "E: is a dict; expected an array (P,)"),
        ("policies", {}, "policies: is a dict; expected an integer array (P, H, F)"),
        ("B", {1, 2}, "B: is a set; expected an array (S_f, S_f, U_f) per factor"),
        ("D", (d for d in range(2)), "D: is a generator; expected an array (S_f,)"),
    ],
)
def test_arguments_that_are_not_arrays(arrays, name, value, message):
    with raises(message):
        build(arrays, **{name: value})


def test_items_of_a_list_that_are_not_arrays(arrays):
    with raises("A[1]: is None; expected an array (O_m, S_1, ..., S_F) per modality"):
        build(arrays, A=[arrays.A[0], None])
    with raises("B[0]: is a scalar (1), not an array; expected an array (S_f, S_f, U_f)"):
        build(arrays, B=[1, arrays.B[1]])
    with raises("pD[1]: is a dict; expected an array shaped like D[f] per factor"):
        build(arrays, pD=[np.ones(2), {}])
    with raises("D: is a list of numbers; a list is read as one array per factor"):
        pp_aif.GenerativeModel(arrays.A[0][:, :, 0], arrays.B[0], D=[0.5, 0.5])


def test_numpy_object_array_of_numbers(arrays):
    with raises("A: is a numpy object array (2, 2) holding numbers"):
        build(arrays, A=np.eye(2).astype(object))


@pytest.mark.parametrize("name", ["A", "B", "D", "pA"])
def test_boolean_arrays(arrays, name):
    like = getattr(arrays, name.removeprefix("p"))
    flags = [np.ones_like(x, dtype=bool) for x in like]
    with raises(f"{name}[0]: is boolean (dtype bool); give an array of real numbers"):
        build(arrays, **{name: flags})
    as_tensors = [torch.as_tensor(x) for x in flags]
    with raises(f"{name}[0]: is boolean (dtype torch.bool)"):
        build(arrays, **{name: as_tensors})


def test_boolean_policy_prior(arrays):
    with raises("E: is boolean (dtype bool)"):
        build(arrays, E=np.array([True, False]))


def test_object_dtype_entries(arrays):
    with raises("C[0]: is not numeric (dtype object)"):
        build(arrays, C=[np.array([0.0, None, 1.0]), np.zeros(2)])


def test_ragged_policies(arrays):
    with raises("policies: cannot be read as an integer array"):
        build(arrays, policies=[[[0, 0]], [[0, 0], [1, 0]]])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("name", ["C", "E", "pB", "D"])
def test_non_finite_entries_everywhere(arrays, name, bad):
    if name == "C":
        value, label = [np.array([0.0, bad, 0.0]), np.zeros(2)], "C[0]: entry (1,) is"
    elif name == "E":
        value, label = np.array([bad, 0.5]), "E: entry (0,) is"
    elif name == "pB":
        value = [np.ones_like(b) for b in arrays.B]
        value[1][2, 1, 0] = bad
        label = "pB[1]: entry (2, 1, 0) is"
    else:
        value, label = [arrays.D[0], np.array([bad, 0.5, 0.5])], "D[1]: entry (0,) is"
    with raises(f"{label} {bad}; every entry must be finite"):
        build(arrays, **{name: value})


def test_negative_policy_prior(arrays):
    with raises("E: entry (1,) is -0.5, negative"):
        build(arrays, E=np.array([1.5, -0.5]))


def test_the_model_is_immutable_and_keeps_what_it_derives():
    """Setting or deleting an attribute is refused; derived values (the policies of a depth)
    are made once and kept on the model, not in module globals; with_step_policies copies."""
    model = GenerativeModel([np.eye(2)], [np.stack([np.eye(2), np.eye(2)[::-1]], -1)])
    with pytest.raises(AttributeError, match="immutable: cannot set 'A'"):
        model.A = model.A
    with pytest.raises(AttributeError, match="immutable: cannot set 'step_policies'"):
        model.step_policies = None
    with pytest.raises(AttributeError, match="immutable: cannot delete 'B'"):
        del model.B
    policies, log_prior = model.policies_of_depth(3)
    assert policies.shape == (8, 3, 1) and abs(float(log_prior.exp().sum()) - 1) < 1e-12
    assert model.policies_of_depth(3)[0] is policies  # made once
    sets = (None, (torch.tensor([[[1]]]), torch.tensor([1.0], dtype=torch.float64)))
    carrying = model.with_step_policies(sets)
    assert model.step_policies is None and carrying.step_policies is sets
    assert carrying.policies_of_depth(3)[0] is policies  # derived values shared
    with pytest.raises(ModelError, match=r"step_policies\[1\]: E sums to"):
        model.with_step_policies((None, (torch.tensor([[[1]]]), torch.tensor([0.5]))))
    moved = carrying.to(dtype=torch.float32)
    assert moved.step_policies[1][1].dtype == torch.float32
    assert torch.equal(pickle.loads(pickle.dumps(carrying)).step_policies[1][0], sets[1][0])

"""The expected free energy of a fixed A and B as linear maps of the joint belief
(``pp_aif.ops.efe.linear_efe``): the kernel's terms, and their gradients, from maps built once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.ops.contractions import outer
from pp_aif.ops.efe import expected_free_energy_terms, linear_efe, linear_efe_terms
from pp_aif.planning.efe import log_preferences
from tests.common import assert_close, random_columns


def _case(rng, num_states, num_outcomes, num_controls, H=3, P=12, zero_fraction=0.3):
    def tensor(x):
        return torch.tensor(x, dtype=torch.float64)

    A = [tensor(random_columns(rng, (o, *num_states), zero_fraction)) for o in num_outcomes]
    B = [
        tensor(random_columns(rng, (s, s, u), zero_fraction)).permute(2, 0, 1)
        for s, u in zip(num_states, num_controls, strict=True)
    ]
    preferences = [torch.log_softmax(tensor(rng.normal(size=(H, o))), -1) for o in num_outcomes]
    columns = [rng.integers(0, u, size=(P // 2, H)) for u in num_controls]
    policies = torch.tensor(np.stack(columns, -1))
    policies = torch.cat([policies, policies[:, :1].expand(-1, H, -1).clone()])  # shared starts
    policies[P // 2 :, 1:] = (policies[P // 2 :, 1:] + 1) % torch.tensor(num_controls)
    beliefs = [
        tensor(random_columns(rng, (s, 7), zero_fraction)).T.contiguous().requires_grad_(True)
        for s in num_states
    ]
    return A, B, preferences, policies, beliefs


@pytest.mark.parametrize(
    "num_states, num_outcomes, num_controls",
    [((4,), (3,), (2,)), ((3, 2), (2, 3), (2, 3)), ((2, 2, 3), (4, 2), (2, 1, 2))],
)
def test_the_maps_give_the_kernels_terms_and_gradients(rng, num_states, num_outcomes, num_controls):
    A, B, preferences, policies, beliefs = _case(rng, num_states, num_outcomes, num_controls)
    maps = linear_efe(A, B, preferences, policies)
    assert maps is not None
    joint = outer(*beliefs, batch_dims=1).flatten(1)
    fast = linear_efe_terms(joint, maps)
    kernel = expected_free_energy_terms(beliefs, A, B, preferences, policies)
    weights = torch.rand(*kernel.G.shape, dtype=torch.float64)
    for name in ("G", "risk", "ambiguity", "epistemic", "pragmatic", "novelty"):
        value, expected = getattr(fast, name), getattr(kernel, name)
        assert_close(value, expected, msg=name)
        if name == "novelty":
            continue
        got = torch.autograd.grad((value * weights).sum(), beliefs, retain_graph=True)
        want = torch.autograd.grad((expected * weights).sum(), beliefs, retain_graph=True)
        assert_close(got, want, msg=f"d{name}/dq")


def test_the_tmazes_maps_keep_only_the_outcomes_it_can_reach():
    """A cue or a location that no state can produce under a prefix is no row of the maps."""
    model = pp_aif.load_task("tmaze").model
    maps = linear_efe(
        model.A, model.transition_by_action, log_preferences(model, 0, 2), model.policies
    )
    prefixes, outcomes = 4 + 16, 4 * 3 * 2
    assert maps.outcomes.shape[0] < prefixes * outcomes
    assert maps.grouping.shape == (maps.outcomes.shape[0], 16)
    # each policy gathers the rows of its two prefixes, each a distribution over outcomes
    beliefs = [d[None].to(model.dtype) for d in model.D]
    joint = outer(*beliefs, batch_dims=1).flatten(1)
    mass = (joint @ maps.outcomes.T) @ maps.grouping
    assert_close(mass, torch.full((1, 16), 2.0, dtype=model.dtype))


def test_a_forbidden_outcome_or_a_large_map_leaves_it_to_the_kernel(rng):
    A, B, preferences, policies, _ = _case(rng, (3,), (2,), (2,))
    forbidden = [p.clone() for p in preferences]
    forbidden[0][1, 0] = -torch.inf
    assert linear_efe(A, B, forbidden, policies) is None
    assert linear_efe(A, B, preferences, policies, limit=10) is None
    per_belief = [a.expand(7, *a.shape) for a in A]
    assert linear_efe(per_belief, B, preferences, policies) is None

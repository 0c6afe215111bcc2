"""Policies that share a start share its predicted states: the prefix tree, and the expected
free energy computed on it equal to that of every policy on its own."""

from __future__ import annotations

import torch

import pp_aif
from pp_aif.ops.efe import expected_free_energy_terms, policy_prefix_tree
from pp_aif.planning.efe import log_preferences
from tests.common import assert_close


def test_the_tmazes_policies_share_their_four_first_moves():
    policies = pp_aif.load_task("tmaze").model.policies  # (16, 2, 2)
    first, second = policy_prefix_tree(policies)
    assert first.actions.shape == (4, 2) and first.inverse.shape == (16,)
    assert second.inverse is None  # the distinct policies themselves, in order
    assert torch.equal(second.actions, policies[:, 1])
    # each policy's first move is its prefix's, and its parent is that prefix
    assert torch.equal(first.actions[first.inverse], policies[:, 0])
    assert torch.equal(second.parent, first.inverse)
    # another set of the same shape is not served from the cache
    swapped = policies.flip(0)
    assert torch.equal(policy_prefix_tree(swapped)[1].actions, swapped[:, 1])


def test_shared_prefixes_give_each_policy_its_own_terms():
    """Every policy alone (a batch of one policy each) against all at once, with a duplicate."""
    task = pp_aif.load_task("tmaze")
    model = task.model
    policies = torch.cat([model.policies, model.policies[3:5]])  # two policies twice
    beliefs = [torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]), torch.tensor([[0.3, 0.7]] * 2)]
    beliefs = [b.to(model.dtype) for b in beliefs]
    preferences = log_preferences(model, 0, 2)  # (H, O_m) per modality, from t = 0
    together = expected_free_energy_terms(
        beliefs, model.A, model.transition_by_action, preferences, policies
    )
    for p in range(policies.shape[0]):
        alone = expected_free_energy_terms(
            beliefs, model.A, model.transition_by_action, preferences, policies[p : p + 1]
        )
        for name in ("G", "risk", "ambiguity", "epistemic", "pragmatic"):
            assert_close(getattr(together, name)[:, p], getattr(alone, name)[:, 0])


def test_what_depends_on_A_alone_is_remembered_but_never_stale():
    """The joint likelihood and H[p(o | s)] are kept per A: an in-place change of A is seen,
    and an A that requires a gradient gets a fresh graph at every call."""
    model = pp_aif.load_task("tmaze").model
    beliefs = [d[None].to(model.dtype) for d in model.D]
    preferences = log_preferences(model, 0, 2)

    def G(A):
        return expected_free_energy_terms(
            beliefs, A, model.transition_by_action, preferences, model.policies
        ).G

    A = [a.clone() for a in model.A]
    before = G(A)
    assert_close(G(A), before)  # remembered: the same answer
    other = [a.clone() for a in model.A]
    other[1] = 0.5 * other[1] + 0.5 / other[1].shape[0]  # a blurred likelihood, same shape
    A[1].copy_(other[1])  # changed in place
    assert_close(G(A), G(other))
    assert not torch.allclose(G(other), before)
    sharp = [a.clone().requires_grad_(True) for a in model.A]
    for _ in range(2):  # each call builds its own graph
        (gradient,) = torch.autograd.grad(G(sharp).sum(), [sharp[1]])
        assert torch.isfinite(gradient).all()


def test_large_transitions_are_applied_per_control_not_gathered(monkeypatch, rng):
    """Above the gather limit each control's B is applied to the prefixes that use it: the
    same terms (and gradients), per-agent B included, without a (U, S, S) copy."""
    import numpy as np

    import pp_aif.ops.efe as efe

    S, U, N = 6, 3, 2
    A = [torch.as_tensor(rng.dirichlet(np.ones(S), size=S).T)]
    B = torch.as_tensor(np.stack([rng.dirichlet(np.ones(S), size=S).T for _ in range(U)], -1))
    per_agent = B.permute(2, 0, 1)[None].expand(N, -1, -1, -1) ** 1.5  # (N, U, S', S)
    per_agent = per_agent / per_agent.sum(-2, keepdim=True)
    policies = pp_aif.construct_policies([U], 3)
    preferences = [torch.log_softmax(torch.as_tensor(rng.normal(size=(3, S))), -1)]
    beliefs = torch.as_tensor(rng.dirichlet(np.ones(S), size=N)).requires_grad_(True)

    def terms():
        out = expected_free_energy_terms([beliefs], A, [per_agent], preferences, policies)
        (gradient,) = torch.autograd.grad(out.G.sum(), [beliefs])
        return [out.G, out.epistemic, out.pragmatic, gradient]

    gathered = terms()
    monkeypatch.setattr(efe, "_GATHER_LIMIT", 0)
    assert_close(terms(), gathered)

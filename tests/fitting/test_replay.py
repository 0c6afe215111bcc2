"""The replay likelihood is the agent itself replaying each person's trials: equal to the closed
form where that applies (values and gradients, 1e-10), equal to one agent at a time replaying
one subject (the batch over draws and subjects, absent trials, counts carried between trials),
with gradients that pass gradcheck; and it fits agents the closed form cannot (a pA learner)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pp_aif
from pp_aif.agent import AgentSettings, initial_state, learn_between_trials, step
from pp_aif.data import long_format
from pp_aif.fitting import BehaviourLikelihood
from pp_aif.fitting.likelihood import sharpened_likelihood
from pp_aif.fitting.replay import REPLAY_PARAMETERS, ReplayLikelihood, likelihood_for
from pp_aif.planning import Lesions
from tests.common import assert_close, random_arrays, sample_sequence

N, K, T = 3, 3, 3
THETA = {
    "gamma": [0.5, 2.0, 4.0],
    "alpha": [1.0, 4.0, 16.0],
    "preference": [0.3, 1.0, 2.5],
    "learning_rate": [0.5, 1.0, 3.0],
    "forgetting": [0.05, 0.1, 0.4],  # inside (0, 1): gradcheck steps both ways
    "concentration": [0.5, 1.0, 4.0],
    "likelihood_precision": [0.5, 1.0, 2.5],
}
#: what a learner of pA can fit: zeta sharpens a fixed A, and its A is its counts
WITHOUT_ZETA = tuple(name for name in REPLAY_PARAMETERS if name != "likelihood_precision")


def _data(rng, arrays, count=N * K):
    pairs = [sample_sequence(rng, arrays, T) for _ in range(count)]
    observations = torch.as_tensor(np.stack([o for o, _ in pairs])).reshape(N, -1, T, len(arrays.A))
    actions = torch.as_tensor(np.stack([a for _, a in pairs])).reshape(N, -1, T - 1, len(arrays.B))
    return observations, actions


@pytest.fixture
def pD_case(rng):
    """Two factors, pD learned (the closed form's case), a structural zero in D."""
    arrays = random_arrays(rng, (3, 2), (3, 2), (3, 2), zero_fraction=0.2)
    arrays.D[0] = np.array([0.6, 0.4, 0.0])
    model = pp_aif.GenerativeModel(
        arrays.A,
        arrays.B,
        C=[rng.normal(size=3), rng.normal(size=(2, T))],
        D=arrays.D,
        pD=[np.array([1.5, 1.0, 0.0]), np.array([2.0, 3.0])],
        policies=pp_aif.construct_policies((3, 2), 2),
    )
    return (model, *_data(rng, arrays))


@pytest.fixture
def learner_case(rng):
    """One factor whose A and B are both learned (pA, pB), which the closed form refuses."""
    arrays = random_arrays(rng, (3,), (3, 2), (2,), zero_fraction=0.2)
    model = pp_aif.GenerativeModel(
        arrays.A,
        arrays.B,
        C=[rng.normal(size=3), rng.normal(size=2)],
        D=arrays.D,
        pA=[4.0 * a for a in arrays.A],
        pB=[2.0 * b for b in arrays.B],
        policies=pp_aif.construct_policies((2,), 2),
    )
    return (model, *_data(rng, arrays))


def _theta(names, batch=()):
    return {
        name: torch.tensor(THETA[name], dtype=torch.float64).expand(*batch, N).clone()
        for name in names
    }


def test_replay_equals_the_closed_form_with_gradients(pD_case):
    model, observations, actions = pD_case
    present = torch.ones(N, K, dtype=torch.bool)
    present[1, 1] = False  # subject 1 misses a trial: no choices, nothing learned
    names = REPLAY_PARAMETERS
    closed = BehaviourLikelihood(model, AgentSettings(), observations, actions, names, present)
    replay = ReplayLikelihood(model, AgentSettings(), observations, actions, names, present)
    inputs = {name: value.requires_grad_() for name, value in _theta(names).items()}
    fast, slow = closed(inputs), replay(inputs)
    assert_close(slow[present], fast[present])
    for name, a, b in zip(
        names,
        torch.autograd.grad(fast[present].sum(), list(inputs.values())),
        torch.autograd.grad(slow[present].sum(), list(inputs.values())),
        strict=True,
    ):
        assert_close(b, a, msg=name)
    assert likelihood_for(model, AgentSettings(), observations, actions, names).__class__ is (
        BehaviourLikelihood
    )


@pytest.mark.parametrize("planner", ["open_loop", "sophisticated"])
def test_the_replay_is_exact_where_action_probabilities_underflow(planner):
    """SPM's T-maze agents (alpha = 512) choose with probabilities that underflow to 0 for the
    actions not taken. The replay works in log space: its likelihood and gradients are finite
    and, for open-loop agents, equal to the closed form's (which always worked in log space).
    Before, ln p = -inf and the gradients were NaN (a sophisticated fit by MAP then failed)."""
    task = pp_aif.load_task("tmaze")
    record = pp_aif.simulate(task, 2, 5, seed=3)  # alpha = 512
    data = pp_aif.BehaviourData.read(long_format(record, task), task)
    settings = dataclasses.replace(task.settings, planner=planner)
    names = ("alpha", "learning_rate")
    args = (task.model, settings, data.observations, data.actions, names, data.present)
    replay = ReplayLikelihood(*args)
    for alpha in (4.0, 512.0):
        theta = {
            "alpha": torch.full((2,), alpha, dtype=torch.float64, requires_grad=True),
            "learning_rate": torch.full((2,), 0.7, dtype=torch.float64, requires_grad=True),
        }
        value = replay(theta)
        gradients = torch.autograd.grad(value.sum(), list(theta.values()))
        assert torch.isfinite(value).all() and all(torch.isfinite(g).all() for g in gradients)
        if planner == "open_loop":
            closed = BehaviourLikelihood(*args)
            assert_close(value, closed(theta), msg=f"alpha {alpha}")
            expected = torch.autograd.grad(closed(theta).sum(), list(theta.values()))
            for name, a, b in zip(names, gradients, expected, strict=True):
                assert_close(a, b, msg=f"{name}, alpha {alpha}")
    # at alpha = 512 some action's probability is below e^-745: 0 in float64
    with torch.no_grad():
        logs = [p for p in replay.log_probabilities(theta) if p is not None]
    smallest = min(float(p[torch.isfinite(p)].min()) for p in logs)
    assert smallest < -745


def _one_at_a_time(model, settings, theta, observations, actions, present, starts=None):
    """One agent replaying one subject's trials, the counts carried by hand (and put back to
    their first values at the trials ``starts`` marks): (N, K, T-1)."""
    out = torch.zeros(N, K, T - 1, dtype=torch.float64)
    for n in range(N):
        value = {name: float(v[n]) for name, v in theta.items()}
        mine = dataclasses.replace(
            settings,
            policy_precision=value.get("gamma", settings.policy_precision),
            action_precision=value.get("alpha", settings.action_precision),
            preference_scale=value.get("preference", settings.preference_scale),
            learning_rate=value.get("learning_rate", settings.learning_rate),
            forgetting=value.get("forgetting", settings.forgetting),
        )
        kappa = value.get("concentration", 1.0)
        own_A = None
        if "likelihood_precision" in value:
            own_A = [a[None] for a in sharpened_likelihood(model.A, value["likelihood_precision"])]
        pA = None if model.pA is None else [kappa * p[None] for p in model.pA]
        pB = None if model.pB is None else [kappa * p[None] for p in model.pB]
        pD = None if model.pD is None else [kappa * p[None] for p in model.pD]
        first = (pA, pB, pD)
        for k in range(K):
            if starts is not None and starts[k]:
                pA, pB, pD = first
            if not present[n, k]:
                continue
            state = initial_state(model, 1, pA=pA, pB=pB, pD=pD, A=own_A)
            for t in range(T):
                action = actions[n, k, t][None] if t < T - 1 else None
                state, result = step(
                    model, mine, state, observations[n, k, t][None], num_steps=T, action=action
                )
                if action is not None:
                    for f, p in enumerate(result.action_probabilities):
                        out[n, k, t] += torch.log(p[0, action[0, f]])
            pA, pD, pB = learn_between_trials(
                model, mine, state, observations[n, k][None], actions[n, k][None]
            )
    return out


@pytest.mark.parametrize("inference", ["exact", "fpi", "vmp", "mmp"])
def test_replay_of_a_pA_pB_learner_is_one_agent_at_a_time(learner_case, inference):
    model, observations, actions = learner_case
    settings = AgentSettings(inference=inference)
    present = torch.ones(N, K, dtype=torch.bool)
    present[0, 0] = present[2, 2] = False
    names = WITHOUT_ZETA
    replay = likelihood_for(model, settings, observations, actions, names, present)
    assert isinstance(replay, ReplayLikelihood)
    theta = _theta(names, batch=(2,))  # two draws of the same values: the batch on the left
    value = replay(theta)
    assert value.shape == (2, N, K, T - 1)
    expected = _one_at_a_time(model, settings, _theta(names), observations, actions, present)
    for draw in range(2):
        assert_close(value[draw][present], expected[present])


def test_replay_passes_gradcheck(learner_case):
    model, observations, actions = learner_case
    names = WITHOUT_ZETA
    replay = ReplayLikelihood(model, AgentSettings(), observations, actions, names)
    inputs = tuple(torch.tensor(THETA[n], dtype=torch.float64, requires_grad=True) for n in names)

    def total(*values):
        return replay(dict(zip(names, values, strict=True))).sum((-1, -2))

    assert torch.autograd.gradcheck(total, inputs)


def test_what_the_replay_cannot_follow_is_refused(learner_case):
    model, observations, actions = learner_case
    with pytest.raises(ValueError, match=r"efe_method='sampled' makes every policy score"):
        ReplayLikelihood(model, AgentSettings(efe_method="sampled"), observations, actions)
    with pytest.raises(ValueError, match=r"\(zeta\) sharpens a fixed A, but this agent learns pA"):
        ReplayLikelihood(
            model, AgentSettings(), observations, actions, ("alpha", "likelihood_precision")
        )
    plain = pp_aif.GenerativeModel(model.A, model.B, C=model.C, D=model.D, policies=model.policies)
    with pytest.raises(ValueError, match=r"\['learning_rate'\] shape learning, but the model"):
        ReplayLikelihood(plain, AgentSettings(), observations, actions, ("learning_rate",))


def test_a_draw_out_of_range_has_likelihood_zero(learner_case):
    model, observations, actions = learner_case
    replay = ReplayLikelihood(model, AgentSettings(), observations, actions, ("alpha",))
    value = replay({"alpha": torch.tensor([2.0, float("inf"), -1.0], dtype=torch.float64)})
    assert torch.isfinite(value[0]).all()
    assert (value[1:] == -torch.inf).all()


def test_the_bandit_pA_learner_is_fitted():
    """The project's own bandit (pA learned) could not be fitted: now MAP finds a learning rate
    and action precision for simulated people, through the replay."""
    task = pp_aif.load_task("bandit")
    people = dataclasses.replace(task.settings, action_precision=3.0, learning_rate=1.0)
    record = pp_aif.simulate(task, 2, 8, seed=3, settings=people)
    data = pp_aif.BehaviourData.read(long_format(record, task), task)
    fit = pp_aif.fit(task, data, ["alpha", "learning_rate"], method="map", steps=150, seed=0)
    for name in ("alpha", "learning_rate"):
        values = fit.posterior[name].values
        assert values.shape[-1] == 2 and np.isfinite(values).all()
    pointwise = fit.log_likelihood["actions"].values  # per subject and trial, for LOO
    assert pointwise.shape[-2:] == (2, 8) and np.isfinite(pointwise).all()


@settings(max_examples=12)
@given(
    seed=st.integers(0, 2**16),
    states=st.sampled_from([(2,), (3,), (2, 2)]),
    inference=st.sampled_from(["exact", "fpi", "vmp", "mmp"]),
    learned=st.sets(st.sampled_from(["pA", "pB", "pD"]), min_size=1),
    novelty=st.booleans(),
)
def test_replay_is_the_agent_on_random_models(seed, states, inference, learned, novelty):
    """Random models, schemes and learning settings: the batched replay (two draws) equals one
    agent at a time, and its gradient reaches every parameter (finite, and nonzero somewhere)."""
    rng = np.random.default_rng(seed)
    controls = (2,) + (1,) * (len(states) - 1)
    arrays = random_arrays(rng, states, (3, 2), controls, zero_fraction=0.2)
    counts = {
        "pA": [2.0 * a + (a > 0) for a in arrays.A] if "pA" in learned else None,
        "pB": [b + (b > 0) for b in arrays.B] if "pB" in learned else None,
        "pD": [3.0 * d + (d > 0) for d in arrays.D] if "pD" in learned else None,
    }
    model = pp_aif.GenerativeModel(
        arrays.A,
        arrays.B,
        C=[rng.normal(size=3), rng.normal(size=2)],
        D=arrays.D,
        policies=pp_aif.construct_policies(controls, 2),
        **counts,
    )
    observations, actions = _data(rng, arrays)
    settings = AgentSettings(inference=inference, lesions=Lesions(novelty=novelty))
    present = torch.ones(N, K, dtype=torch.bool)
    present[rng.integers(N), rng.integers(K)] = False
    names = WITHOUT_ZETA if "pA" in learned else REPLAY_PARAMETERS
    replay = ReplayLikelihood(model, settings, observations, actions, names, present)
    theta = _theta(names, batch=(2,))
    for value in theta.values():
        value.requires_grad_()
    value = replay(theta)
    expected = _one_at_a_time(
        model, settings, {n: v[0].detach() for n, v in theta.items()}, observations, actions,
        present,
    )  # fmt: skip
    for draw in range(2):
        assert_close(value[draw][present], expected[present])
    grads = torch.autograd.grad(value[:, present].sum(), list(theta.values()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert any((g != 0).any() for g in grads)


@pytest.mark.parametrize("inference", ["fpi", "mmp"])
def test_the_likelihood_precision_is_fitted_through_the_replay(pD_case, inference):
    """zeta for agents the closed form does not cover (here: message passing): each agent of
    the batch infers and plans with its own A^zeta, equal to one agent at a time, and zeta's
    gradient is that of the closed form where both apply (exact inference, at zeta's values)."""
    model, observations, actions = pD_case
    settings = AgentSettings(inference=inference)
    present = torch.ones(N, K, dtype=torch.bool)
    names = ("alpha", "likelihood_precision")
    replay = likelihood_for(model, settings, observations, actions, names, present)
    assert isinstance(replay, ReplayLikelihood)
    theta = _theta(names, batch=(2,))
    value = replay(theta)
    expected = _one_at_a_time(model, settings, _theta(names), observations, actions, present)
    for draw in range(2):
        assert_close(value[draw], expected)
    zeta = _theta(names)["likelihood_precision"].requires_grad_()
    grads = []
    for likelihood in (
        BehaviourLikelihood(model, AgentSettings(), observations, actions, names),
        ReplayLikelihood(model, AgentSettings(), observations, actions, names),
    ):
        total = likelihood({"alpha": _theta(names)["alpha"], "likelihood_precision": zeta}).sum()
        grads.append(torch.autograd.grad(total, zeta)[0])
    assert_close(grads[1], grads[0])
    assert (grads[0] != 0).any()


def test_simulated_subjects_each_have_their_own_likelihood_precision():
    """simulate_subjects with one zeta per agent: agent n behaves as an agent of the model
    with A^zeta_n (the world keeps its own A), not one shared A."""
    from pp_aif.fitting.predictive import simulate_subjects

    task = pp_aif.load_task("tmaze")
    zeta = torch.tensor([0.3, 1.0, 3.0], dtype=torch.float64)
    together = simulate_subjects(task, {"likelihood_precision": zeta}, 3)
    q_pi = together["policy_posterior"].values[:, 0, 0]  # (agent, policy): step 0 of trial 0
    for n in range(3):
        A = sharpened_likelihood(task.model.A, float(zeta[n]))
        own = initial_state(task.model, 1, A=[a[None] for a in A])
        first = torch.as_tensor(together["observation"].values[n, 0, 0])[None]
        _, result = step(task.model, task.settings, own, first, num_steps=task.trial_length)
        P = result.policy_posterior.shape[-1]
        assert_close(q_pi[n, :P], result.policy_posterior[0].numpy(), msg=f"agent {n}")
    assert not np.allclose(q_pi[0], q_pi[2])  # zeta changes the plan: a test that can fail
    with pytest.raises(ValueError, match=r"sharpens a fixed A, but this model's agents learn"):
        simulate_subjects(pp_aif.load_task("bandit"), {"likelihood_precision": zeta}, 2)


def test_an_agent_that_infers_by_an_svi_guide_is_fitted_through_the_replay(rng):
    """The guides too: the structured guide contains the exact posterior, so its agent's
    likelihood and gradient are the exact agent's, up to the tolerance at which SVI stops."""
    arrays = random_arrays(rng, (3,), (3,), (2,))
    model = pp_aif.GenerativeModel(
        arrays.A,
        arrays.B,
        C=[rng.normal(size=3)],
        D=arrays.D,
        policies=pp_aif.construct_policies((2,), 2),
    )
    pairs = [sample_sequence(rng, arrays, T) for _ in range(2)]
    observations = torch.as_tensor(np.stack([o for o, _ in pairs]))[:, None]  # (2, 1, T, 1)
    actions = torch.as_tensor(np.stack([a for _, a in pairs]))[:, None]
    names = ("gamma", "alpha")
    values = []
    for inference in ("exact", "structured"):
        theta = {
            "gamma": torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True),
            "alpha": torch.tensor([1.0, 4.0], dtype=torch.float64),
        }
        settings = AgentSettings(inference=inference)
        replay = likelihood_for(model, settings, observations, actions, names)
        assert isinstance(replay, ReplayLikelihood if inference != "exact" else object)
        value = replay(theta)
        values.append((value, torch.autograd.grad(value.sum(), theta["gamma"])[0]))
    (exact, exact_grad), (guide, guide_grad) = values
    assert_close(guide, exact, atol=1e-5, reason="SVI (L-BFGS) stops at its own tolerance")
    assert_close(guide_grad, exact_grad, atol=1e-5, reason="SVI stops at its own tolerance")


@pytest.mark.parametrize("learned", ["pA", "pB", "pD"])
def test_the_replay_starts_each_game_afresh(rng, learned):
    """Where the task starts new games (``Task.restarts``), the replay puts each agent's counts
    back to their first values there, as one agent replaying by hand does; the trials of a
    later game then differ from the same replay in one game."""
    arrays = random_arrays(rng, (3,), (3, 2), (2,), zero_fraction=0.2)
    counts = {"pA": None, "pB": None, "pD": None}
    counts[learned] = [
        2.0 * p + (p > 0) for p in {"pA": arrays.A, "pB": arrays.B, "pD": arrays.D}[learned]
    ]
    model = pp_aif.GenerativeModel(
        arrays.A,
        arrays.B,
        C=[rng.normal(size=3), rng.normal(size=2)],
        D=arrays.D,
        policies=pp_aif.construct_policies((2,), 2),
        **counts,
    )
    observations, actions = _data(rng, arrays)
    present = torch.ones(N, K, dtype=torch.bool)
    present[0, 1] = False
    starts = torch.tensor([True, False, True])  # games: trials 0-1, trial 2
    names = WITHOUT_ZETA
    settings = AgentSettings()
    replay = ReplayLikelihood(model, settings, observations, actions, names, present, starts)
    theta = _theta(names, batch=(2,))
    value = replay(theta)
    expected = _one_at_a_time(
        model, settings, _theta(names), observations, actions, present, starts
    )
    for draw in range(2):
        assert_close(value[draw][present], expected[present])
    one_game = ReplayLikelihood(model, settings, observations, actions, names, present)(theta)
    assert_close(value[:, :, :2], one_game[:, :, :2])  # the first game is the same
    assert (value[:, :, 2] - one_game[:, :, 2]).abs().max() > 1e-6  # the second starts afresh
    with pytest.raises(ValueError, match=r"starts: expected bool \(3,\)"):
        ReplayLikelihood(model, settings, observations, actions, names, present, starts[:2])

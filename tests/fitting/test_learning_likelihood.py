"""The likelihood of agents that learn pD, of the preference scale and of the likelihood
precision, equals the agent itself
replaying the person's trials (with ``learn_between_trials`` between them, and a model whose C
is scaled), and its gradients reach every parameter (gradcheck)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.agent import AgentSettings, initial_state, learn_between_trials, step
from pp_aif.errors import DataError
from pp_aif.fitting import (
    PARAMETERS,
    BehaviourLikelihood,
    initial_state_evidence,
    learned_initial_beliefs,
)
from pp_aif.planning import Lesions
from tests.common import assert_close, random_arrays, sample_sequence

N, K, T = 3, 4, 3
THETA = {
    "gamma": [0.5, 2.0, 4.0],
    "alpha": [1.0, 4.0, 16.0],
    "preference": [0.3, 1.0, 2.5],
    "learning_rate": [0.5, 1.0, 3.0],
    "forgetting": [0.0, 0.1, 0.4],
    "concentration": [0.5, 1.0, 4.0],
    "likelihood_precision": [0.5, 1.0, 3.0],
}


def _model(arrays, C, pD, policies, zeta=1.0):
    """The agent's model; zeta sharpens A column by column (A^zeta normalised, numpy)."""
    A = [a**zeta / (a**zeta).sum(0, keepdims=True) for a in arrays.A]
    return pp_aif.GenerativeModel(A, arrays.B, C=C, D=arrays.D, pD=pD, policies=policies)


@pytest.fixture
def case(rng):
    """Two factors; the first has a pD with one structural zero, the second a positive one."""
    return _pD_case(rng, second_D=None, second_pD=np.array([2.0, 3.0]))


def _pD_case(rng, second_D, second_pD):
    """``case``, with the second factor's D (None: random) and pD given."""
    arrays = random_arrays(rng, (3, 2), (3, 2), (3, 2), zero_fraction=0.2)
    arrays.D[0] = np.array([0.6, 0.4, 0.0])
    if second_D is not None:
        arrays.D[1] = second_D
    pD = [np.array([1.5, 1.0, 0.0]), second_pD]
    C = [rng.normal(size=3), rng.normal(size=(2, T))]
    model = _model(arrays, C, pD, pp_aif.construct_policies((3, 2), 2))
    pairs = [sample_sequence(rng, arrays, T) for _ in range(N * K)]
    observations = torch.as_tensor(np.stack([o for o, _ in pairs])).reshape(N, K, T, -1)
    actions = torch.as_tensor(np.stack([a for _, a in pairs])).reshape(N, K, T - 1, -1)
    return arrays, C, pD, model, observations, actions


def replayed(arrays, C, pD, policies, theta_n, observations, actions, present, lesions):
    """ln p(person's action) of one subject from pp_aif.agent.step, trial by trial, with
    learn_between_trials between them; the preference scale as a model whose C is scaled, the
    likelihood precision as one whose A is sharpened."""
    c, kappa = theta_n["preference"], theta_n["concentration"]
    model = _model(
        arrays,
        [c * np.asarray(x) for x in C],
        [kappa * p for p in pD],
        policies,
        theta_n["likelihood_precision"],
    )
    settings = AgentSettings(
        policy_precision=theta_n["gamma"],
        action_precision=theta_n["alpha"],
        learning_rate=theta_n["learning_rate"],
        forgetting=theta_n["forgetting"],
        lesions=lesions,
    )
    out = torch.zeros(K, T - 1, dtype=torch.float64)
    counts = None
    for k in range(K):
        if not present[k]:
            continue  # an absent trial: no choices, nothing learned
        state = initial_state(model, 1, pD=counts)
        for t in range(T):
            action = actions[None, k, t] if t < T - 1 else None
            state, result = step(
                model, settings, state, observations[None, k, t], num_steps=T, action=action
            )
            if action is not None:
                for f, p in enumerate(result.action_probabilities):
                    out[k, t] += torch.log(p[0, action[0, f]])
        _, counts, _ = learn_between_trials(
            model, settings, state, observations[None, k], actions[None, k]
        )
    return out


WITHOUT_ZETA = tuple(name for name in PARAMETERS if name != "likelihood_precision")


@pytest.mark.parametrize("params", [PARAMETERS, WITHOUT_ZETA])
@pytest.mark.parametrize("lesions", [Lesions(), Lesions(epistemic=False)])
def test_learning_likelihood_equals_the_replayed_agent(case, lesions, params):
    """With zeta fitted, by the filter and the EFE kernel; without it, by the linear plan."""
    arrays, C, pD, model, observations, actions = case
    present = torch.ones(N, K, dtype=torch.bool)
    present[1, 1] = False  # a gap: that trial teaches subject 1 nothing
    likelihood = BehaviourLikelihood(
        model, AgentSettings(lesions=lesions), observations, actions, params, present
    )
    assert (likelihood.plan is not None) == (params == WITHOUT_ZETA)
    theta = {name: torch.tensor(THETA[name], dtype=torch.float64) for name in params}
    fast = likelihood(theta)
    assert fast.shape == (N, K, T - 1)
    for n in range(N):
        theta_n = {name: value[n] for name, value in THETA.items()}
        theta_n["likelihood_precision"] = (
            theta_n["likelihood_precision"] if params == PARAMETERS else 1.0
        )
        expected = replayed(
            arrays,
            C,
            pD,
            model.policies,
            theta_n,
            observations[n],
            actions[n],
            present[n],
            lesions,
        )
        assert_close(fast[n][present[n]], expected[present[n]])


def test_the_linear_plan_is_the_filter_and_the_kernel(case, monkeypatch):
    """Three routes to one likelihood: the plan in numpy with its adjoint (the default on the
    CPU), the plan in torch operations, and the filter with the EFE kernel; values and
    gradients, for a batch of draws and for one. Where a filtered belief's normaliser is too
    small for the plan, each falls back to the next."""
    _, _, _, model, observations, actions = case
    routes = [
        BehaviourLikelihood(model, AgentSettings(), observations, actions, WITHOUT_ZETA)
        for _ in range(3)
    ]
    fused, torch_plan, kernels = routes
    assert fused.fused is not None
    torch_plan.fused = None
    kernels.fused, kernels.plan = None, None
    draws = {
        name: torch.tensor(THETA[name], dtype=torch.float64).expand(2, N).clone()
        for name in WITHOUT_ZETA
    }
    for theta in (draws, {name: value[0] for name, value in draws.items()}):
        inputs = {name: value.requires_grad_(True) for name, value in theta.items()}
        assert torch_plan.values(inputs).safe and not kernels.values(inputs).safe
        expected = kernels(inputs)
        weights = torch.rand(expected.shape, dtype=torch.float64)
        want = torch.autograd.grad((expected * weights).sum(), list(inputs.values()))
        for route in (fused, torch_plan):
            value = route(inputs)
            assert_close(value, expected)
            got = torch.autograd.grad((value * weights).sum(), list(inputs.values()))
            assert_close(got, want)
    for module in ("pp_aif.fitting.likelihood", "pp_aif.fitting.plan_likelihood"):
        # every normaliser "too small": the plan's routes fall back
        monkeypatch.setattr(importlib.import_module(module), "SMALLEST_NORMALISER", 2.0)
    assert not torch_plan.values(draws).safe
    inputs = {name: value.requires_grad_(True) for name, value in draws.items()}
    for route in (fused, torch_plan):
        assert_close(route(inputs), kernels(inputs))
        got = torch.autograd.grad(route(inputs).sum(), list(inputs.values()))
        assert_close(got, torch.autograd.grad(kernels(inputs).sum(), list(inputs.values())))


def test_the_fused_plan_has_first_and_second_derivatives(case):
    """gradcheck through the adjoint; gradgradcheck through the torch route it falls back to
    for a differentiable backward (the grid's Laplace approximation)."""
    _, _, _, model, observations, actions = case
    likelihood = BehaviourLikelihood(model, AgentSettings(), observations, actions, WITHOUT_ZETA)
    assert likelihood.fused is not None
    inputs = tuple(
        torch.tensor(THETA[name], dtype=torch.float64, requires_grad=True) for name in WITHOUT_ZETA
    )

    def total(*values):
        return likelihood(dict(zip(WITHOUT_ZETA, values, strict=True))).sum((-1, -2))

    assert torch.autograd.gradcheck(total, inputs)
    assert torch.autograd.gradgradcheck(total, inputs)


def test_learning_likelihood_passes_gradcheck(case):
    _, _, _, model, observations, actions = case
    likelihood = BehaviourLikelihood(model, AgentSettings(), observations, actions, PARAMETERS)
    names = list(THETA)
    inputs = tuple(
        torch.tensor(THETA[name], dtype=torch.float64, requires_grad=True) for name in names
    )

    def total(*values):
        return likelihood(dict(zip(names, values, strict=True))).sum((-1, -2))

    assert torch.autograd.gradcheck(total, inputs)
    grads = torch.autograd.grad(total(*inputs).sum(), inputs)
    for name, grad in zip(names, grads, strict=True):
        assert (grad.abs() > 0).any(), f"no gradient reaches {name}"


def test_parameter_draws_batch_on_the_left(case):
    _, _, _, model, observations, actions = case
    likelihood = BehaviourLikelihood(model, AgentSettings(), observations, actions, PARAMETERS)
    generator = torch.Generator().manual_seed(0)
    theta = {
        name: torch.tensor(value, dtype=torch.float64)
        * (0.5 + torch.rand(5, N, generator=generator, dtype=torch.float64))
        for name, value in THETA.items()
    }
    batched = likelihood(theta)
    assert batched.shape == (5, N, K, T - 1)
    for s in range(5):
        assert_close(batched[s], likelihood({name: v[s] for name, v in theta.items()}))


def test_the_recursion_has_the_agents_counts(case):
    """D_k from the closed-form recursion equals the normalised counts the agent learns."""
    arrays, C, pD, model, observations, actions = case
    evidence = initial_state_evidence(model, observations, actions)
    initial = learned_initial_beliefs(model, evidence, 1.5, 0.2, 2.0)
    settings = AgentSettings(learning_rate=1.5, forgetting=0.2)
    counts = [2.0 * torch.as_tensor(p).expand(N, -1) for p in pD]
    for k in range(K):
        for f in range(2):
            assert_close(initial[f][:, k], counts[f] / counts[f].sum(-1, keepdim=True))
        state = initial_state(model, N, pD=counts)
        for t in range(T):
            action = actions[:, k, t] if t < T - 1 else None
            state, _ = step(
                model, settings, state, observations[:, k, t], num_steps=T, action=action
            )
        _, counts, _ = learn_between_trials(
            model, settings, state, observations[:, k], actions[:, k]
        )


def test_preference_scale_of_the_agent_equals_a_scaled_model(case):
    arrays, C, pD, model, observations, actions = case
    scaled = _model(arrays, [2.5 * np.asarray(x) for x in C], pD, model.policies)
    results = []
    for m, settings in ((model, AgentSettings(preference_scale=2.5)), (scaled, AgentSettings())):
        state = initial_state(m, N)
        _, result = step(m, settings, state, observations[:, 0, 0], num_steps=T)
        results.append(result.policy_posterior)
    assert_close(results[0], results[1])


def test_what_the_likelihood_cannot_follow_is_refused(case):
    arrays, C, pD, model, observations, actions = case
    with_pA = pp_aif.GenerativeModel(
        arrays.A,
        arrays.B,
        C=C,
        D=arrays.D,
        pA=[10 * np.asarray(a) for a in arrays.A],
        policies=model.policies,
    )
    with pytest.raises(ValueError, match=r"model: has pA, so its agents learn A or B"):
        BehaviourLikelihood(with_pA, AgentSettings(), observations, actions)
    without_pD = pp_aif.GenerativeModel(
        arrays.A, arrays.B, C=C, D=arrays.D, policies=model.policies
    )
    with pytest.raises(ValueError, match=r"\['learning_rate'\] describe learning D"):
        BehaviourLikelihood(
            without_pD, AgentSettings(), observations, actions, ("alpha", "learning_rate")
        )
    with pytest.raises(ValueError, match=r"'preference' scales the pragmatic term"):
        BehaviourLikelihood(
            model,
            AgentSettings(lesions=Lesions(pragmatic=False)),
            observations,
            actions,
            ("preference",),
        )
    with pytest.raises(ValueError, match=r"\['beta'\] are not among"):
        BehaviourLikelihood(model, AgentSettings(), observations, actions, ("beta",))
    with pytest.raises(ValueError, match=r"efe_method='sampled'"):
        BehaviourLikelihood(model, AgentSettings(efe_method="sampled"), observations, actions)


def test_an_impossible_trial_is_named():
    task = pp_aif.load_task("tmaze")
    observations = torch.zeros(2, 2, 3, 2, dtype=torch.int64)
    actions = torch.zeros(2, 2, 2, 2, dtype=torch.int64)
    observations[1, 1, 1] = torch.tensor([1, 0])  # at the left arm without going there
    with pytest.raises(DataError, match=r"subject 1, trial 1: impossible"):
        initial_state_evidence(task.model, observations, actions)


def test_a_negative_preference_scale_is_refused():
    for bad in (-1.0, 0.0):  # c = 0 would make 0 * (-inf) preferences NaN
        with pytest.raises(ValueError, match=r"preference_scale: must be a finite number > 0, got"):
            AgentSettings(preference_scale=bad)


def test_likelihood_precision_is_the_agent_with_a_sharpened_A(case):
    """Without pD: zeta fitted equals the fixed likelihood of the model whose A is A^zeta
    (numpy), and zeta = 1 is the model's own A."""
    arrays, C, _, model, observations, actions = case
    plain = pp_aif.GenerativeModel(arrays.A, arrays.B, C=C, D=arrays.D, policies=model.policies)
    fitted = BehaviourLikelihood(
        plain, AgentSettings(), observations, actions, ("alpha", "likelihood_precision")
    )
    zeta = THETA["likelihood_precision"]
    alpha = torch.tensor(THETA["alpha"], dtype=torch.float64)
    values = fitted({"alpha": alpha, "likelihood_precision": torch.tensor(zeta)})
    for n in range(N):
        sharp = _model(arrays, C, None, model.policies, zeta[n])
        fixed = BehaviourLikelihood(sharp, AgentSettings(), observations, actions, ("alpha",))
        assert_close(values[n], fixed({"alpha": alpha})[n])
    assert_close(pp_aif.fitting.sharpened_likelihood(plain.A, 1.0), list(plain.A))


def test_simulated_subjects_with_one_likelihood_precision_are_agents_of_A_to_the_zeta():
    """Every subject at zeta = 2 (each agent's own A^zeta) simulates exactly as agents of the
    model whose A is A^2 renormalised, in the world of the task's own A (the record is equal);
    different values per subject are allowed (``test_replay``)."""
    import dataclasses

    from pp_aif.fitting.likelihood import sharpened_likelihood
    from pp_aif.fitting.predictive import simulate_subjects

    task = pp_aif.load_task("tmaze")
    record = simulate_subjects(task, {"likelihood_precision": torch.tensor([2.0, 2.0])}, 2, 5)
    m = task.model
    sharp = pp_aif.GenerativeModel(
        sharpened_likelihood(m.A, 2.0), m.B, m.C, m.D, m.E, pD=m.pD, policies=m.policies
    )
    world = task.model if task.process is None else task.process
    shared = pp_aif.simulate(dataclasses.replace(task, model=sharp, process=world), 2, 2, 5)
    for name in ("observation", "action", "policy_posterior", "belief_context"):
        padded = [np.nan_to_num(r[name].values, nan=-1.0) for r in (record, shared)]  # no policy
        assert_close(*padded, msg=name)


def test_a_forbidden_outcome_is_fitted_as_the_agent_replays_it():
    """C = -inf on the T-maze's 'no reward': policies that risk it get q(pi) = 0 exactly, in the
    agent and in the likelihood alike, and no gradient meets 0 * inf (it did: the fit stopped
    on NaN logits)."""
    import dataclasses

    from pp_aif.data import long_format

    task = pp_aif.load_task("tmaze")
    C = [c.clone() for c in task.model.C]
    C[1][2] = -torch.inf
    m = task.model
    model = pp_aif.GenerativeModel(m.A, m.B, C=C, D=m.D, E=m.E, policies=m.policies, pD=m.pD)
    forbidding = dataclasses.replace(task, model=model)
    people = dataclasses.replace(task.settings, action_precision=4.0)
    record = pp_aif.simulate(forbidding, 2, 3, seed=1, settings=people)
    data = pp_aif.BehaviourData.read(long_format(record, forbidding), forbidding)
    names = ("gamma", "alpha", "learning_rate")
    likelihood = BehaviourLikelihood(
        model, task.settings, data.observations, data.actions, names, data.present
    )
    theta = {"gamma": [2.0, 8.0], "alpha": [4.0, 1.5], "learning_rate": [0.5, 2.0]}
    inputs = tuple(torch.tensor(theta[n], dtype=torch.float64, requires_grad=True) for n in names)
    fast = likelihood(dict(zip(names, inputs, strict=True)))
    grads = torch.autograd.grad(fast.sum(), inputs)
    assert all(torch.isfinite(g).all() for g in grads)
    steps = data.observations.shape[2]
    for n in range(2):
        settings = dataclasses.replace(
            task.settings,
            policy_precision=theta["gamma"][n],
            action_precision=theta["alpha"][n],
            learning_rate=theta["learning_rate"][n],
        )
        counts = None
        for k in range(3):
            state = initial_state(model, 1, pD=counts)
            observations, actions = data.observations[n, k], data.actions[n, k]
            for t in range(steps):
                action = actions[None, t] if t < steps - 1 else None
                state, result = step(
                    model, settings, state, observations[None, t], num_steps=steps, action=action
                )
                if action is not None:
                    expected = sum(
                        torch.log(p[0, action[0, f]])
                        for f, p in enumerate(result.action_probabilities)
                    )
                    assert_close(fast[n, k, t], expected)
            _, counts, _ = learn_between_trials(
                model, settings, state, observations[None], actions[None]
            )


def test_a_choice_no_policy_can_score_is_named():
    """Every policy reaches the outcome of preference -inf: the agent refuses the step, and so
    does the likelihood (it was NaN, and the fit stopped on Pyro's 'invalid values')."""
    A = [np.array([[1.0, 1.0], [0.0, 0.0]])]
    B = [np.stack([np.eye(2), np.eye(2)[::-1]], -1)]
    model = pp_aif.GenerativeModel(A, B, C=[np.array([-np.inf, 0.0])])
    observations = torch.zeros(1, 1, 2, 1, dtype=torch.int64)
    actions = torch.zeros(1, 1, 1, 1, dtype=torch.int64)
    likelihood = BehaviourLikelihood(model, AgentSettings(), observations, actions, ("alpha",))
    with pytest.raises(ValueError, match=r"undetermined at subject 0, trial 0, time step 0"):
        likelihood({"alpha": torch.tensor([2.0], dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"q\(pi\) is not finite at time step 0"):
        step(model, AgentSettings(), initial_state(model, 1), observations[0, 0, :1], num_steps=2)


def test_wild_parameters_give_numbers_not_warnings(case):
    """At a wild point of a trajectory or a Newton step (an overflowing learning rate, alpha of
    1e308) the numpy routes give non-finite values as the torch route does, without numpy's
    warnings (which the tests, and a user's warnings filter, would turn into errors)."""
    _, _, _, model, observations, actions = case
    likelihood = BehaviourLikelihood(model, AgentSettings(), observations, actions, WITHOUT_ZETA)
    wild = {name: torch.full((2, N), 1e308, dtype=torch.float64) for name in WITHOUT_ZETA}
    wild["forgetting"] = torch.full((2, N), 0.5, dtype=torch.float64)
    inputs = {name: value.requires_grad_(True) for name, value in wild.items()}
    value = likelihood.chosen_log_likelihood(inputs)
    torch.autograd.grad(value.sum(), list(inputs.values()), allow_unused=True)
    found = likelihood.numpy_value_and_gradient(
        {name: x.detach().numpy() for name, x in wild.items()}, None
    )
    assert found is None or not np.isfinite(found[0]).all()
    history = learned_initial_beliefs(model, likelihood.evidence, 1e308, 0.5, 1e308)
    assert not all(bool(torch.isfinite(h).all()) for h in history)


def _one_learnable_factor(rng):
    """As ``case``, but the second factor's pD and D are one-hot: one factor learns (the
    recursion's forward-mode tangents), as in the T-maze."""
    _, _, _, model, observations, actions = _pD_case(
        rng, second_D=np.array([1.0, 0.0]), second_pD=np.array([2.0, 0.0])
    )
    return model, observations, actions


@pytest.mark.parametrize("factors", ["two learn (the adjoint)", "one learns (the tangents)"])
def test_the_recursion_starts_each_game_afresh(case, rng, factors):
    """Games of trials 0 and 1-3 (``Task.restarts``): every route of the closed form (the plan
    in numpy, the plan in torch, the filter with the kernel, and with zeta fitted) equals the
    agent replaying the choices with its counts starting again, values and gradients."""
    from pp_aif.fitting.replay import ReplayLikelihood, likelihood_for

    if factors.startswith("two"):
        model, observations, actions = case[3:]
    else:
        model, observations, actions = _one_learnable_factor(rng)
    assert len(model.learnable_initial_factors[0]) == (2 if factors.startswith("two") else 1)
    starts = torch.tensor([True, True, False, False])
    present = torch.ones(N, K, dtype=torch.bool)
    present[1, 2] = False
    settings = AgentSettings()
    chosen = likelihood_for(model, settings, observations, actions, WITHOUT_ZETA, present, starts)
    assert isinstance(chosen, BehaviourLikelihood) and chosen.fused is not None
    torch_plan, kernels = (
        BehaviourLikelihood(model, settings, observations, actions, WITHOUT_ZETA, present, starts)
        for _ in range(2)
    )
    torch_plan.fused = None
    kernels.fused, kernels.plan = None, None
    with_zeta = BehaviourLikelihood(
        model, settings, observations, actions, PARAMETERS, present, starts
    )
    cases = ((WITHOUT_ZETA, (chosen, torch_plan, kernels)), (PARAMETERS, (with_zeta,)))
    for names, routes in cases:
        replay = ReplayLikelihood(model, settings, observations, actions, names, present, starts)
        theta = {
            name: torch.tensor(THETA[name], dtype=torch.float64).expand(2, N).clone()
            for name in names
        }
        inputs = {name: value.requires_grad_(True) for name, value in theta.items()}
        expected = replay(inputs)
        mask = present[..., None].expand(2, N, K, T - 1)
        want = torch.autograd.grad(expected[mask].sum(), list(inputs.values()))
        for route in routes:
            value = route(inputs)
            assert_close(value[mask], expected[mask])
            got = torch.autograd.grad(value[mask].sum(), list(inputs.values()))
            assert_close(got, want)
    # the route NUTS takes: numpy's value and gradient
    theta = {name: np.asarray(THETA[name])[None] for name in WITHOUT_ZETA}
    value, gradients = chosen.numpy_value_and_gradient(theta, present.numpy().astype(float))
    inputs = {name: torch.tensor(v, requires_grad=True) for name, v in theta.items()}
    expected = ReplayLikelihood(
        model, settings, observations, actions, WITHOUT_ZETA, present, starts
    )(inputs)
    expected = torch.where(present[..., None], expected, 0.0).sum((-1, -2))
    assert_close(value, expected)
    alone, _ = chosen.numpy_value_and_gradient(theta, present.numpy().astype(float), False)
    assert_close(alone, expected)  # the value alone, without the backward pass
    for name, g in zip(
        WITHOUT_ZETA, torch.autograd.grad(expected.sum(), list(inputs.values())), strict=True
    ):
        assert_close(gradients[name], g, msg=name)

"""The batched agent: exact beliefs (= infer_states filtering), the environment's sampling, the
T-maze's published behaviour, and learning of D between trials."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.agent import AgentSettings, initial_state, learn_between_trials, step
from pp_aif.envs import GenerativeProcess
from pp_aif.planning import Lesions
from pp_aif.task import load_task
from tests.common import (
    Arrays,
    assert_close,
    brute_force,
    path_log_probabilities,
    random_arrays,
    sample_sequence,
)


def run(model, settings, env, N, T, seed):
    generator = torch.Generator().manual_seed(seed)
    state = initial_state(model, N)
    observation = env.reset(N, generator)
    observations, actions, results = [observation], [], []
    for _ in range(T):
        state, result = step(model, settings, state, observation, num_steps=T, generator=generator)
        results.append(result)
        if result.action is not None:
            actions.append(result.action)
            observation = env.step(result.action)
            observations.append(observation)
    return torch.stack(observations, 1), torch.stack(actions, 1), results


def test_agent_beliefs_equal_exact_filtering(rng):
    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 2), zero_fraction=0.3)
    model = pp_aif.GenerativeModel(
        arrays.A,
        arrays.B,
        C=[rng.normal(size=3), np.zeros(2)],
        D=arrays.D,
        policies=pp_aif.construct_policies((2, 2), 2),
    )
    observations, actions, results = run(
        model, AgentSettings(), GenerativeProcess(model), 6, 4, seed=1
    )
    filtering = pp_aif.infer_states(model, observations, actions, mode="filtering")
    for f in range(2):
        agent_beliefs = torch.stack([r.beliefs[f] for r in results], 1)
        assert_close(agent_beliefs, filtering.marginals[f])
    total = torch.stack([r.log_evidence for r in results], 1).sum(1)
    assert_close(total, filtering.log_evidence)


def test_agent_scores_equal_expected_free_energy(rng):
    task = load_task("tmaze")
    model = task.model
    env = GenerativeProcess(model)
    _, _, results = run(model, AgentSettings(), env, 3, 3, seed=0)
    first = results[0]
    direct = pp_aif.expected_free_energy(model, first.beliefs, time=0)
    assert_close(first.scores.G, direct.G)
    assert results[1].scores.G.shape == (3, 4)  # one step left: depth-1 policies
    assert results[2].action is None


SCORES = ("G", "risk", "ambiguity", "epistemic", "pragmatic", "novelty")
ACROSS = "a batch of 8 agents and a batch of 1 may sum in different orders (BLAS, CPU)"


def test_agents_with_equal_beliefs_plan_once_and_alike():
    """In the T-maze many agents share a history, and with it their beliefs: the batch scores
    each distinct belief once (in ``policy_scores``), so agents whose beliefs are bitwise equal
    get bitwise equal scores. Each agent's scores, q(pi) and action probabilities equal its own
    step taken alone (replaying its actions), to float64 round-off: a batch of 8 and a batch of
    1 may sum in different orders on another CPU (issue #15, item 12)."""
    task = load_task("tmaze")
    model, settings, N = task.model, AgentSettings(), 8
    observations, actions, results = run(model, settings, GenerativeProcess(model), N, 3, seed=2)
    assert len(set(map(tuple, observations[:, 1].tolist()))) < N  # some histories coincide
    for i in range(N):
        state = initial_state(model, 1)
        for t in range(3):
            action = actions[i : i + 1, t] if t < 2 else None
            state, alone = step(
                model, settings, state, observations[i : i + 1, t], num_steps=3, action=action
            )
            if t == 2:
                break
            shared = results[t]
            assert_close(shared.policy_posterior[i], alone.policy_posterior[0], reason=ACROSS)
            for name in SCORES:
                assert_close(
                    getattr(shared.scores, name)[i], getattr(alone.scores, name)[0], reason=ACROSS
                )
            for p, q in zip(shared.action_probabilities, alone.action_probabilities, strict=True):
                assert_close(p[i], q[0], reason=ACROSS)
    for t in range(2):  # the sharing itself: by construction, on any CPU
        beliefs, scores = results[t].beliefs, results[t].scores
        for i in range(N):
            for j in range(i):
                if all(torch.equal(q[i], q[j]) for q in beliefs):
                    for name in SCORES:
                        assert torch.equal(getattr(scores, name)[i], getattr(scores, name)[j])


def test_process_samples_from_its_arrays(rng):
    arrays = random_arrays(rng, (3,), (4,), (1,))
    process = GenerativeProcess(pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D))
    n = 20000
    observation = process.reset(n, torch.Generator().manual_seed(5))
    expected = arrays.A[0] @ arrays.D[0]
    frequencies = np.bincount(observation[:, 0].numpy(), minlength=4) / n
    stderr = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(frequencies - expected) <= 4 * stderr)
    following = process.step(torch.zeros(n, 1, dtype=torch.int64))
    expected = arrays.A[0] @ arrays.B[0][:, :, 0] @ arrays.D[0]
    frequencies = np.bincount(following[:, 0].numpy(), minlength=4) / n
    stderr = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(frequencies - expected) <= 4 * stderr)
    with pytest.raises(ValueError, match="actions: shape"):
        process.step(torch.zeros(3, 1, dtype=torch.int64))


@pytest.mark.parametrize("epistemic", [True, False])
def test_tmaze_published_behaviour(epistemic):
    """Friston et al. 2015: the agent samples the cue first, then the signalled arm; without the
    epistemic term the cue and staying put have equal value."""
    task = load_task("tmaze")
    settings = AgentSettings(lesions=Lesions(epistemic=epistemic))
    n = 400
    observations, actions, _ = run(
        task.model, settings, GenerativeProcess(task.model), n, 3, seed=7
    )
    cue_first = (actions[:, 0, 0] == 3).float().mean().item()
    if epistemic:
        assert cue_first >= 0.9
        after_cue = actions[:, 0, 0] == 3
        says_left = observations[:, 1, 0] == 4
        correct = torch.where(says_left, actions[:, 1, 0] == 1, actions[:, 1, 0] == 2)
        assert correct[after_cue].float().mean().item() >= 0.9
    else:
        stay_first = (actions[:, 0, 0] == 0).float().mean().item()
        assert abs(cue_first - 0.5) <= 4 * np.sqrt(0.25 / n)
        assert abs(cue_first + stay_first - 1) < 1e-12  # never straight into an arm


def test_learning_between_trials_equals_learn(rng):
    """Each agent's counts after a trial equal pp_aif.learn on its own data and model."""
    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 2), zero_fraction=0.2)
    # as in SPM, an agent with counts uses their normalised values as A, B and D
    counts_A = [(1 + 2 * a) * (a > 0) for a in arrays.A]
    counts_B = [(1 + 3 * b) * (b > 0) for b in arrays.B]
    counts_D = [1 + d for d in arrays.D]
    model = pp_aif.GenerativeModel(
        [p / p.sum(0) for p in counts_A],
        [p / p.sum(0) for p in counts_B],
        D=[p / p.sum() for p in counts_D],
        pA=counts_A,
        pB=counts_B,
        pD=counts_D,
        policies=pp_aif.construct_policies((2, 2), 1),
    )
    settings = AgentSettings(learning_rate=0.5, forgetting=0.1)
    observations, actions, _ = run(model, settings, GenerativeProcess(model), 3, 4, seed=2)
    pA, pD, pB = learn_between_trials(
        model, settings, initial_state(model, 3), observations, actions
    )
    learned = [
        pp_aif.learn(model, observations[n], actions[n], learning_rate=0.5, forgetting=0.1)
        for n in range(3)
    ]
    for n in range(3):
        for ours, expected in zip(pA, learned[n].pA, strict=True):
            assert_close(ours[n], expected)
        for ours, expected in zip(pB, learned[n].pB, strict=True):
            assert_close(ours[n], expected)
        for ours, expected in zip(pD, learned[n].pD, strict=True):
            assert_close(ours[n], expected)
    # the next trial starts from each agent's own counts, and its beliefs follow them exactly
    second = initial_state(model, 3, pA=pA, pB=pB, pD=pD)
    next_observation = observations[:, :1]
    _, result = step(model, settings, second, next_observation[:, 0], num_steps=2)
    for n in range(3):
        own = pp_aif.infer_states(learned[n], next_observation[n], mode="filtering")
        assert_close(result.beliefs[0][n], own.marginals[0][0])
        assert_close(second.transitions()[1][n], learned[n].B[1])


def test_bandit_agents_learn_the_best_arm():
    """Per-agent learning of A: agents come to pull the arm that pays most (p = 0.8)."""
    from pp_aif.simulation import simulate

    record = simulate(load_task("bandit"), num_agents=200, num_trials=30, seed=0)
    pulls = record["action"].isel(time=0).sel(factor="position")
    best_first = (pulls.isel(trial=0) == 0).mean().item()
    best_late = (pulls.isel(trial=slice(20, 30)) == 0).mean().item()
    assert abs(best_first - 1 / 3) <= 4 * np.sqrt(2 / 9 / 200)  # no preference at first
    assert best_late >= 0.7
    reward_late = record["reward"].isel(trial=slice(20, 30)).mean().item()
    assert reward_late >= 0.7  # the best achievable is 0.8


def test_inferred_precision_is_refused_with_its_reason():
    """infer_precision=True used to run inert: q(pi) equalled its prior, so gamma never moved
    (issue #16, item 3). It cannot move in this agent (the two tests below), so it is refused."""
    with pytest.raises(ValueError, match=r"infer_precision: .*F\(pi\) is the same for all"):
        AgentSettings(infer_precision=True)
    assert AgentSettings(infer_precision=False).infer_precision is False


def tmaze_arrays(model):
    return Arrays(
        [a.numpy() for a in model.A], [b.numpy() for b in model.B], [d.numpy() for d in model.D]
    )


@pytest.mark.parametrize("gamma", [1.0, 4.0])
def test_spm_precision_update_is_inert_for_this_agents_policies(gamma):
    """SPM's update of gamma, restated in numpy, fed this agent's scores at every step and
    F(pi) = -ln p(o_<=t | pi) by brute force: each policy of step t starts at t, so F(pi) uses
    the actions taken and is one number for all, and gamma stays at policy_precision, q(pi) at
    the agent's own (fixed-gamma) posterior."""
    task = load_task("tmaze")
    model, arrays = task.model, tmaze_arrays(task.model)
    settings = AgentSettings(policy_precision=gamma)
    observations, actions, results = run(model, settings, GenerativeProcess(model), 6, 3, seed=3)
    observations, actions = observations.numpy(), actions.numpy()

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    for n in range(6):
        qb = beta = 1 / gamma  # SPM: qb{m} = beta at the trial's start, carried over its steps
        for t, result in enumerate(results[:-1]):
            scores = result.scores
            # SPM's Q, the negative policy score -(G - novelty)
            Q = (scores.epistemic[n] + scores.pragmatic[n] + scores.novelty[n]).numpy()
            log_E = np.full(len(Q), -np.log(len(Q)))  # the T-maze's E, and later ones, are flat
            # every policy of step t starts at t: its past is the actions taken, its F is this
            F = -brute_force(arrays, observations[n, : t + 1], actions[n, :t])[0]
            for _ in range(16):  # spm_MDP_VB_X: qu, pu, eg, dFdg, qb, w (Ni = 16)
                w = 1 / qb
                qu = softmax(log_E + w * Q - F)
                pu = softmax(log_E + w * Q)
                qb = qb - (qb - beta + (qu - pu) @ Q) / 2
            assert_close(1 / qb, gamma)
            assert_close(qu, result.policy_posterior[n])


def free_energy_by_brute_force(arrays, observations, actions):
    """-ln p(o | u) over every state path: inf where no path explains the outcomes."""
    log_p = path_log_probabilities(arrays, observations, actions)[1]
    if np.isneginf(log_p).all():
        return np.inf
    top = log_p.max()
    return -(top + np.log(np.exp(log_p - top).sum()))


def test_tmaze_outcomes_leave_even_whole_trial_policies_one_free_energy():
    """Why SPM's whole-trial policies would not help in the T-maze under exact inference: along
    the agent's trials, every policy whose past differs from the actions taken is ruled out by
    the location outcome (F(pi) = inf), and the policies left share F(pi) (brute force)."""
    task = load_task("tmaze")
    model, arrays = task.model, tmaze_arrays(task.model)
    observations, actions, _ = run(model, AgentSettings(), GenerativeProcess(model), 12, 3, seed=5)
    policies = model.policies.numpy()  # (16, 2, 2): the whole trial
    for n in range(12):
        for t in range(3):
            F = np.array(
                [
                    free_energy_by_brute_force(arrays, observations[n, : t + 1].numpy(), pi[:t])
                    for pi in policies
                ]
            )
            same_past = (policies[:, :t] == actions[n, :t].numpy()).all((1, 2))
            assert np.isinf(F[~same_past]).all() and np.isfinite(F[same_past]).all()
            assert_close(F[same_past], np.full(same_past.sum(), F[same_past][0]))


def test_fpi_agent_is_exact_with_one_factor(rng):
    arrays = random_arrays(rng, (3,), (3, 2), (2,), zero_fraction=0.3)
    model = pp_aif.GenerativeModel(
        arrays.A, arrays.B, C=[rng.normal(size=3), np.zeros(2)], D=arrays.D
    )
    env = GenerativeProcess(model)
    exact_run = run(model, AgentSettings(), env, 5, 4, seed=2)
    fpi_run = run(model, AgentSettings(inference="fpi"), env, 5, 4, seed=2)
    assert torch.equal(exact_run[1], fpi_run[1])  # the same actions
    for exact, fpi in zip(exact_run[2], fpi_run[2], strict=True):
        assert_close(fpi.beliefs, exact.beliefs, atol=1e-14, reason="FPI's log floor (eps)")


@pytest.mark.parametrize("scheme", ["fpi", "vmp", "mmp"])
def test_scheme_agents_hold_the_schemes_beliefs_about_the_trial_so_far(rng, scheme):
    """At every step the agent's q(s_t) is the scheme's present marginal given the trial so far
    (fpi: its filter; vmp, mmp: smoothing over o_0..o_t, read at t) - two paths, one truth."""
    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 2))
    model = pp_aif.GenerativeModel(
        arrays.A, arrays.B, C=[rng.normal(size=3), np.zeros(2)], D=arrays.D
    )
    settings = AgentSettings(inference=scheme, inference_iterations=8)
    observations, actions, results = run(model, settings, GenerativeProcess(model), 3, 4, seed=4)
    options = {"num_iterations": 8, "warn": False}
    for t, result in enumerate(results):
        if scheme == "fpi":
            beliefs = pp_aif.infer_states(
                model, observations, actions, method="fpi", mode="filtering", settings=options
            )
            expected = [q[:, t] for q in beliefs.marginals]
        else:
            beliefs = pp_aif.infer_states(
                model,
                observations[:, : t + 1],
                actions[:, :t],
                method=scheme,
                settings=options,
            )
            expected = [q[:, -1] for q in beliefs.marginals]
        assert_close(result.beliefs, expected, msg=f"step {t}")


def test_unknown_inference_scheme_is_named():
    with pytest.raises(ValueError, match=r"inference: 'bp' is not one of"):
        AgentSettings(inference="bp")
    with pytest.raises(ValueError, match=r"inference_iterations: must be an integer >= 1, got 0"):
        AgentSettings(inference="mmp", inference_iterations=0)


def test_structured_guide_agent_holds_the_exact_beliefs(rng):
    """Smoothing o_0..o_t read at t is filtering: the structured guide (which contains the
    posterior) gives the exact agent's beliefs, up to its optimiser."""
    arrays = random_arrays(rng, (2, 2), (3,), (2, 1))
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, C=[rng.normal(size=3)], D=arrays.D)
    env = GenerativeProcess(model)
    exact_run = run(model, AgentSettings(sample_actions=False), env, 2, 3, seed=5)
    guide_run = run(
        model, AgentSettings(sample_actions=False, inference="structured"), env, 2, 3, seed=5
    )
    for exact, guided in zip(exact_run[2], guide_run[2], strict=True):
        assert_close(guided.beliefs, exact.beliefs, atol=1e-4, reason="L-BFGS stopping rule")


def test_guide_agents_that_learn_are_refused():
    task = load_task("bandit")  # its agents learn pA
    settings = AgentSettings(inference="mean_field")
    with pytest.raises(ValueError, match=r"agents that learn pA, pB or pD need"):
        pp_aif.simulate(task, 2, 1, 0, settings=settings)


def test_per_agent_learning_rates_reach_pA_and_pB(rng):
    """Settings (N, 1), one per agent, against pA (N, O, S) and pB (N, S, S, U): each agent
    learns as it would alone (this crashed: '(40) must match the size of tensor b (4)')."""
    arrays = random_arrays(rng, (3,), (3,), (2,))
    model = pp_aif.GenerativeModel(
        arrays.A, arrays.B, D=arrays.D, pA=[2.0 * a + 0.5 for a in arrays.A],
        pB=[b + 1.0 for b in arrays.B],
    )  # fmt: skip
    N, T = 4, 3
    rates = torch.tensor([[0.0], [0.5], [1.0], [3.0]], dtype=torch.float64)
    forgetting = torch.tensor([[0.0], [0.1], [0.2], [0.5]], dtype=torch.float64)
    pairs = [sample_sequence(rng, arrays, T) for _ in range(N)]
    observations = torch.as_tensor(np.stack([o for o, _ in pairs]))
    actions = torch.as_tensor(np.stack([a for _, a in pairs]))
    state = initial_state(model, N)
    together = learn_between_trials(
        model, AgentSettings(learning_rate=rates, forgetting=forgetting), state,
        observations, actions,
    )  # fmt: skip
    for n in range(N):
        alone = learn_between_trials(
            model,
            AgentSettings(learning_rate=float(rates[n]), forgetting=float(forgetting[n])),
            initial_state(model, 1),
            observations[n : n + 1],
            actions[n : n + 1],
        )
        for mine, theirs in zip(together, alone, strict=True):
            if mine is not None:
                assert_close([p[n : n + 1] for p in mine], theirs)


def test_bandit_subjects_with_their_own_learning_rates_are_simulated():
    from pp_aif.fitting.predictive import simulate_subjects

    task = pp_aif.load_task("bandit")
    theta = {
        "learning_rate": torch.linspace(0.1, 3.0, 40, dtype=torch.float64),
        "concentration": torch.linspace(0.5, 2.0, 40, dtype=torch.float64),
    }
    record = simulate_subjects(task, theta, 3, seed=0)
    assert record.sizes["agent"] == 40 and record.sizes["trial"] == 3


def test_settings_are_split_by_concern_and_each_part_takes_its_own(rng):
    """AgentSettings stays one flat object for the user (dataclasses.replace by field name),
    checked and split into planning, learning and state inference; learning and planning
    take their own group and give the same answer as with the whole settings."""
    import dataclasses

    from pp_aif.agent import InferenceSettings, LearningSettings, PlanningSettings, policies_at

    settings = AgentSettings(
        action_precision=3.0, learning_rate=0.5, forgetting=0.25, inference="mmp", horizon=1
    )
    assert settings.planning == PlanningSettings(action_precision=3.0, horizon=1)
    assert settings.learning == LearningSettings(learning_rate=0.5, forgetting=0.25)
    assert settings.state_inference == InferenceSettings("mmp")
    assert settings.state_inference.scheme_settings().warn is False
    changed = dataclasses.replace(settings, action_precision=2.0)
    assert changed.planning.action_precision == 2.0 and changed.learning == settings.learning
    with pytest.raises(ValueError, match=r"forgetting: must be a finite number >= 0 and < 1"):
        LearningSettings(forgetting=1.0)
    with pytest.raises(ValueError, match=r"inference: 'bp' is not one of"):
        InferenceSettings("bp")
    with pytest.raises(ValueError, match=r"infer_precision: this agent cannot infer gamma"):
        PlanningSettings(infer_precision=True)

    arrays = random_arrays(rng, (2,), (3,), (2,))
    model = pp_aif.GenerativeModel(
        arrays.A, arrays.B, D=arrays.D, pA=[4 * arrays.A[0]], pD=[2 * arrays.D[0]]
    )
    observations = torch.tensor([[0, 2, 1], [1, 1, 0]])[..., None]
    actions = torch.tensor([[0, 1], [1, 1]])[..., None]
    state = initial_state(model, 2)
    whole = learn_between_trials(model, settings, state, observations, actions)
    alone = learn_between_trials(model, settings.learning, state, observations, actions)
    for a, b in zip(whole, alone, strict=True):
        if a is not None:
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    for t in range(2):
        p1, e1 = policies_at(model, settings, t, 3)
        p2, e2 = policies_at(model, settings.planning, t, 3)
        assert torch.equal(p1, p2) and torch.equal(e1, e2)

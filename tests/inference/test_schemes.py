"""One state-inference interface (``pp_aif.inference.schemes``): every scheme is written once, and
``infer_states``, the agent's step, its learning between trials and so the fitting replay all
reach that one piece, on arrays made by one adapter (``scheme_inputs``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import pp_aif
from pp_aif.agent import AgentSettings, AgentState, initial_state, learn_between_trials, step
from pp_aif.envs import GenerativeProcess
from pp_aif.inference import schemes
from pp_aif.inference.inputs import scheme_inputs
from pp_aif.inference.schemes import SCHEMES, MessagePassingSettings
from pp_aif.ops.message_passing import marginal_message_passing, variational_message_passing
from tests.common import assert_close, random_arrays


def _model(rng, zero_fraction=0.0):
    arrays = random_arrays(rng, (2, 3), (3, 2), (2, 2), zero_fraction)
    return pp_aif.GenerativeModel(
        arrays.A, arrays.B, C=[rng.normal(size=3), np.zeros(2)], D=arrays.D
    )


def _sequences(model, N, T, seed):
    generator = torch.Generator().manual_seed(seed)
    env = GenerativeProcess(model)
    observations = [env.reset(N, generator)]
    actions = []
    for _ in range(T - 1):
        action = torch.stack(
            [torch.randint(u, (N,), generator=generator) for u in model.num_controls], -1
        )
        actions.append(action)
        observations.append(env.step(action))
    return torch.stack(observations, 1), torch.stack(actions, 1)


@pytest.fixture
def spy(monkeypatch):
    """Wrap every scheme's two functions so that a test sees who called which."""
    calls = []

    def wrap(name, kind, function):
        def wrapped(*args, **kwargs):
            calls.append((name, kind))
            return function(*args, **kwargs)

        return wrapped

    patched = {
        name: replace(
            scheme,
            online=wrap(name, "online", scheme.online),
            sequence=wrap(name, "sequence", scheme.sequence),
        )
        for name, scheme in SCHEMES.items()
    }
    monkeypatch.setattr(schemes, "SCHEMES", patched)
    for module in ("pp_aif.agent", "pp_aif.inference.states", "pp_aif.inference.message_passing"):
        monkeypatch.setattr(f"{module}.SCHEMES", patched)
    return calls


@pytest.mark.parametrize("name", ["exact", "fpi", "vmp", "mmp"])
def test_infer_states_and_the_agent_reach_the_same_scheme(rng, spy, name):
    model = _model(rng)
    observations, actions = _sequences(model, 2, 3, seed=1)
    mode = "filtering" if name == "fpi" else "smoothing"
    options = None if name == "exact" else {"num_iterations": 4, "warn": False}
    pp_aif.infer_states(model, observations, actions, method=name, mode=mode, settings=options)
    assert (name, "sequence") in spy
    spy.clear()
    settings = AgentSettings(inference=name, inference_iterations=4)
    state = initial_state(model, 2)
    step(model, settings, state, observations[:, 0], num_steps=3, action=actions[:, 0])
    assert spy == [(name, "online")] + ([(name, "sequence")] if name in ("vmp", "mmp") else [])


def test_learning_between_trials_smooths_with_the_exact_scheme(rng, spy):
    arrays = random_arrays(rng, (2,), (3,), (2,))
    model = pp_aif.GenerativeModel(
        arrays.A, arrays.B, D=arrays.D, pA=[10 * a for a in arrays.A], pD=[5 * arrays.D[0]]
    )
    observations, actions = _sequences(model, 3, 4, seed=2)
    learn_between_trials(model, AgentSettings(), initial_state(model, 3), observations, actions)
    assert spy == [("exact", "sequence")]


def test_the_adapter_gives_the_same_arrays_for_the_models_own_and_an_agents_copy(rng):
    """scheme_inputs with each sequence's own A, B, D (an agent's counts) equal to the model's
    gives the model's arrays, and says that they are the sequences' own."""
    model = _model(rng, zero_fraction=0.2)
    observations, actions = _sequences(model, 3, 4, seed=3)
    N = observations.shape[0]
    shared = scheme_inputs(model, observations, actions)
    own = scheme_inputs(
        model,
        observations,
        actions,
        A=[a.expand(N, *a.shape) for a in model.A],
        B=[b.expand(N, *b.shape) for b in model.B],
        D=[d.expand(N, -1) for d in model.D],
    )
    assert not shared.own and own.own
    assert torch.equal(shared.log_likelihood, own.log_likelihood)
    assert torch.isinf(shared.log_likelihood).any()  # structural zeros: ln 0 = -inf, exactly
    for a, b in zip(shared.transitions, own.transitions, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(shared.initial, own.initial, strict=True):
        assert torch.equal(a, b)


def test_pymdps_floor_is_taken_per_modality(rng):
    """fpi and vmp see sum_m ln max(A_m[o_m], eps) (pymdp's ``log_stable`` per modality), not
    the floor of the sum: with a zero in two modalities at one state the two differ."""
    A = [
        np.array([[1.0, 0.0], [0.0, 1.0]]),  # outcome 0 rules out state 1
        np.array([[0.5, 0.0], [0.5, 1.0]]),  # so does outcome 0 here
    ]
    model = pp_aif.GenerativeModel(A, [np.eye(2)[:, :, None]], D=[np.array([0.5, 0.5])])
    inputs = scheme_inputs(model, torch.tensor([[[0, 0]]]), torch.zeros(1, 0, 1, dtype=torch.long))
    eps = torch.finfo(torch.float64).eps
    expected = torch.tensor([np.log(0.5), 2 * np.log(eps)], dtype=torch.float64)
    assert_close(inputs.clipped_log_likelihood[0, 0], expected)


@pytest.mark.parametrize("name", ["vmp", "mmp"])
def test_a_scheme_run_sweep_by_sweep_equals_one_run(rng, name):
    """The sequence functions run one sweep at a time (to record F and the change); the kernels
    run k sweeps in one call. The two are the same computation."""
    model = _model(rng)
    observations, actions = _sequences(model, 3, 5, seed=4)
    inputs = scheme_inputs(model, observations, actions)
    run = SCHEMES[name].sequence(inputs, MessagePassingSettings(num_iterations=5))
    if name == "vmp":
        floor = [
            torch.log(x.clamp_min(torch.finfo(x.dtype).eps))
            for x in (*inputs.transitions, *inputs.initial)
        ]
        at_once = variational_message_passing(
            inputs.clipped_log_likelihood, floor[:2], floor[2:], 5, 1.0
        )
    else:
        at_once, _, _ = marginal_message_passing(
            torch.exp(inputs.log_likelihood),
            list(inputs.transitions),
            list(inputs.initial),
            num_iterations=5,
            tau=0.25,
        )
    assert_close(run.marginals, at_once, atol=1e-15, reason="the same sums, in the same order")


@pytest.mark.parametrize("name", ["mean_field", "structured"])
def test_the_guides_refuse_an_agents_own_arrays(rng, name):
    model = _model(rng)
    observations, actions = _sequences(model, 2, 2, seed=5)
    own = scheme_inputs(model, observations, actions, D=[d.expand(2, -1) for d in model.D])
    with pytest.raises(ValueError, match=r"SVI guides .* model's own A, B and D"):
        SCHEMES[name].sequence(own, None)


def test_an_agent_with_a_guide_and_learned_counts_is_refused_with_the_reason(rng):
    arrays = random_arrays(rng, (2,), (2,), (2,))
    model = pp_aif.GenerativeModel(arrays.A, arrays.B, D=arrays.D, pD=[4 * arrays.D[0]])
    state = initial_state(model, 1)
    assert isinstance(state, AgentState)
    with pytest.raises(ValueError, match=r"agents that learn pA, pB or pD need"):
        step(
            model,
            AgentSettings(inference="mean_field"),
            state,
            torch.zeros(1, 1, dtype=torch.long),
            num_steps=2,
        )


def test_every_scheme_is_registered_with_its_settings():
    assert set(SCHEMES) == {"exact", "fpi", "vmp", "mmp", "mean_field", "structured"}
    assert SCHEMES["exact"].settings is None
    for name in ("fpi", "vmp", "mmp"):
        assert SCHEMES[name].settings is MessagePassingSettings
    assert {SCHEMES[n].mode for n in SCHEMES} == {"smoothing", "filtering"}
    assert [n for n in SCHEMES if SCHEMES[n].history] == ["vmp", "mmp", "mean_field", "structured"]

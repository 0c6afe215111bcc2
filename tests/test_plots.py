"""plots: the trial figure and the figure of many agents, checked through matplotlib's objects
(panels found by their labels, titles, tick labels, colorbars, legends' and panels' boxes), and
the numbers they draw against independent oracles: the agent's own ``step`` replaying a trial
(action probabilities) and scipy (Wilson's interval)."""

from __future__ import annotations

import dataclasses
import itertools

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from pp_aif.agent import AgentSettings, initial_state, step
from pp_aif.plots import (
    action_probabilities_of,
    plot_agents,
    plot_trial,
    trial_view,
    wilson_interval,
)
from pp_aif.simulation import simulate
from pp_aif.task import load_task
from tests.common import assert_close

TASKS = ("tmaze", "foraging", "bandit", "reversal", "two_factor")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def records():
    """{task name: (task, record of 4 agents x 3 trials)}, simulated once for the module."""
    result = {}
    for name in TASKS:
        task = load_task(name)
        result[name] = (task, simulate(task, 4, 3, seed=2))
    return result


def panels(figure) -> dict:
    """{label: Axes} of the figure's labelled panels."""
    return {ax.get_label(): ax for ax in figure.axes if ax.get_label()}


def boxes_overlap(a, b) -> bool:
    """Whether two display-space boxes share an area (touching edges do not count)."""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5


def check_layout(figure):
    """No two panels overlap; no legend overlaps another legend or any panel (legends sit
    beside their panels, or in an axes of their own with its frame off); every legend lies
    inside the figure."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    shown = [ax for ax in figure.axes if ax.axison]
    for a, b in itertools.combinations(shown, 2):
        assert not boxes_overlap(a.get_window_extent(), b.get_window_extent()), (
            f"panels {a.get_label()!r} and {b.get_label()!r} overlap"
        )
    legends = [(ax, ax.get_legend()) for ax in figure.axes if ax.get_legend() is not None]
    boxes = [(ax, legend.get_window_extent(renderer)) for ax, legend in legends]
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not boxes_overlap(box_a, box_b), (
            f"the legends of {a.get_label()!r} and {b.get_label()!r} overlap"
        )
    whole = figure.bbox
    for host, box in boxes:
        assert box.x0 >= whole.x0 - 1 and box.x1 <= whole.x1 + 1, "a legend leaves the figure"
        assert box.y0 >= whole.y0 - 1 and box.y1 <= whole.y1 + 1, "a legend leaves the figure"
        for ax in shown:  # its own panel too: a legend never covers bars or lines
            assert not boxes_overlap(box, ax.get_window_extent()), (
                f"the legend of {host.get_label()!r} covers panel {ax.get_label()!r}"
            )


def integer_ticks(ax, axis: str = "x") -> np.ndarray:
    """The ticks shown within the axis's view, asserted to be integers."""
    ticks = ax.get_xticks() if axis == "x" else ax.get_yticks()
    low, high = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    shown = ticks[(ticks >= low - 1e-9) & (ticks <= high + 1e-9)]
    assert np.all(shown == np.round(shown)), f"{ax.get_label()}: ticks {shown} are not integers"
    return shown


@pytest.mark.parametrize("name", ["tmaze", "foraging", "bandit", "two_factor"])
@pytest.mark.parametrize("action_precision", [512.0, 2.0, "per agent"])
def test_action_probabilities_equal_the_agents(name, action_precision):
    """Derived from the record's q(pi) (settings read back from the record's attributes), they
    equal what the agent's own step reports when it replays trial 0 with the same actions;
    also with one alpha per agent."""
    task = load_task(name)
    if action_precision == "per agent":
        action_precision = torch.tensor([[1.0], [4.0], [512.0]], dtype=torch.float64)
    settings = dataclasses.replace(
        task.settings or AgentSettings(), action_precision=action_precision
    )
    record = simulate(task, 3, 1, seed=5, settings=settings)
    derived = action_probabilities_of(record)  # task and settings from the record
    N, T = 3, record.sizes["time"]
    state = initial_state(task.model, N)
    observations = torch.as_tensor(record["observation"].values[:, 0])
    actions = torch.as_tensor(record["action"].values[:, 0])
    for t in range(T):
        action = actions[:, t] if t < T - 1 else None
        state, result = step(
            task.model, settings, state, observations[:, t], num_steps=T, action=action
        )
        if t == T - 1:
            break
        for f, probabilities in enumerate(result.action_probabilities):
            assert_close(derived[f].values[:, 0, t], probabilities, msg=f"step {t}, factor {f}")
    for f, values in enumerate(derived):
        assert np.isnan(values.values[:, :, -1]).all()
        assert values.dims == ("agent", "trial", "time", f"control_{task.labels.factors[f]}")


def test_action_probabilities_refuse_other_settings(records):
    task, record = records["tmaze"]
    with pytest.raises(ValueError, match=r"step 0: the record has 16 policies, .* plans over 4"):
        action_probabilities_of(record, task, AgentSettings(horizon=1))


def test_trial_view_of_tmaze(records):
    task, record = records["tmaze"]
    view = trial_view(record, 1, 2)
    assert view.settings_source == "the record's"
    assert [len(q) for q in view.policy_posterior] == [16, 4]
    for t in range(2):
        chosen = view.policies[t][view.chosen[t]]
        assert (chosen[0] == view.actions[t]).all()  # the chosen policy begins with the action
        assert_close(
            view.terms["G"][t],
            record["G"].values[1, 2, t, view.chosen[t]],
        )
    # ln p~(o) = log_softmax(C) in every column; tmaze's C does not change in time
    C = task.model.C[1].numpy()
    expected = C - np.log(np.exp(C).sum())
    assert_close(view.preferences[1], np.repeat(expected[:, None], 3, 1))


@pytest.mark.parametrize("name", TASKS)
def test_trial_figure(records, name):
    task, record = records[name]
    labels = task.labels
    figure = plot_trial(record, labels, agent=1, trial=2)
    check_layout(figure)
    found = panels(figure)
    T = record.sizes["time"]
    controlled = [f for f, names in enumerate(labels.controls) if len(names) > 1]
    expected = (
        {f"states/{factor}" for factor in labels.factors}
        | {f"actions/{labels.factors[f]}" for f in controlled}
        | {f"outcomes/{modality}" for modality in labels.modalities}
        | {f"policies/t={t}" for t in range(T - 1)}
        | {"efe", "efe/legend", "policies/legend", "colorbar/probability"}
        | {"colorbar/preference"}
    )
    assert set(found) == expected
    view = trial_view(record, 1, 2, task=task)

    for f, factor in enumerate(labels.factors):
        ax = found[f"states/{factor}"]
        assert factor in ax.get_title(loc="left") and "true state" in ax.get_title(loc="left")
        assert [label.get_text() for label in ax.get_yticklabels()] == labels.states[f]
        assert list(integer_ticks(ax)) == list(range(T))
        assert_close(ax.images[0].get_array().data, view.beliefs[f].T)
    for f in controlled:
        ax = found[f"actions/{labels.factors[f]}"]
        assert [label.get_text() for label in ax.get_yticklabels()] == labels.controls[f]
        assert list(integer_ticks(ax)) == list(range(T))
        assert_close(ax.images[0].get_array().data, view.action_probabilities[f].T)
        marked = ax.lines[0].get_ydata()
        assert list(marked) == list(view.actions[:, f])  # the chosen actions circled
    for m, modality in enumerate(labels.modalities):
        ax = found[f"outcomes/{modality}"]
        assert [label.get_text() for label in ax.get_yticklabels()] == labels.outcomes[m]
        assert list(ax.lines[0].get_ydata()) == list(view.observations[:, m])

    # colorbars: beside their panels, spanning them, saying which they serve, same scale
    for key, prefixes, words in (
        ("colorbar/probability", ("states/", "actions/"), "hidden-state and action panels"),
        ("colorbar/preference", ("outcomes/",), "outcome panels"),
    ):
        bar = found[key]
        served = [ax for label, ax in found.items() if label.startswith(prefixes)]
        assert words in bar.get_ylabel()
        box = bar.get_position()
        right = max(ax.get_position().x1 for ax in served)
        assert 0 <= box.x0 - right < 0.06, "the colorbar sits right beside its panels"
        assert box.y0 <= min(ax.get_position().y0 for ax in served) + 0.01
        assert box.y1 >= max(ax.get_position().y1 for ax in served) - 0.01
        others = [ax for label, ax in found.items() if label.startswith(("policies/t", "efe"))]
        assert all(ax.get_position().y1 <= box.y0 + 0.01 for ax in others)
        (colorbar,) = [ax.images[0].colorbar for ax in served if ax.images[0].colorbar]
        assert colorbar.ax is bar
        for ax in served:
            assert ax.images[0].get_clim() == colorbar.mappable.get_clim()
            assert ax.images[0].get_cmap().name == colorbar.mappable.get_cmap().name

    # q(pi): named policies at integer positions; the rest counted
    for t in range(T - 1):
        ax = found[f"policies/t={t}"]
        names = [label.get_text().replace("\n", " ") for label in ax.get_yticklabels()]
        ticks = integer_ticks(ax, "y")
        assert list(ticks) == list(range(len(names)))
        P = len(view.policy_posterior[t])
        assert f"{P} policies" in ax.get_title()
        assert view.policy_labels[t][view.chosen[t]] in names
        if P > 8:
            assert names[-1] == f"{P - 8} other policies (sum)"
            assert len(names) == 9
        else:
            assert sorted(names) == sorted(view.policy_labels[t])
        assert_close(sum(bar.get_width() for bar in ax.patches), 1.0)

    ax = found["efe"]
    assert "G = risk + ambiguity" in ax.get_title(loc="left")
    assert list(integer_ticks(ax)) == list(range(T))
    legend = found["efe/legend"].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == [
        "G",
        "risk",
        "ambiguity",
        "epistemic",
        "pragmatic",
        "novelty",
    ]
    assert "precision $\\gamma$ = 1, held fixed" in figure.get_suptitle()


def test_trial_figure_with_two_policies(records):
    """Reversal: 2 policies, so the q(pi) panel has ticks at 0 and 1 only, named."""
    task, record = records["reversal"]
    figure = plot_trial(record, task.labels)
    figure.canvas.draw()
    ax = panels(figure)["policies/t=0"]
    assert list(ax.get_yticks()) == [0, 1]
    assert sorted(label.get_text() for label in ax.get_yticklabels()) == [
        "pull left",
        "pull right",
    ]


def test_trial_figure_of_a_task_not_found_by_name_needs_the_task(records):
    task, record = records["tmaze"]
    record = record.copy()
    record.attrs["task"] = "my_own_maze"
    with pytest.raises(ValueError, match="pass task="):
        plot_trial(record)
    figure = plot_trial(record, task=task)
    assert "policies/t=0" in panels(figure)


@pytest.mark.parametrize(("name", "trials"), [("tmaze", 3), ("reversal", 3), ("foraging", 1)])
def test_agents_figure(records, name, trials):
    task, record = records[name]
    record = record.isel(trial=slice(0, trials))
    labels = task.labels
    figure = plot_agents(record, labels)
    check_layout(figure)
    found = panels(figure)
    T = record.sizes["time"]
    controlled = [f for f, names in enumerate(labels.controls) if len(names) > 1]
    choices = {f"choices/{labels.factors[f]}/t={t}" for f in controlled for t in range(T - 1)}
    legends = {f"choices/{labels.factors[f]}/legend" for f in controlled}
    assert choices | legends <= set(found)
    for f in controlled:
        legend = found[f"choices/{labels.factors[f]}/legend"].get_legend()
        assert [text.get_text() for text in legend.get_texts()] == labels.controls[f]
        assert "Wilson 95%" in legend.get_title().get_text()
    assert "accuracy/within" in found
    assert ("reward" in found) == ("reward" in record)
    hidden = (record["belief_accuracy"].values < 1 - 1e-9).any((0, 1, 2))
    assert ("accuracy/trials" in found) == (trials > 1 and hidden.any())
    N = record.sizes["agent"]
    for f in controlled:
        for t in range(T - 1):
            ax = found[f"choices/{labels.factors[f]}/t={t}"]
            assert set(integer_ticks(ax)) <= set(range(trials))
            assert ax.get_xlabel() == "trial"
            if trials > 1:
                for u, line in enumerate(ax.lines):
                    rate = (record["action"].values[:, :, t, f] == u).mean(0)
                    assert_close(line.get_ydata(), rate)
                    assert line.get_label() == labels.controls[f][u]
    within = found["accuracy/within"]
    assert list(integer_ticks(within)) == list(range(T))
    lines = within.lines
    assert [line.get_label() for line in lines] == [
        labels.factors[f] for f in np.flatnonzero(hidden)
    ]
    for line, f in zip(lines, np.flatnonzero(hidden), strict=True):
        expected = record["belief_accuracy"].values[..., f].reshape(-1, T).mean(0)
        assert_close(line.get_ydata(), expected)
    if "accuracy/trials" in found:
        assert set(integer_ticks(found["accuracy/trials"])) <= set(range(trials))
    assert f"{N} agents" in figure.get_suptitle()


@pytest.mark.parametrize("n", [1, 7, 40])
def test_wilson_interval_equals_scipys(n):
    successes = np.arange(n + 1)
    low, high = wilson_interval(successes, n, 0.9)
    for k in successes:
        expected = binomtest(int(k), n).proportion_ci(0.9, method="wilson")
        assert_close([low[k], high[k]], [expected.low, expected.high], msg=f"k={k}")


def test_a_sophisticated_agents_figure_says_what_its_G_is():
    import dataclasses

    import pp_aif
    from pp_aif.plots import plot_trial

    task = pp_aif.load_task("tmaze")
    settings = dataclasses.replace(task.settings, planner="sophisticated")
    figure = plot_trial(pp_aif.simulate(task, 1, 1, seed=0, settings=settings))
    titles = [ax.get_title(loc="left") for ax in figure.axes]
    assert any("sophisticated recursion's" in title for title in titles)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------
# the plan tree of one sophisticated decision


def _plan(threshold=1 / 16):
    from pp_aif.planning.sophisticated import sophisticated_scores

    task = load_task("tmaze")
    beliefs = [d[None] for d in task.model.D]
    scores = sophisticated_scores(
        task.model, beliefs, depth=3, keep_tree=True, action_threshold=threshold
    )
    return task, scores


def test_the_plan_tree_shows_beliefs_actions_and_outcomes_without_overlap():
    from pp_aif.plots import plot_plan_tree

    task, scores = _plan()
    figure = plot_plan_tree(scores, task.labels, task.model.num_states, levels=2)
    ax = panels(figure)["plan tree"]
    texts = [t for t in ax.texts if t.get_text()]
    q_u = scores.tree[0].q_u[scores.root[0]]
    cue = int(np.argmax(q_u.numpy()))
    assert cue == 3  # the T-maze's first sophisticated choice: go to the cue
    names = [t.get_text() for t in texts]
    assert f"go to cue\nq(u) = {q_u[cue]:.2f}, G = {scores.G[0, cue]:.2f}" in names
    # the root's belief, and the two cue outcomes, each of probability 1/2
    assert "location: start\ncontext: reward-left 0.50 / reward-right 0.50" in names
    cue_outcomes = [n for n in names if "cue-says" in n]
    assert len(cue_outcomes) == 2 and all("q(o|u) = 0.50" in n for n in cue_outcomes)
    # one box per node drawn: the root, 4 actions, and each expanded branch's child
    branches = scores.tree[0].branches[0]
    assert sum("location:" in n for n in names) == 1 + len(branches)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    boxes = [t.get_bbox_patch().get_window_extent(renderer) for t in texts]
    for (a, box_a), (b, box_b) in itertools.combinations(zip(names, boxes, strict=True), 2):
        assert not boxes_overlap(box_a, box_b), f"{a!r} overlaps {b!r}"
    whole = figure.bbox
    for name, box in zip(names, boxes, strict=True):
        assert whole.x0 - 1 <= box.x0 and box.x1 <= whole.x1 + 1, f"{name!r} leaves the figure"


def test_the_plan_tree_marks_pruned_actions_and_needs_the_tree():
    from pp_aif.plots import plot_plan_tree

    task, scores = _plan(threshold=0.3)
    expanded = scores.tree[0].expanded[scores.root[0]]
    assert not expanded.all()  # some first actions were pruned at this threshold
    figure = plot_plan_tree(scores, task.labels, task.model.num_states, levels=2)
    stubs = [t.get_text() for t in panels(figure)["plan tree"].texts if "pruned" in t.get_text()]
    assert stubs and stubs[0].startswith(f"{int((~expanded).sum())} pruned")
    dashed = [line for line in panels(figure)["plan tree"].lines if line.get_linestyle() == "--"]
    assert dashed
    without = dataclasses.replace(scores, tree=None)
    with pytest.raises(ValueError, match="keep_tree=True"):
        plot_plan_tree(without, task.labels, task.model.num_states)


def test_recovery_titles_stay_inside_their_figure():
    """A long parameter name and both numbers: every title within the figure's width."""
    from pp_aif.plots import plot_recovery

    rng = np.random.default_rng(0)
    truth = {name: rng.lognormal(size=20) for name in ("alpha", "learning_rate")}
    draws = {name: value * rng.lognormal(0, 0.3, size=(50, 20)) for name, value in truth.items()}
    figure = plot_recovery(truth, draws)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for ax in figure.axes:
        box = ax.title.get_window_extent(renderer)
        assert ax.get_title().startswith(("alpha\nr(log) = ", "learning_rate\nr(log) = "))
        assert figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1, ax.get_title()

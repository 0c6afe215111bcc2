"""Figures. Each function takes results and returns a matplotlib Figure; the caller saves it.

Dimension symbols: N agents, K trials, T steps of a trial, F factors (S_f states, U_f controls),
M modalities (O_m outcomes), P_t the policies planned over at step t (H_t steps deep).

The trial figure (:func:`plot_trial`, after SPM's ``spm_MDP_VB_trial``) and the figure of many
agents (:func:`plot_agents`) read the record of ``pp_aif.simulate``: observation (N, K, T, M),
action (N, K, T, F), true_state (N, K, T, F), belief_<factor> (N, K, T, S_f),
belief_accuracy (N, K, T, F), policy_posterior and G's terms (N, K, T, P), NaN beyond a step's
P_t. The record holds no action probabilities: :func:`action_probabilities_of` derives them
from q(pi) as the agent does, exactly. Each panel carries a label (``Axes.get_label()``) naming
what it shows, so code and tests can find it.
"""

from __future__ import annotations

import dataclasses
import textwrap
from statistics import NormalDist
from typing import NamedTuple

import matplotlib
import numpy as np
import torch
import xarray as xr

matplotlib.use("Agg")  # no display needed; figures are written to files
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pp_aif.agent import AgentSettings, policies_at  # noqa: E402
from pp_aif.inference.states import Beliefs  # noqa: E402
from pp_aif.planning import action_marginals, action_probabilities  # noqa: E402
from pp_aif.simulation import TERMS, policy_labels, recorded_settings  # noqa: E402
from pp_aif.task import Labels, Task, load_task  # noqa: E402

__all__ = [
    "plot_state_beliefs",
    "plot_trial",
    "plot_agents",
    "trial_view",
    "TrialView",
    "action_probabilities_of",
    "wilson_interval",
    "plot_recovery",
    "plot_choice_rates",
    "plot_model_selection",
    "plot_plan_tree",
]


def plot_state_beliefs(
    filtering: Beliefs, smoothing: Beliefs, labels: Labels, observations, title: str = ""
) -> Figure:
    """Heat maps of q(s_f,t) for each factor, filtering (left) beside smoothing (right).

    filtering, smoothing : Beliefs of one unbatched sequence; observations : int (T, M).
    """
    F = len(filtering.marginals)
    T = filtering.marginals[0].shape[-2]
    figure, axes = plt.subplots(
        F,
        2,
        figsize=(
            2.6 + 1.3 * T,
            1.1 + 1.3 * F + 0.35 * sum(q.shape[-1] for q in filtering.marginals),
        ),
        squeeze=False,
        constrained_layout=True,
    )
    ticks = [
        f"t={t}\n"
        + "\n".join(
            labels.outcomes[m][int(observations[t, m])] for m in range(len(labels.modalities))
        )
        for t in range(T)
    ]
    for f in range(F):
        for column, (beliefs, name) in enumerate(
            ((filtering, "filtering q(s_t | o_1:t)"), (smoothing, "smoothing q(s_t | o_1:T)"))
        ):
            ax = axes[f, column]
            q = beliefs.marginals[f].detach().cpu().numpy().T
            image = ax.imshow(q, vmin=0, vmax=1, cmap="Greys", aspect="auto")
            for (s, t), value in np.ndenumerate(q):
                ax.text(
                    t,
                    s,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > 0.5 else "black",
                )
            ax.set_yticks(range(q.shape[0]), labels.states[f])
            ax.set_xticks(
                range(T), ticks if f == F - 1 else [f"t={t}" for t in range(T)], fontsize=7
            )
            ax.set_title(f"{labels.factors[f]}: {name}", fontsize=9)
        figure.colorbar(image, ax=axes[f, :], shrink=0.8, label="probability")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _resolve(dataset, task: Task | None, settings: AgentSettings | None):
    """(task, settings, where the settings come from): the task named by the record where none
    is given; the settings given, else the record's, else the task's."""
    if task is None:
        name = dataset.attrs.get("task")
        try:
            task = load_task(str(name))
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(
                f"the record's task {name!r} cannot be loaded by name ({error}); pass task= "
                "(the pp_aif.Task the record was simulated with)"
            ) from None
    if settings is not None:
        return task, settings, "given"
    recorded = recorded_settings(dataset)
    if recorded is not None:
        return task, recorded, "the record's"
    return task, task.settings or AgentSettings(), "the task's (the record's could not be read)"


def _per_agent(value, agent: int | None = None):
    """A setting that may be a (N, 1) tensor: as (N, 1, 1) for a (N, K, U) batch, or the
    agent's own float."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        if agent is not None:
            return float(value.reshape(-1)[agent])
        return value.detach().cpu().to(torch.float64).reshape(-1, 1, 1)
    return float(value) if agent is not None else value


def action_probabilities_of(
    dataset: xr.Dataset, task: Task | None = None, settings: AgentSettings | None = None
) -> list[xr.DataArray]:
    """p(u_f) of every agent, trial and step, derived from the record's q(pi) exactly as the
    agent derives them (``pp_aif.agent.step``):

        p(u_f,t) = softmax_u(alpha ln sum_pi q_t(pi) [pi_0,f = u])

    with the policies of step t from ``pp_aif.agent.policies_at(model, settings, t, T)``
    (``pp_aif.planning.action_marginals`` and ``action_probabilities``). Exact, not an
    approximation: the agent computes the same numbers from the same q(pi) (tested against
    ``agent.step``).

    task : the record's Task (default: loaded by the name in ``dataset.attrs["task"]``).
    settings : the agent's (default: the record's, ``pp_aif.simulation.recorded_settings``, else
        the task's).
    A ValueError where a step's policies do not match the record's policy axis (other settings).

    Returns F DataArrays (agent, trial, time, control_<factor>), NaN at the last step.
    """
    task, settings, source = _resolve(dataset, task, settings)
    model = task.model
    posterior = dataset["policy_posterior"].values  # (N, K, T, P), NaN beyond a step's P_t
    N, K, T = posterior.shape[:3]
    alpha = _per_agent(settings.action_precision)
    result = [np.full((N, K, T, U), np.nan) for U in model.num_controls]
    for t in range(T - 1):
        policies, _ = policies_at(model, settings, t, T)
        P = int(policies.shape[0])
        finite = np.isfinite(posterior[:, :, t]).all((0, 1))
        if posterior.shape[-1] < P or not finite[:P].all() or finite[P:].any():
            raise ValueError(
                f"policy_posterior at step {t}: the record has {int(finite.sum())} policies, "
                f"the agent with {source} settings plans over {P}; pass the settings the record "
                "was simulated with (settings=)"
            )
        q = torch.as_tensor(posterior[:, :, t, :P], dtype=model.dtype, device=policies.device)
        marginals = action_marginals(q, policies, model.num_controls)
        for f, p in enumerate(action_probabilities(marginals, alpha)):
            result[f][:, :, t] = p.detach().cpu().numpy()
    labels = task.labels
    return [
        xr.DataArray(
            values,
            dims=("agent", "trial", "time", f"control_{name}"),
            coords={
                "agent": dataset["agent"].values,
                "trial": dataset["trial"].values,
                "time": dataset["time"].values,
                f"control_{name}": labels.controls[f],
            },
            name=f"action_probability_{name}",
        )
        for f, (name, values) in enumerate(zip(labels.factors, result, strict=True))
    ]


class TrialView(NamedTuple):
    """One trial of one agent, as :func:`plot_trial` shows it (T steps, F factors, M
    modalities; P_t policies of H_t steps at step t).

    beliefs : F arrays (T, S_f), q(s_t | o_<=t); true_states : int (T, F);
    observations : int (T, M); actions : int (T-1, F);
    action_probabilities : F arrays (T-1, U_f), p(u_t) (:func:`action_probabilities_of`);
    policies : T-1 int arrays (P_t, H_t, F); policy_posterior : T-1 arrays (P_t,), q_t(pi);
    policy_labels : T-1 lists of P_t names (``pp_aif.simulation.policy_labels``);
    chosen : int (T-1,), the chosen policy of each step: the most probable of those that begin
        with the action taken;
    terms : {"G", "risk", "ambiguity", "epistemic", "pragmatic", "novelty": (T-1,)}, the chosen
        policy's, in nats;
    preferences : M arrays (O_m, T), ln p~(o_t) = log_softmax(C_m) (NaN past C's last time);
    settings : AgentSettings; settings_source : where they come from.
    """

    beliefs: list[np.ndarray]
    true_states: np.ndarray
    observations: np.ndarray
    actions: np.ndarray
    action_probabilities: list[np.ndarray]
    policies: list[np.ndarray]
    policy_posterior: list[np.ndarray]
    policy_labels: list[list[str]]
    chosen: np.ndarray
    terms: dict[str, np.ndarray]
    preferences: list[np.ndarray]
    settings: AgentSettings
    settings_source: str


def trial_view(
    dataset: xr.Dataset,
    agent: int = 0,
    trial: int = 0,
    *,
    task: Task | None = None,
    settings: AgentSettings | None = None,
    labels: Labels | None = None,
) -> TrialView:
    """What :func:`plot_trial` draws, as arrays (see :class:`TrialView`). Defaults as in
    :func:`action_probabilities_of`; labels default to the task's."""
    task, settings, source = _resolve(dataset, task, settings)
    return _view(dataset, agent, trial, task, settings, source, labels or task.labels)


def _view(dataset, agent, trial, task, settings, source, labels) -> TrialView:
    model = task.model
    record = dataset.isel(agent=agent, trial=trial)
    T = record.sizes["time"]
    own = settings  # with one alpha per agent, this agent's
    if isinstance(settings.action_precision, torch.Tensor) and settings.action_precision.dim():
        own = dataclasses.replace(
            settings, action_precision=_per_agent(settings.action_precision, agent)
        )
    probabilities = action_probabilities_of(dataset.isel(agent=[agent], trial=[trial]), task, own)
    actions = record["action"].values[: T - 1]
    policies, posteriors, names, chosen = [], [], [], []
    terms = {name: np.full(T - 1, np.nan) for name in TERMS}
    for t in range(T - 1):
        step_policies = policies_at(model, settings, t, T)[0].cpu().numpy()
        P = step_policies.shape[0]
        q = record["policy_posterior"].values[t, :P]
        begins = (step_policies[:, 0, :] == actions[t]).all(-1)
        best = int(np.argmax(np.where(begins, q, -np.inf)))
        for name in TERMS:
            terms[name][t] = record[name].values[t, best]
        policies.append(step_policies)
        posteriors.append(q)
        names.append(policy_labels(step_policies, labels))
        chosen.append(best)
    preferences = []
    for c in model.C:
        c = c.detach().cpu().to(torch.float64)
        values = np.full((c.shape[0], T), np.nan)
        if c.dim() == 1:
            values[:] = torch.log_softmax(c, 0).numpy()[:, None]
        else:
            known = min(T, c.shape[1])
            values[:, :known] = torch.log_softmax(c[:, :known], 0).numpy()
        preferences.append(values)
    return TrialView(
        beliefs=[record[f"belief_{name}"].values for name in labels.factors],
        true_states=record["true_state"].values,
        observations=record["observation"].values,
        actions=actions,
        action_probabilities=[p.values[0, 0, : T - 1] for p in probabilities],
        policies=policies,
        policy_posterior=posteriors,
        policy_labels=names,
        chosen=np.asarray(chosen, dtype=np.int64),
        terms=terms,
        preferences=preferences,
        settings=settings,
        settings_source=source,
    )


#: marker of the true state, the chosen action and the observed outcome in the heat maps
_MARK = {"marker": "o", "markerfacecolor": "none", "markeredgecolor": "tab:red", "ls": "none"}
#: the bars of q(pi): the chosen policy, others that begin with the action taken, the rest
_POLICY_COLOURS = {"chosen": "tab:red", "begins": "#f4a6a6", "other": "0.6"}
#: the terms of G in the trial figure's bar panel, and their colours
_TERM_COLOURS = {
    "G": "black",
    "risk": "tab:red",
    "ambiguity": "tab:orange",
    "epistemic": "tab:blue",
    "pragmatic": "tab:green",
    "novelty": "tab:purple",
}


def _heat_map(ax, values, *, cmap, vmin, vmax, annotate: bool):
    """values (rows, columns) as an image; each cell's value written in it where annotated."""
    image = ax.imshow(
        values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest"
    )
    if annotate:
        for (row, column), value in np.ndenumerate(values):
            if not np.isfinite(value):
                continue
            red, green, blue, _ = image.cmap(image.norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.text(
                column,
                row,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=6.5,
                color="white" if dark else "black",
            )
    return image


def _time_axis(ax, T: int, *, labels: bool = True):
    """Integer steps t = 0..T-1 on the x axis, the same limits in every panel of the trial."""
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_xticks(range(T), [f"t={t}" for t in range(T)] if labels else [])


def plot_trial(
    dataset: xr.Dataset,
    labels: Labels | None = None,
    agent: int = 0,
    trial: int = 0,
    *,
    task: Task | None = None,
    settings: AgentSettings | None = None,
    top: int = 8,
) -> Figure:
    """One trial of one agent, after SPM's ``spm_MDP_VB_trial``.

    Parameters
    ----------
    dataset : the record of ``pp_aif.simulate``
    labels : names (default: the task's)
    agent, trial : which one to show
    task : the Task the record was simulated with (default: loaded by the record's name)
    settings : the agent's settings (default: the record's, else the task's); the action
        probabilities and the policies of each step depend on them
    top : at most this many policies per step by name; the rest are summed in one bar

    Panels, top to bottom, each found by its ``Axes.get_label()``:

    - ``states/<factor>``: q(s_t | o_<=t), the agent's beliefs (S_f x T), true state circled;
    - ``actions/<factor>`` (factors with more than one control): p(u_t) (U_f x T-1), derived
      exactly as the agent does (:func:`action_probabilities_of`), the chosen action circled;
    - ``outcomes/<modality>``: the preferences ln p~(o_t) = log_softmax(C_m) (O_m x T), the
      observed outcome circled;
    - ``policies/t=<t>``: q(pi) at each step over that step's policies (their number and depth
      change as the trial's end nears), named by their actions; the chosen policy (the most
      probable of those beginning with the action taken) in red;
    - ``efe``: G and its terms for each step's chosen policy, G = risk + ambiguity
      = -(epistemic + pragmatic), novelty apart; the legend outside the axes.

    One colorbar (``colorbar/probability``) serves the state and action panels, another
    (``colorbar/preference``) the outcome panels; each says which panels it serves.

    Precision: this agent holds gamma fixed (``AgentSettings`` refuses ``infer_precision``: its
    policies share the trial's past, so SPM's update would leave gamma where it starts), so
    there is no precision panel: gamma and alpha are written in the title.
    """
    task, settings, source = _resolve(dataset, task, settings)
    labels = labels or task.labels
    view = _view(dataset, agent, trial, task, settings, source, labels)
    T = view.true_states.shape[0]
    F, M = len(labels.factors), len(labels.modalities)
    controlled = [f for f in range(F) if len(labels.controls[f]) > 1]
    steps = T - 1
    longest = max((len(n) for names in view.policy_labels for n in names), default=10)
    columns = max(2, min(steps, 4 if longest > 12 else 6))
    policy_rows = -(-steps // columns)
    shown = [min(top, len(q)) + (len(q) > top) for q in view.policy_posterior]
    annotate = T <= 12

    heights = (
        [0.9 + 0.3 * len(labels.states[f]) for f in range(F)]
        + [0.9 + 0.3 * len(labels.controls[f]) for f in controlled]
        + [0.9 + 0.3 * len(labels.outcomes[m]) for m in range(M)]
        + [1.0 + 0.24 * max(shown, default=1)] * policy_rows
        + [2.6]
    )
    width = max(9.0, 3.0 + 1.05 * T, 2.5 + columns * (1.6 + 0.055 * min(longest, 40)))
    figure = plt.figure(figsize=(width, sum(heights) + 1.0), layout="constrained")
    # column 0: the panels; column 1: the colorbars and legends, each beside its panels
    grid = figure.add_gridspec(len(heights), 2, height_ratios=heights, width_ratios=[1, 0.018])
    row = 0
    image = None
    for f, name in enumerate(labels.factors):
        ax = figure.add_subplot(grid[row, 0])
        row += 1
        ax.set_label(f"states/{name}")
        image = _heat_map(
            ax, view.beliefs[f].T, cmap="Greys", vmin=0.0, vmax=1.0, annotate=annotate
        )
        ax.plot(range(T), view.true_states[:, f], markersize=22, markeredgewidth=1.5, **_MARK)
        ax.set_yticks(range(len(labels.states[f])), labels.states[f], fontsize=7)
        _time_axis(ax, T)
        ax.set_title(
            rf"Hidden states: {name}, $q(s_t \mid o_{{\leq t}})$ (red circle: true state)",
            fontsize=9,
            loc="left",
        )
    for f in controlled:
        name = labels.factors[f]
        ax = figure.add_subplot(grid[row, 0])
        row += 1
        ax.set_label(f"actions/{name}")
        image = _heat_map(
            ax,
            view.action_probabilities[f].T,
            cmap="Greys",
            vmin=0.0,
            vmax=1.0,
            annotate=annotate,
        )
        ax.plot(range(steps), view.actions[:, f], markersize=22, markeredgewidth=1.5, **_MARK)
        ax.set_yticks(range(len(labels.controls[f])), labels.controls[f], fontsize=7)
        _time_axis(ax, T)
        ax.axvspan(T - 1.5, T - 0.5, color="0.93", zorder=0)
        ax.text(
            T - 1,
            (len(labels.controls[f]) - 1) / 2,
            "no action\nat the\nlast step",
            ha="center",
            va="center",
            fontsize=7,
            color="0.4",
        )
        ax.set_title(
            rf"Actions: {name}, $p(u_t) = \sigma(\alpha \ln \sum_\pi q(\pi)[\pi_t = u])$ "
            "(red circle: chosen)",
            fontsize=9,
            loc="left",
        )
    colorbar = figure.colorbar(image, cax=figure.add_subplot(grid[:row, 1]))
    colorbar.ax.set_label("colorbar/probability")
    colorbar.set_label("probability (hidden-state and action panels)", fontsize=8)

    finite = np.concatenate([p[np.isfinite(p)] for p in view.preferences])
    low = float(finite.min()) if finite.size else -1.0
    low = min(low, -float(np.log(max(len(names) for names in labels.outcomes))) - 2.0)
    first = row
    for m, name in enumerate(labels.modalities):
        ax = figure.add_subplot(grid[row, 0])
        row += 1
        ax.set_label(f"outcomes/{name}")
        image = _heat_map(
            ax, view.preferences[m], cmap="Blues_r", vmin=low, vmax=0.0, annotate=annotate
        )
        ax.plot(range(T), view.observations[:, m], markersize=22, markeredgewidth=1.5, **_MARK)
        ax.set_yticks(range(len(labels.outcomes[m])), labels.outcomes[m], fontsize=7)
        _time_axis(ax, T)
        ax.set_title(
            rf"Outcomes: {name}, preferences $\ln \tilde p(o_t)$ = log_softmax(C) "
            "(red circle: observed)",
            fontsize=9,
            loc="left",
        )
    colorbar = figure.colorbar(image, cax=figure.add_subplot(grid[first:row, 1]))
    colorbar.ax.set_label("colorbar/preference")
    colorbar.set_label(r"$\ln \tilde p(o)$ in nats (outcome panels)", fontsize=8)

    first = row
    for r in range(policy_rows):
        cells = grid[row, 0].subgridspec(1, columns, wspace=0.05)
        row += 1
        for c in range(columns):
            t = r * columns + c
            if t < steps:
                _policy_panel(figure.add_subplot(cells[c]), view, t, top)
    key = figure.add_subplot(grid[first:row, 1])
    key.set_label("policies/legend")
    key.axis("off")
    key.legend(
        handles=[
            Patch(facecolor=_POLICY_COLOURS["chosen"], edgecolor="0.3", label="chosen policy"),
            Patch(facecolor=_POLICY_COLOURS["begins"], edgecolor="0.3", label="same first action"),
            Patch(facecolor=_POLICY_COLOURS["other"], edgecolor="0.3", label="other"),
            Patch(facecolor="white", edgecolor="0.3", hatch="///", label="the rest, summed"),
        ],
        loc="center left",
        bbox_to_anchor=(0.0, 0.5),
        fontsize=7,
        frameon=False,
        title="q(π) panels",
        title_fontsize=7,
    )
    ax = figure.add_subplot(grid[row, 0])
    ax.set_label("efe")
    _efe_panel(ax, view, T)
    _legend_beside(figure, grid[row, 1], ax, "efe/legend", "term of G\n(panel at left)")

    gamma = _per_agent(view.settings.policy_precision, agent)
    alpha = _per_agent(view.settings.action_precision, agent)
    name = dataset.attrs.get("task", task.name)
    figure.suptitle(
        f"{name}: agent {agent}, trial {trial}\n"
        rf"policy precision $\gamma$ = {gamma:g}, held fixed (this agent does not infer it); "
        rf"action precision $\alpha$ = {alpha:g} ({view.settings_source} settings)",
        fontsize=10,
    )
    return figure


def _policy_panel(ax, view: TrialView, t: int, top: int):
    """q(pi) at step t: the ``top`` most probable policies by name, the rest in one bar."""
    q = view.policy_posterior[t]
    names = view.policy_labels[t]
    H = view.policies[t].shape[1]
    order = np.argsort(-q, kind="stable")[:top]
    begins = (view.policies[t][:, 0, :] == view.actions[t]).all(-1)
    values = list(q[order])
    tick_labels = [names[p] for p in order]
    colours = [
        _POLICY_COLOURS["chosen" if p == view.chosen[t] else ("begins" if begins[p] else "other")]
        for p in order
    ]
    rest = len(q) - len(order)
    if rest:
        values.append(float(np.delete(q, order).sum()))
        tick_labels.append(f"{rest} other polic{'y' if rest == 1 else 'ies'} (sum)")
        colours.append("white")
    rows = np.arange(len(values))
    bars = ax.barh(rows, values, color=colours, edgecolor="0.3", linewidth=0.5)
    if rest:
        bars[-1].set_hatch("///")
    for y, value in zip(rows, values, strict=True):
        ax.text(value + 0.02, y, f"{value:.2f}", va="center", fontsize=6.5)
    ax.set_yticks(rows, [textwrap.fill(label, 30) for label in tick_labels], fontsize=7)
    ax.set_ylim(len(values) - 0.5, -0.5)
    ax.set_xlim(0, 1.2)
    ax.set_xticks([0, 0.5, 1])
    ax.set_label(f"policies/t={t}")
    ax.set_title(f"q(π) at t={t}\n{len(q)} policies of {H} step{'s' if H > 1 else ''}", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


def _efe_panel(ax, view: TrialView, T: int):
    """G and its terms for each step's chosen policy, grouped by step; legend outside."""
    steps = T - 1
    width = 0.8 / len(TERMS)
    for i, term in enumerate(TERMS):
        ax.bar(
            np.arange(steps) + (i - (len(TERMS) - 1) / 2) * width,
            view.terms[term],
            width,
            color=_TERM_COLOURS[term],
            label=term,
        )
    ax.axhline(0, color="black", linewidth=0.5)
    ticks = [
        f"t={t}\n" + textwrap.fill(view.policy_labels[t][view.chosen[t]], 18) for t in range(steps)
    ]
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_xticks(range(T), ticks + [f"t={T - 1}\n(no policy)"], fontsize=7)
    ax.set_ylabel("nats")
    ax.set_xlabel(
        "step, and its chosen policy: the most probable of those that begin with the action taken",
        fontsize=7,
    )
    removed = [
        term
        for term in ("epistemic", "pragmatic", "novelty")
        if not getattr(view.settings.lesions, term)
    ]
    if view.settings.planner == "sophisticated":
        title = (
            "Expected free energy of the chosen action: G is the sophisticated recursion's (over "
            "actions, outcomes and updated beliefs); its terms are the first step's"
        )
    else:
        title = (
            "Expected free energy of the chosen policy: G = risk + ambiguity = -(epistemic + "
            "pragmatic); q(π) scores G - novelty"
        )
    ax.set_title(
        title + (f" (lesioned: {', '.join(removed)} removed)" if removed else ""),
        fontsize=9,
        loc="left",
    )


def wilson_interval(successes, trials, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson's score interval for a binomial proportion k / n (Wilson 1927, JASA 22(158)):

        (p + z^2 / 2n -+ z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n),

    z the standard normal's (1 + level) / 2 quantile. successes, trials : arrays (broadcast).
    Returns (lower, upper), within [0, 1]; it stays inside [0, 1] and is not empty at k = 0 or
    k = n, unlike the normal approximation.
    """
    z = NormalDist().inv_cdf(0.5 + level / 2)
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    p = k / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z / denominator * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def plot_agents(
    dataset: xr.Dataset,
    labels: Labels,
    *,
    level: float = 0.95,
    columns: int = 4,
) -> Figure:
    """Many agents of one record (``pp_aif.simulate``): what they chose and how well they knew.

    Panels, each found by its ``Axes.get_label()``:

    - ``choices/<factor>/t=<t>``, one per factor with more than one control and decision step t:
      the fraction of the N agents choosing each control at step t, over trials, with Wilson's
      binomial interval (:func:`wilson_interval`, ``level``) as a band;
    - ``accuracy/within``: belief accuracy q(s_t = true state) at each step of a trial, mean over
      agents and trials, with the mean's normal interval (``level``), one line per factor;
    - ``accuracy/trials`` (more than one trial, and a factor the agents do not always know): the
      same at each trial's last step, over trials;
      factors whose state the agents always know (accuracy 1 throughout) are left out, and named;
    - ``reward`` (records with a reward): the fraction of agents rewarded at least once in each
      trial, with Wilson's interval.

    columns : panels per row before wrapping.
    """
    N, K, T = (dataset.sizes[name] for name in ("agent", "trial", "time"))
    F = len(labels.factors)
    controlled = [f for f in range(F) if len(labels.controls[f]) > 1]
    steps = T - 1
    per_row = max(1, min(columns, steps)) if steps else 1
    blocks = [(f, r) for f in controlled for r in range(-(-steps // per_row))]
    accuracy = dataset["belief_accuracy"].values  # (N, K, T, F)
    hidden = [f for f in range(F) if not (accuracy[..., f] >= 1 - 1e-9).all()]
    bottom = 1 + (K > 1 and bool(hidden)) + ("reward" in dataset)
    grid_columns = max(per_row, bottom)
    figure = plt.figure(
        figsize=(2.0 + 3.4 * grid_columns, 1.2 + 2.7 * (len(blocks) + 1)), layout="constrained"
    )
    # the last, narrow column holds the legends, each beside the rows it explains
    grid = figure.add_gridspec(
        len(blocks) + 1, grid_columns + 1, width_ratios=[1] * grid_columns + [0.02]
    )
    trials = dataset["trial"].values
    actions = dataset["action"].values  # (N, K, T, F)
    percent = f"{100 * level:g}%"
    for row, (f, block) in enumerate(blocks):
        name = labels.factors[f]
        for column in range(per_row):
            t = block * per_row + column
            if t >= steps:
                continue
            cell = grid[row, :-1] if per_row == 1 else grid[row, column]
            ax = figure.add_subplot(cell)
            ax.set_label(f"choices/{name}/t={t}")
            for u, control in enumerate(labels.controls[f]):
                chosen = (actions[:, :, t, f] == u).sum(0)
                low, high = wilson_interval(chosen, N, level)
                colour = f"C{u % 10}"
                if K > 1:
                    ax.fill_between(trials, low, high, color=colour, alpha=0.2, linewidth=0)
                    ax.plot(trials, chosen / N, color=colour, label=control)
                else:
                    x = trials + (u - (len(labels.controls[f]) - 1) / 2) * 0.08
                    rate = chosen / N
                    ax.errorbar(
                        x,
                        rate,
                        yerr=[rate - low, high - rate],
                        fmt="o",
                        color=colour,
                        label=control,
                        capsize=3,
                    )
            ax.set_ylim(-0.02, 1.02)
            _trial_axis(ax, trials)
            if K == 1:
                ax.set_xlim(trials[0] - 0.5, trials[0] + 0.5)
            ax.set_xlabel("trial")
            ax.set_ylabel("fraction of agents")
            ax.set_title(f"{name}: choice at t={t}", fontsize=9)
            if t == steps - 1:  # the factor's last panel: its legend, beside its rows
                rows = [r for r, (g, _) in enumerate(blocks) if g == f]
                _legend_beside(
                    figure,
                    grid[rows[0] : rows[-1] + 1, -1],
                    ax,
                    f"choices/{name}/legend",
                    f"{name}\n(band: Wilson {percent})",
                )
    z = NormalDist().inv_cdf(0.5 + level / 2)
    known = [labels.factors[f] for f in range(F) if f not in hidden]
    note = f"\n(always known, left out: {', '.join(known)})" if known and hidden else ""
    row = len(blocks)
    ax = figure.add_subplot(grid[row, 0])
    ax.set_label("accuracy/within")
    pooled = accuracy.reshape(N * K, T, F)
    for f in hidden:
        mean, half = _mean_interval(pooled[..., f], z)
        ax.fill_between(range(T), mean - half, mean + half, color=f"C{f}", alpha=0.2, lw=0)
        ax.plot(range(T), mean, "o-", color=f"C{f}", label=labels.factors[f])
    if not hidden:
        ax.text(
            0.5,
            0.5,
            "every factor's state is known to the agents\n(q(true state) = 1 throughout)",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=8,
        )
    ax.set_xticks(range(T), [f"t={t}" for t in range(T)])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step of the trial")
    ax.set_ylabel("q(true state)")
    ax.set_title(f"belief accuracy within a trial ({N * K} agent-trials){note}", fontsize=9)
    column = 1
    if K > 1 and hidden:
        ax = figure.add_subplot(grid[row, column])
        column += 1
        ax.set_label("accuracy/trials")
        for f in hidden:
            mean, half = _mean_interval(accuracy[:, :, -1, f], z)
            ax.fill_between(trials, mean - half, mean + half, color=f"C{f}", alpha=0.2, lw=0)
            ax.plot(trials, mean, color=f"C{f}", label=labels.factors[f])
        _trial_axis(ax, trials)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("trial")
        ax.set_ylabel("q(true state) at the last step")
        ax.set_title(f"belief accuracy over trials ({N} agents){note}", fontsize=9)
    if hidden:
        _legend_beside(
            figure,
            grid[row, -1],
            ax,
            "accuracy/legend",
            f"factor\n(band: mean's {percent})",
        )
    if "reward" in dataset:
        ax = figure.add_subplot(grid[row, column])
        ax.set_label("reward")
        rewarded = (dataset["reward"].values > 0).sum(0)  # (K,) agents rewarded in trial k
        low, high = wilson_interval(rewarded, N, level)
        rate = rewarded / N
        if K > 1:
            ax.fill_between(trials, low, high, color="0.5", alpha=0.25, lw=0)
            ax.plot(trials, rate, color="black")
        else:
            ax.errorbar(trials, rate, yerr=[rate - low, high - rate], fmt="o", color="black")
            ax.set_xlim(trials[0] - 0.5, trials[0] + 0.5)
        _trial_axis(ax, trials)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("trial")
        ax.set_ylabel("fraction of agents rewarded")
        ax.set_title(f"rewarded at least once in the trial\n(band: Wilson {percent})", fontsize=9)
    name = dataset.attrs.get("task", "")
    figure.suptitle(f"{name}: {N} agents, {K} trial{'s' if K > 1 else ''}", fontsize=10)
    return figure


def _legend_beside(figure, cell, source, label: str, title: str):
    """The legend of ``source``'s lines in an axes of its own (frame off) in ``cell``."""
    key = figure.add_subplot(cell)
    key.set_label(label)
    key.axis("off")
    key.legend(
        *source.get_legend_handles_labels(),
        loc="center left",
        bbox_to_anchor=(0.0, 0.5),
        fontsize=7,
        frameon=False,
        title=title,
        title_fontsize=7,
    )


def _trial_axis(ax, trials: np.ndarray):
    """Integer ticks on an axis of trials: each trial where there are few, else a sparser
    integer locator (never a fractional trial)."""
    if len(trials) <= 10:
        ax.set_xticks(trials)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mean_interval(values, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the first axis and z standard errors of it (0 with one value)."""
    n = values.shape[0]
    mean = values.mean(0)
    spread = values.std(0, ddof=1) if n > 1 else np.zeros_like(mean)
    return mean, z * spread / np.sqrt(n)


def plot_recovery(truth: dict, draws: dict) -> Figure:
    """True parameters against posterior means with central 90% intervals, one panel each.

    truth : {name: (N,) true values}; draws : {name: (S, N) posterior draws}. Log axes (the
    parameters are positive); truths outside their interval are drawn in red.
    """
    names = list(truth)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        true, samples = np.asarray(truth[name]), np.asarray(draws[name])
        mean = samples.mean(0)
        low, high = np.quantile(samples, [0.05, 0.95], axis=0)
        inside = (true >= low) & (true <= high)
        ax.errorbar(true, mean, yerr=[mean - low, high - mean], fmt="none", ecolor="0.75")
        ax.scatter(true[inside], mean[inside], s=14, label="truth inside 90% interval")
        ax.scatter(true[~inside], mean[~inside], s=14, color="C3", label="outside")
        edges = [min(true.min(), low.min()), max(true.max(), high.max())]
        ax.plot(edges, edges, "k--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel("posterior mean (90% interval)")
        r = np.corrcoef(np.log(true), np.log(samples).mean(0))[0, 1]
        ax.set_title(  # two lines: a long name and both numbers fit the panel
            f"{name}\nr(log) = {r:.2f}, 90% coverage = {inside.mean():.2f}", fontsize=10
        )
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_choice_rates(observed: dict, predicted: dict, *, title: str = "") -> Figure:
    """Choice rates per block of trials: the data's (points) against the posterior predictive's
    90% band and mean (lines). observed : {label: (blocks,)}; predicted : {label: (draws,
    blocks)} (each draw's rate over the group)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, label in enumerate(observed):
        rates = np.asarray(predicted[label])
        blocks = np.arange(1, rates.shape[-1] + 1)
        low, high = np.quantile(rates, [0.05, 0.95], axis=0)
        ax.fill_between(blocks, low, high, color=f"C{i}", alpha=0.25)
        ax.plot(blocks, rates.mean(0), color=f"C{i}", label=f"{label}: predicted (90% band)")
        ax.plot(blocks, observed[label], "o", color=f"C{i}", label=f"{label}: data")
    ax.set_xticks(np.arange(1, np.asarray(next(iter(predicted.values()))).shape[-1] + 1))
    ax.set_xlabel("block of trials")
    ax.set_ylabel("choice rate")
    ax.set_ylim(0, 1)
    ax.set_title(title or "posterior predictive check")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_model_selection(names: list[str], result) -> Figure:
    """Random-effects BMS: expected model frequencies (with the Dirichlet's central 90%
    intervals) and exceedance / protected exceedance probabilities, per model."""
    alpha = np.asarray(result.alpha)
    total = alpha.sum()
    draws = np.random.default_rng(0).dirichlet(alpha, size=20_000)
    low, high = np.quantile(draws, [0.05, 0.95], axis=0)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(names), 3.6))
    mean = alpha / total
    axes[0].bar(x, mean, color="C0")
    axes[0].errorbar(x, mean, yerr=[mean - low, high - mean], fmt="none", ecolor="k")
    axes[0].set_ylabel("model frequency r (90% interval)")
    axes[0].set_ylim(0, 1)
    width = 0.38
    axes[1].bar(x - width / 2, result.exceedance, width, label="exceedance", color="C1")
    axes[1].bar(x + width / 2, result.protected_exceedance, width, label="protected", color="C2")
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("probability of being the most frequent")
    axes[1].set_title(f"Bayesian omnibus risk {result.bor:.3f}", fontsize=10)
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(x, names, rotation=20)
    fig.tight_layout()
    return fig


class _PlanNode(NamedTuple):
    """A node of the drawn plan tree: a belief (kind "belief"), an action ("action"), or the
    actions left out at a node ("pruned")."""

    kind: str
    text: str
    children: tuple  # (edge label, _PlanNode) pairs
    weight: float  # the edge into it: q(u) for an action, q(o | u) for a belief


def _belief_text(belief: np.ndarray, labels: Labels, state_shape: tuple[int, ...]) -> str:
    """Each factor's plausible states (q >= 0.1) and their probabilities, one line a factor."""
    joint = belief.reshape(state_shape)
    lines = []
    for f, name in enumerate(labels.factors):
        if state_shape[f] == 1:
            continue
        others = tuple(d for d in range(len(state_shape)) if d != f)
        marginal = joint.sum(others) if others else joint
        shown = [s for s in np.argsort(-marginal) if marginal[s] >= 0.1]
        if len(shown) == 1 and marginal[shown[0]] > 0.999:
            lines.append(f"{name}: {labels.states[f][shown[0]]}")
        else:
            parts = " / ".join(f"{labels.states[f][s]} {marginal[s]:.2f}" for s in shown)
            lines.append(f"{name}: {parts}")
    return "\n".join(lines)


def _joint_names(index: int, names: list[list[str]], sizes: list[int]) -> str:
    """The name of a joint index (row-major over the lists), leaving out lists of one name."""
    picked = np.unravel_index(index, sizes)
    return ", ".join(names[i][k] for i, k in enumerate(picked) if sizes[i] > 1)


def plot_plan_tree(
    scores,
    labels: Labels,
    state_shape,
    *,
    agent: int = 0,
    levels: int = 2,
    action_threshold: float | None = 1 / 16,
    title: str = "",
) -> Figure:
    """The search tree of one sophisticated decision (Friston et al. 2021), as a figure.

    scores : ``pp_aif.planning.sophisticated_scores(..., keep_tree=True)``; labels : the task's
    names; state_shape : (S_1, ..., S_F); agent : whose decision; levels : how many action
    levels to draw (at most the search's depth); action_threshold : the actions listed at the
    deepest drawn level have q(u) above it (the others are summed in one line).

    Belief nodes (blue boxes) show each factor's plausible states, and at the deepest drawn
    level their actions too; an action (orange box) shows q(u | belief) and G(u | belief), its
    branch wider as q(u) grows; an outcome branch shows the outcome and q(o | u). Actions the
    search pruned are one grey dashed stub per node ("k pruned"), and an action whose outcomes
    were partly left out says how much probability they had.
    """
    tree = scores.tree
    if tree is None:
        raise ValueError("scores: no search tree; compute it with keep_tree=True")
    levels = max(1, min(levels, len(tree)))
    shape = [int(s) for s in state_shape]
    control_sizes = [len(c) for c in labels.controls]
    outcome_sizes = [len(o) for o in labels.outcomes]
    actions = scores.actions.cpu().numpy()
    threshold = action_threshold or 0.0

    def action_name(u: int) -> str:
        return ", ".join(
            labels.controls[f][actions[u, f]] for f in range(len(shape)) if control_sizes[f] > 1
        )

    def belief_node(level: int, k: int, weight: float) -> _PlanNode:
        layer = tree[level]
        q_u = layer.q_u[k].cpu().numpy()
        G = layer.G[k].cpu().numpy()
        expanded = None if layer.expanded is None else layer.expanded[k].cpu().numpy()
        belief = _belief_text(layer.beliefs[k].cpu().numpy(), labels, shape)
        if level == levels - 1:  # a leaf: the node's actions listed in its box
            order = np.argsort(-q_u)
            shown = [u for u in order if q_u[u] > threshold] or list(order[:1])
            lines = [f"{action_name(u)}: q(u) {q_u[u]:.2f}, G {G[u]:.2f}" for u in shown]
            rest = [u for u in order if u not in shown]
            if rest:
                lines.append(f"{len(rest)} other(s): q(u) {q_u[rest].sum():.2f} in all")
            return _PlanNode("belief", belief + "\n" + "\n".join(lines), (), weight)
        children, left_out = [], []
        for u in np.argsort(-q_u):
            if expanded is not None and not expanded[u]:
                left_out.append(u)
                continue
            outcomes = []
            dropped = 0.0
            if expanded is not None:
                node, action, outcome, probability, child = (
                    x.cpu().numpy() for x in layer.branches
                )
                mine = np.flatnonzero((node == k) & (action == u))
                for e in mine[np.argsort(-probability[mine])]:
                    name = _joint_names(int(outcome[e]), labels.outcomes, outcome_sizes)
                    outcomes.append(
                        (
                            f"{name}\nq(o|u) = {probability[e]:.2f}",
                            belief_node(level + 1, int(child[e]), float(probability[e])),
                        )
                    )
                dropped = 1.0 - float(probability[mine].sum())
            text = f"{action_name(u)}\nq(u) = {q_u[u]:.2f}, G = {G[u]:.2f}"
            if dropped > 1e-9:
                text += f"\noutcomes left out: {dropped:.2f}"
            children.append(("", _PlanNode("action", text, tuple(outcomes), float(q_u[u]))))
        if left_out:
            mass = float(q_u[left_out].sum())
            text = f"{len(left_out)} pruned\n(q(u) {mass:.2f} in all)"
            children.append(("", _PlanNode("pruned", text, (), mass)))
        return _PlanNode("belief", belief, tuple(children), weight)

    root = belief_node(0, int(scores.root[agent]), 1.0)

    positions: dict[int, tuple[float, float]] = {}
    leaves = [0]

    def place(node: _PlanNode, depth: int) -> float:
        if not node.children:
            x = float(leaves[0])
            leaves[0] += 1
        else:
            x = float(np.mean([place(child, depth + 1) for _, child in node.children]))
        positions[id(node)] = (x, -depth)
        return x

    place(root, 0)
    width = max(8.0, 2.4 * leaves[0])
    figure, ax = plt.subplots(figsize=(width, 1.0 + 1.6 * 2 * levels), layout="constrained")
    ax.set_label("plan tree")
    ax.axis("off")
    style = {
        "belief": {"boxstyle": "round,pad=0.35", "facecolor": "#e8f0fb", "edgecolor": "#4a6fa5"},
        "action": {"boxstyle": "round,pad=0.25", "facecolor": "#fdf3e1", "edgecolor": "#c98a1a"},
        "pruned": {"boxstyle": "round,pad=0.25", "facecolor": "white", "edgecolor": "0.6"},
    }

    def draw(node: _PlanNode):
        x, y = positions[id(node)]
        for label, child in node.children:
            cx, cy = positions[id(child)]
            pruned = child.kind == "pruned"
            ax.plot(
                [x, cx],
                [y, cy],
                color="0.6" if pruned else ("#c98a1a" if child.kind == "action" else "#4a6fa5"),
                linestyle="--" if pruned else "-",
                linewidth=0.8 if pruned else 0.8 + 3.0 * child.weight,
                zorder=1,
            )
            if label:
                ax.text(
                    (x + cx) / 2, (y + cy) / 2, label, fontsize=6, ha="center", va="center",
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "linewidth": 0},
                    zorder=2,
                )  # fmt: skip
            draw(child)
        ax.text(
            x, y, node.text, fontsize=6.5, ha="center", va="center", bbox=style[node.kind],
            color="0.4" if node.kind == "pruned" else "black", zorder=3,
        )  # fmt: skip

    draw(root)
    xs = [p[0] for p in positions.values()]
    ys = [p[1] for p in positions.values()]
    ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    gamma_note = (
        f"a search of depth {scores.depth}, {levels} level(s) drawn; nodes evaluated per level: "
        f"{', '.join(str(n) for n in scores.nodes)}"
    )
    ax.set_title(
        (title + "\n" if title else "")
        + "Sophisticated plan: beliefs (blue), actions with q(u) and the recursion's G "
        "(orange, width ~ q(u)), outcomes with q(o|u)\n" + gamma_note,
        fontsize=9,
    )
    return figure

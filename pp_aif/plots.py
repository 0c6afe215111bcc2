"""Figures. Each function takes results and returns a matplotlib Figure; the caller saves it."""

from __future__ import annotations

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display needed; figures are written to files
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pp_aif.inference.states import Beliefs  # noqa: E402
from pp_aif.task import Labels  # noqa: E402

__all__ = [
    "plot_state_beliefs",
    "plot_trial",
    "plot_recovery",
    "plot_choice_rates",
    "plot_model_selection",
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


def plot_trial(dataset, labels: Labels, agent: int = 0, trial: int = 0) -> Figure:
    """SPM-style figure of one trial of one agent (from ``pp_aif.simulate``).

    Rows: beliefs over each factor in time (true states marked), the policy posterior q(pi) in
    time, and the expected-free-energy terms of the most probable policy at each step.
    """
    record = dataset.isel(agent=agent, trial=trial)
    T = record.sizes["time"]
    F = len(labels.factors)
    figure, axes = plt.subplots(
        F + 2, 1, figsize=(max(6.5, 1.8 + 1.6 * T), 2.2 * (F + 2)), constrained_layout=True
    )
    observed = record["observation"].values
    acted = record["action"].values
    ticks = []
    for t in range(T):
        seen = ", ".join(labels.outcomes[m][observed[t, m]] for m in range(len(labels.modalities)))
        did = "; ".join(
            labels.controls[f][acted[t, f]]
            for f in range(F)
            if acted[t, f] >= 0 and len(labels.controls[f]) > 1
        )
        ticks.append(f"t={t}\n{seen}" + (f"\n-> {did}" if did else ""))
    for f, name in enumerate(labels.factors):
        q = record[f"belief_{name}"].values.T
        ax = axes[f]
        ax.imshow(q, vmin=0, vmax=1, cmap="Greys", aspect="auto")
        truth = record["true_state"].values[:, f]
        ax.plot(
            range(T),
            truth,
            "o",
            color="tab:red",
            markerfacecolor="none",
            markersize=12,
            label="true state",
        )
        ax.set_yticks(range(q.shape[0]), labels.states[f])
        ax.set_xticks(range(T), [f"t={t}" for t in range(T)])
        ax.set_title(f"beliefs about {name}: q(s_t | o_<=t)", fontsize=9)
        ax.legend(loc="upper right", fontsize=7)
    posterior = record["policy_posterior"].values.T  # (P, T)
    ax = axes[F]
    image = ax.imshow(
        posterior, vmin=0, vmax=1, cmap="Greys", aspect="auto", interpolation="nearest"
    )
    ax.set_title("policy posterior q(pi) (blank: no choice at the last step)", fontsize=9)
    ax.set_ylabel("policy")
    ax.set_xticks(range(T), [f"t={t}" for t in range(T)])
    figure.colorbar(image, ax=ax, shrink=0.8)
    ax = axes[F + 1]
    terms = ["risk", "ambiguity", "epistemic", "pragmatic", "novelty"]
    width = 0.8 / len(terms)
    for i, term in enumerate(terms):
        values = []
        for t in range(T):
            row = record["policy_posterior"].values[t]
            best = int(np.nanargmax(row)) if np.isfinite(row).any() else None
            values.append(np.nan if best is None else record[term].values[t, best])
        ax.bar(np.arange(T) + (i - len(terms) / 2 + 0.5) * width, values, width, label=term)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(range(T), ticks, fontsize=7)
    ax.set_title(
        "expected free energy of the most probable policy\n"
        "G = risk + ambiguity = -(epistemic + pragmatic)",
        fontsize=9,
    )
    ax.set_ylabel("nats")
    ax.legend(fontsize=7, ncol=len(terms))
    return figure


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
        ax.set_title(f"{name}: r(log) = {r:.2f}, coverage = {inside.mean():.2f}")
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

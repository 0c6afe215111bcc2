"""Figures. Each function takes results and returns a matplotlib Figure; the caller saves it."""

from __future__ import annotations

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display needed; figures are written to files
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pp_aif.inference.states import Beliefs  # noqa: E402
from pp_aif.task import Labels  # noqa: E402

__all__ = ["plot_state_beliefs", "plot_trial"]


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

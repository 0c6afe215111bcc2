"""Figures. Each function takes results and returns a matplotlib Figure; the caller saves it."""

from __future__ import annotations

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display needed; figures are written to files
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pp_aif.inference.states import Beliefs  # noqa: E402
from pp_aif.task import Labels  # noqa: E402

__all__ = ["plot_state_beliefs"]


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

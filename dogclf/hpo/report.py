"""Plots of an experiment: the objective per trial and against each tuned hyperparameter."""

from __future__ import annotations

import math
import os
from typing import Any

from dogclf._extras import require
from dogclf._io import atomic_path
from dogclf.hpo.space import Categorical
from dogclf.hpo.state import ExperimentState

__all__ = ["plot_experiment", "STATUS_COLORS"]

STATUS_COLORS = {"Completed": "tab:green", "Pruned": "tab:orange", "Stopped": "tab:gray", "Failed": "tab:red",
                 "InProgress": "tab:blue"}
"""Marker colour per trial status."""


def plot_experiment(state: ExperimentState, path: str | os.PathLike[str] | None = None) -> Any:
    """Draw the experiment: panel 1 the objective of each trial in order with the best-so-far line, then one
    panel per tuned hyperparameter with the objective against its values (log axis for log-scaled ranges,
    one slot per choice for categorical ones). Trials without an objective are drawn at the bottom edge as
    crosses, coloured by status.

    Args:
        state: The experiment's state.
        path: Save the figure here as PNG (a temporary file renamed into place); ``None`` does not save.

    Returns:
        The :class:`matplotlib.figure.Figure`.
    """
    require("report", "matplotlib", "tuning plot")
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure registry

    objective = state.objective
    names = list(state.space)
    n = 1 + len(names)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    scored = [t for t in state.trials if t.objective is not None]
    values = [t.objective for t in scored]
    lo = min(values) if values else 0.0
    hi = max(values) if values else 1.0
    floor = lo - 0.05 * ((hi - lo) or 1.0)

    def y_of(t: Any) -> float:
        return t.objective if t.objective is not None else floor

    def marker(t: Any) -> str:
        return "o" if t.objective is not None else "x"

    ax = axes[0]
    for t in state.trials:
        ax.scatter([t.number + 1], [y_of(t)], c=STATUS_COLORS.get(t.status, "black"), marker=marker(t), zorder=3)
    best, xs, ys = None, [], []
    for t in sorted(scored, key=lambda t: t.number):
        if best is None or objective.better(t.objective, best):
            best = t.objective
        xs.append(t.number + 1)
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="black", linewidth=1, label="best so far")
        ax.legend(loc="best", fontsize="small")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{objective.metric} ({objective.direction})")
    ax.set_title(f"{state.name}: objective per trial")
    ax.grid(alpha=0.3)

    for ax, name in zip(axes[1:], names):
        rng = state.space[name]
        if isinstance(rng, Categorical):
            slots = {v: i for i, v in enumerate(rng.values)}
            for t in state.trials:
                if name in t.params and t.params[name] in slots:
                    ax.scatter([slots[t.params[name]]], [y_of(t)], c=STATUS_COLORS.get(t.status, "black"),
                               marker=marker(t), zorder=3)
            ax.set_xticks(range(len(rng.values)), [str(v) for v in rng.values])
            ax.set_xlim(-0.5, len(rng.values) - 0.5)
        else:
            for t in state.trials:
                if name in t.params:
                    ax.scatter([t.params[name]], [y_of(t)], c=STATUS_COLORS.get(t.status, "black"),
                               marker=marker(t), zorder=3)
            if rng.scale == "log":
                ax.set_xscale("log")
            ax.set_xlim(rng.low, rng.high)
        ax.set_xlabel(name)
        ax.set_ylabel(objective.metric)
        ax.set_title(f"{objective.metric} vs {name}")
        ax.grid(alpha=0.3)
    seen = sorted({t.status for t in state.trials})
    if seen:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", linestyle="", color=STATUS_COLORS.get(s, "black"), label=s)
                   for s in seen]
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize="small")
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    return fig

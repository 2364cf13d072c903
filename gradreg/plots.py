"""Plotting helpers for the chapters: the figures are made here, never inside the training loop."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from .report import summarise
from .results import Record


def seeds_and_means(records: list[Record], metric: str, ax: Axes | None = None, label: str | None = None) -> Axes:
    """One column per cell: each seed as a dot, the mean as a bar-free marker with ±1 std."""
    ax = ax or plt.subplots(figsize=(4, 3))[1]
    summary = summarise(records, metric)
    cells = list(summary)
    for i, cell in enumerate(cells):
        ys = [r["metrics"][metric] for r in records if r["cell"] == cell and r["status"] == "ok"]
        ax.plot([i + 0.12] * len(ys), ys, "o", color="C0", ms=4, alpha=0.7, label="seeds" if i == 0 else None)
    ax.errorbar(range(len(cells)), [summary[c].mean for c in cells], yerr=[summary[c].std for c in cells],
                fmt="_", color="k", ms=14, capsize=4, label="mean ± std")
    ax.set(xticks=range(len(cells)), xticklabels=cells, ylabel=label or metric, xlim=(-0.5, len(cells) - 0.5))
    ax.legend(fontsize="small")
    return ax


def _by_cell(records: list[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in records:
        if r["status"] == "ok":
            out.setdefault(r["cell"], []).append(r)
    return out


def sin5x_functions(records: list[Record], regularizer: str, weights: list[float], ax: Axes | None = None,
                    seed: int = 0) -> Axes:
    """Figure 1 (right) of Varga et al.: the learned f for each weight over sin(5x) and the data.

    Uses the stored curve (f on 101 grid points) of the run with ``seed``; the 100 training points
    are regenerated from the same seed.
    """
    import torch

    from .data import sin5x

    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    cells = _by_cell(records)
    grid = torch.linspace(-1, 1, 101)
    data = sin5x(100, seed=seed)
    ax.plot(grid, torch.sin(5 * grid), color="k", lw=1.5, ls="--", label="sin(5x)")
    ax.plot(data.x_train.flatten(), data.y_train.flatten(), ".", color="0.5", ms=4, label="training points")
    colors = plt.get_cmap("viridis")
    for i, w in enumerate([None] + list(weights)):
        cell = "none" if w is None else f"{regularizer}/{w:g}"
        runs = [r for r in cells.get(cell, []) if r["seed"] == seed]
        if runs:
            ax.plot(grid, runs[0]["metrics"]["curve"], color=colors(i / max(1, len(weights))),
                    label="no regularizer" if w is None else f"λ = {w:g}")
    ax.set(xlabel="x", ylabel="f(x)", ylim=(-1.6, 1.6))
    ax.legend(fontsize="x-small", ncol=2, loc="lower left")
    return ax


def slope_vs_weight(records: list[Record], regularizers: list[str], weights: list[float],
                    ax: Axes | None = None) -> Axes:
    """Mean |f′| at the training points and on the dense grid against the weight (mean over seeds)."""
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    cells = _by_cell(records)
    for j, reg in enumerate(regularizers):
        for metric, style in (("slope_train", "o-"), ("slope_grid", "x--")):
            ys = [sum(r["metrics"][metric] for r in cells[f"{reg}/{w:g}"]) / len(cells[f"{reg}/{w:g}"])
                  for w in weights if f"{reg}/{w:g}" in cells]
            ax.plot([w for w in weights if f"{reg}/{w:g}" in cells], ys, style, color=f"C{j}",
                    label=f"{reg}: {'training points' if metric == 'slope_train' else '900-point grid'}")
    ax.set(xscale="log", yscale="log", xlabel="regularizer weight λ", ylabel="mean |f′(x)|")
    ax.legend(fontsize="x-small")
    return ax

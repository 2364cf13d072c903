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

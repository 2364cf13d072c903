"""Plotting helpers for the chapters: the figures are made here, never inside the training loop."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from .report import summarise
from .results import Record


def seeds_and_means(records: list[Record], metric: str, ax: Axes | None = None, label: str | None = None) -> Axes:
    """One column per cell: each seed as a dot, the mean as a bar with ±1 std error bar."""
    ax = ax or plt.subplots(figsize=(4, 3))[1]
    summary = summarise(records, metric)
    cells = list(summary)
    ax.bar(range(len(cells)), [summary[c].mean for c in cells], yerr=[summary[c].std for c in cells],
           color="0.85", edgecolor="0.3", capsize=4)
    for i, cell in enumerate(cells):
        ys = [r["metrics"][metric] for r in records if r["cell"] == cell and r["status"] == "ok"]
        ax.plot([i] * len(ys), ys, "o", color="C0", ms=4)
    ax.set(xticks=range(len(cells)), xticklabels=cells, ylabel=label or metric)
    lo = min(r["metrics"][metric] for r in records if r["status"] == "ok")
    hi = max(r["metrics"][metric] for r in records if r["status"] == "ok")
    pad = 0.15 * (hi - lo or abs(hi) or 1.0)
    ax.set_ylim(lo - pad if lo - pad > 0 or lo < 0 else 0, hi + pad)
    return ax

"""Plotting helpers for the chapters: the figures are made here, never inside the training loop."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from .report import summarise
from .results import Record
from .stats import values


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


def _mean_and_band(ax: Axes, pts: list[tuple[float, list[float]]], color: str, label: str) -> None:
    """One line through the mean of each point's values and a band from their lowest to their
    highest; x positions without values are skipped."""
    pts = [(x, v) for x, v in pts if v]
    if pts:
        xs = [x for x, _ in pts]
        ax.plot(xs, [sum(v) / len(v) for _, v in pts], "o-", color=color, ms=4, label=label)
        ax.fill_between(xs, [min(v) for _, v in pts], [max(v) for _, v in pts], color=color, alpha=0.15, lw=0)


def size_sweep(records: list[Record], sizes: list[int], methods: list[str], metric: str = "test_accuracy",
               ax: Axes | None = None, label: str = "test accuracy (%)") -> Axes:
    """Figure 1 (left) of Varga et al.: ``metric`` against training-set size N, one line per method
    (mean over seeds) with a band from the lowest to the highest seed. Cells are named ``n{N}/{method}``."""
    ax = ax or plt.subplots(figsize=(6.5, 4))[1]
    for j, method in enumerate(methods):
        _mean_and_band(ax, [(n, values(records, f"n{n}/{method}", metric)) for n in sizes], f"C{j}", method)
    ax.set(xscale="log", xlabel="training-set size N", ylabel=label)
    ax.legend(fontsize="small")
    return ax


def bars(records: list[Record], cells: list[str], metric: str = "test_accuracy", ax: Axes | None = None,
         label: str = "test accuracy (%)") -> Axes:
    """One bar per cell at the mean over seeds, ± 1 std, each seed as a dot; the y axis starts near the
    lowest value (accuracies differ in tenths of a percent)."""
    ax = ax or plt.subplots(figsize=(6.5, 3.5))[1]
    summary = summarise(records, metric)
    cells = [c for c in cells if c in summary]
    means = [summary[c].mean for c in cells]
    ax.bar(range(len(cells)), means, yerr=[summary[c].std for c in cells], color="C0", alpha=0.5, capsize=4)
    seeds = [values(records, c, metric) for c in cells]
    for i, ys in enumerate(seeds):
        ax.plot([i] * len(ys), ys, "o", color="k", ms=3)
    lowest, highest = min(map(min, seeds)), max(map(max, seeds))
    pad = 0.25 * (highest - lowest) + 1e-3
    ax.set(xticks=range(len(cells)), ylabel=label, ylim=(lowest - pad, highest + pad))
    ax.set_xticklabels(cells, rotation=30, ha="right")
    return ax


def heatmap(records: list[Record], rows: list[float], cols: list[float], cell_name, metric: str = "test_accuracy",
            ax: Axes | None = None, row_label: str = "", col_label: str = "", vmin: float | None = None,
            failed_below: float | None = None) -> Axes:
    """Mean ``metric`` over seeds for every (row, col) of a two-way grid, with the value written in each
    square; ``cell_name(row, col)`` gives the cell's name. Missing cells stay blank.

    ``failed_below``: a run below this value (or not "ok") counts as failed — collapsed to chance, say —
    and is left out of the mean, which is never silently dragged down by it: its square says how many
    seeds failed ("2/3 ✗"), and a square whose seeds all failed shows only that.
    The colours span ``vmin`` (default: the lower quartile of the squares) to the best square, so that
    the few tenths of a point that separate good settings are visible; worse squares all take the
    darkest colour, and their numbers tell how much worse."""
    import numpy as np

    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    grid = np.full((len(rows), len(cols)), np.nan)
    fails = np.zeros((len(rows), len(cols)), dtype=int)
    runs = np.zeros((len(rows), len(cols)), dtype=int)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            mine = [rec for rec in records if rec["cell"] == cell_name(r, c)]
            good = [rec["metrics"][metric] for rec in mine if rec["status"] == "ok" and metric in rec["metrics"]
                    and (failed_below is None or rec["metrics"][metric] >= failed_below)]
            runs[i, j], fails[i, j] = len(mine), len(mine) - len(good)
            if good:
                grid[i, j] = sum(good) / len(good)
    finite = grid[np.isfinite(grid)]
    low = vmin if vmin is not None else (np.percentile(finite, 25) if finite.size else 0)
    high = finite.max() if finite.size else low + 1
    image = ax.imshow(grid, cmap="viridis", vmin=low, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            text = f"{grid[i, j]:.2f}" if np.isfinite(grid[i, j]) else ""
            if fails[i, j]:
                text += ("\n" if text else "") + f"{fails[i, j]}/{runs[i, j]} ✗"
            dark = not np.isfinite(grid[i, j]) or grid[i, j] < (low + high) / 2
            ax.text(j, i, text, ha="center", va="center", fontsize=6.5,
                    color="w" if dark and np.isfinite(grid[i, j]) else "k")
    ax.set(xticks=range(len(cols)), xticklabels=[f"{c:g}" for c in cols], xlabel=col_label,
           yticks=range(len(rows)), yticklabels=[f"{r:g}" for r in rows], ylabel=row_label)
    ax.figure.colorbar(image, ax=ax, label=f"{metric} (darkest: ≤ {low:.2f})", extend="min")
    return ax


GRAD_NORMS = {"grad_norm_train": "training points", "grad_norm_test": "test points",
              "grad_norm_noisy": "training points + noise"}
JAC_NORMS = {"jac_fro_train": "training points", "jac_fro_test": "test points",
             "jac_fro_noisy": "training points + noise", "jac_fro_path": "between training points"}


def grad_norms(records: list[Record], cells: list[str], ax: Axes | None = None,
               metrics: dict[str, str] = GRAD_NORMS, ylabel: str = "mean ‖∂ℓ/∂x‖") -> Axes:
    """E10: a mean norm at several kinds of points, grouped per cell (mean over seeds, log scale):
    by default ‖∂ℓ/∂x‖ at training, test and noisy training points; ``metrics=JAC_NORMS`` and
    ``ylabel="mean ‖J_g‖_F"`` for the logit Jacobian."""
    ax = ax or plt.subplots(figsize=(7, 3.5))[1]
    width = 0.8 / len(metrics)
    for k, (metric, label) in enumerate(metrics.items()):
        summary = summarise(records, metric)
        xs = [i + (k - (len(metrics) - 1) / 2) * width for i, c in enumerate(cells) if c in summary]
        ax.bar(xs, [summary[c].mean for c in cells if c in summary], width, color=f"C{k}", label=label)
    ax.set(xticks=range(len(cells)), yscale="log", ylabel=ylabel)
    ax.set_xticklabels(cells, rotation=30, ha="right")
    ax.legend(fontsize="small")
    return ax


def learning_curves(records: list[Record], cells: list[str], metric: str = "test_accuracy", ax: Axes | None = None,
                    ylabel: str = "test accuracy (%)") -> Axes:
    """The stored learning curves (``TrainConfig.curve_every``): per cell the mean over seeds of
    ``metric`` against the iteration, with a band from the lowest to the highest seed."""
    import numpy as np

    ax = ax or plt.subplots(figsize=(6.5, 3.5))[1]
    for k, cell in enumerate(cells):
        curves = [r["curve"] for r in _by_cell(records).get(cell, []) if r.get("curve")]
        if not curves:
            continue
        n = min(map(len, curves))
        its = [p["iteration"] for p in curves[0][:n]]
        ys = np.array([[p[metric] for p in c[:n]] for c in curves])
        ax.plot(its, ys.mean(0), color=f"C{k}", label=f"{cell} ({len(curves)} seeds)")
        ax.fill_between(its, ys.min(0), ys.max(0), color=f"C{k}", alpha=0.2, lw=0)
    ax.set(xlabel="iteration", ylabel=ylabel)
    ax.legend(fontsize="small")
    return ax


def against_scale(records: list[Record], alphas: list[float], arms: dict[str, str], metric: str,
                  ax: Axes | None = None, label: str | None = None, relative: bool = False,
                  references: dict[str, float] | None = None) -> Axes:
    """``metric`` against the initial scale α (log axis), one line per arm (mean over seeds, band from
    the lowest to the highest seed). ``arms``: {legend label: cell name template with "{a}" for α};
    ``relative``: divide by α (for scales); ``references``: horizontal lines {label: value}."""
    ax = ax or plt.subplots(figsize=(5, 3.5))[1]
    for j, (name, template) in enumerate(arms.items()):
        _mean_and_band(ax, [(a, [v / a if relative else v for v in values(records, template.format(a=f"{a:g}"), metric)])
                            for a in alphas], f"C{j}", name)
    for k, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, color="0.4", ls=("--", ":")[k % 2], lw=1, label=name)
    ax.set(xscale="log", xlabel="initial scale α", ylabel=label or metric)
    ax.legend(fontsize="small")
    return ax


def step_sweep(records: list[Record], group: str, gamma: float, epsilons: list[float], metric: str = "test_accuracy",
               ax: Axes | None = None, label: str = "test accuracy (%)") -> Axes:
    """Karakida et al.'s comparison at one γ: F-GR and B-GR against the finite-difference step ε
    (mean over seeds, band from lowest to highest seed), DB-GR and GD as horizontal lines (mean ± std
    band). Cells are named ``{group}/f-g{γ}-e{ε}``, ``{group}/b-…``, ``{group}/db-g{γ}``, ``{group}/gd``."""
    ax = ax or plt.subplots(figsize=(5, 3.5))[1]
    for j, (kind, name) in enumerate((("f", "F-GR (ascent)"), ("b", "B-GR (descent)"))):
        _mean_and_band(ax, [(e, values(records, f"{group}/{kind}-g{gamma:g}-e{e:g}", metric)) for e in epsilons],
                       f"C{j}", name)
    summary = summarise(records, metric)
    for k, (cell, name) in enumerate(((f"{group}/db-g{gamma:g}", "DB-GR (exact)"), (f"{group}/gd", "GD"))):
        if cell in summary:
            s = summary[cell]
            ax.axhline(s.mean, color=f"C{k + 2}", ls="--", lw=1.2, label=name)
            if s.n > 1:
                ax.axhspan(s.mean - s.std, s.mean + s.std, color=f"C{k + 2}", alpha=0.1, lw=0)
    ax.set(xscale="log", xlabel="finite-difference step ε", ylabel=label, title=f"{group}, γ = {gamma:g}")
    ax.legend(fontsize="small")
    return ax

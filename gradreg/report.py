"""From stored records to what a chapter shows: per-cell summaries over seeds, tables, and the
"results missing" note with the command that produces them."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from . import experiments
from .results import Record


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation of one metric over the seeds of a cell."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{_fmt(self.mean)} ({_fmt(self.std)})" if self.n > 1 else _fmt(self.mean)


def _fmt(v: float) -> str:
    """Two decimals for percentages and other large values, three significant digits for small ones."""
    return f"{v:.2f}" if abs(v) >= 10 else f"{v:.3g}"


def number(value: float | None, spec: str = ".2f") -> str:
    """A number for prose (glued into a chapter): formatted, or "—" when there is none yet (NaN/None)."""
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def summarise(records: list[Record], metric: str) -> dict[str, Summary]:
    """{cell: Summary} of ``metric`` over the finished ("ok") runs of each cell, in grid order; cells
    whose runs lack the metric (e.g. a BatchNorm-only one on a model without BatchNorm) are left out."""
    values: dict[str, list[float]] = {}
    for r in records:
        if r["status"] == "ok" and metric in r["metrics"]:
            values.setdefault(r["cell"], []).append(r["metrics"][metric])
    return {cell: Summary(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else math.nan, len(v))
            for cell, v in values.items()}


def markdown_table(records: list[Record], metrics: dict[str, str]) -> str:
    """A Markdown table, one row per cell, one "mean (std)" column per metric ({metric: header})."""
    summaries = {m: summarise(records, m) for m in metrics}
    first = summaries[next(iter(metrics))]
    return rows_table([{"cell": cell, "seeds": first[cell].n,
                        **{header: str(summaries[m][cell]) for m, header in metrics.items()}}
                       for cell in first])


def missing_note(name: str, profile: str, results_dir: str | None = None) -> str | None:
    """None when the grid is complete; else a sentence saying what is missing and how to make it."""
    todo = experiments.missing(name, profile, results_dir)
    if not todo:
        return None
    total = len(experiments.get(name).configs(profile))
    return (f"{len(todo)} of {total} runs of `{name}` at profile `{profile}` have no stored result yet. "
            f"Produce them with:\n\n    {experiments.command(name, profile)}\n\n"
            "(finished runs are kept, so the command can be interrupted and rerun).")


def rows_table(rows: list[dict[str, object]]) -> str:
    """A Markdown table from a list of dicts with the same keys (floats shown to 3 significant digits)."""
    def cell(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(cell(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines)

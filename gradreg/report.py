"""From stored records to what a chapter shows: per-cell summaries over seeds, tables, and the
"results missing" note with the command that produces them."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from . import experiments, stats
from . import results as results_store
from .errors import ResultsMissing
from .results import Record

STD_NOTE = ("Numbers are means over seeds with the sample standard deviation (ddof = 1, as in the "
            "authors' `stat.py`) in parentheses, to two decimals like the paper's.")


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation of one metric over the seeds of a cell."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        if abs(self.mean) >= 1:       # accuracies and other large values: two decimals, as the paper
            return f"{self.mean:.2f} ({self.std:.2f})" if self.n > 1 else f"{self.mean:.2f}"
        return f"{self.mean:.3g} ({self.std:.2g})" if self.n > 1 else f"{self.mean:.3g}"


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
    def cell(v: object) -> str:     # a "|" inside a cell (|f′|) would end the cell: escaped
        return (f"{v:.3g}" if isinstance(v, float) else str(v)).replace("|", "\\|")
    keys = list(rows[0])
    lines = ["| " + " | ".join(cell(k) for k in keys) + " |", "|---" * len(keys) + "|"]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Claim:
    """A claim to test on a grid's records: cell ``a`` better than ``b`` (``expect=">"``) or no
    different (``"="``), in the words of ``text``."""

    text: str
    a: str
    b: str
    expect: str = ">"


def test_claims(records: list[Record], claims: list[Claim], metric: str = "test_accuracy",
                unit: str = " points") -> list[tuple[Claim, stats.Comparison, stats.Verdict]]:
    """Each claim with its Welch comparison and verdict (``stats.verdict``)."""
    out = []
    for claim in claims:
        c = stats.welch(records, claim.a, claim.b, metric)
        out.append((claim, c, stats.verdict(c, claim.expect, unit=unit)))
    return out


def claims_table(tested: list[tuple[Claim, stats.Comparison, stats.Verdict]], unit: str = "points",
                 digits: int = 2) -> str:
    """A Markdown table of tested claims: what is compared, the difference, Welch's p, the verdict."""
    return rows_table([{"claim": claim.text, "compared": f"{claim.a} vs {claim.b}",
                        f"difference ({unit})": "—" if math.isnan(c.diff) else f"{c.diff:+.{digits}f}",
                        "Welch p": "—" if math.isnan(c.p) else f"{c.p:.2g}", "verdict": v.text}
                       for claim, c, v in tested])


def step_seconds(records: list[Record]) -> dict[str, float]:
    """{cell: mean training seconds per step} over the finished runs of each cell."""
    per_step: dict[str, list[float]] = {}
    for r in records:
        if r["status"] == "ok" and r.get("iterations_done"):
            per_step.setdefault(r["cell"], []).append(r["train_seconds"] / r["iterations_done"])
    return {c: statistics.fmean(v) for c, v in per_step.items()}


def step_costs(records: list[Record], cells: list[str], baseline: str = "baseline") -> str:
    """A Markdown table of what each cell's runs cost, from their stored timings (mean over seeds):
    ms per step, images per second, the ratio to ``baseline`` (also the ratio of epoch costs) and
    seconds per 1,000 training images (× 50 for an epoch of the full CIFAR-10). The timings include
    the learning-curve evaluations, which cost every cell the same few seconds."""
    mean = step_seconds(records)
    runs = {c: sum(r["cell"] == c and r["status"] == "ok" for r in records) for c in mean}
    batch = {r["cell"]: r["config"]["batch_size"] for r in records}
    rows = [{"cell": c, "runs": runs[c], "ms/step": f"{1000 * mean[c]:.0f}",
             "images/s": f"{batch[c] / mean[c]:.0f}",
             f"× {baseline}": f"{mean[c] / mean[baseline]:.2f}" if baseline in mean else "—",
             "s per 1,000 images": f"{1000 / batch[c] * mean[c]:.1f}"}
            for c in cells if c in mean]
    return rows_table(rows) if rows else ""


def load(name: str, profile: str, train_missing: bool = False) -> tuple[list[Record], str | None]:
    """What a chapter shows of an experiment: its stored records (training the missing runs first if
    ``train_missing``) and a note when runs are missing, or when the grid cannot be configured yet
    (settings derived from results not yet stored): then no records and the note says what to run."""
    try:
        records = experiments.load(name, profile, run_missing=train_missing, progress=False, log=lambda _: None)
        return records, missing_note(name, profile)
    except ResultsMissing as err:
        return [], f"`{name}` at profile `{profile}` cannot run yet: {err}."


def grid_costs(profiles: tuple[str, ...] = ("cpu", "paper"), results_dir: str | None = None) -> list[dict[str, object]]:
    """One row per registered (experiment, profile): its runs, how many are stored, and the two cost
    estimates of ``gradreg list`` (2-core CPU minutes; GPU-hours on one H100, ``gradreg.cost``).
    A grid whose settings come from results not yet stored says so instead."""
    from . import cost          # counts steps on the meta device: seconds on first use, so only here
    rows: list[dict[str, object]] = []
    for exp in experiments.REGISTRY.values():
        for profile in (p for p in profiles if p in exp.profiles):
            row: dict[str, object] = {"experiment": exp.name, "profile": profile}
            try:
                grid = exp.configs(profile, results_dir=results_dir)
            except ResultsMissing:
                rows.append({**row, "runs": "—", "stored": "—", "est. 2-core CPU": "after its sweep",
                             "est. one H100": "after its sweep"})
                continue
            done = results_store.Store(exp.name, profile, results_dir).done()
            stored = sum((cell, seed) in done for cell, seed, _ in grid)
            minutes = exp.estimated_cpu_seconds(profile) / 60
            cpu = f"{minutes:.0f} min" if minutes < 60 else f"{minutes / 60:,.0f} h"
            rows.append({**row, "runs": len(grid), "stored": stored, "est. 2-core CPU": cpu,
                         "est. one H100": cost.format_hours(cost.gpu_seconds(exp, profile, results_dir, grid))})
    return rows

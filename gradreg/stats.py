"""Comparisons between cells of a grid: Welch's t-test on the per-seed values, and a plain verdict."""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as _stats

from .results import Record


@dataclass(frozen=True)
class Comparison:
    """Cell a against cell b on one metric: difference of means, Welch's t and two-sided p."""

    a: str
    b: str
    diff: float
    t: float
    p: float
    n_a: int
    n_b: int


def values(records: list[Record], cell: str, metric: str) -> list[float]:
    """The per-seed values of a metric in one cell (finished runs only)."""
    return [r["metrics"][metric] for r in records if r["cell"] == cell and r["status"] == "ok"]


def welch(records: list[Record], a: str, b: str, metric: str) -> Comparison:
    """Welch's unequal-variance t-test of cell a against cell b; p is NaN with fewer than 2 seeds."""
    xa, xb = values(records, a, metric), values(records, b, metric)
    diff = (sum(xa) / len(xa) - sum(xb) / len(xb)) if xa and xb else math.nan
    if len(xa) < 2 or len(xb) < 2:
        return Comparison(a, b, diff, math.nan, math.nan, len(xa), len(xb))
    result = _stats.ttest_ind(xa, xb, equal_var=False)
    return Comparison(a, b, diff, float(result.statistic), float(result.pvalue), len(xa), len(xb))


def verdict(c: Comparison, expect: str, alpha: float = 0.05) -> str:
    """In words, whether the comparison supports a claim that a is better (``expect=">"``) or no
    different (``expect="="``) than b, at level ``alpha``."""
    if math.isnan(c.p):
        return "not testable (fewer than 2 seeds)"
    significant = c.p < alpha
    if expect == ">":
        if significant:
            return "supported" if c.diff > 0 else "contradicted (significantly worse)"
        return "not significant"
    if expect == "=":
        return "contradicted (significant difference)" if significant else "supported (no significant difference)"
    raise ValueError(f"expect must be '>' or '=', got {expect!r}")

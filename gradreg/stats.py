"""Comparisons between cells of a grid: Welch's t-test on the per-seed values, and a verdict that
never counts the absence of evidence as support.

A claim is "a is better than b" (``expect=">"``) or "a and b do not differ" (``expect="="``). Its
verdict is one of three:

- **reproduced**: the data show what the paper says (a significant difference in the claimed
  direction). A "no difference" claim is never reproduced by a non-significant test.
- **contradicted**: the data show the opposite (a significant difference the other way, or any
  significant difference where the paper claims none).
- **not resolved at n seeds**: neither; the verdict then says the smallest difference these seeds
  could have detected (``detectable``), so a reader sees how much the experiment can say.

Standard deviations are sample standard deviations (ddof = 1), as in the authors' ``stat.py``.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats as _stats

from .results import Record

REPRODUCED, CONTRADICTED, UNRESOLVED = "reproduced", "contradicted", "not resolved"
LABELS = (REPRODUCED, CONTRADICTED, UNRESOLVED)


@dataclass(frozen=True)
class Comparison:
    """Cell a against cell b on one metric: difference of means, Welch's t, two-sided p, the
    standard error of the difference and the Welch–Satterthwaite degrees of freedom."""

    a: str
    b: str
    diff: float
    t: float
    p: float
    n_a: int
    n_b: int
    se: float = math.nan
    df: float = math.nan


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict: ``label`` (one of ``LABELS``) and ``text``, the label in words with what
    the seeds could resolve."""

    label: str
    text: str

    def __str__(self) -> str:
        return self.text


def _se_df(parts: list[tuple[float, int]]) -> tuple[float, float]:
    """Standard error and Welch–Satterthwaite degrees of freedom of a sum of independent group
    means, from each group's (sample variance / n, n); df is NaN when there is no spread."""
    se = math.sqrt(sum(v for v, _ in parts))
    df = se ** 4 / sum(v ** 2 / (n - 1) for v, n in parts) if se > 0 else math.nan
    return se, df


def values(records: list[Record], cell: str, metric: str) -> list[float]:
    """The per-seed values of a metric in one cell (finished runs that measured it)."""
    return [r["metrics"][metric] for r in records
            if r["cell"] == cell and r["status"] == "ok" and metric in r["metrics"]]


def welch_values(xa: list[float], xb: list[float], a: str = "a", b: str = "b") -> Comparison:
    """Welch's unequal-variance t-test of the values xa against xb; p is NaN with fewer than 2 of either."""
    diff = (sum(xa) / len(xa) - sum(xb) / len(xb)) if xa and xb else math.nan
    if len(xa) < 2 or len(xb) < 2:
        return Comparison(a, b, diff, math.nan, math.nan, len(xa), len(xb))
    se, df = _se_df([(statistics.variance(x) / len(x), len(x)) for x in (xa, xb)])    # ddof = 1
    result = _stats.ttest_ind(xa, xb, equal_var=False)
    return Comparison(a, b, diff, float(result.statistic), float(result.pvalue), len(xa), len(xb), se, df)


def welch(records: list[Record], a: str, b: str, metric: str) -> Comparison:
    """Welch's unequal-variance t-test of cell a against cell b; p is NaN with fewer than 2 seeds."""
    return welch_values(values(records, a, metric), values(records, b, metric), a, b)


def paired(records: list[Record], a: str, b: str, metric: str) -> Comparison:
    """Paired t-test of cell a against cell b over the seeds both have finished: for grids where a
    seed fixes everything but the arm (the same data, initialisation and batches), so the per-seed
    differences carry the comparison. ``se`` and ``df`` are those of the mean difference (n − 1)."""
    xa = {r["seed"]: r["metrics"][metric] for r in records
          if r["cell"] == a and r["status"] == "ok" and metric in r["metrics"]}
    xb = {r["seed"]: r["metrics"][metric] for r in records
          if r["cell"] == b and r["status"] == "ok" and metric in r["metrics"]}
    seeds = sorted(set(xa) & set(xb))
    d = [xa[s] - xb[s] for s in seeds]
    if len(d) < 2 or statistics.pstdev(d) == 0:
        return Comparison(a, b, statistics.fmean(d) if d else math.nan, math.nan, math.nan, len(d), len(d))
    result = _stats.ttest_rel([xa[s] for s in seeds], [xb[s] for s in seeds])
    se = statistics.stdev(d) / math.sqrt(len(d))
    return Comparison(a, b, statistics.fmean(d), float(result.statistic), float(result.pvalue), len(d), len(d),
                      se, float(len(d) - 1))


def welch_summary(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int,
                  a: str = "a", b: str = "b") -> Comparison:
    """The same test from reported means, sample stds and counts (e.g. a paper's table)."""
    result = _stats.ttest_ind_from_stats(mean_a, std_a, n_a, mean_b, std_b, n_b, equal_var=False)
    se, df = _se_df([(std_a ** 2 / n_a, n_a), (std_b ** 2 / n_b, n_b)])
    return Comparison(a, b, mean_a - mean_b, float(result.statistic), float(result.pvalue), n_a, n_b, se, df)


def difference_of_differences(records: list[Record], a1: str, b1: str, a2: str, b2: str,
                              metric: str) -> Comparison:
    """Is the gain of a1 over b1 larger than the gain of a2 over b2? A Welch-type t-test of
    (ā1 − b̄1) − (ā2 − b̄2), four independent groups, Satterthwaite degrees of freedom. The result's
    ``a``/``b`` name the two gains; ``n_a``/``n_b`` are the smallest group sizes on each side."""
    groups = [values(records, c, metric) for c in (a1, b1, a2, b2)]
    name_a, name_b = f"{a1} − {b1}", f"{a2} − {b2}"
    if any(len(g) < 2 for g in groups):
        means = [sum(g) / len(g) if g else math.nan for g in groups]
        return Comparison(name_a, name_b, means[0] - means[1] - means[2] + means[3], math.nan, math.nan,
                          min(len(g) for g in groups[:2]), min(len(g) for g in groups[2:]))
    means = [sum(g) / len(g) for g in groups]
    diff = means[0] - means[1] - means[2] + means[3]
    se, df = _se_df([(statistics.variance(g) / len(g), len(g)) for g in groups])
    if se == 0:
        return Comparison(name_a, name_b, diff, math.nan, math.nan, min(map(len, groups[:2])), min(map(len, groups[2:])))
    t = diff / se
    return Comparison(name_a, name_b, diff, t, float(2 * _stats.t.sf(abs(t), df)),
                      min(map(len, groups[:2])), min(map(len, groups[2:])), se, df)


def detectable(c: Comparison, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided Welch test at level ``alpha`` would detect with
    probability ``power``, at these seeds and the observed spread: (t_{1−α/2} + t_{power})·SE with
    the Welch degrees of freedom. NaN when it cannot be estimated (fewer than 2 seeds, no spread)."""
    if math.isnan(c.se) or math.isnan(c.df) or c.se == 0:
        return math.nan
    return (_stats.t.ppf(1 - alpha / 2, c.df) + _stats.t.ppf(power, c.df)) * c.se


def verdict(c: Comparison, expect: str, alpha: float = 0.05, power: float = 0.8, unit: str = "") -> Verdict:
    """The verdict on a claim that a is better than b (``expect=">"``) or no different (``"="``)."""
    if expect not in (">", "="):
        raise ValueError(f"expect must be '>' or '=', got {expect!r}")
    seeds = f"{c.n_a}/{c.n_b} seeds" if c.n_a != c.n_b else f"{c.n_a} seed{'s' if c.n_a != 1 else ''}"
    if math.isnan(c.p):
        return Verdict(UNRESOLVED, f"not resolved at {seeds} (fewer than 2 seeds: no test)")
    if c.p < alpha and (expect == "=" or c.diff < 0):
        return Verdict(CONTRADICTED, "contradicted (significant difference)" if expect == "="
                       else "contradicted (significantly worse)")
    if c.p < alpha:
        return Verdict(REPRODUCED, "reproduced")
    d = detectable(c, alpha, power)
    can = f"could detect ≥ {d:.2f}{unit}" if not math.isnan(d) else "no spread to estimate from"
    return Verdict(UNRESOLVED, f"not resolved at {seeds} ({can})")


def combine(verdicts: list[Verdict]) -> Verdict:
    """A claim made of several comparisons, all of which must hold: contradicted if any part is,
    reproduced if every part is, else not resolved."""
    labels = [v.label for v in verdicts]
    if not labels:
        return Verdict(UNRESOLVED, "not resolved (no comparison)")
    if CONTRADICTED in labels:
        return Verdict(CONTRADICTED, f"contradicted ({labels.count(CONTRADICTED)} of {len(labels)} parts)")
    if all(label == REPRODUCED for label in labels):
        return Verdict(REPRODUCED, f"reproduced (all {len(labels)} parts)")
    return Verdict(UNRESOLVED, f"not resolved ({labels.count(REPRODUCED)} of {len(labels)} parts reproduced)")


def count(verdicts: list[Verdict]) -> dict[str, int]:
    """How many verdicts carry each label, in the order of ``LABELS``."""
    return {label: sum(v.label == label for v in verdicts) for label in LABELS}


def tally(verdicts: list[Verdict]) -> str:
    """The counts in words, e.g. "2 reproduced, 0 contradicted, 5 not resolved"."""
    return ", ".join(f"{n} {label}" for label, n in count(verdicts).items())

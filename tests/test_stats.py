"""Welch's t-test and the verdicts, against hand-computed values."""
from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from gradreg import papers, report, stats


def _records(cells: dict[str, list[float]]):
    return [{"cell": c, "seed": i, "status": "ok", "metrics": {"acc": v}}
            for c, vs in cells.items() for i, v in enumerate(vs)]


def test_welch_matches_the_formula():
    a, b = [97.0, 97.4, 97.2], [96.5, 96.9, 96.6, 96.8]
    c = stats.welch(_records({"a": a, "b": b}), "a", "b", "acc")
    ma, mb = sum(a) / 3, sum(b) / 4
    va = sum((x - ma) ** 2 for x in a) / 2
    vb = sum((x - mb) ** 2 for x in b) / 3
    t = (ma - mb) / math.sqrt(va / 3 + vb / 4)
    assert math.isclose(c.t, t, rel_tol=1e-12) and math.isclose(c.diff, ma - mb) and 0 < c.p < 0.05
    assert stats.verdict(c, ">").label == stats.REPRODUCED
    assert stats.verdict(stats.welch(_records({"a": a, "b": b}), "b", "a", "acc"), ">").label == stats.CONTRADICTED
    assert stats.verdict(c, "=").label == stats.CONTRADICTED
    df = (va / 3 + vb / 4) ** 2 / ((va / 3) ** 2 / 2 + (vb / 4) ** 2 / 3)
    assert math.isclose(c.se, math.sqrt(va / 3 + vb / 4), rel_tol=1e-12) and math.isclose(c.df, df, rel_tol=1e-12)


def test_one_seed_is_not_resolved():
    c = stats.welch(_records({"a": [1.0], "b": [2.0, 3.0]}), "a", "b", "acc")
    v = stats.verdict(c, ">")
    assert math.isnan(c.p) and v.label == stats.UNRESOLVED and "fewer than 2 seeds" in v.text


def test_absence_of_evidence_is_never_support():
    """A non-significant difference leaves both kinds of claim unresolved, and says what the seeds
    could have detected."""
    c = stats.welch(_records({"a": [97.0, 97.3, 96.9], "b": [97.1, 96.8, 97.0]}), "a", "b", "acc")
    assert c.p > 0.05
    for expect in (">", "="):
        v = stats.verdict(c, expect, unit=" points")
        assert v.label == stats.UNRESOLVED and f"could detect ≥ {stats.detectable(c):.2f} points" in v.text
        assert v.text.startswith("not resolved at 3 seeds")


def test_detectable_difference_has_the_stated_power():
    """At the detectable difference the Welch test rejects with probability ≈ 0.8 (noncentral t)."""
    c = stats.welch_summary(97.0, 0.15, 3, 97.0, 0.2, 4)
    d = stats.detectable(c)
    t_crit = scipy_stats.t.ppf(0.975, c.df)
    power = 1 - scipy_stats.nct.cdf(t_crit, c.df, d / c.se) + scipy_stats.nct.cdf(-t_crit, c.df, d / c.se)
    assert 0.77 < power < 0.83
    assert stats.detectable(stats.welch_summary(97, 0.15, 10, 97, 0.2, 10)) < d   # more seeds, finer


def test_welch_from_summaries_equals_welch_on_values():
    a, b = [97.0, 97.4, 97.2], [96.5, 96.9, 96.6, 96.8]
    c = stats.welch(_records({"a": a, "b": b}), "a", "b", "acc")
    s = stats.welch_summary(sum(a) / 3, scipy_stats.tstd(a), 3, sum(b) / 4, scipy_stats.tstd(b), 4)
    assert math.isclose(c.p, s.p, rel_tol=1e-9) and math.isclose(c.df, s.df, rel_tol=1e-9)


def test_combined_claims_and_counts():
    r, x, u = (stats.Verdict(stats.REPRODUCED, ""), stats.Verdict(stats.CONTRADICTED, ""),
               stats.Verdict(stats.UNRESOLVED, ""))
    assert stats.combine([r, r]).label == stats.REPRODUCED
    assert stats.combine([r, u]).label == stats.UNRESOLVED
    assert stats.combine([r, u, x]).label == stats.CONTRADICTED
    assert stats.count([r, u, u]) == {"reproduced": 1, "contradicted": 0, "not resolved": 2}
    assert stats.tally([r, u, u]) == "1 reproduced, 0 contradicted, 2 not resolved"
    with pytest.raises(ValueError):
        stats.verdict(stats.welch_summary(1, 1, 3, 1, 1, 3), "<")


def test_claims_table_and_summaries_print_two_decimals():
    records = _records({"a": [97.0, 97.4, 97.2], "b": [96.5, 96.9, 96.6, 96.8]})
    tested = report.test_claims(records, [report.Claim("a beats b", "a", "b")], metric="acc")
    table = report.claims_table(tested)
    assert "| a beats b | a vs b | +0.50 |" in table and "reproduced" in table
    assert str(report.summarise(records, "acc")["a"]) == "97.20 (0.20)"
    assert str(report.Summary(97.5, 0.1, 3)) == "97.50 (0.10)"


def test_reported_table1_has_every_cell_of_the_experiment():
    from gradreg import experiments
    assert set(papers.reported("mnist-table1").cells) == set(experiments.get("mnist-table1").cells)


def test_difference_of_differences_reduces_to_welch_with_constant_baselines():
    """With two baselines of zero spread the test is Welch's on the two treated groups, shifted."""
    records = _records({"a1": [3.0, 3.4, 3.2], "b1": [1.0, 1.0, 1.0], "a2": [2.0, 2.1, 1.8, 2.2], "b2": [0.5] * 4})
    c = stats.difference_of_differences(records, "a1", "b1", "a2", "b2", "acc")
    w = stats.welch_values([3.0, 3.4, 3.2], [2.0, 2.1, 1.8, 2.2])
    assert math.isclose(c.diff, w.diff - 0.5) and math.isclose(c.se, w.se) and math.isclose(c.df, w.df)
    assert math.isclose(c.t, (w.diff - 0.5) / w.se)


def test_runs_without_the_metric_are_left_out():
    records = _records({"a": [1.0, 2.0]}) + [{"cell": "a", "seed": 9, "status": "ok", "metrics": {}}]
    assert stats.values(records, "a", "acc") == [1.0, 2.0]


def test_paired_test_uses_the_per_seed_differences():
    from scipy import stats as sps
    from gradreg import stats as gstats
    a, b = [1.0, 2.0, 3.0, 4.5], [0.9, 1.7, 2.95, 4.1]
    recs = [{"cell": c, "seed": s, "status": "ok", "metrics": {"m": v}}
            for c, vals in (("a", a), ("b", b)) for s, v in enumerate(vals)]
    c = gstats.paired(recs, "a", "b", "m")
    want = sps.ttest_rel(a, b)
    assert abs(c.p - want.pvalue) < 1e-12 and abs(c.t - want.statistic) < 1e-12 and c.df == 3
    assert abs(c.diff - (sum(a) - sum(b)) / 4) < 1e-12
    assert gstats.welch(recs, "a", "b", "m").p > 0.5 > c.p          # pairing removes the between-seed spread
    assert math.isnan(gstats.paired(recs[:1] + recs[4:5], "a", "b", "m").p)   # one pair: no test

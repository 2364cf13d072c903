"""Welch's t-test and the verdicts, against hand-computed values."""
from __future__ import annotations

import math

from gradreg import papers, stats


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
    assert stats.verdict(c, ">") == "supported"
    assert stats.verdict(stats.welch(_records({"a": a, "b": b}), "b", "a", "acc"), ">").startswith("contradicted")
    assert stats.verdict(c, "=").startswith("contradicted")


def test_one_seed_is_not_testable():
    c = stats.welch(_records({"a": [1.0], "b": [2.0, 3.0]}), "a", "b", "acc")
    assert math.isnan(c.p) and stats.verdict(c, ">").startswith("not testable")


def test_reported_table1_has_every_cell_of_the_experiment():
    from gradreg import experiments
    assert set(papers.reported("mnist-table1").cells) == set(experiments.get("mnist-table1").cells)

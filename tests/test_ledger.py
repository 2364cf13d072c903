"""The claims ledger (gradreg.ledger): every registered experiment, every claim of papers.json and
every reported cell has a row; verdicts only from gradreg.stats; missing results give the command;
the papers' numbers are papers.json's. The expected rows are built here from the registry and the
data file, never from the ledger itself."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT
from gradreg import experiments, ledger, stats
from gradreg.errors import GradregError

PAPERS = json.loads((ROOT / "gradreg" / "papers.json").read_text())
EXPECTED_CLAIMS = {f"claim:{topic}#{i}" for topic, claims in PAPERS["_claims"].items() for i in range(len(claims))}
EXPECTED_CELLS = {f"cell:{name}/{cell}" for name, entry in PAPERS.items() if not name.startswith("_")
                  for cell in entry["cells"]}


@pytest.fixture(scope="module")
def committed():
    """The ledger on the committed cpu results (nothing is trained)."""
    return ledger.rows("cpu")


@pytest.fixture(scope="module", params=experiments.PROFILES)
def empty(request, tmp_path_factory):
    """The ledger of each profile on a results folder that holds nothing."""
    return request.param, ledger.rows(request.param, results_dir=str(tmp_path_factory.mktemp("results")))


def _check_coverage(rows):
    assert set(experiments.REGISTRY) <= {r.experiment for r in rows}, "a registered experiment has no row"
    keys = {k for r in rows for k in r.keys}
    assert not EXPECTED_CLAIMS - keys, f"claims of papers.json without a row: {sorted(EXPECTED_CLAIMS - keys)}"
    assert not EXPECTED_CELLS - keys, f"reported cells without a row: {sorted(EXPECTED_CELLS - keys)}"
    assert keys <= EXPECTED_CLAIMS | EXPECTED_CELLS, f"rows claim keys papers.json lacks: {sorted(keys - EXPECTED_CLAIMS - EXPECTED_CELLS)}"


def test_every_experiment_claim_and_cell_has_a_row(committed, empty):
    _check_coverage(committed)
    _check_coverage(empty[1])
    assert ledger.uncovered(committed) == [] and ledger.uncovered(empty[1]) == []


def test_a_missing_row_is_noticed(committed):
    """The coverage check fails when a row goes: without the quickstart row, or a claim's rows."""
    assert "experiment:quickstart" in ledger.uncovered([r for r in committed if r.experiment != "quickstart"])
    dropped = [r for r in committed if "claim:mnist-sizes#1" not in r.keys]
    assert "claim:mnist-sizes#1" in ledger.uncovered(dropped)
    assert ledger.expected_keys() == EXPECTED_CLAIMS | EXPECTED_CELLS


def _check_verdicts(rows):
    for r in rows:
        assert r.label in stats.LABELS + (ledger.NOT_RUN, ledger.NOT_TESTED), r.label
        if r.label in stats.LABELS:      # a statistical verdict is stats' own object, shown as stats wrote it
            assert isinstance(r.verdict, stats.Verdict) and r.verdict.label == r.label
            assert r.verdict_text == r.verdict.text and r.command is None
        else:
            assert r.verdict is None
        if r.label == ledger.NOT_RUN:
            assert r.command and r.verdict_text.startswith(ledger.NOT_RUN)


def test_verdicts_only_from_stats(committed, empty):
    _check_verdicts(committed)
    _check_verdicts(empty[1])
    assert any(r.label in stats.LABELS for r in committed)


def test_missing_results_give_the_command(empty):
    profile, rows = empty
    for r in rows:
        assert r.label == ledger.NOT_RUN, (r.claim, r.label)
        if r.experiment is None:          # the cost claims: the step bench that measures them
            assert "gradreg bench --only steps" in r.command
        else:
            assert experiments.command(r.experiment, profile) in r.command
            assert r.verdict_text.startswith(f"not yet run at {profile} scale")
    table = ledger.table(rows)
    assert all(cmd in table for cmd in ledger.commands(rows))
    assert ledger.counts(rows)[ledger.NOT_RUN] == len(rows)


def test_value_rows_below_paper_scale_say_so(committed):
    """A reported value is judged only at the paper's settings; the cpu Table 1 rows point there."""
    cells = [r for r in committed if any(k.startswith("cell:mnist-table1/") for k in r.keys)]
    assert len(cells) == len(PAPERS["mnist-table1"]["cells"])
    for r in cells:
        assert r.label == ledger.NOT_RUN and r.command == experiments.command("mnist-table1", "paper")


def test_paper_values_equal_papers_json(committed, empty):
    for rows in (committed, empty[1]):
        for r in rows:
            for name, cell, mean, std in r.paper_values:
                assert [mean, std] == PAPERS[name]["cells"][cell], (r.claim, name, cell)
            for key in r.keys:
                if key.startswith("cell:"):
                    name, cell = key[len("cell:"):].split("/", 1)
                    mean, std = PAPERS[name]["cells"][cell]
                    assert (name, cell, mean, std) in r.paper_values
                    assert f"{mean:.2f}" in r.paper or f"{mean:g}" in r.paper, (r.paper, mean)


def test_counts_and_table(committed):
    counts = ledger.counts(committed)
    assert tuple(counts) == ledger.LABELS and sum(counts.values()) == len(committed)
    lines = ledger.table(committed).splitlines()
    assert len(lines) == len(committed) + 2
    assert all(line.count(" | ") == len(ledger.COLUMNS) - 1 for line in lines[2:])   # no stray pipe splits a row


def test_unknown_profile_is_an_error():
    with pytest.raises(GradregError, match="unknown profile"):
        ledger.rows("gpu")

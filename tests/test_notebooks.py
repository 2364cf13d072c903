"""The notebook conventions (CONTRIBUTING.md) hold for every chapter."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib

import pytest
import yaml

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MARK = "# NBVAL_CHECK_OUTPUT"


def _code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_there_are_chapters():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_of_literals_first(path):
    cells = _code_cells(path)[1:]                     # after the set-up cell (test below)
    tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and cells[0] is tagged[0], "exactly one parameters cell, first after the set-up cell"
    for stmt in ast.parse("".join(tagged[0]["source"])).body:
        assert isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant), ast.dump(stmt)
    names = [t.id for s in ast.parse("".join(tagged[0]["source"])).body for t in s.targets]
    assert "PROFILE" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_except_checked_cells(path):
    for cell in _code_cells(path):
        source = "".join(cell["source"]).lstrip()
        if source.startswith(MARK):
            assert cell["outputs"], "an nbval-checked cell needs its expected output committed"
        else:
            assert not cell["outputs"] and cell["execution_count"] is None, source[:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_checks_pass(path):
    """nbval only compares outputs, so a check that printed FAIL when it was committed would keep
    "passing": no committed checked output may report a failure."""
    for cell in _code_cells(path):
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", ""))
            assert not any(line.lstrip().startswith("FAIL") for line in text.splitlines()), text[:200]


def test_every_chapter_starts_with_the_current_set_up_cell():
    """Colab and Binder open a chapter alone: its first cell fetches the book's release and installs
    gradreg, from the repository named once in _config.yml (tools/colab_cell.py keeps them in step)."""
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "colab_cell.py"), "--check", *map(str, NOTEBOOKS)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    first = "".join(_code_cells(NOTEBOOKS[0])[0]["source"])
    assert f'"{url}"' in first and f'"v{version}"' in first
    assert "remove-cell" in _code_cells(NOTEBOOKS[0])[0]["metadata"]["tags"]    # hidden in the book


def test_the_set_up_cell_does_nothing_where_gradreg_is_installed(tmp_path):
    """In a checkout (and CI) the cell must neither clone nor install nor change folder."""
    code = "".join(_code_cells(NOTEBOOKS[0])[0]["source"]) + "\nprint(os.getcwd())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == str(tmp_path) and not list(tmp_path.iterdir())

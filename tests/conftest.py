"""Shared fixtures: the offline data folder beside the checkout, and float64 for identity checks."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """$GRADREG_DATA if set, else ../shared/data beside the checkout (as CI lays it out)."""
    return Path(os.environ.get("GRADREG_DATA") or ROOT.parent / "shared" / "data")


@pytest.fixture
def data_dir() -> Path:
    path = shared_data()
    if not (path / "MNIST" / "raw").is_dir():
        pytest.fail(f"test data not found at {path}: set GRADREG_DATA or put shared/ beside the checkout")
    return path


@pytest.fixture
def results_dir(tmp_path, monkeypatch) -> Path:
    """A private results folder, so tests never touch the committed results/."""
    monkeypatch.setenv("GRADREG_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"

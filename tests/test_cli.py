"""The command line's normal output (its bad inputs are in test_bad_inputs.py)."""
from __future__ import annotations

import json
import subprocess
import sys



def gradreg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradreg", *args], capture_output=True, text=True, timeout=300)


def test_list_shows_every_experiment_and_profile():
    out = gradreg("list")
    assert out.returncode == 0
    for name in ("sin5x", "mnist-table1"):
        for profile in ("smoke", "cpu", "paper"):
            assert any(line.split()[:2] == [name, profile] for line in out.stdout.splitlines())


def test_bench_json_last_line_maps_each_regularizer_to_a_ratio():
    out = gradreg("bench", "--json", "--reps", "1", "--steps", "1", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    ratios = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(ratios) == {"datagrad", "spectreg", "frobreg", "jacreg", "onehot", "random_onehot", "confidence"}
    assert all(r > 0 for r in ratios.values())

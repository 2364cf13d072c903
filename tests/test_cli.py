"""The command line: every bad input ends in one clear line and a non-zero exit."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


def gradreg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradreg", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["run", "imagenet", "--profile", "smoke"], "unknown experiment 'imagenet'"),
    (["run", "sin5x", "--profile", "huge"], "unknown profile 'huge'"),
    (["train", "regularizer=gradnorm"], "unknown regularizer 'gradnorm'"),
    (["train", "regularizer=datagrad", "weight=-1"], "weight must be a finite number >= 0"),
    (["train", "learning_rate=0.1"], "unknown config key 'learning_rate'"),
    (["train", "lr=fast"], "lr must be a number, got 'fast'"),
    (["run", "mnist-table1", "--profile", "smoke", "--data-dir", "/nonexistent/data"],
     "data directory /nonexistent/data (from --data-dir) does not exist"),
])
def test_bad_input_gives_one_clear_error(args, message, results_dir):
    out = gradreg(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradreg: error:") and message in lines[0], out.stderr


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

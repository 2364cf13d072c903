"""The runner: resume after a kill, determinism, divergence, and the registry's contracts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from gradreg import experiments, results
from gradreg.data import Dataset
from gradreg.errors import GradregError
from gradreg.train import TrainConfig, train


def test_every_experiment_has_three_profiles():
    for exp in experiments.REGISTRY.values():
        assert set(exp.profiles) == set(experiments.PROFILES), exp.name
        if exp.derived is None:   # grids derived from other results: tests/test_cifar.py
            assert exp.configs("smoke") and exp.estimated_cpu_seconds("cpu") > 0


def test_required_experiments_are_registered():
    assert {"sin5x", "mnist-table1"} <= set(experiments.REGISTRY)
    cells = experiments.get("mnist-table1").cells
    assert len(cells) == 9 and cells["dropout/datagrad"]["weight"] == 50.0
    assert experiments.get("mnist-table1").profile("paper").seeds == 10


def test_mnist_grids_follow_the_authors_settings():
    sizes = experiments.get("mnist-sizes")
    assert len(sizes.cells) == 8 * 6 and sizes.cells["n10000/datagrad"] == {"n_train": 10000, "regularizer": "datagrad",
                                                                            "weight": 5.0}
    assert sizes.cells["n20000/confidence"]["weight"] == pytest.approx(50 * 0.03)   # β · batch: a mean, not a sum
    assert {cfg.n_train for _, _, cfg in sizes.configs("cpu")} == {500, 2000, 5000, 20000}
    assert len(sizes.configs("paper")) == 480
    family = experiments.get("mnist-family")
    assert {c: o.get("weight") for c, o in family.cells.items()} == {
        "nogr": None, "datagrad": 50.0, "onehot": 0.3, "random_onehot": 0.3, "spectreg": 0.03, "jacreg": 1.0,
        "frobreg": 0.03}
    grid = experiments.get("mnist-wd-grid")
    assert len(grid.cells) == 72 and grid.cells["wd0.005/dg1000"] == {"weight_decay": 0.005, "weight": 1000.0}


def test_a_profile_naming_unknown_cells_is_rejected():
    with pytest.raises(GradregError, match="profile 'cpu' names unknown cells: nope"):
        experiments.Experiment("x", "x", "x", TrainConfig(), {"a": {}}, {"cpu": experiments.Profile(1, {}, ("a", "nope"))})


def test_unknown_experiment_and_profile():
    with pytest.raises(GradregError, match="unknown experiment"):
        experiments.get("imagenet")
    with pytest.raises(GradregError, match="unknown profile 'huge'"):
        experiments.get("sin5x").configs("huge")


def test_kill_midway_then_resume_loses_and_redoes_nothing(results_dir):
    """SIGKILL a running grid, rerun it: the finished records survive untouched, the rest are added."""
    cmd = [sys.executable, "-m", "gradreg", "run", "sin5x", "--profile", "smoke", "--seeds", "4",
           "--device", "cpu", "--no-progress", "--results-dir", str(results_dir)]
    store = results.Store("sin5x", "smoke", results_dir)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (store.path.exists() and len(store.records()) >= 5):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = store.records()
    total = len(experiments.get("sin5x").cells) * 4
    assert 5 <= len(before) < total, "the kill should land midway through the grid"
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert f"{total} runs, {len(before)} already" in out
    after = {(r["cell"], r["seed"]): r for r in store.records()}
    assert len(after) == total
    for r in before:  # nothing lost, nothing redone: identical records, same finishing time
        assert after[(r["cell"], r["seed"])] == r
    assert not list(store.path.parent.glob("*.tmp")), "no temporary files left behind"


def test_same_seed_gives_identical_smoke_metrics(data_dir):
    exp = experiments.get("quickstart")
    _, _, cfg = exp.configs("smoke")[-1]  # the DataGrad cell
    cfg = cfg.replace(device="cpu")
    a = train(cfg, data_dir=str(data_dir), progress=False)
    b = train(cfg, data_dir=str(data_dir), progress=False)
    assert a["status"] == "ok" and a["metrics"] == b["metrics"] and a["history"] == b["history"]
    c = train(cfg.replace(seed=1), data_dir=str(data_dir), progress=False)
    assert c["metrics"] != a["metrics"]


def test_non_finite_loss_stops_the_run_with_a_status():
    x = torch.randn(100, 1)
    x[7] = float("nan")
    data = Dataset("broken", x, x.clone(), x[:10], x[:10], None)
    cfg = TrainConfig(dataset="sin5x", model="toy", loss="squared_error", iterations=500, log_every=10,
                      device="cpu", eval_points=None)
    out = train(cfg, data=data, progress=False)
    assert out["status"] == "diverged" and out["iterations_done"] < 500 and out["metrics"] == {}


def test_config_validation_gives_clear_errors():
    with pytest.raises(GradregError, match="weight must be a finite number >= 0"):
        TrainConfig(regularizer="datagrad", weight=-1.0)
    with pytest.raises(GradregError, match="unknown regularizer"):
        TrainConfig(regularizer="nope")
    with pytest.raises(GradregError, match="unknown config key"):
        TrainConfig().replace(learning_rate=0.1)


def test_records_carry_provenance(results_dir):
    recs = experiments.run("sin5x", "smoke", device="cpu", progress=False, log=lambda _: None)
    r = recs[0]
    assert {"git_commit", "torch", "device", "finished_at"} <= set(r["provenance"])
    assert r["config"]["iterations"] == 50 and r["train_seconds"] > 0
    assert json.loads(results.Store("sin5x", "smoke", results_dir).path.read_text())["profile"] == "smoke"
    assert len(r["metrics"]["curve"]) == 101 and r["metrics"]["slope_grid"] > 0


def test_batch_statistics_accuracy_is_train_mode_batchnorm_without_updates():
    """The authors' BatchNorm evaluation: each test batch normalised by itself; nothing is updated."""
    from gradreg import models, varga2017
    torch.manual_seed(0)
    model = models.build("lenet", head="batchnorm").eval()
    x, y = torch.randn(100, 1, 28, 28), torch.randint(10, (100,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = varga2017.batch_stats_accuracy(model, Dataset("t", x, y, x, y, None))["test_accuracy_batch_stats"]
    reference = models.build("lenet", head="batchnorm")
    reference.load_state_dict(before)
    reference.train()
    expected = sum((reference(x[i: i + 50]).argmax(1) == y[i: i + 50]).sum().item() for i in (0, 50))
    assert got == expected and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert varga2017.batch_stats_accuracy(models.build("lenet").eval(), Dataset("t", x, y, x, y, None)) == {}

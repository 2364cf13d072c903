"""``gradreg run --executor ray`` against real Ray on this machine.

A local instance (no ``--address``) must write exactly the records the local executor writes; a
cluster started with ``ray start --head`` (the ``ray_cluster`` fixture) is joined by address for the
failure tests: a worker process killed mid-task, a driver killed or interrupted midway. Every run is
a real ``gradreg`` process, as a user would start it; the sin(5x) grid keeps each run short.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gradreg import experiments, results

RAY = str(Path(sys.executable).with_name("ray"))
GRID = {(c, s) for c, s, _ in experiments.get("sin5x").configs("smoke")}          # 15 runs, one seed
GRID3 = {(c, s) for c, s, _ in experiments.get("sin5x").configs("smoke", 3)}      # 45 runs
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "token"}           # token: see the book's cluster page


def gradreg(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradreg", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or ENV)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gradreg", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def by_key(folder: Path, profile: str = "smoke") -> dict[tuple[str, int], dict]:
    records = results.Store("sin5x", profile, folder).records()
    keys = [(r["cell"], r["seed"]) for r in records]
    assert len(keys) == len(set(keys)), "a run was stored twice"
    return dict(zip(keys, records))


def wait_for(condition, timeout: float = 120, every: float = 0.005):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"condition not met within {timeout} s")


@pytest.fixture(scope="module")
def ray_cluster():
    """A 2-CPU Ray cluster started as a user would (``ray start --head``); its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([RAY, "stop", "--force"], capture_output=True, env=ENV)
    up = subprocess.run([RAY, "start", "--head", "--num-cpus=2", f"--port={port}", "--include-dashboard=false",
                         "--disable-usage-stats"], capture_output=True, text=True, env=ENV, timeout=120)
    assert up.returncode == 0, up.stderr[-2000:]
    yield f"127.0.0.1:{port}"
    subprocess.run([RAY, "stop", "--force"], capture_output=True, env=ENV, timeout=120)


def test_importing_gradreg_never_imports_ray():
    code = ("import sys, gradreg, gradreg.experiments, gradreg.cli, gradreg.report, gradreg.bench; "
            "gradreg.cli.parser().parse_args(['run', 'sin5x', '--profile', 'smoke']); "
            "assert 'ray' not in sys.modules, 'ray imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_ray_writes_the_records_the_local_executor_writes(tmp_path):
    """Same keys, same configs, bit-identical metrics, history and curves (CPU, one thread each);
    only timings and provenance differ, and provenance names the executor and the node."""
    ray_run = gradreg("run", "sin5x", "--profile", "smoke", "--executor", "ray", "--no-progress",
                      "--results-dir", str(tmp_path / "ray"))
    assert ray_run.returncode == 0, ray_run.stderr[-3000:]
    local = gradreg("run", "sin5x", "--profile", "smoke", "--no-progress", "--results-dir", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    a, b = by_key(tmp_path / "local"), by_key(tmp_path / "ray")
    assert set(a) == set(b) == GRID
    for key in GRID:
        for field in ("status", "metrics", "history", "curve", "config", "iterations_done", "device"):
            assert a[key][field] == b[key][field], (key, field)
        assert a[key]["provenance"]["executor"] == "local" and b[key]["provenance"]["executor"] == "ray"
        assert a[key]["provenance"]["node"] == b[key]["provenance"]["node"] == socket.gethostname()
        assert b[key]["provenance"]["threads"] == 1
    assert "on Ray (" in ray_run.stdout and "15 done, 0 running, 0 queued" in ray_run.stdout


def _kill_a_training_worker() -> int:
    """SIGKILL the first Ray worker process caught training a unit (its title is ``ray::_train``)."""
    def find() -> int | None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::_train"):
                    os.kill(int(pid), signal.SIGKILL)
                    return int(pid)
            except OSError:
                continue
        return None
    return wait_for(find)


def test_a_worker_killed_mid_run_is_retried(ray_cluster, tmp_path):
    driver = start("run", "sin5x", "--profile", "smoke", "--executor", "ray", "--address", ray_cluster,
                   "--no-progress", "--results-dir", str(tmp_path))
    _kill_a_training_worker()
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err[-3000:]
    assert "its worker was lost (WorkerCrashedError); re-queued, retry 1 of 3" in out
    assert set(by_key(tmp_path)) == GRID


def test_retries_are_bounded_and_the_rest_of_the_grid_is_stored(ray_cluster, tmp_path):
    driver = start("run", "sin5x", "--profile", "smoke", "--executor", "ray", "--address", ray_cluster,
                   "--retries", "0", "--no-progress", "--results-dir", str(tmp_path))
    _kill_a_training_worker()
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 2, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("gradreg: error: 1 run(s) failed on 1 workers each")
    stored = set(by_key(tmp_path))
    assert len(stored) == len(GRID) - 1 and stored < GRID
    again = gradreg("run", "sin5x", "--profile", "smoke", "--executor", "ray", "--address", ray_cluster,
                    "--no-progress", "--results-dir", str(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(GRID) - 1} already in" in again.stdout and set(by_key(tmp_path)) == GRID


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_a_driver_stopped_midway_resumes_losing_nothing_redoing_nothing(ray_cluster, tmp_path, how):
    """Ctrl-C (exit 130) or SIGKILL of the driver midway through 45 runs; the rerun trains exactly the
    runs not stored, and every record stored before the stop is kept unchanged."""
    args = ("run", "sin5x", "--profile", "smoke", "--seeds", "3", "--executor", "ray", "--address", ray_cluster,
            "--no-progress", "--results-dir", str(tmp_path))
    path = tmp_path / "sin5x" / "smoke.json"
    driver = start(*args)
    wait_for(lambda: path.exists() and len(json.loads(path.read_text())["records"]) >= 5, every=0.02)
    driver.send_signal(how)
    out, err = driver.communicate(timeout=120)
    if how == signal.SIGINT:
        assert driver.returncode == 130 and "finished runs are stored" in err, err[-3000:]
    before = by_key(tmp_path)
    assert 5 <= len(before) < len(GRID3)
    again = gradreg(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"45 runs, {len(before)} already in" in again.stdout
    trained = [line for line in again.stdout.splitlines() if line.startswith("  [")]
    assert len(trained) == len(GRID3) - len(before)
    after = by_key(tmp_path)
    assert set(after) == GRID3
    assert all(after[k] == before[k] for k in before), "a stored record was redone or changed"


@pytest.mark.parametrize("args, message", [
    (("--executor", "ray", "--address", "127.0.0.1:1"), "no Ray cluster answers at 127.0.0.1:1"),
    (("--executor", "ray", "--gpus-per-run", "1"), "--gpus-per-run 1: the Ray cluster has 0 GPUs"),
    (("--executor", "ray", "--cpus-per-run", "-1"), "--cpus-per-run must be a number >= 0"),
    (("--executor", "ray", "--retries", "-1"), "--retries must be an integer from 0 to 100"),
    (("--executor", "ray", "--device", "cuda", "--gpus-per-run", "0"), "--device cuda needs --gpus-per-run > 0"),
    (("--address", "auto"), "--address needs --executor ray"),
    (("--executor", "dask"), "invalid choice: 'dask'"),
])
def test_bad_cluster_options_are_one_error_and_write_nothing(tmp_path, args, message):
    out = gradreg("run", "sin5x", "--profile", "smoke", "--no-progress", "--results-dir", str(tmp_path), *args,
                  timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("gradreg: error:") and message in lines[-1], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "sin5x").exists()


def test_without_ray_installed_the_ray_executor_is_one_clear_error(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from gradreg import cli; "
            f"sys.exit(cli.main(['run', 'sin5x', '--profile', 'smoke', '--executor', 'ray', '--results-dir', {str(tmp_path)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
        "gradreg: error: --executor ray needs Ray, which is not installed: pip install 'gradreg[cluster]'")
    assert not (tmp_path / "sin5x").exists()

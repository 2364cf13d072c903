"""Several processes on one results file: nothing lost, nothing trained twice, stale claims expire.

Real processes throughout: the lock and the claims are ``flock``s, which threads would share.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

from gradreg import experiments, results

WRITER = textwrap.dedent("""
    import sys
    from gradreg import results
    store = results.Store("stress", "smoke", sys.argv[1])
    for i in range(int(sys.argv[3])):
        store.add({"cell": sys.argv[2], "seed": i, "status": "ok", "metrics": {"i": i}})
""")


def test_two_writers_lose_no_record(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name, "150"]) for name in ("a", "b")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    records = results.Store("stress", "smoke", tmp_path).records()
    assert Counter((r["cell"], r["seed"]) for r in records) == Counter(
        {(c, i): 1 for c in ("a", "b") for i in range(150)})
    assert not list((tmp_path / "stress").glob("*.tmp"))


TRAINED = re.compile(r"^\s+\[\d+/\d+\] (\S+) seed (\d+): ")


def test_two_runs_of_one_grid_split_the_work(tmp_path):
    """`--seeds 2` and `--seeds 3` at once: each run trained by exactly one of them, all stored once."""
    cmd = [sys.executable, "-m", "gradreg", "run", "sin5x", "--profile", "smoke", "--device", "cpu",
           "--no-progress", "--results-dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}   # two processes on two cores: no thread oversubscription
    procs = [subprocess.Popen([*cmd, "--seeds", n], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for n in ("2", "3")]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    trained = Counter((m[1], int(m[2])) for out, _ in outs for line in out.splitlines() if (m := TRAINED.match(line)))
    grid = {(c, s) for c, s, _ in experiments.get("sin5x").configs("smoke", 3)}
    assert set(trained) == grid and max(trained.values()) == 1, "a run was trained twice or not at all"
    stored = Counter((r["cell"], r["seed"]) for r in results.Store("sin5x", "smoke", tmp_path).records())
    assert set(stored) == grid and max(stored.values()) == 1


HOLDER = textwrap.dedent("""
    import sys, time
    from gradreg import results
    store = results.Store("sin5x", "smoke", sys.argv[1])
    with store.claim([("none", 0)]) as mine:
        assert mine == [("none", 0)]
        print("claimed", flush=True)
        time.sleep(600)
""")


def _holder(results_dir) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(results_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "claimed"
    return proc


def test_a_live_claim_is_left_to_its_holder_and_a_killed_ones_claim_expires(results_dir):
    holder = _holder(results_dir)
    try:
        lines: list[str] = []
        recs = experiments.run("sin5x", "smoke", device="cpu", progress=False, log=lines.append)
        assert ("none", 0) not in {(r["cell"], r["seed"]) for r in recs}, "trained a run another process holds"
        assert len(recs) == len(experiments.get("sin5x").cells) - 1
        assert any("1 runs were skipped" in line for line in lines)
    finally:
        os.kill(holder.pid, signal.SIGKILL)             # dies holding the claim: its claim file stays
        holder.wait()
    claim_files = list(results.Store("sin5x", "smoke", results_dir).claims.iterdir())
    assert len(claim_files) == 1, "the killed holder's claim file should still be there"
    start = time.time()
    recs = experiments.run("sin5x", "smoke", device="cpu", progress=False, log=lambda _: None)
    assert ("none", 0) in {(r["cell"], r["seed"]) for r in recs} and time.time() - start < 60
    assert not list(results.Store("sin5x", "smoke", results_dir).claims.iterdir()), "claims are released"

"""The results store: ``results/<experiment>/<profile>.json``, one record per finished (cell, seed) run.

Each record carries its provenance — git commit, torch version, device, wall time, the full config —
so every number in the book can be traced to the run that produced it. The file is rewritten
atomically (temporary file + rename) after each finished run: a killed grid loses at most the run in
flight, and a rerun skips every (cell, seed) already stored.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

Record = dict[str, Any]


def repo_root() -> Path | None:
    """The source checkout this package lives in, if it is one (it has pyproject.toml)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").exists() else None


def default_dir() -> Path:
    """$GRADREG_RESULTS, else the checkout's ``results/``, else ``./results``."""
    if os.environ.get("GRADREG_RESULTS"):
        return Path(os.environ["GRADREG_RESULTS"])
    root = repo_root()
    return root / "results" if root else Path("results")


def git_commit() -> str:
    """The checkout's commit, with "+dirty" when tracked files differ from it; "unknown" outside git."""
    root = repo_root() or Path.cwd()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "gradreg"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(device: str, commit: str | None = None) -> dict[str, Any]:
    """Where and with what a run was made. ``commit``: the code's commit, read when the code was
    loaded (a grid reads it once at its start, so later edits to the tree do not mislabel it)."""
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    return {"git_commit": commit or git_commit(), "torch": torch.__version__, "python": platform.python_version(),
            "device": device, "device_name": name, "threads": torch.get_num_threads(),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


class Store:
    """Records of one (experiment, profile), kept in one JSON file."""

    def __init__(self, experiment: str, profile: str, root: str | os.PathLike | None = None):
        self.path = Path(root or default_dir()) / experiment / f"{profile}.json"
        self.experiment, self.profile = experiment, profile

    def records(self) -> list[Record]:
        """All stored records (an absent file means none)."""
        if not self.path.exists():
            return []
        return json.loads(self.path.read_text())["records"]

    def done(self) -> set[tuple[str, int]]:
        """The (cell, seed) pairs already finished."""
        return {(r["cell"], r["seed"]) for r in self.records()}

    def add(self, record: Record) -> None:
        """Append one finished run (replacing an older record of the same cell and seed), atomically.

        Records keep the order they were run in, which is the grid's order.
        """
        key = (record["cell"], record["seed"])
        records = [r for r in self.records() if (r["cell"], r["seed"]) != key] + [record]
        payload = {"experiment": self.experiment, "profile": self.profile, "records": records}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.profile}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are shared files
        os.replace(tmp, self.path)

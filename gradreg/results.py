"""The results store: ``results/<experiment>/<profile>.json``, one record per finished (cell, seed) run.

Each record carries its provenance — git commit, torch version, device, wall time, the full config —
so every number in the book can be traced to the run that produced it. What the store guarantees:

- **atomic**: a file is replaced by rename of a complete, fsynced temporary file, so a kill or a full
  disk leaves the previous version intact (and a failed write removes its temporary file);
- **locked**: every read-modify-write holds an exclusive ``flock`` on a sidecar lock file, so
  concurrent writers (two ``gradreg run`` on one grid) never lose each other's records;
- **claimed**: a worker claims a (cell, seed) — a ``flock`` on a claim file — before training it,
  so two workers on one grid split the work; the kernel drops the claim of a killed process;
- **strict JSON**: no bare ``NaN``/``Infinity``: non-finite numbers are stored as ``null`` (the
  record's ``status`` says the run diverged);
- **checked**: a corrupt or foreign file is one clear error naming it, and is never overwritten.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import re
import socket
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import torch

from .errors import GradregError

Record = dict[str, Any]


def repo_root() -> Path | None:
    """The source checkout this package lives in, if it is one (it has pyproject.toml)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").exists() else None


def default_dir() -> Path:
    """$GRADREG_RESULTS, else the checkout's ``results/``, else ``./results``."""
    if os.environ.get("GRADREG_RESULTS"):
        return _expand(os.environ["GRADREG_RESULTS"], "$GRADREG_RESULTS")
    root = repo_root()
    return root / "results" if root else Path("results")


def _expand(path: str, what: str) -> Path:
    """``~`` expanded; an unknown user (``~nobody_here/x``) is a GradregError, not a RuntimeError."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise GradregError(f"{what} {path!r}: cannot expand '~' (no such user's home folder)") from None


def root_dir(root: str | os.PathLike | None = None) -> Path:
    """The results folder: ``root`` if given, else ``default_dir()``. An explicitly empty
    ``--results-dir ''`` is an error, not a silent fall-back to the default folder."""
    if root is None:
        return default_dir()
    if not isinstance(root, (str, os.PathLike)) or isinstance(os.fspath(root), bytes):
        raise GradregError(f"--results-dir must be a folder path, got {root!r}")
    if not os.fspath(root).strip():
        raise GradregError("--results-dir is empty; give a folder, or leave the option out to use "
                           "$GRADREG_RESULTS or the checkout's results/")
    return _expand(os.fspath(root), "--results-dir")


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


def provenance(device: str, commit: str | None = None, executor: str = "local") -> dict[str, Any]:
    """Where and with what a run was made. ``commit``: the code's commit, read when the code was
    loaded (a grid reads it once at its start, so later edits to the tree do not mislabel it).
    ``executor``: what ran it ("local": the ``gradreg run`` process itself; "ray": a Ray worker);
    ``node``: the host that trained it (read here, in the process that trained)."""
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    return {"git_commit": commit or git_commit(), "torch": torch.__version__, "python": platform.python_version(),
            "device": device, "device_name": name, "threads": torch.get_num_threads(),
            "executor": executor, "node": socket.gethostname(),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# ---------------------------------------------------------------- strict JSON, written atomically

def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, so it serialises as strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def _plain(obj: Any) -> Any:
    """numpy scalars (``np.float32(1)``) as Python numbers; anything else JSON cannot hold is an error."""
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        return strict(obj.item())
    raise GradregError(f"cannot store {type(obj).__name__} {obj!r:.60} as JSON: give numbers, strings, "
                       "lists and dicts")


def dumps(obj: Any) -> str:
    """Strict JSON text (non-finite numbers become null), indented one space as the results files are."""
    return json.dumps(strict(obj), indent=1, allow_nan=False, default=_plain)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


def read_json(path: Path, what: str) -> Any:
    """Parse a strict-JSON file; anything unreadable is one GradregError naming the file. Only a
    regular file is opened (reading a named pipe in its place would wait forever)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise GradregError(f"{what} {path} is a directory, not a file; move it aside")
        if path.exists() and not path.is_file():
            raise GradregError(f"{what} {path} is not a regular file (a pipe or a device?); move it aside")
        return json.loads(path.read_text(), parse_constant=_refuse_constant)
    except OSError as err:
        raise GradregError(f"cannot read {what} {path}: {err.strerror or err}") from None
    except (ValueError, UnicodeDecodeError, RecursionError, MemoryError) as err:
        why = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: nested too deeply or too large"
        raise GradregError(f"{what} {path} is not valid JSON ({why}); it was left as it is: "
                           "restore it (e.g. git checkout -- FILE) or move it aside to start afresh") from None


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` all at once: write a temporary file beside it, fsync, rename.

    On any failure (full disk, read-only folder) the temporary file is removed, the old file is
    untouched and one GradregError says what happened.
    """
    tmp, path = None, Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are shared files
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise GradregError(f"could not write {path}: {err.strerror or err}; "
                           "the previous file (if any) is unchanged") from None


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove that a file can be written there, before any work whose
    result would be lost if the write failed at the end."""
    probe = folder / f".probe-{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise GradregError(f"results folder {folder} is not writable ({err.strerror or err}); "
                           "choose another with --results-dir or GRADREG_RESULTS") from None


def _check_records(payload: Any, path: Path, experiment: str, profile: str) -> list[Record]:
    """The records of a results file, after checking its layout and that it belongs to this
    (experiment, profile); a damaged or foreign file is a GradregError."""
    def bad(why: str) -> GradregError:
        return GradregError(f"results file {path} is damaged ({why}); it was left as it is: restore it "
                            "(e.g. git checkout -- FILE) or move it aside to start that grid afresh")
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise bad('expected an object with a "records" list')
    if (payload.get("experiment"), payload.get("profile")) != (experiment, profile):
        raise bad(f"it holds experiment {payload.get('experiment')!r} at profile {payload.get('profile')!r}, "
                  f"not {experiment!r} at {profile!r}")
    for i, r in enumerate(payload["records"]):
        if not isinstance(r, dict):
            raise bad(f"record {i} is {type(r).__name__}, not an object")
        if not isinstance(r.get("cell"), str) or type(r.get("seed")) is not int:
            raise bad(f"record {i} lacks a string cell or an integer seed")
        if not isinstance(r.get("status"), str) or not isinstance(r.get("metrics"), dict):
            raise bad(f"record {i} lacks a status or a metrics object")
    return payload["records"]


# ---------------------------------------------------------------- the store

def _open_sidecar(path: Path) -> int:
    """Open (creating) a lock or claim file of ours. Whatever else sits at that path — a link, a
    pipe, a folder — is replaced first: a lock must never write through a link into another file."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    if path.is_symlink() or (path.exists() and not path.is_file()):
        if path.is_dir() and not path.is_symlink():
            os.rmdir(path)                       # only an empty folder; anything more is an error
        else:
            path.unlink()
    fd = os.open(path, flags, 0o644)
    os.set_blocking(fd, True)
    return fd


_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # experiment and profile names: no path separators
LOCK_PATIENCE_S = 120.0                 # a lock is held for one read-modify-write: milliseconds


class Store:
    """Records of one (experiment, profile), kept in one JSON file, with its lock and claims."""

    def __init__(self, experiment: str, profile: str, root: str | os.PathLike | None = None):
        for what, name in (("experiment", experiment), ("profile", profile)):
            if not isinstance(name, str) or not _NAME.fullmatch(name) or name.startswith("."):
                raise GradregError(f"{what} name {name!r} cannot name a results file (letters, digits, - _ .)")
        self.path = root_dir(root) / experiment / f"{profile}.json"
        self.experiment, self.profile = experiment, profile
        self.lock_path = self.path.with_name(f".{profile}.json.lock")
        self.claims = self.path.with_name(f".{profile}.claims")

    def records(self) -> list[Record]:
        """All stored records (an absent file means none); a damaged file is a GradregError."""
        if not self.path.exists() and not self.path.is_symlink():
            return []
        return _check_records(read_json(self.path, "results file"), self.path, self.experiment, self.profile)

    def done(self) -> set[tuple[str, int]]:
        """The (cell, seed) pairs already finished."""
        return {(r["cell"], r["seed"]) for r in self.records()}

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the exclusive lock of this results file (blocks while another process holds it)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = _open_sidecar(self.lock_path)
        except OSError as err:
            raise GradregError(f"cannot lock {self.path} ({err.strerror or err}); "
                               "choose a writable --results-dir or GRADREG_RESULTS") from None
        try:
            self._acquire(fd)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _acquire(self, fd: int) -> None:
        """Take the lock, waiting at most LOCK_PATIENCE_S: a holder that long is stuck (stopped?)."""
        deadline = time.monotonic() + LOCK_PATIENCE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GradregError(f"{self.lock_path} has been locked by another process for "
                                       f"{LOCK_PATIENCE_S:.0f} s; is a gradreg process stopped? "
                                       "Finish or kill it, then rerun") from None
                time.sleep(0.05)

    def prepare(self) -> None:
        """Before training: the file must be readable (or absent) and its folder writable; orphan
        temporary files of killed writers are removed. Fails fast, so no finished run is lost later."""
        if self.path.is_dir():
            raise GradregError(f"results file {self.path} is a directory, not a file; move it aside")
        ensure_writable(self.path.parent)
        with self.lock():
            self.records()
            for orphan in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # under the lock: nobody writes
                with contextlib.suppress(OSError):
                    orphan.unlink()

    def add(self, record: Record) -> None:
        """Append one finished run (replacing an older record of the same cell and seed), atomically,
        under the lock. Records keep the order they were run in, which is the grid's order."""
        if not isinstance(record, dict) or not isinstance(record.get("cell"), str) or type(record.get("seed")) is not int \
                or not isinstance(record.get("status"), str) or not isinstance(record.get("metrics"), dict):
            raise GradregError(f"a record needs a string cell, an integer seed, a status and a metrics dict, "
                               f"got {record!r:.80}")
        key = (record["cell"], record["seed"])
        with self.lock():
            records = [r for r in self.records() if (r["cell"], r["seed"]) != key] + [strict(record)]
            atomic_write(self.path, dumps({"experiment": self.experiment, "profile": self.profile,
                                           "records": records}))

    @contextlib.contextmanager
    def claim(self, keys: list[tuple[str, int]]) -> Iterator[list[tuple[str, int]]]:
        """Claim (cell, seed) runs for this process: yields those it holds and that are not stored yet.

        A claim is an exclusive, non-blocking ``flock`` on ``.<profile>.claims/<cell>.<seed>``; one
        held by another live process is skipped (that process trains the run). The kernel releases
        the locks of a killed process, so a stale claim never blocks. Store the records before
        leaving the block: a claim is released only after that, and a later claimant re-checks the
        store, so no run is trained twice.
        """
        with contextlib.ExitStack() as stack:
            held = [k for k in keys if self._try_claim(k, stack)]
            done = self.done()
            yield [k for k in held if k not in done]

    def _try_claim(self, key: tuple[str, int], stack: contextlib.ExitStack) -> bool:
        path = self.claims / f"{quote(key[0], safe='')}.{key[1]}"
        try:
            self.claims.mkdir(parents=True, exist_ok=True)
            fd = _open_sidecar(path)
        except OSError as err:
            raise GradregError(f"cannot create claim {path} ({err.strerror or err}); "
                               "choose a writable --results-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode())

        def release() -> None:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)
        stack.callback(release)
        return True

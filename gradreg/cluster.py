"""Run a grid on a Ray cluster: ``gradreg run EXPERIMENT --profile P --executor ray``.

The driver (the ``gradreg run`` process) expands the grid and skips what is stored, exactly as the
local executor does; then it sends each missing run — or, on GPUs, each cell's seeds as one stacked
model — to Ray as a task asking for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs. A worker
trains with the same ``experiments.train_unit`` and returns finished records (provenance read on
the worker: its device, node, torch and commit); the driver stores each through the one locked,
atomic results store as it comes back. So a grid gives the same file, record for record, whichever
executor ran it.

- **Bounded in-flight work.** The driver submits as many tasks as the cluster has room for (its
  CPUs ÷ ``cpus_per_run``, GPUs ÷ ``gpus_per_run``, read again after each result so a growing
  cluster is used) and claims each task's runs in the store first, so two drivers — or a driver and
  a local ``gradreg run`` — on one grid split it rather than train a run twice.
- **Lost workers.** A task whose worker process or node died is re-queued, at most ``retries``
  times; then its runs are reported as failed and the rest of the grid goes on. An error *in* the
  training (bad data on a node, a bug) is not retried: it stops the grid with that error.
- **Interruption.** Ctrl-C stores every result that has already come back, cancels the tasks in
  flight and releases their claims; rerunning the command resumes. A driver killed outright loses
  only the runs in flight: Ray cancels a dead driver's tasks and the kernel drops its claims.

This module imports ray; ``gradreg`` imports it only when ``--executor ray`` is asked for.
"""
from __future__ import annotations

import contextlib
import functools
import math
import numbers
import socket
import tempfile
import time
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator

import ray
import torch
from ray import exceptions as rayerr
from tqdm.auto import tqdm

from . import __version__
from . import experiments
from . import results as results_store
from .config import TrainConfig
from .errors import GradregError
from .train import load_data, resolve_device

Run = tuple[str, int, TrainConfig]                 # (cell, seed, config)
MAX_RETRIES = 100
# failures of the machinery, not of the run: the same task may well succeed on another worker
LOST = (rayerr.WorkerCrashedError, rayerr.NodeDiedError, rayerr.OutOfMemoryError, rayerr.ObjectLostError,
        rayerr.LocalRayletDiedError)


@dataclass(frozen=True)
class Options:
    """How runs are placed on the cluster (the ``--executor ray`` options of ``gradreg run``)."""

    address: str | None = None        # a cluster ("auto", "HOST:PORT", "ray://HOST:10001"); None: this machine's, or a new one
    cpus_per_run: float = 1.0         # CPUs a task reserves; its torch uses that many threads
    gpus_per_run: float | None = None  # GPUs a task reserves (fractions share one); None: 1 if the cluster has GPUs
    retries: int = 3                  # re-queues of a task whose worker or node was lost
    num_cpus: int | None = None       # size of a local instance (None: this machine's CPUs); not with address
    device: str = "auto"              # the runs' device, as `gradreg run --device`

    @classmethod
    def make(cls, **given: Any) -> "Options":
        """Options from keyword arguments, each checked; any bad one is one GradregError."""
        known = {f.name for f in fields(cls)}
        unknown = set(given) - known
        if unknown:
            raise GradregError(f"unknown Ray option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        opts = cls(**{k: v for k, v in given.items() if v is not None})
        opts.check()
        return opts

    def check(self) -> None:
        def number(name: str, value: Any, low: float) -> None:
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) \
                    or value < low:
                raise GradregError(f"--{name.replace('_', '-')} must be a number >= {low:g}, got {value!r}")
        number("cpus_per_run", self.cpus_per_run, 0)
        if self.cpus_per_run == 0 and not self.gpus_per_run:
            raise GradregError("--cpus-per-run 0 needs --gpus-per-run > 0: a task must reserve something")
        if self.gpus_per_run is not None:
            number("gpus_per_run", self.gpus_per_run, 0)
            if self.gpus_per_run > 1 and self.gpus_per_run != int(self.gpus_per_run):
                raise GradregError(f"--gpus-per-run above 1 must be a whole number, got {self.gpus_per_run}")
        if type(self.retries) is not int or not 0 <= self.retries <= MAX_RETRIES:
            raise GradregError(f"--retries must be an integer from 0 to {MAX_RETRIES}, got {self.retries!r}")
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise GradregError(f"--address must name a Ray cluster (e.g. auto or HOST:6379), got {self.address!r}")
        if self.num_cpus is not None and (type(self.num_cpus) is not int or self.num_cpus < 1 or self.address):
            raise GradregError(f"num_cpus sizes a local Ray instance: a positive integer, and not with an "
                               f"address; got {self.num_cpus!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise GradregError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "cpu" and self.gpus_per_run:
            raise GradregError("--gpus-per-run with --device cpu would reserve GPUs that no run uses")
        if self.device == "cuda" and self.gpus_per_run == 0:
            raise GradregError("--device cuda needs --gpus-per-run > 0: Ray hides the GPUs from a task "
                               "that reserves none")

    @property
    def threads(self) -> int:
        """torch threads per task: the CPUs it reserved (at least one)."""
        return max(1, int(self.cpus_per_run))


# ---------------------------------------------------------------- what runs on a worker

@functools.cache
def _identity() -> dict[str, str]:
    """This worker's gradreg version and commit (read once per worker process) and host."""
    return {"version": __version__, "commit": results_store.git_commit(), "node": socket.gethostname()}


def _preflight(cfg: TrainConfig, data_dir: str | None) -> dict[str, str]:
    """On a worker, before the grid: load the first missing run's data (missing or damaged data fail
    here, once, not in every task) and say which gradreg the workers run."""
    load_data(cfg, resolve_device("cpu"), data_dir)
    return _identity()


def _train(name: str, profile: str, runs: list[Run], batch_seeds: bool, data_dir: str | None,
           threads: int) -> list[results_store.Record]:
    """On a worker: train one unit (a run, or a cell's seeds stacked) and return its records."""
    torch.set_num_threads(threads)
    exp = experiments.get(name)
    commit = _identity()["commit"]
    return [experiments.make_record(name, profile, cell, seed, cfg, out, commit, "ray")
            for cell, seed, cfg, out in experiments.train_unit(exp, runs, batch_seeds, data_dir, progress=False)]


# ---------------------------------------------------------------- the driver

@contextlib.contextmanager
def connection(opts: Options) -> Iterator["Placement"]:
    """Join the cluster at ``opts.address``, or start a local Ray instance; on leaving, disconnect
    (a local instance stops with it). In a process already connected to Ray (a notebook that called
    ``ray.init``), that connection is used and kept. Yields how runs will be placed on the cluster. An unreachable cluster or a request it cannot place is
    one GradregError, raised before the grid writes anything."""
    started = False
    if not ray.is_initialized():
        if opts.address is not None:
            _check_reachable(opts.address)
        try:
            ray.init(address=opts.address, num_cpus=opts.num_cpus, include_dashboard=False,
                     logging_level="WARNING", log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as err:
            auth = (" If the cluster uses token authentication (Ray's default), set RAY_AUTH_MODE=token and "
                    "give its token (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token): Ray sends no token to an "
                    "explicit address otherwise." if opts.address not in (None, "auto") else "")
            raise GradregError(f"cannot reach a Ray cluster at {opts.address!r}: {' '.join(str(err).split())[:300]}; "
                               f"start one with `ray start --head`, or leave --address out to start one here.{auth}") from None
        started = True                    # ours to end: a local instance stops, a joined cluster is left
    try:
        yield Placement(opts, ray.cluster_resources())
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT address must accept a TCP connection within seconds: ``ray.init`` would otherwise
    retry for minutes before it reports an unreachable cluster. ("auto" is resolved by Ray.)"""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        if address == "auto":
            return
        raise GradregError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise GradregError(f"no Ray cluster answers at {address} ({err.strerror or err}); start one with "
                           "`ray start --head`, or leave --address out to start one here") from None


class Placement:
    """What each task reserves on a connected cluster, and the driver's two jobs on it."""

    def __init__(self, opts: Options, resources: dict[str, float]):
        self.opts, self.resources = opts, resources
        self.gpus = self._gpus_per_run()

    def _gpus_per_run(self) -> float:
        """The GPUs each task reserves: as asked, else one where the cluster has GPUs and the runs
        may use them. A request the cluster cannot place is an error (Ray would wait forever)."""
        have, cpus = self.resources.get("GPU", 0.0), self.resources.get("CPU", 0.0)
        o = self.opts
        gpus = o.gpus_per_run if o.gpus_per_run is not None else (1.0 if have and o.device != "cpu" else 0.0)
        if gpus > have:
            raise GradregError(f"--gpus-per-run {gpus:g}: the Ray cluster has {have:g} GPUs")
        if o.cpus_per_run > cpus:
            raise GradregError(f"--cpus-per-run {o.cpus_per_run:g}: the Ray cluster has {cpus:g} CPUs")
        return gpus

    def slots(self) -> int:
        """How many tasks the cluster can run at once, from its resources now (a cluster may grow)."""
        res = ray.cluster_resources()
        n = res.get("CPU", 0.0) / self.opts.cpus_per_run if self.opts.cpus_per_run else math.inf
        if self.gpus:
            n = min(n, res.get("GPU", 0.0) / self.gpus)
        return max(1, int(n + 1e-9))

    def remote(self, fn: Callable[..., Any], retries: int = 0) -> Any:
        return ray.remote(fn).options(num_cpus=self.opts.cpus_per_run, num_gpus=self.gpus, max_retries=retries)

    def check_workers(self, cfg: TrainConfig, data_dir: str | None, commit: str) -> None:
        """One task before the grid: a worker has the data and runs the driver's code."""
        try:
            worker = ray.get(self.remote(_preflight, retries=2).remote(cfg, data_dir))
        except rayerr.RayTaskError as err:
            if isinstance(err.cause, GradregError):
                raise GradregError(f"on a Ray worker: {err.cause}") from None
            raise
        if (worker["version"], worker["commit"]) != (__version__, commit):
            raise GradregError(f"the Ray workers run gradreg {worker['version']} at {worker['commit']} (node "
                               f"{worker['node']}), this driver {__version__} at {commit}: install the same "
                               "gradreg on every node, so the records say which code made them")

    def run(self, exp: experiments.Experiment, profile: str, todo: list[Run], store: results_store.Store, *,
            batch_seeds: bool | None, data_dir: str | None, commit: str, progress: bool,
            log: Callable[[str], None], header: str) -> None:
        """Train ``todo`` on the cluster, storing each record as its task returns (see the module's
        docstring). Raises GradregError if a run failed for good; KeyboardInterrupt after cleaning up.
        ``commit`` is the driver's; each record carries its worker's, which ``check_workers`` matched."""
        res = self.resources
        if batch_seeds is None:
            batch_seeds = self.gpus > 0
        log(f"{header}; on Ray ({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs, each run "
            f"{self.opts.cpus_per_run:g} CPU + {self.gpus:g} GPU)" + (", seeds batched per cell" if batch_seeds else ""))
        if todo:
            Scheduler(exp.name, profile, experiments.units(todo, batch_seeds), store, self, batch_seeds,
                      data_dir, progress, log).run()


class Scheduler:
    """Keeps the cluster full, stores results as they come back, re-queues lost tasks."""

    def __init__(self, name: str, profile: str, units: list[list[Run]], store: results_store.Store,
                 place: Placement, batch_seeds: bool, data_dir: str | None, progress: bool, log: Callable[[str], None]):
        self.name, self.profile, self.store, self.place, self.opts = name, profile, store, place, place.opts
        self.task = place.remote(_train)
        self.batch_seeds, self.data_dir, self.log = batch_seeds, data_dir, log
        self.queue: deque[tuple[int, list[Run]]] = deque(enumerate(units))
        self.total = sum(len(u) for u in units)
        self.in_flight: dict[Any, tuple[int, list[Run], contextlib.ExitStack]] = {}
        self.losses: dict[int, int] = {}
        self.failed: list[str] = []
        self.stored = self.elsewhere = 0
        self.bar = tqdm(total=self.total, unit="run", desc=f"{name} [{profile}] on Ray", disable=not progress)

    # counts for the progress bar and the log
    def running(self) -> int:
        return sum(len(runs) for _, runs, _ in self.in_flight.values())

    def queued(self) -> int:
        return sum(len(runs) for _, runs in self.queue)

    def status(self) -> str:
        return f"{self.stored} done, {self.running()} running, {self.queued()} queued"

    def say(self, line: str) -> None:
        with tqdm.external_write_mode():
            self.log(line)

    def run(self) -> None:
        try:
            while self.queue or self.in_flight:
                self.submit()
                if self.in_flight:
                    ready, _ = ray.wait(list(self.in_flight), num_returns=1)
                    self.collect(ready[0])
        except KeyboardInterrupt:
            self.drain()
            raise
        finally:
            self.cancel()
            self.bar.close()
        if self.elsewhere:
            self.log(f"{self.elsewhere} runs were skipped: another process had claimed them or stored them meanwhile")
        if self.failed:
            raise GradregError(f"{len(self.failed)} run(s) failed on {self.opts.retries + 1} workers each "
                               f"(first: {self.failed[0]}); the other runs are stored: rerun to retry them")

    def submit(self) -> None:
        """Claim and send queued units while the cluster has room."""
        room = self.place.slots()
        while self.queue and len(self.in_flight) < room:
            i, unit = self.queue.popleft()
            claims = contextlib.ExitStack()
            mine = claims.enter_context(self.store.claim([(c, s) for c, s, _ in unit]))
            runs = [(c, s, cfg) for c, s, cfg in unit if (c, s) in mine]
            self.elsewhere += len(unit) - len(runs)
            self.bar.total -= len(unit) - len(runs)
            if not runs:
                claims.close()
                continue
            ref = self.task.remote(self.name, self.profile, runs, self.batch_seeds, self.data_dir, self.opts.threads)
            self.in_flight[ref] = (i, runs, claims)
        self.show()

    def show(self) -> None:
        self.bar.set_postfix_str(f"running {self.running()}, queued {self.queued()}", refresh=True)

    def collect(self, ref: Any) -> None:
        """Store a finished task's records; re-queue a lost one; raise a run's own error."""
        i, runs, claims = self.in_flight.pop(ref)
        self.show()
        with claims:                                        # released after the records are stored
            first = f"{runs[0][0]} seed {runs[0][1]}" + (f" (+{len(runs) - 1} seeds)" if len(runs) > 1 else "")
            try:
                records = ray.get(ref)
            except LOST as err:
                self.lost(i, runs, first, err)
                return
            except rayerr.RayTaskError as err:
                if isinstance(err.cause, GradregError):
                    raise GradregError(f"{first} on a Ray worker: {err.cause}") from None
                raise
            for record in records:
                self.store.add(record)
                self.stored += 1
                self.bar.update(1)
                self.say(f"  [{self.stored}/{self.total}] {experiments.describe(record)} on "
                         f"{record['provenance']['node']} ({self.status()})")

    def lost(self, i: int, runs: list[Run], first: str, err: Exception) -> None:
        self.losses[i] = self.losses.get(i, 0) + 1
        why = type(err).__name__
        if self.losses[i] <= self.opts.retries:
            self.queue.appendleft((i, runs))
            self.say(f"  {first}: its worker was lost ({why}); re-queued, retry {self.losses[i]} of {self.opts.retries}")
        else:
            self.failed.append(f"{first}: {why}")
            self.bar.total -= len(runs)
            self.say(f"  {first}: its worker was lost ({why}) {self.losses[i]} times; giving up on it")

    def drain(self) -> None:
        """On Ctrl-C: store whatever has already come back, so no finished run is lost."""
        if not self.in_flight:
            return
        ready, _ = ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=0)
        for ref in ready:
            with contextlib.suppress(Exception):
                self.collect(ref)

    def cancel(self) -> None:
        """Cancel the tasks still in flight and release their claims."""
        for ref, (_, _, claims) in list(self.in_flight.items()):
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            claims.close()
        self.in_flight.clear()


# ---------------------------------------------------------------- what Ray costs (gradreg bench --ray)

def _noop() -> None:
    return None


def overhead(experiment: str = "sin5x", profile: str = "smoke", tasks: int = 200) -> dict[str, Any]:
    """Measure, on this machine, what running on a local Ray instance adds: starting it, one task's
    round trip (sequential, and pipelined with ``tasks`` in flight) and a whole grid's wall time
    with each executor, side by side in this process (fresh results folders, nothing stored)."""
    if ray.is_initialized():
        raise GradregError("measure Ray's overhead in a process not already connected to Ray")
    if type(tasks) is not int or tasks < 1:
        raise GradregError(f"tasks must be a positive integer, got {tasks!r}")
    clock = time.perf_counter
    t0 = clock()
    ray.init(include_dashboard=False, logging_level="ERROR")
    start_s = clock() - t0
    try:
        noop = ray.remote(_noop).options(num_cpus=1, max_retries=0)
        cpus = ray.cluster_resources().get("CPU", 0.0)
        ray.get([noop.remote() for _ in range(2 * max(1, int(cpus)))])   # every worker is up before timing
        t0 = clock()
        for _ in range(tasks):
            ray.get(noop.remote())
        sequential_ms = (clock() - t0) / tasks * 1000
        t0 = clock()
        ray.get([noop.remote() for _ in range(tasks)])
        pipelined_ms = (clock() - t0) / tasks * 1000
    finally:
        t0 = clock()
        ray.shutdown()
        stop_s = clock() - t0
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for executor in ("local", "ray"):
            t0 = clock()
            records = experiments.run(experiment, profile, results_dir=f"{tmp}/{executor}", progress=False,
                                      log=lambda line: None, executor=executor)
            walls[executor] = clock() - t0
    return {"experiment": experiment, "profile": profile, "runs": len(records), "cpus": cpus,
            "torch_threads_local": torch.get_num_threads(), "ray_start_s": start_s, "ray_stop_s": stop_s,
            "task_round_trip_ms": sequential_ms, "task_pipelined_ms": pipelined_ms, "tasks_timed": tasks,
            "grid_wall_s": walls, "ray": ray.__version__, "device": "cpu"}

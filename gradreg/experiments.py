"""The registry of experiments: each a grid of independent (cell, seed) runs with three profiles.

- ``smoke``: seconds; every code path of the experiment, tiny data and few iterations (CI).
- ``cpu``:   the largest scale that fits about an hour on a 2-core CPU and still tests the claim;
             its results are committed under ``results/`` and shown in the book.
- ``paper``: the paper's own seeds, iterations and sizes; meant for a GPU.

A cell is a named set of overrides of the experiment's base ``TrainConfig``; a profile is a number of
seeds plus overrides applied to every cell. ``run()`` trains every missing (cell, seed) and stores each
record as soon as it finishes, so an interrupted grid resumes where it stopped.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from torch import nn

from . import results as results_store
from . import steps
from .data import Dataset
from .data import check_dir as check_data_dir
from .errors import GradregError
from .seeds import train_seeds
from .config import TrainConfig
from .train import load_data, resolve_device, train

PROFILES = ("smoke", "cpu", "paper")
MAX_SEEDS = 1000   # more is surely a typo (the papers use 10); the grid is built in memory

# Measured on the 2-core development CPU by `gradreg bench`-style timing (ms per plain step, batch 50),
# and the cost of a regularized step relative to a plain one; used only for `gradreg list` estimates.
STEP_MS_CPU = {"toy": 0.6, "lenet": 3.2, "lenettuned": 11.3, "mlp": 1.0, "cifar_resnet": 400.0, "diagonal_linear": 0.4,
               "wide_resnet": 40000.0}
REG_COST = {None: 1.0, "datagrad": 2.25, "spectreg": 2.3, "onehot": 2.25, "random_onehot": 2.3,
            "frobreg": 12.5, "jacreg": 12.5, "confidence": 1.1}


@dataclass(frozen=True)
class Profile:
    """How big a run of the grid is: number of seeds, overrides applied to every cell, and
    optionally which cells to run (a subset of the experiment's, for grids too big for a CPU)."""

    seeds: int
    overrides: dict[str, Any] = field(default_factory=dict)
    cells: tuple[str, ...] | None = None         # None: every cell of the experiment
    # overrides for the cells of one group, the part of a cell's name before its first "/" (e.g. the
    # iterations of "mlp/…" and "resnet/…" cells, which differ per profile)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """A paper experiment: base config, named cells of overrides, and the three profiles."""

    name: str
    title: str
    source: str                                  # where in which paper
    base: TrainConfig
    cells: dict[str, dict[str, Any]]
    profiles: dict[str, Profile]
    extra_metrics: Callable[[nn.Module, Dataset], dict[str, Any]] | None = None
    # overrides that come from other stored results, e.g. weights chosen on a validation sweep:
    # derived(profile, results_dir) -> {cell: overrides}; ResultsMissing if those results are missing
    derived: Callable[[str, str | None], dict[str, dict[str, Any]]] | None = None

    def __post_init__(self) -> None:
        for name, prof in self.profiles.items():
            unknown = set(prof.cells or ()) - set(self.cells)
            if unknown:
                raise GradregError(f"{self.name} profile {name!r} names unknown cells: {', '.join(sorted(unknown))}")

    def profile(self, name: str) -> Profile:
        if not isinstance(name, str) or name not in self.profiles:
            raise GradregError(f"unknown profile {name!r} for {self.name}; known: {', '.join(self.profiles)}")
        return self.profiles[name]

    def configs(self, profile: str, seeds: int | None = None,
                results_dir: str | None = None) -> list[tuple[str, int, TrainConfig]]:
        """Every (cell, seed, config) of the grid at this profile, seeds 0 … n−1."""
        prof = self.profile(profile)
        n = prof.seeds if seeds is None else seeds
        if isinstance(n, numbers.Integral) and not isinstance(n, bool):
            n = int(n)                                               # numpy integers too
        if type(n) is not int or not 1 <= n <= MAX_SEEDS:
            raise GradregError(f"--seeds must be an integer from 1 to {MAX_SEEDS}, got {n!r}")
        cells = [c for c in self.cells if prof.cells is None or c in prof.cells]
        derived = self.derived_overrides(profile, results_dir)           # read once for the whole grid
        return [(cell, seed, self.config(profile, cell, seed, results_dir, derived))
                for cell in cells for seed in range(n)]

    def derived_overrides(self, profile: str, results_dir: str | None = None) -> dict[str, dict[str, Any]]:
        """{cell: overrides} that come from other stored results (``derived``); {} for most experiments."""
        return self.derived(profile, results_dir) if self.derived else {}

    def config(self, profile: str, cell: str, seed: int, results_dir: str | None = None,
               derived: dict[str, dict[str, Any]] | None = None) -> TrainConfig:
        """The config of one run: base, then the cell's overrides, then those derived from other
        results (``derived``: as ``derived_overrides`` returns, read from ``results_dir`` if not
        given), then the profile's, then the profile's for the cell's group, then the seed."""
        if derived is None:
            derived = self.derived_overrides(profile, results_dir)
        prof = self.profile(profile)
        return self.base.replace(**{**self.cells[cell], **derived.get(cell, {}), **prof.overrides,
                                    **prof.groups.get(cell.split("/")[0], {}), "seed": seed})

    def estimated_cpu_seconds(self, profile: str) -> float:
        """Rough cost on a 2-core CPU: iterations × per-step time × regularizer cost × the step
        rule's gradient evaluations, summed."""
        return sum(cfg.iterations * _step_ms(cfg) / 1000 * REG_COST.get(cfg.regularizer if cfg.weight > 0 else None, 3.0)
                   * steps.get(cfg.step).evaluations for _, _, cfg in self.configs(profile))


def _step_ms(cfg: TrainConfig) -> float:
    """The measured plain-step time of a model (``STEP_MS_CPU``), scaled for an MLP by its first
    layer's size relative to the measured 784 × 256 one."""
    ms = STEP_MS_CPU.get(cfg.model, 5.0)
    if cfg.model == "mlp":
        o = cfg.model_options
        ms *= o.get("in_features", 784) * o.get("hidden", 256) / (784 * 256) * max(1, o.get("depth", 2) - 1)
    return ms


REGISTRY: dict[str, Experiment] = {}


def register(exp: Experiment) -> Experiment:
    REGISTRY[exp.name] = exp
    return exp


def get(name: str) -> Experiment:
    """An experiment by name; an unknown name raises one clear GradregError listing the known ones."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise GradregError(f"unknown experiment {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def command(name: str, profile: str) -> str:
    """The shell command that produces an experiment's results at a profile."""
    return f"gradreg run {name} --profile {profile}"


def stale(name: str, profile: str, records: list[results_store.Record], results_dir: str | None = None) -> list[str]:
    """Stored records that are not what the registry would train now: a cell the experiment no
    longer has, or a config that differs from the registry's for its (cell, seed) in anything but
    the device. Each is described in a line ("cell seed N: field stored → now"). A field newer than
    the record counts as its default: a field is only ever added with a default that keeps the
    old behaviour (e.g. ``step="plain"``)."""
    exp = get(name)
    defaults = json.loads(json.dumps(TrainConfig().to_dict()))
    exp.profile(profile)
    derived = exp.derived_overrides(profile, results_dir) if records else {}
    out = []
    for r in records:
        if r["cell"] not in exp.cells:
            out.append(f"{r['cell']} seed {r['seed']}: no such cell")
            continue
        now = json.loads(json.dumps(exp.config(profile, r["cell"], r["seed"], results_dir, derived).to_dict()))  # as stored
        was = {**defaults, **r.get("config", {})}
        diff = [k for k in now if k != "device" and was.get(k) != now[k]]
        if diff:
            out.append(f"{r['cell']} seed {r['seed']}: " + ", ".join(f"{k} {was.get(k)!r} → {now[k]!r}" for k in diff))
    return out


def _current(name: str, profile: str, store: results_store.Store,
             results_dir: str | None = None) -> list[results_store.Record]:
    """The store's records, read once; a file that holds runs of another configuration is an error,
    never shown or kept as if current."""
    records = store.records()
    old = stale(name, profile, records, results_dir)
    if old:
        raise GradregError(f"{store.path} holds {len(old)} run(s) trained with another configuration than "
                           f"the registry's (first: {old[0]}); move that file aside and rerun "
                           f"`{command(name, profile)}`")
    return records


def missing(name: str, profile: str, results_dir: str | None = None) -> list[tuple[str, int]]:
    """(cell, seed) pairs of the grid that have no stored record yet."""
    done = results_store.Store(name, profile, results_dir).done()
    return [(c, s) for c, s, _ in get(name).configs(profile, results_dir=results_dir) if (c, s) not in done]


EXECUTORS = ("local", "ray")


def run(name: str, profile: str, *, seeds: int | None = None, device: str = "auto",
        data_dir: str | None = None, results_dir: str | None = None, progress: bool = True,
        batch_seeds: bool | None = None, log: Callable[[str], None] = print,
        executor: str = "local", cluster: dict[str, Any] | None = None) -> list[results_store.Record]:
    """Train every (cell, seed) of the grid not yet stored, storing each record as it finishes.

    ``batch_seeds``: train a cell's missing seeds together as one stacked model (``gradreg.seeds``);
    default: on CUDA, where it pays. A stack is stored when it finishes, so an interrupted run
    loses at most the cell in progress. Several processes may run one grid at once: each claims a
    run before training it (``Store.claim``), so they split the work and every record is stored
    once. The results file is checked (readable, folder writable) before any training starts.

    ``executor``: "local" trains in this process; "ray" sends each run (or each seed-batched cell)
    to a Ray cluster as a task and stores what comes back here (``gradreg.cluster``; ``cluster``
    holds its options: address, cpus_per_run, gpus_per_run, retries). Either way the records are
    the same and go through the one locked, atomic store. Returns all records of the
    (experiment, profile) afterwards.
    """
    exp = get(name)
    if not callable(log):
        raise GradregError(f"log must be a function taking a line, got {log!r}")
    if executor not in EXECUTORS:
        raise GradregError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    if cluster and executor != "ray":
        raise GradregError(f"--{next(iter(cluster)).replace('_', '-')} needs --executor ray")
    grid = [(c, s, cfg.replace(device=device)) for c, s, cfg in exp.configs(profile, seeds, results_dir)]
    commit = results_store.git_commit()
    if executor == "ray":
        try:
            from . import cluster as ray_cluster  # imports ray, an optional extra: only here
        except ImportError as err:
            if err.name != "ray" and not str(err.name).startswith("ray."):
                raise
            raise GradregError("--executor ray needs Ray, which is not installed: pip install 'gradreg[cluster]'") from None
        opts = ray_cluster.Options.make(device=device, **(cluster or {}))
        with ray_cluster.connection(opts) as place:   # joined or started before anything is written
            store, todo, header = _prepare(name, profile, grid, results_dir,
                                           lambda cfg: place.check_workers(cfg, data_dir, commit))
            place.run(exp, profile, todo, store, batch_seeds=batch_seeds, data_dir=data_dir, commit=commit,
                      progress=progress, log=log, header=header)
        return store.records()
    if data_dir is not None:
        check_data_dir(data_dir)
    store, todo, header = _prepare(name, profile, grid, results_dir,
                                   lambda cfg: load_data(cfg, resolve_device("cpu"), data_dir))
    if batch_seeds is None:
        batch_seeds = resolve_device(device).type == "cuda"
    log(header + (" (seeds batched per cell)" if batch_seeds else ""))
    trained = elsewhere = 0
    for unit in units(todo, batch_seeds):
        with store.claim([(c, s) for c, s, _ in unit]) as mine:
            runs = [(c, s, cfg) for c, s, cfg in unit if (c, s) in mine]
            elsewhere += len(unit) - len(runs)
            for cell, seed, cfg, out in train_unit(exp, runs, batch_seeds, data_dir, progress):
                record = make_record(exp.name, profile, cell, seed, cfg, out, commit, "local")
                store.add(record)
                trained += 1
                log(f"  [{trained}/{len(todo)}] {describe(record)}")
    if elsewhere:
        log(f"{elsewhere} runs were skipped: another process had claimed them or stored them meanwhile")
    return store.records()


def _prepare(name: str, profile: str, grid: list[tuple[str, int, TrainConfig]], results_dir: str | None,
             check_data: Callable[[TrainConfig], Any]) -> tuple[results_store.Store, list[tuple[str, int, TrainConfig]], str]:
    """Before training: read the store (a file of another configuration is an error), check the
    data of the first missing run (``check_data``: missing or damaged data fail before any write),
    then make the store ready. Returns the store, the runs to train and a header line for the log."""
    store = results_store.Store(name, profile, results_dir)
    stored = {(r["cell"], r["seed"]) for r in _current(name, profile, store, results_dir)}   # reading writes nothing
    missing_runs = [cfg for c, s, cfg in grid if (c, s) not in stored]
    if missing_runs:
        check_data(missing_runs[0])
    store.prepare()
    done = store.done()
    todo = [(c, s, cfg) for c, s, cfg in grid if (c, s) not in done]
    return store, todo, f"{name} [{profile}]: {len(grid)} runs, {len(grid) - len(todo)} already in {store.path}"


def make_record(name: str, profile: str, cell: str, seed: int, cfg: TrainConfig, out: dict[str, Any],
                commit: str, executor: str) -> results_store.Record:
    """The stored record of one finished run (``out``: what ``train`` returned), with its provenance
    read in the process that trained it. The model is dropped: records hold numbers, not weights."""
    out = {k: v for k, v in out.items() if k != "model"}
    return {"experiment": name, "profile": profile, "cell": cell, "seed": seed, **out,
            "config": cfg.to_dict(), "provenance": results_store.provenance(out["device"], commit, executor)}


def describe(record: results_store.Record) -> str:
    """One log line for a finished run: cell, seed, status, time and its float metrics."""
    shown = {k: round(v, 4) for k, v in record["metrics"].items() if isinstance(v, float)}
    return (f"{record['cell']} seed {record['seed']}: {record['status']} in {record['train_seconds']:.1f}s "
            f"{shown}")


def units(todo: list[tuple[str, int, TrainConfig]], batch_seeds: bool) -> list[list[tuple[str, int, TrainConfig]]]:
    """What trains at once: each run alone, or (``batch_seeds``) all missing seeds of a cell, unless
    the cell's step rule cannot batch seeds (``steps.Step.separable``)."""
    if not batch_seeds:
        return [[run] for run in todo]
    by_cell: dict[str, list[tuple[str, int, TrainConfig]]] = {}
    for run in todo:
        by_cell.setdefault(run[0], []).append(run)
    return [unit for runs in by_cell.values()
            for unit in ([runs] if steps.get(runs[0][2].step).separable else [[run] for run in runs])]


def train_unit(exp: Experiment, runs: list[tuple[str, int, TrainConfig]], batch_seeds: bool,
                data_dir: str | None, progress: bool) -> Iterator[tuple[str, int, TrainConfig, dict[str, Any]]]:
    """(cell, seed, config, result) for each run of a unit: one model, or one stack of a cell's seeds."""
    if not batch_seeds or (runs and not steps.get(runs[0][2].step).separable):
        for cell, seed, cfg in runs:
            yield cell, seed, cfg, train(cfg, data_dir=data_dir, progress=progress, extra_metrics=exp.extra_metrics)
    elif runs:
        outs = train_seeds(runs[0][2], [s for _, s, _ in runs], data_dir=data_dir, progress=progress,
                           extra_metrics=exp.extra_metrics)
        for (cell, seed, cfg), out in zip(runs, outs):
            yield cell, seed, cfg, out


RUN_OPTIONS = {"seeds", "device", "data_dir", "progress", "batch_seeds", "log", "executor", "cluster"}  # what load() passes to run()


def load(name: str, profile: str, *, run_missing: bool = False, results_dir: str | None = None,
         **run_options: Any) -> list[results_store.Record]:
    """The stored records of an experiment in grid order, training the missing runs first if ``run_missing``.

    Chapters call this: at ``smoke`` they train (seconds); at ``cpu``/``paper`` they show what is
    committed and, where runs are missing, the command that produces them.
    """
    exp = get(name)
    exp.profile(profile)
    unknown = set(run_options) - RUN_OPTIONS
    if unknown:
        raise GradregError(f"unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(RUN_OPTIONS))}")
    if run_missing and missing(name, profile, results_dir):
        run(name, profile, results_dir=results_dir, **run_options)
    order = {cell: i for i, cell in enumerate(exp.cells)}
    records = _current(name, profile, results_store.Store(name, profile, results_dir), results_dir)
    return sorted(records, key=lambda r: (order.get(r["cell"], len(order)), r["seed"]))  # grid order


# ---------------------------------------------------------------- the experiments

from . import varga2017  # noqa: E402,F401  (registers the experiments of Varga et al.)
from . import karakida2023  # noqa: E402,F401  (registers the experiments of Karakida et al.)

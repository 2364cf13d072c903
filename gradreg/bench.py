"""`gradreg bench`: what each regularizer costs, as a ratio to a plain training step.

All variants are timed side by side in one process, interleaved (plain, datagrad, …, plain, …) so
that load from elsewhere on a noisy machine hits them alike; the ratio is the median regularized
step time over the median plain step time. A step is the full thing: forward, penalty, backward,
optimizer update.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from . import models, regularizers
from . import results as results_store
from .errors import GradregError
from .seeds import SeedStack
from .config import DATA, TrainConfig
from .train import make_optimizer, resolve_device
from .train import step as train_step

DATASET = {"lenet": "mnist", "lenettuned": "mnist", "mlp": "mnist", "cifar_resnet": "cifar10"}  # what each model eats
LIMITS = {"batch_size": 10_000, "reps": 10_000, "steps": 10_000, "seed_batch": 1_000}  # beyond: a typo


LAYOUTS = ("contiguous", "channels_last")


def _stepper(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, layout: str = "contiguous"):
    """A closure doing one full training step of a fresh model under ``cfg``, with its weights and
    the batch in ``layout`` (channels_last: NHWC in memory, the layout oneDNN/cuDNN prefer)."""
    torch.manual_seed(0)
    model = models.build(cfg.model, **cfg.model_options).to(x.device)
    if layout == "channels_last":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(0)
    params = list(model.parameters())
    return lambda: train_step(model, opt, params, x, y, cfg, gen)


def _batch(model: str, n: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random input batch of n examples shaped for ``model``, and labels, on ``dev``."""
    shape = DATA[_dataset(model)][0]
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(n, *shape, generator=gen).to(dev),
            torch.randint(10, (n,), generator=gen).to(dev))


def _dataset(model: str) -> str:
    """The data set whose input shape the bench feeds ``model``; only the models in DATASET."""
    if not isinstance(model, str) or model not in DATASET:
        raise GradregError(f"bench supports models {', '.join(DATASET)}; got {model!r}")
    return DATASET[model]


def _check_counts(**counts: int) -> None:
    """Timing parameters are positive integers (``--reps``, ``--steps``, ``--batch-size``, …), within LIMITS."""
    for name, value in counts.items():
        if type(value) is not int or not 1 <= value <= LIMITS[name]:
            raise GradregError(f"--{name.replace('_', '-')} must be a positive integer up to {LIMITS[name]:,}, "
                               f"got {value!r}")


@contextlib.contextmanager
def _memory_guard(what: str) -> Iterator[None]:
    """Running out of memory (a huge --batch-size) is one GradregError, not an allocator traceback."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "alloc" not in str(err).lower() and "out of memory" not in str(err):
            raise
        raise GradregError(f"out of memory timing {what}; use a smaller --batch-size or --seed-batch") from None


def _time_interleaved(variants: dict[str, Any], reps: int, steps: int, dev: torch.device) -> dict[str, float]:
    """Median seconds per call of each variant, timed round-robin after one warm-up call each."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for run_step in variants.values():  # warm-up
        run_step()
    for _ in range(reps):
        for name, run_step in variants.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                run_step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(model: str = "lenet", batch_size: int = 50, reps: int = 7, steps: int = 10,
          device: str = "auto", names: list[str] | None = None, model_options: dict[str, Any] | None = None,
          layout: str = "contiguous") -> dict[str, Any]:
    """Median seconds per step of a plain step and of each regularizer's step, their ratios to the
    plain step, and images per second. ``model_options`` go to the model builder (e.g. a ResNet's
    ``width`` and ``blocks``); ``layout`` is the memory format of weights and batch."""
    _check_counts(batch_size=batch_size, reps=reps, steps=steps)
    if layout not in LAYOUTS:
        raise GradregError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    dev = resolve_device(device)
    names = names or regularizers.names()
    for name in names:
        regularizers.get(name)
    base = TrainConfig(model=model, dataset=_dataset(model), model_options=dict(model_options or {}))
    with _memory_guard(f"{model} at batch {batch_size}"):
        x, y = _batch(model, batch_size, dev)
        variants = {"plain": _stepper(base, x, y, layout)}
        variants.update({n: _stepper(base.replace(regularizer=n, weight=0.01), x, y, layout) for n in names})
        median = _time_interleaved(variants, reps, steps, dev)
    return {"model": model, "model_options": dict(model_options or {}), "layout": layout,
            "batch_size": batch_size, "device": str(dev), "threads": torch.get_num_threads(),
            "reps": reps, "steps": steps, "torch": torch.__version__, "seconds_per_step": median,
            "images_per_second": {k: batch_size / v for k, v in median.items()},
            "ratio": {k: median[k] / median["plain"] for k in names}}


def kind(result: dict[str, Any]) -> str:
    """The file-name tag of a bench result: "" for the default LeNet bench (``results/bench/cpu.json``),
    else the model, its options and a non-default layout, e.g. "cifar_resnet-blocks1-width1"."""
    options = result.get("model_options") or {}
    if result["model"] == "lenet" and not options and result.get("layout", "contiguous") == "contiguous":
        return ""
    tags = [result["model"], *(f"{k}{v}" for k, v in sorted(options.items()))]
    if result.get("layout", "contiguous") != "contiguous":
        tags.append(result["layout"])
    return "-".join(tags)


def seed_batching(model: str = "lenet", regularizer: str | None = "datagrad", seeds: int = 4,
                  batch_size: int = 50, reps: int = 5, steps: int = 5, device: str = "auto") -> dict[str, Any]:
    """Seconds to advance ``seeds`` models by one step: one at a time against one ``SeedStack`` step.

    Timed interleaved in one process, like ``bench``; ``speedup`` = one-at-a-time / stacked.
    """
    _check_counts(seed_batch=seeds, batch_size=batch_size, reps=reps, steps=steps)
    dev = resolve_device(device)
    cfg = TrainConfig(model=model, dataset=_dataset(model), regularizer=regularizer,
                      weight=0.01 if regularizer else 0.0)
    with _memory_guard(f"{seeds} × {model} at batch {batch_size}"):
        x, y = _batch(model, seeds * batch_size, dev)
        gen = torch.Generator().manual_seed(0)
        singles = [_stepper(cfg, x[s * batch_size: (s + 1) * batch_size], y[s * batch_size: (s + 1) * batch_size])
                   for s in range(seeds)]
        stack = SeedStack([models.build(model).to(dev) for _ in range(seeds)])
        opt, params = make_optimizer(cfg, stack.stacked), list(stack.parameters())
        variants = {"one_at_a_time": lambda: [one() for one in singles],
                    "stacked": lambda: train_step(stack, opt, params, x, y, cfg, gen, scale=seeds)}
        median = _time_interleaved(variants, reps, steps, dev)
    return {"model": model, "regularizer": regularizer, "seeds": seeds, "batch_size": batch_size,
            "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "seconds_per_step": median, "speedup": median["one_at_a_time"] / median["stacked"]}


def table(result: dict[str, Any]) -> str:
    """The bench result as a plain-text table."""
    options = result.get("model_options") or {}
    lines = [f"{result['model']}{' ' + str(options) if options else ''}, batch {result['batch_size']}, "
             f"{result.get('layout', 'contiguous')}, {result['device']} ({result['threads']} threads), "
             f"median of {result['reps']} interleaved reps × {result['steps']} steps",
             f"{'regularizer':<14}{'ms/step':>9}{'× plain':>9}{'images/s':>10}"]
    for name, ratio in {"plain": 1.0, **result["ratio"]}.items():
        seconds = result["seconds_per_step"][name]
        lines.append(f"{name:<14}{1000 * seconds:>9.2f}{ratio:>9.2f}{result['batch_size'] / seconds:>10.1f}")
    return "\n".join(lines)


def path(device: str = "cpu", results_dir: str | None = None, kind: str = "") -> Path:
    """Where a saved bench result lives: ``results/bench/<device>.json`` (regularizer costs) or
    ``results/bench/<kind>-<device>.json`` (``kind="seeds"``: seed batching)."""
    return results_store.root_dir(results_dir) / "bench" / f"{kind + '-' if kind else ''}{device}.json"


def save(result: dict[str, Any], results_dir: str | None = None, kind: str = "") -> Path:
    """Store a bench result with its provenance (what the book's cost figure shows)."""
    device = result["device"].split(":")[0]
    out = path(device, results_dir, kind)
    results_store.atomic_write(out, results_store.dumps({**result,
                                                         "provenance": results_store.provenance(result["device"])}))
    return out


def load(device: str = "cpu", results_dir: str | None = None, kind: str = "") -> dict[str, Any] | None:
    """The saved bench result for a device type, or None if ``gradreg bench --save`` never ran there."""
    p = path(device, results_dir, kind)
    return results_store.read_json(p, "bench result") if p.exists() else None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 for the block: the profiler's C++ side prints start/stop lines there,
    which would land in a chapter's output."""
    import os
    import sys
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def where_time_goes(model: str = "cifar_resnet", regularizer: str | None = "datagrad", batch_size: int = 128,
                    steps: int = 3, device: str = "cpu", model_options: dict[str, Any] | None = None,
                    top: int = 8) -> dict[str, Any]:
    """Profile ``steps`` full training steps (after one warm-up) with ``torch.profiler`` and return the
    ``top`` operators by their own time (self time, not counting the operators they call): name,
    milliseconds per step and share of the step, plus the step's total. CPU time on a CPU, device
    time on CUDA."""
    from torch.profiler import ProfilerActivity, profile

    _check_counts(batch_size=batch_size, steps=steps)
    dev = resolve_device(device)
    cfg = TrainConfig(model=model, dataset=_dataset(model), model_options=dict(model_options or {}),
                      regularizer=regularizer, weight=0.01 if regularizer else 0.0)
    x, y = _batch(model, batch_size, dev)
    run_step = _stepper(cfg, x, y)
    run_step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with _quiet_stderr(), profile(activities=activities) as prof:
        for _ in range(steps):
            run_step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    ops = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in ops) / 1000 / steps                     # µs → ms per step
    rows = [{"operator": e.key, "ms/step": getattr(e, key) / 1000 / steps,
             "share": getattr(e, key) / 1000 / steps / total} for e in ops[:top]]
    # autograd's backward nodes by *total* time (with the operators they call): which layer's
    # derivative the time is spent in, e.g. BatchNorm's double backward "NativeBatchNormBackwardBackward0"
    total_key = key.replace("self_", "")
    nodes = sorted((e for e in ops if e.key.endswith(("Backward0", "Backward1")) and "evaluate_function" not in e.key),
                   key=lambda e: getattr(e, total_key), reverse=True)
    node_rows = [{"autograd node": e.key, "ms/step": getattr(e, total_key) / 1000 / steps,
                  "share": getattr(e, total_key) / 1000 / steps / total} for e in nodes[:top]]
    return {"model": model, "model_options": dict(model_options or {}), "regularizer": regularizer,
            "batch_size": batch_size, "device": str(dev), "threads": torch.get_num_threads(),
            "ms_per_step": total, "top": rows, "nodes": node_rows}

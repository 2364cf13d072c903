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


def _stepper(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor):
    """A closure doing one full training step of a fresh model under ``cfg``."""
    torch.manual_seed(0)
    model = models.build(cfg.model).to(x.device)
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
          device: str = "auto", names: list[str] | None = None) -> dict[str, Any]:
    """Median seconds per step of a plain step and of each regularizer's step, and their ratios."""
    _check_counts(batch_size=batch_size, reps=reps, steps=steps)
    dev = resolve_device(device)
    names = names or regularizers.names()
    for name in names:
        regularizers.get(name)
    base = TrainConfig(model=model, dataset=_dataset(model))
    with _memory_guard(f"{model} at batch {batch_size}"):
        x, y = _batch(model, batch_size, dev)
        variants = {"plain": _stepper(base, x, y)}
        variants.update({n: _stepper(base.replace(regularizer=n, weight=0.01), x, y) for n in names})
        median = _time_interleaved(variants, reps, steps, dev)
    return {"model": model, "batch_size": batch_size, "device": str(dev), "threads": torch.get_num_threads(),
            "reps": reps, "steps": steps, "torch": torch.__version__,
            "seconds_per_step": median, "ratio": {k: median[k] / median["plain"] for k in names}}


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
    lines = [f"{result['model']}, batch {result['batch_size']}, {result['device']} "
             f"({result['threads']} threads), median of {result['reps']} interleaved reps × {result['steps']} steps",
             f"{'regularizer':<14}{'ms/step':>9}{'× plain':>9}",
             f"{'plain':<14}{1000 * result['seconds_per_step']['plain']:>9.2f}{1.0:>9.2f}"]
    for name, ratio in result["ratio"].items():
        lines.append(f"{name:<14}{1000 * result['seconds_per_step'][name]:>9.2f}{ratio:>9.2f}")
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

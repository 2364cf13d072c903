"""`gradreg bench`: what each regularizer costs, as a ratio to a plain training step.

All variants are timed side by side in one process, interleaved (plain, datagrad, …, plain, …) so
that load from elsewhere on a noisy machine hits them alike; the ratio is the median regularized
step time over the median plain step time. A step is the full thing: forward, penalty, backward,
optimizer update.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from . import models, regularizers
from . import results as results_store
from .errors import GradregError
from .train import TrainConfig, make_optimizer, resolve_device
from .train import step as train_step

INPUT_SHAPE = {"lenet": (1, 28, 28), "lenettuned": (1, 28, 28), "mlp": (1, 28, 28), "cifar_resnet": (3, 32, 32)}


def _stepper(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor):
    """A closure doing one full training step of a fresh model under ``cfg``."""
    torch.manual_seed(0)
    model = models.build(cfg.model).to(x.device)
    opt = make_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(0)
    params = list(model.parameters())
    return lambda: train_step(model, opt, params, x, y, cfg, gen)


def bench(model: str = "lenet", batch_size: int = 50, reps: int = 7, steps: int = 10,
          device: str = "auto", names: list[str] | None = None) -> dict[str, Any]:
    """Median seconds per step of a plain step and of each regularizer's step, and their ratios."""
    if model not in INPUT_SHAPE:
        raise GradregError(f"bench supports models {', '.join(INPUT_SHAPE)}; got {model!r}")
    dev = resolve_device(device)
    names = names or regularizers.names()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *INPUT_SHAPE[model], generator=gen).to(dev)
    y = torch.randint(10, (batch_size,), generator=gen).to(dev)
    base = TrainConfig(model=model)
    variants = {"plain": _stepper(base, x, y)}
    variants.update({n: _stepper(base.replace(regularizer=n, weight=0.01), x, y) for n in names})
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
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"model": model, "batch_size": batch_size, "device": str(dev), "threads": torch.get_num_threads(),
            "reps": reps, "steps": steps, "torch": torch.__version__,
            "seconds_per_step": median, "ratio": {k: median[k] / median["plain"] for k in names}}


def table(result: dict[str, Any]) -> str:
    """The bench result as a plain-text table."""
    lines = [f"{result['model']}, batch {result['batch_size']}, {result['device']} "
             f"({result['threads']} threads), median of {result['reps']} interleaved reps × {result['steps']} steps",
             f"{'regularizer':<14}{'ms/step':>9}{'× plain':>9}",
             f"{'plain':<14}{1000 * result['seconds_per_step']['plain']:>9.2f}{1.0:>9.2f}"]
    for name, ratio in result["ratio"].items():
        lines.append(f"{name:<14}{1000 * result['seconds_per_step'][name]:>9.2f}{ratio:>9.2f}")
    return "\n".join(lines)


def path(device: str = "cpu", results_dir: str | None = None) -> Path:
    """Where a saved bench result for a device type lives: ``results/bench/<device>.json``."""
    return Path(results_dir or results_store.default_dir()) / "bench" / f"{device}.json"


def save(result: dict[str, Any], results_dir: str | None = None) -> Path:
    """Store a bench result with its provenance (what the book's cost figure shows)."""
    device = result["device"].split(":")[0]
    out = path(device, results_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "provenance": results_store.provenance(result["device"])}, indent=1))
    return out


def load(device: str = "cpu", results_dir: str | None = None) -> dict[str, Any] | None:
    """The saved bench result for a device type, or None if ``gradreg bench --save`` never ran there."""
    p = path(device, results_dir)
    return json.loads(p.read_text()) if p.exists() else None

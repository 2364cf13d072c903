"""`gradreg bench`: what each regularizer or training-step rule costs, as a ratio to a plain step.

All variants are timed side by side in one process, interleaved (plain, datagrad, …, plain, …) so
that load from elsewhere on a noisy machine hits them alike; the ratio is the median step time of a
variant over the median plain step time. A step is the full thing: forward, penalty, backward,
optimizer update.

Two kinds of variant, chosen with ``names`` (``gradreg bench --only``):

- an input-gradient regularizer of Part I (``regularizers.names()``), at weight 0.01;
- a parameter-space step rule of Part II (``STEP_NAMES``: gr-db, gr-forward, gr-backward, gr-central,
  sam, flooding), with the fixed options ``STEP_OPTIONS`` (γ = 0.01, ε = 0.05, ρ = 0.05, b = 0.05;
  the cost does not depend on the values, only on which gradients a step evaluates).

A suite name stands for all of its members: ``--only steps`` (every step rule) or ``--only
regularizers``; the default is every regularizer. When both gr-forward and gr-db are timed, the
result also holds ``forward_over_db`` = F-GR step time ÷ DB step time. A result holding step rules
is saved under its own tag (``kind``: "steps", "mlp-…-steps", …), beside the regularizer bench.

The input batch is random, shaped like the data set the model eats (``DATASET``); a dense network
(``mlp``) eats MNIST-shaped or CIFAR-shaped batches by its ``in_features`` (784 or 3072).
"""
from __future__ import annotations

import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from . import models, papers, regularizers
from . import results as results_store
from . import steps as step_rules
from .errors import GradregError
from .seeds import SeedStack
from .config import DATA, TrainConfig
from .train import make_optimizer, resolve_device
from .train import step as train_step

DATASET = {"lenet": "mnist", "lenettuned": "mnist", "mlp": "mnist", "cifar_resnet": "cifar10"}  # what each model eats
FLAT_DATASET = {784: "mnist", 3072: "cifar10"}     # an mlp's in_features -> the data set whose images it eats
STEP_NAMES = [n for n in step_rules.names() if n != "plain"]
# the bench's step options: the values do not change what a step computes, only the numbers it computes
BENCH_STEP_OPTIONS = {"gamma": 0.01, "eps": 0.05, "rho": 0.05, "b": 0.05}
STEP_OPTIONS = {n: {k: BENCH_STEP_OPTIONS[k] for k in step_rules.get(n).options} for n in STEP_NAMES}
SUITES = {"regularizers": regularizers.names, "steps": lambda: list(STEP_NAMES)}
# the architectures of the cost chapter (notebooks/gr_cost.ipynb): label -> (model, model options, batch)
STEP_BENCHES = {"LeNet": ("lenet", {}, 50),
                "CIFAR MLP": ("mlp", {"in_features": 3072, "hidden": 512, "depth": 3}, 128),
                "ResNet-8": ("cifar_resnet", {"width": 1, "blocks": 1}, 128)}
FGR_OVER_DB_TARGET = 0.8   # the project's target: an F-GR step costs at most 0.8 DB steps on LeNet (CPU, batch 50)
# Karakida et al. (ICML 2023): on ResNets F-GR runs "more than twice as fast" as DB; the factor as a
# number, for comparing with a measured DB ÷ F-GR, is kept with its source in papers.json
PAPER_DB_OVER_FGR = papers.reported("karakida-cost").cells["resnet"][0]
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


def _batch(model: str, n: int, dev: torch.device, model_options: dict[str, Any] | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random input batch of n examples shaped for ``model``, and labels, on ``dev``."""
    shape = DATA[_dataset(model, model_options)][0]
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(n, *shape, generator=gen).to(dev),
            torch.randint(10, (n,), generator=gen).to(dev))


def _dataset(model: str, model_options: dict[str, Any] | None = None) -> str:
    """The data set whose input shape the bench feeds ``model``; only the models in DATASET. A dense
    network eats the images whose pixel count is its ``in_features`` (FLAT_DATASET)."""
    if not isinstance(model, str) or model not in DATASET:
        raise GradregError(f"bench supports models {', '.join(DATASET)}; got {model!r}")
    features = (model_options or {}).get("in_features") if model == "mlp" else None
    if features is None:
        return DATASET[model]
    if type(features) is not int or features not in FLAT_DATASET:
        raise GradregError(f"bench feeds an mlp images: in_features must be one of "
                           f"{', '.join(f'{k} ({v})' for k, v in FLAT_DATASET.items())}, got {features!r}")
    return FLAT_DATASET[features]


def expand(names: list[str] | None) -> list[str]:
    """The bench variants ``names`` asks for: regularizer and step-rule names, a suite name
    ("regularizers", "steps") standing for all its members; None or empty: every regularizer. Duplicates are
    dropped, order kept; an unknown name is one GradregError listing the known ones."""
    out: list[str] = []
    for name in names or ["regularizers"]:
        if isinstance(name, str) and name in SUITES:
            out += SUITES[name]()
        elif isinstance(name, str) and (name in STEP_NAMES or name in regularizers.names()):
            out.append(name)
        else:
            raise GradregError(f"unknown bench variant {name!r}; known: regularizers "
                               f"({', '.join(regularizers.names())}), steps ({', '.join(STEP_NAMES)}), "
                               f"or a suite: {', '.join(SUITES)}")
    return list(dict.fromkeys(out))


def _variant(base: TrainConfig, name: str) -> TrainConfig:
    """The config of one bench variant: a step rule with STEP_OPTIONS, or a regularizer at weight 0.01."""
    if name in STEP_NAMES:
        return base.replace(step=name, step_options=dict(STEP_OPTIONS[name]))
    return base.replace(regularizer=name, weight=0.01)


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
    """Median seconds per step of a plain step and of each variant's step (``names``: regularizers,
    step rules or suites, see ``expand``; default every regularizer), their ratios to the plain step,
    and images per second; with gr-forward and gr-db both timed, ``forward_over_db`` too.
    ``model_options`` go to the model builder (e.g. a ResNet's ``width`` and ``blocks``, an MLP's
    ``in_features``, which picks MNIST- or CIFAR-shaped input); ``layout`` is the memory format of
    weights and batch."""
    _check_counts(batch_size=batch_size, reps=reps, steps=steps)
    if layout not in LAYOUTS:
        raise GradregError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    dev = resolve_device(device)
    names = expand(names)
    options = dict(model_options or {})
    base = TrainConfig(model=model, dataset=_dataset(model, options), model_options=options)
    configs = {n: _variant(base, n) for n in names}
    with _memory_guard(f"{model} at batch {batch_size}"):
        x, y = _batch(model, batch_size, dev, options)
        variants = {"plain": _stepper(base, x, y, layout)}
        variants.update({n: _stepper(cfg, x, y, layout) for n, cfg in configs.items()})
        median = _time_interleaved(variants, reps, steps, dev)
    timed_steps = [n for n in names if n in STEP_NAMES]
    out = {"model": model, "model_options": options, "dataset": base.dataset, "layout": layout,
           "batch_size": batch_size, "device": str(dev), "threads": torch.get_num_threads(),
           "reps": reps, "steps": steps, "torch": torch.__version__, "seconds_per_step": median,
           "images_per_second": {k: batch_size / v for k, v in median.items()},
           "ratio": {k: median[k] / median["plain"] for k in names}}
    if timed_steps:
        out["suite"] = "steps"
        out["step_options"] = {n: STEP_OPTIONS[n] for n in timed_steps}
    if "gr-forward" in median and "gr-db" in median:
        out["forward_over_db"] = median["gr-forward"] / median["gr-db"]
    return out


def _has_steps(result: dict[str, Any]) -> bool:
    return result.get("suite") == "steps" or any(n in STEP_NAMES for n in result.get("ratio") or {})


def kind(result: dict[str, Any]) -> str:
    """The file-name tag of a bench result: "" for the default LeNet regularizer bench
    (``results/bench/cpu.json``), else the model, its options and a non-default layout, e.g.
    "cifar_resnet-blocks1-width1", and "steps" last when the result times step rules ("steps" alone
    for LeNet: ``results/bench/steps-cpu.json``). To look a result up, ``{"model": …,
    "model_options": …, "suite": "steps"}`` is enough."""
    options = result.get("model_options") or {}
    tags = []
    if result["model"] != "lenet" or options or result.get("layout", "contiguous") != "contiguous":
        tags = [result["model"], *(f"{k}{v}" for k, v in sorted(options.items()))]
        if result.get("layout", "contiguous") != "contiguous":
            tags.append(result["layout"])
    if _has_steps(result):
        tags.append("steps")
    return "-".join(tags)


def step_command(label: str, device: str = "cpu") -> str:
    """The ``gradreg bench`` command that measures the step rules on one of STEP_BENCHES and saves it."""
    model, options, batch = STEP_BENCHES[label]
    opts = f" --model-options '{json.dumps(options)}'" if options else ""
    return f"gradreg bench --only steps --model {model}{opts} --batch-size {batch} --device {device} --save"


def matmul_units(depth: int = 4, width: int = 64, batch: int = 32, activation: str = "relu") -> dict[str, float]:
    """The matrix-multiply flops of one gradient of each step rule (plain and STEP_NAMES, with
    STEP_OPTIONS) on a dense network of ``depth`` square ``width`` × ``width`` layers (an ``mlp`` with
    ``depth − 1`` hidden layers and ``width`` classes), counted by ``torch.utils.flop_counter``, in
    units of one layer's forward product, 2·batch·width² flops. Elementwise work (activations, the
    loss, the parameter updates) is not counted: it is O(batch·width) per layer."""
    from torch.utils.flop_counter import FlopCounterMode

    from .losses import cross_entropy
    _check_counts(batch_size=batch)
    torch.manual_seed(0)
    net = models.build("mlp", in_features=width, hidden=width, depth=depth - 1, classes=width, activation=activation)
    x, y = torch.randn(batch, width), torch.randint(width, (batch,))
    params = list(net.parameters())
    units = {}
    for name in ["plain", *STEP_NAMES]:
        with FlopCounterMode(display=False) as counter:
            step_rules.get(name).gradient(lambda: cross_entropy(net(x), y).mean(), params, net,
                                          **STEP_OPTIONS.get(name, {}))
        units[name] = counter.get_total_flops() / (2 * batch * width ** 2)
    return units


def load_steps(device: str = "cpu", results_dir: str | None = None) -> dict[str, dict[str, Any] | None]:
    """{label: the saved step-rule bench of each of STEP_BENCHES, or None where none was saved}."""
    return {label: load(device, results_dir, kind({"model": m, "model_options": o, "suite": "steps"}))
            for label, (m, o, _) in STEP_BENCHES.items()}


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
             f"{'variant' if _has_steps(result) else 'regularizer':<14}{'ms/step':>9}{'× plain':>9}{'images/s':>10}"]
    for name, ratio in {"plain": 1.0, **result["ratio"]}.items():
        seconds = result["seconds_per_step"][name]
        lines.append(f"{name:<14}{1000 * seconds:>9.2f}{ratio:>9.2f}{result['batch_size'] / seconds:>10.1f}")
    if "forward_over_db" in result:
        lines.append(f"gr-forward ÷ gr-db: {result['forward_over_db']:.2f}")
    if result.get("step_options"):
        lines.append("step options: " + "; ".join(f"{n} {', '.join(f'{k}={v:g}' for k, v in o.items())}"
                                                  for n, o in result["step_options"].items()))
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
    cfg = TrainConfig(model=model, dataset=_dataset(model, model_options), model_options=dict(model_options or {}),
                      regularizer=regularizer, weight=0.01 if regularizer else 0.0)
    x, y = _batch(model, batch_size, dev, model_options)
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

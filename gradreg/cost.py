"""Estimated GPU time of an experiment's grid, for the "est. GPU" column of ``gradreg list``.

Nobody has run the grids on a GPU yet, so the estimate is one of two kinds (``GpuEstimate.basis``):

- ``"measured"``: every cell's step time comes from a saved CUDA bench of its model
  (``gradreg bench --device cuda --save``, ``results/bench/<kind>-cuda.json``): the bench's plain-step
  seconds × its measured ratio for the cell's regularizer or step rule.
- ``"model"``: otherwise, a roofline-style guess for one H100-class GPU, fp32, eager PyTorch:

      t = n_ops · T_OP + flops / THROUGHPUT

  where ``n_ops`` and ``flops`` are *counted* (``step_cost``): one real training iteration of the
  config (batch gather, augmentation, ``train.step`` with its regularizer and step rule, the
  optimizer update) runs on the meta device — shapes only, no values — under a dispatch mode that
  counts the ATen operators and adds up ``torch.utils.flop_counter``'s formulas. So DataGrad's double
  backward, FrobReg's K products and the extra gradient evaluations of gr-db, gr-forward, sam … are
  in the count, not multiplied in by hand.

Seed batching: on CUDA ``gradreg run`` trains a cell's seeds as one stacked model when the step rule
allows it (``steps.Step.separable``): S seeds cost S× the flops but one set of kernel launches, so
the op term is paid once per cell-iteration (counted on meta, a stack of 5 launches 1.0–1.5× the ops
of one model: vmap adds a few). SAM and flooding train seed by seed and pay it S times.
Measured cells get no such credit: the bench times one model, so they are an upper bound.

What the model leaves out: memory-bound elementwise work (BatchNorm, ReLU, the optimizer) beyond its
launch cost, evaluation at the end of a run, data loading, and whether a stack fits in GPU memory.
It is an estimate to plan with, within a factor of a few; a CUDA bench replaces it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from . import bench, models, regularizers, results, steps
from .config import DATA, TrainConfig
from .errors import GradregError
from .experiments import Experiment
from .train import augment, make_optimizer
from .train import step as train_step

# Assumptions of the cost model, chosen once from public figures, never fitted to a measurement:
# T_OP: seconds per dispatched ATen operator in eager PyTorch. Each op costs Python and dispatcher
# work, autograd bookkeeping and a cudaLaunchKernel (~5 µs) on the host; small-batch training runs at
# the host's pace, commonly 5–20 µs per op. 10 µs is the middle of that range.
T_OP = 10e-6
# THROUGHPUT: sustained flop/s of the counted work (matrix products and convolutions) on one H100 in
# fp32 eager mode. Peak is 67 TFLOP/s fp32 (matmuls: PyTorch leaves TF32 off for them) and ~490 TFLOP/s
# TF32 (convolutions: cuDNN uses TF32 by default); unfused eager kernels with double backward reach a
# fraction of that. 25e12, 37 % of the fp32 peak: conservative for convolutions, fair for matmuls.
THROUGHPUT = 25e12
BASES = ("measured", "model")


@dataclass(frozen=True)
class GpuEstimate:
    """GPU seconds of a grid; ``basis`` "measured" only if every cell's is; ``per_cell``:
    {cell: (seconds, basis)}."""

    seconds: float
    basis: str
    per_cell: dict[str, tuple[float, str]] = field(default_factory=dict)

    @property
    def hours(self) -> float:
        return self.seconds / 3600


# ---------------------------------------------------------------- counting one training iteration

class _Counter(TorchDispatchMode):
    """Counts the operators that run on the meta device (the stand-in for the GPU) and their flops.

    View operators (reshapes, transposes, ``detach``) launch no kernel and are not counted; nor are
    operators on CPU tensors only (the optimizers' step counters). A host read of a meta value
    (``.item()``, ``if norm > 0``) counts as one operator and answers 1 / True: the branch a real step
    takes, e.g. SAM's ‖g‖ > 0."""

    def __init__(self) -> None:
        super().__init__()
        self.ops, self.flops = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            self.ops += 1
            return True if args[0].dtype == torch.bool else 1.0 if args[0].dtype.is_floating_point else 1
        out = func(*args, **kwargs)
        if not func.is_view and _on_meta(out, args, kwargs):
            self.ops += 1
            if func._overloadpacket in flop_registry:
                self.flops += flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        return out


def _on_meta(out: Any, args: tuple, kwargs: dict) -> bool:
    """Whether an operator touched a meta tensor: its output (the common case, checked first) or,
    for in-place and foreach updates that return nothing, its arguments."""
    first = out[0] if isinstance(out, (tuple, list)) and out else out
    if isinstance(first, Tensor):
        return first.device.type == "meta"
    return any(isinstance(t, Tensor) and t.device.type == "meta" for t in tree_flatten((args, kwargs))[0])


def train_batch(cfg: TrainConfig) -> int:
    """The minibatch size a run trains with (a subset smaller than the batch size is one batch)."""
    return min(cfg.batch_size, cfg.n_train) if cfg.n_train is not None else cfg.batch_size


def _meta_model(cfg: TrainConfig) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The config's model and optimizer on the meta device, set up as a CUDA run sets them up:
    channels_last for convolutional nets (``train.fast_layout``), the optimizer's foreach
    (multi-tensor) update (PyTorch's default on CUDA) and its state already created (a placeholder
    update: a step of a run finds Adam's moments and the momentum buffers there)."""
    with torch.device("meta"):
        model = models.build(cfg.model, **cfg.model_options)
    if _is_conv(model):
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    for group in opt.param_groups:
        group["foreach"] = True
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    opt.step()
    opt.zero_grad()
    return model.train(), opt


def _is_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _meta_batch(dataset: str, n: int) -> tuple[Tensor, Tensor]:
    """n inputs shaped like the data set's and their targets (class labels or [n, 1]), on meta."""
    shape, classes, _, _ = DATA[dataset]
    y = torch.empty(n, dtype=torch.long, device="meta") if classes else torch.empty(n, 1, device="meta")
    return torch.empty(n, *shape, device="meta"), y


def _batch_cost(dataset: str, batch: int, kind: str) -> tuple[int, float]:
    """(n_ops, flops) of fetching one minibatch as ``train.train`` does on a GPU-resident data set:
    the indices to the device, the gather of inputs and targets, the augmentation ``kind``.
    Cached with the steps' counts (``_UPDATES``)."""
    key = json.dumps({"minibatch": [dataset, batch, kind]})
    if key not in _UPDATES:
        _UPDATES[key] = _count_batch(dataset, batch, kind)
    return _UPDATES[key]


def _count_batch(dataset: str, batch: int, kind: str) -> tuple[int, float]:
    x_train, y_train = _meta_batch(dataset, 2 * batch)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]), _Counter() as counter:
        idx = torch.randperm(len(x_train), generator=generator)[:batch].to("meta")
        augment(x_train[idx], kind, generator)
        y_train[idx]
    return counter.ops, float(counter.flops)


def _key(cfg: TrainConfig) -> str:
    """What the work of ``train.step`` depends on: the cache key of ``_update_cost``. Not the step
    rule's option values (γ, ε, ρ, b change the numbers a step computes, not which), nor the
    regularizer's weight beyond whether it is on."""
    return json.dumps({"model": cfg.model, "model_options": cfg.model_options, "dataset": cfg.dataset,
                       "batch": train_batch(cfg), "loss": cfg.loss,
                       "regularizer": cfg.regularizer if cfg.weight > 0 else None,
                       "reg_options": cfg.reg_options if cfg.weight > 0 else {}, "separate_pass": cfg.separate_pass,
                       "step": cfg.step, "optimizer": cfg.optimizer, "decay": cfg.weight_decay > 0},
                      sort_keys=True, default=repr)


_UPDATES: dict[str, tuple[int, float]] = {}


def _cache_path() -> Path:
    """Where counts persist between ``gradreg list`` calls: one file per version of the code that
    decides them (every module of the package, and torch), so an edit never serves a stale count."""
    code = hashlib.sha256(torch.__version__.encode())
    for module in sorted(Path(__file__).parent.glob("*.py")):
        code.update(module.read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gradreg" / f"step-costs-{code.hexdigest()[:16]}.json"


def _load_counts() -> None:
    """Fill ``_UPDATES`` from the cache file, once per process; an unreadable cache is ignored
    (it is only an optimisation: counting again gives the same numbers)."""
    if _UPDATES:
        return
    with contextlib.suppress(OSError, ValueError, TypeError):
        _UPDATES.update({k: (int(n), float(f)) for k, (n, f) in json.loads(_cache_path().read_text()).items()})


def _save_counts() -> None:
    """Write ``_UPDATES`` to the cache file (atomically); a read-only home is no error."""
    with contextlib.suppress(OSError, GradregError):
        results.atomic_write(_cache_path(), json.dumps(_UPDATES, sort_keys=True))


def _update_cost(cfg: TrainConfig) -> tuple[int, float]:
    """(n_ops, flops) of ``train.step`` on one minibatch (penalty, step rule, optimizer update) and
    the loop's loss sum, after the batch is laid out as the model wants it. Frobenius penalties
    batch their K products with vmap, as they do on CUDA. Cached per ``_key``."""
    key = _key(cfg)
    if key not in _UPDATES:
        reg = cfg.regularizer if cfg.weight > 0 else None
        vectorize = reg is not None and "vectorized" in regularizers.options(reg) \
            and "vectorized" not in cfg.reg_options
        with torch.random.fork_rng(devices=[]):
            model, opt = _meta_model(cfg)
            x, y = _meta_batch(cfg.dataset, train_batch(cfg))
            params = [p for p in model.parameters() if p.requires_grad]
            generator, window = torch.Generator().manual_seed(0), torch.zeros((), device="meta")
            with _Counter() as counter:
                if x.dim() == 4 and _is_conv(model):
                    x = x.contiguous(memory_format=torch.channels_last)
                window += train_step(model, opt, params, x, y, cfg, generator,
                                     reg_options={"vectorized": True} if vectorize else None)
        _UPDATES[key] = (counter.ops, float(counter.flops))
    return _UPDATES[key]


def step_cost(cfg: TrainConfig) -> tuple[int, float]:
    """(n_ops, flops) of one training iteration of ``cfg`` for one seed, counted on the meta device:
    the minibatch (``_batch_cost``) and the step (``_update_cost``), each counted once and cached.

    flops are those of ``torch.utils.flop_counter``'s formulas: matrix products and convolutions
    (2 per multiply-add), forward, backward and double backward alike; n_ops the operators that
    reach the device (``_Counter``)."""
    batch_ops, batch_flops = _batch_cost(cfg.dataset, train_batch(cfg), cfg.augment)
    ops, flops = _update_cost(cfg)
    return batch_ops + ops, batch_flops + flops


def model_seconds(cfg: TrainConfig, seeds: int = 1) -> float:
    """Modelled GPU seconds of one iteration of a cell of ``seeds`` seeds: the op term once if the
    seeds train stacked (a separable step rule), once per seed otherwise; flops for every seed."""
    n_ops, flops = step_cost(cfg)
    launches = 1 if steps.get(cfg.step).separable else seeds
    return launches * n_ops * T_OP + seeds * flops / THROUGHPUT


# ---------------------------------------------------------------- measured: saved CUDA benches

def _variant(cfg: TrainConfig) -> str | None:
    """The bench variant a config's step is: "plain", a regularizer or a step rule; None for a
    regularizer under a non-plain step rule, which no bench times."""
    reg = cfg.regularizer if cfg.weight > 0 else None
    if reg and cfg.step != "plain":
        return None
    return reg or cfg.step


def _bench_results(cfg: TrainConfig, results_dir: str | None) -> list[dict[str, Any]]:
    """The saved CUDA benches of the config's model and options: the layout a CUDA run uses
    (channels_last) first, regularizer bench before step-rule bench."""
    found = []
    for layout in ("channels_last", "contiguous"):
        for suite in ({}, {"suite": "steps"}):
            tag = bench.kind({"model": cfg.model, "model_options": cfg.model_options, "layout": layout, **suite})
            result = bench.load("cuda", results_dir, tag)
            if result is not None:
                found.append(result)
    return found


def measured_seconds(cfg: TrainConfig, results_dir: str | None = None) -> float | None:
    """Seconds of one step of ``cfg`` from a saved CUDA bench of the same model, options, data set
    and batch size: plain-step seconds × the variant's ratio; None where no bench times it."""
    name = _variant(cfg)
    for result in (_bench_results(cfg, results_dir) if name else []):
        same = (result.get("model_options") or {}) == cfg.model_options and result.get("batch_size") == \
            train_batch(cfg) and result.get("dataset", cfg.dataset) == cfg.dataset
        plain = (result.get("seconds_per_step") or {}).get("plain")
        ratio = 1.0 if name == "plain" else (result.get("ratio") or {}).get(name)
        if same and _positive(plain) and _positive(ratio):
            return plain * ratio
    return None


def _positive(value: Any) -> bool:
    """A finite number > 0 (what a bench file holds where it timed something)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


# ---------------------------------------------------------------- a grid

def cell_seconds(cfg: TrainConfig, seeds: int, results_dir: str | None = None) -> tuple[float, str]:
    """(GPU seconds, basis) of one cell: ``seeds`` runs of ``cfg.iterations`` iterations each."""
    measured = measured_seconds(cfg, results_dir)
    if measured is not None:
        return cfg.iterations * seeds * measured, "measured"
    return cfg.iterations * model_seconds(cfg, seeds), "model"


def gpu_seconds(exp: Experiment, profile: str, results_dir: str | None = None,
                grid: list[tuple[str, int, TrainConfig]] | None = None) -> GpuEstimate:
    """Estimated seconds on one H100-class GPU for the whole grid of ``exp`` at ``profile``, seeds of
    a cell batched as ``gradreg run`` does on CUDA. ``ResultsMissing`` where the grid's settings come
    from results not yet stored (as ``Experiment.configs``). ``grid``: ``exp.configs(profile)`` if
    the caller has it already (building it validates every config: seconds for the big grids)."""
    cells: dict[str, list[TrainConfig]] = {}
    for cell, _, cfg in grid if grid is not None else exp.configs(profile, results_dir=results_dir):
        cells.setdefault(cell, []).append(cfg)
    _load_counts()
    known = len(_UPDATES)
    per_cell = {cell: cell_seconds(cfgs[0], len(cfgs), results_dir) for cell, cfgs in cells.items()}
    if len(_UPDATES) > known:
        _save_counts()
    basis = "measured" if all(b == "measured" for _, b in per_cell.values()) else "model"
    return GpuEstimate(sum(s for s, _ in per_cell.values()), basis, per_cell)


def format_hours(est: GpuEstimate) -> str:
    """A table cell: "~0.35 GPU-h (model)", "~12 GPU-h (measured)", "<0.01 GPU-h (model)": two
    significant digits, "~" and the basis saying it is an estimate."""
    hours = est.hours
    if hours < 0.01:
        return f"<0.01 GPU-h ({est.basis})"
    digits = max(0, 1 - math.floor(math.log10(hours)))
    return f"~{hours:,.{digits}f} GPU-h ({est.basis})"

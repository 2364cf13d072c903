"""``TrainConfig``: everything one run depends on, and the one check every config passes.

A config is stored with each result, so a record can be rerun exactly. It is validated when it is
made (``TrainConfig(...)``, ``.replace(...)``, ``gradreg train key=value``): types, ranges, finite
numbers, option names and types, and the combinations that cannot work (a model that cannot take
the data set's inputs, a loss that does not fit its targets, a BatchNorm batch of one) — each a
single ``GradregError`` that says what to change, so the API and the command line share one check
and nothing starts that was bound to fail. ``check_dataset`` does the same for data handed to
``train`` directly.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import data as datasets
from . import losses, models, regularizers, steps
from .errors import GradregError

OPTIMIZERS = ("adam", "nesterov", "momentum", "sgd")   # sgd: plain (full-batch) gradient descent, no momentum
SCHEDULES = ("piecewise", "constant", "cosine")
AUGMENTATIONS = ("none", "shift", "shift_flip")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one run depends on. Defaults are the LeNet/MNIST setting of Varga et al."""

    # data
    dataset: str = "mnist"
    n_train: int | None = 2000          # training subset size (None: all)
    n_test: int | None = None           # evaluate on the first n_test test points (None: all)
    protocol: str = "official"          # the split: "official" test set; MNIST: the authors' "paper" split;
                                        # CIFAR-10: "validation" (the last training batch file as test set)
    augment: str = "none"               # "shift" = random 4-px shifts, "shift_flip" adds mirror images
    # model and loss
    model: str = "lenet"
    model_options: dict = field(default_factory=dict)
    loss: str = "cross_entropy"
    # regularizer: loss = task + weight * penalty.mean()
    regularizer: str | None = None
    weight: float = 0.0
    reg_options: dict = field(default_factory=dict)
    separate_pass: bool | None = None   # penalty in its own forward pass (own dropout mask)? None: as the
                                        # authors did (train.shares_pass); True/False force it
    # the training step (gradreg.steps): "plain" ∇L, or a parameter-space rule of Karakida et al.
    # (gr-db, gr-forward, gr-backward, gr-central), SAM or flooding, with its options (gamma, eps, rho, b)
    step: str = "plain"
    step_options: dict = field(default_factory=dict)
    # optimisation
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9               # nesterov and momentum (heavy-ball) SGD only
    schedule: str = "piecewise"         # lr, lr/10 after 50 %, lr/100 after 75 % of the iterations;
                                        # "cosine": lr·½(1 + cos πt/T); "constant"
    weight_decay: float = 5e-4          # coupled L2 on conv/dense weights (not biases, not BatchNorm)
    iterations: int = 10000
    batch_size: int = 50
    # bookkeeping
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda
    log_every: int = 100                # loss history granularity, and how often NaNs are checked
    noise_sigma: float = 0.2            # E10: gradient norms at training points + N(0, sigma²)
    eval_points: int | None = 2000      # cap on points used for the gradient-norm metrics
    curve_every: int | None = None      # learning curve: test loss/accuracy every k iterations (None: off)

    def __post_init__(self) -> None:
        validate(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed; an unknown field name is a GradregError."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise GradregError(f"unknown config key(s) {', '.join(sorted(unknown))}; "
                               f"known: {', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- validation: one check for API and CLI

# What a config may ask of each data set: input shape, classes (None: regression), and how many
# training / test points exist at most (the files on disk may hold fewer: the loader checks that).
DATA = {"mnist": ((1, 28, 28), 10, 60000, 10000), "cifar10": ((3, 32, 32), 10, 50000, 10000),
        "sin5x": ((1,), None, 10**7, 10**7), "sparse_linear": ((datasets.SPARSE_FEATURES,), None, 10**7, 10**7)}
# The splits each data set offers, and the training pool each draws its subset from.
PROTOCOL_POOL = {"mnist": {"official": 60000, "paper": 50000}, "cifar10": {"official": 50000, "validation": 40000},
                 "sin5x": {"official": 10**7}, "sparse_linear": {"official": 10**7}}
MAX_SEED = 2**63 - 1
MAX_COUNT = 10**9        # iterations, batch size, …: more is a typo (and overflows tqdm's len())


def _fail(message: str) -> None:
    raise GradregError(message)


def _check_choice(name: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        _fail(f"unknown {name} {value!r}; known: {', '.join(choices)}")


def _check_int(name: str, value: Any, low: int, high: int | None = None, optional: bool = False) -> None:
    """An integer (not a bool) in [low, high]; None too if ``optional``."""
    if optional and value is None:
        return
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        _fail(f"{name} must be an integer {bounds}{' or None' if optional else ''}, got {value!r}")


def _finite(value: Any) -> bool:
    """A real number (not a bool) that is finite as a float (10**400 is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _check_number(name: str, value: Any, low: float, *, strict: bool = False, below: float | None = None) -> None:
    """A finite real number (not a bool) >= low (> low if ``strict``), and < below if given."""
    if not _finite(value):
        _fail(f"{name} must be a finite number, got {value!r}")
    if value < low or (strict and value == low) or (below is not None and value >= below):
        bound = f"{'>' if strict else '>='} {low:g}" + (f" and < {below:g}" if below is not None else "")
        _fail(f"{name} must be {bound}, got {value!r}")


def _check_options(what: str, options: Any, allowed: dict[str, tuple[type, ...]]) -> None:
    """A dict of known keyword options, each of an accepted type."""
    if not isinstance(options, dict):
        _fail(f"{what} must be a dict, got {options!r}")
    for key, value in options.items():
        if key not in allowed:
            _fail(f"unknown {what} key {key!r}; known: {', '.join(allowed) or 'none'}")
        if not isinstance(value, allowed[key]) or (isinstance(value, bool) and bool not in allowed[key]):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed[key])
            _fail(f"{what} {key!r} must be {names}, got {value!r}")


INT_FIELDS = ("n_train", "n_test", "eval_points", "iterations", "batch_size", "log_every", "seed", "curve_every")
REAL_FIELDS = ("lr", "momentum", "weight_decay", "noise_sigma", "weight")


def _normalise(cfg: "TrainConfig") -> None:
    """numpy integers and floats (from a sweep) become Python ones, so the config stores as JSON."""
    for name in INT_FIELDS + REAL_FIELDS:
        value = getattr(cfg, name)
        if isinstance(value, bool) or type(value) in (int, float) or not isinstance(value, numbers.Real):
            continue
        if isinstance(value, numbers.Integral):
            object.__setattr__(cfg, name, int(value))
        elif name in REAL_FIELDS and _finite(value):
            object.__setattr__(cfg, name, float(value))


def validate(cfg: "TrainConfig") -> None:
    """Every check a config must pass before training; each failure is one GradregError."""
    _normalise(cfg)
    for name in ("dataset", "model", "loss", "optimizer", "schedule", "augment", "device", "protocol", "step"):
        if not isinstance(getattr(cfg, name), str):
            _fail(f"{name} must be a string, got {getattr(cfg, name)!r}")
    _check_choice("dataset", cfg.dataset, list(DATA))
    _check_choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _check_choice("schedule", cfg.schedule, SCHEDULES)
    _check_choice("augment", cfg.augment, AUGMENTATIONS)
    steps.check_options(cfg.step, cfg.step_options)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        _fail(f"unknown device {cfg.device!r}; known: auto, cpu, cuda, cuda:N")
    if cfg.protocol not in PROTOCOL_POOL[cfg.dataset]:
        _fail(f"unknown protocol {cfg.protocol!r} for {cfg.dataset}; known: {', '.join(PROTOCOL_POOL[cfg.dataset])}")
    _check_choice("model", cfg.model, list(models.MODELS))
    losses.get(cfg.loss)
    if cfg.regularizer is not None:
        regularizers.get(cfg.regularizer) if isinstance(cfg.regularizer, str) else _fail(
            f"regularizer must be a name or None, got {cfg.regularizer!r}")
    _validate_numbers(cfg)
    _validate_sizes(cfg)
    _validate_combination(cfg)
    _check_model(cfg.model, _freeze(cfg.model_options), cfg.dataset, cfg.loss, _train_batch(cfg))


def _validate_numbers(cfg: "TrainConfig") -> None:
    _check_number("lr", cfg.lr, 0.0, strict=True, below=1e30)           # the optimizers hold it in float32
    _check_number("weight_decay", cfg.weight_decay, 0.0, below=1e30)
    _check_number("noise_sigma", cfg.noise_sigma, 0.0, below=1e3)   # in standardised pixel units
    _check_number("momentum", cfg.momentum, 0.0, strict=cfg.optimizer in ("nesterov", "momentum"), below=1.0)
    if not (_finite(cfg.weight) and cfg.weight >= 0):
        _fail(f"regularizer weight must be a finite number >= 0, got {cfg.weight!r}")
    for name in ("iterations", "batch_size", "log_every"):
        _check_int(name, getattr(cfg, name), 1, MAX_COUNT)
    _check_int("seed", cfg.seed, 0, MAX_SEED)
    if cfg.separate_pass is not None and not isinstance(cfg.separate_pass, bool):
        _fail(f"separate_pass must be True, False or None (the authors' choice), got {cfg.separate_pass!r}")


def _validate_sizes(cfg: "TrainConfig") -> None:
    _, _, n_train, n_test = DATA[cfg.dataset]
    n_train = min(n_train, PROTOCOL_POOL[cfg.dataset][cfg.protocol])
    _check_int(f"n_train ({cfg.dataset}, at most {n_train})", cfg.n_train, 1, n_train, optional=True)
    _check_int(f"n_test ({cfg.dataset}, at most {n_test})", cfg.n_test, 1, n_test, optional=True)
    _check_int("eval_points", cfg.eval_points, 1, MAX_COUNT, optional=True)
    _check_int("curve_every", cfg.curve_every, 1, MAX_COUNT, optional=True)


def _validate_combination(cfg: "TrainConfig") -> None:
    """Settings that are fine alone but not together."""
    shape, classes, _, _ = DATA[cfg.dataset]
    if cfg.augment != "none" and len(shape) != 3:
        _fail(f"augment {cfg.augment!r} needs images; {cfg.dataset} has none")
    wanted = "cross_entropy" if classes else "squared_error"
    if cfg.loss != wanted:
        _fail(f"loss {cfg.loss!r} does not fit {cfg.dataset} ({'classes' if classes else 'regression'}); "
              f"use loss={wanted}")
    if cfg.weight > 0 and cfg.regularizer is None:
        _fail(f"weight={cfg.weight!r} given but no regularizer; set regularizer=NAME or weight=0")
    if cfg.regularizer is None:
        if cfg.reg_options:
            _fail(f"reg_options {cfg.reg_options!r} given but no regularizer")
    else:
        # tensor options (SpectReg's fixed r) are for the API: a config is stored as JSON with its results
        settable = {k: t for k, t in regularizers.options(cfg.regularizer).items() if Tensor not in t}
        _check_options("reg_options", cfg.reg_options, settable)
        reg = regularizers.get(cfg.regularizer)
        if reg.needs_labels and not classes:
            _fail(f"regularizer {cfg.regularizer!r} needs class labels; {cfg.dataset} has none")
        if reg.softmax and not classes:
            _fail(f"regularizer {cfg.regularizer!r} acts on softmax probabilities, which are constant for "
                  f"{cfg.dataset}'s single output (the penalty would be 0)")
    _check_options("model_options", cfg.model_options, models.option_types(cfg.model))


def _train_batch(cfg: "TrainConfig") -> int:
    """The largest minibatch a run sees (a subset smaller than the batch size is one batch)."""
    return min(cfg.batch_size, cfg.n_train) if cfg.n_train is not None else cfg.batch_size


def _freeze(options: dict) -> str:
    return json.dumps(options, sort_keys=True, default=repr)


@functools.lru_cache(maxsize=256)
def _check_model(model: str, options: str, dataset: str, loss: str, batch: int) -> None:
    """Build the model and run one training-mode forward pass on a small batch shaped like the data
    set's: catches bad option values, inputs the model cannot take and outputs the loss cannot use.
    Runs on the CPU under a forked RNG (the caller's random state is untouched); cached."""
    shape, classes, _, _ = DATA[dataset]
    n = min(batch, 2)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            net = models.build(model, **json.loads(options))
            g = net.train()(torch.zeros(n, *shape))
        except GradregError:
            raise
        except (RuntimeError, ValueError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            _fail(f"model {model!r} with options {options} cannot train on {dataset} "
                  f"(inputs {list(shape)}, batch {n}): {first}")
    expected = (n, classes or 1)
    if tuple(g.shape) != expected:
        _fail(f"model {model!r} outputs shape {list(g.shape[1:])} per example; {dataset} with loss {loss} "
              f"needs [{expected[1]}]")


def check_dataset(data: Any, cfg: TrainConfig) -> None:
    """Data handed to ``train`` must fit the config's data set: a Dataset of float inputs shaped like
    its examples, as many labels as inputs, class labels in range (or [N, 1] regression targets)."""
    shape, classes, _, _ = DATA[cfg.dataset]
    if not isinstance(data, datasets.Dataset):
        _fail(f"data must be a gradreg.data.Dataset, got {type(data).__name__}")
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        where = f"data.x_{split}/y_{split}"
        if not (isinstance(x, Tensor) and isinstance(y, Tensor)) or "meta" in (x.device.type, y.device.type) \
                or any(t.layout != torch.strided or t.is_nested for t in (x, y)):
            _fail(f"{where} must be dense tensors holding values")
        if x.dtype != torch.get_default_dtype() or tuple(x.shape[1:]) != shape or len(x) == 0:
            _fail(f"{where}: inputs must be {torch.get_default_dtype()} [N, {', '.join(map(str, shape))}] "
                  f"with N >= 1 for {cfg.dataset}, got {x.dtype} {list(x.shape)}")
        if len(y) != len(x):
            _fail(f"{where}: {len(x)} inputs but {len(y)} targets")
        if classes and (y.dtype != torch.long or y.dim() != 1 or y.min() < 0 or y.max() >= classes):
            _fail(f"{where}: targets must be int64 class labels in 0..{classes - 1}, got {y.dtype} {list(y.shape)}")
        if not classes and (not y.is_floating_point() or tuple(y.shape[1:]) != (1,)):
            _fail(f"{where}: regression targets must be floats [N, 1], got {y.dtype} {list(y.shape)}")

"""The one training loop: a config in, final metrics out.

``TrainConfig`` holds every setting a run depends on (it is stored with each result, so a record
can be rerun exactly). ``train(cfg)`` builds data, model and optimizer from it, minimises

    mean_i ℓ_i  +  weight · mean_i penalty_i          (+ coupled L2 weight decay in the optimizer)

for ``cfg.iterations`` steps, and returns the final-iteration metrics (no early stopping, as in the
papers). A non-finite loss stops the run with status "diverged" instead of training on NaNs.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import data as datasets
from . import losses, models, regularizers
from .errors import GradregError

OPTIMIZERS = ("adam", "nesterov")
SCHEDULES = ("piecewise", "constant")
AUGMENTATIONS = ("none", "shift", "shift_flip")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one run depends on. Defaults are the LeNet/MNIST setting of Varga et al."""

    # data
    dataset: str = "mnist"
    n_train: int | None = 2000          # training subset size (None: all)
    n_test: int | None = None           # evaluate on the first n_test test points (None: all)
    protocol: str = "official"          # MNIST split: "official" test set, or the authors' "paper" split
    augment: str = "none"               # "shift" = random 4-px shifts, "shift_flip" adds mirror images
    # model and loss
    model: str = "lenet"
    model_options: dict = field(default_factory=dict)
    loss: str = "cross_entropy"
    # regularizer: loss = task + weight * penalty.mean()
    regularizer: str | None = None
    weight: float = 0.0
    reg_options: dict = field(default_factory=dict)
    separate_pass: bool = False         # penalty in its own forward pass (own dropout mask); see objective()
    # optimisation
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9               # Nesterov SGD only
    schedule: str = "piecewise"         # lr, lr/10 after 50 %, lr/100 after 75 % of the iterations
    weight_decay: float = 5e-4          # coupled L2 on conv/dense weights (not biases, not BatchNorm)
    iterations: int = 10000
    batch_size: int = 50
    # bookkeeping
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda
    log_every: int = 100                # loss history granularity, and how often NaNs are checked
    noise_sigma: float = 0.2            # E10: gradient norms at training points + N(0, sigma²)
    eval_points: int | None = 2000      # cap on points used for the gradient-norm metrics

    def __post_init__(self) -> None:
        for name in ("lr", "momentum", "weight_decay", "noise_sigma", "weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise GradregError(f"{name} must be a number, got {value!r}")
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("augment", self.augment, AUGMENTATIONS)
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))
        losses.get(self.loss)
        if self.regularizer is not None:
            regularizers.get(self.regularizer)
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise GradregError(f"regularizer weight must be a finite number >= 0, got {self.weight!r}")
        for name in ("iterations", "batch_size", "log_every"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise GradregError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise GradregError(f"need lr > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}")

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed; an unknown field name is a GradregError."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise GradregError(f"unknown config key(s) {', '.join(sorted(unknown))}; "
                               f"known: {', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise GradregError(f"unknown {name} {value!r}; known: {', '.join(choices)}")


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when present; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GradregError("device 'cuda' requested but torch.cuda.is_available() is False; use --device cpu")
    return torch.device(name)


def load_data(cfg: TrainConfig, device: torch.device, data_dir: str | None = None) -> datasets.Dataset:
    """The data set a config names, on ``device`` (the subset depends on the seed)."""
    if cfg.dataset == "sin5x":
        return datasets.sin5x(cfg.n_train or 100, cfg.seed, device=device)
    options: dict[str, Any] = dict(n_train=cfg.n_train, seed=cfg.seed, n_test=cfg.n_test,
                                   data_dir=data_dir, device=device)
    if cfg.dataset == "mnist":
        options["protocol"] = cfg.protocol
    return datasets.load(cfg.dataset, **options)


def piecewise(iterations: int) -> Callable[[int], float]:
    """The lr multiplier of the authors' "piecewise" schedule: 1, then 0.1 after 50 %, 0.01 after 75 %."""
    return lambda it: 1.0 if it < iterations // 2 else (0.1 if it < 3 * iterations // 4 else 0.01)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or Nesterov SGD with coupled L2 weight decay on conv and dense weights only."""
    decay, rest = models.weight_decay_params(model)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The config's learning-rate schedule, stepped once per iteration."""
    lr_mult = piecewise(cfg.iterations) if cfg.schedule == "piecewise" else (lambda it: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_mult)


def augment(x: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """Apply the config's augmentation to a batch (pure function of the batch tensor)."""
    if kind == "none":
        return x
    x = datasets.random_shift(x, 4, generator)
    return datasets.random_flip(x, generator) if kind == "shift_flip" else x


def objective(model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig,
              generator: torch.Generator | None = None,
              reg_options: dict[str, Any] | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One minibatch's training objective: (total, task loss, mean penalty or None).

    By default the penalty reuses the task loss's forward pass (one dropout mask for both, as the
    authors' code did for DataGrad); ``cfg.separate_pass`` gives it a forward pass of its own, as
    the authors' code did for SpectReg, FrobReg and JacReg (an independent dropout mask).
    ``reg_options``: per-step penalty options on top of ``cfg.reg_options`` (e.g. SpectReg's ``r``).
    """
    reg = regularizers.get(cfg.regularizer) if cfg.regularizer and cfg.weight > 0 else None
    share = reg is not None and not cfg.separate_pass
    if share and reg.input_grad:
        x = x.detach().requires_grad_(True)
    g = model(x)
    task = losses.get(cfg.loss)(g, y).mean()
    if reg is None:
        return task, task, None
    options = {**cfg.reg_options, **(reg_options or {})}
    if share:
        options["logits"] = g
    if reg.needs_loss:
        options["loss"] = cfg.loss
    if reg.random:
        options["generator"] = generator
    penalty = reg.penalty(model, x, y, **options).mean()
    return task + cfg.weight * penalty, task, penalty


def step(model: nn.Module, opt: torch.optim.Optimizer, params: list[Tensor], x: Tensor, y: Tensor,
         cfg: TrainConfig, generator: torch.Generator | None = None, *, scale: float = 1.0,
         reg_options: dict[str, Any] | None = None) -> Tensor:
    """One optimizer step on a minibatch; returns the (detached) objective it minimised.

    ``scale`` multiplies the objective before differentiating (a ``seeds.SeedStack`` of S members
    uses S, so each member gets the gradient of its own objective); ``reg_options`` go to the penalty.
    """
    total, _, _ = objective(model, x, y, cfg, generator, reg_options)
    opt.zero_grad(set_to_none=True)
    (total * scale).backward(inputs=params)   # parameters only: no gradient for the input batch
    opt.step()
    return total.detach()


@torch.enable_grad()  # usable inside torch.no_grad() too
def input_grad_norms(model: nn.Module, x: Tensor, y: Tensor, loss: str, chunk: int = 1000) -> Tensor:
    """‖∂ℓ_i/∂x_i‖ for each point (model in whatever mode the caller set), in chunks: [N]."""
    out = []
    for i in range(0, len(x), chunk):
        xi = x[i: i + chunk].detach().requires_grad_(True)
        (grad_x,) = torch.autograd.grad(losses.get(loss)(model(xi), y[i: i + chunk]).sum(), xi)
        out.append(grad_x.flatten(1).norm(dim=1))
    return torch.cat(out)


@torch.no_grad()
def _loss_and_accuracy(model: nn.Module, x: Tensor, y: Tensor, loss: str, chunk: int = 1000) -> dict[str, float]:
    """Mean task loss and (for classifiers) accuracy in %, in chunks."""
    total, correct = 0.0, 0
    for i in range(0, len(x), chunk):
        g = model(x[i: i + chunk])
        total += losses.get(loss)(g, y[i: i + chunk]).sum().item()
        if loss == "cross_entropy":
            correct += (g.argmax(1) == y[i: i + chunk]).sum().item()
    out = {"loss": total / len(x)}
    if loss == "cross_entropy":
        out["accuracy"] = 100.0 * correct / len(x)
    return out


def evaluate(model: nn.Module, data: datasets.Dataset, cfg: TrainConfig,
             generator: torch.Generator | None = None) -> dict[str, float]:
    """Final metrics in eval mode: loss/accuracy on train and test, and mean input-gradient norms
    ‖∂ℓ/∂x‖ at training points, test points and training points + N(0, noise_sigma²) (E10)."""
    model.eval()
    metrics: dict[str, float] = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        metrics.update({f"{split}_{k}": v for k, v in _loss_and_accuracy(model, x, y, cfg.loss).items()})
    n = cfg.eval_points
    x_tr, y_tr = data.x_train[:n], data.y_train[:n]
    noise = torch.randn(x_tr.shape, generator=generator).to(x_tr) * cfg.noise_sigma
    for name, x, y in (("train", x_tr, y_tr), ("test", data.x_test[:n], data.y_test[:n]),
                       ("noisy", x_tr + noise, y_tr)):
        metrics[f"grad_norm_{name}"] = input_grad_norms(model, x, y, cfg.loss).mean().item()
    return metrics


def final_metrics(model: nn.Module, data: datasets.Dataset, cfg: TrainConfig, generator: torch.Generator | None,
                  extra_metrics: Callable[[nn.Module, datasets.Dataset], dict[str, Any]] | None) -> dict[str, Any]:
    """What a finished run stores: ``evaluate`` plus the experiment's own measurements."""
    metrics: dict[str, Any] = evaluate(model, data, cfg, generator)
    if extra_metrics is not None:
        metrics.update(extra_metrics(model, data))
    return metrics


def train(cfg: TrainConfig, data: datasets.Dataset | None = None, *, data_dir: str | None = None,
          progress: bool = True,
          extra_metrics: Callable[[nn.Module, datasets.Dataset], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train one model as ``cfg`` says and return {status, metrics, history, times, device, model}.

    ``data``: reuse already loaded tensors (else loaded from the config and ``data_dir``).
    ``extra_metrics(model, data)``: experiment-specific measurements added to the metrics.
    """
    device = resolve_device(cfg.device)
    data = (data or load_data(cfg, device, data_dir)).to(device)
    torch.manual_seed(cfg.seed)                            # parameter initialisation
    generator = torch.Generator().manual_seed(cfg.seed)    # batches, augmentation, random projections
    model = models.build(cfg.model, **cfg.model_options).to(device)
    opt = make_optimizer(cfg, model)
    params = [p for p in model.parameters() if p.requires_grad]
    scheduler = make_scheduler(cfg, opt)
    batches = datasets.batch_indices(len(data.x_train), cfg.batch_size, generator)

    history: list[tuple[int, float]] = []
    status, window = "ok", torch.zeros((), device=device)
    bar = tqdm(range(cfg.iterations), disable=not progress, leave=False, desc=cfg.regularizer or "plain")
    start = time.perf_counter()
    for it in bar:
        model.train()
        idx = next(batches).to(device)
        x = augment(data.x_train[idx], cfg.augment, generator)
        window += step(model, opt, params, x, data.y_train[idx], cfg, generator)
        scheduler.step()
        if (it + 1) % cfg.log_every == 0 or it + 1 == cfg.iterations:
            mean_loss = window.item() / ((it % cfg.log_every) + 1)  # one host sync per window
            history.append((it + 1, mean_loss))
            window.zero_()
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            if not math.isfinite(mean_loss):
                status = "diverged"
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    metrics = final_metrics(model, data, cfg, generator, extra_metrics) if status == "ok" else {}
    return {"status": status, "metrics": metrics, "history": history, "iterations_done": history[-1][0],
            "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - start, "device": str(device),
            "model": model}

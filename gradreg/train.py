"""The one training loop: a config in, final metrics out.

``TrainConfig`` (``gradreg.config``, re-exported here) holds every setting a run depends on, checked
when it is made. ``train(cfg)`` builds data, model and optimizer from it, minimises

    mean_i ℓ_i  +  weight · mean_i penalty_i          (+ coupled L2 weight decay in the optimizer)

for ``cfg.iterations`` steps, and returns the final-iteration metrics (no early stopping, as in the
papers). A non-finite loss stops the run with status "diverged" instead of training on NaNs; non-finite
final weights or metrics mark it "diverged" too.
"""
from __future__ import annotations

import math
import re
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import data as datasets
from . import losses, models, regularizers, steps
from .config import TrainConfig, check_dataset
from .errors import GradregError


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when present; asking for CUDA without one is a clear error."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise GradregError(f"unknown device {name!r}; known: auto, cpu, cuda, cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GradregError("device 'cuda' requested but torch.cuda.is_available() is False; use --device cpu")
    return torch.device(name)


def flush_denormals(device: torch.device) -> None:
    """On a CPU, flush subnormal floats (|x| < 1.2e-38) to zero, for this whole process.

    Why: weights that weight decay drives towards zero (dead ReLU units under Adam, whose step
    becomes lr·wd·w/eps once |w| is below eps/wd) pass through the subnormal range, where every
    multiply costs ~100× more on x86. Measured: a 64×32×5×5 convolution with half its filters
    subnormal ran 100× slower; whole LeNet runs slowed by 2× and their evaluation by 10×. Flushing
    changes values only below 1.2e-38, so no metric moves; GPUs flush by default."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)


def fast_layout(model: nn.Module, device: torch.device) -> torch.memory_format:
    """The memory layout a run's convolutions are fastest in, applied to ``model`` in place.

    On CUDA: channels_last (NHWC), which cuDNN's kernels prefer, and cuDNN's autotuner on. On the CPU:
    the default layout: measured with ``gradreg bench --channels-last``, oneDNN's NHWC kernels make
    the plain step somewhat faster but the double backward of DataGrad and SpectReg much slower,
    and the grids are dominated by regularized steps.
    The values are the same either way (a test checks loss and gradients)."""
    if device.type != "cuda" or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return torch.contiguous_format
    torch.backends.cudnn.benchmark = True
    model.to(memory_format=torch.channels_last)
    return torch.channels_last


def load_data(cfg: TrainConfig, device: torch.device, data_dir: str | None = None) -> datasets.Dataset:
    """The data set a config names, on ``device`` (the subset depends on the seed). An explicit
    ``data_dir`` is checked even for the synthetic sin(5x), which reads no files."""
    if data_dir is not None:
        datasets.check_dir(data_dir)
    if cfg.dataset == "sin5x":
        return datasets.sin5x(cfg.n_train or 100, cfg.seed, n_test=cfg.n_test or 900, device=device)
    if cfg.dataset == "sparse_linear":
        return datasets.sparse_linear(cfg.n_train or 40, cfg.seed, n_test=cfg.n_test or 1000, device=device)
    options: dict[str, Any] = dict(n_train=cfg.n_train, seed=cfg.seed, n_test=cfg.n_test,
                                   data_dir=data_dir, device=device)
    if cfg.dataset in ("mnist", "cifar10"):
        options["protocol"] = cfg.protocol
    return datasets.load(cfg.dataset, **options)


def piecewise(iterations: int) -> Callable[[int], float]:
    """The lr multiplier of the authors' "piecewise" schedule: 1, then 0.1 after 50 %, 0.01 after 75 %."""
    return lambda it: 1.0 if it < iterations // 2 else (0.1 if it < 3 * iterations // 4 else 0.01)


def cosine(iterations: int) -> Callable[[int], float]:
    """The lr multiplier of a cosine schedule: ½(1 + cos(π t / T)), from 1 down to 0."""
    return lambda it: 0.5 * (1.0 + math.cos(math.pi * it / iterations))


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam, Nesterov or heavy-ball momentum SGD, or plain gradient descent ("sgd"), with coupled L2
    weight decay on conv and dense weights only."""
    decay, rest = models.weight_decay_params(model)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov")


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The config's learning-rate schedule, stepped once per iteration."""
    schedules = {"piecewise": piecewise, "cosine": cosine, "constant": lambda n: (lambda it: 1.0)}
    return torch.optim.lr_scheduler.LambdaLR(opt, schedules[cfg.schedule](cfg.iterations))


def augment(x: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """Apply the config's augmentation to a batch (pure function of the batch tensor)."""
    if kind == "none":
        return x
    x = datasets.random_shift(x, 4, generator)
    return datasets.random_flip(x, generator) if kind == "shift_flip" else x


def shares_pass(cfg: TrainConfig, reg: regularizers.Regularizer, model: nn.Module) -> bool:
    """Whether the penalty reuses the task loss's forward pass.

    ``cfg.separate_pass`` True/False decides. None means the authors' choice: SpectReg, FrobReg,
    JacReg, Onehot and Random onehot got a forward pass of their own (``Regularizer.own_pass``), which
    differs from sharing only through dropout (an independent mask), so they get one exactly when the
    model has dropout; elsewhere the values are identical and sharing saves a forward pass (and a
    second update of BatchNorm's running statistics).
    """
    if cfg.separate_pass is not None:
        return not cfg.separate_pass
    return not (reg.own_pass and any(isinstance(m, nn.Dropout) for m in model.modules()))


def objective(model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig,
              generator: torch.Generator | None = None,
              reg_options: dict[str, Any] | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One minibatch's training objective: (total, task loss, mean penalty or None).

    The penalty reuses the task loss's forward pass (one dropout mask for both, as the authors' code
    did for DataGrad) or gets a forward pass of its own (an independent dropout mask, as the authors'
    code did for SpectReg, FrobReg, JacReg, Onehot and Random onehot): see ``shares_pass``.
    ``reg_options``: per-step penalty options on top of ``cfg.reg_options`` (e.g. SpectReg's ``r``).
    """
    reg = regularizers.get(cfg.regularizer) if cfg.regularizer and cfg.weight > 0 else None
    share = reg is not None and shares_pass(cfg, reg, model)
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
    penalty = reg.raw(model, x, y, **options).mean()
    return task + cfg.weight * penalty, task, penalty


def step(model: nn.Module, opt: torch.optim.Optimizer, params: list[Tensor], x: Tensor, y: Tensor,
         cfg: TrainConfig, generator: torch.Generator | None = None, *, scale: float = 1.0,
         reg_options: dict[str, Any] | None = None) -> Tensor:
    """One optimizer step on a minibatch; returns the (detached) objective L at the current weights.

    The gradient comes from the config's step rule (``gradreg.steps``: ∇L, a parameter-space GR
    estimate, SAM or flooding), which may evaluate L more than once, always on this batch and with
    the same random draws. ``scale`` multiplies the objective before differentiating (a
    ``seeds.SeedStack`` of S members uses S, so each member gets the gradient of its own objective);
    ``reg_options`` go to the penalty.
    """
    rule = steps.get(cfg.step)
    loss_fn = steps.replayed(lambda: objective(model, x, y, cfg, generator, reg_options)[0] * scale,
                             generator, x.device)
    grads = rule.gradient(loss_fn, params, model, **cfg.step_options)   # parameters only, not the batch
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    return loss_fn.first / scale


@torch.enable_grad()  # usable inside torch.no_grad() too
def input_grad_norms(model: nn.Module, x: Tensor, y: Tensor, loss: str, chunk: int = 1000) -> Tensor:
    """‖∂ℓ_i/∂x_i‖ for each point (model in whatever mode the caller set), in chunks: [N]."""
    out = []
    for i in range(0, len(x), chunk):
        xi = x[i: i + chunk].detach().requires_grad_(True)
        (grad_x,) = torch.autograd.grad(losses.get(loss)(model(xi), y[i: i + chunk]).sum(), xi)
        out.append(grad_x.flatten(1).norm(dim=1))
    return torch.cat(out)


@torch.enable_grad()
def jacobian_fro_norms(model: nn.Module, x: Tensor, chunk: int = 500) -> Tensor:
    """‖J_g(x_i)‖_F, the exact Frobenius norm of the logit Jacobian at each point, by K backward
    passes (model in whatever mode the caller set): [N]. Unlike ‖∂ℓ/∂x‖ = ‖J_gᵀ(p − y)‖ it does not
    shrink with the residual p − y, so it measures the flatness of the function itself."""
    out = []
    for i in range(0, len(x), chunk):
        xi = x[i: i + chunk].detach().requires_grad_(True)
        out.append(regularizers.frobenius_sq_norm(model(xi), xi, vectorized=False, create_graph=False).sqrt())
    return torch.cat(out)


def path_points(x: Tensor, generator: torch.Generator | None, ts: tuple[float, ...] = (0.25, 0.5, 0.75)) -> Tensor:
    """Points on straight lines between training points: x_i + t (x_π(i) − x_i) for a random
    pairing π and each t in ``ts`` ([len(ts)·N, ...]); off the data, but between it."""
    partner = x[torch.randperm(len(x), generator=generator).to(x.device)]
    return torch.cat([x + t * (partner - x) for t in ts])


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


def curve_point(model: nn.Module, data: datasets.Dataset, cfg: TrainConfig, iteration: int) -> dict[str, float]:
    """One point of the learning curve: test loss (and accuracy) in eval mode at ``iteration``; the
    model is put back in training mode. Forward passes only, without gradients."""
    model.eval()
    point = {"iteration": iteration, **{f"test_{k}": v for k, v in
                                        _loss_and_accuracy(model, data.x_test, data.y_test, cfg.loss).items()}}
    model.train()
    return point


def evaluate(model: nn.Module, data: datasets.Dataset, cfg: TrainConfig,
             generator: torch.Generator | None = None) -> dict[str, float]:
    """Final metrics in eval mode: loss/accuracy on train and test; mean input-gradient norms
    ‖∂ℓ/∂x‖ at training points, test points and training points + N(0, noise_sigma²) (E10); and for
    classifiers the mean logit-Jacobian norm ‖J_g‖_F at the same points and on straight lines between
    training points (``jac_fro_*``; at most 1,000 points each)."""
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
    if cfg.loss == "cross_entropy":
        m = min(n or len(x_tr), 1000)
        points = {"train": x_tr[:m], "test": data.x_test[:m], "noisy": (x_tr + noise)[:m],
                  "path": path_points(x_tr[: m // 3], generator)}
        for name, x in points.items():
            metrics[f"jac_fro_{name}"] = jacobian_fro_norms(model, x).mean().item()
    return metrics


def final_metrics(model: nn.Module, data: datasets.Dataset, cfg: TrainConfig, generator: torch.Generator | None,
                  extra_metrics: Callable[[nn.Module, datasets.Dataset], dict[str, Any]] | None) -> dict[str, Any]:
    """What a finished run stores: ``evaluate`` plus the experiment's own measurements."""
    metrics: dict[str, Any] = evaluate(model, data, cfg, generator)
    if extra_metrics is not None:
        metrics.update(extra_metrics(model, data))
    return metrics


def finish(model: nn.Module, data: datasets.Dataset, cfg: TrainConfig, generator: torch.Generator | None,
           extra_metrics: Callable[[nn.Module, datasets.Dataset], dict[str, Any]] | None) -> tuple[str, dict[str, Any]]:
    """(status, metrics) of a trained model: "ok" only if every parameter and every metric is finite.

    The loss is checked once per logging window during training; the last update can still produce
    NaN or infinite weights, so the final parameters and metrics are checked too ("diverged").
    """
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return "diverged", {}
    metrics = final_metrics(model, data, cfg, generator, extra_metrics)
    finite = all(math.isfinite(v) for v in _floats(metrics))
    return ("ok" if finite else "diverged"), metrics


def _floats(obj: Any) -> list[float]:
    """Every float inside a metrics value (numbers, lists of numbers, nested dicts)."""
    if isinstance(obj, float):
        return [obj]
    if isinstance(obj, dict):
        return [f for v in obj.values() for f in _floats(v)]
    if isinstance(obj, (list, tuple)):
        return [f for v in obj for f in _floats(v)]
    return []


def train(cfg: TrainConfig, data: datasets.Dataset | None = None, *, data_dir: str | None = None,
          progress: bool = True,
          extra_metrics: Callable[[nn.Module, datasets.Dataset], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train one model as ``cfg`` says and return {status, metrics, history, curve, times, device, model}.

    ``history``: (iteration, mean objective of the window) every ``log_every`` iterations; ``curve``:
    test loss and accuracy every ``cfg.curve_every`` iterations (empty when off); both are stored.

    ``data``: reuse already loaded tensors (else loaded from the config and ``data_dir``).
    ``extra_metrics(model, data)``: experiment-specific measurements added to the metrics.
    """
    if not isinstance(cfg, TrainConfig):
        raise GradregError(f"train() needs a TrainConfig, got {type(cfg).__name__}")
    if extra_metrics is not None and not callable(extra_metrics):
        raise GradregError(f"extra_metrics must be a function (model, data) -> dict, got {extra_metrics!r}")
    device = resolve_device(cfg.device)
    flush_denormals(device)
    if data is None:
        data = load_data(cfg, device, data_dir)
    check_dataset(data, cfg)
    data = data.to(device)
    torch.manual_seed(cfg.seed)                            # parameter initialisation
    generator = torch.Generator().manual_seed(cfg.seed)    # batches, augmentation, random projections
    model = models.build(cfg.model, **cfg.model_options).to(device)
    layout = fast_layout(model, device)
    opt = make_optimizer(cfg, model)
    params = [p for p in model.parameters() if p.requires_grad]
    scheduler = make_scheduler(cfg, opt)
    batches = datasets.batch_indices(len(data.x_train), cfg.batch_size, generator)

    history: list[tuple[int, float]] = []
    curve: list[dict[str, float]] = []
    status, window = "ok", torch.zeros((), device=device)
    bar = tqdm(range(cfg.iterations), disable=not progress, leave=False, desc=cfg.regularizer or "plain")
    start = time.perf_counter()
    for it in bar:
        model.train()
        idx = next(batches).to(device)
        x = augment(data.x_train[idx], cfg.augment, generator).contiguous(memory_format=layout)
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
        if cfg.curve_every and (it + 1) % cfg.curve_every == 0:
            curve.append(curve_point(model, data, cfg, it + 1))
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    status, metrics = finish(model, data, cfg, generator, extra_metrics) if status == "ok" else (status, {})
    return {"status": status, "metrics": metrics, "history": history, "curve": curve, "iterations_done": history[-1][0],
            "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - start, "device": str(device),
            "model": model}

"""The experiments of Varga, Csiszárik & Zombori, "Gradient Regularization Improves Accuracy of
Discriminative Models" (arXiv 1712.09936), with settings from ``shared/reference/experiments.md``
(weights and architectures from the authors' code), plus the book's quick start.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .data import Dataset
from .experiments import Experiment, Profile, register
from .config import TrainConfig
from .errors import ResultsMissing

# Every rerun of the paper starts from the authors' initialisation (models.authors_init).
AUTHORS = {"init": "authors"}

# ---------------------------------------------------------------- quick start (book chapter 1)

register(Experiment(
    name="quickstart",
    title="Gradient regularization in five minutes: LeNet on 2,000 MNIST digits, with and without DataGrad",
    source="book quick start (the setting of Varga et al., E2 at N = 2000: LeNet with dropout)",
    base=TrainConfig(model="lenet", model_options={**AUTHORS, "head": "dropout"}, n_train=2000),
    cells={"plain": {}, "datagrad": {"regularizer": "datagrad", "weight": 50.0}},
    profiles={
        "smoke": Profile(1, {"iterations": 40, "n_train": 200, "n_test": 500, "eval_points": 200}),
        "cpu": Profile(3, {"iterations": 3000}),
        "paper": Profile(10, {"iterations": 10000}),
    },
))

# ---------------------------------------------------------------- E1: Table 1

_TABLE1_WEIGHTS = {  # (DataGrad, SpectReg) weight per architecture row (authors' code)
    "baseline": (50.0, 0.01), "batchnorm": (0.003, 0.003), "dropout": (50.0, 0.01)}
_HEAD = {"baseline": "none", "batchnorm": "batchnorm", "dropout": "dropout"}


def _table1_cells() -> dict[str, dict[str, Any]]:
    cells: dict[str, dict[str, Any]] = {}
    for row, (w_datagrad, w_spectreg) in _TABLE1_WEIGHTS.items():
        options = {"model_options": {**AUTHORS, "head": _HEAD[row]}}
        cells[f"{row}/nogr"] = options
        cells[f"{row}/spectreg"] = {**options, "regularizer": "spectreg", "weight": w_spectreg}
        cells[f"{row}/datagrad"] = {**options, "regularizer": "datagrad", "weight": w_datagrad}
    return cells


register(Experiment(
    name="mnist-table1",
    title="MNIST, N = 2000: {Baseline, Batchnorm, Dropout} × {NoGR, SpectReg, DataGrad}",
    source="Varga et al., Table 1 (E1)",
    base=TrainConfig(model="lenettuned", n_train=2000, iterations=10000),
    cells=_table1_cells(),
    profiles={
        "smoke": Profile(1, {"iterations": 20, "n_train": 200, "n_test": 500, "eval_points": 200}),
        # 3 seeds × 2,000 iterations (50 passes over the 2,000 digits) ≈ 70 min in one single-threaded
        # process (lenettuned at one thread beside a second grid: ~37 ms plain, ~80 ms SpectReg or
        # DataGrad step, ~30 s evaluation)
        "cpu": Profile(3, {"iterations": 2000}),
        "paper": Profile(10, {"iterations": 10000}),
    },
))

# ---------------------------------------------------------------- E1 under the authors' protocol


@torch.no_grad()
def batch_stats_accuracy(model: nn.Module, data: Dataset, batch_size: int = 50) -> dict[str, Any]:
    """Test accuracy with BatchNorm normalising each test batch by its own statistics, as the
    authors' code evaluated (dropout stays off); batches of the training batch size. Models without
    BatchNorm get nothing: for them this equals the ordinary accuracy."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return {}
    model.eval()
    saved = [(m, m.track_running_stats) for m in norms]
    for m in norms:   # train mode without tracking: batch statistics, running statistics untouched
        m.train()
        m.track_running_stats = False
    try:
        correct = sum((model(data.x_test[i: i + batch_size]).argmax(1) == data.y_test[i: i + batch_size]).sum().item()
                      for i in range(0, len(data.x_test), batch_size))
    finally:
        for m, track in saved:
            m.track_running_stats = track
            m.eval()
    return {"test_accuracy_batch_stats": 100.0 * correct / len(data.x_test)}


# the same cells with PyTorch's default initialisation: the init ablation
_TORCH_INIT_CELLS = {f"{row}/nogr/torch-init": {"model_options": {"head": _HEAD[row], "init": "torch"}}
                     for row in ("baseline", "batchnorm")}

register(Experiment(
    name="mnist-table1-protocol",
    title="Table 1 under the authors' protocol: held-out training digits as the test set, BatchNorm with batch statistics",
    source="Varga et al., Table 1 (E1), evaluated as the authors' code did",
    base=TrainConfig(model="lenettuned", n_train=2000, iterations=10000, protocol="paper"),
    cells={**_table1_cells(), **_TORCH_INIT_CELLS},
    profiles={
        "smoke": Profile(1, {"iterations": 20, "n_train": 200, "n_test": 500, "eval_points": 200},
                         ("baseline/nogr", "batchnorm/nogr", "batchnorm/nogr/torch-init")),
        # the no-GR cells of the plain and BatchNorm rows, each with the authors' and PyTorch's
        # initialisation: does either the protocol or the init explain the BatchNorm row? 12 runs ≈ 17 min
        "cpu": Profile(3, {"iterations": 4000}, ("baseline/nogr", "batchnorm/nogr", *_TORCH_INIT_CELLS)),
        "paper": Profile(10, {"iterations": 10000}),
    },
    extra_metrics=batch_stats_accuracy,
))

# ---------------------------------------------------------------- E9/E10: sin(5x)

# From "no effect" to "flat". The paper does not record its values. DataGrad with the L2 loss,
# 4(f − y)² f′², switches between fitting and flat within [0.1, 1], so that decade is sampled finer.
SIN5X_WEIGHTS = {"spectreg": [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0],
                 "datagrad": [1e-4, 1e-3, 1e-2, 1e-1, 0.2, 0.5, 1.0, 10.0]}


def authors_weight(regularizer: str, weight: float, batch_size: int = 50) -> float:
    """The authors' toy-code weight that gives the same objective as our ``weight`` (up to a constant
    factor, to which Adam is blind). Their loss is ½·Σ_batch (f − y)², ours the batch mean of
    (f − y)²: dividing theirs by B/2 turns a penalty weight Λ into 2Λ/B, so SpectReg's Λ = (B/2)·λ.
    Their DataGrad differentiates the ½-scaled loss, (f − y)·f′ per point where ours is 2(f − y)·f′,
    a further factor 4: Λ = 2B·λ. With B = 50: ×25 and ×100."""
    factors = {"spectreg": batch_size / 2, "datagrad": 2 * batch_size}
    if regularizer not in factors:
        raise ValueError(f"no weight mapping for {regularizer!r}; known: {', '.join(factors)}")
    return factors[regularizer] * weight


def slope(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """|f′(x)| of a 1-D → 1-D network at each point: [N, 1] -> [N]."""
    x = x.detach().requires_grad_(True)
    (d,) = torch.autograd.grad(model(x).sum(), x)
    return d.abs().flatten()


def sin5x_metrics(model: nn.Module, data: Dataset) -> dict[str, Any]:
    """E10 for the toy: mean |f′| at the training points, on the dense test grid and at training
    points + N(0, 0.2²); the grid/train ratio; and the learned function on 101 grid points (figure)."""
    model.eval()
    gen = torch.Generator().manual_seed(0)
    noisy = data.x_train + 0.2 * torch.randn(data.x_train.shape, generator=gen).to(data.x_train)
    slopes = {name: slope(model, x).mean().item()
              for name, x in (("train", data.x_train), ("grid", data.x_test), ("noisy", noisy))}
    grid = torch.linspace(-1, 1, 101, device=data.x_train.device, dtype=data.x_train.dtype).unsqueeze(1)
    with torch.no_grad():
        curve = model(grid).flatten().tolist()
    return {**{f"slope_{k}": v for k, v in slopes.items()},
            "slope_ratio_grid_train": slopes["grid"] / slopes["train"], "curve": curve}


def _sin5x_cells() -> dict[str, dict[str, Any]]:
    cells: dict[str, dict[str, Any]] = {"none": {}}
    for reg, weights in SIN5X_WEIGHTS.items():
        cells.update({f"{reg}/{w:g}": {"regularizer": reg, "weight": w} for w in weights})
    return cells


register(Experiment(
    name="sin5x",
    title="sin(5x) from 100 noisy points: does gradient control at the data flatten the function everywhere?",
    source="Varga et al., Figure 1 right (E9, E10)",
    base=TrainConfig(dataset="sin5x", n_train=100, model="toy", model_options=AUTHORS, loss="squared_error", lr=0.01,
                     weight_decay=0.0, iterations=10000, batch_size=50, eval_points=None),
    cells=_sin5x_cells(),
    profiles={
        "smoke": Profile(1, {"iterations": 50}),
        "cpu": Profile(3, {"iterations": 5000}),   # ≈ 8 min in one process
        "paper": Profile(3),
    },
    extra_metrics=sin5x_metrics,
))

# ---------------------------------------------------------------- E2: the training-size sweep

SIZES = (500, 1000, 2000, 3000, 5000, 10000, 15000, 20000)
# Per-size weights from the authors' E2 grid. Confidence: their β multiplies a batch *sum* of
# negative entropies; our penalty is a per-example mean, so the same strength is β · batch (50).
# FrobReg and JacReg: their script ran JacReg with SpectReg's values (apparently a slip), and no
# per-size FrobReg values exist, so both use their E3 weights at every size (FrobReg 0.03, JacReg 1).
SIZE_WEIGHTS: dict[str, tuple[float, ...]] = {
    "datagrad": (50, 50, 50, 20, 20, 5, 2, 2),
    "spectreg": (0.03, 0.03, 0.03, 0.03, 0.003, 0.01, 0.01, 0.001),
    "confidence": tuple(50 * b for b in (0.01, 0.01, 0.01, 0.01, 0.1, 0.1, 0.01, 0.03)),
    "frobreg": (0.03,) * len(SIZES),
    "jacreg": (1.0,) * len(SIZES),
}
SIZE_METHODS = ("baseline", "confidence", "jacreg", "frobreg", "spectreg", "datagrad")


def _size_cells() -> dict[str, dict[str, Any]]:
    cells: dict[str, dict[str, Any]] = {}
    for i, n in enumerate(SIZES):
        for method in SIZE_METHODS:
            reg = {} if method == "baseline" else {"regularizer": method, "weight": float(SIZE_WEIGHTS[method][i])}
            cells[f"n{n}/{method}"] = {"n_train": n, **reg}
    return cells


_CHEAP_METHODS = ("baseline", "confidence", "spectreg", "datagrad")


def _cells_at(sizes: tuple[int, ...], methods: tuple[str, ...] = SIZE_METHODS) -> tuple[str, ...]:
    return tuple(f"n{n}/{m}" for n in sizes for m in methods)


register(Experiment(
    name="mnist-sizes",
    title="MNIST training-set size sweep: accuracy against N for six regularizers",
    source="Varga et al., Figure 1 left (E2)",
    base=TrainConfig(model="lenet", model_options={**AUTHORS, "head": "dropout"}, iterations=10000),
    cells=_size_cells(),
    profiles={
        "smoke": Profile(1, {"iterations": 10, "n_test": 500, "eval_points": 200}, _cells_at((500, 1000))),
        # 4 of the 8 sizes × 3 seeds × 3,000 iterations, without FrobReg and JacReg (each costs
        # ~12 plain steps; the family experiment has them at N = 2000) ≈ 40 min in one process
        "cpu": Profile(3, {"iterations": 3000}, _cells_at((500, 2000, 5000, 20000), _CHEAP_METHODS)),
        "paper": Profile(10, {"iterations": 10000}),
    },
))

# ---------------------------------------------------------------- E3: the regularizer family

FAMILY_WEIGHTS = {"datagrad": 50.0, "onehot": 0.3, "random_onehot": 0.3, "spectreg": 0.03,
                  "jacreg": 1.0, "frobreg": 0.03}

register(Experiment(
    name="mnist-family",
    title="MNIST, N = 2000: the family of Jacobian projections side by side",
    source="Varga et al., authors' code (E3; not in the extended abstract)",
    base=TrainConfig(model="lenet", model_options={**AUTHORS, "head": "dropout"}, n_train=2000, iterations=10000),
    cells={"nogr": {}, **{reg: {"regularizer": reg, "weight": w} for reg, w in FAMILY_WEIGHTS.items()}},
    profiles={
        "smoke": Profile(1, {"iterations": 10, "n_train": 200, "n_test": 500, "eval_points": 200}),
        # 7 cells × 3 seeds × 3,000 iterations ≈ 27 min in one process
        "cpu": Profile(3, {"iterations": 3000}),
        "paper": Profile(10, {"iterations": 10000}),
    },
))

# ---------------------------------------------------------------- E5: weight decay × DataGrad

WD_GRID = (0.0, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1)
DATAGRAD_GRID = (0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0)
DATAGRAD_CPU = (0.0, 0.1, 1.0, 10.0, 100.0, 1000.0)   # the cpu profile's subsets
WD_CPU = (0.0, 5e-4, 5e-3, 0.01, 0.05, 0.1)


def wd_cell(wd: float, d: float) -> str:
    """The name of the weight-decay × DataGrad cell, e.g. "wd0.0005/dg10"."""
    return f"wd{wd:g}/dg{d:g}"


register(Experiment(
    name="mnist-wd-grid",
    title="MNIST, N = 2000: weight decay × DataGrad weight",
    source="Varga et al., authors' code (E5); the paper's remark on weight decay and gradient regularization",
    base=TrainConfig(model="lenet", model_options={**AUTHORS, "head": "dropout"}, n_train=2000,
                     regularizer="datagrad", iterations=10000),
    cells={wd_cell(wd, d): {"weight_decay": wd, "weight": d} for wd in WD_GRID for d in DATAGRAD_GRID},
    profiles={
        "smoke": Profile(1, {"iterations": 10, "n_train": 200, "n_test": 500, "eval_points": 200},
                         ("wd0/dg0", "wd0/dg10", "wd0.1/dg0", "wd0.1/dg10")),
        # 6 of the 8 weight decays × 6 of the 9 DataGrad weights × 3 seeds × 400 iterations (10
        # epochs of 2,000 images) ≈ 20 min in one process
        "cpu": Profile(3, {"iterations": 400}, tuple(wd_cell(wd, d) for wd in WD_CPU for d in DATAGRAD_CPU)),
        "paper": Profile(10, {"iterations": 10000}),
    },
))

# ---------------------------------------------------------------- E6/E7: CIFAR-10 with a residual network

# The authors' cifarResnet: 3 stages of N = 3 residual blocks, width multiplier ("WIDENESS") 3,
# BatchNorm, Nesterov SGD (momentum 0.9) with the piecewise schedule, batch 128 (paper1/grid_cifar10_*.sh).
CIFAR_NET = {**AUTHORS, "width": 3, "blocks": 3}
# The cpu profiles' net: one block per stage at width 1 (ResNet-8, 16/32/64 channels). On 2 cores a
# batch-128 step of it costs ~0.17 s plain and ~0.6 s with DataGrad or SpectReg at one thread,
# against ~1.2 s and ~3.7 s for the paper's net at two threads.
CIFAR_NET_CPU = {**AUTHORS, "width": 1, "blocks": 1}
# What the cpu profiles' runs store about the Jacobian and input gradient (points per kind): each
# point costs K = 10 backward passes, so fewer than MNIST's 1,000.
CIFAR_EVAL_CPU = 500

# E6 weights from the authors' grid script (grid_cifar10_ent_dg_spect.sh). Confidence: their β
# multiplies a batch *sum* of negative entropies; ours is a per-example mean, so β · 128.
CIFAR_SMALL_WEIGHTS = {"datagrad": 1.0, "spectreg": 0.003, "confidence": 0.003 * 128}

_CIFAR_SMOKE = {"iterations": 4, "n_train": 256, "n_test": 200, "eval_points": 16, "curve_every": 2,
                "model_options": CIFAR_NET_CPU}

register(Experiment(
    name="cifar10-small",
    title="CIFAR-10, N = 2000, no augmentation: a residual network with and without gradient regularization",
    source="Varga et al., authors' code (E6; the paper prints no numbers for it)",
    base=TrainConfig(dataset="cifar10", n_train=2000, model="cifar_resnet", model_options=CIFAR_NET,
                     optimizer="nesterov", lr=0.01, momentum=0.9, weight_decay=0.003, batch_size=128,
                     iterations=50000, eval_points=1000, curve_every=2500),
    cells={"baseline": {}, **{reg: {"regularizer": reg, "weight": w} for reg, w in CIFAR_SMALL_WEIGHTS.items()}},
    profiles={
        "smoke": Profile(1, _CIFAR_SMOKE),
        # 2,000 of the offline subset's 5,085 training images (the same N as the paper), its 1,017
        # test images; 4 arms × 3 seeds × 800 iterations (51 passes) on ResNet-8 ≈ 75 min in one process
        "cpu": Profile(3, {"iterations": 800, "curve_every": 50, "eval_points": CIFAR_EVAL_CPU,
                           "model_options": CIFAR_NET_CPU}),
        "paper": Profile(10),
    },
))

# E7: all training images, 4-pixel shifts and mirror images, lr 0.1, weight decay 1e-4, 200k iterations.
# The paper gives the accuracies, not the weights; the authors' scripts swept both regularizers over
# CIFAR_FULL_GRID (grid_cifar10_full_{dg,spectreg}.sh). We choose each weight on a validation split
# carved from the training images (protocol "validation": data_batch_5 held out), never on the test set.
CIFAR_FULL_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1)
CIFAR_FULL_GRID_CPU = (1e-3, 0.01, 0.1)
CIFAR_FULL_REGS = ("spectreg", "datagrad")
_CIFAR_FULL_BASE = TrainConfig(dataset="cifar10", n_train=None, augment="shift_flip", model="cifar_resnet",
                               model_options=CIFAR_NET, optimizer="nesterov", lr=0.1, momentum=0.9,
                               weight_decay=1e-4, batch_size=128, iterations=200000, eval_points=1000,
                               curve_every=10000)
# cpu: the whole offline subset; 600 iterations ≈ 15 passes over its 5,085 images
_CIFAR_FULL_CPU = {"iterations": 600, "curve_every": 50, "eval_points": CIFAR_EVAL_CPU, "model_options": CIFAR_NET_CPU}


def val_cell(reg: str, weight: float) -> str:
    """The name of a validation-sweep cell, e.g. "datagrad/0.01"."""
    return f"{reg}/{weight:g}"


register(Experiment(
    name="cifar10-full-val",
    title="CIFAR-10 with augmentation: choosing the SpectReg and DataGrad weights on a validation split",
    source="Varga et al., authors' code (E7's weight sweeps), on held-out training images",
    base=_CIFAR_FULL_BASE.replace(protocol="validation"),
    cells={"baseline": {}, **{val_cell(reg, w): {"regularizer": reg, "weight": w}
                              for reg in CIFAR_FULL_REGS for w in CIFAR_FULL_GRID}},
    profiles={
        "smoke": Profile(1, _CIFAR_SMOKE, ("baseline", "spectreg/0.01", "datagrad/0.01", "datagrad/0.1")),
        # one seed per weight: 7 runs ≈ 45 min in one process (the choice is noisy; the chapter says how much)
        "cpu": Profile(1, _CIFAR_FULL_CPU,
                       ("baseline", *(val_cell(r, w) for r in CIFAR_FULL_REGS for w in CIFAR_FULL_GRID_CPU))),
        "paper": Profile(3),
    },
))


def chosen_weights(profile: str, results_dir: str | None = None) -> dict[str, float]:
    """The weight of each regularizer with the best mean validation accuracy in the stored
    ``cifar10-full-val`` runs of ``profile`` (a diverged run counts as chance, 10 %; ties go to the
    smaller weight). A GradregError if any run of that sweep is missing: the choice needs all of them."""
    from . import experiments          # the registry module imports this one
    absent = experiments.missing("cifar10-full-val", profile, results_dir)
    if absent:
        raise ResultsMissing(f"cifar10-full at profile {profile!r} uses the weights chosen on the validation sweep, "
                           f"which lacks {len(absent)} run(s): run `gradreg run cifar10-full-val --profile {profile}` first")
    records = experiments.load("cifar10-full-val", profile, results_dir=results_dir)
    scores: dict[tuple[str, float], list[float]] = {}
    for r in records:
        if r["config"]["regularizer"] in CIFAR_FULL_REGS:
            ok = r["status"] == "ok"
            scores.setdefault((r["config"]["regularizer"], r["config"]["weight"]), []).append(
                r["metrics"]["test_accuracy"] if ok else 10.0)
    best: dict[str, float] = {}
    for reg in CIFAR_FULL_REGS:
        means = {w: sum(v) / len(v) for (g, w), v in scores.items() if g == reg}
        best[reg] = min(means, key=lambda w: (-means[w], w))
    return best


def _full_weights(profile: str, results_dir: str | None) -> dict[str, dict[str, Any]]:
    """cifar10-full's derived overrides: each regularized cell's weight chosen on validation."""
    return {reg: {"weight": w} for reg, w in chosen_weights(profile, results_dir).items()}


register(Experiment(
    name="cifar10-full",
    title="CIFAR-10 with augmentation: baseline, SpectReg and DataGrad at the weights chosen on validation",
    source="Varga et al., §3 (E7): 93.71 % / 93.74 % / 94.14 %",
    base=_CIFAR_FULL_BASE,
    cells={"baseline": {}, **{reg: {"regularizer": reg} for reg in CIFAR_FULL_REGS}},
    profiles={
        "smoke": Profile(1, _CIFAR_SMOKE),
        # 3 arms × 3 seeds × 600 iterations ≈ 50 min in one process
        "cpu": Profile(3, _CIFAR_FULL_CPU),
        "paper": Profile(10),
    },
    derived=_full_weights,
))

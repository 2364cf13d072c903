"""The experiments of Karakida, Takase, Hayase & Osawa, "Understanding Gradient Regularization in Deep
Learning: Efficient Finite-Difference Computation and Implicit Bias" (ICML 2023; arXiv 2210.02720).

No code of theirs is public; the settings are those quoted in ``shared/reference/experiments.md``.
The training steps (GD, DB-GR, F-GR, B-GR, SAM, flooding) are ``gradreg.steps`` entries, so every
experiment here is a grid of ``TrainConfig`` cells run by the one training loop.

- ``diagonal-linear``: the solvable model, β = u⊙u − v⊙v on sparse linear regression. Besides the
  usual metrics each run stores β, its ℓ1 norm, its distance to β*, support recovery and two
  readings of the effective initialisation scale (see ``diagonal_metrics``).
- ``karakida-cifar``: GD, DB-GR, F-GR, B-GR, SAM and flooding on an MLP of width 512 and a small
  ResNet (CIFAR-10; the offline subset on a CPU).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import data as datasets
from .config import TrainConfig
from .data import Dataset
from .errors import GradregError
from .experiments import Experiment, Profile, register

# ---------------------------------------------------------------- the diagonal linear network


def q_alpha_solution(x: Tensor, y: Tensor, alpha: Tensor | float, iterations: int = 200) -> Tensor:
    """argmin Q_α(β) subject to Xβ = y, the interpolator that gradient flow from u = v = α reaches
    (Woodworth et al. 2020), for a scalar α or one α_i per coordinate:

        Q_α(β) = Σ_i α_i² q(β_i / α_i²),   q(z) = 2 − √(4 + z²) + z·arcsinh(z/2).

    Its optimality condition ∇Q_α(β) = arcsinh(β_i / (2α_i²)) = (Xᵀν)_i gives β = 2α² ⊙ sinh(Xᵀν);
    ν minimises the smooth convex dual Σ_i 2α_i² cosh((Xᵀν)_i) − ⟨ν, y⟩, solved here by damped
    Newton steps in float64. Small α: close to the minimum-ℓ1 interpolator; large α: minimum ℓ2.
    """
    x, y = x.double(), y.double().flatten()
    a2 = torch.as_tensor(alpha, dtype=torch.float64).expand(x.shape[1]) ** 2
    nu = torch.zeros(x.shape[0], dtype=torch.float64)

    def dual(nu: Tensor) -> Tensor:
        return (2 * a2 * torch.cosh(x.T @ nu)).sum() - nu @ y

    for _ in range(iterations):
        z = x.T @ nu
        grad = x @ (2 * a2 * torch.sinh(z)) - y
        if grad.abs().max() < 1e-10 * (1 + y.abs().max()):
            break
        hess = (x * (2 * a2 * torch.cosh(z))) @ x.T
        direction = torch.linalg.solve(hess + 1e-12 * torch.eye(len(nu), dtype=hess.dtype), grad)
        t, f0 = 1.0, dual(nu)
        while dual(nu - t * direction) > f0 - 0.25 * t * (grad @ direction) and t > 1e-10:
            t /= 2
        nu = nu - t * direction
    beta = 2 * a2 * torch.sinh(x.T @ nu)
    if not torch.isfinite(beta).all():
        raise GradregError("the Q_alpha interpolator overflowed float64: alpha is too small (use alpha >= 1e-6)")
    return beta


def fit_alpha(beta: Tensor, x: Tensor, y: Tensor, low: float = 1e-4, high: float = 1e2) -> float:
    """The scalar α whose Q_α interpolator is closest (in ℓ2) to ``beta``: a log-spaced scan, then a
    golden-section refinement of log α around the best point."""
    beta = beta.double()

    def distance(log_a: float) -> float:
        return (q_alpha_solution(x, y, math.exp(log_a)) - beta).norm().item()

    grid = torch.linspace(math.log(low), math.log(high), 25).tolist()
    best = min(range(len(grid)), key=lambda i: distance(grid[i]))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = distance(c), distance(d)
    for _ in range(30):                     # each step keeps one interior point and its distance
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = distance(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = distance(d)
    return math.exp((a + b) / 2)


def min_l1_interpolator(x: Tensor, y: Tensor) -> Tensor:
    """argmin ‖β‖₁ subject to Xβ = y (basis pursuit), the α → 0 limit of ``q_alpha_solution``, as a
    linear program: β = p − q with p, q ≥ 0, minimise Σ(p + q) (scipy's HiGHS)."""
    from scipy.optimize import linprog   # scipy is a dependency through gradreg.stats
    x64, y64 = x.double().cpu().numpy(), y.double().flatten().cpu().numpy()
    d = x64.shape[1]
    res = linprog(np.ones(2 * d), A_eq=np.hstack([x64, -x64]), b_eq=y64, bounds=(0, None), method="highs")
    if not res.success:
        raise GradregError(f"basis pursuit failed: {res.message}")
    return torch.from_numpy(res.x[:d] - res.x[d:])


def reference_errors(seeds: range | list[int], n_train: int = 40) -> dict[str, list[float]]:
    """‖β − β*‖ of the two limits of the diagonal network on the data of each seed: the minimum-ℓ1
    interpolator (rich regime, α → 0) and the minimum-ℓ2 one (kernel regime, α → ∞)."""
    out: dict[str, list[float]] = {"min-l1": [], "min-l2": []}
    for seed in seeds:
        d, star = datasets.sparse_linear(n_train, seed), datasets.sparse_beta(seed)
        x, y = d.x_train.double(), d.y_train.double().flatten()
        out["min-l1"].append((min_l1_interpolator(x, y) - star).norm().item())
        out["min-l2"].append((torch.linalg.pinv(x) @ y - star).norm().item())
    return out


def gr_direction(u: Tensor, v: Tensor, x: Tensor, y: Tensor, gamma: float, eps: float | None = None,
                 method: str = "db") -> tuple[Tensor, Tensor]:
    """The GR update direction (∂/∂u, ∂/∂v) of the diagonal network in closed form, for
    L(β) = mean_j (⟨x_j, β⟩ − y_j)², ρ = ∇_β L = (2/n) Xᵀ(Xβ − y):

        db:        2u ⊙ (ρ + κ + 2γρ⊙ρ),            −2v ⊙ (ρ + κ − 2γρ⊙ρ),   κ = (8γ/n) XᵀX ((u⊙u + v⊙v) ⊙ ρ)
        forward:   2u ⊙ (ρ + γ(ρ⁺ − ρ)/ε + 2γρ⊙ρ⁺),  −2v ⊙ (ρ + γ(ρ⁺ − ρ)/ε − 2γρ⊙ρ⁺)
        backward:  2u ⊙ (ρ + γ(ρ − ρ⁻)/ε + 2γρ⊙ρ⁻),  −2v ⊙ (ρ + γ(ρ − ρ⁻)/ε − 2γρ⊙ρ⁻)

    with ρ^± = ∇_β L at the ascent / descent point θ ± εg. The symmetric terms ±2γρ⊙ρ^(±) are the
    only ones that change u_i v_i: the chapter derives them, and checks these formulas against
    ``paramgr.gr_gradient`` on the network itself."""
    n = x.shape[0]

    def rho(uu: Tensor, vv: Tensor) -> Tensor:
        return 2 / n * x.T @ (x @ (uu * uu - vv * vv) - y.flatten())

    r = rho(u, v)
    if method == "db":
        kappa = 8 * gamma / n * x.T @ (x @ ((u * u + v * v) * r))
        return 2 * u * (r + kappa + 2 * gamma * r * r), -2 * v * (r + kappa - 2 * gamma * r * r)
    sign = 1.0 if method == "forward" else -1.0
    other = rho(u * (1 + sign * 2 * eps * r), v * (1 - sign * 2 * eps * r))       # θ ± εg, g = (2uρ, −2vρ)
    shift = gamma * (other - r) / eps * sign
    return 2 * u * (r + shift + 2 * gamma * r * other), -2 * v * (r + shift - 2 * gamma * r * other)


def diagonal_cell(alpha: float, kind: str, gamma: float | None = None, eps: float | None = None) -> str:
    """The cell name of ``diagonal-linear`` for an initial scale and a step (kind gd, db, f, b)."""
    return f"a{alpha:g}/{_tag(kind, gamma, eps)}"


def diagonal_claims(alpha: float, gamma: float, eps: float, metric: str = "alpha_fit") -> list[tuple[str, str, str]]:
    """(text, cell a, cell b) for the abstract's two claims at one (α, γ, ε), each saying that a's
    ``metric`` exceeds b's (a scale: smaller is richer). "GR biases toward the rich regime": DB-GR's
    scale below GD's; "F-GR strengthens it": F-GR's below B-GR's and below DB-GR's. With
    ``metric="alpha_fit"`` the claims are about the fitted single scale, with
    ``"alpha_coord_gmean"`` about the per-coordinate scales √(u_i v_i) (their geometric mean)."""
    name = {"alpha_fit": "α_fit", "alpha_coord_gmean": "gmean √(u_i v_i)"}.get(metric, metric)
    gd, db = diagonal_cell(alpha, "gd"), diagonal_cell(alpha, "db", gamma)
    f, b = diagonal_cell(alpha, "f", gamma, eps), diagonal_cell(alpha, "b", gamma, eps)
    return [(f"α = {alpha:g}: DB-GR (γ = {gamma:g}) has a smaller {name} than GD", gd, db),
            (f"α = {alpha:g}: F-GR (γ = {gamma:g}, ε = {eps:g}) has a smaller {name} than B-GR", b, f),
            (f"α = {alpha:g}: F-GR (γ = {gamma:g}, ε = {eps:g}) has a smaller {name} than DB-GR", db, f)]


def true_beta(data: Dataset) -> Tensor:
    """β* recovered from the noise-free test targets (least squares over 1,000 points in 100 dims)."""
    return torch.linalg.lstsq(data.x_test.double(), data.y_test.double()).solution.flatten()


def diagonal_metrics(model: nn.Module, data: Dataset) -> dict[str, Any]:
    """What the implicit-bias chapter plots, for a trained ``DiagonalLinear``:

    - ``beta``: the learned β; ``l1``: ‖β‖₁; ``error``: ‖β − β*‖₂; ``off_support``: ‖β‖₁ off supp(β*);
    - ``support_recovered``: 1.0 if the k largest |β_i| sit exactly on supp(β*), else 0.0;
    - ``alpha_coord_*``: √(u_i v_i), the per-coordinate effective scale. Under gradient flow from
      u = v = α, u_i v_i = α² exp(−c_i) where c_i grows only through GR's symmetric term (and, for a
      finite step, the step itself), so its geometric mean, min and max say how far training moved
      each coordinate's scale (derivation in the chapter);
    - ``alpha_fit``: the scalar α whose Q_α interpolator best matches β (``fit_alpha``);
    - ``q_coord_gap``: ‖β − β_Q(α_coord)‖ / ‖β‖, how well the per-coordinate scales explain β.
    """
    if not hasattr(model, "u"):
        raise GradregError("diagonal_metrics needs a DiagonalLinear model")
    u, v = model.u.detach().double().cpu(), model.v.detach().double().cpu()
    beta = u * u - v * v
    star = true_beta(data).cpu()
    x, y = data.x_train.double().cpu(), data.y_train.double().cpu()
    support = star.abs() > 1e-3                       # β* is 0 or 1 per coordinate
    k = int(support.sum())
    alpha_coord = (u * v).clamp_min(1e-300).sqrt()
    top = torch.zeros_like(support)
    top[beta.abs().topk(k).indices] = True
    q_coord = q_alpha_solution(x, y, alpha_coord)
    return {"beta": beta.tolist(), "l1": beta.abs().sum().item(), "error": (beta - star).norm().item(),
            "off_support": beta[~support].abs().sum().item(), "support_recovered": float(bool((top == support).all())),
            "alpha_coord_gmean": alpha_coord.log().mean().exp().item(), "alpha_coord_min": alpha_coord.min().item(),
            "alpha_coord_max": alpha_coord.max().item(), "alpha_fit": fit_alpha(beta, x, y),
            "q_coord_gap": ((beta - q_coord).norm() / beta.norm().clamp_min(1e-300)).item()}


def _step(kind: str, gamma: float | None = None, eps: float | None = None, **other: float) -> dict[str, Any]:
    """Overrides of one training-step choice: kind in gd, db, f (F-GR), b (B-GR), sam, flooding."""
    name = {"gd": "plain", "db": "gr-db", "f": "gr-forward", "b": "gr-backward"}.get(kind, kind)
    options = {k: v for k, v in (("gamma", gamma), ("eps", eps), *other.items()) if v is not None}
    return {"step": name, "step_options": options}


def _tag(kind: str, gamma: float | None = None, eps: float | None = None, **other: float) -> str:
    """A cell's step name, e.g. "f-g0.01-e0.05"."""
    named = [("g", gamma), ("e", eps)] + [(k[0], v) for k, v in other.items()]
    return "-".join([kind] + [f"{letter}{value:g}" for letter, value in named if value is not None])


def _arms(gammas: tuple[float, ...], epsilons: tuple[float, ...]) -> list[dict[str, Any]]:
    """GD, DB-GR at each γ, and F-GR and B-GR at each (γ, ε): the comparison of the paper."""
    arms: list[dict[str, Any]] = [{"kind": "gd"}]
    arms += [{"kind": "db", "gamma": g} for g in gammas]
    arms += [{"kind": k, "gamma": g, "eps": e} for k in ("f", "b") for g in gammas for e in epsilons]
    return arms


def _cells(group: str, arms: list[dict[str, Any]], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{group}/{_tag(**arm)}": {**options, **_step(**arm)} for arm in arms}


# ---------------------------------------------------------------- implicit bias: the diagonal linear network

DIAGONAL_ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0)
DIAGONAL_GAMMAS = (0.01, 0.05)
DIAGONAL_EPSILONS = (0.03, 0.1)


def _diagonal_cells() -> dict[str, dict[str, Any]]:
    cells: dict[str, dict[str, Any]] = {}
    for alpha in DIAGONAL_ALPHAS:
        cells.update(_cells(f"a{alpha:g}", _arms(DIAGONAL_GAMMAS, DIAGONAL_EPSILONS),
                            {"model_options": {"alpha": alpha}}))
    return cells


register(Experiment(
    name="diagonal-linear",
    title="Implicit bias of GR in a diagonal linear network: sparse regression from initial scales α",
    source="Karakida et al., the diagonal-linear-network analysis (solvable model)",
    # n = 40 < d = 100, k = 5 (gradreg.data.sparse_linear); full-batch gradient descent, constant
    # step 0.01, from u = v = α; 20,000 steps reach a training loss below 1e-5 for every α here
    base=TrainConfig(dataset="sparse_linear", n_train=40, n_test=1000, model="diagonal_linear", loss="squared_error",
                     optimizer="sgd", lr=0.01, schedule="constant", weight_decay=0.0, iterations=20000,
                     batch_size=40, eval_points=None, log_every=1000),
    cells=_diagonal_cells(),
    profiles={
        "smoke": Profile(1, {"iterations": 200}, ("a0.1/gd", "a0.1/db-g0.05", "a0.1/f-g0.05-e0.1", "a0.1/b-g0.05-e0.1")),
        # the model is tiny: the cpu profile is the full experiment (10 seeds, seeds batched per cell)
        "cpu": Profile(10),
        "paper": Profile(10),
    },
    extra_metrics=diagonal_metrics,
))

# ---------------------------------------------------------------- generalization on CIFAR-10

MLP = {"model": "mlp", "model_options": {"in_features": 3072, "hidden": 512, "depth": 3}}
CIFAR_BASE = TrainConfig(dataset="cifar10", n_train=None, augment="shift_flip", optimizer="momentum", lr=0.1,
                         momentum=0.9, schedule="cosine", weight_decay=1e-4, batch_size=128, iterations=78125, **MLP)
RESNET8 = {"model": "cifar_resnet", "model_options": {"width": 1, "blocks": 1}}
WRN = {"model": "wide_resnet", "model_options": {"depth": 28, "widen": 10}}
PAPER_GAMMAS = (1e-4, 1e-3, 1e-2, 1e-1)               # the quoted WRN-28-10 grid
PAPER_EPSILONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
CPU_GAMMAS, CPU_EPSILONS = (0.01, 0.1), (0.01, 0.05, 0.2)
EXTRA = [{"kind": "sam", "rho": 0.05}, {"kind": "sam", "rho": 0.2}]


def _cifar_cells() -> dict[str, dict[str, Any]]:
    cells = _cells("mlp", _arms(CPU_GAMMAS, CPU_EPSILONS) + EXTRA, MLP)
    cells.update(_cells("resnet", _arms((0.01,), (0.05,)) + EXTRA[:1], RESNET8))   # ε = 0.05, the paper's best
    cells.update(_cells("wrn", _arms(PAPER_GAMMAS, PAPER_EPSILONS) + EXTRA, WRN))
    return cells


_CIFAR_CELLS = _cifar_cells()
_GROUP = {g: tuple(c for c in _CIFAR_CELLS if c.startswith(g + "/")) for g in ("mlp", "resnet", "wrn")}

register(Experiment(
    name="karakida-cifar",
    title="GD, DB-GR, F-GR, B-GR and SAM on CIFAR-10: an MLP of width 512 and residual networks",
    source="Karakida et al., the CIFAR-10 experiments (MLP and ResNet; WRN-28-10 grid)",
    base=CIFAR_BASE,
    cells=_CIFAR_CELLS,
    profiles={
        "smoke": Profile(1, {"n_train": 256, "n_test": 200, "eval_points": 100, "iterations": 4},
                         ("mlp/gd", "mlp/db-g0.01", "mlp/f-g0.01-e0.05", "mlp/b-g0.01-e0.05", "mlp/sam-r0.05",
                          "resnet/gd", "resnet/f-g0.01-e0.05"),
                         groups={"mlp": {"model_options": {"in_features": 3072, "hidden": 32, "depth": 1}}}),
        # the offline subset (5,085 / 1,017 images), 3 seeds: the MLP over the γ × ε grid for 1,500
        # steps (≈ 38 passes), ResNet-8 at width 1 for 400 steps at one (γ, ε); ≈ 1 h on two
        # single-threaded processes
        "cpu": Profile(3, {"eval_points": 500}, _GROUP["mlp"] + _GROUP["resnet"],
                       groups={"mlp": {"iterations": 1500}, "resnet": {"iterations": 400}}),
        # the full set, 5 seeds; WRN-28-10 for 200 epochs (the number of epochs is not quoted); the MLP
        # and ResNet-8 cells run there too, for 200 epochs
        "paper": Profile(5, {"iterations": 78125}),
    },
))


# ---------------------------------------------------------------- flooding as implicit F-GR

FLOOD_BASE = TrainConfig(dataset="cifar10", n_train=2000, optimizer="sgd", lr=0.05, schedule="constant",
                         weight_decay=0.0, batch_size=128, iterations=3000, **MLP)

register(Experiment(
    name="karakida-flooding",
    title="Flooding against F-GR: an MLP on 2,000 CIFAR-10 images, plain SGD at a constant step η",
    source="Karakida et al., flooding performs finite-difference GR implicitly",
    base=FLOOD_BASE,
    # near the flood level an ascent step and the next descent step together move θ by
    # −η(∇L(θ + ηg) − g) ≈ −η² H g: F-GR's penalty term with γ = ε = η (derivation in the chapter)
    cells={"gd": {}, "flooding-b0.05": {"step": "flooding", "step_options": {"b": 0.05}},
           "flooding-b0.2": {"step": "flooding", "step_options": {"b": 0.2}},
           "f-g0.05-e0.05": {"step": "gr-forward", "step_options": {"gamma": 0.05, "eps": 0.05}}},
    profiles={
        "smoke": Profile(1, {"n_train": 256, "n_test": 200, "eval_points": 100, "iterations": 6, "curve_every": 3,
                             "model_options": {"in_features": 3072, "hidden": 32, "depth": 1}}),
        "cpu": Profile(3, {"eval_points": 500, "curve_every": 250}),
        "paper": Profile(5, {"n_train": None, "iterations": 20000, "curve_every": 1000}),
    },
))

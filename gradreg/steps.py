"""Training-step choices: how one step of the training loop turns the minibatch objective L(θ) into
the gradient the optimizer applies. A registry, like the regularizers: ``TrainConfig.step`` names
an entry and ``TrainConfig.step_options`` holds its options.

    plain        ∇L                                                     (one gradient evaluation)
    gr-db        ∇L̃ = g + γ H g, H g by double backpropagation          (Karakida et al.; exact)
    gr-forward   g + γ (∇L(θ + εg) − g)/ε      F-GR, an ascent step      (two gradient evaluations)
    gr-backward  g + γ (g − ∇L(θ − εg))/ε      B-GR, a descent step      (two)
    gr-central   g + γ (∇L(θ + εg) − ∇L(θ − εg))/(2ε)                    (three)
    sam          ∇L(θ + ρ g/‖g‖)               SAM (Foret et al.)         (two)
    flooding     ∇(|L − b| + b)                flooding (Ishida et al.)   (one)

with L̃ = L + (γ/2)‖∇L‖² (``gradreg.paramgr``). L is the whole minibatch objective: the task loss
plus any input-gradient penalty of Part I, so a parameter-space step composes with DataGrad or
SpectReg. Every evaluation of L inside one step sees the same minibatch and the same random draws
(dropout masks, SpectReg's r): a finite difference of two different random objectives would not
estimate H g.

``separable``: a stack of S seeds (``gradreg.seeds``) minimises Σ_s L_s over stacked parameters.
Its gradient, Hessian-vector product and GR step split into the members' own (H is block-diagonal),
so the gr-* steps batch seeds exactly; SAM's ‖g‖ and flooding's |Σ_s L_s − b| would mix members,
so those steps train one seed at a time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from . import paramgr
from .errors import GradregError

LossFn = Callable[[], Tensor]
Gradient = Callable[..., list[Tensor]]     # (loss_fn, params, model, **options) -> one tensor per parameter


@dataclass(frozen=True)
class Step:
    """A registry entry: the gradient rule, its options (name -> (lowest value, strictly above?))
    and whether seeds can be batched under it."""

    name: str
    gradient: Gradient
    options: dict[str, tuple[float, bool]]
    separable: bool
    evaluations: int                       # cost per step in gradient evaluations (DB: ≈ 3, by the flop count of the cost chapter)
    summary: str


def _plain(loss_fn: LossFn, params: list[Tensor], model: nn.Module) -> list[Tensor]:
    return list(torch.autograd.grad(loss_fn(), params, allow_unused=True))   # None: unused, not updated


def _gr(method: str) -> Gradient:
    def gradient(loss_fn: LossFn, params: list[Tensor], model: nn.Module, gamma: float,
                 eps: float | None = None) -> list[Tensor]:
        return paramgr.gr_gradient(loss_fn, params, gamma=gamma, method=method, eps=eps, model=model)
    return gradient


def _sam(loss_fn: LossFn, params: list[Tensor], model: nn.Module, rho: float) -> list[Tensor]:
    return paramgr.sam_gradient(loss_fn, params, rho=rho, model=model)


def _flooding(loss_fn: LossFn, params: list[Tensor], model: nn.Module, b: float) -> list[Tensor]:
    return list(torch.autograd.grad(paramgr.flooded(loss_fn(), b), params))


_NONNEG, _POSITIVE = (0.0, False), (0.0, True)
STEPS: dict[str, Step] = {s.name: s for s in (
    Step("plain", _plain, {}, True, 1, "∇L"),
    Step("gr-db", _gr("db"), {"gamma": _NONNEG}, True, 3, "g + γHg, Hg by double backpropagation"),
    Step("gr-forward", _gr("forward"), {"gamma": _NONNEG, "eps": _POSITIVE}, True, 2,
         "F-GR: g + γ(∇L(θ+εg) − g)/ε"),
    Step("gr-backward", _gr("backward"), {"gamma": _NONNEG, "eps": _POSITIVE}, True, 2,
         "B-GR: g + γ(g − ∇L(θ−εg))/ε"),
    Step("gr-central", _gr("central"), {"gamma": _NONNEG, "eps": _POSITIVE}, True, 3,
         "g + γ(∇L(θ+εg) − ∇L(θ−εg))/(2ε)"),
    Step("sam", _sam, {"rho": _POSITIVE}, False, 2, "SAM: ∇L(θ + ρg/‖g‖)"),
    Step("flooding", _flooding, {"b": _NONNEG}, False, 1, "∇(|L − b| + b)"),
)}


def names() -> list[str]:
    return list(STEPS)


def get(name: str) -> Step:
    """A step by name; an unknown one is a GradregError listing the known ones."""
    if not isinstance(name, str) or name not in STEPS:
        raise GradregError(f"unknown step {name!r}; known: {', '.join(STEPS)}")
    return STEPS[name]


def check_options(name: str, options: Any) -> None:
    """Every option the step needs, each a finite number in range, and no other: one GradregError."""
    entry = get(name)
    if not isinstance(options, dict):
        raise GradregError(f"step_options must be a dict, got {options!r}")
    unknown = set(options) - set(entry.options)
    if unknown:
        raise GradregError(f"unknown step_options {', '.join(sorted(map(str, unknown)))} for step {name!r}; "
                           f"known: {', '.join(entry.options) or 'none'}")
    for key, (low, strict) in entry.options.items():
        if key not in options:
            raise GradregError(f"step {name!r} needs step_options {key!r} ({', '.join(entry.options)})")
        value = options[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and (value > low if strict else value >= low)
        if not ok:
            raise GradregError(f"step_options {key!r} must be a finite number {'>' if strict else '>='} {low:g}, "
                               f"got {value!r}")


def replayed(objective: Callable[[], Tensor], generator: torch.Generator | None, device: torch.device) -> LossFn:
    """``objective`` as a closure that draws the same random numbers every time it is called.

    The first call runs as usual; each later call first rewinds the global RNG (CPU and, on CUDA,
    the device's) and ``generator`` to where the first call started, so dropout masks and random
    projections repeat. Afterwards the streams stand where one call would have left them.
    ``.first`` holds the (detached) value of the first call: the objective at θ.
    """
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    gen = generator.get_state() if generator is not None else None

    def loss_fn() -> Tensor:
        if loss_fn.first is not None:
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, device)
            if gen is not None:
                generator.set_state(gen)
        value = objective()
        if loss_fn.first is None:
            loss_fn.first = value.detach()
        return value

    loss_fn.first = None
    return loss_fn

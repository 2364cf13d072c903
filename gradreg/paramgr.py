"""Gradient regularization in parameter space (Karakida et al., ICML 2023): the gradient of

    L̃(θ) = L(θ) + (γ/2) ‖∇L(θ)‖²,      ∇L̃(θ) = g + γ H g,   g = ∇L(θ), H = ∇²L(θ),

with the Hessian-vector product H g computed four ways:

- ``"db"``: double backpropagation, exact (a backward pass through the backward pass);
- ``"forward"`` (F-GR): an ascent step, H g ≈ (∇L(θ + εg) − g) / ε, error O(ε);
- ``"backward"`` (B-GR): a descent step, H g ≈ (g − ∇L(θ − εg)) / ε, error O(ε);
- ``"central"``: H g ≈ (∇L(θ + εg) − ∇L(θ − εg)) / (2ε), error O(ε²).

With γ = ε, F-GR's estimate is g + (∇L(θ + εg) − g) = ∇L(θ + εg): the gradient at the ascent point,
i.e. SAM's update without the normalisation of g (``sam_gradient`` with ρ = ε‖g‖).
Every function leaves the parameters exactly as it found them (bit for bit). ``model``: the module
whose buffers (BatchNorm's running statistics) only the evaluation at θ may update; evaluations at
perturbed points would otherwise update them a second time.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from .errors import GradregError

METHODS = ("db", "forward", "backward", "central")
LossFn = Callable[[], Tensor]


def _grad(loss_fn: LossFn, params: list[Tensor], create_graph: bool = False) -> list[Tensor]:
    """∇L at the current parameter values; parameters that the loss does not use get zeros."""
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@contextlib.contextmanager
def _kept_buffers(model: nn.Module | None) -> Iterator[None]:
    """Restore ``model``'s buffers (running statistics, batch counters) on leaving the block."""
    saved = [b.detach().clone() for b in model.buffers()] if model is not None else []
    try:
        yield
    finally:
        if model is not None:
            with torch.no_grad():
                for b, s in zip(model.buffers(), saved):
                    b.copy_(s)


def _grad_at(loss_fn: LossFn, params: list[Tensor], step: list[Tensor], model: nn.Module | None) -> list[Tensor]:
    """∇L at θ + step; θ (bit for bit) and the model's buffers are restored afterwards."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, s in zip(params, step):
                p.add_(s)
        with _kept_buffers(model):
            return [g.detach() for g in _grad(loss_fn, params)]
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def _check(params: list[Tensor], gamma: float, method: str, eps: float | None) -> None:
    if not params or not all(isinstance(p, Tensor) and p.requires_grad for p in params):
        raise GradregError("params must be a non-empty list of tensors that require grad")
    if method not in METHODS:
        raise GradregError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
        raise GradregError(f"gamma must be a number >= 0, got {gamma!r}")
    if method != "db" and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0):
        raise GradregError(f"method {method!r} needs a step eps > 0, got {eps!r}")


def gr_gradient(loss_fn: LossFn, params: list[Tensor], *, gamma: float, method: str, eps: float | None = None,
                model: nn.Module | None = None) -> list[Tensor]:
    """The estimate of ∇L̃ = g + γ H g, one tensor per parameter (detached).

    ``loss_fn()`` evaluates the training loss at the current values of ``params`` (like an optimizer
    closure, on a fixed batch); ``method`` is one of ``METHODS``; ``eps`` the finite-difference step
    (not used by "db"). The parameters are left exactly as they were.
    """
    params = list(params)
    _check(params, gamma, method, eps)
    if method == "db":
        g = _grad(loss_fn, params, create_graph=True)
        live = [i for i, x in enumerate(g) if x.requires_grad]     # ∇L depends on θ (not for a linear L)
        hg = [torch.zeros_like(x) for x in g]
        if live:
            found = torch.autograd.grad([g[i] for i in live], params, grad_outputs=[g[i].detach() for i in live],
                                        allow_unused=True)
            hg = [h if h is not None else torch.zeros_like(p) for h, p in zip(found, params)]
        return [(x + gamma * h).detach() for x, h in zip(g, hg)]
    g = [x.detach() for x in _grad(loss_fn, params)]
    up = _grad_at(loss_fn, params, [eps * x for x in g], model) if method in ("forward", "central") else None
    down = _grad_at(loss_fn, params, [-eps * x for x in g], model) if method in ("backward", "central") else None
    if method == "forward":
        hg = [(u - x) / eps for u, x in zip(up, g)]
    elif method == "backward":
        hg = [(x - d) / eps for x, d in zip(g, down)]
    else:
        hg = [(u - d) / (2 * eps) for u, d in zip(up, down)]
    return [x + gamma * h for x, h in zip(g, hg)]


def sam_gradient(loss_fn: LossFn, params: list[Tensor], *, rho: float, model: nn.Module | None = None) -> list[Tensor]:
    """SAM's gradient ∇L(θ + ρ g/‖g‖) (Foret et al.), g = ∇L(θ); parameters left as they were."""
    params = list(params)
    _check(params, 0.0, "forward", rho)
    g = [x.detach() for x in _grad(loss_fn, params)]
    norm = torch.sqrt(sum((x * x).sum() for x in g))
    scale = rho / norm if norm > 0 else 0.0
    return _grad_at(loss_fn, params, [scale * x for x in g], model)


def flooded(loss: Tensor, b: float) -> Tensor:
    """Flooding (Ishida et al.): |L − b| + b. Above the flood level b it is L (descent); below it,
    2b − L, so a gradient step ascends."""
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not b >= 0:
        raise GradregError(f"flood level b must be a number >= 0, got {b!r}")
    return (loss - b).abs() + b

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

Checks of the above (used by the chapters "Checking the finite differences" and "Flooding as
implicit F-GR"): ``fd_errors`` measures each finite difference against the exact H g over a range of
ε and ``fitted_slope`` reads off its order; ``activation_switches`` counts the ReLU units a step of
size ε flips; ``flooding_pair`` takes two SGD steps on the flooded loss and sets their displacement
beside F-GR's penalty term −η(∇L(θ + ηg) − g) and the exact −η² H g (``flood_levels`` picks flood
levels that make the pair ascend then descend, or any other pattern).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from . import losses
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


@contextlib.contextmanager
def _moved(params: list[Tensor], direction: list[Tensor], scale: float, model: nn.Module | None) -> Iterator[None]:
    """Inside the block θ is θ + scale·direction (one in-place multi-tensor update); on leaving it,
    θ is restored bit for bit and the model's buffers with it."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            torch._foreach_add_(params, direction, alpha=scale)
        with _kept_buffers(model):
            yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, saved)


def _grad_at(loss_fn: LossFn, params: list[Tensor], direction: list[Tensor], scale: float,
             model: nn.Module | None) -> list[Tensor]:
    """∇L at θ + scale·direction; θ (bit for bit) and the model's buffers are restored afterwards.

    In-place multi-tensor (``torch._foreach_*``) updates: on a 2-million-parameter MLP the
    elementwise passes and fresh allocations of the naive version cost as much as a gradient."""
    with _moved(params, direction, scale, model):
        return [g.detach() for g in _grad(loss_fn, params)]


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
        g, hg = gradient_and_hvp(loss_fn, params)
        return _combine(hg, gamma, g)
    g = [x.detach() for x in _grad(loss_fn, params)]
    up = _grad_at(loss_fn, params, g, eps, model) if method in ("forward", "central") else None
    down = _grad_at(loss_fn, params, g, -eps, model) if method in ("backward", "central") else None
    if method == "forward":            # Hg ≈ (up − g)/ε
        torch._foreach_sub_(up, g)
        return _combine(up, gamma / eps, g)
    if method == "backward":           # Hg ≈ (g − down)/ε = −(down − g)/ε
        torch._foreach_sub_(down, g)
        return _combine(down, -gamma / eps, g)
    torch._foreach_sub_(up, down)      # Hg ≈ (up − down)/(2ε)
    return _combine(up, gamma / (2 * eps), g)


def _combine(h: list[Tensor], scale: float, g: list[Tensor]) -> list[Tensor]:
    """g + scale·h, written into h (fresh tensors the caller owns): two in-place passes."""
    torch._foreach_mul_(h, scale)
    torch._foreach_add_(h, g)
    return h


def sam_gradient(loss_fn: LossFn, params: list[Tensor], *, rho: float, model: nn.Module | None = None) -> list[Tensor]:
    """SAM's gradient ∇L(θ + ρ g/‖g‖) (Foret et al.), g = ∇L(θ); parameters left as they were."""
    params = list(params)
    _check(params, 0.0, "forward", rho)
    g = [x.detach() for x in _grad(loss_fn, params)]
    norm = torch.sqrt(sum((x * x).sum() for x in g))
    scale = rho / norm if norm > 0 else 0.0
    return _grad_at(loss_fn, params, [scale * x for x in g], 1.0, model)


def flooded(loss: Tensor, b: float) -> Tensor:
    """Flooding (Ishida et al.): |L − b| + b. Above the flood level b it is L (descent); below it,
    2b − L, so a gradient step ascends."""
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not b >= 0:
        raise GradregError(f"flood level b must be a number >= 0, got {b!r}")
    return (loss - b).abs() + b


# ---------------------------------------------------------------- checking the finite differences

FD_METHODS = ("forward", "backward", "central")


def _flat64(ts: list[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in ts])


def _relative(estimate: list[Tensor], reference: list[Tensor]) -> float:
    """‖estimate − reference‖ / ‖reference‖, in float64 whatever the tensors' precision."""
    a, b = _flat64(estimate), _flat64(reference)
    return ((a - b).norm() / b.norm()).item()


def relative_error(estimate: list[Tensor], reference: list[Tensor]) -> float:
    """‖estimate − reference‖ / ‖reference‖ over all tensors together (one per parameter), in float64."""
    estimate, reference = list(estimate), list(reference)
    if not reference or len(estimate) != len(reference) or any(
            not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape
            for a, b in zip(estimate, reference)):
        raise GradregError("relative_error needs two equally long lists of tensors of matching shapes")
    return _relative(estimate, reference)


def _positive_numbers(name: str, values: object) -> list[float]:
    """A non-empty sequence of finite numbers > 0, as floats; else one GradregError."""
    try:
        out = list(values)  # type: ignore[call-overload]
    except TypeError:
        raise GradregError(f"{name} must be a non-empty sequence of numbers > 0, got {values!r}") from None
    ok = bool(out) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                           for v in out)
    if not ok:
        raise GradregError(f"{name} must be a non-empty sequence of finite numbers > 0, got {values!r}")
    return [float(v) for v in out]


def _check_lr(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or not lr > 0:
        raise GradregError(f"learning rate lr must be a finite number > 0, got {lr!r}")
    return float(lr)


def batch_loss(model: nn.Module, x: Tensor, y: Tensor, loss: str = "cross_entropy") -> LossFn:
    """The closure every function here takes: the mean ``loss`` (a ``gradreg.losses`` name) of
    ``model`` on the fixed batch (x, y), at the model's current parameters."""
    if not isinstance(model, nn.Module):
        raise GradregError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    per_example = losses.get(loss)

    def loss_fn() -> Tensor:
        return per_example(model(x), y).mean()
    return loss_fn


def gradient_and_hvp(loss_fn: LossFn, params: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """g = ∇L and the exact Hessian-vector product H g (double backpropagation), both detached, in
    the parameters' precision. Nothing is perturbed; the parameters are not touched."""
    params = list(params)
    _check(params, 0.0, "db", None)
    g = _grad(loss_fn, params, create_graph=True)
    live = [i for i, x in enumerate(g) if x.requires_grad]     # ∇L depends on θ (not for a linear L)
    hg = [torch.zeros_like(p) for p in params]
    if live:
        found = torch.autograd.grad([g[i] for i in live], params, grad_outputs=[g[i].detach() for i in live],
                                    allow_unused=True)
        hg = [h.detach() if h is not None else torch.zeros_like(p) for h, p in zip(found, params)]
    return [x.detach() for x in g], hg


def fd_errors(loss_fn: LossFn, params: list[Tensor], eps_values: list[float],
              methods: tuple[str, ...] = FD_METHODS, model: nn.Module | None = None) -> dict[str, list[float]]:
    """The relative error ‖Ĥg − Hg‖ / ‖Hg‖ of each finite-difference estimate of H g against the
    exact one (double backpropagation), g = ∇L at the current parameters, for every step ε:

        forward  (∇L(θ + εg) − g) / ε,   backward  (g − ∇L(θ − εg)) / ε,
        central  (∇L(θ + εg) − ∇L(θ − εg)) / (2ε).

    Returns {method: [error at each ε]}. The estimates are computed in the parameters' precision
    (float64 for a float64 model, float32 for a float32 one: that is where the round-off floor at
    tiny ε comes from); only the error norms are taken in float64. Parameters and ``model``'s
    buffers are left exactly as they were. Each ε costs one or two gradient evaluations, shared by
    the methods.
    """
    params = list(params)
    _check(params, 0.0, "db", None)
    eps_values = _positive_numbers("eps_values", eps_values)
    if isinstance(methods, str) or not methods or any(m not in FD_METHODS for m in methods):
        raise GradregError(f"methods must be a non-empty tuple of {', '.join(FD_METHODS)}; got {methods!r}")
    with _kept_buffers(model):
        g, hg = gradient_and_hvp(loss_fn, params)
    if _flat64(hg).norm() == 0:
        raise GradregError("H g is zero at these parameters: a relative error is undefined")
    out: dict[str, list[float]] = {m: [] for m in methods}
    need_up = any(m in ("forward", "central") for m in methods)
    need_down = any(m in ("backward", "central") for m in methods)
    for eps in eps_values:
        up = _grad_at(loss_fn, params, g, eps, model) if need_up else None
        down = _grad_at(loss_fn, params, g, -eps, model) if need_down else None
        for m in methods:
            if m == "forward":
                est = [(u - x) / eps for u, x in zip(up, g)]
            elif m == "backward":
                est = [(x - d) / eps for x, d in zip(g, down)]
            else:
                est = [(u - d) / (2 * eps) for u, d in zip(up, down)]
            out[m].append(_relative(est, hg))
    return out


def fitted_slope(eps: list[float], errors: list[float], low: float | None = None,
                 high: float | None = None) -> float:
    """The least-squares slope of log(error) against log(ε) over the points with low ≤ ε ≤ high
    (all points by default): 1 for an error O(ε), 2 for O(ε²). Needs at least two such points with
    different ε and errors > 0."""
    eps = _positive_numbers("eps", eps)
    try:
        errs = [float(e) for e in errors]
    except (TypeError, ValueError):
        raise GradregError(f"errors must be a sequence of numbers, got {errors!r}") from None
    if len(errs) != len(eps):
        raise GradregError(f"eps and errors must have the same length, got {len(eps)} and {len(errs)}")
    for name, bound in (("low", low), ("high", high)):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
            raise GradregError(f"{name} must be a number or None, got {bound!r}")
    lo = -math.inf if low is None else low
    hi = math.inf if high is None else high
    pts = [(math.log(e), math.log(r)) for e, r in zip(eps, errs) if lo <= e <= hi and math.isfinite(r) and r > 0]
    if len({x for x, _ in pts}) < 2:
        raise GradregError(f"a slope needs at least two points with different eps in [{lo:g}, {hi:g}] "
                           f"and errors > 0; got {len(pts)}")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def activation_switches(model: nn.Module, x: Tensor, params: list[Tensor], direction: list[Tensor],
                        eps_values: list[float]) -> list[float]:
    """For each ε, the fraction of ReLU units (over the examples of ``x`` and every ``nn.ReLU`` of
    ``model``) whose pre-activation changes sign between θ and θ + ε·direction: the units for which
    a finite difference with that step straddles a kink of the loss.

    ``params``: the parameters to move, ``direction``: one tensor per parameter (for F-GR, g = ∇L;
    for B-GR, −g). A unit counts as active where its pre-activation is > 0. Parameters and buffers
    are left exactly as they were (the model runs in whatever mode the caller set).
    """
    if not isinstance(model, nn.Module):
        raise GradregError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = list(params)
    _check(params, 0.0, "db", None)
    direction = list(direction)
    if len(direction) != len(params) or any(not isinstance(d, Tensor) or d.shape != p.shape
                                            for d, p in zip(direction, params)):
        raise GradregError("direction must hold one tensor per parameter, of the parameter's shape")
    eps_values = _positive_numbers("eps_values", eps_values)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise GradregError("activation_switches needs a model with nn.ReLU modules; this one has none")
    seen: list[Tensor] = []
    handles = [m.register_forward_hook(lambda _m, inp, _out: seen.append((inp[0] > 0).flatten(1)))
               for m in relus]
    try:
        with torch.no_grad(), _kept_buffers(model):
            model(x)
            base, fractions = torch.cat(seen, 1), []
            for eps in eps_values:
                seen.clear()
                with _moved(params, direction, eps, model):
                    model(x)
                fractions.append((torch.cat(seen, 1) != base).double().mean().item())
    finally:
        for h in handles:
            h.remove()
    return fractions


# ---------------------------------------------------------------- flooding as implicit F-GR

PATTERNS = ("ascent-descent", "descent-ascent", "two ascents", "two descents")


@dataclass(frozen=True)
class FloodingPair:
    """Two flooding steps from θ with learning rate η and flood level b, and what they are compared with.

    - ``displacement``: θ'' − θ, from the two SGD steps on |L − b| + b;
    - ``fgr_term``: −η(∇L(θ + ηg) − g), the penalty part of an F-GR step with γ = ε = η;
    - ``bgr_term``: −η(g − ∇L(θ − ηg)), the same for B-GR;
    - ``predicted``: the closed form of the pair for its ``pattern`` (from the same gradients):
      ascent-descent → ``fgr_term``; descent-ascent → ``bgr_term``; two ascents → η(g + ∇L(θ + ηg));
      two descents → −η(g + ∇L(θ − ηg));
    - ``exact``: −η² H g (double backpropagation);
    - ``losses``: L(θ), L(θ'), L(θ''); ``steps``: "ascent" / "descent" / "stay" (L = b) for each step;
    - ``magnitude``: |θ'| + |θ''| + |θ' − θ| + |θ'' − θ'| + |θ'' − θ| elementwise: the sizes of the
      results of the floating-point operations of the two updates and of the difference, each of
      which is rounded once (``rounding_units``).
    """

    lr: float
    b: float
    losses: tuple[float, float, float]
    steps: tuple[str, str]
    displacement: list[Tensor]
    fgr_term: list[Tensor]
    bgr_term: list[Tensor]
    predicted: list[Tensor]
    exact: list[Tensor]
    magnitude: list[Tensor]

    @property
    def pattern(self) -> str:
        """One of ``PATTERNS`` (or "stay" where a step found L exactly at b)."""
        names = {("ascent", "descent"): "ascent-descent", ("descent", "ascent"): "descent-ascent",
                 ("ascent", "ascent"): "two ascents", ("descent", "descent"): "two descents"}
        return names.get(self.steps, "stay")

    @property
    def two_sided(self) -> bool:
        """The pair crossed the flood level: one ascent and one descent, in either order."""
        return self.pattern in ("ascent-descent", "descent-ascent")

    def _term(self, term: str | list[Tensor]) -> list[Tensor]:
        if isinstance(term, str):
            if term not in ("fgr_term", "bgr_term", "predicted", "exact"):
                raise GradregError(f"unknown term {term!r}; known: fgr_term, bgr_term, predicted, exact")
            return getattr(self, term)
        return list(term)

    def relative_gap(self, term: str | list[Tensor]) -> float:
        """‖displacement − term‖ / ‖term‖ (in float64); ``term`` a field name or tensors."""
        return _relative(self.displacement, self._term(term))

    def rounding_units(self, term: str | list[Tensor]) -> float:
        """max_i |displacement_i − term_i| / (u · (magnitude_i + 2|term_i|)), u the unit round-off of the
        parameters' dtype. The denominator is the first-order bound on what rounding can make the two
        differ by (every operation of the two updates, of the difference θ'' − θ and of the term's own
        subtraction and product rounds once, by at most u times its result), so a value ≤ 1 says the
        two are the same number up to floating-point rounding; a mathematical difference shows as a
        large number."""
        worst = 0.0
        for d, t, m in zip(self.displacement, self._term(term), self.magnitude):
            u = torch.finfo(d.dtype).eps / 2
            gap = (d.double() - t.double()).abs()
            scale = u * (m.double() + 2 * t.double().abs())
            ratio = torch.where(scale > 0, gap / scale, torch.where(gap > 0, math.inf, 0.0))
            worst = max(worst, ratio.max().item() if ratio.numel() else 0.0)
        return worst


def flood_levels(loss_fn: LossFn, params: list[Tensor], lr: float,
                 model: nn.Module | None = None) -> dict[str, float]:
    """A flood level b for each pattern of a flooding pair at θ with step η (``PATTERNS``):

    - "ascent-descent": (L(θ) + L(θ + ηg)) / 2 — below b at θ, above it after the ascent;
    - "descent-ascent": (L(θ) + L(θ − ηg)) / 2 — above b at θ, below it after the descent;
    - "two ascents": 2·max(L(θ), L(θ + ηg)); "two descents": min(L(θ), L(θ − ηg)) / 2.

    The two-sided levels need η small enough that the ascent raises L and the descent lowers it;
    ``flooding_pair`` reports the pattern that actually happened. Parameters are left as they were.
    """
    params = list(params)
    _check(params, 0.0, "db", None)
    lr = _check_lr(lr)
    with _kept_buffers(model):
        g = [x.detach() for x in _grad(loss_fn, params)]
        with torch.no_grad():
            here = float(loss_fn())
    at = []
    for sign in (1.0, -1.0):
        with _moved(params, g, sign * lr, model), torch.no_grad():
            at.append(float(loss_fn()))
    up, down = at
    return {"ascent-descent": (here + up) / 2, "descent-ascent": (here + down) / 2,
            "two ascents": 2 * max(here, up), "two descents": min(here, down) / 2}


def _flooding_step(loss_fn: LossFn, params: list[Tensor], lr: float, b: float) -> tuple[float, str]:
    """One SGD step on |L − b| + b (in place); returns L before the step and its direction."""
    loss = loss_fn()
    grads = torch.autograd.grad(flooded(loss, b), params, allow_unused=True)
    with torch.no_grad():       # p ← p − lr·d in one rounding, as torch.optim.SGD updates (and as _grad_at steps)
        for p, d in zip(params, grads):
            if d is not None:
                p.add_(d, alpha=-lr)
    value = float(loss.detach())
    return value, "ascent" if value < b else "descent" if value > b else "stay"


def flooding_pair(loss_fn: LossFn, params: list[Tensor], *, lr: float, b: float,
                  model: nn.Module | None = None) -> FloodingPair:
    """Two plain SGD steps with learning rate η on the flooded loss |L − b| + b, from the current θ,
    beside the finite-difference terms they are compared with (see ``FloodingPair``).

    Below the flood level the flooded gradient is −g, so the step ascends: θ' = θ + ηg. If then
    L(θ') > b the next step descends: θ'' = θ' − η∇L(θ'). Together, θ'' − θ = −η(∇L(θ + ηg) − g):
    exactly the penalty part of an F-GR step with ε = γ = η, and ≈ −η² H g up to O(η³). The two steps
    are taken on the parameters themselves, which are restored bit for bit afterwards (and
    ``model``'s buffers with them); ``loss_fn`` is evaluated on one fixed batch, like a closure.
    """
    params = list(params)
    _check(params, 0.0, "db", None)
    lr = _check_lr(lr)
    flooded(torch.zeros(()), b)                                   # the flood level's own check
    saved = [p.detach().clone() for p in params]
    try:
        with _kept_buffers(model):
            g, hg = gradient_and_hvp(loss_fn, params)
            l0, first = _flooding_step(loss_fn, params, lr, b)
            middle = [p.detach().clone() for p in params]
            l1, second = _flooding_step(loss_fn, params, lr, b)
            with torch.no_grad():
                l2 = float(loss_fn())
            displacement = [p.detach() - s for p, s in zip(params, saved)]
            magnitude = [m.abs() + p.detach().abs() + (m - s).abs() + (p.detach() - m).abs() + d.abs()
                         for s, m, p, d in zip(saved, middle, params, displacement)]
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    up = _grad_at(loss_fn, params, g, lr, model)
    down = _grad_at(loss_fn, params, g, -lr, model)
    fgr = [-(lr * (u - x)) for u, x in zip(up, g)]
    bgr = [-(lr * (x - d)) for x, d in zip(g, down)]
    closed = {("ascent", "descent"): fgr, ("descent", "ascent"): bgr,
              ("ascent", "ascent"): [lr * x + lr * u for x, u in zip(g, up)],
              ("descent", "descent"): [-(lr * x) - lr * d for x, d in zip(g, down)]}
    predicted = closed.get((first, second), [torch.full_like(x, math.nan) for x in g])
    return FloodingPair(lr=lr, b=float(b), losses=(l0, l1, l2), steps=(first, second), displacement=displacement,
                        fgr_term=fgr, bgr_term=bgr, predicted=predicted, exact=[-(lr * lr) * h for h in hg],
                        magnitude=magnitude)

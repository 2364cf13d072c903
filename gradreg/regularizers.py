"""Input-gradient regularizers of Varga, Csiszárik & Zombori (arXiv 1712.09936).

Every regularizer is a projection of the logit Jacobian J_g(x) = ∂g/∂x, g = model(x) the logits:

    DataGrad       ‖J_gᵀ (p − y)‖²   = ‖∂ℓ_i/∂x_i‖²          (double backpropagation)
    SpectReg       ‖J_gᵀ r‖²,        r ~ N(0, I_K) shared by the batch
    Onehot         ‖J_gᵀ e_y‖²       (the true class)
    Random onehot  ‖J_gᵀ e_c‖²       (c uniform per example)
    FrobReg        ‖J_g‖_F²          (exact: all K projections)
    JacReg         ‖J_p‖_F²,         J_p = (diag p − p pᵀ) J_g, the softmax Jacobian (Sokolić et al.)
    Confidence     −H(p)             (not a Jacobian penalty; Pereyra et al.)

Each function has the signature ``penalty(model, x, y, **options) -> Tensor[B]`` and returns the
*per-example* penalty, differentiable with respect to the model's parameters; the training loop adds
``weight * penalty.mean()`` to the task loss. Gradients are with respect to the (standardised) input.

The gradient trick: for a vector w held constant, ‖J_gᵀ w‖ = ‖∂⟨g(x), w⟩/∂x‖, so every single
projection costs one extra backward pass, not K. The exact Frobenius penalties need all K rows: K
vector-Jacobian products, batched by vmap into one call on a GPU (see ``frobenius_sq_norm``).

"Per example" and train-mode BatchNorm: with batch statistics, example j's output depends on every
x_i, so there is no Jacobian of one example alone. What all regularizers here compute, like the
authors' code, is row i of the gradient of the batch sum: ∂(Σ_j φ_j)/∂x_i. Without coupling layers
(eval-mode BatchNorm, dropout, plain nets) this equals ∂φ_i/∂x_i exactly; ``tests/`` checks both.

Checked and raw: the public names (``datagrad`` …, ``get(name).penalty``) check their inputs first
and turn a bad one — wrong type, dtype, layout or shape, an empty batch, labels out of range, an
unknown option, a call in ``torch.inference_mode()`` — into one ``GradregError`` naming the function
and the argument, instead of a torch error from deep inside. What the checks cannot foresee (a model
that ignores or detaches x, logits from another x) still comes out as one ``GradregError`` with
torch's message as its first line and torch's exception as its ``__cause__``. The checks cost a
little (the label-range check is a host sync on CUDA), so the training loop calls ``get(name).raw``,
the same function without them (also ``_datagrad`` …). ``options(name)`` lists the keyword options
a user may set, with their accepted types.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import conv, losses
from .errors import GradregError

Penalty = Callable[..., Tensor]


def _forward(model: nn.Module, x: Tensor, logits: Tensor | None) -> tuple[Tensor, Tensor]:
    """(x, g): the input as a leaf that records gradients and the logits computed from it.

    ``logits`` given: reuse the caller's forward pass — x must be the tensor that produced them and
    require grad. This is how the training loop shares one forward pass between task loss and
    penalty (and one dropout mask; ``TrainConfig.separate_pass`` draws an independent one instead).
    """
    if logits is None:
        x = x.detach().requires_grad_(True)
        return x, model(x)
    if not x.requires_grad:
        raise GradregError("logits=... needs the x that produced them, with requires_grad=True")
    return x, logits


def _sq_norm(v: Tensor) -> Tensor:
    """Squared Euclidean norm of each example: [B, ...] -> [B]."""
    return v.flatten(1).pow(2).sum(1)


def projected_sq_norm(g: Tensor, x: Tensor, w: Tensor) -> Tensor:
    """‖J_g(x_i)ᵀ w_i‖² per example by the gradient trick: one backward pass of ⟨g, w⟩.

    g: [B, K] outputs computed from x (which requires grad); w: [B, K] or [K], held constant.
    """
    (grad_x,) = torch.autograd.grad((g * w.detach()).sum(), x, create_graph=True)
    return _sq_norm(grad_x)


def frobenius_sq_norm(g: Tensor, x: Tensor, vectorized: bool, create_graph: bool = True) -> Tensor:
    """‖J_g(x_i)‖_F² per example, exactly: the K vector-Jacobian products J_gᵀ e_k, squared and summed.

    ``vectorized``: one vmap-batched call (``is_grads_batched``, cotangents [K, B, K]) — the fast
    way on a GPU, where K small backward passes are launch-bound; else K backward passes in a loop,
    which measured faster on a 2-core CPU and works with ``conv.Conv2d`` (vmap cannot batch it).
    ``create_graph``: keep the result differentiable (training); False only measures it.
    """
    B, K = g.shape
    if vectorized:
        e = torch.eye(K, dtype=g.dtype, device=g.device).unsqueeze(1).expand(K, B, K)
        (rows,) = torch.autograd.grad(g, x, e, is_grads_batched=True, create_graph=create_graph)  # [K, B, ...]
        return rows.flatten(2).pow(2).sum((0, 2))
    total = g.new_zeros(B)
    for k in range(K):
        (row,) = torch.autograd.grad(g[:, k].sum(), x, create_graph=create_graph,
                                     retain_graph=create_graph or k + 1 < K)         # J_gᵀ e_k: [B, ...]
        total = total + _sq_norm(row)
    return total


def _vectorize(fn: str, model: nn.Module, x: Tensor, vectorized: bool | None) -> bool:
    """Batch the K products on CUDA by default; refuse vmap over the CPU-only custom convolution."""
    if vectorized is None:
        return x.device.type == "cuda"
    if vectorized and x.device.type == "cpu" and any(isinstance(m, conv.Conv2d) for m in model.modules()):
        raise GradregError(f"{fn}: vectorized=True on CPU cannot differentiate through gradreg.conv.Conv2d; "
                           "use the default (vectorized=None)")
    return vectorized


@torch.enable_grad()  # input gradients are needed even inside torch.no_grad()
def _datagrad(model: nn.Module, x: Tensor, y: Tensor, *, loss: str = "cross_entropy",
              logits: Tensor | None = None) -> Tensor:
    """DataGrad / double backpropagation: ‖∂ℓ_i/∂x_i‖² (squared, as in the authors' code).

    For cross-entropy this is ‖J_gᵀ (p − y)‖²: the projection of J_g on the residual.
    ``loss``: the per-example task loss ℓ (a name in ``gradreg.losses``).
    """
    x, g = _forward(model, x, logits)
    (grad_x,) = torch.autograd.grad(losses.get(loss)(g, y).sum(), x, create_graph=True)
    return _sq_norm(grad_x)


def _check_r_shape(r: Tensor, g: Tensor) -> None:
    """SpectReg's r must be one projection [K] for the batch or one per example [B, K]."""
    if r.shape != g.shape[1:] and r.shape != g.shape:
        raise GradregError(f"spectreg: r has shape {tuple(r.shape)}, expected ({g.shape[1]},) or {tuple(g.shape)}")


@torch.enable_grad()  # input gradients are needed even inside torch.no_grad()
def _spectreg(model: nn.Module, x: Tensor, y: Tensor | None = None, *, r: Tensor | None = None,
              spherical: bool = False, generator: torch.Generator | None = None,
              logits: Tensor | None = None) -> Tensor:
    """SpectReg: ‖J_gᵀ r‖², r ~ N(0, I_K) drawn once and shared by the batch (authors' code).

    E_r ‖J_gᵀ r‖² = ‖J_g‖_F², so this is an unbiased one-sample estimate of FrobReg.
    ``spherical=True`` normalises r to the unit sphere (then the expectation is ‖J_g‖_F² / K,
    and the value never exceeds the spectral norm squared). ``r``: pass the projection yourself.
    """
    x, g = _forward(model, x, logits)
    if r is None:
        r = torch.randn(g.shape[1], generator=generator, dtype=g.dtype, device="cpu").to(g.device)
    else:
        _check_r_shape(r, g)
    if spherical:
        r = r / r.norm(dim=-1, keepdim=True)
    return projected_sq_norm(g, x, r.to(g))


@torch.enable_grad()  # input gradients are needed even inside torch.no_grad()
def _onehot(model: nn.Module, x: Tensor, y: Tensor, *, logits: Tensor | None = None) -> Tensor:
    """Onehot: ‖J_gᵀ e_{y_i}‖² = ‖∂g_{y_i}/∂x_i‖², the gradient of the true class's logit."""
    x, g = _forward(model, x, logits)
    return projected_sq_norm(g, x, F.one_hot(y, g.shape[1]).to(g))


@torch.enable_grad()  # input gradients are needed even inside torch.no_grad()
def _random_onehot(model: nn.Module, x: Tensor, y: Tensor | None = None, *,
                   generator: torch.Generator | None = None, logits: Tensor | None = None) -> Tensor:
    """Random onehot: ‖∂g_c/∂x_i‖² with a class c drawn uniformly for each example."""
    x, g = _forward(model, x, logits)
    c = torch.randint(g.shape[1], (g.shape[0],), generator=generator).to(g.device)
    return projected_sq_norm(g, x, F.one_hot(c, g.shape[1]).to(g))


@torch.enable_grad()  # input gradients are needed even inside torch.no_grad()
def _frobreg(model: nn.Module, x: Tensor, y: Tensor | None = None, *, vectorized: bool | None = None,
             logits: Tensor | None = None) -> Tensor:
    """FrobReg: the exact squared Frobenius norm of the logit Jacobian, ‖J_g(x_i)‖_F².

    ``vectorized``: batch the K vector-Jacobian products with vmap (default: on CUDA only).
    """
    x, g = _forward(model, x, logits)
    return frobenius_sq_norm(g, x, _vectorize("frobreg", model, x, vectorized))


@torch.enable_grad()  # input gradients are needed even inside torch.no_grad()
def _jacreg(model: nn.Module, x: Tensor, y: Tensor | None = None, *, vectorized: bool | None = None,
            logits: Tensor | None = None) -> Tensor:
    """JacReg (Sokolić et al.): ‖J_p(x_i)‖_F² for the probabilities p = softmax(g).

    J_p = (diag p − p pᵀ) J_g: the softmax Jacobian damps J_g where the network is confident.
    """
    x, g = _forward(model, x, logits)
    return frobenius_sq_norm(torch.softmax(g, dim=1), x, _vectorize("jacreg", model, x, vectorized))


def _confidence(model: nn.Module, x: Tensor, y: Tensor | None = None, *, logits: Tensor | None = None) -> Tensor:
    """Confidence penalty (Pereyra et al.): the negative entropy Σ_k p_k log p_k of each example.

    The authors' code summed this over the batch; as a per-example mean the same strength
    needs weight β·B.
    """
    log_p = torch.log_softmax(model(x) if logits is None else logits, dim=1)
    return (log_p.exp() * log_p).sum(1)


@dataclass(frozen=True)
class Regularizer:
    """A registry entry: the checked penalty, the raw one, and which options the training loop passes."""

    name: str
    penalty: Penalty           # checks its inputs, then calls ``raw``: the public entry point
    raw: Penalty               # the same function without the checks: for the training loop
    input_grad: bool = True    # differentiates with respect to x (all but the confidence penalty)
    needs_loss: bool = False   # takes ``loss=`` (the task loss's name): DataGrad
    needs_labels: bool = False # y must be class indices (whatever the loss): Onehot
    random: bool = False       # takes ``generator=``
    own_pass: bool = False     # the authors' code computed it in a forward pass of its own (an
                               # independent dropout mask): SpectReg, FrobReg, JacReg, Onehot, Random onehot
    softmax: bool = False      # a penalty on the softmax probabilities p (JacReg, the confidence penalty):
                               # with a single output p ≡ 1, so the penalty is identically zero (and
                               # useless for one-output regression); the config validator refuses that


# ---------------------------------------------------------------------------------------------
# Input checks of the public entry points: each raises one GradregError "<fn>: <argument> ...".

SUPPLIED_OPTIONS = ("logits", "loss", "generator")  # keyword options the training loop passes itself
# what torch raises for an x the model cannot take (shapes, dtypes, devices, a BatchNorm batch of one,
# a model with another signature, an operator missing for a layout), and for a graph the penalty
# cannot differentiate (a model that ignores x): wrapped in one GradregError, torch's as the cause
_TORCH_ERRORS = (RuntimeError, TypeError, ValueError, IndexError, NotImplementedError)
_TYPE_NAMES = {Tensor: "a torch.Tensor", nn.Module: "a torch.nn.Module", torch.Generator: "a torch.Generator",
               type(None): "None", bool: "a bool", str: "a str"}


def _param_types(raw: Penalty) -> dict[str, tuple[type, ...]]:
    """Every parameter of a penalty with the types its annotation accepts (a class or a union of them)."""
    hints = inspect.signature(raw, eval_str=True).parameters
    return {name: typing.get_args(p.annotation) or (p.annotation,) for name, p in hints.items()}


def _describe(value: object) -> str:
    """A short one-line account of a value for an error message: dtype and shape for arrays."""
    if isinstance(value, Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        if value.is_nested:                                   # no plain shape: it would raise
            return f"a nested tensor of dtype {dtype}"
        layout = "" if value.layout == torch.strided else f"{str(value.layout).removeprefix('torch.')} "
        return f"a {layout}tensor of dtype {dtype} and shape {tuple(value.shape)}"
    cls = type(value)
    kind = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{kind} of dtype {value.dtype} and shape {tuple(value.shape)}"
    text = repr(value).replace("\n", " ")
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


def _bind(fn: str, signature: inspect.Signature, args: tuple, kwargs: dict[str, Any]) -> inspect.BoundArguments:
    """The call's arguments by name, defaults filled in; unknown or missing ones are a GradregError."""
    known = [name for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY]
    for key in kwargs:
        if key not in signature.parameters:
            raise GradregError(f"{fn}: unknown option {key!r}; known: {', '.join(known)}")
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as err:  # missing y, too many positional arguments, ...
        hint = f" (model, x, y; options by keyword: {', '.join(known)})" if "positional" in str(err) else ""
        raise GradregError(f"{fn}: {err}{hint}") from None
    bound.apply_defaults()
    return bound


def _check_types(fn: str, arguments: dict[str, Any], types: dict[str, tuple[type, ...]]) -> None:
    """Every argument an instance of what its annotation says (bool is strict: 1 is not True)."""
    for name, value in arguments.items():
        if not isinstance(value, types[name]):
            wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types[name])
            raise GradregError(f"{fn}: {name} must be {wanted}; got {_describe(value)}")


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message (torch's run to many), or its type's name."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _check_dense(fn: str, name: str, t: Tensor) -> None:
    """A plain tensor: sparse and nested ones have no shape to check, and most operators refuse them."""
    if t.is_nested or t.layout != torch.strided:
        raise GradregError(f"{fn}: {name} must be a dense (strided) tensor; got {_describe(t)}")


def _check_grad_mode(fn: str, x: Tensor, input_grad: bool) -> None:
    """Input gradients need autograd: not in inference mode, and not of a tensor made in it."""
    if not input_grad:
        return                                                # the confidence penalty needs none
    if torch.is_inference_mode_enabled():
        raise GradregError(f"{fn}: input gradients cannot be taken in torch.inference_mode(); "
                           "call it outside (torch.no_grad() is fine)")
    if x.is_inference():
        raise GradregError(f"{fn}: x was created in torch.inference_mode(), and input gradients cannot be "
                           "taken of it; create it outside (torch.no_grad() is fine) or pass x.clone()")


def _check_x(fn: str, x: Tensor) -> None:
    """x: dense, floating point (input gradients need it), with a batch dimension of at least one row."""
    _check_dense(fn, "x", x)
    if x.device.type == "meta":
        raise GradregError(f"{fn}: x must hold values; got a tensor on the meta device")
    if not x.is_floating_point():
        raise GradregError(f"{fn}: x must be a floating-point tensor; got {_describe(x)}")
    if x.ndim == 0 or x.shape[0] == 0:
        raise GradregError(f"{fn}: x must have a batch dimension with at least one row (x.shape[0] >= 1); "
                           f"got {_describe(x)}")


def _target_kind(fn: str, targets: str | None, loss: str | None) -> str | None:
    """What y must hold: "classes" (integer indices), "values" (regression targets) or None (unused)."""
    if targets != "loss":
        return targets
    if loss not in losses.LOSSES:
        raise GradregError(f"{fn}: unknown loss {loss!r}; known: {', '.join(losses.LOSSES)}")
    return {"cross_entropy": "classes", "squared_error": "values"}.get(loss)


def _check_y(fn: str, y: Tensor | None, batch: int, kind: str | None) -> Tensor | None:
    """y's batch size, and dtype and shape for its use; class indices come back as int64 (what
    ``F.one_hot`` and ``F.cross_entropy`` take: a no-op for int64 labels)."""
    if y is None:
        return None
    _check_dense(fn, "y", y)
    if y.ndim == 0 or y.shape[0] != batch:
        raise GradregError(f"{fn}: y must have the batch size of x ({batch}) as its first dimension; "
                           f"got {_describe(y)}")
    if kind == "classes":
        if y.ndim != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise GradregError(f"{fn}: y must be integer class indices of shape [B] = [{batch}]; got {_describe(y)}")
        return y.long()
    if kind == "values" and not y.is_floating_point():
        raise GradregError(f"{fn}: y must be a floating-point regression target for loss 'squared_error'; "
                           f"got {_describe(y)}")
    return y


def _check_logits(fn: str, what: str, g: object, batch: int) -> None:
    """Logits (the model's output or the caller's ``logits=``): dense, floating point, [B, K], K >= 1."""
    if isinstance(g, Tensor):
        _check_dense(fn, what, g)
    if not (isinstance(g, Tensor) and g.is_floating_point() and g.ndim == 2 and g.shape[0] == batch
            and g.shape[1] >= 1):
        raise GradregError(f"{fn}: {what} must be floating-point logits of shape [B, K] with B = {batch}, "
                           f"K >= 1; got {_describe(g)}")


def _checked_forward(fn: str, model: nn.Module, x: Tensor, logits: Tensor | None,
                     input_grad: bool) -> tuple[Tensor, Tensor]:
    """``_forward`` with checks: (x, g) to hand the raw penalty as ``x`` and ``logits=``, so that it
    reuses this forward pass (the same graph and dropout mask it would have made itself)."""
    if logits is not None:
        _check_logits(fn, "logits", logits, x.shape[0])
        if input_grad and not x.requires_grad:
            raise GradregError(f"{fn}: logits=... needs the x that produced them, with requires_grad=True; "
                               "got x without requires_grad")
        if input_grad and not logits.requires_grad:
            raise GradregError(f"{fn}: logits must come from model(x) with gradients enabled; got logits "
                               "that do not require grad (computed under torch.no_grad() or detached?)")
        return x, logits
    if input_grad:
        x = x.detach().requires_grad_(True)
    with torch.enable_grad() if input_grad else contextlib.nullcontext():
        try:
            g = model(x)
        except _TORCH_ERRORS as err:
            raise GradregError(f"{fn}: model(x) failed for x of shape {tuple(x.shape)}: "
                               f"{_first_line(err)}") from err
    _check_logits(fn, "model(x)", g, x.shape[0])
    if input_grad and not g.requires_grad:
        raise GradregError(f"{fn}: model(x) must be differentiable with respect to x; its output does not "
                           "require grad (does the model detach x or run under torch.no_grad()?)")
    return x, g


def _raw_failure(fn: str, err: BaseException, shared: bool) -> GradregError:
    """The error for a raw penalty that failed after the checks passed (raise it ``from err``)."""
    first = _first_line(err)
    if "not have been used in the graph" in first:           # ∂g/∂x does not exist: g ignores x
        source = "logits" if shared else "model(x)"
        guess = "a model that ignores or detaches x, or logits from another x" if shared else \
            "a model that ignores or detaches x"
        return GradregError(f"{fn}: {source} must depend on x to take input gradients ({guess}?): {first}")
    return GradregError(f"{fn}: computing the penalty failed: {first}")


def _check_targets(fn: str, y: Tensor | None, g: Tensor, kind: str | None) -> None:
    """y against the logits: the same device, labels in 0..K-1 (a host sync), or K values per example."""
    if y is None or kind is None:
        return
    if y.device != g.device:
        raise GradregError(f"{fn}: y must be on the device of the model's output ({g.device}); got {y.device}")
    K = g.shape[1]
    if kind == "classes" and ((y < 0) | (y >= K)).any():
        raise GradregError(f"{fn}: y must hold class indices in 0..{K - 1} (the model has {K} logits); "
                           f"got values from {y.min().item()} to {y.max().item()}")
    if kind == "values" and y.numel() != g.numel():
        raise GradregError(f"{fn}: y must hold {K} value(s) per example, like the model's output "
                           f"{tuple(g.shape)}; got {_describe(y)}")


def _check_options(fn: str, arguments: dict[str, Any]) -> None:
    """Options whose validity does not depend on the logits: the generator draws on the CPU."""
    generator = arguments.get("generator")
    if generator is not None and generator.device.type != "cpu":
        raise GradregError(f"{fn}: generator must be a CPU torch.Generator (the draws are made on the CPU); "
                           f"got one on {generator.device}")


def _check_r(fn: str, r: Tensor | None, g: Tensor, spherical: bool) -> None:
    """SpectReg's r: shape [K] or [B, K] (the raw function's own check); floating to be normalised."""
    if r is None:
        return
    _check_dense(fn, "r", r)
    if r.device != g.device:
        raise GradregError(f"{fn}: r must be on the device of the model's output ({g.device}); got {r.device}")
    _check_r_shape(r, g)
    if spherical and not r.is_floating_point():
        raise GradregError(f"{fn}: r must be floating point to be normalised (spherical=True); got {_describe(r)}")


def _checked(name: str, raw: Penalty, input_grad: bool, targets: str | None) -> Penalty:
    """The public entry point for ``raw``: same signature and value, inputs checked first.

    ``targets``: how the penalty uses y — "classes" (Onehot), "loss" (as the task loss takes it:
    DataGrad) or None (ignored; if given, it must still have the batch size of x).
    """
    signature, types = inspect.signature(raw), _param_types(raw)

    @functools.wraps(raw)
    def penalty(*args: Any, **kwargs: Any) -> Tensor:
        bound = _bind(name, signature, args, kwargs)
        arguments = bound.arguments
        _check_types(name, arguments, types)
        model, x = arguments["model"], arguments["x"]
        _check_x(name, x)
        _check_grad_mode(name, x, input_grad)
        kind = _target_kind(name, targets, arguments.get("loss"))
        y = _check_y(name, arguments["y"], x.shape[0], kind)
        _check_options(name, arguments)
        shared = arguments["logits"] is not None
        x, g = _checked_forward(name, model, x, arguments["logits"], input_grad)
        _check_targets(name, y, g, kind)
        if "r" in arguments:
            _check_r(name, arguments["r"], g, arguments["spherical"])
        arguments.update(x=x, y=y, logits=g)
        try:
            return raw(*bound.args, **bound.kwargs)
        except _TORCH_ERRORS as err:                          # what the checks cannot foresee
            raise _raw_failure(name, err, shared) from err

    penalty.__name__ = penalty.__qualname__ = name
    penalty.__doc__ = (f"{raw.__doc__}\n    Checked: bad inputs raise GradregError; "
                       f"``get({name!r}).raw`` skips the checks.\n")
    return penalty


def _entry(name: str, raw: Penalty, **flags: bool) -> Regularizer:
    """A registry entry: ``raw`` and its checked wrapper, made from the same flags."""
    targets = "loss" if flags.get("needs_loss") else "classes" if flags.get("needs_labels") else None
    penalty = _checked(name, raw, flags.get("input_grad", True), targets)
    return Regularizer(name, penalty, raw, **flags)


REGISTRY: dict[str, Regularizer] = {r.name: r for r in [
    _entry("datagrad", _datagrad, needs_loss=True),
    _entry("spectreg", _spectreg, random=True, own_pass=True),
    _entry("frobreg", _frobreg, own_pass=True),
    _entry("jacreg", _jacreg, softmax=True, own_pass=True),
    _entry("onehot", _onehot, needs_labels=True, own_pass=True),
    _entry("random_onehot", _random_onehot, random=True, own_pass=True),
    _entry("confidence", _confidence, input_grad=False, softmax=True),
]}

# the public, checked penalties
datagrad = REGISTRY["datagrad"].penalty
spectreg = REGISTRY["spectreg"].penalty
frobreg = REGISTRY["frobreg"].penalty
jacreg = REGISTRY["jacreg"].penalty
onehot = REGISTRY["onehot"].penalty
random_onehot = REGISTRY["random_onehot"].penalty
confidence = REGISTRY["confidence"].penalty


def get(name: str) -> Regularizer:
    """Look a regularizer up by its registry name; unknown names raise one clear GradregError."""
    if not isinstance(name, str):
        raise GradregError(f"regularizer name must be a str; got {_describe(name)}")
    if name not in REGISTRY:
        raise GradregError(f"unknown regularizer {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names() -> list[str]:
    """All registry names, in the order the book presents them."""
    return list(REGISTRY)


def options(name: str) -> dict[str, tuple[type, ...]]:
    """The keyword options a user may set for regularizer ``name`` (e.g. in ``TrainConfig.reg_options``),
    in signature order, each with the types it accepts (``type(None)`` where None is allowed).

    Leaves out ``SUPPLIED_OPTIONS`` (``logits``, ``loss``, ``generator``), which the training loop
    passes itself. Read from the penalty's signature, so it says what the checked penalty accepts:
    ``options("spectreg") == {"r": (Tensor, NoneType), "spherical": (bool,)}``; ``{}`` for DataGrad,
    Onehot, random onehot and the confidence penalty. Values are checked by type only (r's shape
    depends on the model).
    """
    raw = get(name).raw
    keyword = [n for n, p in inspect.signature(raw).parameters.items() if p.kind is p.KEYWORD_ONLY]
    types = _param_types(raw)
    return {n: types[n] for n in keyword if n not in SUPPLIED_OPTIONS}

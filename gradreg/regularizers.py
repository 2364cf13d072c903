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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


def frobenius_sq_norm(g: Tensor, x: Tensor, vectorized: bool) -> Tensor:
    """‖J_g(x_i)‖_F² per example, exactly: the K vector-Jacobian products J_gᵀ e_k, squared and summed.

    ``vectorized``: one vmap-batched call (``is_grads_batched``, cotangents [K, B, K]) — the fast
    way on a GPU, where K small backward passes are launch-bound; else K backward passes in a loop,
    which measured faster on a 2-core CPU and works with ``conv.Conv2d`` (vmap cannot batch it).
    """
    B, K = g.shape
    if vectorized:
        e = torch.eye(K, dtype=g.dtype, device=g.device).unsqueeze(1).expand(K, B, K)
        (rows,) = torch.autograd.grad(g, x, e, is_grads_batched=True, create_graph=True)  # [K, B, ...]
        return rows.flatten(2).pow(2).sum((0, 2))
    total = g.new_zeros(B)
    for k in range(K):
        (row,) = torch.autograd.grad(g[:, k].sum(), x, create_graph=True)              # J_gᵀ e_k: [B, ...]
        total = total + _sq_norm(row)
    return total


def _vectorize(model: nn.Module, x: Tensor, vectorized: bool | None) -> bool:
    """Batch the K products on CUDA by default; refuse vmap over the CPU-only custom convolution."""
    if vectorized is None:
        return x.device.type == "cuda"
    if vectorized and x.device.type == "cpu" and any(isinstance(m, conv.Conv2d) for m in model.modules()):
        raise GradregError("vectorized=True on CPU cannot differentiate through gradreg.conv.Conv2d; "
                           "use the default (vectorized=None)")
    return vectorized


@torch.enable_grad()  # input gradients are needed even inside torch.no_grad()
def datagrad(model: nn.Module, x: Tensor, y: Tensor, *, loss: str = "cross_entropy",
             logits: Tensor | None = None) -> Tensor:
    """DataGrad / double backpropagation: ‖∂ℓ_i/∂x_i‖² (squared, as in the authors' code).

    For cross-entropy this is ‖J_gᵀ (p − y)‖²: the projection of J_g on the residual.
    ``loss``: the per-example task loss ℓ (a name in ``gradreg.losses``).
    """
    x, g = _forward(model, x, logits)
    (grad_x,) = torch.autograd.grad(losses.get(loss)(g, y).sum(), x, create_graph=True)
    return _sq_norm(grad_x)


@torch.enable_grad()  # input gradients are needed even inside torch.no_grad()
def spectreg(model: nn.Module, x: Tensor, y: Tensor | None = None, *, r: Tensor | None = None,
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
    elif r.shape != g.shape[1:] and r.shape != g.shape:
        raise GradregError(f"spectreg: r has shape {tuple(r.shape)}, expected ({g.shape[1]},) or {tuple(g.shape)}")
    if spherical:
        r = r / r.norm(dim=-1, keepdim=True)
    return projected_sq_norm(g, x, r.to(g))


@torch.enable_grad()  # input gradients are needed even inside torch.no_grad()
def onehot(model: nn.Module, x: Tensor, y: Tensor, *, logits: Tensor | None = None) -> Tensor:
    """Onehot: ‖J_gᵀ e_{y_i}‖² = ‖∂g_{y_i}/∂x_i‖², the gradient of the true class's logit."""
    x, g = _forward(model, x, logits)
    return projected_sq_norm(g, x, F.one_hot(y, g.shape[1]).to(g))


@torch.enable_grad()  # input gradients are needed even inside torch.no_grad()
def random_onehot(model: nn.Module, x: Tensor, y: Tensor | None = None, *,
                  generator: torch.Generator | None = None, logits: Tensor | None = None) -> Tensor:
    """Random onehot: ‖∂g_c/∂x_i‖² with a class c drawn uniformly for each example."""
    x, g = _forward(model, x, logits)
    c = torch.randint(g.shape[1], (g.shape[0],), generator=generator).to(g.device)
    return projected_sq_norm(g, x, F.one_hot(c, g.shape[1]).to(g))


@torch.enable_grad()  # input gradients are needed even inside torch.no_grad()
def frobreg(model: nn.Module, x: Tensor, y: Tensor | None = None, *, vectorized: bool | None = None,
            logits: Tensor | None = None) -> Tensor:
    """FrobReg: the exact squared Frobenius norm of the logit Jacobian, ‖J_g(x_i)‖_F².

    ``vectorized``: batch the K vector-Jacobian products with vmap (default: on CUDA only).
    """
    x, g = _forward(model, x, logits)
    return frobenius_sq_norm(g, x, _vectorize(model, x, vectorized))


@torch.enable_grad()  # input gradients are needed even inside torch.no_grad()
def jacreg(model: nn.Module, x: Tensor, y: Tensor | None = None, *, vectorized: bool | None = None,
           logits: Tensor | None = None) -> Tensor:
    """JacReg (Sokolić et al.): ‖J_p(x_i)‖_F² for the probabilities p = softmax(g).

    J_p = (diag p − p pᵀ) J_g: the softmax Jacobian damps J_g where the network is confident.
    """
    x, g = _forward(model, x, logits)
    return frobenius_sq_norm(torch.softmax(g, dim=1), x, _vectorize(model, x, vectorized))


def confidence(model: nn.Module, x: Tensor, y: Tensor | None = None, *, logits: Tensor | None = None) -> Tensor:
    """Confidence penalty (Pereyra et al.): the negative entropy Σ_k p_k log p_k of each example.

    The authors' code summed this over the batch; as a per-example mean the same strength
    needs weight β·B.
    """
    log_p = torch.log_softmax(model(x) if logits is None else logits, dim=1)
    return (log_p.exp() * log_p).sum(1)


@dataclass(frozen=True)
class Regularizer:
    """A registry entry: the penalty function and which options the training loop must pass it."""

    name: str
    penalty: Penalty
    input_grad: bool = True    # differentiates with respect to x (all but the confidence penalty)
    needs_loss: bool = False   # takes ``loss=`` (the task loss's name): DataGrad
    random: bool = False       # takes ``generator=``


REGISTRY: dict[str, Regularizer] = {r.name: r for r in [
    Regularizer("datagrad", datagrad, needs_loss=True),
    Regularizer("spectreg", spectreg, random=True),
    Regularizer("frobreg", frobreg),
    Regularizer("jacreg", jacreg),
    Regularizer("onehot", onehot),
    Regularizer("random_onehot", random_onehot, random=True),
    Regularizer("confidence", confidence, input_grad=False),
]}


def get(name: str) -> Regularizer:
    """Look a regularizer up by its registry name; unknown names raise one clear GradregError."""
    if name not in REGISTRY:
        raise GradregError(f"unknown regularizer {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names() -> list[str]:
    """All registry names, in the order the book presents them."""
    return list(REGISTRY)

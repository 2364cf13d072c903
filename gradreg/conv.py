"""A stride-1 convolution whose derivatives of every order run as *forward* convolutions.

Why: on CPU, oneDNN's input-gradient kernel for a convolution with one input channel (LeNet's
first layer on MNIST) is slow — measured 2.3 ms against 0.4 ms for the same numbers computed as a
forward convolution with flipped, transposed weights (batch 50, 1→6 channels, 28×28). Every
input-gradient regularizer needs exactly that input gradient, and its derivative, at every step.

The three functions below only call each other, so first, second and higher derivatives all take
the fast path and ``create_graph=True`` works as usual. With y = conv(x, W) (padding p):

    ∂⟨gy, y⟩/∂x  = conv(gy, flip(W)ᵀ, padding k−1−p)   (``_ConvInput``, the adjoint of conv in x)
    ∂⟨gy, y⟩/∂W  = correlation of x and gy              (``_ConvWeight``)

Used only on CPU: on CUDA the library kernels are fast, and ``Conv2d`` falls back to them.
Not usable under ``autograd.grad(is_grads_batched=True)`` (vmap does not see through it), which is
why ``regularizers`` batches its vector-Jacobian products only on CUDA.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function


def _flip_t(W: Tensor) -> Tensor:
    """Kernel of the adjoint convolution: spatially flipped, in/out channels swapped."""
    return W.flip(2, 3).transpose(0, 1)


class _Conv(Function):
    """y = conv2d(x, W, padding=p), stride 1."""

    generate_vmap_rule = True  # so torch.func transforms (jacrev in the tests) see through it

    @staticmethod
    def forward(x: Tensor, W: Tensor, p: int) -> Tensor:
        return F.conv2d(x, W, padding=p)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, W, ctx.p = inputs
        ctx.save_for_backward(x, W)

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, W = ctx.saved_tensors
        gx = _ConvInput.apply(gy, W, ctx.p) if ctx.needs_input_grad[0] else None
        gW = _ConvWeight.apply(x, gy, ctx.p, W.shape) if ctx.needs_input_grad[1] else None
        return gx, gW, None


class _ConvInput(Function):
    """u = ∂⟨g, conv(x, W)⟩/∂x as a forward convolution of g; linear in g and in W."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g: Tensor, W: Tensor, p: int) -> Tensor:
        return F.conv2d(g, _flip_t(W), padding=W.shape[-1] - 1 - p)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        g, W, ctx.p = inputs
        ctx.save_for_backward(g, W)

    @staticmethod
    def backward(ctx, gu: Tensor):
        g, W = ctx.saved_tensors
        gg = _Conv.apply(gu, W, ctx.p) if ctx.needs_input_grad[0] else None
        gW = _ConvWeight.apply(gu, g, ctx.p, W.shape) if ctx.needs_input_grad[1] else None
        return gg, gW, None


class _ConvWeight(Function):
    """∂⟨gy, conv(x, W)⟩/∂W; bilinear in (x, gy)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, gy: Tensor, p: int, shape: torch.Size) -> Tensor:
        return torch.ops.aten.convolution_backward(
            gy, x, x.new_empty(shape), None, [1, 1], [p, p], [1, 1], False, [0, 0], 1, [False, True, False])[1]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, gy, ctx.p, _ = inputs
        ctx.save_for_backward(x, gy)

    @staticmethod
    def backward(ctx, gW: Tensor):
        x, gy = ctx.saved_tensors
        gx = _ConvInput.apply(gy, gW, ctx.p) if ctx.needs_input_grad[0] else None
        ggy = _Conv.apply(x, gW, ctx.p) if ctx.needs_input_grad[1] else None
        return gx, ggy, None, None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (stride 1, square padding) with fast derivatives on CPU; same parameters, same values."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.stride != (1, 1) or self.dilation != (1, 1) or self.groups != 1 or self.padding_mode != "zeros" \
                or isinstance(self.padding, str) or self.padding[0] != self.padding[1]:
            raise ValueError("gradreg.conv.Conv2d supports stride 1, no dilation or groups, square zero padding")

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        y = _Conv.apply(x, self.weight, self.padding[0])
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

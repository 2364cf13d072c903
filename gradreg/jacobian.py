"""Brute-force Jacobians and the norms the derivation chapter compares: the ground truth that the
regularizers' one-backward-pass formulas are checked against.

Everything here is exact and slow (one full Jacobian per example, by ``torch.func.jacrev``); use it
to verify, never to train.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap


def per_example(fn, x: Tensor) -> Tensor:
    """J[i] = ∂fn(x_i)/∂x_i for a map applied to single examples: [B, K, D] with D = x_i.numel().

    ``fn`` takes a batch and returns [B, K]; it is evaluated one example at a time, so layers that
    couple a batch (train-mode BatchNorm) are *not* coupled here.
    """
    one = lambda xi: fn(xi.unsqueeze(0)).squeeze(0)  # noqa: E731
    return vmap(jacrev(one))(x).flatten(2)


def logits(model: nn.Module, x: Tensor) -> Tensor:
    """J_g(x_i) for every example: [B, K, D]."""
    return per_example(model, x)


def probabilities(model: nn.Module, x: Tensor) -> Tensor:
    """J_p(x_i), the Jacobian of softmax(g(x_i)): [B, K, D]."""
    return per_example(lambda z: torch.softmax(model(z), dim=1), x)


def spectral_norm(J: Tensor) -> Tensor:
    """Largest singular value of each Jacobian: [B, K, D] -> [B]."""
    return torch.linalg.matrix_norm(J, ord=2)


def frobenius_norm(J: Tensor) -> Tensor:
    """‖J‖_F of each Jacobian: [B, K, D] -> [B]."""
    return torch.linalg.matrix_norm(J, ord="fro")


def rank(J: Tensor) -> Tensor:
    """Numerical rank of each Jacobian: [B, K, D] -> [B]."""
    return torch.linalg.matrix_rank(J)


def dense_weights(model: nn.Module) -> list[Tensor]:
    """The weight matrices W_1 … W_L of a dense network's Linear layers, in order."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


def example_models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """Small instances of every architecture family, in eval mode, with their input shapes: the
    networks on which the identities are checked (tests and the identities chapter).

    BatchNorm layers get non-trivial running statistics, so eval mode is not the identity.
    """
    from . import models  # local: models imports nothing from here, keep the dependency one-way

    nets = {
        "mlp": (models.mlp(in_features=12, hidden=7, depth=2, classes=5), (12,)),
        "lenet": (models.lenet("none", filters=(3, 4)), (1, 28, 28)),
        "lenet + dropout (eval)": (models.lenet("dropout", filters=(3, 4)), (1, 28, 28)),
        "lenet + BatchNorm (eval)": (models.lenet("batchnorm", filters=(3, 4)), (1, 28, 28)),
        "residual net": (models.cifar_resnet(width=1, blocks=1, classes=6), (3, 8, 8)),
        "toy (sin 5x)": (models.toy(hidden=8, depth=2), (1,)),
    }
    for net, _ in nets.values():
        net.eval()
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return nets

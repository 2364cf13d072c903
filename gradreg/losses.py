"""Per-example task losses ℓ_i. Regularizers differentiate these, so they never reduce over the batch."""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from .errors import GradregError

LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(g: Tensor, y: Tensor) -> Tensor:
    """M(softmax(g), y) per example: logits g [B, K], integer labels y [B] -> [B]."""
    return F.cross_entropy(g, y, reduction="none")


def squared_error(g: Tensor, y: Tensor) -> Tensor:
    """L2 loss per example for regression (the sin(5x) toy): (g - y)² summed over outputs -> [B]."""
    return (g - y.view_as(g)).pow(2).flatten(1).sum(1)


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "squared_error": squared_error}


def get(name: str) -> LossFn:
    """Look a loss up by name; an unknown name is a GradregError listing the known ones."""
    if name not in LOSSES:
        raise GradregError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name]

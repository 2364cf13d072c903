"""The networks of the experiments (architectures as in the authors' code; see experiments.md).

``build(name, **options)`` makes any of them by name so configs and the CLI can refer to them.
``head`` chooses what sits before the last dense layer of a LeNet: nothing, dropout (p = 0.5,
i.e. keep-probability 0.5) or BatchNorm. ``init`` chooses the initialisation of every model:
"torch" (PyTorch's defaults) or "authors" (the tflib initialisation of Varga et al.'s code; see
``authors_init``), which the experiments that rerun the paper use.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

import torch

import torch.nn.functional as F
from torch import Tensor, nn

from . import conv
from .errors import GradregError

HEADS = ("none", "dropout", "batchnorm")
INITS = ("torch", "authors")


# Beyond these a size is a typo, and building the network would exhaust memory or never finish.
MAX_SIZE = {"width": 64, "blocks": 100, "depth": 1000}
MAX_UNITS = 10_000   # channels, hidden units, classes


def _at_least(low: int, **sizes: object) -> None:
    """Layer sizes are integers from ``low`` to their maximum: a width of 0 or a negative depth builds
    a network that is not one, and 2**70 channels one that never finishes building."""
    for name, value in sizes.items():
        high = MAX_SIZE.get(name, MAX_UNITS)
        if type(value) is not int or not low <= value <= high:
            raise GradregError(f"model option {name} must be an integer from {low} to {high:,}, got {value!r}")


@torch.no_grad()
def authors_init(model: nn.Module) -> nn.Module:
    """Initialise ``model`` in place as the authors' TensorFlow code (tflib) did, from the global RNG.

    Convolutions: uniform with std √(4 / (fan_in + fan_out)), fan_in = C_in·k², fan_out =
    C_out·k²/stride² (tflib's ``he_init=True``). Dense layers: Glorot uniform, std √(2 / (fan_in +
    fan_out)). Every bias zero; BatchNorm scale 1 and shift 0 (as in PyTorch). A uniform law with
    std s has bound s·√3. PyTorch's defaults differ by a factor 0.6–2.3 in std per LeNet layer.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            fan_in, fan_out = m.in_channels * k, m.out_channels * k / (m.stride[0] * m.stride[1])
            std = math.sqrt(4.0 / (fan_in + fan_out))
        elif isinstance(m, nn.Linear):
            std = math.sqrt(2.0 / (m.in_features + m.out_features))
        else:
            continue
        m.weight.uniform_(-std * math.sqrt(3), std * math.sqrt(3))
        if m.bias is not None:
            m.bias.zero_()
    return model


def _init(model: nn.Module, init: str) -> nn.Module:
    """Apply the named initialisation ("torch" leaves PyTorch's as built)."""
    if init not in INITS:
        raise GradregError(f"unknown init {init!r}; known: {', '.join(INITS)}")
    return authors_init(model) if init == "authors" else model


def _head(kind: str, width: int) -> nn.Module:
    """The optional layer between the penultimate dense layer and the logits."""
    if kind not in HEADS:
        raise GradregError(f"unknown head {kind!r}; known: {', '.join(HEADS)}")
    return {"none": nn.Identity, "dropout": lambda _: nn.Dropout(0.5),
            "batchnorm": nn.BatchNorm1d}[kind](width)


def lenet(head: str = "none", filters: tuple[int, int] = (6, 16), in_channels: int = 1,
          classes: int = 10, init: str = "torch") -> nn.Sequential:
    """LeNet-5 on 28×28 inputs: conv5 same → pool → conv5 → pool → conv5 to 120 → dense 84 → head → dense.

    Shapes: [B, 1, 28, 28] → [B, c1, 14, 14] → [B, c2, 5, 5] → [B, 120] → [B, 84] → [B, classes].
    Max-pooling comes before each ReLU: the two commute (values and gradients alike), and pooling
    first leaves a quarter of the values for the ReLU. The first convolution is ``conv.Conv2d``,
    whose input gradient — the one every input-gradient regularizer needs — is fast on CPU.
    """
    if not isinstance(filters, (tuple, list)) or len(filters) != 2:
        raise GradregError(f"model option filters must be two channel counts, got {filters!r}")
    c1, c2 = filters
    _at_least(1, filters_1=c1, filters_2=c2, in_channels=in_channels, classes=classes)
    return _init(nn.Sequential(
        conv.Conv2d(in_channels, c1, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(c1, c2, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(c2, 120, 5), nn.ReLU(), nn.Flatten(),
        nn.Linear(120, 84), nn.ReLU(), _head(head, 84),
        nn.Linear(84, classes),
    ), init)


def lenettuned(head: str = "none", classes: int = 10, init: str = "torch") -> nn.Sequential:
    """The LeNet of Table 1 with 32 and 64 filters in its first two convolutions."""
    return lenet(head, filters=(32, 64), classes=classes, init=init)


class _Block(nn.Module):
    """Residual block conv-BN-ReLU-conv-BN + shortcut, ReLU. Downsampling shortcut: 2×2 average
    pool and zero channel padding (no parameters, as in the authors' ResNet)."""

    def __init__(self, c_in: int, c_out: int, stride: int, bn: bool):
        super().__init__()
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d if bn else (lambda _: nn.Identity())
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not bn)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not bn)
        self.bn2 = norm(c_out)
        self.stride, self.pad = stride, c_out - c_in

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        return F.pad(x, (0, 0, 0, 0, 0, self.pad)) if self.pad else x

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


def cifar_resnet(width: int = 3, blocks: int = 3, bn: bool = True, classes: int = 10,
                 init: str = "torch") -> nn.Sequential:
    """ResNet-20-style CIFAR net: conv3 to 16w, 3 stages × ``blocks`` blocks at 16w/32w/64w, 8×8 average pool."""
    _at_least(1, width=width, blocks=blocks, classes=classes)
    widths = [16 * width, 32 * width, 64 * width]
    layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1, bias=not bn),
                               nn.BatchNorm2d(widths[0]) if bn else nn.Identity(), nn.ReLU()]
    c_in = widths[0]
    for stage, c_out in enumerate(widths):
        for b in range(blocks):
            layers.append(_Block(c_in, c_out, 2 if (stage > 0 and b == 0) else 1, bn))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes)]
    return _init(nn.Sequential(*layers), init)


def toy(hidden: int = 64, depth: int = 4, activation: str = "relu", init: str = "torch") -> nn.Sequential:
    """The sin(5x) net: dense 1→64, ReLU, ``depth`` × (dense 64→64, ReLU), dense 64→1."""
    _at_least(1, hidden=hidden)
    _at_least(0, depth=depth)
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus}
    if activation not in acts:
        raise GradregError(f"unknown activation {activation!r}; known: {', '.join(acts)}")
    act = acts[activation]
    layers: list[nn.Module] = [nn.Linear(1, hidden), act()]
    for _ in range(depth):
        layers += [nn.Linear(hidden, hidden), act()]
    return _init(nn.Sequential(*layers, nn.Linear(hidden, 1)), init)


class _WideBlock(nn.Module):
    """Pre-activation wide residual block: BN-ReLU-conv3-BN-ReLU-conv3 + shortcut (1×1 conv when the
    shape changes), as in Zagoruyko & Komodakis' WRN."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.project = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if (stride > 1 or c_in != c_out) else None

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn1(x))
        h = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return h + (self.project(a) if self.project is not None else x)


def wide_resnet(depth: int = 28, widen: int = 10, classes: int = 10) -> nn.Sequential:
    """WRN-depth-widen (Zagoruyko & Komodakis 2016), the network of Karakida et al.'s CIFAR-10 runs:
    (depth − 4)/6 blocks per stage at 16·widen, 32·widen, 64·widen channels; no dropout."""
    _at_least(1, widen=widen, classes=classes)
    if type(depth) is not int or depth < 10 or (depth - 4) % 6 or depth > MAX_SIZE["depth"]:
        raise GradregError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, …), got {depth!r}")
    if widen > MAX_SIZE["width"]:
        raise GradregError(f"widen must be at most {MAX_SIZE['width']}, got {widen!r}")
    n, widths = (depth - 4) // 6, [16 * widen, 32 * widen, 64 * widen]
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1, bias=False)]
    c_in = 16
    for stage, c_out in enumerate(widths):
        for b in range(n):
            layers.append(_WideBlock(c_in, c_out, 2 if (stage > 0 and b == 0) else 1))
            c_in = c_out
    layers += [nn.BatchNorm2d(c_in), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes)]
    return nn.Sequential(*layers)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU,
                                                  "softplus": nn.Softplus}


def mlp(in_features: int = 784, hidden: int = 256, depth: int = 2, classes: int = 10,
        init: str = "torch", activation: str = "relu") -> nn.Sequential:
    """A dense network on flattened inputs: ``depth`` hidden layers of ``hidden`` units with
    ``activation`` (ReLU, or a smooth tanh / GELU / softplus, whose Hessian exists everywhere)."""
    _at_least(1, in_features=in_features, hidden=hidden, classes=classes)
    _at_least(0, depth=depth)
    if activation not in ACTIVATIONS:
        raise GradregError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
        width = hidden
    return _init(nn.Sequential(*layers, nn.Linear(width, classes)), init)


class DiagonalLinear(nn.Module):
    """The diagonal linear network of Woodworth et al. (2020) and Karakida et al. (2023):
    f(x) = ⟨x, β⟩ with β = u⊙u − v⊙v, started at u = v = α·1 (so β = 0). Small α trains into the
    "rich" regime (β near the minimum-ℓ1 interpolator), large α into the "kernel" regime (minimum ℓ2)."""

    def __init__(self, features: int = 100, alpha: float = 0.1):
        super().__init__()
        _at_least(1, features=features)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1e6:
            raise GradregError(f"alpha must be a number in (0, 1e6), got {alpha!r}")
        self.u = nn.Parameter(torch.full((features,), float(alpha)))
        self.v = nn.Parameter(torch.full((features,), float(alpha)))

    @property
    def beta(self) -> Tensor:
        return self.u * self.u - self.v * self.v

    def forward(self, x: Tensor) -> Tensor:
        return (x @ self.beta)[:, None]


def diagonal_linear(features: int = 100, alpha: float = 0.1) -> DiagonalLinear:
    return DiagonalLinear(features, alpha)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": lenet, "lenettuned": lenettuned, "cifar_resnet": cifar_resnet, "toy": toy, "mlp": mlp,
    "diagonal_linear": diagonal_linear, "wide_resnet": wide_resnet}


def build(name: str, **options) -> nn.Module:
    """Make a model by registry name; unknown names or options raise one clear GradregError."""
    if not isinstance(name, str) or name not in MODELS:
        raise GradregError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    try:
        return MODELS[name](**options)
    except (TypeError, ValueError, KeyError, RuntimeError, MemoryError, OverflowError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise GradregError(f"bad options for model {name!r}: {first}") from None


def option_types(name: str) -> dict[str, tuple[type, ...]]:
    """The keyword options a model accepts and their types, read from its builder's defaults
    (a tuple default also accepts a list, as JSON and the command line write it)."""
    if not isinstance(name, str) or name not in MODELS:
        raise GradregError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    kinds = {tuple: (tuple, list), float: (int, float)}
    return {p.name: kinds.get(type(p.default), (type(p.default),))
            for p in inspect.signature(MODELS[name]).parameters.values()}


def weight_decay_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split parameters into (decayed, not decayed): conv and dense weights are decayed; biases and
    BatchNorm parameters are not (as in the authors' code)."""
    decay, rest = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_weight = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            (decay if is_weight else rest).append(p)
    return decay, rest

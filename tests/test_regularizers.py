"""Every regularizer against the brute-force full Jacobian (torch.func.jacrev), in float64."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev

from gradreg import jacobian, losses, models, regularizers
from gradreg.errors import GradregError

TOL = 1e-10


ARCHS = list(jacobian.example_models())


def _setup(arch: str, batch: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model, shape = jacobian.example_models()[arch]
    model = model.double()
    x = torch.randn(batch, *shape, dtype=torch.float64)
    k = model(x).shape[1]
    y = torch.randint(k, (batch,))
    return model, x, y


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    err = (a - b).abs().max().item() / max(1.0, b.abs().max().item())
    assert err <= TOL, f"relative error {err:.3e}"


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_regularizers_match_bruteforce(arch):
    model, x, y = _setup(arch)
    J = jacobian.logits(model, x)                                        # J_g: [B, K, D]
    p = torch.softmax(model(x), 1)
    Jp = jacobian.probabilities(model, x)        # J_p, brute force
    _close(regularizers.frobreg(model, x, y), J.pow(2).sum((1, 2)))
    _close(regularizers.jacreg(model, x, y), Jp.pow(2).sum((1, 2)))
    if "lenet" not in arch:  # the vmap-batched path (CUDA's default), checked here on CPU
        _close(regularizers.frobreg(model, x, y, vectorized=True), J.pow(2).sum((1, 2)))
        _close(regularizers.jacreg(model, x, y, vectorized=True), Jp.pow(2).sum((1, 2)))
    # J_p = (diag p − p pᵀ) J_g, the identity the chapter derives
    _close(Jp, (torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)) @ J)


@pytest.mark.parametrize("arch", ARCHS)
def test_projections_match_bruteforce(arch):
    model, x, y = _setup(arch)
    J = jacobian.logits(model, x)
    K = J.shape[1]
    r = torch.randn(K, dtype=torch.float64)
    _close(regularizers.spectreg(model, x, y, r=r), (J.transpose(1, 2) @ r).pow(2).sum(1))
    _close(regularizers.spectreg(model, x, y, r=r, spherical=True),
           (J.transpose(1, 2) @ (r / r.norm())).pow(2).sum(1))
    e_y = F.one_hot(y, K).double()
    _close(regularizers.onehot(model, x, y), (J.transpose(1, 2) @ e_y.unsqueeze(2)).pow(2).sum((1, 2)))
    if not arch.startswith("toy"):  # DataGrad for cross-entropy is the projection on p − y
        residual = (torch.softmax(model(x), 1) - e_y).unsqueeze(2)
        _close(regularizers.datagrad(model, x, y), (J.transpose(1, 2) @ residual).pow(2).sum((1, 2)))
    # and, for any loss, it is the squared norm of the per-example loss gradient
    loss = "squared_error" if arch.startswith("toy") else "cross_entropy"
    target = torch.randn(len(x), 1, dtype=torch.float64) if arch.startswith("toy") else y
    G = torch.stack([jacrev(lambda xi, t=t: losses.get(loss)(model(xi[None]), t[None])[0])(xi)
                     for xi, t in zip(x, target, strict=True)])
    _close(regularizers.datagrad(model, x, target, loss=loss), G.flatten(1).pow(2).sum(1))


def test_random_onehot_is_a_row_of_the_jacobian():
    model, x, y = _setup("mlp", batch=5)
    J = jacobian.logits(model, x)
    gen = torch.Generator().manual_seed(3)
    c = torch.randint(J.shape[1], (len(x),), generator=torch.Generator().manual_seed(3))
    expected = J[torch.arange(len(x)), c].pow(2).sum(1)
    _close(regularizers.random_onehot(model, x, y, generator=gen), expected)


def test_confidence_is_negative_entropy():
    model, x, y = _setup("mlp")
    p = torch.softmax(model(x), 1)
    _close(regularizers.confidence(model, x, y), (p * p.log()).sum(1))


def test_datagrad_same_pass_equals_separate_pass():
    model, x, y = _setup("lenet")
    xg = x.clone().requires_grad_(True)
    _close(regularizers.datagrad(model, xg, y, logits=model(xg)), regularizers.datagrad(model, x, y))


@pytest.mark.parametrize("arch", ["mlp", "lenet"])
def test_penalties_are_differentiable_in_parameters(arch):
    """The penalty's parameter gradient equals a finite difference (the double backward is right),
    also through LeNet's first convolution, whose derivatives are hand-written (gradreg.conv)."""
    model, x, y = _setup(arch)
    for name in ("datagrad", "spectreg", "frobreg", "jacreg"):
        pen = regularizers.get(name).penalty
        if name == "spectreg":
            pen = lambda m, x, y: regularizers.spectreg(m, x, y, r=torch.linspace(-1, 1, 10 if arch == "lenet" else 5, dtype=torch.float64))  # noqa: E731
        w = model[0].weight if arch == "lenet" else model[1].weight
        (g,) = torch.autograd.grad(pen(model, x, y).sum(), w)
        d = torch.randn_like(w)
        eps = 1e-6
        with torch.no_grad():
            w += eps * d
            up = pen(model, x, y).sum()
            w -= 2 * eps * d
            down = pen(model, x, y).sum()
            w += eps * d
        fd = (up - down) / (2 * eps)
        assert abs((g * d).sum().item() - fd.item()) <= 1e-6 * max(1.0, abs(fd.item())), name


def test_train_mode_batchnorm_couples_examples():
    """With batch statistics the per-example penalty is row i of ∂(Σ_j φ_j)/∂x — documented — and it
    differs from the decoupled ∂φ_i/∂x_i."""
    torch.manual_seed(0)
    model = models.mlp(in_features=6, hidden=5, depth=1, classes=4)
    model.insert(3, nn.BatchNorm1d(5, track_running_stats=False))  # batch statistics only
    model = model.double().train()
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.randint(4, (4,))
    # brute force: Jacobian of the *batch* loss sum with respect to the whole batch input
    G = jacrev(lambda z: F.cross_entropy(model(z), y, reduction="sum"))(x)        # [B, D]
    _close(regularizers.datagrad(model, x, y), G.pow(2).sum(1))
    # brute force of FrobReg in the coupled sense: Σ_k ‖∂(Σ_j g_jk)/∂x_i‖²
    Jsum = jacrev(lambda z: model(z).sum(0))(x)                                    # [K, B, D]
    _close(regularizers.frobreg(model, x, y), Jsum.pow(2).sum((0, 2)))
    # the decoupled per-example Jacobian (example i's own loss only) is a different quantity
    own = torch.stack([jacrev(lambda z, i=i: F.cross_entropy(model(z), y, reduction="none")[i])(x)[i]
                       for i in range(4)])
    assert (own.pow(2).sum(1) - G.pow(2).sum(1)).abs().max() > 1e-6


def test_spectreg_is_unbiased_for_frobenius():
    """E‖J_gᵀ r‖² = ‖J_g‖_F² over r ~ N(0, I): the Monte Carlo mean lands within 5 standard errors."""
    model, x, y = _setup("mlp", batch=2)
    gen = torch.Generator().manual_seed(0)
    samples = torch.stack([regularizers.spectreg(model, x, y, generator=gen).detach() for _ in range(400)])
    exact = regularizers.frobreg(model, x, y).detach()
    stderr = samples.std(0) / 20
    assert ((samples.mean(0) - exact).abs() <= 5 * stderr).all()


def test_registry_and_bad_names():
    assert set(regularizers.names()) == {"datagrad", "spectreg", "frobreg", "jacreg", "onehot",
                                         "random_onehot", "confidence"}
    with pytest.raises(GradregError, match="unknown regularizer 'gradnorm'"):
        regularizers.get("gradnorm")
    model, x, y = _setup("mlp")
    with pytest.raises(GradregError, match="r has shape"):
        regularizers.spectreg(model, x, y, r=torch.ones(3, dtype=torch.float64))


def test_vectorized_refuses_the_custom_convolution_on_cpu():
    model, x, y = _setup("lenet")
    with pytest.raises(GradregError, match="vectorized=True on CPU"):
        regularizers.frobreg(model, x, y, vectorized=True)

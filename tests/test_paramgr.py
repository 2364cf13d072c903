"""Parameter-space gradient regularization (``gradreg.paramgr``): every scheme against the exact
g + γHg, the error orders of the finite differences, F-GR = unnormalised SAM at γ = ε, parameters
and BatchNorm statistics left as they were, and flooding."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradreg import paramgr
from gradreg.errors import GradregError


def _smooth_net(seed: int = 0):
    """A smooth (tanh, softplus) float64 net, its batch, and the loss closure at its current weights."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, 3)).double()
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randint(3, (32,))
    net.batch = (x, y)
    return net, lambda: nn.functional.cross_entropy(net(x), y)


def _exact(net: nn.Module, gamma: float) -> list[torch.Tensor]:
    """g + γHg from the full Hessian (torch.func on a flat parameter vector): the brute-force reference."""
    from torch.func import functional_call, grad, hessian
    x, y = net.batch
    names, shapes = zip(*[(n, p.shape) for n, p in net.named_parameters()])
    sizes = [math.prod(s) for s in shapes]
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])

    def L(v):
        parts = {n: t.view(s) for n, t, s in zip(names, torch.split(v, sizes), shapes)}
        return nn.functional.cross_entropy(functional_call(net, parts, (x,)), y)

    g = grad(L)(flat)
    return list(torch.split(g + gamma * hessian(L)(flat) @ g, sizes))


def _flat(ts):
    return torch.cat([t.flatten() for t in ts])


def test_double_backprop_is_exact():
    net, loss_fn = _smooth_net()
    got = paramgr.gr_gradient(loss_fn, list(net.parameters()), gamma=0.3, method="db")
    assert torch.allclose(_flat(got), _flat(_exact(net, 0.3)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method, order", [("forward", 1), ("backward", 1), ("central", 2)])
def test_finite_differences_converge_at_their_order(method, order):
    """Relative error of the Hg estimate at ε and ε/4: the ratio is 4^order (smooth net, float64)."""
    net, loss_fn = _smooth_net()
    params = list(net.parameters())
    g = _flat(paramgr.gr_gradient(loss_fn, params, gamma=0.0, method="db"))
    hg = _flat(paramgr.gr_gradient(loss_fn, params, gamma=1.0, method="db")) - g
    errors = []
    for eps in (1e-2, 2.5e-3):
        est = _flat(paramgr.gr_gradient(loss_fn, params, gamma=1.0, method=method, eps=eps)) - g
        errors.append(((est - hg).norm() / hg.norm()).item())
    assert errors[0] / errors[1] == pytest.approx(4 ** order, rel=0.15), errors


def test_forward_gr_at_gamma_equal_eps_is_unnormalised_sam():
    net, loss_fn = _smooth_net()
    params = list(net.parameters())
    eps = 0.05
    fgr = paramgr.gr_gradient(loss_fn, params, gamma=eps, method="forward", eps=eps)
    g = _flat(paramgr.gr_gradient(loss_fn, params, gamma=0.0, method="db"))
    sam = paramgr.sam_gradient(loss_fn, params, rho=eps * g.norm().item())    # ρ = ε‖g‖: no normalisation
    assert torch.allclose(_flat(fgr), _flat(sam), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", paramgr.METHODS)
def test_parameters_and_batchnorm_statistics_are_left_as_they_were(method):
    """The evaluations at θ ± εg restore θ bit for bit, and BatchNorm's running statistics are
    updated once — by the evaluation at θ, as a plain step would — not again at the perturbed points."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).train()
    x, y = torch.randn(16, 4), torch.randint(2, (16,))
    loss_fn = lambda: nn.functional.cross_entropy(net(x), y)  # noqa: E731
    before = [p.detach().clone() for p in net.parameters()]
    reference = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).train()
    reference.load_state_dict(net.state_dict())
    reference(x)                                                 # one update of the running statistics
    paramgr.gr_gradient(loss_fn, list(net.parameters()), gamma=0.1, method=method, eps=1e-2, model=net)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    bn, ref = net[1], reference[1]
    assert torch.allclose(bn.running_mean, ref.running_mean) and torch.allclose(bn.running_var, ref.running_var)
    assert bn.num_batches_tracked.item() == 1


def test_flooding_ascends_below_the_level_and_descends_above():
    w = torch.tensor(1.0, requires_grad=True)
    for level, sign in ((2.0, -1.0), (0.5, 1.0)):                # L = w² = 1: below 2, above 0.5
        (g,) = torch.autograd.grad(paramgr.flooded(w * w, level), w)
        assert g.item() == pytest.approx(sign * 2.0)
    assert paramgr.flooded(torch.tensor(0.3), 0.5).item() == pytest.approx(0.7)


@pytest.mark.parametrize("kwargs, message", [
    (dict(gamma=0.1, method="adam"), "unknown method 'adam'"),
    (dict(gamma=-1.0, method="db"), "gamma must be a number >= 0"),
    (dict(gamma=0.1, method="forward"), "method 'forward' needs a step eps > 0, got None"),
    (dict(gamma=0.1, method="central", eps=0.0), "needs a step eps > 0, got 0.0"),
])
def test_bad_arguments_are_one_clear_error(kwargs, message):
    net, loss_fn = _smooth_net()
    with pytest.raises(GradregError, match=message):
        paramgr.gr_gradient(loss_fn, list(net.parameters()), **kwargs)
    with pytest.raises(GradregError, match="flood level b must be"):
        paramgr.flooded(torch.tensor(1.0), -1)

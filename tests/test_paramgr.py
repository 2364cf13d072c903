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


# ---------------------------------------------------------------- the chapters' checks: error orders, ReLU switches,
# ---------------------------------------------------------------- the flooding pair

def _params(net):
    return list(net.parameters())


@pytest.mark.parametrize("method, low, high, order", [("forward", 1e-5, 1e-2, 1), ("backward", 1e-5, 1e-2, 1),
                                                       ("central", 1e-3, 1e-1, 2)])
def test_fitted_slopes_are_the_orders_of_the_finite_differences(method, low, high, order):
    """On a smooth float64 net, log error against log ε has slope 1, 1, 2 (above the round-off floor)."""
    net, loss_fn = _smooth_net()
    eps = [10 ** (k / 4) for k in range(-24, -3)]
    errors = paramgr.fd_errors(loss_fn, _params(net), eps)
    assert set(errors) == set(paramgr.FD_METHODS) and all(len(v) == len(eps) for v in errors.values())
    assert paramgr.fitted_slope(eps, errors[method], low, high) == pytest.approx(order, abs=0.1)


def test_fd_errors_leave_the_parameters_and_agree_with_gr_gradient():
    net, loss_fn = _smooth_net()
    params = _params(net)
    before = [p.detach().clone() for p in params]
    (err,) = paramgr.fd_errors(loss_fn, params, [1e-3], methods=("central",))["central"]
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    g, hg = paramgr.gradient_and_hvp(loss_fn, params)
    est = _flat(paramgr.gr_gradient(loss_fn, params, gamma=1.0, method="central", eps=1e-3)) - _flat(g)
    assert err == pytest.approx(((est - _flat(hg)).norm() / _flat(hg).norm()).item(), rel=1e-3)
    exact = _flat(_exact(net, 1.0)) - _flat(g)
    assert torch.allclose(_flat(hg), exact, rtol=1e-9, atol=1e-12)


def test_fitted_slope_of_a_power_law():
    eps = [1e-3, 1e-2, 1e-1, 1.0]
    assert paramgr.fitted_slope(eps, [3 * e ** 2 for e in eps]) == pytest.approx(2.0)
    assert paramgr.fitted_slope(eps, [1.0, 1e-2, 1e-1, 1.0], low=1e-2) == pytest.approx(1.0)


def test_relu_units_switch_only_for_a_large_enough_step():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).double()
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(3, (64,))
    params = _params(net)
    g, _ = paramgr.gradient_and_hvp(lambda: nn.functional.cross_entropy(net(x), y), params)
    before = [p.detach().clone() for p in params]
    fractions = paramgr.activation_switches(net, x, params, g, [1e-9, 1e-1, 10.0])
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert fractions[0] == 0.0 < fractions[1] < fractions[2] <= 1.0


def test_flooding_pair_is_the_fgr_penalty_term_to_rounding():
    """Ascent below the level, then descent above it: θ'' − θ equals −η(∇L(θ + ηg) − g) to float64
    rounding, and descent-then-ascent equals B-GR's term; the other patterns equal their closed forms."""
    net, loss_fn = _smooth_net()
    params = _params(net)
    before = [p.detach().clone() for p in params]
    levels = paramgr.flood_levels(loss_fn, params, 0.05)
    pairs = {k: paramgr.flooding_pair(loss_fn, params, lr=0.05, b=b) for k, b in levels.items()}
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert {k: p.pattern for k, p in pairs.items()} == {k: k for k in paramgr.PATTERNS}
    pair = pairs["ascent-descent"]
    assert pair.two_sided and pair.losses[0] < pair.b < pair.losses[1]
    assert pair.rounding_units("fgr_term") <= 1.01 and pair.relative_gap("fgr_term") < 1e-11
    assert pairs["descent-ascent"].rounding_units("bgr_term") <= 1.01
    assert all(p.rounding_units("predicted") <= 1.01 for p in pairs.values())
    assert pairs["two descents"].relative_gap("exact") > 10          # no curvature step: ≈ −2ηg
    # the F-GR step with γ = ε = η is the gradient step −ηg plus the pair
    fgr_step = paramgr.gr_gradient(loss_fn, params, gamma=0.05, method="forward", eps=0.05)
    g, _ = paramgr.gradient_and_hvp(loss_fn, params)
    assert torch.allclose(_flat([-0.05 * s for s in fgr_step]), _flat([-0.05 * x for x in g]) + _flat(pair.displacement),
                          rtol=0, atol=1e-14)


def test_flooding_pair_approaches_the_exact_curvature_step_at_order_eta():
    net, loss_fn = _smooth_net()
    params = _params(net)
    etas = [1e-3, 3e-3, 1e-2, 3e-2]
    errors = [paramgr.flooding_pair(loss_fn, params, lr=e, b=paramgr.flood_levels(loss_fn, params, e)["ascent-descent"])
              .relative_gap("exact") for e in etas]
    assert paramgr.fitted_slope(etas, errors) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("call, message", [
    (lambda lf, ps, net: paramgr.fd_errors(lf, ps, []), "eps_values must be a non-empty sequence"),
    (lambda lf, ps, net: paramgr.fd_errors(lf, ps, [1e-3, -1.0]), "eps_values must be a non-empty sequence"),
    (lambda lf, ps, net: paramgr.fd_errors(lf, ps, [1e-3], methods=("db",)), "methods must be a non-empty tuple"),
    (lambda lf, ps, net: paramgr.fd_errors(lf, [], [1e-3]), "params must be a non-empty list"),
    (lambda lf, ps, net: paramgr.fitted_slope([1e-3, 1e-2], [1.0]), "same length"),
    (lambda lf, ps, net: paramgr.fitted_slope([1e-3, 1e-2], [1.0, 2.0], low=1e-2), "at least two points"),
    (lambda lf, ps, net: paramgr.activation_switches(net, net.batch[0], ps, ps, [1e-3]), "needs a model with nn.ReLU"),
    (lambda lf, ps, net: paramgr.activation_switches(net, net.batch[0], ps, ps[:1], [1e-3]), "one tensor per parameter"),
    (lambda lf, ps, net: paramgr.flooding_pair(lf, ps, lr=0.0, b=0.1), "learning rate lr must be"),
    (lambda lf, ps, net: paramgr.flooding_pair(lf, ps, lr=0.1, b=-1.0), "flood level b must be"),
    (lambda lf, ps, net: paramgr.flood_levels(lf, ps, lr=float("nan")), "learning rate lr must be"),
    (lambda lf, ps, net: paramgr.flooding_pair(lf, ps, lr=0.1, b=0.1).relative_gap("sam"), "unknown term 'sam'"),
])
def test_bad_arguments_of_the_checks_are_one_clear_error(call, message):
    net, loss_fn = _smooth_net()
    params = _params(net)
    before = [p.detach().clone() for p in params]
    with pytest.raises(GradregError, match=message):
        call(loss_fn, params, net)
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_batch_loss_is_the_mean_loss_at_the_current_parameters():
    net, loss_fn = _smooth_net()
    closure = paramgr.batch_loss(net, *net.batch)
    assert closure().item() == pytest.approx(loss_fn().item(), rel=1e-15)
    with torch.no_grad():
        net[0].bias.add_(1.0)
    assert closure().item() == pytest.approx(loss_fn().item(), rel=1e-15)
    with pytest.raises(GradregError, match="unknown loss 'hinge'"):
        paramgr.batch_loss(net, *net.batch, loss="hinge")


def test_relative_error_over_all_parameters():
    a, b = [torch.ones(2), torch.zeros(1)], [torch.ones(2), torch.full((1,), 2.0)]
    assert paramgr.relative_error(a, b) == pytest.approx(2 / math.sqrt(6))
    with pytest.raises(GradregError, match="equally long lists"):
        paramgr.relative_error(a, b[:1])


def test_float32_estimates_hit_the_round_off_floor():
    """In float32 the one-sided error bottoms out near √u (≈ 2e-4), far above float64's; at a step
    below the parameters' rounding θ + εg is θ itself, the estimate is 0 and the error exactly 1."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(32, 5), torch.randint(3, (32,))
    errors = paramgr.fd_errors(paramgr.batch_loss(net, x, y), _params(net), [1e-12, 1e-4, 1e-3, 1e-2],
                               methods=("forward",))["forward"]
    assert errors[0] == 1.0
    assert 1e-5 < min(errors[1:]) < 1e-2
    with pytest.raises(GradregError, match="low must be a number or None"):
        paramgr.fitted_slope([1e-3, 1e-2], [1.0, 2.0], low="0")

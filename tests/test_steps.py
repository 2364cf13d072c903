"""Training-step choices (``gradreg.steps``) inside the one training loop, and the pieces Part II adds:
config checks, the wiring of each step into ``train.step``, repeated random draws within a step,
BatchNorm statistics, seed batching, the diagonal linear network and its Q_α interpolator."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from gradreg import data, experiments, karakida2023, models, paramgr, steps
from gradreg.config import TrainConfig
from gradreg.errors import GradregError
from gradreg.seeds import train_seeds
from gradreg.train import cosine, make_optimizer, step, train

DIAG = TrainConfig(dataset="sparse_linear", n_train=40, n_test=200, model="diagonal_linear", loss="squared_error",
                   optimizer="sgd", lr=0.01, schedule="constant", weight_decay=0.0, iterations=300, batch_size=40,
                   eval_points=None, device="cpu", log_every=100)


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("changes, message", [
    ({"step": "gr"}, "unknown step 'gr'"),
    ({"step": "gr-forward", "step_options": {"gamma": 0.1}}, "needs step_options 'eps'"),
    ({"step": "gr-db", "step_options": {"gamma": -1.0}}, "'gamma' must be a finite number >= 0"),
    ({"step": "gr-backward", "step_options": {"gamma": 0.1, "eps": 0.0}}, "'eps' must be a finite number > 0"),
    ({"step": "sam", "step_options": {"rho": float("nan")}}, "'rho' must be a finite number"),
    ({"step": "flooding", "step_options": {"b": True}}, "'b' must be a finite number"),
    ({"step": "plain", "step_options": {"gamma": 0.1}}, "unknown step_options gamma for step 'plain'"),
    ({"step": "gr-db", "step_options": [0.1]}, "step_options must be a dict"),
    ({"step": 3}, "step must be a string"),
    ({"optimizer": "momentum", "momentum": 0.0}, "momentum must be > 0"),
    ({"schedule": "linear"}, "unknown schedule"),
])
def test_bad_step_configs_are_one_clear_error(changes, message):
    with pytest.raises(GradregError, match=message):
        TrainConfig(**changes)


def test_cosine_schedule_runs_from_one_to_zero():
    f = cosine(100)
    assert f(0) == 1.0 and abs(f(50) - 0.5) < 1e-12 and f(100) < 1e-12


def test_optimizers_plain_sgd_and_heavy_ball():
    net = nn.Linear(3, 2)
    assert make_optimizer(TrainConfig(optimizer="sgd", lr=0.1), net).param_groups[0]["momentum"] == 0
    group = make_optimizer(TrainConfig(optimizer="momentum", lr=0.1), net).param_groups[0]
    assert group["momentum"] == 0.9 and group["nesterov"] is False


# ---------------------------------------------------------------- each step in train.step

def _mlp_step(step_name: str, options: dict, head_dropout: bool = False, seed: int = 0):
    """Δθ of one train.step under plain SGD (lr 1, no decay): minus the step rule's gradient."""
    torch.manual_seed(seed)
    cfg = TrainConfig(dataset="cifar10", model="mlp", optimizer="sgd", lr=1.0, weight_decay=0.0, schedule="constant",
                      model_options={"in_features": 3072, "hidden": 8, "depth": 1, "activation": "tanh"},
                      step=step_name, step_options=options)
    net = models.build(cfg.model, **cfg.model_options).double()
    if head_dropout:
        net.insert(3, nn.Dropout(0.5))
    x, y = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.randint(10, (6,))
    before = [p.detach().clone() for p in net.parameters()]
    torch.manual_seed(seed + 1)
    loss = step(net, make_optimizer(cfg, net), list(net.parameters()), x, y, cfg, torch.Generator().manual_seed(0))
    return [b - p.detach() for b, p in zip(before, net.parameters())], loss, net, x, y


def test_gr_db_step_is_g_plus_gamma_hg():
    delta, _, net, x, y = _mlp_step("gr-db", {"gamma": 0.3})
    with torch.no_grad():
        for p, d in zip(net.parameters(), delta):
            p.add_(d)                                        # back to θ
    want = paramgr.gr_gradient(lambda: nn.functional.cross_entropy(net(x), y), list(net.parameters()),
                               gamma=0.3, method="db")
    assert all(torch.allclose(d, w, rtol=1e-10, atol=1e-12) for d, w in zip(delta, want))


@pytest.mark.parametrize("name", ["gr-forward", "gr-backward", "gr-central"])
def test_finite_difference_steps_approach_db(name):
    db, *_ = _mlp_step("gr-db", {"gamma": 0.3})
    fd, *_ = _mlp_step(name, {"gamma": 0.3, "eps": 1e-7})
    err = math.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(fd, db))) / math.sqrt(sum((b ** 2).sum() for b in db))
    assert err < 1e-3


def test_a_step_repeats_its_dropout_masks():
    """With dropout, F-GR's second evaluation must see the first one's mask: then it approaches DB
    (a fresh mask would make the difference quotient O(1/ε) wrong)."""
    db, *_ = _mlp_step("gr-db", {"gamma": 0.3}, head_dropout=True)
    fd, *_ = _mlp_step("gr-forward", {"gamma": 0.3, "eps": 1e-6}, head_dropout=True)
    err = math.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(fd, db))) / math.sqrt(sum((b ** 2).sum() for b in db))
    assert err < 1e-3


def test_a_step_consumes_random_numbers_like_one_evaluation():
    after = {}
    for name, options in (("plain", {}), ("gr-central", {"gamma": 0.1, "eps": 0.01})):
        _mlp_step(name, options, head_dropout=True)
        after[name] = torch.rand(3)
    assert torch.equal(after["plain"], after["gr-central"])


def test_sam_and_flooding_steps():
    sam, loss, net, x, y = _mlp_step("sam", {"rho": 0.05})
    with torch.no_grad():
        for p, d in zip(net.parameters(), sam):
            p.add_(d)
    closure = lambda: nn.functional.cross_entropy(net(x), y)   # noqa: E731
    want = paramgr.sam_gradient(closure, list(net.parameters()), rho=0.05)
    assert all(torch.allclose(d, w, rtol=1e-10, atol=1e-12) for d, w in zip(sam, want))
    up, loss, *_ = _mlp_step("flooding", {"b": 100.0})      # below the flood level: an ascent step
    down, *_ = _mlp_step("plain", {})
    assert all(torch.allclose(u, -d, rtol=1e-12, atol=1e-14) for u, d in zip(up, down))
    assert loss < 100.0


def test_batchnorm_statistics_move_once_per_step():
    stats = {}
    for name, options in (("plain", {}), ("gr-forward", {"gamma": 0.1, "eps": 0.5}), ("sam", {"rho": 0.5})):
        torch.manual_seed(0)
        cfg = TrainConfig(dataset="cifar10", model="cifar_resnet", model_options={"width": 1, "blocks": 1},
                          optimizer="sgd", lr=0.1, step=name, step_options=options)
        net = models.build(cfg.model, **cfg.model_options)
        x, y = torch.randn(4, 3, 32, 32), torch.randint(10, (4,))
        step(net, make_optimizer(cfg, net), list(net.parameters()), x, y, cfg)
        stats[name] = [b.clone() for b in net.buffers()]
    for name in ("gr-forward", "sam"):
        assert all(torch.equal(a, b) for a, b in zip(stats["plain"], stats[name])), name


def test_steps_compose_with_input_regularizers():
    cfg = TrainConfig(n_train=100, n_test=100, iterations=3, eval_points=50, device="cpu", model="mlp",
                      regularizer="datagrad", weight=1.0, step="gr-forward", step_options={"gamma": 0.01, "eps": 0.05})
    x = torch.randn(100, 1, 28, 28)
    ds = data.Dataset("mnist", x, torch.randint(10, (100,)), x, torch.randint(10, (100,)), 10)
    assert train(cfg, ds, progress=False)["status"] == "ok"


# ---------------------------------------------------------------- seed batching

def test_gr_steps_batch_seeds_exactly():
    cfg = DIAG.replace(step="gr-forward", step_options={"gamma": 0.05, "eps": 0.1}, iterations=50)
    stacked = train_seeds(cfg, [0, 1], progress=False)
    for s, out in zip((0, 1), stacked):
        single = train(cfg.replace(seed=s), progress=False)
        assert math.isclose(out["metrics"]["test_loss"], single["metrics"]["test_loss"], rel_tol=1e-4)


def test_steps_that_mix_members_train_one_seed_at_a_time():
    cfg = DIAG.replace(step="sam", step_options={"rho": 0.05})
    with pytest.raises(GradregError, match="mixes the members"):
        train_seeds(cfg, [0, 1], progress=False)
    todo = [("c", s, cfg.replace(seed=s)) for s in range(3)]
    assert [len(u) for u in experiments.units(todo, batch_seeds=True)] == [1, 1, 1]
    assert [len(u) for u in experiments.units([(c, s, DIAG) for c, s, _ in todo], batch_seeds=True)] == [3]


def test_records_older_than_the_step_field_are_not_stale():
    exp = experiments.get("karakida-flooding")
    cfg = exp.config("smoke", "gd", 0).to_dict()
    old = {k: v for k, v in json.loads(json.dumps(cfg)).items() if k not in ("step", "step_options")}
    assert experiments.stale("karakida-flooding", "smoke", [{"cell": "gd", "seed": 0, "config": old}]) == []
    changed = {**old, "step": "sam"}
    assert experiments.stale("karakida-flooding", "smoke", [{"cell": "gd", "seed": 0, "config": changed}])


# ---------------------------------------------------------------- the diagonal linear network

def test_sparse_linear_data():
    d = data.sparse_linear(40, 3, n_test=500)
    star = data.sparse_beta(3)
    assert d.x_train.shape == (40, 100) and d.y_test.shape == (500, 1)
    assert int((star != 0).sum()) == 5 and set(star.unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(d.y_test.double().flatten(), d.x_test.double() @ star, atol=1e-4)   # noise-free
    assert torch.allclose(karakida2023.true_beta(d), star, atol=1e-4)
    assert not torch.equal(d.x_train, data.sparse_linear(40, 4).x_train)


def test_diagonal_network_starts_at_zero():
    net = models.build("diagonal_linear", alpha=0.3)
    assert torch.equal(net.beta, torch.zeros(100)) and torch.equal(net.u, torch.full((100,), 0.3))
    with pytest.raises(GradregError, match="alpha"):
        models.build("diagonal_linear", alpha=0.0)


@pytest.mark.parametrize("alpha", [0.01, 1.0])
def test_q_alpha_solution_interpolates_and_is_optimal(alpha):
    d = data.sparse_linear(40, 0)
    x, y = d.x_train.double(), d.y_train.double().flatten()
    beta = karakida2023.q_alpha_solution(x, y, alpha)
    assert (x @ beta - y).abs().max() < 1e-8
    # optimality: ∇Q_α(β) = arcsinh(β / 2α²) lies in the row space of X
    grad_q = torch.asinh(beta / (2 * alpha ** 2))
    nu = torch.linalg.lstsq(x.T, grad_q[:, None]).solution
    assert (x.T @ nu).flatten().sub(grad_q).abs().max() < 1e-6


def test_small_alpha_is_sparser_than_large_alpha():
    d = data.sparse_linear(40, 0)
    small = karakida2023.q_alpha_solution(d.x_train, d.y_train, 1e-3)
    large = karakida2023.q_alpha_solution(d.x_train, d.y_train, 10.0)
    minimum_l2 = torch.linalg.pinv(d.x_train.double()) @ d.y_train.double().flatten()
    assert small.abs().sum() < large.abs().sum()
    assert torch.allclose(large, minimum_l2, atol=1e-2)


def test_fit_alpha_recovers_the_scale():
    d = data.sparse_linear(40, 1)
    beta = karakida2023.q_alpha_solution(d.x_train, d.y_train, 0.2)
    assert math.isclose(karakida2023.fit_alpha(beta, d.x_train, d.y_train), 0.2, rel_tol=1e-3)


def test_gradient_descent_reaches_the_q_alpha_interpolator():
    """The continuous-time picture: GD with a small step from u = v = α ends at the Q_α interpolator
    of its per-coordinate scales √(u_i v_i) (which stay ≈ α without GR)."""
    out = train(DIAG.replace(iterations=4000, lr=0.02, model_options={"alpha": 0.3}), progress=False,
                extra_metrics=karakida2023.diagonal_metrics)
    m = out["metrics"]
    assert m["q_coord_gap"] < 1e-2 and math.isclose(m["alpha_fit"], 0.3, rel_tol=0.05)
    assert 0.28 < m["alpha_coord_min"] <= m["alpha_coord_max"] <= 0.3 + 1e-6


def test_gr_shrinks_the_effective_scales():
    gd = train(DIAG.replace(model_options={"alpha": 0.1}), progress=False, extra_metrics=karakida2023.diagonal_metrics)
    gr = train(DIAG.replace(model_options={"alpha": 0.1}, step="gr-db", step_options={"gamma": 0.05}),
               progress=False, extra_metrics=karakida2023.diagonal_metrics)
    assert gr["metrics"]["alpha_coord_min"] < gd["metrics"]["alpha_coord_min"]


def test_wide_resnet_shapes_and_bad_depth():
    net = models.build("wide_resnet", depth=10, widen=1)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(GradregError, match="6n \\+ 4"):
        models.build("wide_resnet", depth=12)


@pytest.mark.parametrize("method, eps", [("db", None), ("forward", 0.1), ("backward", 0.1)])
def test_closed_form_gr_direction_of_the_diagonal_network(method, eps):
    """The chapter's formulas for ∂L̃/∂u, ∂L̃/∂v against paramgr on the network itself (float64)."""
    d = data.sparse_linear(40, 0)
    x, y = d.x_train.double(), d.y_train.double()
    torch.manual_seed(0)
    net = models.build("diagonal_linear", alpha=0.3).double()
    with torch.no_grad():
        net.u.add_(0.1 * torch.randn(100, dtype=torch.float64))
        net.v.add_(0.1 * torch.randn(100, dtype=torch.float64))
    want = paramgr.gr_gradient(lambda: ((net(x) - y) ** 2).mean(), [net.u, net.v], gamma=0.05, method=method, eps=eps)
    got = karakida2023.gr_direction(net.u.detach(), net.v.detach(), x, y, 0.05, eps, method)
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(want, got))


def test_basis_pursuit_is_the_small_alpha_limit():
    d = data.sparse_linear(40, 0)
    l1 = karakida2023.min_l1_interpolator(d.x_train, d.y_train)
    assert (d.x_train.double() @ l1 - d.y_train.double().flatten()).abs().max() < 1e-6
    for alpha, gap in ((1e-2, 0.2), (1e-4, 0.1)):
        q = karakida2023.q_alpha_solution(d.x_train, d.y_train, alpha)
        assert q.abs().sum() >= l1.abs().sum() - 1e-6 and (q - l1).norm() < gap

"""CIFAR-10 with a residual network (E6, E7): the validation split, learning curves, weights chosen on
validation, and double backward through train-mode BatchNorm and strided, padded convolutions
checked against float64 finite differences."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gradreg import data, experiments, models, regularizers, results, varga2017
from gradreg.errors import GradregError
from gradreg.train import TrainConfig, train

# the offline subset's files are not the official ones: gradreg says so once per folder (tested elsewhere)
pytestmark = pytest.mark.filterwarnings("ignore:.*differ from the official CIFAR-10 files")

# ---------------------------------------------------------------- the validation split


def test_validation_protocol_holds_out_the_last_training_batch(data_dir):
    """Protocol "validation" trains on the first four batch files and evaluates on data_batch_5:
    disjoint from the training images, never the test batch."""
    raw = data.cifar10_raw(str(data_dir))
    held = raw["validation_size"]
    pool = len(raw["y_train"]) - held
    d = data.cifar10(None, seed=0, protocol="validation", data_dir=str(data_dir))
    assert len(d.x_train) == pool and len(d.x_test) == held
    assert torch.equal(d.y_test, raw["y_train"][pool:])
    # the held-out images, standardised like the training subset, are the fifth batch's
    mean = raw["x_train"][:pool].float().div(255).mean((0, 2, 3))
    std = raw["x_train"][:pool].float().div(255).std((0, 2, 3))
    expected = (raw["x_train"][pool:].float().div(255) - mean[:, None, None]) / std[:, None, None]
    assert torch.allclose(d.x_test, expected, atol=1e-3)
    # no training image of the split is a held-out image (whole images compared, as raw bytes)
    train_images = {x.numpy().tobytes() for x in raw["x_train"][:pool]}
    assert not any(x.numpy().tobytes() in train_images for x in raw["x_train"][pool:])
    assert torch.equal(d.y_train.bincount(minlength=10), raw["y_train"][:pool].bincount(minlength=10))
    with pytest.raises(GradregError, match=f"n_train={pool + 1} asks for more than the {pool:,}"):
        data.cifar10(pool + 1, protocol="validation", data_dir=str(data_dir))
    with pytest.raises(GradregError, match="unknown CIFAR-10 protocol 'paper'"):
        data.cifar10(10, protocol="paper", data_dir=str(data_dir))


def test_config_bounds_the_validation_pool():
    base = dict(dataset="cifar10", model="cifar_resnet", model_options={"width": 1, "blocks": 1})
    TrainConfig(**base, protocol="validation", n_train=40000)
    with pytest.raises(GradregError, match=r"n_train \(cifar10, at most 40000\)"):
        TrainConfig(**base, protocol="validation", n_train=40001)


# ---------------------------------------------------------------- learning curves

def test_learning_curve_is_recorded_without_changing_training(data_dir):
    cfg = TrainConfig(dataset="cifar10", model="cifar_resnet", model_options={"width": 1, "blocks": 1, "init": "authors"},
                      n_train=64, n_test=50, batch_size=16, iterations=4, optimizer="nesterov", lr=0.01,
                      regularizer="datagrad", weight=1.0, eval_points=8, device="cpu")
    plain = train(cfg, data_dir=str(data_dir), progress=False)
    curved = train(cfg.replace(curve_every=2), data_dir=str(data_dir), progress=False)
    assert plain["curve"] == [] and [p["iteration"] for p in curved["curve"]] == [2, 4]
    assert plain["history"] == curved["history"] and plain["metrics"] == curved["metrics"]
    last = curved["curve"][-1]     # the curve's last point is the final evaluation's test numbers
    assert last["test_accuracy"] == curved["metrics"]["test_accuracy"]
    assert last["test_loss"] == pytest.approx(curved["metrics"]["test_loss"], rel=1e-6)


# ---------------------------------------------------------------- weights chosen on validation

def _set_accuracies(path, accuracy: dict[str, float], status: dict[str, str] | None = None) -> None:
    stored = json.loads(path.read_text())
    for r in stored["records"]:
        r["metrics"]["test_accuracy"] = accuracy.get(r["cell"], 0.0)
        r["status"] = (status or {}).get(r["cell"], "ok")
    path.write_text(json.dumps(stored))


def test_cifar10_full_takes_the_weights_chosen_on_validation(results_dir, data_dir):
    """cifar10-full's regularized cells get the weight with the best mean validation accuracy of the
    stored sweep (a diverged run counts as chance, ties go to the smaller weight); without the sweep
    there is one error naming its command; and a changed sweep makes the stored test runs stale."""
    with pytest.raises(GradregError, match="lacks 4 run.*gradreg run cifar10-full-val --profile smoke"):
        experiments.get("cifar10-full").configs("smoke", results_dir=str(results_dir))
    experiments.run("cifar10-full-val", "smoke", results_dir=str(results_dir), data_dir=str(data_dir),
                    device="cpu", progress=False, log=lambda _: None)
    path = results_dir / "cifar10-full-val" / "smoke.json"
    _set_accuracies(path, {"baseline": 50, "spectreg/0.01": 40, "datagrad/0.01": 30, "datagrad/0.1": 30})
    assert varga2017.chosen_weights("smoke", str(results_dir)) == {"spectreg": 0.01, "datagrad": 0.01}
    _set_accuracies(path, {"datagrad/0.01": 30, "datagrad/0.1": 31})
    assert varga2017.chosen_weights("smoke", str(results_dir))["datagrad"] == 0.1
    _set_accuracies(path, {"datagrad/0.01": 11, "datagrad/0.1": 90}, {"datagrad/0.1": "diverged"})
    assert varga2017.chosen_weights("smoke", str(results_dir))["datagrad"] == 0.01
    grid = {c: cfg for c, _, cfg in experiments.get("cifar10-full").configs("smoke", results_dir=str(results_dir))}
    assert grid["datagrad"].weight == 0.01 and grid["spectreg"].weight == 0.01 and grid["baseline"].weight == 0
    # a stored test run made at the old choice is refused once the sweep chooses differently
    record = {"experiment": "cifar10-full", "profile": "smoke", "cell": "datagrad", "seed": 0, "status": "ok",
              "metrics": {"test_accuracy": 1.0}, "history": [[1, 0.1]], "iterations_done": 1,
              "config": json.loads(json.dumps(grid["datagrad"].to_dict())), "provenance": {}}
    store = results.Store("cifar10-full", "smoke", str(results_dir))
    store.prepare()
    store.add(record)
    assert experiments.stale("cifar10-full", "smoke", store.records(), str(results_dir)) == []
    _set_accuracies(path, {"datagrad/0.01": 30, "datagrad/0.1": 31})
    assert experiments.stale("cifar10-full", "smoke", store.records(), str(results_dir)) == [
        "datagrad seed 0: weight 0.01 → 0.1"]


def test_e6_and_e7_follow_the_authors_scripts():
    small, full = experiments.get("cifar10-small"), experiments.get("cifar10-full")
    for exp in (small, full, experiments.get("cifar10-full-val")):
        b = exp.base
        assert (b.model, b.model_options, b.optimizer, b.momentum, b.batch_size, b.schedule) == (
            "cifar_resnet", {"init": "authors", "width": 3, "blocks": 3}, "nesterov", 0.9, 128, "piecewise")
    assert (small.base.n_train, small.base.lr, small.base.weight_decay, small.base.iterations,
            small.base.augment) == (2000, 0.01, 0.003, 50000, "none")
    assert {c: (v.get("regularizer"), v.get("weight")) for c, v in small.cells.items()} == {
        "baseline": (None, None), "datagrad": ("datagrad", 1.0), "spectreg": ("spectreg", 0.003),
        "confidence": ("confidence", 0.384)}
    assert (full.base.n_train, full.base.lr, full.base.weight_decay, full.base.iterations,
            full.base.augment, full.base.protocol) == (None, 0.1, 1e-4, 200000, "shift_flip", "official")
    assert experiments.get("cifar10-full-val").base.protocol == "validation"
    for exp in (small, full):
        assert exp.profile("paper").seeds == 10 and exp.profile("cpu").seeds >= 3


# ---------------------------------------------------------------- double backward through BN and strided convs

def _directional_check(model: nn.Module, penalty, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """⟨∂P/∂θ, v⟩ along a random direction v of all parameters: by autograd (double backward) in
    float32 and in float64, and by a central difference of P in float64. The step is tiny (1e-7 per
    unit of v) because ReLU units switch: at 1e-5 the difference already crosses kinks and is off
    by a factor of several (measured), while autograd differentiates the current linear piece."""
    model.train()
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(1)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]

    def directional(dtype: torch.dtype) -> float:
        model.to(dtype)
        grads = torch.autograd.grad(penalty(model, x.to(dtype), y).mean(), params, allow_unused=True)
        return sum((g.double() * d).sum() for g, d in zip(grads, v) if g is not None).item()  # None: no
        # dependence (SpectReg's ‖J_gᵀ r‖² does not see the last bias)

    auto32, auto64 = directional(torch.float32), directional(torch.float64)
    base = [p.detach().clone() for p in params]

    def at(step: float) -> float:
        with torch.no_grad():
            for p, p0, d in zip(params, base, v):
                p.copy_(p0 + step * d)
        return penalty(model, x.double(), y).mean().item()

    h = 1e-7
    fd = (at(h) - at(-h)) / (2 * h)
    with torch.no_grad():
        for p, p0 in zip(params, base):
            p.copy_(p0)
    model.float()
    return auto32, auto64, fd


@pytest.mark.parametrize("name", ["datagrad", "spectreg"])
def test_double_backward_through_train_mode_batchnorm_and_strided_convs(name):
    """The residual net's building blocks — a stride-2, padding-1 convolution, BatchNorm with batch
    statistics, the pooled, zero-padded shortcut — under the input-gradient penalties: the parameter
    gradient that double backward computes in float32 matches float64 finite differences."""
    torch.manual_seed(0)
    model = models.cifar_resnet(width=1, blocks=1, init="authors")
    for m in model.modules():              # BatchNorm with non-trivial scale and shift
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(10, (6,))
    r = torch.randn(10)
    reg = regularizers.get(name).penalty

    def penalty(model, x, y):
        return reg(model, x, y) if name == "datagrad" else reg(model, x, r=r.to(x.dtype))

    auto32, auto64, fd = _directional_check(model, penalty, x, y)
    assert auto64 == pytest.approx(fd, rel=1e-6), (auto64, fd)
    assert auto32 == pytest.approx(fd, rel=1e-3), (auto32, fd)


def test_batchnorm_couples_examples_in_the_input_gradient():
    """In training mode BatchNorm mixes the batch, so ∂(Σ_j ℓ_j)/∂x_i (what DataGrad penalises, as in
    the authors' tf.gradients of the summed loss) differs from ∂ℓ_i/∂x_i; in eval mode they agree."""
    torch.manual_seed(0)
    model = models.cifar_resnet(width=1, blocks=1, init="authors")
    x, y = torch.randn(4, 3, 32, 32, requires_grad=True), torch.randint(10, (4,))
    for mode, coupled in ((model.train, True), (model.eval, False)):
        mode()
        (total,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), y, reduction="sum"), x)
        (alone,) = torch.autograd.grad(nn.functional.cross_entropy(model(x[:1]), y[:1], reduction="sum"), x)
        assert torch.allclose(total[0], alone[0], atol=1e-6) is not coupled


def test_channels_last_layout_gives_the_same_step():
    """``train.fast_layout`` puts convolutional nets in channels_last on CUDA; the objective and its
    parameter gradients (DataGrad's double backward included) are the same in either layout."""
    from gradreg.train import objective
    cfg = TrainConfig(dataset="cifar10", model="cifar_resnet", model_options={"width": 1, "blocks": 1},
                      regularizer="datagrad", weight=1.0, batch_size=4)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(10, (4,))
    out = []
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = models.build(cfg.model, **cfg.model_options).to(memory_format=layout)
        total, _, _ = objective(model, x.contiguous(memory_format=layout), y, cfg)
        out.append((total.item(), torch.autograd.grad(total, list(model.parameters()))))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    for a, b in zip(out[0][1], out[1][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)

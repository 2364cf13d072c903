"""The authors' set-up, as the reruns use it: initialisation, dropout, the SpectReg family's own
forward pass, the authors' evaluation standardisation, the Jacobian measured off the data, and the
refusal of stored runs made with another configuration."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from gradreg import data, experiments, jacobian, models, regularizers, results
from gradreg.errors import GradregError
from gradreg.train import TrainConfig, jacobian_fro_norms, objective, path_points, shares_pass


# ---------------------------------------------------------------- initialisation

def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("name", ["lenettuned", "cifar_resnet", "toy", "mlp"])
def test_authors_init_has_the_tflib_laws(name):
    """Uniform weights with std √(4/(fan_in+fan_out)) for convolutions (fan_out divided by stride²)
    and √(2/(fan_in+fan_out)) for dense layers, every bias zero: checked on the bound (exact) and the
    sample std (within 4 standard errors)."""
    torch.manual_seed(0)
    model = models.build(name, init="authors")
    for m in _layers(model):
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            std = math.sqrt(4 / (m.in_channels * k + m.out_channels * k / (m.stride[0] * m.stride[1])))
        else:
            std = math.sqrt(2 / (m.in_features + m.out_features))
        w = m.weight.detach().double()
        assert w.abs().max() <= std * math.sqrt(3) * (1 + 1e-6)
        n = w.numel()
        # the sample std of a uniform law has standard error ≈ std · √(0.8 / (4n)) (kurtosis 1.8)
        assert abs(w.std().item() - std) < 4 * std * math.sqrt(0.8 / (4 * n)) + 1e-12, m
        assert m.bias is None or not m.bias.any()


def test_torch_init_is_pytorchs_own_and_unknown_inits_are_refused():
    torch.manual_seed(1)
    a = models.build("lenet", init="torch")
    torch.manual_seed(1)
    b = models.build("lenet")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert any(m.bias.abs().sum() > 0 for m in _layers(a))       # PyTorch's biases are not zero
    with pytest.raises(GradregError, match="unknown init 'xavier'"):
        models.build("lenet", init="xavier")
    with pytest.raises(GradregError, match="init"):
        TrainConfig(model_options={"init": 3})


def test_authors_init_differs_from_pytorch_by_the_stated_factors():
    """The factors the chapter quotes: authors' std / PyTorch's std per lenettuned layer, 0.6–2.3."""
    torch.manual_seed(0)
    ours = [m.weight.std().item() for m in _layers(models.build("lenettuned", init="authors"))]
    torch.manual_seed(0)
    theirs = [m.weight.std().item() for m in _layers(models.build("lenettuned"))]
    ratios = [a / t for a, t in zip(ours, theirs)]
    assert 0.55 < min(ratios) < 0.65 and 2.2 < max(ratios) < 2.45


def test_every_rerun_of_the_paper_uses_the_authors_init_and_dropout_where_they_did():
    for name in ("quickstart", "mnist-table1", "mnist-table1-protocol", "mnist-sizes", "mnist-family",
                 "mnist-wd-grid", "sin5x"):
        for cell, _, cfg in experiments.get(name).configs("paper"):
            want = "torch" if cell.endswith("torch-init") else "authors"
            assert cfg.model_options.get("init") == want, (name, cell)
    for name in ("quickstart", "mnist-sizes", "mnist-family", "mnist-wd-grid"):
        assert all(cfg.model_options.get("head") == "dropout" for _, _, cfg in experiments.get(name).configs("paper"))


# ---------------------------------------------------------------- the penalty's forward pass

@pytest.mark.parametrize("reg, head, shared", [
    ("spectreg", "dropout", False), ("frobreg", "dropout", False), ("jacreg", "dropout", False),
    ("onehot", "dropout", False), ("random_onehot", "dropout", False), ("datagrad", "dropout", True),
    ("confidence", "dropout", True), ("spectreg", "none", True), ("spectreg", "batchnorm", True)])
def test_the_authors_choice_of_forward_pass(reg, head, shared):
    model = models.build("lenet", head=head)
    cfg = TrainConfig(regularizer=reg, weight=1.0, model_options={"head": head})
    assert shares_pass(cfg, regularizers.get(reg), model) is shared
    assert shares_pass(cfg.replace(separate_pass=True), regularizers.get(reg), model) is False
    assert shares_pass(cfg.replace(separate_pass=False), regularizers.get(reg), model) is True


def test_spectreg_with_dropout_draws_an_independent_mask():
    """The training objective equals task loss (first mask) + weight × SpectReg in a second forward
    pass (second mask), replayed from the same RNG state; sharing the first mask gives another value."""
    torch.manual_seed(0)
    model = models.build("lenet", head="dropout").double().train()
    x, y = torch.randn(8, 1, 28, 28, dtype=torch.float64), torch.arange(8) % 10
    cfg = TrainConfig(regularizer="spectreg", weight=0.5, model_options={"head": "dropout"})
    torch.manual_seed(5)
    total, task, penalty = objective(model, x, y, cfg, torch.Generator().manual_seed(3))
    torch.manual_seed(5)
    task_ref = nn.functional.cross_entropy(model(x), y)
    pen_ref = regularizers.spectreg(model, x, y, generator=torch.Generator().manual_seed(3)).mean()
    assert torch.allclose(task, task_ref, rtol=1e-12) and torch.allclose(penalty, pen_ref, rtol=1e-12)
    torch.manual_seed(5)
    _, _, shared = objective(model, x, y, cfg.replace(separate_pass=False), torch.Generator().manual_seed(3))
    assert not torch.allclose(shared, pen_ref)


# ---------------------------------------------------------------- evaluation standardisation

def test_the_authors_protocol_standardises_test_images_with_their_own_statistics(data_dir):
    paper = data.mnist(200, seed=0, protocol="paper", n_test=3000, data_dir=data_dir)
    official = data.mnist(200, seed=0, protocol="official", n_test=3000, data_dir=data_dir)
    assert abs(paper.x_test.mean().item()) < 1e-5 and abs(paper.x_test.std().item() - 1) < 1e-4
    assert abs(official.x_train.mean().item()) < 1e-5 and abs(official.x_train.std().item() - 1) < 1e-4
    # the official protocol uses the training subset's statistics for the test images (not their own)
    assert abs(official.x_test.mean().item()) > 1e-3


# ---------------------------------------------------------------- the Jacobian off the data

def test_jacobian_fro_norms_equal_brute_force():
    torch.manual_seed(0)
    for model, x in ((models.build("mlp", in_features=12, hidden=16, classes=5), torch.randn(7, 12)),
                     (models.build("lenet", head="batchnorm"), torch.randn(7, 1, 28, 28))):
        model, x = model.double().eval(), x.double()
        exact = jacobian.frobenius_norm(jacobian.logits(model, x))
        assert torch.allclose(jacobian_fro_norms(model, x, chunk=3), exact, rtol=1e-10, atol=0)


def test_path_points_lie_on_segments_between_training_points():
    x = torch.arange(12.0).view(6, 2)
    gen = torch.Generator().manual_seed(0)
    pts = path_points(x, gen, ts=(0.0, 0.5, 1.0))
    start, mid, end = pts[:6], pts[6:12], pts[12:]
    assert torch.equal(start, x) and torch.allclose(mid, (start + end) / 2)
    assert sorted(end[:, 0].tolist()) == sorted(x[:, 0].tolist())        # the partners are training points


# ---------------------------------------------------------------- stale results

def test_stored_runs_of_another_configuration_are_refused(results_dir):
    name = "sin5x"
    cell, seed, cfg = experiments.get(name).configs("smoke")[0]
    old = cfg.replace(model_options={"init": "torch"})
    record = {"experiment": name, "profile": "smoke", "cell": cell, "seed": seed, "status": "ok",
              "metrics": {"test_loss": 0.1}, "history": [[1, 0.1]], "iterations_done": 1,
              "config": json.loads(json.dumps(old.to_dict())), "provenance": {}}
    store = results.Store(name, "smoke", str(results_dir))
    store.prepare()
    store.add(record)
    assert experiments.stale(name, "smoke", store.records()) == [
        f"{cell} seed {seed}: model_options {{'init': 'torch'}} → {{'init': 'authors'}}"]
    for call in (lambda: experiments.run(name, "smoke", results_dir=str(results_dir), log=lambda _: None),
                 lambda: experiments.load(name, "smoke", results_dir=str(results_dir))):
        with pytest.raises(GradregError, match="1 run.* trained with another configuration.*move that file aside"):
            call()
    # the current configuration is not stale, whatever device it ran on
    record["config"] = json.loads(json.dumps(cfg.replace(device="cuda:0").to_dict()))
    assert experiments.stale(name, "smoke", [record]) == []


# ---------------------------------------------------------------- sin(5x) weights

def test_authors_sin5x_weights_give_the_same_objective_up_to_a_constant():
    """½·Σ(f − y)² + Λ·mean(pen_theirs) equals (B/2)·[mean (f − y)² + λ·mean(pen_ours)] when Λ is
    ``authors_weight(λ)``: checked on a toy batch for SpectReg (r = 1) and DataGrad."""
    from gradreg import varga2017
    torch.manual_seed(0)
    model = models.build("toy", hidden=8, depth=1).double()
    x, y = torch.rand(50, 1, dtype=torch.float64) * 2 - 1, torch.randn(50, dtype=torch.float64)
    lam, B = 0.3, 50
    xg = x.clone().requires_grad_(True)
    f = model(xg).flatten()
    (fp,) = torch.autograd.grad(f.sum(), xg, create_graph=True)
    fp = fp.flatten()
    ours_mse = ((f - y) ** 2).mean()
    theirs_l2 = 0.5 * ((f - y) ** 2).sum()
    spect_ours = regularizers.spectreg(model, x, y, r=torch.ones(1, dtype=torch.float64)).mean()
    assert torch.allclose(spect_ours, (fp ** 2).mean())
    theirs = theirs_l2 + varga2017.authors_weight("spectreg", lam, B) * (fp ** 2).mean()
    assert torch.allclose(theirs, B / 2 * (ours_mse + lam * spect_ours))
    dg_ours = regularizers.datagrad(model, x, y, loss="squared_error").mean()
    dg_theirs = (((f - y) * fp) ** 2).mean()                       # ∂(½Σ(f − y)²)/∂x_i, squared
    theirs = theirs_l2 + varga2017.authors_weight("datagrad", lam, B) * dg_theirs
    assert torch.allclose(theirs, B / 2 * (ours_mse + lam * dg_ours))


def test_every_classifier_run_stores_the_jacobian_norms_it_promises():
    """``evaluate`` stores ‖J_g‖_F at training, test, noisy and between-training points; the test-point
    value is the brute-force Jacobian's mean over the first ``eval_points`` test points."""
    from gradreg.train import evaluate
    torch.manual_seed(0)
    x = torch.randn(40, 1, 28, 28)
    d = data.Dataset("mnist", x[:20], torch.arange(20) % 10, x[20:], torch.arange(20) % 10, 10, official=True)
    model = models.build("lenet", head="dropout")
    metrics = evaluate(model, d, TrainConfig(eval_points=12), torch.Generator().manual_seed(0))
    assert {"jac_fro_train", "jac_fro_test", "jac_fro_noisy", "jac_fro_path"} <= set(metrics)
    model.eval()
    exact = jacobian.frobenius_norm(jacobian.logits(model, d.x_test[:12])).mean().item()
    assert metrics["jac_fro_test"] == pytest.approx(exact, rel=1e-5)


def test_training_on_the_cpu_flushes_subnormals():
    """Subnormal weights cost ~100× per multiply on x86; ``train`` turns on flush-to-zero on the CPU."""
    from gradreg.train import flush_denormals
    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-39])
    assert (tiny * 1.0).item() != 0.0
    flush_denormals(torch.device("cpu"))
    assert (tiny * 1.0).item() == 0.0

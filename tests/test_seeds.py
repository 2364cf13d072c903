"""Seed-batched training: a stack of S members must behave exactly like S separate models."""
from __future__ import annotations

import pytest
import torch

from gradreg import bench, experiments, models, results
from gradreg.errors import GradregError
from gradreg.seeds import SeedStack, train_seeds
from gradreg.train import TrainConfig, objective, train

S, B = 3, 8


def _members(head: str) -> list[torch.nn.Module]:
    out = []
    for s in range(S):
        torch.manual_seed(s)
        out.append(models.build("lenet", head=head).double().train())
    return out


@pytest.mark.parametrize("head", ["none", "batchnorm"])
@pytest.mark.parametrize("reg", [None, "datagrad", "spectreg", "onehot", "frobreg", "jacreg", "confidence",
                                 "frobreg-vectorized"])
def test_stacked_gradient_is_each_members_own_gradient(head, reg):
    """∂(S · stacked objective)/∂θ_s equals member s's gradient of its own objective on its own rows."""
    members = _members(head)
    stack = SeedStack(members).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(S * B, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.randint(10, (S * B,), generator=gen)
    r = torch.randn(S, 10, generator=gen, dtype=torch.float64)
    if reg == "frobreg-vectorized":  # the CUDA default: K products batched by vmap, here through the stack's vmap
        cfg = TrainConfig(regularizer="frobreg", weight=0.7, reg_options={"vectorized": True})
        members = [_plain(m, head) for m in members]
    else:
        cfg = TrainConfig(regularizer=reg, weight=0.7 if reg else 0.0)
    extra = {"r": r.repeat_interleave(B, 0)} if reg == "spectreg" else None
    total, _, _ = objective(stack, x, y, cfg, reg_options=extra)
    stacked_grads = torch.autograd.grad(total * S, list(stack.parameters()))
    for s, m in enumerate(members):
        rows = slice(s * B, (s + 1) * B)
        own, _, _ = objective(m, x[rows], y[rows], cfg, reg_options={"r": r[s]} if reg == "spectreg" else None)
        for g_stack, g_own in zip(stacked_grads, torch.autograd.grad(own, list(m.parameters()))):
            torch.testing.assert_close(g_stack[s], g_own, rtol=1e-9, atol=1e-12)


def _plain(model, head):
    """The same network with library convolutions (vectorized=True refuses the custom one on CPU)."""
    plain = models.build("lenet", head=head)
    for m in plain.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.__class__ = torch.nn.Conv2d
    plain.load_state_dict(model.state_dict())
    return plain.double().train()


def test_batchnorm_running_statistics_update_per_member():
    members = _members("batchnorm")
    stack = SeedStack([_members("batchnorm")[s] for s in range(S)]).train()
    x = torch.randn(S * B, 1, 28, 28, dtype=torch.float64)
    stack(x)
    for s, m in enumerate(members):
        m(x[s * B: (s + 1) * B])
        torch.testing.assert_close(stack.stacked[11].running_mean[s], m[11].running_mean)
        torch.testing.assert_close(stack.stacked[11].running_var[s], m[11].running_var)


def test_dropout_masks_are_drawn_per_member():
    torch.manual_seed(0)
    m = models.build("lenet", head="dropout")
    stack = SeedStack([m, m])  # two identical members fed identical rows
    x = torch.randn(B, 1, 28, 28).repeat(2, 1, 1, 1)
    g = stack.train()(x)
    assert not torch.allclose(g[:B], g[B:])
    g = stack.eval()(x)
    torch.testing.assert_close(g[:B], g[B:])


def test_a_batch_that_does_not_split_into_members_is_one_clear_error():
    stack = SeedStack(_members("none"))
    with pytest.raises(GradregError, match="SeedStack of 3 members got a batch of 7 rows"):
        stack(torch.randn(7, 1, 28, 28, dtype=torch.float64))
    with pytest.raises(GradregError, match="at least one"):
        SeedStack([])


SIN = TrainConfig(dataset="sin5x", n_train=100, model="toy", loss="squared_error", lr=0.01, weight_decay=1e-4,
                  regularizer="spectreg", weight=0.1, iterations=60, eval_points=None, device="cpu", log_every=20)


def test_train_seeds_reproduces_one_at_a_time_training():
    """Same seeds, no dropout: the stacked run ends where the separate runs end (up to float rounding)."""
    stacked = train_seeds(SIN, [0, 1, 2], progress=False)
    for seed, out in enumerate(stacked):
        alone = train(SIN.replace(seed=seed), progress=False)
        assert out["status"] == "ok" and out["seed_batch"] == 3
        # Adam divides by √v: a rounding-level difference in a near-zero gradient entry moves that
        # weight by up to lr (0.01) per step; measured 1.6e-5 on an AVX512 CPU after 60 steps
        for a, b in zip(out["model"].parameters(), alone["model"].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        for key, value in alone["metrics"].items():
            assert out["metrics"][key] == pytest.approx(value, rel=1e-3), key


def test_run_batches_a_cells_missing_seeds_and_resumes(results_dir):
    store = results.Store("sin5x", "smoke", results_dir)
    experiments.run("sin5x", "smoke", seeds=1, device="cpu", progress=False, batch_seeds=True, log=lambda _: None)
    first = {(r["cell"], r["seed"]): r for r in store.records()}
    assert {r["seed_batch"] for r in first.values()} == {1}
    lines: list[str] = []
    experiments.run("sin5x", "smoke", seeds=3, device="cpu", progress=False, batch_seeds=True, log=lines.append)
    after = {(r["cell"], r["seed"]): r for r in store.records()}
    cells = experiments.get("sin5x").cells
    assert len(after) == 3 * len(cells) and f"{len(cells)} already" in lines[0]
    assert all(after[k] == r for k, r in first.items())            # seed 0 kept, not retrained
    assert {after[(c, s)]["seed_batch"] for c in cells for s in (1, 2)} == {2}


def test_seed_batching_bench_reports_both_timings():
    out = bench.seed_batching("lenet", "datagrad", seeds=2, reps=1, steps=1, device="cpu")
    assert set(out["seconds_per_step"]) == {"one_at_a_time", "stacked"} and out["speedup"] > 0
    with pytest.raises(GradregError, match="--seed-batch must be a positive integer"):
        bench.seed_batching(seeds=0, device="cpu")

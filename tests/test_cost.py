"""`gradreg.cost`: GPU-hour estimates from counted flops and operators, or from saved CUDA benches.

The counts are exact for what they count (matrix products of a dense net by hand); the estimates
are checked for their structure — which steps cost more, the op term paid once per seed stack, a
CUDA bench used exactly as saved — never against a GPU timing, which nobody has yet."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from gradreg import bench, cost, experiments
from gradreg.config import TrainConfig
from gradreg.errors import ResultsMissing
from gradreg.experiments import Experiment, Profile

B = 50
MLP = TrainConfig(model="mlp", model_options={"hidden": 256, "depth": 2}, n_train=1000, batch_size=B, iterations=10)
LENET = TrainConfig(model="lenet", model_options={"head": "dropout"}, n_train=1000, batch_size=B, iterations=100)


def test_a_plain_step_of_a_dense_net_counts_the_hand_counted_matrix_products():
    layers = [(784, 256), (256, 256), (256, 10)]
    forward = sum(2 * B * i * o for i, o in layers)
    # backward: a weight gradient per layer, an input gradient for all but the first (x needs none)
    hand = forward + forward + sum(2 * B * i * o for i, o in layers[1:])
    n_ops, flops = cost.step_cost(MLP)
    assert flops == pytest.approx(hand, rel=0.02)
    assert 2 * forward < flops <= 3 * forward      # "forward + backward ≈ 3 forwards", less x's gradient
    assert 10 < n_ops < 200


@pytest.mark.parametrize("changes", [{"regularizer": "datagrad", "weight": 1.0},
                                     {"regularizer": "spectreg", "weight": 1.0},
                                     {"step": "gr-db", "step_options": {"gamma": 0.1}}])
def test_double_backward_costs_more_flops_and_ops_than_plain(changes):
    plain_ops, plain_flops = cost.step_cost(MLP)
    ops, flops = cost.step_cost(MLP.replace(**changes))
    assert ops > plain_ops and flops > 1.5 * plain_flops


def test_finite_difference_steps_cost_two_gradients_and_gr_central_three():
    _, plain = cost.step_cost(MLP)
    for name, options, evaluations in [("gr-forward", {"gamma": 0.1, "eps": 0.01}, 2), ("sam", {"rho": 0.05}, 2),
                                       ("gr-central", {"gamma": 0.1, "eps": 0.01}, 3)]:
        flops = cost.step_cost(MLP.replace(step=name, step_options=options))[1]
        assert flops == pytest.approx(evaluations * plain, rel=0.02)


def test_the_count_ignores_what_does_not_change_the_work_and_leaves_the_rng_alone():
    state = torch.get_rng_state()
    counted = cost.step_cost(LENET.replace(step="gr-forward", step_options={"gamma": 0.1, "eps": 0.01}))
    assert cost.step_cost(LENET.replace(step="gr-forward", step_options={"gamma": 1.0, "eps": 0.5}, seed=7,
                                        lr=0.1, iterations=3)) == counted
    assert torch.equal(torch.get_rng_state(), state)


def test_seeds_of_a_separable_step_share_the_op_term_and_sam_does_not():
    n_ops, flops = cost.step_cost(LENET)
    assert n_ops * cost.T_OP > flops / cost.THROUGHPUT          # LeNet at batch 50 is launch-bound
    one, five = cost.model_seconds(LENET, 1), cost.model_seconds(LENET, 5)
    assert five == pytest.approx(n_ops * cost.T_OP + 5 * flops / cost.THROUGHPUT)
    assert five < 0.5 * 5 * one
    sam = LENET.replace(step="sam", step_options={"rho": 0.05})
    assert cost.model_seconds(sam, 5) == pytest.approx(5 * cost.model_seconds(sam, 1))


def _experiment(cells: dict, seeds: int = 3) -> Experiment:
    return Experiment(name="cost-test", title="", source="", base=LENET, cells=cells,
                      profiles={"smoke": Profile(seeds), "cpu": Profile(seeds), "paper": Profile(seeds)})


def _save_cuda_bench(results_dir, seconds: dict[str, float], suite: dict | None = None, batch: int = B) -> None:
    """A bench result as `gradreg bench --device cuda --save` writes it (the fields cost reads)."""
    result = {"model": "lenet", "model_options": {"head": "dropout"}, "dataset": "mnist", "layout": "contiguous",
              "batch_size": batch, "device": "cuda:0", **(suite or {}), "seconds_per_step": seconds,
              "ratio": {k: v / seconds["plain"] for k, v in seconds.items() if k != "plain"}}
    path = bench.path("cuda", str(results_dir), bench.kind(result))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))


def test_a_saved_cuda_bench_makes_the_estimate_measured_with_its_numbers(tmp_path):
    exp = _experiment({"plain": {}, "datagrad": {"regularizer": "datagrad", "weight": 1.0},
                       "gr-db": {"step": "gr-db", "step_options": {"gamma": 0.1}}})
    assert cost.gpu_seconds(exp, "smoke", str(tmp_path)).basis == "model"
    _save_cuda_bench(tmp_path, {"plain": 0.004, "datagrad": 0.009})
    partial = cost.gpu_seconds(exp, "smoke", str(tmp_path))
    assert partial.basis == "model"
    assert partial.per_cell["datagrad"] == (pytest.approx(100 * 3 * 0.009), "measured")
    assert partial.per_cell["gr-db"][1] == "model"
    _save_cuda_bench(tmp_path, {"plain": 0.005, "gr-db": 0.0125}, suite={"suite": "steps"})
    est = cost.gpu_seconds(exp, "smoke", str(tmp_path))
    assert est.basis == "measured"
    assert est.seconds == pytest.approx(100 * 3 * (0.004 + 0.009 + 0.0125))
    assert cost.format_hours(est) == "<0.01 GPU-h (measured)"


def test_only_cuda_benches_of_the_same_batch_size_count(tmp_path):
    exp = _experiment({"plain": {}})
    _save_cuda_bench(tmp_path, {"plain": 0.004}, batch=128)
    cpu = bench.path("cpu", str(tmp_path), bench.kind({"model": "lenet", "model_options": {"head": "dropout"}}))
    cpu.write_text(json.dumps({"model": "lenet", "model_options": {"head": "dropout"}, "batch_size": B,
                               "seconds_per_step": {"plain": 0.004}, "ratio": {}}))
    assert cost.gpu_seconds(exp, "smoke", str(tmp_path)).basis == "model"


def test_format_hours_is_short_and_says_it_is_an_estimate():
    def text(hours: float, basis: str = "model") -> str:
        return cost.format_hours(cost.GpuEstimate(hours * 3600, basis))
    assert text(0.004) == "<0.01 GPU-h (model)"
    assert text(0.347) == "~0.35 GPU-h (model)"
    assert text(12.3, "measured") == "~12 GPU-h (measured)"
    assert text(1991.2) == "~1,991 GPU-h (model)"


def test_every_registered_grid_gets_a_finite_positive_estimate():
    for exp in experiments.REGISTRY.values():
        for profile in exp.profiles:
            try:
                exp.configs(profile)
            except ResultsMissing:          # as `gradreg list`: not yet configurable, no estimate either
                with pytest.raises(ResultsMissing):
                    cost.gpu_seconds(exp, profile)
                continue
            est = cost.gpu_seconds(exp, profile)
            assert math.isfinite(est.seconds) and est.seconds > 0 and est.basis in cost.BASES, (exp.name, profile)
            assert "GPU-h" in cost.format_hours(est)


def test_counts_persist_between_processes_in_a_cache_keyed_by_the_code(tmp_path):
    """`gradreg list` counts once per version of the code: a second process reads the cache and
    prints the same estimates; a cache file that is not ours is ignored, never trusted."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    code = ("from gradreg import cost, experiments; e = cost.gpu_seconds(experiments.get('quickstart'), 'paper'); "
            "print(repr(e.seconds)); print(len(cost._UPDATES))")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    files = list((tmp_path / "gradreg").glob("step-costs-*.json"))
    assert len(files) == 1
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert second.stdout == first.stdout
    files[0].write_text("[not, json")
    third = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert third.returncode == 0 and third.stdout == first.stdout


def test_gradreg_list_shows_a_gpu_estimate_for_every_non_smoke_grid():
    out = subprocess.run([sys.executable, "-m", "gradreg", "list"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines()[1:] if line.split()[1:2] in (["cpu"], ["paper"])
            and "not yet configurable" not in line]
    assert len(rows) >= 2 * 12 and all(re.search(r"GPU-h \((model|measured)\)", row) for row in rows)
    assert "est. one H100" in out.stdout.splitlines()[0] and out.stdout.splitlines()[-1].startswith("Estimates.")

"""`gradreg bench` for the parameter-space step rules (gr-db, gr-forward, …, sam, flooding): names,
ratios, the saved file tag and the CIFAR-shaped inputs. Tiny batches and one rep: this checks the
code path, never the speed (that is `gradreg bench` on an idle machine)."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from gradreg import bench, cli, steps
from gradreg.config import TrainConfig
from gradreg.errors import GradregError

TINY = {"batch_size": 2, "reps": 1, "steps": 1, "device": "cpu"}
CIFAR_MLP = {"in_features": 3072, "hidden": 8, "depth": 1}


def test_the_steps_suite_is_every_step_rule_but_plain_with_valid_options():
    assert bench.expand(["steps"]) == [n for n in steps.names() if n != "plain"] == bench.STEP_NAMES
    for name, options in bench.STEP_OPTIONS.items():
        steps.check_options(name, options)
        TrainConfig(step=name, step_options=options)
    assert bench.expand(None) == bench.expand(["regularizers"])
    assert bench.expand(["gr-db", "steps", "datagrad"]) == [*bench.STEP_NAMES, "datagrad"]  # no repeats


def test_step_rules_are_timed_beside_plain_with_their_ratio_and_forward_over_db():
    out = bench.bench("lenet", names=["gr-db", "gr-forward", "flooding"], **TINY)
    assert set(out["ratio"]) == {"gr-db", "gr-forward", "flooding"} and all(r > 0 for r in out["ratio"].values())
    t = out["seconds_per_step"]
    assert out["forward_over_db"] == pytest.approx(t["gr-forward"] / t["gr-db"])
    assert out["step_options"]["gr-forward"] == {"gamma": 0.01, "eps": 0.05}
    text = bench.table(out)
    assert "gr-forward ÷ gr-db" in text and "flooding" in text
    assert "forward_over_db" not in bench.bench("lenet", names=["gr-backward"], **TINY)


@pytest.mark.parametrize("names, message", [
    (["gr-nope"], "unknown bench variant 'gr-nope'; known: regularizers"),
    (["plain"], "unknown bench variant 'plain'"),          # the baseline every variant is timed against
    (["steps", ""], "unknown bench variant ''"),
])
def test_unknown_names_are_one_error_before_any_timing(names, message, monkeypatch):
    monkeypatch.setattr(bench, "_time_interleaved", lambda *a, **k: pytest.fail("timed before checking"))
    with pytest.raises(GradregError, match=message):
        bench.bench("lenet", names=names, **TINY)


def test_unknown_name_on_the_command_line_is_one_line():
    out = subprocess.run([sys.executable, "-m", "gradreg", "bench", "--only", "gr-db,sma"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and not out.stdout
    assert out.stderr.count("\n") == 1 and "unknown bench variant 'sma'" in out.stderr


def test_a_step_bench_is_saved_apart_from_the_regularizer_bench(tmp_path):
    for model, options in (("lenet", {}), ("cifar_resnet", {"width": 1, "blocks": 1}), ("mlp", CIFAR_MLP)):
        regs = {"model": model, "model_options": options, "ratio": {"datagrad": 2.0}}
        step = {"model": model, "model_options": options, "ratio": {"gr-db": 2.0}}
        assert bench.kind(step) != bench.kind(regs) and bench.kind(step).endswith("steps")
        assert bench.kind({"model": model, "model_options": options, "suite": "steps"}) == bench.kind(step)
    assert bench.kind({"model": "lenet", "ratio": {"datagrad": 2.0}}) == ""          # results/bench/cpu.json
    out = subprocess.run([sys.executable, "-m", "gradreg", "bench", "--only", "gr-db,gr-forward", "--reps", "1",
                          "--steps", "1", "--batch-size", "2", "--device", "cpu", "--save", "--json",
                          "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout.strip().splitlines()[-1])) == {"gr-db", "gr-forward"}
    assert [p.name for p in (tmp_path / "bench").iterdir()] == ["steps-cpu.json"]
    saved = bench.load_steps("cpu", str(tmp_path))
    assert saved["LeNet"]["forward_over_db"] > 0 and saved["CIFAR MLP"] is None and saved["ResNet-8"] is None
    assert bench.load("cpu", str(tmp_path)) is None                                   # the regularizer bench


def test_an_mlp_eats_cifar_shaped_batches_by_its_in_features():
    out = bench.bench("mlp", names=["gr-forward"], model_options=CIFAR_MLP, **TINY)
    assert out["dataset"] == "cifar10" and out["ratio"]["gr-forward"] > 0
    assert bench.bench("mlp", names=["sam"], model_options={"hidden": 8, "depth": 1}, **TINY)["dataset"] == "mnist"
    with pytest.raises(GradregError, match="in_features must be one of 784 .mnist., 3072 .cifar10., got 100"):
        bench.bench("mlp", names=["gr-db"], model_options={"in_features": 100}, **TINY)


def test_the_resnet_takes_a_double_backward_step():
    out = bench.bench("cifar_resnet", names=["gr-db"], model_options={"width": 1, "blocks": 1}, **TINY)
    assert out["dataset"] == "cifar10" and out["ratio"]["gr-db"] > 0


def test_the_measurement_commands_parse_and_name_the_chapter_architectures():
    for label, (model, options, batch) in bench.STEP_BENCHES.items():
        args = cli.parser().parse_args(shlex.split(bench.step_command(label))[1:])
        assert (args.only, args.model, args.batch_size, args.save) == ("steps", model, batch, True)
        assert json.loads(args.model_options) == options
    assert bench.STEP_BENCHES["CIFAR MLP"][1] == {"in_features": 3072, "hidden": 512, "depth": 3}


def test_counted_matrix_products_follow_the_chapters_formulas():
    for depth in (2, 3):
        u = bench.matmul_units(depth=depth, width=8, batch=4)
        assert u["plain"] == u["flooding"] == 3 * depth - 1
        assert u["gr-forward"] == u["gr-backward"] == u["sam"] == 2 * (3 * depth - 1)
        assert u["gr-central"] == 3 * (3 * depth - 1) and u["gr-db"] == 9 * depth - 5

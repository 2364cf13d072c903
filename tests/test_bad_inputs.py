"""Hostile inputs: every one ends in exactly one clear error and changes no file.

The same table of bad settings is tried through the API (``TrainConfig(...)`` raises GradregError)
and through the command line in a subprocess (exit status 2, one ``gradreg: error:`` line on
stderr, no traceback, no file created or changed in the results folder, the data folder or the
current directory). Damaged results files, unwritable results folders, bad ``bench``/``run``
arguments and the data-folder errors are tried through the command line too.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from gradreg import experiments, results
from gradreg.errors import GradregError
from gradreg.train import TrainConfig

from conftest import shared_data

INF = float("inf")

# (API keyword arguments of TrainConfig, the same as `gradreg train` tokens, a fragment of the message)
SETTINGS: list[tuple[dict[str, Any], list[str], str]] = [
    ({"n_train": 0}, ["n_train=0"], "n_train"),
    ({"n_train": -5}, ["n_train=-5"], "n_train"),
    ({"n_train": 2.5}, ["n_train=2.5"], "n_train"),
    ({"n_train": True}, ["n_train=True"], "n_train"),
    ({"n_train": 70000}, ["n_train=70000"], "at most 60000"),
    ({"n_train": 55000, "protocol": "paper"}, ["n_train=55000", "protocol=paper"], "at most 50000"),
    ({"n_test": 0}, ["n_test=0"], "n_test"),
    ({"n_test": 20000}, ["n_test=20000"], "at most 10000"),
    ({"eval_points": 0}, ["eval_points=0"], "eval_points"),
    ({"seed": 1.5}, ["seed=1.5"], "seed must be an integer"),
    ({"seed": -1}, ["seed=-1"], "seed must be an integer"),
    ({"seed": 10**25}, ["seed=10000000000000000000000000"], "seed must be an integer"),
    ({"lr": INF}, ["lr=1e999"], "lr must be a finite number"),
    ({"lr": float("nan")}, ["lr=nan"], "lr must be a finite number"),
    ({"lr": 0.0}, ["lr=0"], "lr must be > 0"),
    ({"weight_decay": INF}, ["weight_decay=1e999"], "weight_decay must be a finite number"),
    ({"weight_decay": -1e-4}, ["weight_decay=-1e-4"], "weight_decay must be >= 0"),
    ({"momentum": -0.5}, ["momentum=-0.5"], "momentum must be"),
    ({"optimizer": "nesterov", "momentum": 0.0}, ["optimizer=nesterov", "momentum=0"], "momentum must be > 0"),
    ({"noise_sigma": -1.0}, ["noise_sigma=-1"], "noise_sigma must be >= 0"),
    ({"batch_size": True}, ["batch_size=True"], "batch_size must be an integer"),
    ({"batch_size": 0}, ["batch_size=0"], "batch_size must be an integer"),
    ({"iterations": 0}, ["iterations=0"], "iterations must be an integer"),
    ({"log_every": 2.0}, ["log_every=2.0"], "log_every must be an integer"),
    ({"separate_pass": 1}, ["separate_pass=1"], "separate_pass must be True, False or None"),
    ({"weight": 5.0}, ["weight=5"], "no regularizer"),
    ({"regularizer": "datagrad", "weight": -1.0}, ["regularizer=datagrad", "weight=-1"], "weight must be"),
    ({"regularizer": "gradnorm", "weight": 1.0}, ["regularizer=gradnorm", "weight=1"], "unknown regularizer"),
    ({"reg_options": {"r": None}}, ["reg_options={'r': None}"], "no regularizer"),
    ({"regularizer": "spectreg", "weight": 0.1, "reg_options": {"foo": 1}},
     ["regularizer=spectreg", "weight=0.1", "reg_options={'foo': 1}"], "unknown reg_options key 'foo'"),
    ({"regularizer": "spectreg", "weight": 0.1, "reg_options": 5},
     ["regularizer=spectreg", "weight=0.1", "reg_options=5"], "reg_options must be a dict"),
    ({"regularizer": "spectreg", "weight": 0.1, "reg_options": {"spherical": "yes"}},
     ["regularizer=spectreg", "weight=0.1", "reg_options={'spherical': 'yes'}"], "reg_options 'spherical' must be"),
    ({"regularizer": "frobreg", "weight": 0.1, "reg_options": {"vectorized": 1}},
     ["regularizer=frobreg", "weight=0.1", "reg_options={'vectorized': 1}"], "reg_options 'vectorized' must be"),
    ({"model_options": {"head": "x"}}, ["model_options={'head': 'x'}"], "unknown head 'x'"),
    ({"model_options": {"width": 3}}, ["model_options={'width': 3}"], "unknown model_options key 'width'"),
    ({"model_options": [1]}, ["model_options=[1]"], "model_options must be a dict"),
    ({"model": "toy", "model_options": {"activation": "sine"}},
     ["model=toy", "model_options={'activation': 'sine'}"], "unknown activation 'sine'"),
    ({"model": "resnet50"}, ["model=resnet50"], "unknown model 'resnet50'"),
    ({"dataset": "imagenet"}, ["dataset=imagenet"], "unknown dataset 'imagenet'"),
    ({"dataset": "cifar10"}, ["dataset=cifar10"], "cannot train on cifar10"),
    ({"model": "toy"}, ["model=toy"], "cannot train on mnist"),
    ({"dataset": "sin5x", "model": "toy"}, ["dataset=sin5x", "model=toy"], "does not fit sin5x"),
    ({"dataset": "sin5x", "loss": "squared_error"}, ["dataset=sin5x", "loss=squared_error"], "cannot train on sin5x"),
    ({"loss": "squared_error"}, ["loss=squared_error"], "does not fit mnist"),
    ({"loss": "hinge"}, ["loss=hinge"], "unknown loss 'hinge'"),
    ({"dataset": "sin5x", "model": "toy", "loss": "squared_error", "regularizer": "onehot", "weight": 1.0},
     ["dataset=sin5x", "model=toy", "loss=squared_error", "regularizer=onehot", "weight=1"], "needs class labels"),
    ({"model_options": {"head": "batchnorm"}, "batch_size": 1},
     ["model_options={'head': 'batchnorm'}", "batch_size=1"], "Expected more than 1 value per channel"),
    ({"model_options": {"head": "batchnorm"}, "n_train": 1},
     ["model_options={'head': 'batchnorm'}", "n_train=1"], "Expected more than 1 value per channel"),
    ({"iterations": 2**63}, ["iterations=9223372036854775808"], "iterations must be an integer from 1 to"),
    ({"noise_sigma": 1e308}, ["noise_sigma=1e308"], "noise_sigma must be >= 0 and < 1000"),
    ({"model_options": {"filters": (0, 16)}}, ["model_options={'filters': (0, 16)}"], "filters_1 must be an integer"),
    ({"model_options": {"filters": "ab"}}, ["model_options={'filters': 'ab'}"], "'filters' must be tuple or list"),
    ({"model_options": {"classes": 0}}, ["model_options={'classes': 0}"], "classes must be an integer from 1 to 10,000"),
    ({"dataset": "sin5x", "model": "toy", "loss": "squared_error", "model_options": {"hidden": 0}},
     ["dataset=sin5x", "model=toy", "loss=squared_error", "model_options={'hidden': 0}"], "hidden must be"),
    ({"dataset": "cifar10", "model": "cifar_resnet", "model_options": {"blocks": -1}},
     ["dataset=cifar10", "model=cifar_resnet", "model_options={'blocks': -1}"], "blocks must be an integer from 1 to 100"),
    ({"dataset": "sin5x", "model": "toy", "loss": "squared_error", "regularizer": "jacreg", "weight": 1.0},
     ["dataset=sin5x", "model=toy", "loss=squared_error", "regularizer=jacreg", "weight=1"], "softmax"),
    ({"dataset": "sin5x", "model": "toy", "loss": "squared_error", "regularizer": "confidence", "weight": 1.0},
     ["dataset=sin5x", "model=toy", "loss=squared_error", "regularizer=confidence", "weight=1"], "softmax"),
    ({"regularizer": "spectreg", "weight": 0.1, "reg_options": {"r": None}},
     ["regularizer=spectreg", "weight=0.1", "reg_options={'r': None}"], "unknown reg_options key 'r'"),
    ({"model": "mlp", "model_options": {"depth": 10**8}}, ["model=mlp", "model_options={'depth': 100000000}"],
     "depth must be an integer from 0 to 1,000"),
    ({"model_options": {"filters": (2**70, 16)}}, ["model_options={'filters': (1180591620717411303424, 16)}"], "filters_1 must be"),
    ({"protocol": "kaggle"}, ["protocol=kaggle"], "unknown protocol 'kaggle'"),
    ({"dataset": "cifar10", "model": "cifar_resnet", "protocol": "paper"},
     ["dataset=cifar10", "model=cifar_resnet", "protocol=paper"], "unknown protocol 'paper' for cifar10"),
    ({"dataset": "sin5x", "model": "toy", "loss": "squared_error", "augment": "shift"},
     ["dataset=sin5x", "model=toy", "loss=squared_error", "augment=shift"], "needs images"),
    ({"augment": "rotate"}, ["augment=rotate"], "unknown augment"),
    ({"device": "tpu"}, ["device=tpu"], "unknown device 'tpu'"),
    ({"lr": 10**400}, ["lr=" + "9" * 400], "lr must be a finite number"),
    ({"regularizer": "datagrad", "weight": 10**400}, ["regularizer=datagrad", "weight=" + "9" * 400], "weight must be"),
    ({"lr": 1e39}, ["lr=1e39"], "lr must be > 0 and < 1e+30"),
    ({"weight_decay": 1e39}, ["weight_decay=1e39"], "weight_decay must be >= 0 and < 1e+30"),
    ({"optimizer": 3}, ["optimizer=3"], "optimizer must be a string"),
]


@pytest.mark.parametrize("kwargs, _tokens, message", SETTINGS, ids=[" ".join(t) for _, t, _ in SETTINGS])
def test_bad_setting_is_one_gradreg_error(kwargs, _tokens, message):
    with pytest.raises(GradregError, match=re.escape(message)):
        TrainConfig(**kwargs)


def test_good_settings_of_every_registered_experiment_still_pass(tmp_path):
    for exp in experiments.REGISTRY.values():
        for profile in exp.profiles:
            if exp.derived is None:
                assert exp.configs(profile)          # each config was validated when built
            else:   # settings derived from other results: with none stored, one error naming the command
                with pytest.raises(GradregError, match="gradreg run .* --profile " + profile):
                    exp.configs(profile, results_dir=str(tmp_path))


def test_validation_leaves_the_random_state_alone():
    import torch
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    TrainConfig(model="lenettuned", model_options={"head": "dropout"}, n_train=123)   # a fresh model check
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------- the command line, in subprocesses

@dataclass
class Case:
    """A command line and what it must end in; ``setup(folder)`` prepares files and returns extra args."""

    id: str
    args: list[str]
    message: str
    setup: Callable[[Path], list[str]] = field(default=lambda folder: [])


def _results_file(text: str | None, directory: bool = False) -> Callable[[Path], list[str]]:
    """A results folder whose sin5x smoke file holds ``text`` (or is a directory)."""
    def setup(folder: Path) -> list[str]:
        path = folder / "results" / "sin5x" / "smoke.json"
        path.parent.mkdir(parents=True)
        path.mkdir() if directory else path.write_text(text)
        return ["--results-dir", str(folder / "results")]
    return setup


def _results_fifo(folder: Path) -> list[str]:
    """A named pipe in the results file's place: reading it would wait forever for a writer."""
    path = folder / "results" / "sin5x" / "smoke.json"
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    return ["--results-dir", str(folder / "results")]


def _results_dir_is_a_file(folder: Path) -> list[str]:
    (folder / "results").write_text("not a folder")
    return ["--results-dir", str(folder / "results")]


def _results_dir_under_a_file(folder: Path) -> list[str]:
    (folder / "results").write_text("not a folder")
    return ["--results-dir", str(folder / "results" / "deeper")]


def _mnist_copy(break_it: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    """A data folder with MNIST linked from the shared copy, one file broken by ``break_it``."""
    def setup(folder: Path) -> list[str]:
        raw = folder / "data" / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for f in (shared_data() / "MNIST" / "raw").iterdir():
            (raw / f.name).symlink_to(f)
        break_it(raw)
        return ["--data-dir", str(folder / "data")]
    return setup


def _dir_in_place_of(name: str) -> Callable[[Path], None]:
    def break_it(raw: Path) -> None:
        (raw / name).unlink()
        (raw / name).mkdir()
    return break_it


def _endless(name: str) -> Callable[[Path], None]:
    """The file replaced by a link to /dev/zero: a reader that does not check would never finish."""
    def break_it(raw: Path) -> None:
        (raw / name).unlink()
        (raw / name).symlink_to("/dev/zero")
    return break_it


def _garbage(name: str) -> Callable[[Path], None]:
    def break_it(raw: Path) -> None:
        (raw / name).unlink()
        (raw / name).write_bytes(b"not gzip")
    return break_it


GOOD_RECORD = {"cell": "none", "seed": 0, "status": "ok", "metrics": {}}
HEAD = '{"experiment": "sin5x", "profile": "smoke", '      # what a sin5x smoke results file starts with
RUN = ["run", "sin5x", "--profile", "smoke", "--no-progress", "--device", "cpu"]
TRAIN = ["train", "--no-progress", "iterations=1", "n_train=100", "n_test=100", "eval_points=10", "device='cpu'"]
CASES = [Case(f"train {' '.join(tokens)}", ["train", *tokens], message) for _, tokens, message in SETTINGS] + [
    Case("train no equals sign", ["train", "lr"], "expected key=value"),
    Case("train unknown key", ["train", "learning_rate=0.1"], "unknown config key 'learning_rate'"),
    # class 4: damaged results files: one message naming the file; the file is kept as it was
    Case("results {", RUN, "is not valid JSON", _results_file("{")),
    Case("results truncated", RUN, "is not valid JSON",
         _results_file(json.dumps({"records": [GOOD_RECORD, GOOD_RECORD]})[:-20])),
    Case("results empty", RUN, "is not valid JSON", _results_file("")),
    Case("results a list", RUN, 'expected an object with a "records" list', _results_file("[]")),
    Case("results null record", RUN, "record 0 is NoneType", _results_file(HEAD + '"records": [null]}')),
    Case("results record without seed", RUN, "lacks a string cell or an integer seed",
         _results_file(HEAD + '"records": [{"cell": "none", "status": "ok", "metrics": {}}]}')),
    Case("results metrics a list", RUN, "lacks a status or a metrics object",
         _results_file(HEAD + '"records": [{"cell": "none", "seed": 0, "status": "ok", "metrics": []}]}')),
    Case("results NaN token", RUN, "non-standard JSON constant NaN",
         _results_file(HEAD + '"records": [{"cell": "none", "seed": 0, "status": "ok", "metrics": {"x": NaN}}]}')),
    Case("results of another experiment", RUN, "holds experiment 'mnist-table1' at profile 'paper'",
         _results_file(json.dumps({"experiment": "mnist-table1", "profile": "paper", "records": [GOOD_RECORD]}))),
    Case("results nested too deeply", RUN, "nested too deeply", _results_file("[" * 200000 + "]" * 200000)),
    Case("results a directory", RUN, "is a directory", _results_file(None, directory=True)),
    Case("results a named pipe", RUN, "is not a regular file", _results_fifo),
    # class 5: the results location must be writable before any training
    Case("results dir of an unknown user", [*RUN, "--results-dir", "~nosuchuser/x"], "cannot expand '~'"),
    Case("results dir is a file", RUN, "is not writable", _results_dir_is_a_file),
    Case("results dir under a file", RUN, "is not writable", _results_dir_under_a_file),
    Case("run results dir empty", [*RUN, "--results-dir", ""], "--results-dir is empty"),
    Case("bench --save results dir empty", ["bench", "--save", "--results-dir", ""], "--results-dir is empty"),
    Case("bench --save into a file", ["bench", "--save", "--reps", "1", "--steps", "1"], "is not writable",
         _results_dir_is_a_file),
    # class 7: bench and run arguments
    Case("bench --reps 0", ["bench", "--reps", "0"], "--reps must be a positive integer"),
    Case("bench --steps 0", ["bench", "--steps", "0"], "--steps must be a positive integer"),
    Case("bench --batch-size 0", ["bench", "--batch-size", "0"], "--batch-size must be a positive integer"),
    Case("bench --batch-size -1", ["bench", "--batch-size", "-1"], "--batch-size must be a positive integer"),
    Case("bench --batch-size 10**9", ["bench", "--batch-size", "1000000000"], "--batch-size must be a positive integer up to"),
    Case("bench --seed-batch 10**6", ["bench", "--seed-batch", "1000000"], "--seed-batch must be a positive integer up to"),
    Case("train lr=-…-1", ["train", "lr=" + "-" * 100000 + "1"], "lr must be a finite number"),
    Case("bench --seed-batch -1", ["bench", "--seed-batch", "-1"], "--seed-batch must be >= 0"),
    Case("bench --model toy", ["bench", "--model", "toy"], "bench supports models"),
    Case("bench --seed-batch 2 --regularizer nope", ["bench", "--seed-batch", "2", "--regularizer", "nope"],
         "unknown regularizer 'nope'"),
    Case("bench --reps x", ["bench", "--reps", "x"], "invalid int value: 'x'"),
    Case("run --seeds 10**8", [*RUN, "--seeds", "100000000"], "--seeds must be an integer from 1 to 1000"),
    Case("run --seeds 0", [*RUN, "--seeds", "0"], "--seeds must be an integer from 1 to 1000"),
    Case("run --seeds -3", [*RUN, "--seeds", "-3"], "--seeds must be an integer from 1 to 1000"),
    Case("run without --profile", ["run", "sin5x"], "the following arguments are required: --profile"),
    Case("run unknown option", [*RUN, "--fast"], "unrecognized arguments: --fast"),
    Case("unknown command", ["fly"], "invalid choice: 'fly'"),
    Case("run unknown experiment", ["run", "imagenet", "--profile", "smoke"], "unknown experiment 'imagenet'"),
    Case("run unknown profile", ["run", "sin5x", "--profile", "huge"], "unknown profile 'huge'"),
    Case("run --device tpu", ["run", "sin5x", "--profile", "smoke", "--device", "tpu"], "invalid choice: 'tpu'"),
    # class 9: data folders and files that cannot be used
    Case("data dir empty", [*TRAIN, "--data-dir", ""], "--data-dir is empty"),
    Case("run data dir empty", [*RUN, "--data-dir", ""], "--data-dir is empty"),
    Case("data dir missing", [*TRAIN, "--data-dir", "/nonexistent/data"], "does not exist"),
    Case("run sin5x data dir missing", [*RUN, "--data-dir", "/nonexistent/data"], "does not exist"),
    Case("data dir of an unknown user", [*TRAIN, "--data-dir", "~nosuchuser/x"], "~nosuchuser"),
    Case("MNIST file is a directory", TRAIN, "train-images-idx3-ubyte.gz",
         _mnist_copy(_dir_in_place_of("train-images-idx3-ubyte.gz"))),
    Case("run with a damaged MNIST file", ["run", "quickstart", "--profile", "smoke", "--no-progress"], "corrupt",
         _mnist_copy(_garbage("train-labels-idx1-ubyte.gz"))),
    Case("MNIST file is /dev/zero", TRAIN, "is not a regular file", _mnist_copy(_endless("t10k-labels-idx1-ubyte.gz"))),
]


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None: a folder). Lock and claim files — the
    store's sidecars — are left out: taking a lock is not changing a file."""
    snap: dict[str, bytes | None] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if ".lock" in p.name or ".claims" in rel:
            continue
        if p.is_dir() or (p.is_symlink() and not p.is_file()):
            snap[rel] = None
        else:   # a regular file's bytes; a pipe or device is only noted (reading it could block)
            snap[rel] = p.read_bytes() if p.is_file() else b"<not a regular file>"
    return snap


def _run_case(case: Case, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True)
    extra = case.setup(folder)
    before = _snapshot(folder)
    env = {**os.environ, "GRADREG_RESULTS": str(folder / "default-results"), "GRADREG_DATA": str(shared_data()),
           "PYTHONWARNINGS": "ignore"}
    cwd = folder / "cwd"
    cwd.mkdir()
    out = subprocess.run([sys.executable, "-m", "gradreg", *case.args, *extra], capture_output=True, text=True,
                         timeout=300, env=env, cwd=cwd)
    return {"rc": out.returncode, "stderr": out.stderr, "before": before,
            "after": {k: v for k, v in _snapshot(folder).items() if k != "cwd"}}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Every CLI case, run two at a time (each is a Python start-up importing torch)."""
    root = tmp_path_factory.mktemp("cli")
    with ThreadPoolExecutor(2) as pool:
        futures = {c.id: pool.submit(_run_case, c, root / f"case{i}") for i, c in enumerate(CASES)}
        return {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_bad_input_is_one_line_exit_2_and_no_file_changed(case, outcomes):
    out = outcomes[case.id]
    lines = out["stderr"].strip().splitlines()
    assert "Traceback" not in out["stderr"]
    assert out["rc"] == 2, out["stderr"]
    assert len(lines) == 1 and lines[0].startswith("gradreg: error:"), out["stderr"]
    assert case.message in lines[0], lines[0]
    assert out["after"] == {k: v for k, v in out["before"].items() if k != "cwd"}, "a file was created or changed"


def test_suite_covers_every_class():
    """The table is not allowed to shrink silently: about 90 hostile inputs across the classes."""
    assert len(SETTINGS) >= 50 and len(CASES) >= len(SETTINGS) + 30


# ---------------------------------------------------------------- the API: damaged files, failing writes

@pytest.mark.parametrize("text", ["{", "", "[]", '{"records": [null]}', '{"records": [{"cell": "a"}]}'])
def test_load_of_a_damaged_results_file_is_one_error_and_keeps_the_file(text, results_dir):
    path = results.Store("sin5x", "smoke", results_dir).path
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(GradregError, match=f"{path}"):
        experiments.load("sin5x", "smoke", results_dir=str(results_dir))
    with pytest.raises(GradregError, match=f"{path}"):
        experiments.run("sin5x", "smoke", results_dir=str(results_dir), progress=False, log=lambda _: None)
    assert path.read_text() == text


def _failing(errno_: int):
    def fail(*args, **kwargs):
        raise OSError(errno_, os.strerror(errno_))
    return fail


def test_full_disk_keeps_the_old_file_and_leaves_no_temporary_file(results_dir, monkeypatch):
    import errno
    store = results.Store("sin5x", "smoke", results_dir)
    store.add({**GOOD_RECORD})
    before = store.path.read_bytes()
    monkeypatch.setattr(os, "fsync", _failing(errno.ENOSPC))
    with pytest.raises(GradregError, match="No space left on device"):
        store.add({**GOOD_RECORD, "seed": 1})
    assert store.path.read_bytes() == before
    assert not list(store.path.parent.glob("*.tmp"))


def test_bench_save_on_a_full_disk_keeps_the_old_result(tmp_path, monkeypatch):
    import errno

    from gradreg import bench
    result = {"device": "cpu", "ratio": {"datagrad": 2.0}}
    saved = bench.save(result, str(tmp_path))
    before = saved.read_bytes()
    monkeypatch.setattr(os, "fsync", _failing(errno.ENOSPC))
    with pytest.raises(GradregError, match="No space left on device"):
        bench.save({**result, "ratio": {"datagrad": 3.0}}, str(tmp_path))
    assert saved.read_bytes() == before and not list(saved.parent.glob("*.tmp"))


def test_unwritable_results_folder_fails_before_any_training(results_dir, monkeypatch):
    import errno
    monkeypatch.setattr(Path, "write_bytes", _failing(errno.EACCES))          # the writability probe
    monkeypatch.setattr(experiments, "train", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(GradregError, match="is not writable .*Permission denied"):
        experiments.run("sin5x", "smoke", results_dir=str(results_dir), progress=False, log=lambda _: None)


def test_orphan_temporary_files_are_removed_at_the_next_start(results_dir):
    store = results.Store("sin5x", "smoke", results_dir)
    store.path.parent.mkdir(parents=True)
    orphan = store.path.parent / ".smoke.json.abc123.tmp"        # what a writer killed mid-write leaves
    orphan.write_text('{"half": ')
    store.prepare()
    assert not orphan.exists()


# ---------------------------------------------------------------- NaN is never "ok", and JSON stays strict

def _strict(text: str) -> Any:
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_a_nan_from_the_last_update_is_diverged_and_exits_1(data_dir, tmp_path):
    out = subprocess.run([sys.executable, "-m", "gradreg", "train", "lr=1e10", "iterations=1", "n_train=100",
                          "n_test=100", "eval_points=10", "device='cpu'", "--no-progress", "--data-dir",
                          str(data_dir)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().startswith("gradreg: training diverged") and "Traceback" not in out.stderr
    printed = _strict(out.stdout[out.stdout.index("\n{") + 1:])     # after the "config: ..." line
    assert printed["status"] == "diverged"


def test_diverged_records_are_stored_as_strict_json(results_dir, monkeypatch):
    import importlib

    import torch
    train_mod = importlib.import_module("gradreg.train")    # the module (gradreg.train is the function)
    real = train_mod.final_metrics

    def nan_metrics(*args, **kwargs):
        return {**real(*args, **kwargs), "test_loss": float("nan"), "curve": [1.0, float("inf")]}
    monkeypatch.setattr(train_mod, "final_metrics", nan_metrics)
    recs = experiments.run("sin5x", "smoke", device="cpu", progress=False, log=lambda _: None)
    assert {r["status"] for r in recs} == {"diverged"}
    stored = _strict(results.Store("sin5x", "smoke", results_dir).path.read_text())
    assert stored["records"][0]["metrics"]["test_loss"] is None
    assert stored["records"][0]["metrics"]["curve"] == [1.0, None]
    assert torch.isfinite(torch.tensor(stored["records"][0]["metrics"]["slope_grid"]))


def test_strict_turns_every_non_finite_number_into_null():
    assert results.strict({"a": [1.0, float("nan"), {"b": -INF}], "c": (INF, 2)}) == {
        "a": [1.0, None, {"b": None}], "c": [None, 2]}
    with pytest.raises(ValueError):
        json.dumps(float("nan"), allow_nan=False)              # what dumps() relies on
    assert "NaN" not in results.dumps({"x": float("nan")})


# ---------------------------------------------------------------- broken pipe and Ctrl-C at start-up

def test_list_into_a_closed_pipe_ends_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "gradreg", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()                                  # the reader is gone before the first line
    _, err = proc.communicate(timeout=120)
    assert err == b"" and proc.returncode == 141


def test_list_fits_the_longest_experiment_name():
    out = subprocess.run([sys.executable, "-m", "gradreg", "list"], capture_output=True, text=True, timeout=120)
    table, note = out.stdout.split("\n\n")                # the rows, then one paragraph on the estimates
    assert note.startswith("Estimates.")
    for line in table.splitlines()[1:]:
        name, profile = line.split()[:2]
        assert name in experiments.REGISTRY and profile in experiments.PROFILES, line


SCRIPT = str(Path(sys.executable).parent / "gradreg")      # the console script pip installed


@pytest.mark.parametrize("command, delay", [([sys.executable, "-m", "gradreg"], 0.2),
                                            ([sys.executable, "-m", "gradreg"], 0.6), ([SCRIPT], 0.4)])
def test_ctrl_c_during_start_up_is_one_line_and_status_130(command, delay, tmp_path):
    proc = subprocess.Popen([*command, "list"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    time.sleep(delay)                                    # python is still importing torch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    # 130, or killed by the SIGINT itself (-2) when it lands while Python finalises: both say "interrupted"
    assert proc.returncode in (130, -signal.SIGINT), err.decode()
    assert len(lines) == 1 and lines[0].startswith("gradreg: interrupted"), err.decode()


def test_snapshot_sees_changes(tmp_path):
    """The 'no file changed' check itself can fail."""
    (tmp_path / "a").write_text("x")
    before = _snapshot(tmp_path)
    (tmp_path / "a").write_text("y")
    assert _snapshot(tmp_path) != before


def test_output_into_a_full_disk_is_one_line(tmp_path):
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, "-m", "gradreg", "list"], stdout=full, stderr=subprocess.PIPE,
                             text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == "gradreg: error: cannot write the output: No space left on device"


def test_a_lock_held_too_long_is_an_error_not_a_hang(results_dir, monkeypatch):
    store = results.Store("sin5x", "smoke", results_dir)
    store.add({**GOOD_RECORD})
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR);"
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)",
                               str(store.lock_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(results, "LOCK_PATIENCE_S", 0.3)
        with pytest.raises(GradregError, match="has been locked by another process"):
            store.add({**GOOD_RECORD, "seed": 1})
    finally:
        holder.kill()
        holder.wait()
    store.add({**GOOD_RECORD, "seed": 1})                    # the holder is gone: the lock is free again
    assert len(store.records()) == 2


@pytest.mark.parametrize("call, message", [
    (lambda d: results.Store("../../escape", "smoke", d), "cannot name a results file"),
    (lambda d: results.Store("sin5x", "smoke", d).add({"cell": "a"}), "needs a string cell, an integer seed"),
    (lambda d: results.Store("sin5x", "smoke", d).add({"cell": "a", "seed": 0}), "a status and a metrics dict"),
    (lambda d: results.Store("sin5x", "smoke", 5), "--results-dir must be a folder path"),
    (lambda d: experiments.get(["x"]), "unknown experiment"),
    (lambda d: experiments.get("sin5x").profile({}), "unknown profile"),
    (lambda d: experiments.load("sin5x", "smoke", results_dir=d, seedz=2), "unknown option"),
    (lambda d: experiments.run("sin5x", "smoke", results_dir=d, device="tpu", log=print), "unknown device"),
    (lambda d: experiments.run("sin5x", "smoke", results_dir=d, seeds=2.0, log=print), "--seeds must be an integer"),
    (lambda d: experiments.run("sin5x", "smoke", results_dir=d, data_dir="/nonexistent", log=print), "does not exist"),
])
def test_api_bad_arguments_are_one_error_and_write_nothing(call, message, tmp_path):
    with pytest.raises(GradregError, match=message):
        call(str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("data, message", [
    ("mnist", "data must be a gradreg.data.Dataset"),
    (0, "data must be a gradreg.data.Dataset"),
    ("labels", "int64 class labels in 0..9"),
    ("float64", "inputs must be torch.float32"),
    ("short", "20 inputs but 19 targets"),
])
def test_train_refuses_data_that_do_not_fit_the_config(data, message):
    import torch

    from gradreg import train
    from gradreg.data import Dataset
    cfg = TrainConfig(iterations=1, n_train=20, device="cpu")
    x = torch.randn(20, 1, 28, 28)
    y = torch.randint(10, (20,))
    made = {"labels": Dataset("mnist", x, y + 10, x, y, 10),
            "float64": Dataset("mnist", x.double(), y, x.double(), y, 10),
            "short": Dataset("mnist", x, y[:19], x, y, 10)}
    with pytest.raises(GradregError, match=message):
        train(cfg, data=made.get(data, data), progress=False)


def test_bench_times_the_resnet_on_cifar_shaped_input():
    from gradreg import bench
    out = bench.bench("cifar_resnet", batch_size=2, reps=1, steps=1, device="cpu", names=["datagrad"])
    assert out["ratio"]["datagrad"] > 0
    with pytest.raises(GradregError, match="unknown device 'tpu'"):
        bench.bench(device="tpu")


def test_numpy_numbers_are_valid_settings_and_store_as_plain_json():
    import numpy as np
    cfg = TrainConfig(n_train=np.int64(100), seed=np.int32(3), lr=np.float32(0.5), weight_decay=np.float64(0.0))
    assert (type(cfg.n_train), type(cfg.seed), type(cfg.lr)) == (int, int, float)
    assert json.loads(results.dumps(cfg.to_dict()))["n_train"] == 100
    assert len(experiments.get("sin5x").configs("smoke", np.int64(2))) == 2 * len(experiments.get("sin5x").cells)
    assert TrainConfig(device="cuda:1").device == "cuda:1"                 # a valid name (used where CUDA is)


@pytest.mark.parametrize("record, message", [
    ({**GOOD_RECORD, "metrics": {"x": {1, 2}}}, "cannot store set"),
])
def test_a_record_json_cannot_hold_is_one_error(record, message, results_dir):
    import numpy as np
    store = results.Store("sin5x", "smoke", results_dir)
    with pytest.raises(GradregError, match=message):
        store.add(record)
    store.add({**GOOD_RECORD, "metrics": {"x": np.float32(0.5)}})
    assert store.records()[0]["metrics"]["x"] == 0.5


def test_a_claim_or_lock_path_that_is_a_link_never_writes_through_it(results_dir):
    store = results.Store("sin5x", "smoke", results_dir)
    store.claims.mkdir(parents=True)
    victim = results_dir / "victim.txt"
    victim.write_text("keep me")
    (store.claims / "none.0").symlink_to(victim)
    store.lock_path.symlink_to(victim)
    os.mkfifo(store.claims / "none.1")
    with store.claim([("none", 0), ("none", 1)]) as mine:
        assert mine == [("none", 0), ("none", 1)]
    store.add({**GOOD_RECORD})
    assert victim.read_text() == "keep me"


def test_bench_out_of_memory_is_one_error(monkeypatch):
    from gradreg import bench

    def exhausted(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")
    monkeypatch.setattr(bench, "_time_interleaved", exhausted)
    with pytest.raises(GradregError, match="out of memory timing lenet at batch 2"):
        bench.bench("lenet", batch_size=2, reps=1, steps=1, device="cpu", names=["datagrad"])
    with pytest.raises(GradregError, match="out of memory timing 2 × lenet"):
        bench.seed_batching("lenet", seeds=2, batch_size=2, reps=1, steps=1, device="cpu")


def test_a_complete_grid_needs_no_data(data_dir, results_dir, tmp_path):
    """Data are loaded before training only when something is left to train."""
    done = experiments.run("quickstart", "smoke", device="cpu", data_dir=str(data_dir), progress=False,
                           log=lambda _: None)
    (tmp_path / "empty").mkdir()
    again = experiments.run("quickstart", "smoke", device="cpu", data_dir=str(tmp_path / "empty"), progress=False,
                            log=lambda _: None)
    assert again == done

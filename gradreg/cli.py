"""The ``gradreg`` command: list, run and bench experiments, or train one config.

    gradreg list
    gradreg run EXPERIMENT --profile {smoke,cpu,paper} [--seeds N] [--device D] [--data-dir DIR] [--batch-seeds]
                [--executor ray [--address ADDR] [--cpus-per-run N] [--gpus-per-run F] [--retries R]]
    gradreg bench [--json] [--save] [--model lenet] [--reps 7] [--only R1,R2|steps] [--seed-batch S [--regularizer R]] [--ray]
    gradreg train key=value ...          e.g. gradreg train regularizer=datagrad weight=50 iterations=500

Exit status: 0 done; 2 a user error (unknown name, bad value, missing or damaged data or results
file, unwritable results folder), always one line on stderr and never a traceback; 1 `gradreg train`
diverged; 130 interrupted (finished runs are stored); 141 the reader of our output went away.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import sys
import warnings
from typing import Any

from . import bench as bench_mod
from . import experiments, results
from .errors import GradregError, ResultsMissing
from .config import TrainConfig
from .train import train


def _cmd_list(args: argparse.Namespace) -> None:
    from . import cost        # counts one step per distinct config on the meta device: seconds, so only here
    width = max(len("experiment"), *(len(name) for name in experiments.REGISTRY)) + 2
    print(f"{'experiment':<{width}}{'profile':<8}{'runs':>6}{'iterations':>12}{'est. 2-core CPU':>17}"
          f"{'est. one H100':>25}  source")
    for exp in experiments.REGISTRY.values():
        for profile in exp.profiles:
            try:
                grid = exp.configs(profile)
            except ResultsMissing as err:   # settings derived from results not yet stored
                print(f"{exp.name:<{width}}{profile:<8}  not yet configurable: {err}")
                continue
            minutes = exp.estimated_cpu_seconds(profile) / 60
            gpu = cost.format_hours(cost.gpu_seconds(exp, profile, grid=grid)) if profile != "smoke" else "-"
            print(f"{exp.name:<{width}}{profile:<8}{len(grid):>6}{grid[0][2].iterations:>12}"
                  f"{minutes:>13.1f} min{gpu:>25}  {exp.source if profile == 'smoke' else ''}", flush=True)
    print("\nEstimates. CPU: measured plain-step times × each step's cost (gradreg.experiments). GPU: "
          "seeds of a cell stacked, as `gradreg run` does on CUDA; (measured): from saved CUDA benches "
          "(gradreg bench --device cuda --save); (model): counted operators and flops of one step on "
          f"the meta device at {cost.T_OP * 1e6:g} µs per operator and {cost.THROUGHPUT / 1e12:g} TFLOP/s "
          "(gradreg.cost): within a factor of a few.")


def _cmd_run(args: argparse.Namespace) -> None:
    exp = experiments.get(args.experiment)
    overrides = exp.profile(args.profile).overrides
    print(f"{exp.title}\nsource: {exp.source}\nbase config: {exp.base.replace(**overrides, device=args.device)}")
    cluster = {k: getattr(args, k) for k in ("address", "cpus_per_run", "gpus_per_run", "retries")
               if getattr(args, k) is not None}
    experiments.run(args.experiment, args.profile, seeds=args.seeds, device=args.device,
                    data_dir=args.data_dir, results_dir=args.results_dir, progress=not args.no_progress,
                    batch_seeds=args.batch_seeds, executor=args.executor, cluster=cluster or None)


def _json_object(text: str) -> dict[str, Any]:
    """A --model-options value: a JSON object, else one GradregError."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise GradregError(f"--model-options must be a JSON object, e.g. '{{\"width\": 1}}': {err}") from None
    if not isinstance(value, dict):
        raise GradregError(f"--model-options must be a JSON object, got {text!r}")
    return value


def _cmd_bench(args: argparse.Namespace) -> None:
    if args.seed_batch < 0:
        raise GradregError(f"--seed-batch must be >= 0 (0: off), got {args.seed_batch}")
    if args.save:  # fail before the timing, not after it
        results.ensure_writable(bench_mod.path("cpu", args.results_dir).parent)
    if args.ray:
        from . import cluster                      # imports ray: only when asked for
        result = cluster.overhead()
        walls = result["grid_wall_s"]
        print(f"Ray {result['ray']} on this machine ({result['cpus']:g} CPUs): start a local instance "
              f"{result['ray_start_s']:.1f} s, stop it {result['ray_stop_s']:.1f} s; a task's round trip "
              f"{result['task_round_trip_ms']:.2f} ms one at a time, {result['task_pipelined_ms']:.2f} ms each with "
              f"{result['tasks_timed']} in flight; `gradreg run {result['experiment']} --profile {result['profile']}` "
              f"({result['runs']} runs): local {walls['local']:.1f} s, --executor ray {walls['ray']:.1f} s")
        if args.save:
            print(f"saved to {bench_mod.save(result, args.results_dir, kind='ray')}")
        return
    if args.seed_batch:
        result = bench_mod.seed_batching(args.model, args.regularizer, args.seed_batch, args.batch_size,
                                         args.reps, args.steps, args.device)
        ms = {k: f"{1000 * v:.1f} ms" for k, v in result["seconds_per_step"].items()}
        print(f"{args.seed_batch} × {args.model} ({args.regularizer or 'plain'}, batch {args.batch_size}) on "
              f"{result['device']}, {result['threads']} threads: {ms}; speed-up of stacking {result['speedup']:.2f}×")
        if args.save:
            print(f"saved to {bench_mod.save(result, args.results_dir, kind='seeds')}")
        return
    result = bench_mod.bench(args.model, args.batch_size, args.reps, args.steps, args.device,
                             args.only.split(",") if args.only else None, _json_object(args.model_options),
                             "channels_last" if args.channels_last else "contiguous")
    print(bench_mod.table(result))
    if args.save:
        print(f"saved to {bench_mod.save(result, args.results_dir, kind=bench_mod.kind(result))}")
    if args.json:
        print(json.dumps(result["ratio"]))


def _parse_override(item: str, types: dict[str, Any]) -> tuple[str, Any]:
    """``key=value`` with value a Python literal (a bare word is a string); unknown keys are errors."""
    key, sep, text = item.partition("=")
    if not sep:
        raise GradregError(f"expected key=value, got {item!r}")
    if key not in types:
        raise GradregError(f"unknown config key {key!r}; known: {', '.join(types)}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # not a literal: a bare word
        value = text
    return key, value


def _cmd_train(args: argparse.Namespace) -> None:
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig().replace(**dict(_parse_override(item, types) for item in args.overrides))
    print(f"config: {cfg}")
    out = train(cfg, data_dir=args.data_dir, progress=not args.no_progress)
    print(results.dumps({k: out[k] for k in ("status", "metrics", "train_seconds", "device")}))
    if out["status"] != "ok":
        raise Diverged(f"training diverged (non-finite loss, weights or metrics; {out['iterations_done']} of "
                       f"{cfg.iterations} iterations done): try a smaller lr or weight")


class Diverged(Exception):
    """`gradreg train` ran, but its model diverged: exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse with our one-line errors (argparse itself prints the usage too)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"gradreg: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gradreg", description="Gradient regularization experiments.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="experiments, profiles and their estimated cost").set_defaults(fn=_cmd_list)

    run = sub.add_parser("run", help="run (or resume) an experiment's grid at a profile")
    run.add_argument("experiment")
    run.add_argument("--profile", required=True, help="smoke | cpu | paper")
    run.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the profile's)")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/ (default: $GRADREG_DATA)")
    run.add_argument("--results-dir", default=None, help="default: $GRADREG_RESULTS or the checkout's results/")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--batch-seeds", action=argparse.BooleanOptionalAction, default=None,
                     help="train each cell's seeds together as one stacked model (default: on CUDA only)")
    ray = run.add_argument_group("cluster", "run the grid's tasks on a Ray cluster (pip install 'gradreg[cluster]')")
    ray.add_argument("--executor", default="local", choices=experiments.EXECUTORS,
                     help="local: train in this process (default); ray: one Ray task per run, or per "
                          "seed-batched cell on GPUs")
    ray.add_argument("--address", default=None,
                     help="join this Ray cluster (auto, HOST:6379 or ray://HOST:10001); default: the one running on this "
                          "machine, else a new one for this command")
    ray.add_argument("--cpus-per-run", type=float, default=None, metavar="N", help="CPUs each task reserves (default 1)")
    ray.add_argument("--gpus-per-run", type=float, default=None, metavar="F",
                     help="GPUs each task reserves; a fraction shares a GPU (default: 1 where the cluster has GPUs)")
    ray.add_argument("--retries", type=int, default=None,
                     help="re-queues of a task whose worker or node was lost (default 3)")
    run.set_defaults(fn=_cmd_run)

    b = sub.add_parser("bench", help="step cost of each regularizer or step rule as a ratio to a plain step",
                       description="Time a plain training step and each variant's step interleaved in one "
                       "process; report ratios to plain. Variants: the input-gradient regularizers (weight "
                       "0.01) and the parameter-space step rules gr-db, gr-forward, gr-backward, gr-central, "
                       "sam, flooding (gamma 0.01, eps 0.05, rho 0.05, b 0.05). `--only steps` times every "
                       "step rule (and adds gr-forward ÷ gr-db), saved apart from the regularizer bench "
                       "(results/bench/[MODEL-OPTIONS-]steps-<device>.json). An mlp with in_features 3072 "
                       "is fed CIFAR-shaped batches, 784 MNIST-shaped ones.")
    b.add_argument("--json", action="store_true", help="also print the ratios as one JSON object (last line)")
    b.add_argument("--save", action="store_true",
                   help="store the result in results/bench/[<kind>-]<device>.json (kind: model, options, "
                        "layout, 'steps' for step rules; none for the default LeNet regularizer bench)")
    b.add_argument("--results-dir", default=None)
    b.add_argument("--model", default="lenet")
    b.add_argument("--model-options", default="{}", metavar="JSON",
                   help='options of the model builder, e.g. \'{"width": 1, "blocks": 1}\' for cifar_resnet, '
                        '\'{"in_features": 3072, "hidden": 512, "depth": 3}\' for an mlp on CIFAR-shaped input')
    b.add_argument("--channels-last", action="store_true", help="weights and batch in channels_last memory format")
    b.add_argument("--only", default=None, metavar="NAME[,NAME]",
                   help="time only these regularizers and/or step rules (gr-db, gr-forward, gr-backward, "
                        "gr-central, sam, flooding); a suite name stands for all its members: 'steps' (every "
                        "step rule) or 'regularizers' (default: every regularizer)")
    b.add_argument("--batch-size", type=int, default=50)
    b.add_argument("--reps", type=int, default=7)
    b.add_argument("--steps", type=int, default=10)
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    b.add_argument("--seed-batch", type=int, default=0, metavar="S",
                   help="instead: time S seeds stepped one at a time against one stacked step")
    b.add_argument("--regularizer", default="datagrad", help="with --seed-batch (default: datagrad)")
    b.add_argument("--ray", action="store_true",
                   help="instead: what a local Ray instance costs here (start-up, a task's round trip, the "
                        "sin5x smoke grid local vs --executor ray); --save: results/bench/ray-cpu.json")
    b.set_defaults(fn=_cmd_bench)

    t = sub.add_parser("train", help="train one config given as key=value overrides of TrainConfig")
    t.add_argument("overrides", nargs="*")
    t.add_argument("--data-dir", default=None)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=_cmd_train)
    return p


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (e.g. CIFAR-10 files that are not the official ones) as one line each, like errors."""
    print(f"gradreg: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):      # a terminal that cannot show "×" gets "\xd7", not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    warnings.showwarning = _warning_line
    try:
        args = parser().parse_args(argv)
        args.fn(args)
        sys.stdout.flush()
    except GradregError as err:
        one_line = " / ".join(part.strip() for part in str(err).splitlines() if part.strip())
        print(f"gradreg: error: {one_line}", file=sys.stderr)
        return 2
    except Diverged as err:
        print(f"gradreg: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gradreg: interrupted; finished runs are stored, rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader closed the pipe (`gradreg list | head -1`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:
        # the package's own files report GradregErrors; left: a path the OS refuses (too long, out of
        # file handles) or our output stream (`gradreg list > /dev/full`)
        if err.filename is not None:
            print(f"gradreg: error: cannot use {err.filename}: {err.strerror or err}", file=sys.stderr)
        else:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            print(f"gradreg: error: cannot write the output: {err.strerror or err}", file=sys.stderr)
        return 2
    except Warning as warning:  # PYTHONWARNINGS=error turned a warning into an error
        print(f"gradreg: error: {' '.join(str(warning).split())}", file=sys.stderr)
        return 2
    return 0

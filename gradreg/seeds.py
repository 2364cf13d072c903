"""Seed-batched training: the S seeds of one grid cell trained together as one model.

A cell of an experiment is the same architecture and objective trained from S seeds. On a GPU one
LeNet at batch 50 is launch-bound: the device idles between small kernels. ``SeedStack`` holds the
S members' parameters stacked along a new leading axis ([S, ...] per tensor) and evaluates all
members in one call with ``torch.vmap`` over ``torch.func.functional_call``, so every kernel
launch does S models' work. The stack looks like one model taking an [S·B, ...] batch (member s
sees rows s·B … s·B + B − 1) and returning [S·B, K] logits, so the training objective and every
regularizer in ``gradreg.regularizers`` run on it unchanged: examples never mix across members, so
per-example input gradients stay per member. The objective is summed over members (not averaged),
which gives each member's parameters exactly the gradient of its own single-seed objective.

What is shared and what is not, against S one-at-a-time runs with the same seeds:
- the same initial weights, training subsets and minibatch order (each member draws them from its
  own seed's generator) and the same SpectReg projections r (drawn per member);
- dropout masks and random-onehot classes come from other random streams (vmap draws dropout per
  member), so runs with dropout agree in distribution, not bit for bit.
Without randomness in the step, a stacked run reproduces the single runs to float rounding
(``tests/test_seeds.py`` checks it).
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state
from tqdm.auto import tqdm

from . import conv, models, steps
from . import data as datasets
from .config import TrainConfig
from .errors import GradregError
from .train import (
    augment,
    curve_point,
    finish,
    flush_denormals,
    load_data,
    make_optimizer,
    make_scheduler,
    resolve_device,
    step,
)


def _plain_convs(model: nn.Module) -> nn.Module:
    """The same network with ``conv.Conv2d`` layers as ``nn.Conv2d`` (same parameters). Under vmap the
    custom Functions' generated batching rule measured about 2× slower than the library convolution's
    (CPU, 1 thread), and ``is_grads_batched`` cannot see through them at all."""
    for m in model.modules():
        if isinstance(m, conv.Conv2d):
            m.__class__ = nn.Conv2d
    return model


def _set_tensor(root: nn.Module, name: str, value: Tensor, parameter: bool) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = root.get_submodule(module_name)
    if parameter:
        setattr(module, leaf, nn.Parameter(value))
    else:
        module._buffers[leaf] = value


class SeedStack(nn.Module):
    """S same-architecture networks as one model on [S·B, ...] inputs, parameters stacked [S, ...].

    ``self.stacked`` has the members' module structure with every parameter and buffer stacked, so
    ``models.weight_decay_params`` and the optimizer treat it like any model.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise GradregError("SeedStack needs at least one member")
        self.size = len(members)
        params, buffers = stack_module_state(members)
        self.stacked = _plain_convs(copy.deepcopy(members[0]))  # holds the tensors; its forward is unused
        for name, value in params.items():
            _set_tensor(self.stacked, name, value.detach(), parameter=True)
        for name, value in buffers.items():
            _set_tensor(self.stacked, name, value, parameter=False)
        # a parameter-free copy whose forward the members share (a list hides it from nn.Module)
        self._skeleton = [_plain_convs(copy.deepcopy(members[0])).to("meta")]

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] % self.size:
            raise GradregError(f"SeedStack of {self.size} members got a batch of {x.shape[0]} rows")
        skeleton = self._skeleton[0].train(self.training)
        state = (dict(self.stacked.named_parameters()), dict(self.stacked.named_buffers()))

        def member(p: dict, b: dict, xs: Tensor) -> Tensor:
            return functional_call(skeleton, (p, b), (xs,))

        g = torch.vmap(member, randomness="different")(*state, x.unflatten(0, (self.size, -1)))
        return g.flatten(0, 1)

    def member(self, s: int, into: nn.Module) -> nn.Module:
        """Copy member s's parameters and buffers into ``into`` (a fresh model of the architecture)."""
        state = {name: t[s].detach().clone() for name, t in self.stacked.state_dict().items()}
        into.load_state_dict(state)
        return into


def _draw_r(cfg: TrainConfig, generators: list[torch.Generator], batch: int, classes: int,
            like: Tensor) -> dict[str, Tensor]:
    """SpectReg's projection per member, from that member's generator (as its single run draws it)."""
    if cfg.regularizer != "spectreg" or cfg.weight <= 0 or "r" in cfg.reg_options:
        return {}
    r = torch.stack([torch.randn(classes, generator=g, dtype=like.dtype) for g in generators])
    return {"r": r.to(like.device).repeat_interleave(batch, dim=0)}


def train_seeds(cfg: TrainConfig, seeds: list[int], *, data_dir: str | None = None, progress: bool = True,
                extra_metrics: Callable[[nn.Module, datasets.Dataset], dict[str, Any]] | None = None
                ) -> list[dict[str, Any]]:
    """Train ``cfg`` once per seed, all seeds at once; one result per seed, as ``train.train`` returns.

    ``train_seconds`` is the stack's wall time divided among its members; ``history`` is the
    members' mean objective (shared by all results of the stack); ``seed_batch`` is S.
    """
    if not isinstance(cfg, TrainConfig):
        raise GradregError(f"train_seeds() needs a TrainConfig, got {type(cfg).__name__}")
    if not seeds or not isinstance(seeds, (list, tuple)) or len(set(seeds)) != len(seeds):
        raise GradregError(f"train_seeds needs a list of distinct seeds, got {seeds!r}")
    if not steps.get(cfg.step).separable:
        raise GradregError(f"step {cfg.step!r} mixes the members of a seed stack (see gradreg.steps); "
                           "train its seeds one at a time")
    device = resolve_device(cfg.device)
    flush_denormals(device)
    cfgs = [cfg.replace(seed=s) for s in seeds]           # each seed validated as a config field
    data = [load_data(c, device, data_dir).to(device) for c in cfgs]
    sizes = {len(d.x_train) for d in data}
    if len(sizes) > 1:
        raise GradregError(f"seed-batched training needs equal training sets, got sizes {sorted(sizes)}")
    x_all = torch.stack([d.x_train for d in data])                  # [S, N, ...]
    y_all = torch.stack([d.y_train for d in data])

    members = []
    for c in cfgs:
        torch.manual_seed(c.seed)                                   # the same initial weights as train()
        members.append(models.build(c.model, **c.model_options).to(device))
    with torch.no_grad():
        classes = members[0].eval()(x_all[0, :1]).shape[1]         # K, for SpectReg's projections
    members[0].train()
    stack = SeedStack(members)
    opt = make_optimizer(cfg, stack.stacked)
    params = list(stack.parameters())
    scheduler = make_scheduler(cfg, opt)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    batches = [datasets.batch_indices(x_all.shape[1], cfg.batch_size, g) for g in generators]
    rows = torch.arange(len(seeds), device=device)[:, None]
    shared = torch.Generator().manual_seed(seeds[0])               # augmentation, random onehot

    history: list[tuple[int, float]] = []
    curves: list[list[dict[str, float]]] = [[] for _ in seeds]
    if cfg.curve_every:   # one model per member to copy its weights into at each curve point; building
        with torch.random.fork_rng(devices=[]):      # draws weights, but not from the training stream
            shells = [models.build(c.model, **c.model_options).to(device) for c in cfgs]
    window = torch.zeros((), device=device)
    start = time.perf_counter()
    for it in tqdm(range(cfg.iterations), disable=not progress, leave=False, desc=f"{len(seeds)} seeds"):
        stack.train()
        idx = torch.stack([next(b) for b in batches]).to(device)    # [S, B]
        x = augment(x_all[rows, idx].flatten(0, 1), cfg.augment, shared)
        options = _draw_r(cfg, generators, idx.shape[1], classes, x)
        # the objective is the mean over members; scaled by S, each member gets its own gradient
        window += step(stack, opt, params, x, y_all[rows, idx].flatten(), cfg, shared,
                       scale=len(seeds), reg_options=options)
        scheduler.step()
        if (it + 1) % cfg.log_every == 0 or it + 1 == cfg.iterations:
            history.append((it + 1, window.item() / ((it % cfg.log_every) + 1)))
            window.zero_()
        if cfg.curve_every and (it + 1) % cfg.curve_every == 0:
            for s, (c, d, curve) in enumerate(zip(cfgs, data, curves)):
                curve.append(curve_point(stack.member(s, shells[s]), d, c, it + 1))
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = (time.perf_counter() - start) / len(seeds)

    out = []
    for s, (c, d, g, curve) in enumerate(zip(cfgs, data, generators, curves)):
        start = time.perf_counter()
        model = stack.member(s, models.build(c.model, **c.model_options).to(device))
        status, metrics = finish(model, d, c, g, extra_metrics)
        out.append({"status": status, "metrics": metrics, "history": history, "curve": curve,
                    "iterations_done": cfg.iterations, "train_seconds": train_seconds,
                    "eval_seconds": time.perf_counter() - start, "device": str(device), "model": model,
                    "seed_batch": len(seeds)})
    return out


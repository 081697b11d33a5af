"""Training infrastructure shared by the three trainers (stage 1 VAE, stage 2 LSGM, pixel SGM).

What lives here, and what the trainers only call:

* CLI parsing and config resolution (``--config``, ``--set``, ``--dry-run``; exit code 2 on a bad config);
* seeding (the seed is recorded, never random), device choice, DDP when launched by ``torchrun``
  (``WORLD_SIZE > 1``; ``world_size == 1`` runs plainly, without a process group);
* schedules: learning rate (linear warm-up, then per-step cosine to ``lr_min``), the KL coefficient of
  NVAE/LSGM (reference 4.1) and KL balancing (the "square" alpha scheme);
* :class:`InfiniteLoader`, an endless, resumable batch stream (epoch, position and sampler seed are state);
* :class:`Run`: AMP, gradient routing/clipping, divergence detection, stats, atomic checkpoints every N
  steps / M minutes / on SIGTERM or SIGUSR1, exact resume (models, optimizers, EMA, GradScaler, data order,
  every RNG), and the run directory files (``config.yaml``, ``stats.jsonl``, ``run.json``, ``model.pt``);
* :func:`train`, the loop itself.

A trainer is a "task" object with ``modules`` / ``optimizers`` / ``emas`` dicts, ``train_step(x, step)``,
``validate()``, ``model_state()`` and ``meta`` (see :class:`Task`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lsgm.config import ConfigError, KLConfig, OptimConfig, RunConfig, apply_overrides, load_run_config, to_dict
from lsgm.data import DatasetError
from lsgm.methods import split_batch
from lsgm.nets.sync_bn import convert_sync_batchnorm
from lsgm.train.ema import EMA
from lsgm.utils import atomic_torch_save, atomic_write_json, atomic_write_text, provenance

EXIT_CONFIG = 2  # unusable config / arguments
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after a checkpoint; rerun to resume
CKPT_NAME = "ckpt.pt"
# Config keys that may change between a checkpoint and its resumption (they do not affect the result).
RESUME_FREE_KEYS = {("train", "log_every"), ("train", "checkpoint_every_steps"),
                    ("train", "checkpoint_every_minutes"), ("data", "num_workers"), ("data", "root")}


class Diverged(Exception):
    """A non-finite loss or gradient: training ends cleanly with status ``diverged``."""

    def __init__(self, step: int, reason: str):
        super().__init__(reason)
        self.step, self.reason = step, reason


# ----------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str], kind: str, needs_vae: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"lsgm train-{kind}", description=f"train a {kind} run (see docs/ARCHITECTURE.md)")
    p.add_argument("--config", required=True, help="run config YAML (lsgm.config.RunConfig)")
    p.add_argument("--out", required=True, help="run directory: config.yaml, stats.jsonl, run.json, model.pt")
    if needs_vae:
        p.add_argument("--vae", help="stage-1 VAE_DIR/model.pt (required unless --dry-run)")
    p.add_argument("--ckpt-dir", default=None, help="resume checkpoints (default OUT/.ckpt)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--master-port", type=int, default=None,
                   help="DDP rendezvous port when MASTER_PORT is not set by the launcher (default 29500)")
    args = p.parse_args(argv)
    if needs_vae and not args.vae and not args.dry_run:
        p.error("the following arguments are required: --vae")
    return args


def resolve_config(args: argparse.Namespace, kind: str) -> RunConfig:
    cfg = apply_overrides(load_run_config(args.config), args.overrides)
    if cfg.kind != kind:
        raise ConfigError(f"{args.config}: kind is {cfg.kind!r} but this command trains {kind!r} runs")
    return cfg


def cli_main(argv: list[str] | None, kind: str, build_task: Callable[["Run", argparse.Namespace], "Task"],
             needs_vae: bool = False) -> int:
    """Shared ``main``: parse, resolve, dry-run or train. Bad configs exit with code 2 and a clear message."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv, kind, needs_vae)
    except SystemExit as err:  # argparse: --help (0) or usage error (2)
        return int(err.code or 0)
    try:
        cfg = resolve_config(args, kind)
    except ConfigError as err:
        print(f"lsgm train-{kind}: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if args.dry_run:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    run = Run(cfg, Path(args.out), Path(args.ckpt_dir) if args.ckpt_dir else None, args.master_port)
    try:
        task = build_task(run, args)
        return train(run, task)
    except ConfigError as err:
        print(f"lsgm train-{kind}: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except DatasetError as err:
        print(f"lsgm train-{kind}: data error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        run.close()


# ----------------------------------------------------------------------------------------------- setup
@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(master_port: int | None = None) -> DistInfo:
    """DDP from the torchrun environment (``WORLD_SIZE > 1``): nccl on GPU, gloo on CPU. One process runs
    plainly with no process group (no rendezvous needed: reference section 9, issue 5)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(master_port or 29500))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, local_rank, world, device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state, as tensors/plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------------------------- schedules
def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warm-up to ``cfg.lr`` over ``warmup_steps`` (lr * (step + 1) / warmup), then cosine to ``lr_min``
    at the last step. Per step (the official code steps the cosine per epoch)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps - 1)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def kl_coeff_at(step: int, total: int, anneal_portion: float, const_portion: float,
                c_min: float, c_max: float) -> float:
    """NVAE's ``kl_coeff``: clip(c_min + (c_max - c_min) (step - const_steps) / anneal_steps, c_min, c_max),
    anneal_steps = anneal_portion * total, const_steps = const_portion * total (reference 4.1)."""
    anneal = anneal_portion * total
    if anneal <= 0:
        return c_max
    value = c_min + (c_max - c_min) * (step - const_portion * total) / anneal
    return max(min(value, c_max), c_min)


def stage1_kl_coeff(step: int, total: int, cfg: KLConfig) -> float:
    return kl_coeff_at(step, total, cfg.anneal_portion, cfg.const_portion, cfg.const_coeff, cfg.max_coeff)


def stage2_kl_coeff(step: int, total: int, cfg: KLConfig) -> float:
    """``--cont_kl_anneal``: 0.7 -> 1.0 over the first 10% of stage-2 steps; otherwise 1.0 (reference 4.2)."""
    return kl_coeff_at(step, total, 0.1, 0.0, 0.7, 1.0) if cfg.continue_anneal else 1.0


def kl_balance_alphas(num_scales: int, groups_per_scale: int) -> torch.Tensor:
    """NVAE's "square" scheme: group g of scale s (s = 0 the top) gets 4^s / groups_per_scale, min-normalised.
    Ordered like ``VAEOutput.kl_groups`` (top first); shape [G]."""
    alpha = torch.tensor([4.0**s / groups_per_scale for s in range(num_scales) for _ in range(groups_per_scale)])
    return alpha / alpha.min()


def balanced_kl(kl_groups: list[torch.Tensor], kl_coeff: float, alphas: torch.Tensor, balance: bool) -> torch.Tensor:
    """kl_coeff * sum_g c_g KL_g per sample [B]. With ``balance`` and kl_coeff < 1: c_g proportional to
    (mean_B |KL_g| + 0.01) / alpha_g, normalised to mean 1 and detached (reference 4.1); else c_g = 1."""
    kl = torch.stack(kl_groups, dim=1)  # (B, G)
    if balance and kl_coeff < 1.0:
        coeff = kl.abs().mean(dim=0) + 0.01  # (G,)
        coeff = coeff / alphas.to(kl) * coeff.sum()
        coeff = (coeff / coeff.mean()).detach()
        return kl_coeff * (kl * coeff).sum(dim=1)
    return kl_coeff * kl.sum(dim=1)


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """adamax: NVAE's Adamax with coupled L2 weight decay; adamw: decoupled weight decay (= apex FusedAdam's
    default adam_w_mode, the official stage-2 optimizer); adam: coupled L2 (torch Adam)."""
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    cls = {"adamax": torch.optim.Adamax, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[cfg.name]
    return cls(params, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ----------------------------------------------------------------------------------------------- data
class InfiniteLoader:
    """Endless batches of ``x`` with a resumable order.

    Each epoch is a ``DistributedSampler(seed, epoch)`` permutation (every rank its shard, drop_last), cut
    into full batches of ``batch_size`` (per process). ``state_dict`` = (epoch, position in batches, seed);
    resuming skips the consumed indices without loading them. The DataLoader gets its own generator, so
    creating an iterator never consumes the global torch RNG. With ``num_workers == 0`` the per-access
    randomness of the dataset (dynamic binarization, flips) comes from the global torch RNG, which the
    checkpoint restores: resume is exact. With workers, the order is exact but the per-access draws after
    a resume differ (workers are re-seeded per iterator)."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, pin_memory: bool = False):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise ConfigError(f"per-process batch {batch_size} (train.global_batch / processes / accumulation) exceeds "
                              f"the {len(self.sampler)} training items per process")
        self.epoch, self.position, self._it = 0, 0, None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if (state["seed"], state["batch_size"]) != (self.seed, self.batch_size):
            raise ConfigError(f"checkpoint data order {state} does not match seed {self.seed} / batch {self.batch_size}")
        self.epoch, self.position, self._it = int(state["epoch"]), int(state["position"]), None

    def _start(self) -> None:
        self.sampler.set_epoch(self.epoch)
        indices = list(self.sampler)[self.position * self.batch_size: self.batches_per_epoch * self.batch_size]
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self._it = iter(DataLoader(self.dataset, batch_size=self.batch_size, sampler=indices, drop_last=True,
                                   num_workers=self.num_workers, generator=gen, pin_memory=self.pin_memory))

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self._start()
        x = next(self._it)[0]
        self.position += 1
        return x


# ----------------------------------------------------------------------------------------------- task
class Task(Protocol):
    loader: InfiniteLoader
    modules: dict[str, nn.Module]  # unwrapped modules whose state_dicts are checkpointed
    optimizers: dict[str, torch.optim.Optimizer]
    emas: dict[str, EMA]
    meta: dict  # recorded in run.json / model.pt (deviations, optimizer semantics, ...)

    def train_step(self, batches: list, step: int) -> dict[str, float]: ...  # grad_accum micro-batches, one step
    def validate(self) -> dict: ...
    def model_state(self) -> dict: ...  # {"state": {...}, "ema": {...} | None}
    # checkpoint selection (train.select_every_steps > 0; stage 1 only): the score to minimise, its name, and
    # how to put a kept model_state() back
    def selection_score(self) -> float: ...
    def selection_criterion(self) -> str: ...
    def load_model_state(self, state: dict) -> None: ...


def _cpu_copy(obj):
    """A detached CPU copy of a nested dict of tensors (a kept model state must not alias the live weights)."""
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    return obj.detach().to("cpu", copy=True) if isinstance(obj, torch.Tensor) else obj


class Selection:
    """The best-so-far weights by a validation score (official train_vae.py keeps the checkpoint with the best
    10-sample validation bound, evaluated 40 times over training). Checkpointed with the run, so a resumed run
    keeps its history and its best weights."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.history: list[list[float]] = []  # [step, score]
        self.best_step: int | None = None
        self.best_score = math.inf
        self.best_state: dict | None = None

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == total)

    def update(self, task: Task, step: int) -> None:
        score = float(task.selection_score())
        self.history.append([step, score])
        if math.isfinite(score) and score < self.best_score:
            self.best_step, self.best_score, self.best_state = step, score, _cpu_copy(task.model_state())

    def state_dict(self) -> dict:
        return {"every": self.every, "history": self.history, "best_step": self.best_step,
                "best_score": self.best_score, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best_step = [list(h) for h in state["history"]], state["best_step"]
        self.best_score, self.best_state = float(state["best_score"]), state["best_state"]

    def record(self, task: Task) -> dict:
        """What run.json says about the selection."""
        return {"criterion": task.selection_criterion(), "every_steps": self.every, "evaluations": self.history,
                "selected_step": self.best_step, "selected_score": self.best_score if self.best_step is not None else None}


class _StopFlag:
    """SIGTERM/SIGUSR1 only set a flag; the loop checkpoints at the next step boundary and exits 75."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.signum, self._previous = None, {}

    def install(self) -> None:
        with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


# ----------------------------------------------------------------------------------------------- run
class Run:
    """One training run: devices, DDP, AMP, stats, checkpoints and the run directory files."""

    def __init__(self, cfg: RunConfig, out: Path, ckpt_dir: Path | None = None, master_port: int | None = None):
        self.cfg, self.out = cfg, Path(out)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else self.out / ".ckpt"
        self.dist = setup_distributed(master_port)
        self.device = self.dist.device
        self.total_steps = cfg.train.steps
        # the global batch is the config's; this world size decides the per-process micro-batch and accumulation
        self.per_process_batch, self.grad_accum = split_batch(cfg.train.global_batch, self.dist.world_size,
                                                              cfg.train.max_batch_per_process)
        self.amp_requested = cfg.train.amp
        self.amp = cfg.train.amp if self.device.type == "cuda" else "off"
        self.amp_note = None if self.amp == self.amp_requested else "CPU: autocast disabled (amp forced off)"
        self.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10) if self.amp == "fp16" else None
        self.stop = _StopFlag()
        self.stop.install()
        self.elapsed_before = 0.0  # wall seconds of earlier (preempted) attempts
        self.t_start = time.time()
        self.last_ckpt_time = time.time()
        self.resumed_from: list[int] = []
        self.selection = Selection(cfg.train.select_every_steps)
        seed_everything(cfg.seed + self.dist.rank)  # per-rank noise; DDP broadcasts rank 0's initial weights
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            from lsgm.config import save_run_config
            save_run_config(cfg, self.out / "config.yaml")

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def close(self) -> None:
        self.stop.restore()
        if self.dist.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def wall_seconds(self) -> float:
        return self.elapsed_before + time.time() - self.t_start

    # -------------------------------------------------------------------- models
    def wrap(self, module: nn.Module) -> nn.Module:
        """Move to the device; under torchrun (world size > 1) convert its BatchNorm layers to SyncBatchNorm
        (statistics over all processes' micro-batches, as the official code; the NVAE is the only model with
        BatchNorm) and DDP-wrap. The conversion keeps parameters, buffers and state_dict keys: checkpoints load
        into the unconverted model (single-process evaluation)."""
        module = module.to(self.device)
        if self.dist.enabled:
            module = convert_sync_batchnorm(module)
            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(module, device_ids=ids)
        return module

    def make_loader(self, dataset: Dataset) -> InfiniteLoader:
        """Per-process micro-batches; one optimizer step consumes ``grad_accum`` of them."""
        return InfiniteLoader(dataset, self.per_process_batch, self.cfg.seed, self.dist.rank,
                              self.dist.world_size, self.cfg.data.num_workers, self.device.type == "cuda")

    def micro_batches(self, batches: list, *modules: nn.Module):
        """Yield ``(batch, weight)`` per micro-batch, weight = 1 / grad_accum, so that the summed gradients of
        ``weight * mean loss`` are the gradient of the mean over the global batch. All but the last micro-batch
        run under DDP's ``no_sync`` (gradients all-reduced once per optimizer step). Use as
        ``for x, w in run.micro_batches(xs, *modules): run.backward(w * loss, params)``."""
        for i, batch in enumerate(batches):
            with contextlib.ExitStack() as stack:
                if i < len(batches) - 1:
                    for m in modules:
                        if isinstance(m, DistributedDataParallel):
                            stack.enter_context(m.no_sync())
                yield batch, 1.0 / len(batches)

    def autocast(self):
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    # -------------------------------------------------------------------- step helpers
    def force_nan(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """Testing hook ``train.force_nan_at_step``: the loss of that step becomes NaN."""
        return loss * float("nan") if step == self.cfg.train.force_nan_at_step else loss

    def _all_ranks(self, flag: bool, op=None) -> bool:
        if not self.dist.enabled:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=op or dist.ReduceOp.MIN)
        return bool(t.item())

    def check_finite(self, step: int, **values: torch.Tensor) -> None:
        """Raise :class:`Diverged` (on every rank) if any value is NaN/inf on any rank."""
        bad = [k for k, v in values.items() if not bool(torch.isfinite(v.detach()).all())]
        if not self._all_ranks(not bad):
            forced = " (forced by train.force_nan_at_step)" if step == self.cfg.train.force_nan_at_step else ""
            raise Diverged(step, f"non-finite {', '.join(bad) or 'loss on another rank'} at step {step}{forced}")

    def backward(self, loss: torch.Tensor, params: list[torch.Tensor], retain_graph: bool = False) -> None:
        """Accumulate d loss / d params only (gradient routing); scaled when fp16."""
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        torch.autograd.backward(loss, inputs=params, retain_graph=retain_graph)

    def step(self, step: int, groups: dict[str, tuple[torch.optim.Optimizer, list[torch.Tensor]]]) -> dict[str, float]:
        """Unscale, clip (``train.grad_clip`` > 0) and step every optimizer; returns grad norms (before
        clipping). A non-finite norm without a GradScaler is a divergence (checked before any update)."""
        clip, norms = self.cfg.train.grad_clip, {}
        for name, (opt, params) in groups.items():
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            grads = [p.grad for p in params if p.grad is not None]
            norm = (torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0
                    else torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(()))
            norms[name] = norm
        if self.scaler is None:
            self.check_finite(step, **{f"grad_norm_{k}": v for k, v in norms.items()})
        for opt, _ in groups.values():
            (self.scaler.step(opt) if self.scaler is not None else opt.step())
            opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()
        return {f"grad_norm_{k}" if len(norms) > 1 else "grad_norm": float(v) for k, v in norms.items()}

    # -------------------------------------------------------------------- checkpoints
    def _gather_rng(self) -> list[dict]:
        state = rng_state()
        if not self.dist.enabled:
            return [state]
        states = [None] * self.dist.world_size
        dist.all_gather_object(states, state)
        return states

    def save_checkpoint(self, task: Task, step: int) -> None:
        rngs = self._gather_rng()
        if self.is_main:
            payload = {
                "step": step, "config": to_dict(self.cfg), "wall_seconds": self.wall_seconds(),
                "models": {k: m.state_dict() for k, m in task.modules.items()},
                "optimizers": {k: o.state_dict() for k, o in task.optimizers.items()},
                "emas": {k: e.state_dict() for k, e in task.emas.items()},
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "data": task.loader.state_dict(), "rng": rngs, "resumed_from": self.resumed_from,
                "selection": self.selection.state_dict(),
            }
            atomic_torch_save(payload, self.ckpt_dir / CKPT_NAME)
        if self.dist.enabled:
            dist.barrier()
        self.last_ckpt_time = time.time()

    def resume(self, task: Task) -> int:
        """Load ``ckpt-dir/ckpt.pt`` if present; returns the step to continue from (0 for a fresh run)."""
        path = self.ckpt_dir / CKPT_NAME
        if not path.exists():
            if self.is_main:
                atomic_write_text(self.out / "stats.jsonl", "")
            return 0
        ck = torch.load(path, map_location=self.device, weights_only=True)
        _check_resumable(ck["config"], to_dict(self.cfg), path)
        for k, m in task.modules.items():
            m.load_state_dict(ck["models"][k])
        for k, o in task.optimizers.items():
            o.load_state_dict(ck["optimizers"][k])
        for k, e in task.emas.items():
            e.load_state_dict(ck["emas"][k])
        if self.scaler is not None and ck["scaler"] is not None:
            self.scaler.load_state_dict(ck["scaler"])
        task.loader.load_state_dict(ck["data"])
        self.selection.load_state_dict(ck["selection"])
        if len(ck["rng"]) == self.dist.world_size:
            set_rng_state(ck["rng"][self.dist.rank])
        else:  # a different world size cannot continue the same per-rank streams
            seed_everything(self.cfg.seed + self.dist.rank + 7919 * ck["step"])
        self.elapsed_before = float(ck["wall_seconds"])
        self.resumed_from = list(ck.get("resumed_from", [])) + [int(ck["step"])]
        if self.is_main:
            self._truncate_stats(int(ck["step"]))
        return int(ck["step"])

    def _truncate_stats(self, step: int) -> None:
        """Drop stats lines written after the checkpoint (by the attempt that was killed)."""
        import json
        path = self.out / "stats.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def poll(self, step: int) -> tuple[bool, bool]:
        """(stop requested by a signal, checkpoint due) after ``step`` completed steps, agreed by all ranks
        in one all-reduce: every N steps (``checkpoint_every_steps``), every M minutes, or on a signal."""
        every, minutes = self.cfg.train.checkpoint_every_steps, self.cfg.train.checkpoint_every_minutes
        stop = self.stop.signum is not None
        due = (every > 0 and step % every == 0) or (minutes > 0 and time.time() - self.last_ckpt_time > 60 * minutes)
        if self.dist.enabled:
            flags = torch.tensor([float(stop), float(due)], device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            stop, due = bool(flags[0]), bool(flags[1])
        return stop, due or stop

    # -------------------------------------------------------------------- outputs
    def log_stats(self, stats: dict) -> None:
        if self.is_main:
            import json
            with open(self.out / "stats.jsonl", "a") as fh:
                fh.write(json.dumps(stats, allow_nan=True) + "\n")

    def batchnorm_note(self) -> str:
        """How BatchNorm statistics are taken in this launch (SyncBatchNorm across processes when world > 1)."""
        world, ppb = self.dist.world_size, self.per_process_batch
        note = (f"synchronised (SyncBatchNorm) across {world} processes: statistics over {world} x {ppb} = "
                f"{world * ppb} samples" if world > 1 else f"single process: statistics over {ppb} samples")
        return note + (f" per micro-batch ({self.grad_accum} accumulated per step)" if self.grad_accum > 1
                       else ", the whole global batch")

    def training_meta(self) -> dict:
        return {"seed": self.cfg.seed, "world_size": self.dist.world_size,
                "per_process_batch": self.per_process_batch, "grad_accum": self.grad_accum,
                "global_batch": self.per_process_batch * self.dist.world_size * self.grad_accum,
                "amp": {"requested": self.amp_requested, "effective": self.amp, "note": self.amp_note},
                "grad_scaler": self.scaler is not None, "resumed_from_steps": self.resumed_from,
                "batchnorm_synchronised": self.dist.world_size > 1, "batchnorm": self.batchnorm_note(),
                "device": str(self.device)}

    def deviations(self, task: Task) -> list[str]:
        """Every known difference from the official run: the code's (task.meta), the recipe's (run config) and
        this launch's (a global batch realised with gradient accumulation normalises BatchNorm per micro-batch; the
        processes' BatchNorm is synchronised, as the official SyncBatchNorm)."""
        out = list(task.meta.get("deviations", [])) + list(self.cfg.deviations)
        if self.grad_accum > 1:
            world = self.dist.world_size
            out.append(f"launch: global batch {self.cfg.train.global_batch} = {world} processes x "
                       f"{self.per_process_batch} x {self.grad_accum} accumulation steps; BatchNorm statistics are "
                       f"per micro-batch of {world * self.per_process_batch}"
                       + (f" (synchronised across the {world} processes)" if world > 1 else ""))
        return out

    def finish(self, task: Task, status: str, step: int, reason: str | None) -> None:
        """Write run.json, then model.pt (last, atomic). A diverged run writes both (status ``diverged``).
        The resume checkpoint is removed once model.pt exists, so a forced rerun trains afresh. With checkpoint
        selection, a completed run's model.pt (and its final validation) holds the selected weights."""
        selected = status == "completed" and self.selection.best_state is not None
        if selected:
            task.load_model_state(self.selection.best_state)
        validation = task.validate() if status == "completed" else None
        if not self.is_main:
            return
        prov = provenance(self.device, config=to_dict(self.cfg))
        meta = {**task.meta, "training": self.training_meta(), "deviations": self.deviations(task)}
        if self.selection.every > 0:
            meta["selection"] = self.selection.record(task)
        atomic_write_json(self.out / "run.json", {
            "status": status, "step": step, "reason": reason, "wall_seconds": self.wall_seconds(),
            "validation": validation, **meta, "provenance": prov})
        atomic_torch_save({"config": to_dict(self.cfg), "status": status, "step": step, **task.model_state(),
                           "meta": meta, "provenance": prov}, self.out / "model.pt")
        (self.ckpt_dir / CKPT_NAME).unlink(missing_ok=True)


def _check_resumable(saved: dict, current: dict, path: Path) -> None:
    diffs = []
    for section, values in current.items():
        items = values.items() if isinstance(values, dict) else [(None, values)]
        for key, value in items:
            old = saved.get(section, {}).get(key) if key is not None else saved.get(section)
            if (section, key) not in RESUME_FREE_KEYS and old != value:
                diffs.append(f"{section}.{key}: {old!r} -> {value!r}" if key else f"{section}: {old!r} -> {value!r}")
    if diffs:
        raise ConfigError(f"checkpoint {path} was written with a different config ({'; '.join(diffs[:5])}); "
                          "use the same config or delete the checkpoint directory")


# ----------------------------------------------------------------------------------------------- loop
def train(run: Run, task: Task) -> int:
    """The training loop: resume, step, log, checkpoint; divergence and preemption are outcomes.
    Returns the process exit code: 0 (completed or diverged) or 75 (preempted; rerun resumes)."""
    from tqdm import tqdm

    start = run.resume(task)
    cfg, total = run.cfg.train, run.total_steps
    bar = tqdm(total=total, initial=start, disable=not run.is_main, dynamic_ncols=True, mininterval=1.0,
               desc=f"{run.cfg.kind}:{run.cfg.name}")
    t_last, step_last = time.time(), start
    try:
        for step in range(start, total):
            batches = [next(task.loader).to(run.device, non_blocking=True) for _ in range(run.grad_accum)]
            stats = task.train_step(batches, step)
            done = step + 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == total:
                now = time.time()
                rate = (done - step_last) / max(now - t_last, 1e-9)
                t_last, step_last = now, done
                if run.scaler is not None:
                    stats["grad_scale"] = run.scaler.get_scale()
                run.log_stats({"step": done, **stats, "steps_per_second": rate, "seconds": run.wall_seconds()})
                bar.set_postfix(loss=f"{stats['loss']:.4g}", nelbo=f"{stats.get('nelbo', float('nan')):.4g}",
                                steps_s=f"{rate:.2f}")
            if run.selection.due(done, total):
                run.selection.update(task, done)
            if done == total:
                break
            stop, due = run.poll(done)
            if due:
                run.save_checkpoint(task, done)
            if stop:
                bar.close()
                print(f"signal {run.stop.signum}: checkpoint at step {done} in {run.ckpt_dir}; exiting "
                      f"{EXIT_PREEMPTED} (rerun to resume)", file=sys.stderr)
                return EXIT_PREEMPTED
    except Diverged as err:
        bar.close()
        print(f"diverged: {err.reason}", file=sys.stderr)
        run.finish(task, "diverged", err.step, err.reason)
        return 0
    bar.close()
    run.finish(task, "completed", total, None)
    return 0


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def trainable(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


@contextlib.contextmanager
def fixed_rng(seed: int, device: torch.device):
    """Run a side computation (validation, active-variable detection) without touching the training RNG."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def mean_stats(per_batch: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of the statistics of the micro-batches of one step."""
    return {k: sum(s[k] for s in per_batch) / len(per_batch) for k in per_batch[0]}

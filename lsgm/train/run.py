"""One training run: devices, DDP wrapping, AMP, the gradient step, divergence, signals and the run directory files.

:class:`Run` owns the launch (world size, per-process batch, gradient accumulation), routes and clips
gradients, detects non-finite values on every rank (:class:`Diverged`), turns SIGTERM/SIGUSR1 into a
checkpoint and exit 75, and writes ``config.yaml``, ``stats.jsonl``, ``run.json`` and ``model.pt``.
Checkpoints are :mod:`lsgm.train.checkpoint`'s; the loop is :func:`lsgm.train.loop.train`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from lsgm.config import RunConfig, save_run_config, split_batch, to_dict
from lsgm.nets.sync_bn import convert_sync_batchnorm
from lsgm.train.distributed import setup_distributed
from lsgm.train.loader import InfiniteLoader
from lsgm.train.rng import seed_everything
from lsgm.train.selection import Selection
from lsgm.io import atomic_write_json, atomic_write_text, provenance
from lsgm.model_file import model_record, write_model

if TYPE_CHECKING:
    from lsgm.train.task import Task


class Diverged(Exception):
    """A non-finite loss or gradient: training ends cleanly with status ``diverged``."""

    def __init__(self, step: int, reason: str):
        super().__init__(reason)
        self.step, self.reason = step, reason


class BackboneDiverged(Exception):
    """The stage-1 run this run is built on (``--vae``) diverged: the run is a diverged outcome, trained on nothing
    (:meth:`Run.finish_untrained`), never a failed job and never a number of an earlier backbone."""

    def __init__(self, path: Path, reason: str | None):
        self.path = Path(path)
        self.reason = f"backbone diverged: {path} ended with status 'diverged' ({reason or 'no reason recorded'})"
        super().__init__(self.reason)


def ckpt_dir_of(out: Path, ckpt_dir: Path | None) -> Path:
    """Where a run's resume checkpoints live: ``--ckpt-dir``, by default ``OUT/.ckpt``."""
    return Path(ckpt_dir) if ckpt_dir else Path(out) / ".ckpt"


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


class Run:
    """One training run: devices, DDP, AMP, stats and the run directory files (checkpoints: lsgm.train.checkpoint)."""

    def __init__(self, cfg: RunConfig, out: Path, ckpt_dir: Path | None = None, master_port: int | None = None):
        self.cfg, self.out = cfg, Path(out)
        self.ckpt_dir = ckpt_dir_of(self.out, ckpt_dir)
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
        self.hosts = self._gather_hosts()
        seed_everything(cfg.seed + self.dist.rank)  # per-rank noise; DDP broadcasts rank 0's initial weights

    def begin(self) -> None:
        """Create the run folder and write its resolved ``config.yaml`` -- once the task's inputs loaded, so a start
        that fails on them leaves no partial run folder."""
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_run_config(self.cfg, self.out / "config.yaml")

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def _gather_hosts(self) -> list[str]:
        """The node of every rank, in rank order (Slurm's node name where there is one: emulated nodes share a host
        name), so run.json shows where a multi-node run really ran."""
        here = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        if not self.dist.enabled:
            return [here]
        hosts: list = [None] * self.dist.world_size
        dist.all_gather_object(hosts, here)
        return hosts

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

    # -------------------------------------------------------------------- stop and checkpoint timing
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
                "device": str(self.device), "hosts": self.hosts, "slurm_job_id": os.environ.get("SLURM_JOB_ID")}

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
        The loop then removes the resume checkpoint (:func:`lsgm.train.checkpoint.remove_checkpoint`). With
        checkpoint selection, a completed run's model.pt (and its final validation) holds the selected weights."""
        selected = status == "completed" and self.selection.best_state is not None
        if selected:
            task.load_model_state(self.selection.best_state)
        validation = task.validate() if status == "completed" else None
        if not self.is_main:
            return
        meta = {**task.meta, "training": self.training_meta(), "deviations": self.deviations(task)}
        if self.selection.every > 0:
            meta["selection"] = self.selection.record(task)
        self._write_run_files(status, step, reason, validation, meta, task.model_state())

    def finish_untrained(self, err: BackboneDiverged, kind: str) -> None:
        """The run files of a run whose backbone diverged: config.yaml, an empty stats.jsonl, run.json and model.pt with
        status ``diverged``, step 0, the reason naming the backbone, and no weights (``state`` empty)."""
        self.begin()
        if not self.is_main:
            return
        atomic_write_text(self.out / "stats.jsonl", "")
        meta = {"stage": kind, "backbone": {"path": str(err.path), "status": "diverged"},
                "training": self.training_meta(), "deviations": list(self.cfg.deviations)}
        self._write_run_files("diverged", 0, err.reason, None, meta, {"state": {}, "ema": None})

    def _write_run_files(self, status: str, step: int, reason: str | None, validation: dict | None, meta: dict,
                         model_state: dict) -> None:
        prov = provenance(self.device, config=to_dict(self.cfg))
        atomic_write_json(self.out / "run.json", {
            "status": status, "step": step, "reason": reason, "wall_seconds": self.wall_seconds(),
            "validation": validation, **meta, "provenance": prov})
        write_model(self.out / "model.pt", model_record(config=to_dict(self.cfg), status=status, step=step,
                                                        reason=reason, **model_state, meta=meta, provenance=prov))

"""Resumable checkpoints: what ``ckpt.pt`` holds, writing it atomically, and resuming from it exactly.

A checkpoint holds models, optimizers, EMA, GradScaler, the data order, every rank's RNG state and the
checkpoint selection; it lives in ``--ckpt-dir`` (outside the run's outputs) and is written with a temp
file + ``os.replace``. A resumed run continues as the uninterrupted one would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from lsgm.config import ConfigError, to_dict
from lsgm.train.rng import rng_state, seed_everything, set_rng_state
from lsgm.io import atomic_write_text
from lsgm.utils import atomic_torch_save

if TYPE_CHECKING:
    from lsgm.train.task import Task
    from lsgm.train.run import Run

CKPT_NAME = "ckpt.pt"
# Config keys that may change between a checkpoint and its resumption (they do not affect the result).
RESUME_FREE_KEYS = {("train", "log_every"), ("train", "checkpoint_every_steps"),
                    ("train", "checkpoint_every_minutes"), ("data", "num_workers"), ("data", "root")}


def _gather_rng(run: Run) -> list[dict]:
    state = rng_state()
    if not run.dist.enabled:
        return [state]
    states = [None] * run.dist.world_size
    dist.all_gather_object(states, state)
    return states


def save_checkpoint(run: Run, task: Task, step: int) -> None:
    rngs = _gather_rng(run)
    if run.is_main:
        payload = {
            "step": step, "config": to_dict(run.cfg), "wall_seconds": run.wall_seconds(),
            "models": {k: m.state_dict() for k, m in task.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in task.optimizers.items()},
            "emas": {k: e.state_dict() for k, e in task.emas.items()},
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "data": task.loader.state_dict(), "rng": rngs, "resumed_from": run.resumed_from,
            "selection": run.selection.state_dict(),
        }
        atomic_torch_save(payload, run.ckpt_dir / CKPT_NAME)
    if run.dist.enabled:
        dist.barrier()
    run.last_ckpt_time = time.time()


def resume(run: Run, task: Task) -> int:
    """Load ``ckpt-dir/ckpt.pt`` if present; returns the step to continue from (0 for a fresh run)."""
    path = run.ckpt_dir / CKPT_NAME
    if not path.exists():
        if run.is_main:
            atomic_write_text(run.out / "stats.jsonl", "")
        return 0
    ck = torch.load(path, map_location=run.device, weights_only=True)
    check_resumable(ck["config"], to_dict(run.cfg), path)
    for k, m in task.modules.items():
        m.load_state_dict(ck["models"][k])
    for k, o in task.optimizers.items():
        o.load_state_dict(ck["optimizers"][k])
    for k, e in task.emas.items():
        e.load_state_dict(ck["emas"][k])
    if run.scaler is not None and ck["scaler"] is not None:
        run.scaler.load_state_dict(ck["scaler"])
    task.loader.load_state_dict(ck["data"])
    run.selection.load_state_dict(ck["selection"])
    if len(ck["rng"]) == run.dist.world_size:
        set_rng_state(ck["rng"][run.dist.rank])
    else:  # a different world size cannot continue the same per-rank streams
        seed_everything(run.cfg.seed + run.dist.rank + 7919 * ck["step"])
    run.elapsed_before = float(ck["wall_seconds"])
    run.resumed_from = list(ck.get("resumed_from", [])) + [int(ck["step"])]
    if run.is_main:
        _truncate_stats(run.out / "stats.jsonl", int(ck["step"]))
    return int(ck["step"])


def remove_checkpoint(run: Run) -> None:
    """Drop the resume checkpoint once the run's model.pt exists, so a forced rerun trains afresh."""
    if run.is_main:
        (run.ckpt_dir / CKPT_NAME).unlink(missing_ok=True)


def _truncate_stats(path: Path, step: int) -> None:
    """Drop stats lines written after the checkpoint (by the attempt that was killed)."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def check_resumable(saved: dict, current: dict, path: Path) -> None:
    """A checkpoint resumes only under the config it was written with (but for :data:`RESUME_FREE_KEYS`)."""
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

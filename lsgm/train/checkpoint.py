"""Resumable checkpoints: what ``ckpt.pt`` holds, writing it atomically, and resuming from it exactly.

A checkpoint holds models, optimizers, EMA, GradScaler, the data order, every rank's RNG state and the
checkpoint selection; it lives in ``--ckpt-dir`` (outside the run's outputs) and is written with a temp
file + ``os.replace``. The one before it is kept as ``ckpt.prev.pt`` (renamed just before the new one is written:
no more disk at the peak than the temp file needed anyway). A resumed run continues as the uninterrupted one would.
A checkpoint that does not load (corrupted, truncated, foreign) is set aside as ``ckpt.pt.corrupt-TIME`` with a
warning, and the run resumes from the kept one before it, or without one starts again from step 0.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist

from lsgm.config import ConfigError, RunConfig, to_dict
from lsgm.train.rng import rng_state, seed_everything, set_rng_state
from lsgm.io import atomic_write_text, recorded_reason
from lsgm.train.run import BackboneDiverged
from lsgm.utils import UserFileError, atomic_torch_save, load_torch_file

if TYPE_CHECKING:
    from lsgm.train.task import Task
    from lsgm.train.run import Run

CKPT_NAME = "ckpt.pt"
PREVIOUS_NAME = "ckpt.prev.pt"  # the checkpoint before ckpt.pt, resumed from when ckpt.pt does not load
CKPT_KEYS = ("step", "config", "wall_seconds", "models", "optimizers", "emas", "scaler", "data", "rng", "selection")
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
        path = run.ckpt_dir / CKPT_NAME
        if path.exists():
            os.replace(path, run.ckpt_dir / PREVIOUS_NAME)
        atomic_torch_save(payload, path)
    if run.dist.enabled:
        dist.barrier()
    run.last_ckpt_time = time.time()


def _warn(run: Run, message: str) -> None:
    if run.is_main:
        print(f"lsgm train-{run.cfg.kind}: warning: {message}", file=sys.stderr)


def newest_checkpoint(run: Run) -> tuple[dict | None, Path | None]:
    """The newest checkpoint that loads: ``ckpt.pt``, else the one kept before it; each one that does not load is
    renamed ``NAME.corrupt-TIME`` (by the main process) with a one-line warning. ``(None, None)`` if none loads."""
    set_aside = False
    for name in (CKPT_NAME, PREVIOUS_NAME):
        path = run.ckpt_dir / name
        if not path.exists():
            continue
        try:
            ck = load_torch_file(path, "resume checkpoint", "", map_location=run.device)
            missing = [k for k in CKPT_KEYS if not isinstance(ck, dict) or k not in ck]
            if missing:
                raise UserFileError(f"resume checkpoint {path} lacks {missing}")
        except UserFileError as err:
            aside = path.with_name(f"{name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            if run.is_main:
                os.replace(path, aside)
            _warn(run, f"{err}; set aside as {aside}")
            set_aside = True
            continue
        if set_aside:
            _warn(run, f"resuming from {path} (step {ck['step']})")
        return ck, path
    if set_aside:
        _warn(run, "no earlier checkpoint is kept: training restarts from step 0")
    return None, None


def resume(run: Run, task: Task) -> int:
    """Load the newest checkpoint that loads (:func:`newest_checkpoint`); returns the step to continue from (0 for a
    fresh run)."""
    ck, path = newest_checkpoint(run)
    if ck is None:
        if run.is_main:
            atomic_write_text(run.out / "stats.jsonl", "")
        return 0
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
    """Drop the resume checkpoints once the run's model.pt exists, so a forced rerun trains afresh."""
    if run.is_main:
        for name in (CKPT_NAME, PREVIOUS_NAME):
            (run.ckpt_dir / name).unlink(missing_ok=True)


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


def load_stage1(path: str | Path, cfg: RunConfig) -> dict:
    """The stage-1 ``model.pt``; its VAE config and dataset must equal this run's (one-line errors otherwise:
    :class:`UserFileError` for a file that does not load, :class:`ConfigError` for another run's). A diverged stage-1
    run raises :class:`BackboneDiverged`: the run built on it is a diverged outcome, not an error."""
    path = Path(path)
    ck = load_torch_file(path, "model file", "train the backbone with lsgm train-vae, or pass its VAE_DIR/model.pt as "
                                             "--vae")
    if not isinstance(ck, dict) or not {"config", "status", "state"} <= set(ck):
        raise ConfigError(f"--vae {path}: not a model.pt of this harness (no config/status/state)")
    if ck["config"].get("kind") != "vae":
        raise ConfigError(f"--vae {path}: not a stage-1 VAE run (kind {ck['config'].get('kind')!r})")
    mine, theirs = to_dict(cfg.vae), ck["config"]["vae"]
    diffs = [f"vae.{k}: {theirs.get(k)!r} (stage 1) != {v!r} (this config)" for k, v in mine.items() if theirs.get(k) != v]
    if ck["config"]["data"]["name"] != cfg.data.name:
        diffs.append(f"data.name: {ck['config']['data']['name']!r} != {cfg.data.name!r}")
    if diffs:
        raise ConfigError(f"--vae {path} does not match this config: {'; '.join(diffs)}")
    if ck["status"] == "diverged":
        raise BackboneDiverged(path, ck.get("reason") or recorded_reason(path))
    if ck["status"] != "completed":
        raise ConfigError(f"--vae {path}: the stage-1 run ended with status {ck['status']!r}")
    return ck

"""Shared evaluation plumbing: load a trained run, per-sample seeding, uint8 quantisation, metrics files.

Every evaluation writes ONE JSON file per the metrics contract (docs/ARCHITECTURE.md "Metrics files"):
values, the settings that produced them, the checkpoint, the run config and provenance. Inputs that
cannot be used raise :class:`EvalError` (one line naming the fix; the CLI exits 2 and writes nothing);
a diverged run is not an error: its metrics are NaN with the reason (exit 0).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lsgm.config import ConfigError, RunConfig, from_dict
from lsgm.controls import draws_name
from lsgm.data import DatasetInfo, dataset_info
from lsgm.io import atomic_write_json, provenance, recorded_reason
from lsgm.utils import UserFileError, load_torch_file


class EvalError(RuntimeError):
    """Unusable input (missing file, mismatched statistics, missing weights); the message names the fix."""


# --------------------------------------------------------------------------------------------------
# Loading a trained run
# --------------------------------------------------------------------------------------------------


# what a metrics file records of an imported model's official checkpoint (lsgm import-official's meta.imported)
IMPORTED_KEYS = ("source", "sha256", "script", "ema_source", "vae_checkpoint", "vae_sha256", "global_step",
                 "mapping_version")


@dataclass
class LoadedRun:
    """A trained run rebuilt from its ``model.pt``. ``vae``/``score``/``sde`` are ``None`` where the
    model kind has none (``vae``: no score; ``sgm``: no VAE) and for a diverged run (weights not loaded)."""

    path: Path
    cfg: RunConfig
    config_dict: dict
    data: DatasetInfo
    status: str  # "completed" | "diverged"
    reason: str | None
    step: int
    vae: nn.Module | None = None
    score: nn.Module | None = None  # eps_fn(z_t [B, ...], t [B]) -> eps [B, ...]
    sde: Any = None
    ema: bool = False
    extras: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.cfg.kind

    @property
    def diverged(self) -> bool:
        return self.status != "completed"


def load_user_file(path: Path, noun: str, fix: str) -> object:
    """A user-given torch file loaded as data only (:func:`lsgm.utils.load_torch_file`); a missing, unreadable or
    damaged file, or one whose loading would run code, is an :class:`EvalError` (one line: ``noun``, the path, what is
    wrong and ``fix``)."""
    try:
        return load_torch_file(path, noun, fix)
    except UserFileError as err:
        raise EvalError(str(err)) from None


def read_model_file(path: str | Path) -> dict:
    """``torch.load`` of a model.pt, with one-line errors for missing, unreadable or foreign files."""
    path = Path(path)
    blob = load_user_file(path, "model file", "train the run (lsgm train-*) or fix --model")
    if not isinstance(blob, dict) or "config" not in blob or "state" not in blob:
        raise EvalError(f"model file {path} lacks 'config'/'state' (not a model.pt of this harness); fix --model")
    return blob


def _load_state(module: nn.Module, state: dict, what: str, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise EvalError(f"{path}: {what} weights do not fit its config ({first}); the file is from another version")


def _pick(states: dict, names: tuple[str, ...], path: Path) -> dict:
    for name in names:
        if name in states:
            return states[name]
    raise EvalError(f"{path}: no {'/'.join(names)} entry in model.pt['state'] (has {sorted(states)})")


def load_run(path: str | Path, use_ema: bool = True, device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild a trained run (config, VAE, score with EMA weights applied, SDE) from its ``model.pt``.

    A diverged run is returned with ``status='diverged'`` and no modules (its weights may be NaN).
    Modules are in eval mode on ``device``.
    """
    path = Path(path)
    blob = read_model_file(path)
    try:
        cfg = from_dict(RunConfig, blob["config"])
    except ConfigError as err:
        raise EvalError(f"{path}: its config no longer validates ({err}); retrain with this version")
    status = str(blob.get("status", "completed"))
    run = LoadedRun(path=path, cfg=cfg, config_dict=blob["config"], data=dataset_info(cfg.data.name),
                    status=status, reason=blob.get("reason"), step=int(blob.get("step", -1)))
    imported = (blob.get("meta") or {}).get("imported")
    if isinstance(imported, dict):  # lsgm import-official: the official file it came from (sha256), its EMA source
        run.extras["imported"] = {k: imported.get(k) for k in IMPORTED_KEYS if k in imported}
    if run.diverged:
        run.reason = run.reason or recorded_reason(path) or f"training status {status!r} in {path}"
        return run
    if cfg.kind == "classifier":
        raise EvalError(f"{path} is a classifier run; evaluate a vae, lsgm or sgm run's model.pt")
    _build_modules(run, blob, use_ema, torch.device(device))
    return run


def _build_modules(run: LoadedRun, blob: dict, use_ema: bool, device: torch.device) -> None:
    from lsgm.nets.nvae import NVAE
    from lsgm.score import build_score
    from lsgm.diffusion.sde import make_sde

    cfg, states, path = run.cfg, blob["state"], run.path
    if cfg.kind in ("vae", "lsgm"):
        run.vae = NVAE(cfg.vae, run.data)
        _load_state(run.vae, _pick(states, ("vae",), path), "VAE", path)
        run.vae.to(device).eval()
    if cfg.kind in ("lsgm", "sgm"):
        run.sde = make_sde(cfg.sde)
        shape = run.vae.latent_shape if cfg.kind == "lsgm" else (run.data.channels, run.data.image_size,
                                                                 run.data.image_size)
        run.score = build_score(cfg, tuple(shape), run.sde)
        _load_state(run.score, _pick(states, ("score", "dae", "sgm"), path), "score", path)
        ema = blob.get("ema")
        if use_ema and ema:
            _load_state(run.score, ema, "EMA score", path)
            run.ema = True
        run.score.to(device).eval()


# --------------------------------------------------------------------------------------------------
# Per-sample seeding and image quantisation
# --------------------------------------------------------------------------------------------------


SEED_RULE = ("eval_seed = SeedSequence([seed, sha256(run name), sha256(evaluation)]): every run (its name holds its "
             "training seed) and every evaluation of it draws its own noise; an LSGM's control at initialisation "
             "(NAME_init) draws its LSGM's (common random numbers for the paired difference learned)")


def evaluation_seed(seed: int, run_name: str, evaluation: str) -> int:
    """The seed of one evaluation of one run: the configured ``seed`` mixed with the run's name (``quick/digits/lsgm/
    balanced-s1``: it holds the training seed) and the evaluation (``nll``, ``fid``, ...). No two training seeds, runs or
    evaluations share Monte Carlo draws, so the spread over seeds includes the evaluation's own error; the same run and
    evaluation always draw the same (a rerun is bit-identical). An LSGM's control at initialisation draws what its LSGM
    draws (:func:`lsgm.controls.draws_name`), so that ``learned`` = LSGM - at initialisation is a paired difference.
    A 63-bit integer, recorded as ``settings.eval_seed``."""
    words = [int(seed)] + [int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
                           for text in (draws_name(run_name), evaluation)]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def sample_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed for sample ``index`` of an evaluation seeded ``seed`` (numpy SeedSequence mixing);
    ``stream`` separates independent uses (0: a sample's noise)."""
    state = np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def sample_generators(seed: int, start: int, count: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample ``start .. start + count - 1``: sample k's noise never depends on the batch."""
    gens = []
    for k in range(start, start + count):
        gen = torch.Generator(device=device)
        gen.manual_seed(sample_seed(seed, k))
        gens.append(gen)
    return gens


def per_sample_normal(shape: tuple[int, ...], generators: list[torch.Generator], device=None,
                      scale: float = 1.0) -> torch.Tensor:
    """[len(generators), *shape] standard Normal noise (times ``scale``), row k drawn from generator k."""
    rows = [torch.randn(shape, generator=g, device=g.device) for g in generators]
    out = torch.stack(rows) * scale  # (B, *shape)
    return out.to(device) if device is not None else out


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float images -> uint8 via round(255 x) with clamping (what every FD/FID here sees)."""
    return torch.round(x.float().clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] -> [B, 3, H, W] by repetition (grayscale for Inception); 3-channel input unchanged."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


# --------------------------------------------------------------------------------------------------
# Metrics files
# --------------------------------------------------------------------------------------------------


def run_section(cfg: RunConfig) -> dict:
    """The ``run`` block of a metrics file."""
    score = cfg.kind in ("lsgm", "sgm")
    return {
        "name": cfg.name, "model": cfg.kind, "dataset": cfg.data.name,
        "sde": cfg.sde.type if score else None,
        "weighting": cfg.objective.weighting if score else None,
        "sampling": cfg.objective.sampling if score else None,
        "q_objective": cfg.objective.q_objective if cfg.kind == "lsgm" else None,
        "seed": cfg.seed, "steps": cfg.train.steps,
    }


def metrics_record(kind: str, run: LoadedRun, metrics: dict, settings: dict, *, status: str | None = None,
                   reason: str | None = None, device: torch.device | str = "cpu", started: float) -> dict:
    """Assemble one metrics JSON object (contract in docs/ARCHITECTURE.md)."""
    status = status or ("diverged" if run.diverged else "ok")
    return {
        "kind": kind,
        "run": run_section(run.cfg),
        "status": status,
        "reason": reason if reason is not None else (run.reason if run.diverged else None),
        "metrics": metrics,
        "settings": settings,
        "checkpoint": {"path": str(run.path), "ema": run.ema, "step": run.step,
                       **({"imported": run.extras["imported"]} if "imported" in run.extras else {})},
        "provenance": provenance(device, wall_seconds=time.perf_counter() - started, config=run.config_dict),
    }


def write_metrics(path: str | Path, record: dict) -> None:
    """Write a metrics file atomically (NaN allowed: a diverged run's metrics)."""
    atomic_write_json(Path(path), record)


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError("--device cuda requested but no CUDA device is visible; use --device cpu")
    return device


def set_bn_mode(module: nn.Module | None, mode: str) -> None:
    """BN/dropout mode for sampling: 'eval' (running statistics) or 'train' (batch statistics, as the
    official CelebA-HQ FID runs); gradients stay off either way."""
    if module is None:
        return
    if mode not in ("eval", "train"):
        raise EvalError(f"--bn-mode must be 'eval' or 'train', got {mode!r}")
    module.train(mode == "train")

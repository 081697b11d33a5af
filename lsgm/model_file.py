"""The ``model.pt`` layout, written in one place: by every trainer (:meth:`lsgm.train.run.Run.finish`) and by
``lsgm import-official``; read by :func:`lsgm.eval.common.load_run` and stage 2's ``--vae`` check
(:func:`lsgm.train.checkpoint.load_stage1`).

A model file is a dict: ``config`` (the run config as a dict), ``status`` (``completed`` | ``diverged``), ``step``,
``reason`` (why it diverged, or None), ``state`` (``{"vae"|"score"|"classifier": state_dict}``; empty for a run whose
backbone diverged), ``ema`` (the score's state_dict with EMA parameters, or None), optional extras (the classifier's
``arch``), ``meta`` and ``provenance``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lsgm.utils import atomic_torch_save

KEYS = ("config", "status", "step", "reason", "state", "ema", "meta", "provenance")


def model_record(*, config: dict, status: str, step: int, reason: str | None, state: dict, ema: dict | None,
                 meta: dict, provenance: dict, **extra: Any) -> dict:
    """The model file's dict, in the one key order (extras between ``ema`` and ``meta``)."""
    return {"config": config, "status": status, "step": step, "reason": reason, "state": state, "ema": ema, **extra,
            "meta": meta, "provenance": provenance}


def write_model(path: str | Path, record: dict) -> None:
    """Write a :func:`model_record` atomically (a reader never sees half a file)."""
    missing = [k for k in KEYS if k not in record]
    if missing:
        raise ValueError(f"model record lacks {missing}: build it with lsgm.model_file.model_record")
    atomic_torch_save(record, Path(path))

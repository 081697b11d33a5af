"""Checkpoint selection: the best-so-far weights by a validation score (stage 1, ``train.select_every_steps``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lsgm.train.task import Task


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

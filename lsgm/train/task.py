"""The contract between a trainer ("task") and the run machinery (loop, checkpoints, selection, run files)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from lsgm.train.ema import EMA
from lsgm.train.loader import InfiniteLoader


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

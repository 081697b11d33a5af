"""Optimizers of the trainers: construction from ``OptimConfig``, setting the learning rate, trainable parameters."""

from __future__ import annotations

import torch
from torch import nn

from lsgm.config import OptimConfig


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """adamax: NVAE's Adamax with coupled L2 weight decay; adamw: decoupled weight decay (= apex FusedAdam's
    default adam_w_mode, the official stage-2 optimizer); adam: coupled L2 (torch Adam)."""
    # foreach: the multi-tensor update (torch's default on CUDA) on every device, so a CPU run takes the GPU's code path
    # (and ~5 % less time per step at the quick scale, where a step is many small tensors).
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True)
    cls = {"adamax": torch.optim.Adamax, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[cfg.name]
    return cls(params, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def trainable(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]

"""Schedules over training steps: the learning rate and the KL coefficient (reference 4.1, 4.2)."""

from __future__ import annotations

import math

from lsgm.config import KLConfig, OptimConfig


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

"""Gaussian log densities per sample, summed over every dimension but the batch: the NVAE's posterior and prior
terms (``lsgm.nets``) and the Normal prior the objectives compare with (``lsgm.diffusion.objectives``)."""

from __future__ import annotations

import math

import torch

from lsgm.utils import sum_except_batch

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(log_sigma)^2) summed per sample: [B, ...] -> [B]."""
    return sum_except_batch(-0.5 * ((z - mu) * torch.exp(-log_sigma)).pow(2) - log_sigma - 0.5 * LOG_2PI)


def normal_cross_entropy(z: torch.Tensor) -> torch.Tensor:
    """-log N(z; 0, I) per sample: [B, ...] -> [B] (the Normal prior of stage 1 and of lower scales)."""
    return sum_except_batch(0.5 * z.pow(2) + 0.5 * LOG_2PI)

"""Small CNN classifier whose penultimate layer is the offline stand-in for Inception-v3 features.

Offline the Inception weights cannot be fetched, so the Fréchet distance is computed on the features of
this network trained on the dataset's labelled training split (DESIGN.md "FID"); the metric is then named
``fd_<dataset>``, never "fid". The architecture is fixed here (``ARCH_VERSION``) so a feature checksum
identifies the extractor: stats computed with one classifier cannot silently be compared with another.

Input: float images ``[B, C, H, W]`` in [0, 1] of any size (global average pooling at the end).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCH_VERSION = 1


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4), channels)


class FeatureClassifier(nn.Module):
    """conv(C->w) -> [conv(w->2w, stride 2) -> conv(2w->2w)] -> pool -> Linear(2w, feature_dim) -> logits.

    ``features(x)`` ([B, feature_dim]) is what the Fréchet distance is computed on; ``forward(x)`` gives the
    class logits ``[B, num_classes]`` the network is trained with.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, feature_dim: int = 64) -> None:
        super().__init__()
        self.hparams = {"in_channels": in_channels, "num_classes": num_classes, "width": width,
                        "feature_dim": feature_dim, "arch_version": ARCH_VERSION}
        self.in_channels, self.feature_dim = in_channels, feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), _norm(width), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), _norm(2 * width), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), _norm(2 * width), nn.SiLU(),
        )
        self.embed = nn.Linear(2 * width, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] in [0, 1] -> features [B, feature_dim] (after a SiLU, as Inception's pool3 is post-ReLU)."""
        h = self.body(2.0 * x - 1.0)  # (B, 2w, H/2, W/2)
        return F.silu(self.embed(h.mean(dim=(2, 3))))  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)

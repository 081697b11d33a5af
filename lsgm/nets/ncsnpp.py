"""NCSN++-style score U-Net (reference doc section 5.2), for latents and for the pixel-space baseline.

BigGAN residual blocks (GroupNorm + SiLU + conv, time embedding added after the first conv, dropout,
``(skip + h) / sqrt(2)``), resampling inside the residual blocks on both the branch and the skip: 2x2
average pooling down / nearest up, or with ``cfg.fir`` (official ``--fir``) score_sde's FIR resampling with
the [1, 3, 3, 1] kernel (``upfirdn2d`` written as a fixed depthwise conv / transposed conv; no custom CUDA
op), self-attention at ``cfg.attn_resolutions`` plus a middle Res-Attn-Res, no progressive skips (so,
as in the official network with ``--progressive none --progressive_input none``, the resblocks are the only
place FIR acts). The time embedding (sinusoidal of ``t * embedding_scale``, or random Fourier
features) goes through Linear -> SiLU -> Linear in fp32. Last convs of each block and of the network
start near zero (score_sde's ``init_scale = 0``). The network maps ``(x, t) -> eps'`` and never sees
SDE quantities.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lsgm.config import ScoreNetConfig
from lsgm.nets.layers import SRConv2d, SRCounter, norm_scale_penalty, spectral_penalty

Resample = Literal["none", "up", "down"]


def _init(layer: nn.Module, scale: float = 1.0) -> nn.Module:
    """score_sde's default init: fan-avg uniform variance scaling (scale 0 -> 1e-10), zero bias."""
    nn.init.xavier_uniform_(layer.weight, gain=math.sqrt(max(scale, 1e-10)))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _conv(c_in: int, c_out: int, kernel: int, scale: float = 1.0) -> nn.Conv2d:
    """The network's convs (official ``conv3x3`` / ``conv1x1``, torch ``nn.Conv2d``): they take part in the SR.
    The attention block's 1x1 projections are official NINs (not convs) and stay out of it."""
    return _init(SRConv2d(c_in, c_out, kernel, padding=kernel // 2), scale)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(C // 4, 32) groups (reduced to the nearest divisor of C when it does not divide)."""
    groups = max(min(channels // 4, 32), 1)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids of ``t * scale``: [B] -> [B, dim]."""

    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        self.dim, self.scale = dim, scale

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
        args = (t.float() * self.scale)[:, None] * freqs[None, :]  # (B, half)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, dim)


class FourierEmbedding(nn.Module):
    """Random Fourier features sin/cos(2 pi t w), w ~ N(0, scale^2) fixed (a buffer): [B] -> [B, dim]."""

    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        self.register_buffer("w", torch.randn(dim // 2) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = 2 * math.pi * t.float()[:, None] * self.w[None, :]  # (B, dim/2)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, dim)


FIR_TAPS = (1.0, 3.0, 3.0, 1.0)  # score_sde's fir_kernel


def fir_kernel(taps: tuple[float, ...] = FIR_TAPS) -> torch.Tensor:
    """The separable 2-D FIR kernel ``outer(k, k) / sum`` of an even number K of taps: [K, K], summing to 1."""
    if len(taps) % 2:
        raise ValueError(f"FIR resampling here needs an even number of taps (symmetric padding), got {len(taps)}")
    k = torch.tensor(taps, dtype=torch.float32)
    k2 = torch.outer(k, k)
    return k2 / k2.sum()


def fir_downsample(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """score_sde ``downsample_2d(x, k, factor=2)``: [B, C, H, W] -> [B, C, H // 2, W // 2].

    That is ``upfirdn2d(x, kernel, down=2, pad=((p+1)//2, p//2))``, ``p = K - 2`` (= K/2 - 1 on each side for
    even K): zero padding, true convolution with ``kernel``, every second output kept. Here: one depthwise
    conv with stride 2 (a correlation, hence the flipped kernel).
    """
    c, size = x.shape[1], kernel.shape[-1]
    w = kernel.flip(0, 1).to(x.dtype).expand(c, 1, size, size)  # (C, 1, K, K), depthwise
    return F.conv2d(x, w, stride=2, padding=size // 2 - 1, groups=c)


def fir_upsample(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """score_sde ``upsample_2d(x, k, factor=2)``: [B, C, H, W] -> [B, C, 2H, 2W].

    That is ``upfirdn2d(x, 4 * kernel, up=2, pad=((p+1)//2 + 1, p//2))``, ``p = K - 2``: zero insertion (each
    pixel followed by a zero), padding, true convolution with the kernel times factor^2 = 4 (a constant image
    stays constant). A stride-2 transposed conv is ``out[o] = sum_i x[i] w[o - 2i]``, the convolution of the
    zero-inserted image with ``w`` (no flip) over length 2H + K - 2; upfirdn2d's window drops K/2 - 1 on each
    side (even K), which is the transposed conv's ``padding``.
    """
    c, size = x.shape[1], kernel.shape[-1]
    w = (4.0 * kernel).to(x.dtype).expand(c, 1, size, size)  # (C, 1, K, K), depthwise
    return F.conv_transpose2d(x, w, stride=2, padding=size // 2 - 1, groups=c)


def _resample(x: torch.Tensor, mode: Resample, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """Resampling of a resblock: nearest up / 2x2 average down, or FIR with ``kernel`` when one is given."""
    if mode == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest") if kernel is None else fir_upsample(x, kernel)
    if mode == "down":
        return F.avg_pool2d(x, 2) if kernel is None else fir_downsample(x, kernel)
    return x


class ResBlock(nn.Module):
    """BigGAN residual block with time embedding: [B, C_in, H, W], temb [B, T] -> [B, C_out, H', W']."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, dropout: float, resample: Resample = "none",
                 fir: bool = False) -> None:
        super().__init__()
        self.resample = resample
        # the fixed FIR kernel: a non-persistent buffer (follows .to(device), never in the state_dict)
        self.register_buffer("fir_kernel", fir_kernel() if fir and resample != "none" else None, persistent=False)
        self.norm0, self.conv0 = group_norm(c_in), _conv(c_in, c_out, 3)
        self.dense = _init(nn.Linear(temb_dim, c_out))
        self.norm1, self.dropout = group_norm(c_out), nn.Dropout(dropout)
        self.conv1 = _conv(c_out, c_out, 3, scale=0.0)
        self.skip = _conv(c_in, c_out, 1) if (c_in != c_out or resample != "none") else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = _resample(F.silu(self.norm0(x)), self.resample, self.fir_kernel)
        x = _resample(x, self.resample, self.fir_kernel)
        h = self.conv0(h) + self.dense(F.silu(temb))[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) / math.sqrt(2.0)


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with a rescaled residual: [B, C, H, W] -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = _init(nn.Conv2d(channels, 3 * channels, 1), 0.1)
        self.out = _init(nn.Conv2d(channels, channels, 1), 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3)  # (B, 3, HW, C)
        attn = F.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])  # (B, HW, C)
        attn = attn.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return (x + self.out(attn)) / math.sqrt(2.0)


class _Level(nn.Module):
    """One resolution of the U-Net: residual blocks, their attention (or Identity) and an optional resampler."""

    def __init__(self, blocks: list[ResBlock], attns: list[nn.Module], resample: ResBlock | None) -> None:
        super().__init__()
        self.blocks, self.attns, self.resample = nn.ModuleList(blocks), nn.ModuleList(attns), resample


class NCSNpp(nn.Module):
    """NCSN++ U-Net ``forward(x [B, C, H, W], t [B] in [0, 1]) -> [B, C, H, W]`` (see the module docstring)."""

    def __init__(self, cfg: ScoreNetConfig, in_channels: int, resolution: int) -> None:
        super().__init__()
        n_levels = len(cfg.ch_mult)
        if resolution % 2 ** (n_levels - 1):
            raise ValueError(f"resolution {resolution} is not divisible by 2^{n_levels - 1} (ch_mult {cfg.ch_mult})")
        self.cfg, self.in_channels, self.resolution = cfg, in_channels, resolution
        embed = PositionalEmbedding if cfg.embedding_type == "positional" else FourierEmbedding
        embedding_dim = cfg.embedding_dim
        self.time_embed = embed(embedding_dim, cfg.embedding_scale)
        temb_dim = 4 * embedding_dim
        self.temb_mlp = nn.Sequential(_init(nn.Linear(embedding_dim, temb_dim)), nn.SiLU(),
                                      _init(nn.Linear(temb_dim, temb_dim)))
        self.conv_in = _conv(in_channels, cfg.nf, 3)
        skips = self._build_down(temb_dim)
        width = skips[-1]
        self.mid = nn.ModuleList([ResBlock(width, width, temb_dim, cfg.dropout), AttnBlock(width),
                                  ResBlock(width, width, temb_dim, cfg.dropout)])
        width = self._build_up(temb_dim, skips, width)
        self.norm_out, self.conv_out = group_norm(width), _conv(width, in_channels, 3, scale=0.0)
        self.sr_counter = SRCounter()

    def regularization(self, conv: bool = True) -> torch.Tensor:
        """SR penalty (without lambda): the top singular values of the conv layers (``conv``; official unless
        --custom_conv_dae) + max |gamma| of the GroupNorm layers. Power-iteration state is in buffers."""
        penalty = norm_scale_penalty(self)
        if conv:
            penalty = penalty + spectral_penalty(self, self.sr_counter.next_iters())
        return penalty

    def _uses_attn(self, level: int) -> bool:
        return self.resolution // 2**level in self.cfg.attn_resolutions

    def _build_down(self, temb_dim: int) -> list[int]:
        """Build the encoder half; return the channel widths of the skip activations, in push order."""
        cfg, width, skips = self.cfg, self.cfg.nf, [self.cfg.nf]
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.ch_mult):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(width, cfg.nf * mult, temb_dim, cfg.dropout))
                width = cfg.nf * mult
                attns.append(AttnBlock(width) if self._uses_attn(level) else nn.Identity())
                skips.append(width)
            last = level == len(cfg.ch_mult) - 1
            resample = None if last else ResBlock(width, width, temb_dim, cfg.dropout, resample="down", fir=cfg.fir)
            skips += [] if last else [width]
            self.down.append(_Level(blocks, attns, resample))
        return skips

    def _build_up(self, temb_dim: int, skips: list[int], width: int) -> int:
        """Build the decoder half (consumes ``skips``); return the final width."""
        cfg, skips = self.cfg, list(skips)
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.ch_mult))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(width + skips.pop(), cfg.nf * cfg.ch_mult[level], temb_dim, cfg.dropout))
                width = cfg.nf * cfg.ch_mult[level]
            attns = [AttnBlock(width) if self._uses_attn(level) else nn.Identity()]
            resample = ResBlock(width, width, temb_dim, cfg.dropout, resample="up", fir=cfg.fir) if level else None
            self.up.append(_Level(blocks, attns, resample))
        return width

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """Time embedding in fp32 (autocast off): t [B] -> [B, 4 * embedding_dim]."""
        with torch.autocast(device_type=t.device.type, enabled=False):
            return self.temb_mlp(self.time_embed(t.float()))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.embed_time(t.reshape(-1).expand(x.shape[0]))  # t [B] (or one value) -> temb [B, 4E]
        hs = [self.conv_in(x)]
        for level in self.down:
            for block, attn in zip(level.blocks, level.attns):
                hs.append(attn(block(hs[-1], temb)))
            if level.resample is not None:
                hs.append(level.resample(hs[-1], temb))
        h = self.mid[2](self.mid[1](self.mid[0](hs[-1], temb)), temb)
        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb)  # (B, C_h + C_skip, H, W)
            h = level.attns[0](h)
            if level.resample is not None:
                h = level.resample(h, temb)
        return self.conv_out(F.silu(self.norm_out(h)))

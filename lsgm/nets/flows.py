"""NVAE's normalizing flows on the encoder's latent samples (official ``--num_nf``; NVAE paper section 3.2).

Each flow is a pair of autoregressive cells: ``z -> z - mu(z)`` where ``mu``'s output at pixel p and channel
c reads only pixels before p in raster order (all channels) and channels ``< c`` at p itself; the second
cell of the pair runs in the reverse raster order (``mirror``). ``mu`` is a masked MBConv-like network:
masked conv3x3 (1 -> 6 expansion, strictly lower channels at the centre) -> ELU -> masked depthwise 5x5 ->
ELU -> masked 1x1 (kernel weights start at 0.1 of their norm). The Jacobian is triangular with a unit
diagonal in that order, so ``log|det J| = 0`` exactly: the official ``CellAR`` returns a zero log-det (its
mixture-of-logistic-CDF variant is switched off), and so do we. The encoder features are not an input of
the flow (the official cell takes them and ignores them).

Masked convs are weight-normalised with the mask applied before the normalisation, and they take part in
the spectral regulariser like every other weight-normalised conv (official ``ARConv2d``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lsgm.nets.layers import WNConv2d

EXPANSION = 6  # official ARInvertedResidual ex=6
KERNEL = 5  # official depthwise kernel


def channel_mask(c_in: int, c_out: int, groups: int, zero_diag: bool) -> torch.Tensor:
    """Centre-tap connectivity [c_out, c_in / groups]: output channel block i reads input channels ``<= i``
    (``< i`` with ``zero_diag``); a depthwise conv (groups = c_in) keeps its centre unless ``zero_diag``."""
    if groups == c_in:
        return torch.full((c_out, 1), 0.0 if zero_diag else 1.0)
    if groups != 1 or (c_in % c_out and c_out % c_in):
        raise ValueError(f"autoregressive channel mask needs groups 1 and c_in | c_out or c_out | c_in, got "
                         f"{c_in} -> {c_out} (groups {groups})")
    out_idx = torch.arange(c_out)[:, None]
    in_idx = torch.arange(c_in)[None, :]
    if c_out >= c_in:  # output channel o belongs to input block o // ratio
        block, reads = out_idx // (c_out // c_in), in_idx
    else:  # input channel i belongs to output block i // ratio
        block, reads = out_idx, in_idx // (c_in // c_out)
    return ((reads < block) | ((reads == block) & (not zero_diag))).float()


def ar_mask(kernel: int, c_in: int, c_out: int, groups: int, zero_diag: bool, mirror: bool) -> torch.Tensor:
    """Kernel mask [c_out, c_in / groups, k, k]: rows above the centre, the centre row left of the centre, and
    the centre tap restricted by :func:`channel_mask`; ``mirror`` flips it spatially (reverse raster order)."""
    if kernel % 2 == 0:
        raise ValueError(f"an autoregressive conv needs an odd kernel, got {kernel}")
    m = kernel // 2
    mask = torch.zeros(c_out, c_in // groups, kernel, kernel)
    mask[:, :, :m, :] = 1.0
    mask[:, :, m, :m] = 1.0
    mask[:, :, m, m] = channel_mask(c_in, c_out, groups, zero_diag)
    return mask.flip(2, 3) if mirror else mask


class ARConv2d(WNConv2d):
    """Masked, weight-normalised conv (official ``ARConv2d``): the norm is taken of the masked weight; the
    mask is a non-persistent buffer (not in the state dict, as officially)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, groups: int = 1, bias: bool = False,
                 zero_diag: bool, mirror: bool, init_coeff: float = 1.0) -> None:
        super().__init__(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=bias)
        self.register_buffer("mask", ar_mask(kernel, c_in, c_out, groups, zero_diag, mirror), persistent=False)
        with torch.no_grad():
            init_norm = (self.weight * self.mask).reshape(c_out, -1).norm(dim=1).reshape(-1, 1, 1, 1)
            self.log_weight_norm.copy_(torch.log(init_norm + 1e-2) + math.log(init_coeff))

    def normalized_weight(self) -> torch.Tensor:
        weight = self.weight * self.mask
        norm = weight.reshape(self.out_channels, -1).norm(dim=1).reshape(-1, 1, 1, 1)  # (C_out, 1, 1, 1)
        return weight * (torch.exp(self.log_weight_norm) / (norm + 1e-5))


class ARShiftCell(nn.Module):
    """One autoregressive shift ``z -> z - mu(z)`` on [B, L, H, W] (official ``CellAR``)."""

    def __init__(self, n_z: int, mirror: bool) -> None:
        super().__init__()
        hidden = EXPANSION * n_z
        self.hidden = nn.Sequential(
            ARConv2d(n_z, hidden, 3, zero_diag=True, mirror=mirror), nn.ELU(),
            ARConv2d(hidden, hidden, KERNEL, groups=hidden, zero_diag=False, mirror=mirror))
        self.mu = nn.Sequential(
            nn.ELU(), ARConv2d(hidden, n_z, 1, bias=True, zero_diag=False, mirror=mirror, init_coeff=0.1))

    def shift(self, z: torch.Tensor) -> torch.Tensor:
        """mu(z) [B, L, H, W]: autoregressive in z (see the module docstring)."""
        return self.mu(self.hidden(z))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z - self.shift(z)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """z with ``z - mu(z) = y``: the fixed point ``z = y + mu(z)`` is exact after L*H*W sweeps (each sweep fixes
        at least one more element in the autoregressive order); stops early once nothing changes."""
        z = y.clone()
        for _ in range(y[0].numel()):
            new = y + self.shift(z)
            if torch.equal(new, z):
                break
            z = new
        return z


class PairedARFlow(nn.Module):
    """Two :class:`ARShiftCell` (raster order, then reverse raster order): [B, L, H, W] -> same, log-det [B]
    (identically zero: each cell's Jacobian is unit-triangular)."""

    def __init__(self, n_z: int) -> None:
        super().__init__()
        self.cell1, self.cell2 = ARShiftCell(n_z, mirror=False), ARShiftCell(n_z, mirror=True)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.cell2(self.cell1(z))
        return y, torch.zeros(z.shape[0], device=z.device, dtype=torch.float32)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.cell1.inverse(self.cell2.inverse(y))


def apply_flows(flows: nn.ModuleList, z: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Push a posterior sample z [B, L, H, W] with density log_q [B] through ``flows``: returns the flowed sample
    and its density by the change of variables, ``log q(f(z)) = log q(z) - log|det df/dz|``."""
    for flow in flows:
        z, log_det = flow(z)
        log_q = log_q - log_det
    return z, log_q


__all__ = ["ARConv2d", "ARShiftCell", "PairedARFlow", "apply_flows", "ar_mask", "channel_mask"]

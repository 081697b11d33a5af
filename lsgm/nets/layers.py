"""Building blocks of the NVAE backbone: weight-normalized convs, NVAE residual cells, the SR penalty.

Everything here is plain PyTorch (no custom kernels, no device constants). Cells follow NVAE as used by
LSGM (reference doc section 5.1): ``out = skip + 0.1 * branch``; the branch is either two
BN-Swish-Conv3x3 ops (``res_bnswish``) or one MBConv (expansion 6 in the decoder, 3 in the postprocess,
depthwise 5x5); optional squeeze-and-excitation. A cell's ``stride`` is 1 (normal), 2 (down) or -1 (up).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.05  # NVAE's BatchNorm momentum (PyTorch convention)
BN_EPS = 1e-5

CellKind = Literal["bnswish", "mbconv6", "mbconv3"]


class SRConv2d(nn.Conv2d):
    """Conv2d that takes part in the spectral regularizer (SR): the buffers ``sn_u`` [C_out] and
    ``sn_v`` [C_in / groups * k * k] hold its power-iteration state, so they travel with ``state_dict`` and a
    resumed run continues the same iteration. :meth:`sr_weight` is the matrix whose top singular value is
    penalised (official ``SpectralNormCalculator``: ``weight.view(C_out, -1)``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        rows, cols = self.out_channels, self.weight[0].numel()
        self.register_buffer("sn_u", F.normalize(torch.randn(rows), dim=0, eps=1e-3))
        self.register_buffer("sn_v", F.normalize(torch.randn(cols), dim=0, eps=1e-3))

    def sr_weight(self) -> torch.Tensor:
        """The applied weight: [C_out, C_in/groups, k, k]."""
        return self.weight


class WNConv2d(SRConv2d):
    """Conv2d with weight normalization and a learned per-output-channel log-norm.

    ``weight_used = exp(log_weight_norm) * weight / ||weight||`` (norm per output channel); the SR penalises
    the normalised weight (as the official code's ``weight_normalized``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        matrix = self.weight.detach().reshape(self.out_channels, -1)  # (C_out, C_in/g * k * k)
        init_norm = matrix.norm(dim=1).reshape(-1, 1, 1, 1)  # (C_out, 1, 1, 1)
        self.log_weight_norm = nn.Parameter(torch.log(init_norm + 1e-2))

    def sr_weight(self) -> torch.Tensor:
        return self.normalized_weight()

    def normalized_weight(self) -> torch.Tensor:
        """The weight the conv applies: [C_out, C_in/groups, k, k]."""
        norm = self.weight.reshape(self.out_channels, -1).norm(dim=1).reshape(-1, 1, 1, 1)  # (C_out,1,1,1)
        return self.weight * (torch.exp(self.log_weight_norm) / (norm + 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normalized_weight(), self.bias)


def _power_iteration(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_iter: int):
    """Batched power iteration on ``w`` [N, out, in] from ``u`` [N, out], ``v`` [N, in] (no grad)."""
    with torch.no_grad():
        for _ in range(n_iter):
            v = F.normalize(torch.bmm(u.unsqueeze(1), w).squeeze(1), dim=1, eps=1e-3)  # (N, in)
            u = F.normalize(torch.bmm(w, v.unsqueeze(2)).squeeze(2), dim=1, eps=1e-3)  # (N, out)
    return u, v


def spectral_penalty(module: nn.Module, n_iter: int) -> torch.Tensor:
    """Sum over all :class:`SRConv2d` in ``module`` of their top singular value (differentiable).

    Convs of equal weight shape are batched into one power iteration (as NVAE's ``sr_utils``); the
    updated ``sn_u`` / ``sn_v`` buffers are written back in place.
    """
    groups: dict[tuple, list[SRConv2d]] = defaultdict(list)
    for m in module.modules():
        if isinstance(m, SRConv2d):
            groups[tuple(m.weight.shape)].append(m)
    total = None
    for convs in groups.values():
        w = torch.stack([c.sr_weight().reshape(c.out_channels, -1) for c in convs]).float()  # (N, out, in)
        u, v = _power_iteration(w.detach(), torch.stack([c.sn_u for c in convs]).float(),
                                torch.stack([c.sn_v for c in convs]).float(), n_iter)
        with torch.no_grad():
            for i, c in enumerate(convs):
                c.sn_u.copy_(u[i])
                c.sn_v.copy_(v[i])
        sigma = torch.bmm(u.unsqueeze(1), torch.bmm(w, v.unsqueeze(2))).sum()  # (N,1,1) summed
        total = sigma if total is None else total + sigma
    return total if total is not None else torch.zeros(())


def norm_scale_penalty(module: nn.Module) -> torch.Tensor:
    """Sum over BatchNorm / SyncBatchNorm / GroupNorm layers of max |gamma| (the scale term of the SR penalty,
    official ``SpectralNormCalculator.batchnorm_loss``)."""
    norms = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)
    terms = [m.weight.abs().max() for m in module.modules() if isinstance(m, norms) and m.affine]
    return torch.stack(terms).sum() if terms else torch.zeros(())


class SRCounter(nn.Module):
    """Counts SR calls in a buffer (so it is checkpointed): the first call runs ``first`` power iterations (the
    official 10 x 4 = 40 from random vectors), later calls ``later`` (4)."""

    def __init__(self, later: int = 4, first: int = 40) -> None:
        super().__init__()
        self.later, self.first = later, first
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def next_iters(self) -> int:
        n = self.first if int(self.calls) == 0 else self.later
        self.calls += 1
        return n


def batchnorm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SqueezeExcite(nn.Module):
    """Channel gating: x * sigmoid(MLP(mean_hw(x))), hidden width max(C/16, 4)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 16, 4)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.mlp(x.mean(dim=(2, 3)))  # (B, C)
        return x * gate[:, :, None, None]


class BNSwishConv(nn.Module):
    """BN -> Swish -> [nearest x2 if stride == -1] -> weight-normalized conv3x3 (stride 2 if down)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn = batchnorm(c_in)
        self.upsample = stride == -1
        self.conv = WNConv2d(c_in, c_out, 3, stride=max(stride, 1), padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.bn(x))
        if self.upsample:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return self.conv(h)


class MBConv(nn.Module):
    """Inverted residual branch: [up] BN -> 1x1 -> BN-Swish -> depthwise kxk -> BN-Swish -> 1x1 -> BN.

    Its convs have no weight norm, as in NVAE, but take part in the spectral regulariser (they are the
    official ``Conv2D(..., weight_norm=False)``, which ``SpectralNormCalculator`` collects); the BN layers enter
    the BN penalty.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int, kernel: int = 5) -> None:
        super().__init__()
        hidden = int(round(c_in * expand))
        self.upsample = stride == -1
        self.net = nn.Sequential(
            batchnorm(c_in),
            SRConv2d(c_in, hidden, 1, bias=False), batchnorm(hidden), nn.SiLU(),
            SRConv2d(hidden, hidden, kernel, stride=max(stride, 1), padding=kernel // 2, groups=hidden, bias=False),
            batchnorm(hidden), nn.SiLU(),
            SRConv2d(hidden, c_out, 1, bias=False), batchnorm(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.net(x)


class FactorizedReduce(nn.Module):
    """Down-skip: Swish, then four 1x1 stride-2 convs on the four pixel phases, concatenated on C."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_out < 4:
            raise ValueError(f"FactorizedReduce needs at least 4 output channels, got {c_out}")
        sizes = [c_out // 4] * 3 + [c_out - 3 * (c_out // 4)]
        self.convs = nn.ModuleList(WNConv2d(c_in, n, 1, stride=2, bias=True) for n in sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(x)
        phases = [h, h[:, :, 1:, 1:], h[:, :, :, 1:], h[:, :, 1:, :]]
        return torch.cat([conv(p) for conv, p in zip(self.convs, phases)], dim=1)  # (B, C_out, H/2, W/2)


class UpSkip(nn.Module):
    """Up-skip: bilinear x2 (align_corners=True, as NVAE) then a weight-normalized 1x1 conv without bias
    (official ``Conv2D(Cin, Cout, kernel_size=1)``, whose ``bias`` defaults to False)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = WNConv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True))


def skip_connection(c_in: int, c_out: int, stride: int) -> nn.Module:
    """Identity for normal cells, FactorizedReduce for down, UpSkip for up cells."""
    if stride == 2:
        return FactorizedReduce(c_in, c_out)
    if stride == -1:
        return UpSkip(c_in, c_out)
    if c_in != c_out:
        raise ValueError(f"a normal cell keeps its width, got {c_in} -> {c_out}")
    return nn.Identity()


class ResidualCell(nn.Module):
    """NVAE residual cell: ``skip(x) + 0.1 * SE(branch(x))``; stride 1 (normal), 2 (down) or -1 (up)."""

    def __init__(self, c_in: int, c_out: int, stride: int, kind: CellKind, use_se: bool) -> None:
        super().__init__()
        self.skip = skip_connection(c_in, c_out, stride)
        if kind == "bnswish":
            self.branch = nn.Sequential(BNSwishConv(c_in, c_out, stride), BNSwishConv(c_out, c_out, 1))
        elif kind in ("mbconv6", "mbconv3"):
            self.branch = MBConv(c_in, c_out, stride, expand=int(kind[-1]))
        else:
            raise ValueError(f"unknown cell kind {kind!r}")
        self.se = SqueezeExcite(c_out) if use_se else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + 0.1 * self.se(self.branch(x))


class EncCombiner(nn.Module):
    """Encoder combiner: x_enc + conv1x1(x_dec)."""

    def __init__(self, c_enc: int, c_dec: int) -> None:
        super().__init__()
        self.conv = WNConv2d(c_dec, c_enc, 1, bias=True)

    def forward(self, x_enc: torch.Tensor, x_dec: torch.Tensor) -> torch.Tensor:
        return x_enc + self.conv(x_dec)


class DecCombiner(nn.Module):
    """Decoder combiner: conv1x1(concat(x_dec, z)) back to the decoder width."""

    def __init__(self, c_dec: int, c_z: int) -> None:
        super().__init__()
        self.conv = WNConv2d(c_dec + c_z, c_dec, 1, bias=True)

    def forward(self, x_dec: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x_dec, z], dim=1))  # (B, C_dec + C_z, H, W) -> (B, C_dec, H, W)

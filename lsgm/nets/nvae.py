"""NVAE-style hierarchical VAE, as used by LSGM (reference doc section 5.1; ARCHITECTURE.md "The VAE contract").

The encoder is bottom-up (stem, preprocess, one tower of latent groups; with ``progressive_input =
input_skip`` a strided BN-Swish-conv pyramid of the preprocessed input is added after every down cell); the
decoder is top-down from a learned feature map, taking one latent group at a time through a combiner. Each
posterior sample may pass through ``num_nf`` paired autoregressive flows (:mod:`lsgm.nets.flows`), whose
log-determinant enters log q. Every group has the prior
N(0, I) (stage 1): the hierarchy lives only in the decoder. The top (coarsest) scale's groups,
concatenated on channels, are ``z0``, the latent the score prior of stage 2 models.

Images enter in [0, 1] and are mapped to [-1, 1] for the network. The decoder is a Bernoulli (binary data)
or a discretized mixture of logistics over ``data.levels`` values (NVAE's ``dml``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lsgm.config import VAEConfig
from lsgm.datasets_info import DatasetInfo
from lsgm.nets.flows import PairedARFlow, apply_flows
from lsgm.nets.layers import (
    BNSwishConv,
    DecCombiner,
    EncCombiner,
    ResidualCell,
    WNConv2d,
    norm_scale_penalty,
    spectral_penalty,
)
from lsgm.gaussian import gaussian_log_prob, normal_cross_entropy


@dataclass
class VAEOutput:
    """Per-sample terms of one encoder/decoder pass; every tensor is [B] except ``z0`` and ``kl_groups``."""

    z0: torch.Tensor  # [B, *latent_shape]
    log_q_z0: torch.Tensor
    lower_log_q: torch.Tensor
    lower_cross_entropy: torch.Tensor
    kl_groups: list[torch.Tensor]  # one [B] per group, top (coarsest) first
    reconstruction: torch.Tensor


def soft_clamp(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Differentiable clamp to (-scale, scale): scale * tanh(x / scale)."""
    return scale * torch.tanh(x / scale)


class BernoulliDecoder:
    """Bernoulli likelihood over each data channel; logits [B, C, H, W], data in {0, 1}."""

    def __init__(self, channels: int) -> None:
        self.out_channels = channels

    def log_prob_map(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | logits) summed over channels: [B, C, H, W] x2 -> [B, H, W]."""
        return -F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none").sum(dim=1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities [B, C, H, W] in [0, 1]."""
        return torch.sigmoid(logits.float())


class DiscMixLogistic:
    """Discretized mixture of logistics over ``levels`` equally spaced values (NVAE's ``dml``).

    Logit layout on channels (M = num_mix, C = data channels, P = C(C-1)/2 autoregressive coefficients):
    ``[M mixture logits | C*M means | C*M log-scales | P*M coefficients]`` (C=3: 10*M channels, as NVAE).
    Values live in [-1, 1] with bin half-width 1 / (levels - 1). Channel c's mean is shifted by
    ``sum_{j<c} coeff_{c,j} * x_j`` (NVAE's RGB coupling). Bin masses use the exact, stable
    ``log(sigmoid(a) - sigmoid(b))``, so the masses of the ``levels`` values sum to one.
    """

    def __init__(self, channels: int, num_mix: int, levels: int) -> None:
        self.channels, self.num_mix, self.levels = channels, num_mix, levels
        self.num_coeffs = channels * (channels - 1) // 2
        self.out_channels = num_mix * (1 + 2 * channels + self.num_coeffs)

    def _split(self, logits: torch.Tensor):
        """[B, out_channels, H, W] -> mixture logits [B, M, H, W], means / log-scales [B, C, M, H, W],
        coefficients [B, P, M, H, W]."""
        b, _, h, w = logits.shape
        m, c = self.num_mix, self.channels
        logits = logits.float()
        mix = logits[:, :m]
        means = logits[:, m : m + c * m].reshape(b, c, m, h, w)  # (B, C, M, H, W)
        log_scales = logits[:, m + c * m : m + 2 * c * m].reshape(b, c, m, h, w).clamp(min=-7.0)  # (B, C, M, H, W)
        coeffs = torch.tanh(logits[:, m + 2 * c * m :]).reshape(b, self.num_coeffs, m, h, w)  # (B, P, M, H, W)
        return mix, means, log_scales, coeffs

    def _coupled_means(self, means: torch.Tensor, coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Shift channel c's means by sum_{j<c} coeff_{c,j} x_j; means [B,C,M,H,W], x [B,C,1,H,W] or [B,C,H,W]."""
        out, p = [means[:, 0]], 0
        for c in range(1, self.channels):
            shifted = means[:, c]
            for j in range(c):
                shifted = shifted + coeffs[:, p] * x[:, j]
                p += 1
            out.append(shifted)
        return torch.stack(out, dim=1)  # (B, C, M, H, W)

    def log_prob_map(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | logits) per pixel: logits [B, out_channels, H, W], x [B, C, H, W] in [0, 1] -> [B, H, W]."""
        mix, means, log_scales, coeffs = self._split(logits)
        idx = torch.round(x.float() * (self.levels - 1)).clamp(0, self.levels - 1)  # (B, C, H, W)
        x_sym = (2.0 * idx / (self.levels - 1) - 1.0).unsqueeze(2)  # (B, C, 1, H, W)
        centered = x_sym - self._coupled_means(means, coeffs, x_sym)
        inv_s = torch.exp(-log_scales)
        half = 1.0 / (self.levels - 1)
        plus, minus = inv_s * (centered + half), inv_s * (centered - half)
        log_cdf_plus, log_sf_minus = F.logsigmoid(plus), F.logsigmoid(-minus)
        # sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(-(a - b))), a - b = 2 half inv_s > 0
        log_mid = log_cdf_plus + log_sf_minus + torch.log(-torch.expm1(-2.0 * half * inv_s))
        idx = idx.unsqueeze(2)  # (B, C, 1, H, W)
        log_bin = torch.where(idx == 0, log_cdf_plus, torch.where(idx == self.levels - 1, log_sf_minus, log_mid))
        log_comp = log_bin.sum(dim=1) + F.log_softmax(mix, dim=1)  # (B, M, H, W)
        return torch.logsumexp(log_comp, dim=1)  # (B, H, W)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """NVAE's decoder mean: mixture-weighted means and coefficients, coupled and clamped.

        logits [B, out_channels, H, W] -> [B, C, H, W] in [0, 1].
        """
        mix, means, _, coeffs = self._split(logits)
        weights = torch.softmax(mix, dim=1).unsqueeze(1)  # (B, 1, M, H, W)
        mu = (means * weights).sum(dim=2)  # (B, C, H, W)
        co = (coeffs * weights).sum(dim=2)  # (B, P, H, W)
        xs, p = [], 0
        for c in range(self.channels):
            val = mu[:, c]
            for j in range(c):
                val = val + co[:, p] * xs[j]
                p += 1
            xs.append(val.clamp(-1.0, 1.0))
        return (torch.stack(xs, dim=1) + 1.0) / 2.0  # (B, C, H, W)


def _check_config(cfg: VAEConfig, data: DatasetInfo) -> None:
    levels = cfg.num_preprocess_blocks + cfg.num_latent_scales
    if len(cfg.channel_mult) != levels:
        raise ValueError(f"vae.channel_mult needs num_preprocess_blocks + num_latent_scales = {levels} entries, "
                         f"got {cfg.channel_mult}")
    if cfg.num_preprocess_blocks != cfg.num_postprocess_blocks:
        raise ValueError("vae.num_preprocess_blocks must equal vae.num_postprocess_blocks")
    if min(cfg.num_preprocess_cells, cfg.num_postprocess_cells, cfg.num_groups_per_scale, cfg.num_latent_scales) < 1:
        raise ValueError("vae cell/group/scale counts must be >= 1")
    if data.image_size % 2 ** (levels - 1):
        raise ValueError(f"image size {data.image_size} is not divisible by 2^{levels - 1}")
    if data.levels < 2:
        raise ValueError(f"data.levels must be >= 2, got {data.levels}")


class NVAE(nn.Module):
    """Hierarchical VAE with N(0, I) priors; see the module docstring and ARCHITECTURE.md."""

    def __init__(self, cfg: VAEConfig, data: DatasetInfo, sr_iters: int = 4, sr_iters_first: int = 40) -> None:
        super().__init__()
        _check_config(cfg, data)
        self.cfg, self.data = cfg, data
        self.sr_iters, self.sr_iters_first = sr_iters, sr_iters_first
        self.n_groups = cfg.num_latent_scales * cfg.num_groups_per_scale
        self.top_level = len(cfg.channel_mult) - 1
        top_size = data.image_size // 2**self.top_level
        self.latent_shape = (cfg.num_groups_per_scale * cfg.num_latent_per_group, top_size, top_size)
        self.likelihood = BernoulliDecoder(data.channels) if data.binary else DiscMixLogistic(
            data.channels, cfg.num_mix, data.levels)
        self.stem = WNConv2d(data.channels, self._width(0), 3, padding=1, bias=True)
        self.pre = self._build_pre()
        self._build_encoder()
        self._build_decoder(top_size)
        self.post = self._build_post()
        self.head = nn.Sequential(nn.ELU(), WNConv2d(self._width(0), self.likelihood.out_channels, 3, padding=1))
        self.register_buffer("sr_calls", torch.zeros((), dtype=torch.long))

    # ----------------------------------------------------------------------------------- construction
    def _width(self, level: int) -> int:
        return self.cfg.num_channels * self.cfg.channel_mult[level]

    def _group_level(self, g: int) -> int:
        """Resolution level of decoder group g (g = 0 is the first top-scale group)."""
        return self.top_level - g // self.cfg.num_groups_per_scale

    def _cell(self, level_in: int, level_out: int, stride: int, kind: str) -> ResidualCell:
        return ResidualCell(self._width(level_in), self._width(level_out), stride, kind, self.cfg.use_se)

    def _dec_kind(self, expand: int) -> str:
        return "bnswish" if self.cfg.arch_instance == "res_bnswish" else f"mbconv{expand}"

    def _build_pre(self) -> nn.Sequential:
        cells, level = [], 0
        for _ in range(self.cfg.num_preprocess_blocks):
            for c in range(self.cfg.num_preprocess_cells):
                down = c == self.cfg.num_preprocess_cells - 1
                cells.append(self._cell(level, level + down, 2 if down else 1, "bnswish"))
                level += down
        return nn.Sequential(*cells)

    def _build_post(self) -> nn.Sequential:
        cells, level = [], self.top_level - self.cfg.num_latent_scales + 1
        for _ in range(self.cfg.num_postprocess_blocks):
            for c in range(self.cfg.num_postprocess_cells):
                up = c == 0
                cells.append(self._cell(level, level - up, -1 if up else 1, self._dec_kind(3)))
                level -= up
        return nn.Sequential(*cells)

    def _build_encoder(self) -> None:
        """Encoder groups in bottom-up order, down cells between scales, and per-decoder-group combiners."""
        cfg = self.cfg
        self.enc_groups = nn.ModuleList()
        self.enc_down = nn.ModuleList()
        for k in reversed(range(cfg.num_latent_scales)):  # finest latent scale first
            level = self.top_level - k
            for _ in range(cfg.num_groups_per_scale):
                self.enc_groups.append(nn.Sequential(
                    *[self._cell(level, level, 1, "bnswish") for _ in range(cfg.num_cell_per_cond_enc)]))
            if k > 0:
                self.enc_down.append(self._cell(level, level + 1, 2, "bnswish"))
        self.input_skips = nn.ModuleList(  # official InputSkipCombinerCell, one per down cell
            BNSwishConv(self._width(self.top_level - k), self._width(self.top_level - k + 1), stride=2)
            for k in reversed(range(1, cfg.num_latent_scales))) if cfg.progressive_input == "input_skip" else None
        self.enc_combiners = nn.ModuleList(  # decoder groups 1..N-1 (group 0 reads the encoder top directly)
            EncCombiner(self._width(self._group_level(g)), self._width(self._group_level(g)))
            for g in range(1, self.n_groups))
        self.posteriors = nn.ModuleList(
            nn.Sequential(nn.ELU(), WNConv2d(self._width(self._group_level(g)), 2 * cfg.num_latent_per_group, 3,
                                             padding=1, bias=True))
            for g in range(self.n_groups))
        self.flows = nn.ModuleList(  # per group: num_nf paired AR flows (empty lists without flows)
            nn.ModuleList(PairedARFlow(cfg.num_latent_per_group) for _ in range(cfg.num_nf))
            for _ in range(self.n_groups))

    def _build_decoder(self, top_size: int) -> None:
        """Learned top feature map, per-group eps-conv + combiner + cells, up cells between scales."""
        cfg, n_z = self.cfg, self.cfg.num_latent_per_group
        self.prior_ftr0 = nn.Parameter(torch.rand(self._width(self.top_level), top_size, top_size))
        self.eps_convs = nn.ModuleList(WNConv2d(n_z, n_z, 3, padding=1, bias=True) for _ in range(self.n_groups))
        self.dec_combiners = nn.ModuleList(
            DecCombiner(self._width(self._group_level(g)), n_z) for g in range(self.n_groups))
        self.dec_groups = nn.ModuleList(
            nn.Sequential(*[self._cell(self._group_level(g), self._group_level(g), 1, self._dec_kind(6))
                            for _ in range(cfg.num_cell_per_cond_dec)])
            for g in range(self.n_groups))
        self.dec_up = nn.ModuleList(
            self._cell(self.top_level - k, self.top_level - k - 1, -1, self._dec_kind(6))
            for k in range(cfg.num_latent_scales - 1))

    # ----------------------------------------------------------------------------------- passes
    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Bottom-up features, one per group, in decoder order (top first): x [B, C, H, W] in [0, 1]."""
        s = self.pre(self.stem(2.0 * x - 1.0))
        pyramid = s  # progressive input: the preprocessed image, downsampled alongside the tower
        feats, per_scale = [], self.cfg.num_groups_per_scale
        for i, cells in enumerate(self.enc_groups):
            s = cells(s)
            feats.append(s)
            if (i + 1) % per_scale == 0 and (i + 1) // per_scale <= len(self.enc_down):
                k = (i + 1) // per_scale - 1
                s = self.enc_down[k](s)
                if self.input_skips is not None:
                    pyramid = self.input_skips[k](pyramid)
                    s = s + pyramid
        return feats[::-1]

    def _initial_state(self, batch: int) -> torch.Tensor:
        return self.prior_ftr0.unsqueeze(0).expand(batch, -1, -1, -1)  # (B, C_top, H_top, W_top)

    def _enter_group(self, g: int, s: torch.Tensor) -> torch.Tensor:
        """Upsample the decoder state when group g starts a new (finer) scale."""
        if g > 0 and g % self.cfg.num_groups_per_scale == 0:
            s = self.dec_up[g // self.cfg.num_groups_per_scale - 1](s)
        return s

    def _absorb(self, g: int, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Combine latent group z [B, L, h, w] into decoder state s [B, C, h, w] and run the group's cells."""
        return self.dec_groups[g](self.dec_combiners[g](s, self.eps_convs[g](z)))

    def _posterior(self, g: int, feat: torch.Tensor, s: torch.Tensor, generator):
        """Sample group g from q(z_g | x, z_<g) (a Normal, then the group's flows): returns z, log q(z) and
        log N(z; 0, I), both [B]."""
        if g > 0:
            feat = self.enc_combiners[g - 1](feat, s)
        mu, log_sig = self.posterior_normal(self.posteriors[g](feat))
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(log_sig) * eps
        z, log_q = apply_flows(self.flows[g], z, gaussian_log_prob(z, mu, log_sig))
        return z, log_q, -normal_cross_entropy(z)

    def posterior_normal(self, head_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma) of a group's Normal posterior, each [B, L, h, w] (fp32 under autocast, soft-clamped),
        from the output [B, 2L, h, w] of its head ``posteriors[g]``."""
        mu, log_sig = head_out.float().chunk(2, dim=1)
        return soft_clamp(mu, 5.0), soft_clamp(log_sig, self.cfg.log_sig_q_scale)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        c = self.data.crop
        return x[..., c : x.shape[-2] - c, c : x.shape[-1] - c] if c else x

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        """Encode x [B, C, H, W] in [0, 1], sample every group, decode; per-sample terms as in the contract."""
        feats = self._encode(x)
        s = self._initial_state(x.shape[0])
        zs, log_q, log_p = [], [], []
        for g in range(self.n_groups):
            s = self._enter_group(g, s)
            z, lq, lp = self._posterior(g, feats[g], s, generator)
            s = self._absorb(g, s, z)
            zs.append(z)
            log_q.append(lq)
            log_p.append(lp)
        logits = self.head(self.post(s))
        recon = -self._crop(self.likelihood.log_prob_map(logits, x)).sum(dim=(1, 2))
        top, zero = self.cfg.num_groups_per_scale, torch.zeros_like(recon)
        return VAEOutput(
            z0=torch.cat(zs[:top], dim=1),  # (B, G * L, H_top, W_top)
            log_q_z0=sum(log_q[:top]),
            lower_log_q=sum(log_q[top:], zero),
            lower_cross_entropy=-sum(log_p[top:], zero),
            kl_groups=[lq - lp for lq, lp in zip(log_q, log_p)],
            reconstruction=recon,
        )

    def decode(self, z0: torch.Tensor, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoder mean [B, C, H, W] in [0, 1] from top latent z0 [B, *latent_shape]; lower scales ~ N(0, T^2 I)."""
        top_groups = z0.chunk(self.cfg.num_groups_per_scale, dim=1)  # G x (B, L, H_top, W_top)
        s = self._initial_state(z0.shape[0])
        for g in range(self.n_groups):
            s = self._enter_group(g, s)
            if g < len(top_groups):
                z = top_groups[g]
            else:
                shape = (z0.shape[0], self.cfg.num_latent_per_group, *s.shape[2:])
                z = temperature * torch.randn(shape, generator=generator, device=s.device, dtype=s.dtype)
            s = self._absorb(g, s, z)
        return self.likelihood.mean(self.head(self.post(s)))

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoder mean [n, C, H, W] of z0 ~ N(0, T^2 I) (and lower scales ~ N(0, T^2 I))."""
        ref = self.prior_ftr0
        z0 = temperature * torch.randn((n, *self.latent_shape), generator=generator, device=ref.device,
                                       dtype=ref.dtype)
        return self.decode(z0, temperature=temperature, generator=generator)

    def regularization(self) -> torch.Tensor:
        """SR penalty (without lambda): sum of top singular values of the weight-normalized convs + sum of
        max |gamma| of the BN layers. Power iteration: ``sr_iters_first`` steps on the first call, then
        ``sr_iters``; its state is in buffers (state_dict), so a resumed run continues it exactly."""
        n_iter = self.sr_iters_first if int(self.sr_calls) == 0 else self.sr_iters
        self.sr_calls += 1
        return spectral_penalty(self, n_iter) + norm_scale_penalty(self)


@torch.no_grad()
def infer_active_channels(vae: nn.Module, batches, threshold: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel KL(q(z0_c | x) || N(0, 1)) of the top scale, summed over H, W and averaged over batches;
    returns (mask [C] = KL > threshold, kl [C]). Reads q's mean/log-std from the top-scale posterior heads."""
    groups = vae.cfg.num_groups_per_scale
    captured: dict[int, list[torch.Tensor]] = {g: [] for g in range(groups)}

    def hook(g):
        def fn(module, inputs, output):
            mu, log_sig = vae.posterior_normal(output)  # (B, L, h, w) each
            kl = 0.5 * (mu**2 + torch.exp(2 * log_sig) - 1.0) - log_sig  # (B, L, h, w)
            captured[g].append(kl.sum(dim=(2, 3)))  # (B, L)
        return fn

    handles = [vae.posteriors[g].register_forward_hook(hook(g)) for g in range(groups)]
    try:
        for x in batches:
            vae(x)
    finally:
        for h in handles:
            h.remove()
    kl = torch.cat([torch.cat(captured[g]).mean(dim=0) for g in range(groups)])  # (C,) in z0's channel order
    return kl > threshold, kl

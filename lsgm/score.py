"""The mixed Normal/neural score: the parameterisation wraps the backbone (paper section 3.2).

    eps_theta(z_t, t) = (1 - alpha) * sigma_t z_t + alpha * eps'_theta(z_t, t),   alpha = sigmoid(logit)

with one learnable logit per latent channel. sigma_t z_t is the exact eps-prediction for N(0, I) data, so
at alpha = 0 the prior is the VAE's Normal prior and the network models only the mismatch. The backbone
``eps'_theta(z_t, t)`` never sees SDE quantities. :func:`build_score` assembles a run's eps-prediction module,
the one builder training and evaluation share.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lsgm.config import RunConfig
from lsgm.nets.ncsnpp import NCSNpp
from lsgm.diffusion.sde import SDE


class MixedScore(nn.Module):
    """eps-prediction with a per-channel Normal/neural mixture.

    Args:
        backbone: module ``(z_t [B, C, ...], t [B]) -> eps' [B, C, ...]``.
        sde: provides sigma_t for the Normal component.
        latent_shape: ``(C, ...)`` of one latent (no batch dim).
        mixing_logit_init: initial logit of alpha (official: -3 for CIFAR-10, -6 for MNIST/OMNIGLOT/CelebA).
        mixed: ``False`` gives the ablation without mixing: eps_theta = eps'_theta.
    """

    def __init__(self, backbone: nn.Module, sde: SDE, latent_shape: tuple[int, ...],
                 mixing_logit_init: float = -3.0, mixed: bool = True):
        super().__init__()
        self.backbone, self.sde, self.mixed = backbone, sde, mixed
        channels = latent_shape[0]
        logit_shape = (1, channels) + (1,) * (len(latent_shape) - 1)  # broadcasts over [B, C, ...]
        self.mixing_logit = nn.Parameter(torch.full(logit_shape, float(mixing_logit_init)))
        self.register_buffer("active", torch.ones(channels, dtype=torch.bool))

    def _channel_mask(self, ndim: int) -> torch.Tensor:
        return self.active.reshape((1, -1) + (1,) * (ndim - 2))  # [1, C, 1, ...]

    @property
    def alpha(self) -> torch.Tensor:
        """Mixing coefficient per channel; exactly 0 for channels marked inactive."""
        return torch.sigmoid(self.mixing_logit) * self._channel_mask(self.mixing_logit.ndim)

    def set_active(self, mask: torch.Tensor) -> None:
        """Mark latent channels active (``drop_inactive_var``): inactive ones are zeroed at the backbone's
        input and use the Normal score only."""
        self.active.copy_(mask.to(torch.bool))

    def regularization(self, conv: bool = True) -> torch.Tensor:
        """The backbone's SR penalty (the mixing logit has none, as in the official code)."""
        return self.backbone.regularization(conv=conv)

    def normal_weight(self) -> torch.Tensor:
        """(1 - alpha) per channel [1, C, 1, ...] (0 without mixing): the Normal part of eps_theta is this times
        ``sde.mixing_component(z_t, t)``, a linear function of z_t."""
        return 1.0 - self.alpha if self.mixed else torch.zeros_like(self.mixing_logit)

    def parts(self, z_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two terms of :meth:`forward`: ((1 - alpha) * mixing_component, alpha * eps'), in fp32; their sum is
        eps_theta (the Normal part is zero without mixing). The evaluation's control variate
        (:func:`lsgm.diffusion.objectives.prior_cross_entropy_cv`) needs them apart."""
        mask = self._channel_mask(z_t.ndim)
        eps_net = self.backbone(z_t * mask, t).float()  # the mixture (and the loss after it) in fp32 under autocast
        if not self.mixed:
            return torch.zeros_like(eps_net), eps_net
        return (1.0 - self.alpha) * self.sde.mixing_component(z_t.float(), t.float()), self.alpha * eps_net

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z_t: [B, C, ...], t: [B] -> eps_theta: [B, C, ...]."""
        normal, neural = self.parts(z_t, t)
        return normal + neural if self.mixed else neural


def initial_latent_scale(alpha: torch.Tensor, sde: SDE, t_eps: float) -> torch.Tensor:
    """The standard deviation per channel of the top latent that the mixed score draws at initialisation: with eps' = 0
    the score is -(1 - alpha) z_t, and for a VP-type SDE (f = -g^2 / 2) the probability-flow ODE is the linear
    dz/dt = -alpha g^2(t) z / 2, so z_{t_eps} = z_1 (m(t_eps) / m(1))^alpha with m the SDE's mean coefficient
    (int g^2 dt = 2 log(m(t_eps) / m(1))). The initial prior is therefore N(0, tau^2 I) with tau = (m(t_eps) /
    m(1))^alpha per channel: e.g. 1.27 for the VPSDE (beta 0.1..20) at mixing logit -3.

    alpha: the mixing coefficients [C] (sigmoid of the initial logit, 0 on inactive channels) -> tau [C]."""
    if sde.prior_var != 1.0:
        raise ValueError(f"the initial mixed score's latent scale is derived for VP-type SDEs; {sde.type} is not one")
    ends = torch.tensor([float(t_eps), 1.0], dtype=torch.float64)
    m_eps, m_1 = sde.mean_coeff(ends).tolist()
    return torch.exp(alpha.double() * math.log(m_eps / m_1))


class NoiseConditioned(nn.Module):
    """score_sde's VESDE conditioning for the pixel SGM: the backbone's time embedding sees log sigma_t instead of t
    (NCSN++ with Fourier features of log sigma_t). Its output is the eps-prediction, score = -eps / sigma_t, which is
    score_sde's ``scale_by_sigma`` output (network / sigma_t) up to the sign the network learns."""

    def __init__(self, backbone: nn.Module, sde: SDE):
        super().__init__()
        self.backbone, self.sde = backbone, sde

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.backbone(x, 0.5 * torch.log(self.sde.var(t)))

    def regularization(self, conv: bool = True) -> torch.Tensor:
        return self.backbone.regularization(conv=conv)


def condition(backbone: nn.Module, sde: SDE, on: str) -> nn.Module:
    """The pixel SGM's score module: the backbone on t, or ``NoiseConditioned`` on log sigma_t."""
    if on == "t":
        return backbone
    if on == "log_sigma":
        return NoiseConditioned(backbone, sde)
    raise ValueError(f"unknown score conditioning {on!r}; use 't' or 'log_sigma'")


def to_model_space(x: torch.Tensor, centered: bool) -> torch.Tensor:
    """Images in [0, 1] -> the pixel SGM's space: 2 x - 1 (centered) or x itself (score_sde's VESDE configs)."""
    return 2.0 * x - 1.0 if centered else x


def to_unit(x: torch.Tensor, centered: bool) -> torch.Tensor:
    """The pixel SGM's state -> images in [0, 1] (clamped)."""
    return ((x + 1.0) / 2.0 if centered else x).clamp(0.0, 1.0)
def build_score(cfg: RunConfig, shape: tuple[int, ...], sde: SDE) -> nn.Module:
    """The eps-prediction module of a run, as training and evaluation build it: LSGM ``MixedScore(NCSNpp)`` on the
    latent shape ``(C, H, W)``; the pixel SGM (``cfg.kind == "sgm"``) ``NCSNpp`` on the image shape, conditioned on t
    or on log sigma_t (``cfg.score.condition``)."""
    backbone = NCSNpp(cfg.score, shape[0], shape[1])
    if cfg.kind == "sgm":
        return condition(backbone, sde, cfg.score.condition)
    return MixedScore(backbone, sde, tuple(shape), mixing_logit_init=cfg.objective.mixing_logit_init,
                      mixed=cfg.objective.mixed_score)

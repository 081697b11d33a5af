"""Linear SDEs dz = f(t) z dt + g(t) dw as small plain classes (no nn.Module, no device).

Conventions (reference doc section 2): the perturbation kernel is q(z_t | z_0) = N(m_t z_0, sigma_t^2 I)
with ``mean_coeff(t) = m_t = exp(int_0^t f)`` and ``var(t) = sigma_t^2``; every SDE satisfies
d sigma_t^2 / dt = 2 f sigma_t^2 + g^2 (:meth:`SDE.dvar`). ``sigma2_0`` is a variance already present at
t = 0, so every VP-type SDE here satisfies

    sigma_t^2 = sigma2_0 m_t^2 + (1 - m_t^2),   d sigma_t^2 / dt = g^2 (1 - sigma_t^2),

with prior N(0, I); the variance-exploding SDE of the original score model (Song et al. 2021, score_sde's
``VESDE``) has m_t = 1, f = 0 and prior N(0, sigma_max^2 I).

Each schedule formula is written once; every method takes a tensor ``t`` of any shape and returns a
tensor of the same shape and device.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from lsgm.config import SDEConfig
from lsgm.utils import append_dims, sum_except_batch


class SDE(ABC):
    """A linear SDE; the defaults are the variance-preserving type's (prior N(0, I) at t = 1)."""

    type: str  # the run config's sde.type (lsgm.methods' rules are written in these names)
    sigma2_0: float
    prior_var: float = 1.0  # the prior at t = 1 is N(0, prior_var I)

    @abstractmethod
    def var(self, t: torch.Tensor) -> torch.Tensor:
        """sigma_t^2, the variance of q(z_t | z_0)."""

    @abstractmethod
    def g2(self, t: torch.Tensor) -> torch.Tensor:
        """g(t)^2, the squared diffusion coefficient."""

    @abstractmethod
    def inv_var(self, var: torch.Tensor) -> torch.Tensor:
        """The time t at which sigma_t^2 = var (inverse of :meth:`var`)."""

    def f(self, t: torch.Tensor) -> torch.Tensor:
        """Drift coefficient f(t) (drift is f(t) z); -g^2/2 for VP-type SDEs."""
        return -0.5 * self.g2(t)

    def mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """m_t = sqrt((1 - sigma_t^2) / (1 - sigma2_0))."""
        return torch.sqrt((1.0 - self.var(t)) / (1.0 - self.sigma2_0))

    def dvar(self, t: torch.Tensor) -> torch.Tensor:
        """d sigma_t^2 / dt = 2 f sigma_t^2 + g^2, which is g^2 (1 - sigma_t^2) for VP-type SDEs."""
        return self.g2(t) * (1.0 - self.var(t))

    @property
    def prior_std(self) -> float:
        return math.sqrt(self.prior_var)

    def perturb(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z_t = m_t z_0 + sigma_t noise; z0, noise: [B, ...], t: [B]."""
        m = append_dims(self.mean_coeff(t), z0.ndim)
        s = append_dims(self.var(t).sqrt(), z0.ndim)
        return m * z0 + s * noise

    def mixing_component(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The eps-prediction that is exact for N(0, I) data: sigma_t z_t (the Normal part of the mixed score)."""
        return append_dims(self.var(t).sqrt(), z_t.ndim) * z_t

    def prior_sample(self, shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
        """z_1 ~ N(0, prior_var I) of the given shape."""
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return z if self.prior_var == 1.0 else z * self.prior_std

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_var I) summed per sample: [B, ...] -> [B]."""
        if self.prior_var == 1.0:
            return sum_except_batch(-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi))
        return sum_except_batch(-0.5 * z.pow(2) / self.prior_var - 0.5 * math.log(2 * math.pi * self.prior_var))

    def ode_drift(self, z_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Probability-flow ODE dz/dt = f z + g^2 eps / (2 sigma_t), with score = -eps / sigma_t."""
        n = z_t.ndim
        return append_dims(self.f(t), n) * z_t + append_dims(0.5 * self.g2(t) / self.var(t).sqrt(), n) * eps

    def describe(self) -> dict:
        return {"type": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


class VPSDE(SDE):
    """Variance-preserving SDE with linear beta(t) = beta_min + (beta_max - beta_min) t."""

    type = "vpsde"

    def __init__(self, beta_min: float, beta_max: float, sigma2_0: float):
        if not 0.0 <= sigma2_0 < 1.0:
            raise ValueError(f"sigma2_0 must be in [0, 1), got {sigma2_0}")
        self.beta_min, self.beta_max, self.sigma2_0 = float(beta_min), float(beta_max), float(sigma2_0)

    def _int_beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def var(self, t: torch.Tensor) -> torch.Tensor:
        # 1 - (1 - s0) e^{-B} = s0 - (1 - s0) expm1(-B): exact to float precision near t = 0, where
        # 1 - exp(-B) in float32 is 19 % off at t = 1e-6 and exactly 0 below ~3e-7
        return self.sigma2_0 - (1.0 - self.sigma2_0) * torch.expm1(-self._int_beta(t))

    def mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * self._int_beta(t))

    def inv_var(self, var: torch.Tensor) -> torch.Tensor:
        c = torch.log1p(-(var - self.sigma2_0) / (1.0 - self.sigma2_0))  # = log((1 - var) / (1 - s0)) = -int beta
        a = self.beta_max - self.beta_min
        if a == 0.0:
            return -c / self.beta_min
        return (-self.beta_min + torch.sqrt(self.beta_min**2 - 2.0 * a * c)) / a


class GeometricVPSDE(SDE):
    """Geometric VPSDE: sigma_t^2 = sigma2_min r^t - sigma2_min + sigma2_0 with r = sigma2_max / sigma2_min.

    With sigma2_0 = sigma2_min the variance is exactly geometric, so d log sigma_t^2 / dt = log r is
    constant: the likelihood-weighted objective has low variance under uniform t (paper section 3.3).
    """

    type = "geometric"

    def __init__(self, sigma2_min: float, sigma2_max: float, sigma2_0: float):
        if not 0.0 < sigma2_min < sigma2_max < 1.0:
            raise ValueError(f"need 0 < sigma2_min < sigma2_max < 1, got {sigma2_min}, {sigma2_max}")
        self.sigma2_min, self.sigma2_max, self.sigma2_0 = float(sigma2_min), float(sigma2_max), float(sigma2_0)
        self._log_r = math.log(self.sigma2_max / self.sigma2_min)

    def _rt(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self._log_r * t)

    def var(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma2_min * torch.expm1(self._log_r * t) + self.sigma2_0  # sigma2_min (r^t - 1) + sigma2_0

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        dvar = self.sigma2_min * self._rt(t) * self._log_r  # d sigma_t^2 / dt
        return dvar / (1.0 - self.var(t))

    def inv_var(self, var: torch.Tensor) -> torch.Tensor:
        return torch.log1p((var - self.sigma2_0) / self.sigma2_min) / self._log_r


class VESDE(SDE):
    """Variance-exploding SDE (score_sde ``VESDE``): sigma_t = sigma_min (sigma_max / sigma_min)^t, m_t = 1, f = 0,
    g^2 = d sigma_t^2 / dt = 2 log(sigma_max / sigma_min) sigma_t^2, prior N(0, sigma_max^2 I).

    sigma_t^2 at t = 0 is sigma_min^2 (``sigma2_0``), as in score_sde, whose perturbation kernel at t has
    standard deviation sigma_t for every t in [0, 1]. sigma_max follows Song & Ermon (2020, technique 1): about the
    largest pairwise Euclidean distance between training images (:func:`max_pairwise_distance`).
    """

    type = "vesde"

    def __init__(self, sigma_min: float, sigma_max: float):
        if not 0.0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.sigma2_0, self.prior_var = self.sigma_min**2, self.sigma_max**2
        self._log_r = math.log(self.sigma_max / self.sigma_min)

    def var(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma2_0 * torch.exp(2.0 * self._log_r * t)

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        return 2.0 * self._log_r * self.var(t)

    def dvar(self, t: torch.Tensor) -> torch.Tensor:
        return self.g2(t)

    def f(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def inv_var(self, var: torch.Tensor) -> torch.Tensor:
        return torch.log(var / self.sigma2_0) / (2.0 * self._log_r)

    def mixing_component(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The eps-prediction exact for N(0, I) data: z_t ~ N(0, (1 + sigma_t^2) I), E[eps | z_t] = sigma_t z_t / (1 + sigma_t^2)."""
        var = append_dims(self.var(t), z_t.ndim)
        return var.sqrt() * z_t / (1.0 + var)


@torch.no_grad()
def max_pairwise_distance(x: torch.Tensor, chunk: int = 1024) -> float:
    """The largest Euclidean distance between two rows of ``x`` [N, ...] (flattened; float64, in chunks): score_sde's
    rule for sigma_max of the VESDE (Song & Ermon 2020, technique 1)."""
    flat = x.reshape(x.shape[0], -1).double()
    best = 0.0
    for i in range(0, flat.shape[0], chunk):
        best = max(best, float(torch.cdist(flat[i : i + chunk], flat).max()))
    return best


def make_sde(cfg: SDEConfig) -> SDE:
    """Build the SDE a run config names."""
    if cfg.type == "vpsde":
        return VPSDE(cfg.beta_min, cfg.beta_max, cfg.sigma2_0)
    if cfg.type == "geometric":
        return GeometricVPSDE(cfg.sigma2_min, cfg.sigma2_max, cfg.sigma2_0_geometric)
    if cfg.type == "vesde":
        return VESDE(cfg.sigma_min, cfg.sigma_max)
    raise ValueError(f"unknown SDE type {cfg.type!r}; use 'vpsde', 'geometric' or 'vesde'")

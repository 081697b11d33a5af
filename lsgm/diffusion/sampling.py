"""Samplers that return their cost: probability-flow ODE (torchdiffeq) and predictor-corrector.

Both integrate from t = 1 down to t = t_eps; every call returns a :class:`SampleResult` with the number
of score-network evaluations (NFE, counted by the wrapper of that one solve -- never a global) and the
wall time of the solve.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torchdiffeq import odeint

from lsgm.diffusion.objectives import EpsFn
from lsgm.diffusion.sde import SDE
from lsgm.utils import append_dims, synchronize

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


@dataclass(frozen=True)
class SampleResult:
    z0: torch.Tensor  # [B, ...] samples at t = t_eps
    nfe: int  # score-network evaluations, including rejected solver steps
    seconds: float  # wall time of the solve (device synchronised)


class ProbabilityFlow(nn.Module):
    """dz/dt = f(t) z + g(t)^2 eps_theta(z, t) / (2 sigma_t), counting its own evaluations.

    ``t_range`` clamps the time the score sees: the solver's initial step-size probe may evaluate far
    outside [t_eps, 1], where sigma_t^2 can be negative (VPSDE, t < 0)."""

    def __init__(self, eps_fn: EpsFn, sde: SDE, t_range: tuple[float, float]):
        super().__init__()
        self.eps_fn, self.sde, self.t_range, self.nfe = eps_fn, sde, t_range, 0

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        t_batch = t.clamp(*self.t_range).to(z.dtype).expand(z.shape[0])  # [B]
        return self.sde.ode_drift(z, t_batch, self.eps_fn(z, t_batch))


def solver_options(method: str, max_num_steps: int, t_end: float) -> dict:
    """Adaptive solvers: a step budget, and a last step that lands exactly on ``t_end`` (never past it)."""
    if method in ADAPTIVE_METHODS:
        return {"max_num_steps": max_num_steps, "step_t": torch.tensor([t_end], dtype=torch.float64)}
    return {}


@torch.no_grad()
def ode_sample(eps_fn: EpsFn, sde: SDE, shape: tuple[int, ...], t_eps: float, rtol: float, atol: float,
               method: str = "dopri5", generator: torch.Generator | None = None, device=None,
               z1: torch.Tensor | None = None, temperature: float = 1.0,
               max_num_steps: int = 100_000) -> SampleResult:
    """Sample by integrating the probability-flow ODE from t = 1 to ``t_eps``.

    Args:
        shape: ``[B, ...]`` of the samples (ignored when ``z1`` is given).
        z1: optional initial noise [B, ...] (per-sample seeding happens outside); else N(0, T^2 I).
        max_num_steps: a stalled solve fails fast instead of burning GPU hours.
    """
    if z1 is None:
        z1 = sde.prior_sample(shape, generator=generator, device=device) * temperature
    func = ProbabilityFlow(eps_fn, sde, (t_eps, 1.0))
    times = torch.tensor([1.0, t_eps], device=z1.device, dtype=torch.float64)
    synchronize(z1.device)
    start = time.perf_counter()
    z0 = odeint(func, z1, times, rtol=rtol, atol=atol, method=method,
                options=solver_options(method, max_num_steps, t_eps))[-1]
    synchronize(z1.device)
    return SampleResult(z0=z0, nfe=func.nfe, seconds=time.perf_counter() - start)


def _langevin_step(eps_fn: EpsFn, sde: SDE, z: torch.Tensor, t: torch.Tensor, snr: float, alpha: float,
                   generator: torch.Generator | None) -> torch.Tensor:
    """One Langevin corrector step (score_sde ``LangevinCorrector``): step size 2 alpha (snr ||noise|| / ||score||)^2."""
    score = -eps_fn(z, t) / append_dims(sde.var(t).sqrt(), z.ndim)
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    grad_norm = score.reshape(z.shape[0], -1).norm(dim=1).mean()
    noise_norm = noise.reshape(z.shape[0], -1).norm(dim=1).mean()
    step = 2.0 * alpha * (snr * noise_norm / grad_norm) ** 2
    return z + step * score + torch.sqrt(2.0 * step) * noise


def reverse_diffusion_coefficients(sde: SDE, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_i, b_i^2) of the forward transitions z_i = a_i z_{i+1} + b_i noise between the sampler's times t_i > t_{i+1}
    (float64 [N]); after the last time comes the data itself (m = 1, sigma^2 = 0):
    a_i = m(t_i) / m(t_{i+1}),  b_i^2 = sigma^2(t_i) - a_i^2 sigma^2(t_{i+1})."""
    var, mean = sde.var(times), sde.mean_coeff(times)
    var_next = torch.cat([var[1:], var.new_zeros(1)])
    mean_next = torch.cat([mean[1:], mean.new_ones(1)])
    a = mean / mean_next
    return a, var - a.pow(2) * var_next


@torch.no_grad()
def pc_sample(eps_fn: EpsFn, sde: SDE, shape: tuple[int, ...], n_steps: int, t_eps: float,
              snr: float = 0.16, n_corrector: int = 1, generator: torch.Generator | None = None,
              device=None, z1: torch.Tensor | None = None) -> SampleResult:
    """Predictor-corrector sampling (Song et al. 2021; score_sde's ``pc`` sampler with ``reverse_diffusion`` and
    ``langevin``) on ``n_steps`` uniform times t_i from 1 to ``t_eps``. At each t_i: ``n_corrector`` Langevin steps
    (alpha_i = a_i^2: score_sde's VPSDE alphas, 1 for the VESDE), then the reverse-diffusion predictor, the reverse
    of the forward transition to the next time (:func:`reverse_diffusion_coefficients`):

        z <- (2 - a_i) z + b_i^2 score(z, t_i) + b_i noise,

    which is score_sde's ``discretize`` for both SDEs (VESDE: a = 1, b_i^2 = sigma_i^2 - sigma_{i+1}^2; VPSDE:
    a = sqrt(1 - beta_i)), with the exact transition instead of its first-order form. The last step goes to the data
    (sigma = 0) and returns the noise-free mean (score_sde ``noise_removal``). NFE = n_steps * (1 + n_corrector)."""
    z = sde.prior_sample(shape, generator=generator, device=device) if z1 is None else z1
    times64 = torch.linspace(1.0, t_eps, n_steps, dtype=torch.float64)
    a, b2 = reverse_diffusion_coefficients(sde, times64)
    times = times64.to(device=z.device, dtype=z.dtype)
    synchronize(z.device)
    start, nfe = time.perf_counter(), 0
    for i in range(n_steps):
        t = times[i].expand(z.shape[0])  # [B]
        a_i, b2_i = float(a[i]), float(b2[i])
        for _ in range(n_corrector):
            z = _langevin_step(eps_fn, sde, z, t, snr, a_i**2, generator)
        score = -eps_fn(z, t) / append_dims(sde.var(t).sqrt(), z.ndim)
        nfe += n_corrector + 1
        z_mean = (2.0 - a_i) * z + b2_i * score
        if i == n_steps - 1:
            z = z_mean
        else:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            z = z_mean + math.sqrt(b2_i) * noise
    synchronize(z.device)
    return SampleResult(z0=z, nfe=nfe, seconds=time.perf_counter() - start)

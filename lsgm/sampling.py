"""Samplers that return their cost: probability-flow ODE (torchdiffeq) and predictor-corrector.

Both integrate from t = 1 down to t = t_eps; every call returns a :class:`SampleResult` with the number
of score-network evaluations (NFE, counted by the wrapper of that one solve -- never a global) and the
wall time of the solve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torchdiffeq import odeint

from lsgm.objectives import EpsFn
from lsgm.sde import SDE
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


def _langevin_step(eps_fn: EpsFn, sde: SDE, z: torch.Tensor, t: torch.Tensor, snr: float,
                   generator: torch.Generator | None) -> torch.Tensor:
    """One Langevin corrector step with the step size set by the signal-to-noise ratio ``snr``."""
    score = -eps_fn(z, t) / append_dims(sde.var(t).sqrt(), z.ndim)
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    grad_norm = score.reshape(z.shape[0], -1).norm(dim=1).mean()
    noise_norm = noise.reshape(z.shape[0], -1).norm(dim=1).mean()
    step = 2.0 * (snr * noise_norm / grad_norm) ** 2
    return z + step * score + torch.sqrt(2.0 * step) * noise


@torch.no_grad()
def pc_sample(eps_fn: EpsFn, sde: SDE, shape: tuple[int, ...], n_steps: int, t_eps: float,
              snr: float = 0.16, n_corrector: int = 1, generator: torch.Generator | None = None,
              device=None, z1: torch.Tensor | None = None) -> SampleResult:
    """Predictor-corrector sampling (Song et al. 2021): Langevin corrector, then a reverse-SDE
    Euler-Maruyama predictor, on ``n_steps`` uniform times from 1 to ``t_eps``; the last step returns the
    noise-free mean. NFE = n_steps * (1 + n_corrector)."""
    z = sde.prior_sample(shape, generator=generator, device=device) if z1 is None else z1
    times = torch.linspace(1.0, t_eps, n_steps, device=z.device, dtype=z.dtype)
    dt = (1.0 - t_eps) / n_steps
    synchronize(z.device)
    start, nfe = time.perf_counter(), 0
    for i, t_scalar in enumerate(times):
        t = t_scalar.expand(z.shape[0])  # [B]
        for _ in range(n_corrector):
            z = _langevin_step(eps_fn, sde, z, t, snr, generator)
        eps = eps_fn(z, t)
        nfe += n_corrector + 1
        # reverse SDE: dz = [f z - g^2 score] dt + g dw, integrated backwards in time
        drift = sde.ode_drift(z, t, eps) + append_dims(0.5 * sde.g2(t) / sde.var(t).sqrt(), z.ndim) * eps
        z_mean = z - drift * dt
        if i == n_steps - 1:
            z = z_mean
        else:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            z = z_mean + append_dims((sde.g2(t) * dt).sqrt(), z.ndim) * noise
    synchronize(z.device)
    return SampleResult(z0=z, nfe=nfe, seconds=time.perf_counter() - start)

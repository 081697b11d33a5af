"""Log-likelihood by the probability-flow ODE, and unit conversions.

log p(z_{t_eps}) = log N(z_1; 0, I) + int_{t_eps}^1 div F(z_t, t) dt, with F the probability-flow drift
and the divergence estimated by Hutchinson's trick v^T (dF/dz) v. The probe v is drawn ONCE per solve
(FFJORD practice; the official LSGM code re-draws it at every function evaluation, which feeds noise into
the adaptive step control). As in the official evaluation, the encoder sample z_0 is the ODE state at
t = t_eps. The whole batch is one ODE system, so NFE depends on the batch size: record it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torchdiffeq import odeint

from lsgm.diffusion.objectives import EpsFn
from lsgm.diffusion.sampling import solver_options
from lsgm.diffusion.sde import SDE
from lsgm.utils import sum_except_batch, synchronize


@dataclass(frozen=True)
class LikelihoodResult:
    logp: torch.Tensor  # [B] log p(z_0) in nats
    nfe: int
    seconds: float


def nats_to_bpd(nats, num_dims: int):
    """Negative log-likelihood in nats (per sample) -> bits per dimension."""
    return nats / (num_dims * math.log(2.0))


def bpd_to_nats(bpd, num_dims: int):
    """Bits per dimension -> nats per sample."""
    return bpd * num_dims * math.log(2.0)


def iw_nll(nelbo_k: torch.Tensor) -> torch.Tensor:
    """Importance-weighted NLL per sample: [K, B] NELBOs (nats) -> [B] = -(logsumexp_k(-NELBO_k) - log K)."""
    k = nelbo_k.shape[0]
    return -(torch.logsumexp(-nelbo_k.double(), dim=0) - math.log(k)).to(nelbo_k.dtype)


def hutchinson_probe(like: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A probe v with E[v v^T] = I: 'gaussian' N(0, I) or 'rademacher' (+-1)."""
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    if kind == "rademacher":
        bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
        return bits.to(like.dtype) * 2 - 1
    raise ValueError(f"unknown probe {kind!r}; use 'gaussian' or 'rademacher'")


class AugmentedFlow(nn.Module):
    """(z, logdet) -> (F(z, t), v^T dF/dz v), with a fixed probe v, counting its evaluations."""

    def __init__(self, eps_fn: EpsFn, sde: SDE, probe: torch.Tensor, t_range: tuple[float, float]):
        super().__init__()
        self.eps_fn, self.sde, self.probe, self.t_range, self.nfe = eps_fn, sde, probe, t_range, 0

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        self.nfe += 1
        z = state[0]
        t_batch = t.clamp(*self.t_range).to(z.dtype).expand(z.shape[0])  # [B]
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            drift = self.sde.ode_drift(z, t_batch, self.eps_fn(z, t_batch))
            (vjp,) = torch.autograd.grad((drift * self.probe).sum(), z)
        return drift.detach(), sum_except_batch(vjp * self.probe)


def ode_log_likelihood(z0: torch.Tensor, eps_fn: EpsFn, sde: SDE, t_eps: float, rtol: float, atol: float,
                       probe: str = "gaussian", generator: torch.Generator | None = None,
                       method: str = "dopri5", max_num_steps: int = 100_000) -> LikelihoodResult:
    """log p(z0) [B] in nats under the score model's probability-flow ODE, integrated from t_eps to 1."""
    func = AugmentedFlow(eps_fn, sde, hutchinson_probe(z0, probe, generator), (t_eps, 1.0))
    state0 = (z0.detach(), torch.zeros(z0.shape[0], device=z0.device, dtype=z0.dtype))
    times = torch.tensor([t_eps, 1.0], device=z0.device, dtype=torch.float64)
    synchronize(z0.device)
    start = time.perf_counter()
    with torch.no_grad():
        z_path, div_path = odeint(func, state0, times, rtol=rtol, atol=atol, method=method,
                                  options=solver_options(method, max_num_steps, 1.0))
    synchronize(z0.device)
    logp = sde.prior_log_prob(z_path[-1]) + div_path[-1]
    return LikelihoodResult(logp=logp, nfe=func.nfe, seconds=time.perf_counter() - start)

"""Sampling of diffusion time t and the weights that keep the objectives unbiased.

Every objective here estimates an integral over t in [t_eps, 1] of the form

    int_{t_eps}^1 c_w w(t) * h(t) dt,   h(t) = E || eps - eps_theta(z_t, t) ||^2,

with w one of the paper's weightings (Table 1): w_ll = g^2 / sigma_t^2 (maximum likelihood),
w_un = 1 (unweighted) or w_re = g^2 (reweighted), and c_w the official code's prefactor of that weighting
(``P_OBJECTIVE_SCALE``): 1/2 for w_ll and w_re (the 1/2 of Theorem 1), 1 for w_un (the official ``drop_all_*``
modes drop every prefactor, the 1/2 included: weight x density = 1). A sampler draws t ~ r(t) on [t_eps, 1] and
returns

    weight_p = c_w w(t) / r(t)      -> E[weight_p * h(t)] = int c_w w h dt   (score prior, objective (9))
    weight_q = w_ll(t) / (2 r(t))   -> E[weight_q * h(t)] = int w_ll/2 h dt  (encoder, "rew." in Table 6)

so that both estimates are unbiased for *any* proposal r. The proposals are U[t_eps, 1] and the
importance distributions of the reference doc section 3.4, r(t) proportional to w(t) (1 - sigma_t^2):

    r_ll: log sigma_t^2 uniform,   r_re: sigma_t^2 uniform,   r_un: density (1 - sigma_t^2) / Z (VPSDE only).

Two bias quirks of the official code are fixed here (reference section 3.6): the r_un normalizer Z uses
the exact exp(delta b^2) factor (the official ``const_norm`` is 0.23 % off at beta = (0.1, 20)), and the
uniform modes include the (1 - t_eps) factor of r(t) = 1 / (1 - t_eps) (the official code drops it and
over-estimates the cross entropy by 1 / (1 - t_eps)). All time arithmetic runs in float64.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from lsgm.methods import Q_OBJECTIVES, SAMPLINGS, WEIGHTINGS, undefined_reason
from lsgm.diffusion.sde import SDE, VPSDE


@dataclass(frozen=True)
class TimeSample:
    """A batch of diffusion times and their importance weights, all of shape [B]."""

    t: torch.Tensor
    weight_p: torch.Tensor  # c_w w(t) / r(t): weight of ||eps - eps_theta||^2 in the score prior's loss
    weight_q: torch.Tensor  # w_ll(t) / (2 r(t)): weight in the encoder's cross entropy ("rew.")
    t_eps: float  # the lower end of the time interval (the cross entropy's constant depends on it)


# The score objective's prefactor per weighting, as the official code has it (reference section 3.3): Theorem 1's
# 1/2 for w_ll (``ll_*``) and w_re (``drop_sigma2t_*``); none for w_un (``drop_all_*``: weight 1, or 1 / r_un(t)).
# w_un's loss is no likelihood, so the prefactor changes no optimum; it sets the data term's size against the score
# network's spectral regulariser and Adam's eps, which is why it is the official one.
P_OBJECTIVE_SCALE = {"ll": 0.5, "un": 1.0, "re": 0.5}


def weighting_fn(weighting: str, sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """w(t) of Table 1: 'll' -> g^2 / sigma_t^2, 'un' -> 1, 're' -> g^2."""
    if weighting == "ll":
        return sde.g2(t) / sde.var(t)
    if weighting == "un":
        return torch.ones_like(t)
    if weighting == "re":
        return sde.g2(t)
    raise ValueError(f"unknown weighting {weighting!r}; use one of {WEIGHTINGS}")


class TimeSampler(ABC):
    """Draws t ~ r(t) on [t_eps, 1] by inverting its CDF; subclasses give r, its CDF and the inverse."""

    name: str

    def __init__(self, weighting: str, sde: SDE, t_eps: float):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; use one of {WEIGHTINGS}")
        if not 0.0 <= t_eps < 1.0:
            raise ValueError(f"t_eps must be in [0, 1), got {t_eps}")
        if float(sde.var(torch.tensor(t_eps, dtype=torch.float64))) <= 0.0:
            raise ValueError(f"sigma_t^2 = 0 at t_eps = {t_eps}: use t_eps > 0 or an SDE with sigma2_0 > 0")
        self.weighting, self.sde, self.t_eps = weighting, sde, float(t_eps)
        self._var_eps = float(sde.var(torch.tensor(self.t_eps, dtype=torch.float64)))
        self._var_1 = float(sde.var(torch.tensor(1.0, dtype=torch.float64)))

    @abstractmethod
    def density(self, t: torch.Tensor) -> torch.Tensor:
        """r(t), normalised on [t_eps, 1]."""

    @abstractmethod
    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        """P(T <= t)."""

    @abstractmethod
    def icdf(self, rho: torch.Tensor) -> torch.Tensor:
        """Inverse CDF: rho in [0, 1] -> t in [t_eps, 1]."""

    def weights(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight_p, weight_q) at times t (float64): c_w w(t) / r(t) and w_ll(t) / (2 r(t))."""
        r = self.density(t)
        scale = P_OBJECTIVE_SCALE[self.weighting]
        return scale * weighting_fn(self.weighting, self.sde, t) / r, weighting_fn("ll", self.sde, t) / (2 * r)

    def sample(self, batch: int, generator: torch.Generator | None = None, device=None,
               dtype: torch.dtype = torch.float32) -> TimeSample:
        """Draw ``batch`` times; returns a :class:`TimeSample` of [batch] tensors in ``dtype``."""
        if generator is not None and device is None:
            device = generator.device
        rho = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        t = self.icdf(rho).clamp(self.t_eps, 1.0)
        w_p, w_q = self.weights(t)
        return TimeSample(t=t.to(dtype), weight_p=w_p.to(dtype), weight_q=w_q.to(dtype), t_eps=self.t_eps)

    def _dvar(self, t: torch.Tensor) -> torch.Tensor:
        return self.sde.dvar(t)  # d sigma_t^2 / dt


class UniformSampler(TimeSampler):
    """t ~ U[t_eps, 1]."""

    name = "uniform"

    def density(self, t):
        return torch.full_like(t, 1.0 / (1.0 - self.t_eps))

    def cdf(self, t):
        return (t - self.t_eps) / (1.0 - self.t_eps)

    def icdf(self, rho):
        return self.t_eps + (1.0 - self.t_eps) * rho


class LogVarianceSampler(TimeSampler):
    """r_ll(t): log sigma_t^2 uniform between log sigma^2(t_eps) and log sigma^2(1)."""

    name = "r_ll"

    def _span(self) -> float:
        return math.log(self._var_1 / self._var_eps)

    def density(self, t):
        return self._dvar(t) / (self.sde.var(t) * self._span())

    def cdf(self, t):
        return torch.log(self.sde.var(t) / self._var_eps) / self._span()

    def icdf(self, rho):
        log_var = rho * math.log(self._var_1) + (1.0 - rho) * math.log(self._var_eps)
        return self.sde.inv_var(torch.exp(log_var))


class VarianceSampler(TimeSampler):
    """r_re(t): sigma_t^2 uniform between sigma^2(t_eps) and sigma^2(1)."""

    name = "r_re"

    def density(self, t):
        return self._dvar(t) / (self._var_1 - self._var_eps)

    def cdf(self, t):
        return (self.sde.var(t) - self._var_eps) / (self._var_1 - self._var_eps)

    def icdf(self, rho):
        return self.sde.inv_var(rho * self._var_1 + (1.0 - rho) * self._var_eps)


class UnweightedVPSampler(TimeSampler):
    """r_un(t) = (1 - sigma_t^2) / Z for the VPSDE (a truncated Gaussian in t, sampled through erf). Which SDEs
    have r_un is a rule of :mod:`lsgm.methods`, applied by :func:`make_time_sampler`."""

    name = "r_un"

    def __init__(self, weighting: str, sde: VPSDE, t_eps: float):
        if sde.beta_max <= sde.beta_min:
            raise ValueError("r_un(t) needs beta_max > beta_min (its erf form divides by the difference); "
                             "use sampling='uniform'")
        super().__init__(weighting, sde, t_eps)
        self._delta = 0.5 * (sde.beta_max - sde.beta_min)
        self._b = sde.beta_min / (sde.beta_max - sde.beta_min)

    def _erf_at(self, t):
        return torch.special.erf(math.sqrt(self._delta) * (t + self._b))

    def _erf_bounds(self) -> tuple[float, float]:
        lo = math.erf(math.sqrt(self._delta) * (self.t_eps + self._b))
        return lo, math.erf(math.sqrt(self._delta) * (1.0 + self._b))

    def normalizer(self) -> float:
        """Z = int_{t_eps}^1 (1 - sigma_t^2) dt (exact; the official code's factor is exp(b/2) instead of exp(delta b^2))."""
        lo, hi = self._erf_bounds()
        scale = (1.0 - self.sde.sigma2_0) * math.exp(self._delta * self._b**2)
        return scale * math.sqrt(math.pi) / (2.0 * math.sqrt(self._delta)) * (hi - lo)

    def density(self, t):
        return (1.0 - self.sde.var(t)) / self.normalizer()

    def cdf(self, t):
        lo, hi = self._erf_bounds()
        return (self._erf_at(t) - lo) / (hi - lo)

    def icdf(self, rho):
        lo, hi = self._erf_bounds()
        return torch.special.erfinv(rho * (hi - lo) + lo) / math.sqrt(self._delta) - self._b


_IS_FOR_WEIGHTING = {"ll": LogVarianceSampler, "un": UnweightedVPSampler, "re": VarianceSampler}


def make_time_sampler(weighting: str, sampling: str, sde: SDE, t_eps: float) -> TimeSampler:
    """The sampler of one Table 6 column: ``sampling='uniform'`` (U[t_eps, 1]) or ``'is'`` (r_ll, r_un or r_re,
    matched to ``weighting``). Raises ``ValueError`` for a combination :mod:`lsgm.methods` calls undefined (r_un
    with an SDE other than the VPSDE)."""
    reason = undefined_reason(sde.type, weighting, sampling)
    if reason:
        raise ValueError(f"weighting '{weighting}' with sampling '{sampling}': {reason}; use sampling='uniform'")
    if sampling == "uniform":
        return UniformSampler(weighting, sde, t_eps)
    if sampling == "is":
        if weighting not in _IS_FOR_WEIGHTING:
            raise ValueError(f"unknown weighting {weighting!r}; use one of {WEIGHTINGS}")
        return _IS_FOR_WEIGHTING[weighting](weighting, sde, t_eps)
    raise ValueError(f"unknown t-sampling {sampling!r}; use one of {SAMPLINGS}")


def make_q_sampler(q_objective: str, p_sampler: TimeSampler) -> TimeSampler | None:
    """The encoder's own t-sampler for Table 6's last header row: ``'rew'`` reuses the p-samples (returns None),
    ``'ll_is'`` is r_ll(t), ``'ll_uniform'`` is U[t_eps, 1] with the likelihood weighting."""
    if q_objective == "rew":
        return None
    if q_objective == "ll_is":
        return make_time_sampler("ll", "is", p_sampler.sde, p_sampler.t_eps)
    if q_objective == "ll_uniform":
        return make_time_sampler("ll", "uniform", p_sampler.sde, p_sampler.t_eps)
    raise ValueError(f"unknown encoder objective {q_objective!r}; use one of {Q_OBJECTIVES}")

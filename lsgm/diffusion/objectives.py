"""Per-sample objective terms, each of shape [B] (summed over every latent/data dimension).

The NELBO of LSGM (paper eq. (6)) is  reconstruction + negative encoder entropy + cross entropy, where the
cross entropy CE(q(z_0|x) || p_theta(z_0)) is estimated with Theorem 1 by denoising score matching:

    CE = int_{t_eps}^1 w_ll(t)/2 E||eps - eps_theta(z_t, t)||^2 dt + C(z_0),
    C(z_0) = CE(q(z_1|z_0) || N(0, I)) + D/2 log(sigma^2(t_eps) / sigma^2(1)).

This is the cross entropy of q(z_{t_eps}) against the model's p(z_{t_eps}); as t_eps -> 0 it is
-E log p(z_0). The official code replaces CE(q(z_1|z_0) || N(0, I)) by the entropy D/2 log(2 pi e
sigma_1^2), i.e. its constant is D/2 log(2 pi e sigma^2(t_eps)); we keep the exact Gaussian term (it differs
by 1/2 m_1^2 ||z_0||^2 + O(D (1 - sigma_1^2)^2), tiny for the VPSDE) so the estimator is exact for any
z_0 -- this deviation is recorded in every run's metadata.

That cross entropy is of the noised latent z_{t_eps} = m z_0 + sigma eps, while the reconstruction and log q use
z_0. A NELBO with it is an upper bound on -log p(x) only with :func:`truncation_term`, -D log m(t_eps) (zero where
m(t_eps) = 1: the VESDE, or t_eps = 0); the evaluation's DSM prior term adds it (``lsgm.eval.nll``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from lsgm.diffusion.sde import SDE
from lsgm.diffusion.time_sampling import TimeSample, TimeSampler
from lsgm.gaussian import LOG_2PI
from lsgm.utils import sum_except_batch

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z_t [B, ...], t [B]) -> eps [B, ...]


@dataclass(frozen=True)
class NELBOTerms:
    """The NELBO of eq. (6), per sample [B], in nats: reconstruction + negative encoder entropy + cross entropy,
    the cross entropy split into the top latent's prior term and the lower scales' Normal term."""

    reconstruction: torch.Tensor  # -log p(x | z)
    neg_entropy: torch.Tensor  # log q(z_0 | x) + log q(z_lower | x)
    prior_cross_entropy: torch.Tensor  # -log p(z_0): the score prior's estimate, or the Normal prior's
    lower_cross_entropy: torch.Tensor  # -log N(z_lower; 0, I) (0 without lower scales)

    @property
    def cross_entropy(self) -> torch.Tensor:
        return self.prior_cross_entropy + self.lower_cross_entropy

    @property
    def kl(self) -> torch.Tensor:
        """neg_entropy + cross entropy: the KL term that ``kl_coeff`` anneals."""
        return self.neg_entropy + self.prior_cross_entropy + self.lower_cross_entropy

    @property
    def nelbo(self) -> torch.Tensor:
        return self.reconstruction + self.neg_entropy + self.prior_cross_entropy + self.lower_cross_entropy

    def objective(self, kl_coeff: float) -> torch.Tensor:
        """reconstruction + kl_coeff * KL (= the NELBO at kl_coeff = 1; the encoder's annealed objective)."""
        return self.reconstruction + kl_coeff * self.kl


def nelbo_terms(out: Any, prior_cross_entropy: torch.Tensor, dtype: torch.dtype | None = None) -> NELBOTerms:
    """The NELBO terms of one VAE pass ``out`` (:class:`lsgm.nets.nvae.VAEOutput`) with the prior's cross entropy
    of its top latent, ``prior_cross_entropy`` [B] (score prior, or :func:`normal_cross_entropy` for the VAE).
    ``dtype``: cast every term first (fp32 for training under autocast); ``None`` keeps them as they are."""

    def cast(v: torch.Tensor) -> torch.Tensor:
        return v if dtype is None else v.to(dtype)

    return NELBOTerms(reconstruction=cast(out.reconstruction),
                      neg_entropy=cast(out.log_q_z0) + cast(out.lower_log_q),
                      prior_cross_entropy=cast(prior_cross_entropy),
                      lower_cross_entropy=cast(out.lower_cross_entropy))


@dataclass(frozen=True)
class DiffusionTerms:
    """Terms from one denoising pass, per sample [B]."""

    l2: torch.Tensor  # ||eps - eps_theta(z_t, t)||^2
    cross_entropy: torch.Tensor  # Theorem 1 estimate with the likelihood weights (encoder objective (8))
    sgm_loss: torch.Tensor  # weight_p ||eps - eps_theta||^2 (score prior objective (9))


def cross_entropy_const(z0: torch.Tensor, sde: SDE, t_eps: float) -> torch.Tensor:
    """C(z_0) = CE(q(z_1|z_0) || N(0, P I)) + D/2 log(sigma^2(t_eps) / sigma^2(1)); [B, ...] -> [B].

    P is the SDE's prior variance (1 for VP-type SDEs). The second term is -D/2 int (g^2 / sigma_t^2 + 2 f) dt =
    -D/2 int d log sigma_t^2: it holds for every linear SDE (the VESDE included)."""
    dims = z0[0].numel()
    ends = torch.tensor([t_eps, 1.0], dtype=torch.float64)
    var_eps, var_1 = sde.var(ends).tolist()
    m1_sq = float(sde.mean_coeff(ends[1:]) ** 2)
    if sde.prior_var == 1.0:
        ce_terminal = 0.5 * dims * (LOG_2PI + var_1) + 0.5 * m1_sq * sum_except_batch(z0.pow(2))
    else:
        prior_var = sde.prior_var
        ce_terminal = (0.5 * dims * (LOG_2PI + math.log(prior_var) + var_1 / prior_var)
                       + 0.5 * m1_sq / prior_var * sum_except_batch(z0.pow(2)))
    return ce_terminal + 0.5 * dims * math.log(var_eps / var_1)


def truncation_term(sde: SDE, t_eps: float, dims: int) -> float:
    """-D log m(t_eps) (= D/2 int_0^{t_eps} beta(t) dt for the VPSDE), in nats: what turns Theorem 1's cross entropy
    of z_{t_eps} into a bound term for z_0.

    Why: take z_{t_eps} ~ q(z_{t_eps} | z_0) = N(m z_0, sigma^2 I) as one more latent variable, with the generative
    step z_0 | z_{t_eps} ~ N(z_{t_eps} / m, sigma^2 / m^2 I) after the score prior's z_{t_eps}. The ELBO of that
    model is  reconstruction + log q(z_0|x) + E[-log p(z_{t_eps})] + E[log q(z_{t_eps}|z_0) - log p(z_0|z_{t_eps})],
    and the last expectation is exactly -D log m (the two Gaussians differ only by the change of variables z_0 ->
    m z_0). ``tests/test_objectives.py`` checks the bound against the exact log-likelihood of a Gaussian model."""
    m = float(sde.mean_coeff(torch.tensor(float(t_eps), dtype=torch.float64)))
    return -dims * math.log(m)


def denoising_l2(z0: torch.Tensor, eps_fn: EpsFn, sde: SDE, t: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
    """||noise - eps_theta(z_t, t)||^2 per sample for z_t = m_t z0 + sigma_t noise; -> [B]."""
    z_t = sde.perturb(z0, t, noise)
    return sum_except_batch((noise.float() - eps_fn(z_t, t).float()).pow(2))  # fp32 even under autocast


def diffusion_terms(z0: torch.Tensor, eps_fn: EpsFn, sde: SDE, ts: TimeSample,
                    noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> DiffusionTerms:
    """Cross entropy (8) and score loss (9) from ONE denoising pass at the times ``ts`` (joint training)."""
    if noise is None:
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    l2 = denoising_l2(z0, eps_fn, sde, ts.t, noise)
    cross_entropy = ts.weight_q * l2 + cross_entropy_const(z0, sde, ts.t_eps)
    return DiffusionTerms(l2=l2, cross_entropy=cross_entropy, sgm_loss=ts.weight_p * l2)


def prior_cross_entropy(z0: torch.Tensor, eps_fn: EpsFn, sde: SDE, sampler: TimeSampler,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Theorem 1 estimate of -log p(z_0) (the cross entropy against the score prior), one t per sample; -> [B]."""
    ts = sampler.sample(z0.shape[0], generator=generator, device=z0.device, dtype=z0.dtype)
    return diffusion_terms(z0, eps_fn, sde, ts, generator=generator).cross_entropy


# The evaluation's DSM prior term with a control variate (lsgm.eval.nll). Write the mixed score as
# eps_theta = c(t) z_t + n(z_t, t) with the Normal part c(t) z_t = (1 - alpha) mixing_component(z_t, t) (linear in z_t,
# per channel) and the neural part n = alpha eps'. For z_t = m z_0 + sigma eps,
#     ||eps - eps_theta||^2 = ||eps - c z_t||^2 + (||n||^2 - 2 <eps - c z_t, n>),
# and the first term's expectation over eps is exact:  E||eps - c z_t||^2 = sum_d (1 - c_d sigma)^2 + c_d^2 m^2 z0_d^2.
# So  int w_ll/2 E||eps - eps_theta||^2 dt = int w_ll/2 E||eps - c z_t||^2 dt  [a 1-D integral per channel, done by
# quadrature]  +  E_{t ~ r, eps}[weight_q (||n||^2 - 2 <eps - c z_t, n>)]  [Monte Carlo, the same draws as before].
# Unbiased for any c; with c the score's own Normal part the Monte Carlo term is zero at alpha = 0 and small while eps'
# is small, so its variance is far below the plain estimator's, whose noise is mostly the Normal part's chi-square
# (measured on the quick balanced LSGM: ~430x smaller on the same draws, benchmarks/dsm_estimator.py).
QUADRATURE_PANELS, QUADRATURE_NODES = 96, 24  # Gauss-Legendre panels, refined toward both ends; checked at twice


def _normal_part_integrals(weight: torch.Tensor, sde: SDE, t_eps: float, panels: int,
                           nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) per channel, float64 [C]: int_{t_eps}^1 w_ll/2 (1 - c sigma)^2 dt and int_{t_eps}^1 w_ll/2 c^2 m^2 dt
    with c(t) = weight * mixing_component(1, t), by composite Gauss-Legendre on panels log-spaced in t from t_eps (or
    1e-9 with a first panel [0, 1e-9] where t_eps = 0) to the middle, and in 1 - t from there to 1 - 1e-9 (a last
    panel to 1): the integrands are sharp at both ends (the geometric VPSDE's w_ll rises ~1000-fold within 1e-4 of
    t = 1)."""
    import numpy as np

    from lsgm.diffusion.time_sampling import weighting_fn

    lo = max(t_eps, 1e-9)
    mid = (lo + 1.0) / 2
    half = panels // 2
    low = np.geomspace(lo, mid, half + 1)  # fine toward t_eps (w_ll ~ 1 / t where sigma(0) = 0)
    high = 1.0 - np.geomspace(1.0 - mid, 1e-9, half + 1)  # and toward 1 (w_ll ~ 1 / (1 - sigma_t^2) for VP types)
    edges = np.concatenate([low, high[1:], [1.0]])
    if t_eps < lo:
        edges = np.concatenate([[t_eps], edges])
    x, w = np.polynomial.legendre.leggauss(nodes)
    a, b = edges[:-1, None], edges[1:, None]
    t = torch.from_numpy(((b - a) / 2 * x + (a + b) / 2).ravel())
    dt = torch.from_numpy(((b - a) / 2 * w).ravel())
    half_wll = 0.5 * weighting_fn("ll", sde, t) * dt  # [N]
    sigma, m = sde.var(t).sqrt(), sde.mean_coeff(t)
    k = sde.mixing_component(torch.ones(len(t), 1, dtype=torch.float64), t)[:, 0]  # [N]
    c = weight.double().reshape(1, -1) * k[:, None]  # [N, C]
    return ((half_wll[:, None] * (1 - c * sigma[:, None]) ** 2).sum(0),
            (half_wll[:, None] * (c * m[:, None]) ** 2).sum(0))


def normal_part_expectation(z0: torch.Tensor, weight: torch.Tensor, sde: SDE, t_eps: float) -> torch.Tensor:
    """int_{t_eps}^1 w_ll(t)/2 E_eps||eps - c(t) z_t||^2 dt per sample, float64 [B] (nats), for the Normal part
    c(t) z_t = weight * mixing_component(z_t, t) of a mixed score; ``weight``: (1 - alpha), broadcastable to
    [1, C, 1, ...]. Raises ValueError if the quadrature has not converged (twice the panels differ by > 1e-9)."""
    weight = weight.detach()
    A, B = _normal_part_integrals(weight, sde, t_eps, QUADRATURE_PANELS, QUADRATURE_NODES)
    A2, B2 = _normal_part_integrals(weight, sde, t_eps, 2 * QUADRATURE_PANELS, QUADRATURE_NODES)
    scale = float(A2.abs().max() + B2.abs().max())
    if float((A - A2).abs().max() + (B - B2).abs().max()) > 1e-9 * scale:
        raise ValueError(f"the Normal part's integral did not converge on [{t_eps:g}, 1] for {sde.type}")
    channels = z0.shape[1]
    positions = z0[0, 0].numel()
    sq = z0.detach().double().pow(2).reshape(z0.shape[0], channels, -1).sum(2)  # [B, C]
    return positions * A2.sum() + (sq * B2).sum(1)


def prior_cross_entropy_cv(z0: torch.Tensor, score, sde: SDE, sampler: TimeSampler, expectation: torch.Tensor,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Theorem 1 estimate of -log p(z_0) with the Normal part as a control variate (see the comment above), one t per
    sample; float64 [B]. ``score``: a :class:`lsgm.score.MixedScore` (``parts``); ``expectation``:
    :func:`normal_part_expectation` of z0 with ``score.normal_weight()`` at ``sampler.t_eps``. Draws t, then eps,
    from ``generator`` exactly as :func:`prior_cross_entropy`, so both estimators see the same (t, eps)."""
    ts = sampler.sample(z0.shape[0], generator=generator, device=z0.device, dtype=z0.dtype)
    noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    normal, neural = score.parts(sde.perturb(z0, ts.t, noise), ts.t)
    resid = noise.double() - normal.double()  # eps - c z_t
    neural = neural.double()
    mc = ts.weight_q.double() * sum_except_batch(neural * (neural - 2.0 * resid))
    return mc + expectation + cross_entropy_const(z0, sde, ts.t_eps).double()


def sgm_loss(z0: torch.Tensor, eps_fn: EpsFn, sde: SDE, sampler: TimeSampler,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Score prior objective (9): weight_p(t) ||eps - eps_theta(z_t, t)||^2 with t ~ r(t); -> [B]."""
    ts = sampler.sample(z0.shape[0], generator=generator, device=z0.device, dtype=z0.dtype)
    return diffusion_terms(z0, eps_fn, sde, ts, generator=generator).sgm_loss


# KL balancing of the stage-1 NVAE (reference 4.1)
def kl_balance_alphas(num_scales: int, groups_per_scale: int) -> torch.Tensor:
    """NVAE's "square" scheme: group g of scale s (s = 0 the top) gets 4^s / groups_per_scale, min-normalised.
    Ordered like ``VAEOutput.kl_groups`` (top first); shape [G]."""
    alpha = torch.tensor([4.0**s / groups_per_scale for s in range(num_scales) for _ in range(groups_per_scale)])
    return alpha / alpha.min()


def balanced_kl(kl_groups: list[torch.Tensor], kl_coeff: float, alphas: torch.Tensor, balance: bool) -> torch.Tensor:
    """kl_coeff * sum_g c_g KL_g per sample [B]. With ``balance`` and kl_coeff < 1: c_g proportional to
    (mean_B |KL_g| + 0.01) / alpha_g, normalised to mean 1 and detached (reference 4.1); else c_g = 1."""
    kl = torch.stack(kl_groups, dim=1)  # (B, G)
    if balance and kl_coeff < 1.0:
        coeff = kl.abs().mean(dim=0) + 0.01  # (G,)
        coeff = coeff / alphas.to(kl) * coeff.sum()
        coeff = (coeff / coeff.mean()).detach()
        return kl_coeff * (kl * coeff).sum(dim=1)
    return kl_coeff * kl.sum(dim=1)

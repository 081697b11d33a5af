"""Theorem 1 against closed forms: with q(z_0) = N(mu, s^2 I) and the exact Normal score (alpha = 0, so
p(z_t) = N(0, I) at every t), the cross-entropy estimator equals the analytic CE of q(z_{t_eps}) vs N(0, I)."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lsgm.diffusion.objectives import (
    NELBOTerms,
    cross_entropy_const,
    diffusion_terms,
    nelbo_terms,
    prior_cross_entropy,
    sgm_loss,
)
from lsgm.gaussian import gaussian_log_prob, normal_cross_entropy
from lsgm.score import MixedScore
from lsgm.diffusion.sde import VESDE, VPSDE, GeometricVPSDE
from lsgm.diffusion.time_sampling import make_time_sampler

VP = VPSDE(0.1, 20.0, 0.0)
GEO = GeometricVPSDE(3e-5, 0.999, 3e-5)
MU, S, D = 0.7, 0.5, 6  # q(z_0) = N(MU, S^2 I) in D dims, latents shaped [B, 2, 3]
CASES = [
    (name, sde, t_eps, w, s)
    for name, sde, t_eps in [("vp", VP, 1e-2), ("geo", GEO, 0.0), ("geo_eps", GEO, 1e-2)]
    for w in ("ll", "un", "re")
    for s in ("uniform", "is")
    if not (name.startswith("geo") and w == "un" and s == "is")
]


def analytic_ce(sde, t_eps):
    """CE(N(m mu, m^2 s^2 + sigma^2) || N(0, I)) in D dims at t = t_eps."""
    t = torch.tensor(t_eps, dtype=torch.float64)
    m2, var = float(sde.mean_coeff(t) ** 2), float(sde.var(t))
    return 0.5 * D * (math.log(2 * math.pi) + m2 * S**2 + var + m2 * MU**2)


def sample_q(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return MU + S * torch.randn(n, 2, 3, generator=gen, dtype=torch.float64), gen


class Garbage(nn.Module):
    """A backbone whose output must not matter when alpha = 0."""

    def forward(self, z, t):
        return 100.0 + z * 3.0 + t[:, None, None]


def normal_score(sde):
    model = MixedScore(Garbage(), sde, (2, 3)).double()
    model.set_active(torch.zeros(2, dtype=torch.bool))  # alpha = 0 exactly: p(z_t) = N(0, I)
    return model


@pytest.mark.parametrize("name,sde,t_eps,w,s", CASES, ids=[f"{c[0]}-{c[3]}-{c[4]}" for c in CASES])
def test_theorem1_cross_entropy_matches_analytic(name, sde, t_eps, w, s):
    sampler = make_time_sampler(w, s, sde, t_eps)
    z0, gen = sample_q(100000, seed=3)
    ce = prior_cross_entropy(z0, normal_score(sde), sde, sampler, generator=gen)  # uses weight_q
    stderr = ce.std().item() / math.sqrt(len(ce))
    assert abs(ce.mean().item() - analytic_ce(sde, t_eps)) < 5 * stderr, (ce.mean().item(), analytic_ce(sde, t_eps), stderr)


def test_cross_entropy_tends_to_negative_log_normal_as_t_eps_to_zero():
    sde = GEO  # sigma^2(0) = 3e-5: the t_eps = 0 estimate is -E log N(z_0; 0, I) up to O(3e-5 D)
    z0, gen = sample_q(100000, seed=4)
    ce = prior_cross_entropy(z0, normal_score(sde), sde, make_time_sampler("ll", "uniform", sde, 0.0), generator=gen)
    exact = normal_cross_entropy(z0).mean().item()
    assert abs(ce.mean().item() - exact) < 5 * ce.std().item() / math.sqrt(len(ce)) + 1e-3


def test_constant_equals_full_cross_entropy_for_exact_normal_score_at_t_eps():
    """At t = t_eps with the normal score the residual integral is a known number: check the constant's pieces."""
    z0 = torch.randn(5, 2, 3, dtype=torch.float64)
    const = cross_entropy_const(z0, VP, 1e-2)
    t = torch.tensor([1e-2, 1.0], dtype=torch.float64)
    var_eps, var_1 = VP.var(t).tolist()
    m1 = float(VP.mean_coeff(t[1:]))
    expected = 0.5 * D * math.log(2 * math.pi) + 0.5 * (m1**2 * z0.pow(2).sum((1, 2)) + D * var_1) + 0.5 * D * math.log(var_eps / var_1)
    torch.testing.assert_close(const, expected)


@pytest.mark.parametrize("w", ["ll", "un", "re"])
def test_sgm_loss_is_unbiased_for_its_weighting(w):
    """With the Normal score on q = N(mu, s^2), E||eps - sigma z_t||^2 = D[(1 - sigma^2)^2 + sigma^2 m^2 (mu^2 + s^2)];
    uniform and importance-sampled losses estimate the same int c_w w h dt (c_w the official prefactor)."""
    from scipy import integrate

    from lsgm.diffusion.time_sampling import P_OBJECTIVE_SCALE, weighting_fn

    def h(t):
        t = torch.tensor(t, dtype=torch.float64)
        var, m2 = VP.var(t), VP.mean_coeff(t) ** 2
        return float(D * ((1 - var) ** 2 + var * m2 * (MU**2 + S**2)))

    scale = P_OBJECTIVE_SCALE[w]
    exact = integrate.quad(lambda t: scale * float(weighting_fn(w, VP, torch.tensor(t, dtype=torch.float64))) * h(t),
                           1e-2, 1, limit=200)[0]
    for sampling in ("uniform", "is"):
        z0, gen = sample_q(100000, seed=5)
        loss = sgm_loss(z0, normal_score(VP), VP, make_time_sampler(w, sampling, VP, 1e-2), generator=gen)
        assert abs(loss.mean().item() - exact) < 5 * loss.std().item() / math.sqrt(len(loss)), (sampling, loss.mean().item(), exact)


def test_diffusion_terms_shares_one_pass_and_shapes():
    sampler = make_time_sampler("un", "is", VP, 1e-2)
    z0 = torch.randn(7, 2, 3, dtype=torch.float64)
    ts = sampler.sample(7, dtype=torch.float64)
    noise = torch.randn_like(z0)
    terms = diffusion_terms(z0, normal_score(VP), VP, ts, noise=noise)
    assert terms.l2.shape == terms.cross_entropy.shape == terms.sgm_loss.shape == (7,)
    torch.testing.assert_close(terms.sgm_loss, ts.weight_p * terms.l2)
    torch.testing.assert_close(terms.cross_entropy, ts.weight_q * terms.l2 + cross_entropy_const(z0, VP, 1e-2))


def test_gaussian_terms_and_nelbo():
    z = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    mu, log_sigma = torch.randn_like(z), 0.3 * torch.randn_like(z)
    ref = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z).sum((1, 2, 3))
    torch.testing.assert_close(gaussian_log_prob(z, mu, log_sigma), ref)
    torch.testing.assert_close(normal_cross_entropy(z), -torch.distributions.Normal(0.0, 1.0).log_prob(z).sum((1, 2, 3)))
    terms = NELBOTerms(torch.ones(4), torch.full((4,), -2.0), torch.full((4,), 5.0), torch.full((4,), 0.5))
    torch.testing.assert_close(terms.nelbo, torch.full((4,), 4.5))
    torch.testing.assert_close(terms.cross_entropy, torch.full((4,), 5.5))
    torch.testing.assert_close(terms.kl, torch.full((4,), 3.5))
    torch.testing.assert_close(terms.objective(0.5), torch.full((4,), 2.75))
    torch.testing.assert_close(terms.objective(1.0), terms.nelbo)


def test_nelbo_terms_of_a_vae_pass_sum_in_one_fixed_order():
    """Training, validation and evaluation share these sums, so their float32 rounding is the same everywhere:
    NELBO = ((recon + (log q(z0) + log q(z_lower))) + CE(z0)) + CE_lower; KL = (neg entropy + CE(z0)) + CE_lower."""
    g = torch.Generator().manual_seed(0)
    out = SimpleNamespace(**{k: 100 * torch.randn(64, generator=g) for k in
                             ("reconstruction", "log_q_z0", "lower_log_q", "lower_cross_entropy")})
    ce = 100 * torch.randn(64, generator=g)
    terms = nelbo_terms(out, ce)
    neg_entropy = out.log_q_z0 + out.lower_log_q
    assert torch.equal(terms.nelbo, out.reconstruction + neg_entropy + ce + out.lower_cross_entropy)
    assert torch.equal(terms.kl, neg_entropy + ce + out.lower_cross_entropy)
    assert torch.equal(terms.objective(0.7), out.reconstruction + 0.7 * terms.kl)
    half = nelbo_terms(SimpleNamespace(**{k: v.half() for k, v in vars(out).items()}), ce.half(), dtype=torch.float32)
    assert half.nelbo.dtype == torch.float32


def gaussian_ce(mean: float, var: float, prior_var: float) -> float:
    """CE(N(mean, var) || N(0, prior_var)) per dimension, times D."""
    return 0.5 * D * (math.log(2 * math.pi * prior_var) + (var + mean**2) / prior_var)


VE = VESDE(0.01, 50.0)


@pytest.mark.parametrize("w,s", [("ll", "uniform"), ("un", "uniform"), ("re", "uniform"), ("re", "is")])
def test_theorem1_cross_entropy_matches_analytic_for_the_vesde(w, s):
    """VESDE (m = 1, prior N(0, sigma_max^2 I)): with the exact score of p_t = N(0, (1 + sigma_t^2) I) (the mixed score
    at alpha = 0), the estimator is CE(q_{t_eps} || p_{t_eps}) plus the known mismatch of p_1 = N(0, 1 + sigma_max^2)
    and the prior: CE(q_1 || N(0, P)) - CE(q_1 || p_1)."""
    t_eps = 1e-5
    sampler = make_time_sampler(w, s, VE, t_eps)
    z0, gen = sample_q(100000, seed=7)
    ce = prior_cross_entropy(z0, normal_score(VE), VE, sampler, generator=gen)
    var_eps, var_1 = (float(VE.var(torch.tensor(t, dtype=torch.float64))) for t in (t_eps, 1.0))
    expected = (gaussian_ce(MU, S**2 + var_eps, 1 + var_eps)
                + gaussian_ce(MU, S**2 + var_1, VE.prior_var) - gaussian_ce(MU, S**2 + var_1, 1 + var_1))
    stderr = ce.std().item() / math.sqrt(len(ce))
    assert abs(ce.mean().item() - expected) < 5 * stderr + 1e-6 * abs(expected), (ce.mean().item(), expected, stderr)

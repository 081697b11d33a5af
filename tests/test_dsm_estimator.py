"""The evaluation's DSM prior term with the mixed score's Normal part as a control variate
(``lsgm.diffusion.objectives.prior_cross_entropy_cv``) against closed forms and against the plain estimator.

At alpha = 0 the score is exactly its Normal part, so the estimator has no Monte Carlo term left: it must equal the
closed-form cross entropy of q(z_{t_eps} | z_0) against p_{t_eps} for EVERY example, to rounding. With a network in
the mixture it must estimate what the plain estimator estimates (same draws, zero-mean difference) with less noise."""

import math

import pytest
import torch
from scipy import integrate
from torch import nn

from lsgm.diffusion.objectives import (
    QUADRATURE_NODES, QUADRATURE_PANELS, _normal_part_integrals, cross_entropy_const, normal_part_expectation,
    prior_cross_entropy, prior_cross_entropy_cv,
)
from lsgm.diffusion.sde import VESDE, VPSDE, GeometricVPSDE
from lsgm.diffusion.time_sampling import make_time_sampler, weighting_fn
from lsgm.score import MixedScore

VP = VPSDE(0.1, 20.0, 0.0)
GEO = GeometricVPSDE(3e-5, 0.999, 3e-5)
VE = VESDE(0.01, 50.0)
SHAPE = (2, 3, 2)  # latents [B, 2 channels, 3, 2]
D = math.prod(SHAPE)


class Net(nn.Module):
    """A small fixed network for eps' (its output is O(1) and depends on z_t and t)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(2, 2, 3, padding=1).double()
        with torch.no_grad():
            self.conv.weight.copy_(0.5 * torch.randn(self.conv.weight.shape, generator=g, dtype=torch.float64))

    def forward(self, z, t):
        return torch.tanh(self.conv(z)) + t[:, None, None, None]


class LinearNet(nn.Module):
    """eps'(z_t, t) = lam * mixing_component(z_t, t): the mixed score stays linear in z_t, so its cross entropy is known
    exactly (the Normal part's integral with the weight (1 - alpha) + alpha lam) while the Monte Carlo term is not 0."""

    def __init__(self, sde, lam):
        super().__init__()
        self.sde, self.lam = sde, lam

    def forward(self, z, t):
        return self.lam * self.sde.mixing_component(z, t)


def mixed(sde, logit, active=(True, True), mixing=True, net=None):
    score = MixedScore(net or Net(), sde, SHAPE, mixing_logit_init=logit, mixed=mixing).double()
    score.set_active(torch.tensor(active))
    return score


def latents(n, seed):
    g = torch.Generator().manual_seed(seed)
    return 0.7 + 0.5 * torch.randn(n, *SHAPE, generator=g, dtype=torch.float64), g


def closed_form(z0, sde, t_eps):
    """Per example: CE(q(z_{t_eps} | z_0) || p_{t_eps}) for the exact Normal score, plus (VESDE) the known mismatch of
    p_1 = N(0, 1 + sigma_max^2) and the prior N(0, P) at t = 1 that Theorem 1's constant carries."""
    def ce(mean_sq, var, prior_var):  # CE(N(mean, var I) || N(0, prior_var I)), mean_sq = ||mean||^2
        return 0.5 * D * math.log(2 * math.pi * prior_var) + 0.5 * (D * var + mean_sq) / prior_var

    sq = z0.pow(2).flatten(1).sum(1)
    at = lambda t: (float(sde.mean_coeff(torch.tensor(t, dtype=torch.float64))) ** 2,
                    float(sde.var(torch.tensor(t, dtype=torch.float64))))
    m2, var = at(t_eps)
    if sde.prior_var == 1.0:  # VP-type: p_t = N(0, I) at every t
        return ce(m2 * sq, var, 1.0)
    _, var_1 = at(1.0)
    return ce(sq, var, 1.0 + var) + ce(sq, var_1, sde.prior_var) - ce(sq, var_1, 1.0 + var_1)


CASES = [("vp", VP, 1e-2, "is"), ("vp_1e-5", VP, 1e-5, "is"), ("geo", GEO, 0.0, "uniform"),
         ("geo_eps", GEO, 1e-2, "uniform"), ("ve", VE, 1e-5, "uniform")]


@pytest.mark.parametrize("name,sde,t_eps,sampling", CASES, ids=[c[0] for c in CASES])
def test_exact_per_example_at_alpha_zero(name, sde, t_eps, sampling):
    score = mixed(sde, -3.0, active=(False, False))  # alpha = 0 exactly: eps_theta is its Normal part
    z0, gen = latents(200, seed=1)
    sampler = make_time_sampler("ll", sampling, sde, t_eps)
    expectation = normal_part_expectation(z0, score.normal_weight(), sde, t_eps)
    draws = torch.stack([prior_cross_entropy_cv(z0, score, sde, sampler, expectation, generator=gen) for _ in range(3)])
    exact = closed_form(z0, sde, t_eps)
    torch.testing.assert_close(draws, exact.expand_as(draws), rtol=1e-10, atol=0.0)  # no Monte Carlo error left


QUADRATURE_CASES = [("vp", VP, 1e-5), ("geo", GEO, 0.0), ("geo_eps", GEO, 1e-2), ("ve", VE, 1e-5)]


@pytest.mark.parametrize("name,sde,t_eps", QUADRATURE_CASES, ids=[c[0] for c in QUADRATURE_CASES])
def test_the_quadrature_matches_scipy(name, sde, t_eps):
    """The Normal part's integrals per channel (alpha = 0.3 and 0.05) against adaptive quadrature, to 1e-9. At
    alpha > 0 the geometric VPSDE's integrand rises ~1000-fold within 1e-4 of t = 1 (w_ll ~ 1 / (1 - sigma_t^2)):
    panels log-spaced in t alone missed it by 1e-4 relative."""
    weight = torch.tensor([0.7, 0.95], dtype=torch.float64)
    A, B = _normal_part_integrals(weight, sde, t_eps, QUADRATURE_PANELS, QUADRATURE_NODES)
    for ch, w in enumerate(weight.tolist()):
        def f(t, which):
            t = torch.tensor([t], dtype=torch.float64)
            sigma, m = float(sde.var(t).sqrt()), float(sde.mean_coeff(t))
            c = w * float(sde.mixing_component(torch.ones(1, 1, dtype=torch.float64), t))
            half_w = 0.5 * float(weighting_fn("ll", sde, t))
            return half_w * ((1 - c * sigma) ** 2 if which == "A" else (c * m) ** 2)
        points = [p for p in (1e-4, 1e-3, 1e-2, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999) if p > t_eps]
        for which, value in (("A", A[ch]), ("B", B[ch])):
            ref = integrate.quad(f, t_eps, 1.0, args=(which,), points=points, limit=1000, epsabs=0, epsrel=1e-12)[0]
            assert abs(float(value) - ref) <= 1e-9 * abs(ref), (which, ch, float(value), ref)


@pytest.mark.parametrize("logit", [-3.0, 0.0, 2.0])
def test_unbiased_where_the_answer_is_known(logit):
    """A score linear in z_t with a network share: eps' = 2 sigma_t z_t, so eps_theta = (1 + alpha) sigma_t z_t and
    the exact cross entropy per example is the Normal-part integral at the weight 1 + alpha (plus the constant). The
    estimator's mean over 2,000 examples x 16 draws is within 4 standard errors of it (the plain estimator's too)."""
    score = mixed(VP, logit, net=LinearNet(VP, 2.0))
    z0, gen = latents(2000, seed=3)
    sampler = make_time_sampler("ll", "is", VP, 1e-2)
    alpha = score.alpha.detach()
    exact = (normal_part_expectation(z0, 1.0 - alpha + 2.0 * alpha, VP, 1e-2)
             + cross_entropy_const(z0, VP, 1e-2)).mean()
    expectation = normal_part_expectation(z0, score.normal_weight(), VP, 1e-2)
    with torch.no_grad():
        cv = torch.stack([prior_cross_entropy_cv(z0, score, VP, sampler, expectation, generator=gen)
                          for _ in range(16)])
        plain = torch.stack([prior_cross_entropy(z0, score, VP, sampler, generator=gen) for _ in range(16)]).double()
    for name, est in (("cv", cv), ("plain", plain)):
        se = float(est.mean(0).std() / math.sqrt(z0.shape[0]))
        assert abs(float(est.mean() - exact)) < 4 * se, (name, float(est.mean()), float(exact), se)


@pytest.mark.parametrize("logit,active,mixing", [(-3.0, (True, True), True), (0.0, (True, False), True),
                                                 (-3.0, (True, True), False)],
                         ids=["logit-3", "logit0-one-inactive", "no-mixing"])
def test_unbiased_and_less_noisy_than_the_plain_estimator(logit, active, mixing):
    """Same (t, eps) draws: plain - cv has mean zero (within 5 standard errors over 4,000 examples x 8 draws), and
    the control variate's variance is lower; far lower where the network's share alpha is small."""
    score = mixed(VP, logit, active, mixing)
    z0, _ = latents(4000, seed=2)
    sampler = make_time_sampler("ll", "is", VP, 1e-2)
    expectation = normal_part_expectation(z0, score.normal_weight(), VP, 1e-2)
    plain, cv = [], []
    with torch.no_grad():
        for k in range(8):
            plain.append(prior_cross_entropy(z0, score, VP, sampler, generator=torch.Generator().manual_seed(k)))
            cv.append(prior_cross_entropy_cv(z0, score, VP, sampler, expectation,
                                             generator=torch.Generator().manual_seed(k)))
    plain, cv = torch.stack(plain).double(), torch.stack(cv)
    diff = (plain - cv).flatten()
    assert abs(float(diff.mean())) < 5 * float(diff.std()) / math.sqrt(diff.numel()), float(diff.mean())
    ratio = float(plain.var(0).mean() / cv.var(0).mean())
    assert ratio > (5.0 if logit < 0 and mixing else 1.0), ratio  # measured: 10.8 at logit -3 (eps' = O(1))


def test_parts_sum_to_the_score():
    z = torch.randn(5, *SHAPE, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64)
    for score in (mixed(VP, -3.0), mixed(VP, -3.0, active=(False, True)), mixed(VP, -3.0, mixing=False)):
        normal, neural = score.parts(z, t)
        assert torch.equal(normal + neural, score(z, t))

"""Exact-score ODE sampling and likelihood on Gaussian data N(0, s^2 I), whose eps-prediction is
eps*(z_t, t) = sigma_t z_t / (m_t^2 s^2 + sigma_t^2): the flow is linear, so samples and log-densities
are known in closed form."""

import math

import pytest
import torch

from lsgm.diffusion.likelihood import bpd_to_nats, nats_to_bpd, ode_log_likelihood
from lsgm.diffusion.sampling import ode_sample, pc_sample
from lsgm.diffusion.sde import VESDE, VPSDE, GeometricVPSDE

S2 = 0.25
SDES = {"vp": (VPSDE(0.1, 20.0, 0.0), 1e-3), "geo": (GeometricVPSDE(3e-5, 0.999, 3e-5), 1e-5),
        "ve": (VESDE(0.01, 50.0), 1e-5)}


def marginal_var(sde, t):
    return sde.mean_coeff(t) ** 2 * S2 + sde.var(t)


def exact_eps(sde):
    def eps_fn(z, t):
        scale = sde.var(t).sqrt() / marginal_var(sde, t)
        return scale.reshape(-1, *([1] * (z.ndim - 1))) * z
    return eps_fn


def scalar(x):
    return torch.tensor(float(x), dtype=torch.float64)


@pytest.mark.parametrize("name", SDES)
def test_ode_samples_follow_the_linear_map_and_variance(name):
    sde, t_eps = SDES[name]
    v1, v_eps = float(marginal_var(sde, scalar(1.0))), float(marginal_var(sde, scalar(t_eps)))
    gen = torch.Generator().manual_seed(0)
    z1 = math.sqrt(v1) * torch.randn(2000, 2, 2, 2, generator=gen, dtype=torch.float64)
    res = ode_sample(exact_eps(sde), sde, z1.shape, t_eps, rtol=1e-6, atol=1e-6, z1=z1)
    # the exact flow is z_{t_eps} = sqrt(v_eps / v_1) z_1 for every sample
    torch.testing.assert_close(res.z0, z1 * math.sqrt(v_eps / v1), rtol=1e-4, atol=1e-6)
    n = res.z0.numel()
    assert abs(res.z0.var().item() / v_eps - 1) < 5 * math.sqrt(2 / n)
    assert res.nfe > 0 and res.seconds > 0


def test_nfe_grows_as_tolerance_tightens():
    sde, t_eps = SDES["vp"]
    z1 = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    nfe = [ode_sample(exact_eps(sde), sde, z1.shape, t_eps, rtol=tol, atol=tol, z1=z1).nfe for tol in (1e-2, 1e-4, 1e-6)]
    assert nfe[0] < nfe[1] < nfe[2], nfe


def test_ode_sample_draws_prior_noise_with_temperature():
    sde, t_eps = SDES["vp"]
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = ode_sample(exact_eps(sde), sde, (8, 3), t_eps, 1e-6, 1e-6, generator=gen())
    b = ode_sample(exact_eps(sde), sde, (8, 3), t_eps, 1e-6, 1e-6, generator=gen(), temperature=0.5)
    torch.testing.assert_close(b.z0, 0.5 * a.z0, rtol=1e-3, atol=1e-5)  # the exact flow is linear


@pytest.mark.parametrize("name", SDES)
def test_ode_log_likelihood_is_exact_with_rademacher_probe(name):
    """Rademacher: v^T (c I) v = c D exactly, so only solver error and the N(0, I) vs N(0, v_1) prior remain."""
    sde, t_eps = SDES[name]
    v_eps = float(marginal_var(sde, scalar(t_eps)))
    v1 = float(marginal_var(sde, scalar(1.0)))
    z0 = math.sqrt(v_eps) * torch.randn(32, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    res = ode_log_likelihood(z0, exact_eps(sde), sde, t_eps, rtol=1e-6, atol=1e-6, probe="rademacher")
    exact = torch.distributions.Normal(0.0, math.sqrt(v_eps)).log_prob(z0).sum((1, 2, 3))
    z1_sq = z0.pow(2).sum((1, 2, 3)) * v1 / v_eps
    p = sde.prior_var  # log N(z1; 0, P I) - log N(z1; 0, v1 I)
    prior_gap = -0.5 * z1_sq * (1 / p - 1 / v1) + 0.5 * 12 * math.log(v1 / p)
    torch.testing.assert_close(res.logp, exact + prior_gap, rtol=0, atol=2e-4)
    assert res.nfe > 0


def test_ode_log_likelihood_gaussian_probe_is_unbiased():
    sde, t_eps = SDES["vp"]
    v_eps = float(marginal_var(sde, scalar(t_eps)))
    z0 = math.sqrt(v_eps) * torch.randn(400, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    res = ode_log_likelihood(z0, exact_eps(sde), sde, t_eps, rtol=1e-5, atol=1e-5, probe="gaussian",
                             generator=torch.Generator().manual_seed(5))
    exact = torch.distributions.Normal(0.0, math.sqrt(v_eps)).log_prob(z0).sum(1)
    err = res.logp - exact
    assert abs(err.mean().item()) < 5 * err.std().item() / math.sqrt(len(err)) + 1e-3
    assert err.std().item() > 1e-3  # the Gaussian probe does add noise (a fixed probe per solve, not zero)


@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("n_corrector,tol", [(0, 0.03), (1, 0.05)])
def test_pc_sampler_reaches_the_data_variance(name, n_corrector, tol):
    """Reverse-diffusion predictor (+ Langevin corrector) from the prior to the data N(0, S2 I), noise removed."""
    sde, t_eps = SDES[name]
    res = pc_sample(exact_eps(sde), sde, (20000, 4), n_steps=500, t_eps=t_eps, n_corrector=n_corrector,
                    generator=torch.Generator().manual_seed(6))
    assert abs(res.z0.var().item() / S2 - 1) < tol, res.z0.var().item()
    assert abs(res.z0.mean().item()) < 5 * math.sqrt(S2 / res.z0.numel())
    assert res.nfe == 500 * (1 + n_corrector)


@pytest.mark.parametrize("name", SDES)
def test_reverse_diffusion_coefficients_are_the_forward_transitions(name):
    """a_i, b_i^2 reproduce the marginals: sigma_i^2 = a_i^2 sigma_{i+1}^2 + b_i^2 and m_i = a_i m_{i+1}; VESDE:
    a = 1 and b_i^2 = sigma_i^2 - sigma_{i+1}^2 (score_sde's discretize), then sigma^2(t_eps) at the last step."""
    from lsgm.diffusion.sampling import reverse_diffusion_coefficients

    sde, t_eps = SDES[name]
    times = torch.linspace(1.0, t_eps, 50, dtype=torch.float64)
    a, b2 = reverse_diffusion_coefficients(sde, times)
    var, mean = sde.var(times), sde.mean_coeff(times)
    torch.testing.assert_close(var[:-1], a[:-1] ** 2 * var[1:] + b2[:-1])
    torch.testing.assert_close(mean[:-1], a[:-1] * mean[1:])
    torch.testing.assert_close(b2[-1], var[-1])
    assert (b2 > 0).all()
    if name == "ve":
        torch.testing.assert_close(a, torch.ones_like(a))
        torch.testing.assert_close(b2[:-1], var[:-1] - var[1:])


def test_unit_conversions():
    assert nats_to_bpd(784 * math.log(2), 784) == pytest.approx(1.0)
    assert bpd_to_nats(nats_to_bpd(123.4, 3072), 3072) == pytest.approx(123.4)
    t = torch.tensor([3072 * math.log(2) * 3.0])
    torch.testing.assert_close(nats_to_bpd(t, 3072), torch.tensor([3.0]))

"""SDE closed forms: derivatives, mean/variance relations, inverses, and Monte-Carlo marginals."""

import math

import pytest
import torch

from lsgm.config import SDEConfig
from lsgm.diffusion.sde import VESDE, VPSDE, GeometricVPSDE, make_sde, max_pairwise_distance

VP_TYPE = {
    "vp": VPSDE(0.1, 20.0, 0.0),
    "vp_sigma0": VPSDE(0.1, 20.0, 1e-3),
    "geometric": GeometricVPSDE(3e-5, 0.999, 3e-5),
    "geometric_code_default": GeometricVPSDE(1e-4, 0.99, 0.0),
}
SDES = {**VP_TYPE, "ve": VESDE(0.01, 50.0), "ve_celebahq": VESDE(0.01, 348.0)}
T = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)


def _fd(fn, t, h=1e-6):
    return (fn(t + h) - fn(t - h)) / (2 * h)


@pytest.mark.parametrize("name", SDES)
def test_variance_derivative_is_2f_var_plus_g2(name):
    sde = SDES[name]
    lhs = _fd(sde.var, T)
    rhs = 2 * sde.f(T) * sde.var(T) + sde.g2(T)
    torch.testing.assert_close(lhs, rhs, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", SDES)
def test_mean_coefficient_solves_dm_dt_equals_f_m(name):
    sde = SDES[name]
    torch.testing.assert_close(_fd(sde.mean_coeff, T), sde.f(T) * sde.mean_coeff(T), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(sde.mean_coeff(torch.zeros(1, dtype=torch.float64)), torch.ones(1, dtype=torch.float64))


@pytest.mark.parametrize("name", SDES)
def test_dvar_is_the_derivative_of_the_variance(name):
    sde = SDES[name]
    torch.testing.assert_close(sde.dvar(T), _fd(sde.var, T), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", VP_TYPE)
def test_mean_coefficient_squared_matches_variance(name):
    sde = SDES[name]
    torch.testing.assert_close(sde.mean_coeff(T) ** 2, (1 - sde.var(T)) / (1 - sde.sigma2_0))


@pytest.mark.parametrize("name", SDES)
def test_inverse_variance(name):
    sde = SDES[name]
    torch.testing.assert_close(sde.inv_var(sde.var(T)), T, rtol=1e-9, atol=1e-9)
    v = torch.linspace(float(sde.var(T[0])), float(sde.var(T[-1])), 11, dtype=torch.float64)
    torch.testing.assert_close(sde.var(sde.inv_var(v)), v, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", SDES)
def test_variance_at_zero_is_sigma2_0(name):
    sde = SDES[name]
    assert float(sde.var(torch.zeros((), dtype=torch.float64))) == pytest.approx(sde.sigma2_0, abs=1e-15)


def test_vpsde_values_match_the_reference_formulas():
    sde = VPSDE(0.1, 20.0, 0.0)
    t = torch.tensor(0.5, dtype=torch.float64)
    integral = 0.1 * 0.5 + 0.5 * 19.9 * 0.25
    assert float(sde.var(t)) == pytest.approx(1 - math.exp(-integral))
    assert float(sde.g2(t)) == pytest.approx(0.1 + 19.9 * 0.5)


def test_geometric_log_variance_has_constant_slope():
    sde = SDES["geometric"]
    slope = _fd(lambda t: torch.log(sde.var(t)), T)
    torch.testing.assert_close(slope, torch.full_like(T, math.log(0.999 / 3e-5)), rtol=1e-6, atol=0)
    assert float(sde.var(torch.ones((), dtype=torch.float64))) == pytest.approx(0.999)


@pytest.mark.parametrize("name", ["vp", "vp_sigma0", "geometric", "ve"])
def test_monte_carlo_forward_sde_matches_marginals(name):
    """Euler-Maruyama simulation of dz = f z dt + g dw from z_0 + sigma_0 eps matches N(m_t z_0, sigma_t^2)."""
    sde = SDES[name]
    gen = torch.Generator().manual_seed(0)
    n, steps, t_end = 20000, 2000, 0.6
    z0 = 1.5
    z = z0 + math.sqrt(sde.sigma2_0) * torch.randn(n, generator=gen, dtype=torch.float64)
    dt = t_end / steps
    for i in range(steps):
        t = torch.tensor(i * dt, dtype=torch.float64)
        z = z + sde.f(t) * z * dt + torch.sqrt(sde.g2(t) * dt) * torch.randn(n, generator=gen, dtype=torch.float64)
    t_end = torch.tensor(t_end, dtype=torch.float64)
    mean, var = float(sde.mean_coeff(t_end)) * z0, float(sde.var(t_end))
    assert abs(z.mean().item() - mean) < 5 * math.sqrt(var / n) + 2e-3
    assert abs(z.var().item() - var) < 5 * var * math.sqrt(2 / n) + 2e-3


def test_perturb_and_prior():
    sde = SDES["vp"]
    z0 = torch.ones(3, 2, 4, 4)
    t = torch.tensor([0.1, 0.5, 0.9])
    noise = torch.randn(3, 2, 4, 4)
    z_t = sde.perturb(z0, t, noise)
    expected = sde.mean_coeff(t)[:, None, None, None] * z0 + sde.var(t).sqrt()[:, None, None, None] * noise
    torch.testing.assert_close(z_t, expected)
    z = torch.zeros(2, 5)
    torch.testing.assert_close(sde.prior_log_prob(z), torch.full((2,), -2.5 * math.log(2 * math.pi)))


def test_make_sde_from_config():
    assert isinstance(make_sde(SDEConfig(type="vpsde")), VPSDE)
    geo = make_sde(SDEConfig(type="geometric", sigma2_min=1e-4, sigma2_max=0.99, sigma2_0_geometric=1e-4))
    assert isinstance(geo, GeometricVPSDE) and geo.sigma2_max == 0.99
    with pytest.raises(ValueError):
        GeometricVPSDE(0.5, 0.1, 0.5)


def test_sde_names_are_the_config_types():
    """The typed config is the one home of the SDE defaults; each SDE carries the config's type name, in which
    lsgm.methods writes its rules."""
    import typing

    for name in typing.get_args(typing.get_type_hints(SDEConfig)["type"]):
        assert make_sde(SDEConfig(type=name)).type == name
    default = make_sde(SDEConfig())
    assert (default.beta_min, default.beta_max, default.sigma2_0) == (0.1, 20.0, 0.0)


@pytest.mark.parametrize("t", [1e-7, 1e-6, 1e-5, 1e-3])
def test_small_t_variance_is_exact_in_float32(t):
    """Item 5: sigma_t^2 = -expm1(-int beta) in float32 matches float64 to 1e-6 relative; 1 - exp(-x) was 19 % off
    at t = 1e-6 and exactly 0 below ~3e-7."""
    for sde in (make_sde(SDEConfig()), make_sde(SDEConfig(type="geometric", sigma2_0_geometric=0.0))):
        exact = sde.var(torch.tensor(t, dtype=torch.float64))
        got = sde.var(torch.tensor(t, dtype=torch.float32)).double()
        assert got > 0 and abs(got / exact - 1) < 1e-6, (type(sde).__name__, t, float(got), float(exact))
        assert float(sde.inv_var(exact)) == pytest.approx(t, rel=1e-9)


def test_vesde_closed_forms():
    """sigma_t = sigma_min (sigma_max / sigma_min)^t, m_t = 1, f = 0, g^2 = d sigma_t^2 / dt, prior N(0, sigma_max^2 I)."""
    sde = VESDE(0.01, 348.0)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    sigma = 0.01 * (348.0 / 0.01) ** t
    torch.testing.assert_close(sde.var(t), sigma**2, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.g2(t), 2 * math.log(348.0 / 0.01) * sigma**2, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.mean_coeff(t), torch.ones_like(t))
    torch.testing.assert_close(sde.f(t), torch.zeros_like(t))
    assert sde.sigma2_0 == pytest.approx(1e-4) and sde.prior_var == pytest.approx(348.0**2)
    z = torch.randn(3, 2, 4, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 348.0).log_prob(z).sum((1, 2))
    torch.testing.assert_close(sde.prior_log_prob(z), expected)
    draw = sde.prior_sample((20000,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(draw.std().item() / 348.0 - 1) < 5 * math.sqrt(1 / 40000)
    # the Normal part of a mixed score: exact eps-prediction for N(0, I) data under the VESDE
    t_b = torch.tensor([0.3, 0.7], dtype=torch.float64)
    z_t = torch.randn(2, 5, dtype=torch.float64)
    var = sde.var(t_b)[:, None]
    torch.testing.assert_close(sde.mixing_component(z_t, t_b), var.sqrt() * z_t / (1 + var))
    assert isinstance(make_sde(SDEConfig(type="vesde", sigma_min=0.01, sigma_max=90.0)), VESDE)
    with pytest.raises(ValueError):
        VESDE(1.0, 0.5)


def test_max_pairwise_distance_is_scores_sigma_max_rule():
    x = torch.zeros(5, 1, 2, 2, dtype=torch.float64)
    x[3] = 1.0  # distance sqrt(4) = 2 from every other image
    x[4, 0, 0, 0] = -1.0  # distance sqrt(2^2 + 3 * 1^2) = sqrt(7) from x[3]
    assert max_pairwise_distance(x, chunk=2) == pytest.approx(math.sqrt(7))

"""Time samplers: histograms match r(t) (KS), densities are normalised and proportional to
w(t)(1 - sigma_t^2), the weighted estimates of int c_w w h dt are unbiased (against quadrature), and the score
objective's weights equal the official code's for all six (weighting, sampling) modes."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from lsgm.diffusion.sde import VESDE, VPSDE, GeometricVPSDE
from lsgm.diffusion.time_sampling import (
    P_OBJECTIVE_SCALE,
    UnweightedVPSampler,
    make_q_sampler,
    make_time_sampler,
    weighting_fn,
)

VP = VPSDE(0.1, 20.0, 0.0)
GEO = GeometricVPSDE(3e-5, 0.999, 3e-5)
VE = VESDE(0.01, 50.0)
MODES = [  # (sde name, sde, t_eps, weighting, sampling): every defined Table 6 column
    (name, sde, t_eps, w, s)
    for name, sde, t_eps in [("vp", VP, 1e-2), ("geo", GEO, 0.0), ("geo_eps", GEO, 1e-2), ("ve", VE, 1e-5)]
    for w in ("ll", "un", "re")
    for s in ("uniform", "is")
    if not (name.startswith(("geo", "ve")) and w == "un" and s == "is")
]
IDS = [f"{m[0]}-{m[3]}-{m[4]}" for m in MODES]


def _quad(fn, a, b):
    return integrate.quad(fn, a, b, limit=200, epsabs=1e-11, epsrel=1e-10)[0]


def _f64(fn):
    return lambda t: float(fn(torch.tensor(t, dtype=torch.float64)))


@pytest.mark.parametrize("name,sde,t_eps,w,s", MODES, ids=IDS)
def test_histogram_matches_density_ks(name, sde, t_eps, w, s):
    sampler = make_time_sampler(w, s, sde, t_eps)
    t = sampler.sample(20000, generator=torch.Generator().manual_seed(1), dtype=torch.float64).t.numpy()
    assert t.min() >= t_eps and t.max() <= 1.0
    # the CDF used by the KS test is the quadrature of the density, independent of the sampler's own cdf
    density = _f64(sampler.density)
    grid = np.linspace(t_eps, 1.0, 401)
    cdf_grid = np.concatenate([[0.0], np.cumsum([_quad(density, a, b) for a, b in zip(grid[:-1], grid[1:])])])
    pvalue = stats.kstest(t, lambda x: np.interp(x, grid, cdf_grid)).pvalue
    assert pvalue > 1e-3, f"KS p-value {pvalue}"


@pytest.mark.parametrize("name,sde,t_eps,w,s", MODES, ids=IDS)
def test_density_normalised_and_matches_cdf(name, sde, t_eps, w, s):
    sampler = make_time_sampler(w, s, sde, t_eps)
    assert _quad(_f64(sampler.density), t_eps, 1.0) == pytest.approx(1.0, rel=1e-7)
    t = torch.linspace(t_eps + 0.01, 0.99, 17, dtype=torch.float64)
    h = 1e-6
    torch.testing.assert_close((sampler.cdf(t + h) - sampler.cdf(t - h)) / (2 * h), sampler.density(t), rtol=1e-5, atol=0)


@pytest.mark.parametrize("name,sde,t_eps,w", [(m[0], m[1], m[2], m[3]) for m in MODES if m[4] == "is"])
def test_importance_density_is_proportional_to_w_times_one_minus_var(name, sde, t_eps, w):
    """r(t) proportional to w(t) (d sigma_t^2 / dt) / g^2: w (1 - sigma_t^2) for VP-type SDEs, w for the VESDE."""
    sampler = make_time_sampler(w, "is", sde, t_eps)
    t = torch.linspace(t_eps + 1e-3, 1.0, 33, dtype=torch.float64)
    shape = torch.ones_like(t) if isinstance(sde, VESDE) else 1 - sde.var(t)
    ratio = sampler.density(t) / (weighting_fn(w, sde, t) * shape)
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])), rtol=1e-9, atol=0)


TEST_FUNCTIONS = {
    "one": lambda t, sde: torch.ones_like(t),
    "t_squared": lambda t, sde: t**2,
    "one_minus_var": lambda t, sde: 1 - sde.var(t),  # the shape the importance samplers assume
    "bump": lambda t, sde: torch.exp(-20 * (t - 0.3) ** 2),
}


@pytest.mark.parametrize("h_name", TEST_FUNCTIONS)
@pytest.mark.parametrize("name,sde,t_eps,w,s", MODES, ids=IDS)
def test_weighted_estimates_are_unbiased(name, sde, t_eps, w, s, h_name):
    """E[weight_p h(t)] = int c_w w h dt and E[weight_q h(t)] = int w_ll/2 h dt (within 5 standard errors)."""
    h = TEST_FUNCTIONS[h_name]
    sampler = make_time_sampler(w, s, sde, t_eps)
    ts = sampler.sample(200000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for weights, weighting, scale in ((ts.weight_p, w, P_OBJECTIVE_SCALE[w]), (ts.weight_q, "ll", 0.5)):
        values = (weights * h(ts.t, sde)).numpy()
        exact = _quad(_f64(lambda t: scale * weighting_fn(weighting, sde, t) * h(t, sde)), t_eps, 1.0)
        stderr = values.std() / math.sqrt(len(values))
        assert abs(values.mean() - exact) < 5 * stderr + 1e-9 * abs(exact), (weighting, values.mean(), exact, stderr)


def test_uniform_weights_include_the_one_minus_t_eps_factor():
    """The official code drops (1 - t_eps) from the uniform weights; ours is exact."""
    sampler = make_time_sampler("un", "uniform", VP, 0.2)
    ts = sampler.sample(4)
    torch.testing.assert_close(ts.weight_p, torch.full((4,), 0.8))  # w_un: no 1/2 (official drop_all_uniform)


# The official `_iw_quantities_vpsdelike` modes (reference doc section 3.4), written from their formulas: iw_sample_p
# -> (weighting, sampling, w_p(t), w_q(t)) with v = sigma_t^2, v_eps / v_1 = sigma^2 at t_eps / 1, g2 = g(t)^2. The
# drop_all_iw normaliser Z is re-derived here by quadrature of int (1 - sigma_s^2) ds, not the official const_norm
# (whose exp(b/2) factor is 0.23 % off). The uniform modes' official weights lack r(t) = 1/(1 - t_eps): ours are
# the official ones times (1 - t_eps) (reference section 3.6; exact at t_eps = 0).
def _official_modes(sde, t_eps):
    v_eps, v_1 = (float(sde.var(torch.tensor(x, dtype=torch.float64))) for x in (t_eps, 1.0))
    z = _quad(lambda t: 1 - float(sde.var(torch.tensor(t, dtype=torch.float64))), t_eps, 1.0)
    return {
        "ll_uniform": ("ll", "uniform", lambda v, g2: g2 / (2 * v), lambda v, g2: g2 / (2 * v)),
        "ll_iw": ("ll", "is", lambda v, g2: 0.5 * math.log(v_1 / v_eps) / (1 - v),
                  lambda v, g2: 0.5 * math.log(v_1 / v_eps) / (1 - v)),
        "drop_all_uniform": ("un", "uniform", lambda v, g2: torch.ones_like(v), lambda v, g2: g2 / (2 * v)),
        "drop_all_iw": ("un", "is", lambda v, g2: z / (1 - v), lambda v, g2: z / (1 - v) * g2 / (2 * v)),
        "drop_sigma2t_uniform": ("re", "uniform", lambda v, g2: g2 / 2, lambda v, g2: g2 / (2 * v)),
        "drop_sigma2t_iw": ("re", "is", lambda v, g2: 0.5 * (v_1 - v_eps) / (1 - v),
                            lambda v, g2: 0.5 * (v_1 - v_eps) / (1 - v) / v),
    }


@pytest.mark.parametrize("mode", ["ll_uniform", "ll_iw", "drop_all_uniform", "drop_all_iw", "drop_sigma2t_uniform",
                                  "drop_sigma2t_iw"])
@pytest.mark.parametrize("sde,t_eps", [(VP, 1e-2), (GEO, 1e-2)], ids=["vp", "geo"])
def test_weights_equal_the_official_modes(mode, sde, t_eps):
    if sde is GEO and mode == "drop_all_iw":
        pytest.skip("drop_all_iw is VPSDE-only in the official code (and here, lsgm.methods)")
    weighting, sampling, w_p, w_q = _official_modes(sde, t_eps)[mode]
    t = torch.linspace(t_eps, 1.0, 257, dtype=torch.float64)
    ours_p, ours_q = make_time_sampler(weighting, sampling, sde, t_eps).weights(t)
    v, g2 = sde.var(t), sde.g2(t)
    factor = (1 - t_eps) if sampling == "uniform" else 1.0
    torch.testing.assert_close(ours_p, factor * w_p(v, g2), rtol=1e-9, atol=0)
    torch.testing.assert_close(ours_q, factor * w_q(v, g2), rtol=1e-9, atol=0)


def test_r_un_normaliser_is_exact_not_the_official_constant():
    sampler = UnweightedVPSampler("un", VP, 1e-2)
    exact = _quad(lambda t: 1 - float(VP.var(torch.tensor(t, dtype=torch.float64))), 1e-2, 1.0)
    assert sampler.normalizer() == pytest.approx(exact, rel=1e-9)
    assert exact == pytest.approx(0.26600, abs=5e-5)  # reference doc: official code gives 0.26661


def test_undefined_and_invalid_combinations_raise():
    with pytest.raises(ValueError, match="n/a"):
        make_time_sampler("un", "is", GEO, 0.0)
    with pytest.raises(ValueError, match="t_eps"):
        make_time_sampler("ll", "uniform", VP, 0.0)  # sigma^2(0) = 0: w_ll is infinite there
    with pytest.raises(ValueError):
        make_time_sampler("xx", "uniform", VP, 1e-2)
    with pytest.raises(ValueError):
        make_time_sampler("ll", "stratified", VP, 1e-2)


def test_q_sampler_for_encoder_objectives():
    p = make_time_sampler("un", "is", VP, 1e-2)
    assert make_q_sampler("rew", p) is None
    q = make_q_sampler("ll_is", p)
    ts = q.sample(8)
    torch.testing.assert_close(ts.weight_p, ts.weight_q)
    assert make_q_sampler("ll_uniform", p).name == "uniform"


def test_sampling_is_reproducible_with_a_generator():
    sampler = make_time_sampler("re", "is", VP, 1e-2)
    a = sampler.sample(16, generator=torch.Generator().manual_seed(7))
    b = sampler.sample(16, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.t, b.t) and torch.equal(a.weight_p, b.weight_p)

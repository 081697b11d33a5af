"""NVAE's normalizing flows (lsgm/nets/flows.py): autoregressive structure, invertibility and the density of a
flowed posterior sample, each checked against an independent computation (full autograd Jacobians)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from lsgm.config import VAEConfig
from lsgm.data import DATASETS
from lsgm.nets.flows import ARShiftCell, PairedARFlow, apply_flows
from lsgm.nets.nvae import NVAE
from lsgm.gaussian import gaussian_log_prob

SHAPE = (3, 4, 5)  # (L, H, W): non-square, a few channels


def randomized(module: torch.nn.Module, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """Random weights of a visible size (the official init makes mu small, which would hide structure)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return module.to(dtype)


def order(shape: tuple[int, int, int], mirror: bool) -> torch.Tensor:
    """Autoregressive rank of every element of a [L, H, W] latent (flattened C-major, as ``reshape(-1)``):
    pixels in raster order (reversed when mirrored), channels in increasing order within a pixel."""
    c, h, w = shape
    pixel = torch.arange(h * w).reshape(h, w)
    if mirror:
        pixel = h * w - 1 - pixel
    return (pixel[None] * c + torch.arange(c)[:, None, None]).reshape(-1)


@pytest.mark.parametrize("mirror", [False, True])
def test_shift_is_strictly_autoregressive(mirror):
    """d mu_o / d z_i != 0 only for elements i strictly before o: the shift's Jacobian is strictly triangular in
    the cell's order, so z -> z - mu(z) has a unit-diagonal triangular Jacobian (log|det| = 0)."""
    cell = randomized(ARShiftCell(SHAPE[0], mirror=mirror))
    z = torch.randn(1, *SHAPE, dtype=torch.float64)
    jac = jacobian(lambda v: cell.shift(v.reshape(1, *SHAPE)).reshape(-1), z.reshape(-1))  # (D, D)
    rank = order(SHAPE, mirror)
    allowed = rank[None, :] < rank[:, None]  # (out, in): input strictly earlier than output
    assert jac[~allowed].abs().max() == 0
    assert (jac[allowed].abs() > 0).float().mean() > 0.5  # and it really reads its past (not a trivial map)


def test_paired_flow_is_invertible_with_unit_jacobian_determinant():
    flow = randomized(PairedARFlow(SHAPE[0]), seed=1)
    z = torch.randn(2, *SHAPE, dtype=torch.float64)
    y, log_det = flow(z)
    assert torch.allclose(flow.inverse(y), z, atol=1e-10)
    assert torch.equal(log_det, torch.zeros(2, dtype=log_det.dtype))
    jac = jacobian(lambda v: flow(v.reshape(1, *SHAPE))[0].reshape(-1), z[0].reshape(-1))
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert sign == 1 and abs(float(logabsdet)) < 1e-10
    assert not torch.allclose(y, z)  # the flow is not the identity


def test_flowed_density_equals_the_change_of_variables():
    """log q(y) for y = f(z), z ~ N(mu, sigma^2), equals log N(f^-1(y); mu, sigma) - log|det J_f(f^-1(y))| with the
    inverse and the determinant computed independently (fixed-point inverse, full autograd Jacobian)."""
    torch.manual_seed(0)
    flows = torch.nn.ModuleList([randomized(PairedARFlow(SHAPE[0]), seed=s) for s in (2, 3)])
    mu, log_sig = torch.randn(1, *SHAPE, dtype=torch.float64), 0.3 * torch.randn(1, *SHAPE, dtype=torch.float64)
    z = mu + log_sig.exp() * torch.randn(1, *SHAPE, dtype=torch.float64)
    y, log_q = apply_flows(flows, z, gaussian_log_prob(z, mu, log_sig))

    def forward(v):
        for flow in flows:
            v = flow(v)[0]
        return v

    x = y
    for flow in reversed(flows):
        x = flow.inverse(x)
    assert torch.allclose(x, z, atol=1e-10)
    jac = jacobian(lambda v: forward(v.reshape(1, *SHAPE)).reshape(-1), x.reshape(-1))
    expected = gaussian_log_prob(x, mu, log_sig) - torch.linalg.slogdet(jac)[1]
    assert torch.allclose(log_q, expected, atol=1e-9)


def test_nvae_posterior_sample_goes_through_its_flows():
    """The encoder's group sample is the flowed Normal sample (official order: sample, flows, then eps_conv), and
    its log q carries the flow's log-determinant."""
    cfg = VAEConfig(num_channels=8, channel_mult=[1, 2], num_groups_per_scale=2, num_latent_per_group=3, num_nf=2)
    vae = NVAE(cfg, DATASETS["mnist"]).eval()  # the posterior runs in fp32 (as under autocast)
    randomized(vae.flows, seed=4, dtype=torch.float32)
    assert len(vae.flows) == vae.n_groups and all(len(f) == 2 for f in vae.flows)
    size = DATASETS["mnist"].image_size // 2
    feat = torch.randn(2, vae._width(1), size, size)
    z, log_q, log_p = vae._posterior(0, feat, None, torch.Generator().manual_seed(5))
    mu, log_sig = vae.posteriors[0](feat).chunk(2, dim=1)
    mu, log_sig = 5.0 * torch.tanh(mu / 5.0), cfg.log_sig_q_scale * torch.tanh(log_sig / cfg.log_sig_q_scale)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(5), dtype=mu.dtype)
    base = mu + log_sig.exp() * eps
    flowed = base
    for flow in vae.flows[0]:
        flowed = flow(flowed)[0]
    assert torch.allclose(z, flowed, atol=1e-5) and not torch.allclose(z, base, atol=1e-2)
    assert torch.allclose(log_q, gaussian_log_prob(base, mu, log_sig), atol=1e-3)  # log|det| = 0
    expected_log_p = -0.5 * z.pow(2).sum(dim=(1, 2, 3)) - 0.5 * math.log(2 * math.pi) * z[0].numel()
    assert torch.allclose(log_p, expected_log_p, atol=1e-3)


def test_nvae_with_flows_trains_every_flow_parameter():
    cfg = VAEConfig(num_channels=8, channel_mult=[1, 2], num_groups_per_scale=2, num_latent_per_group=3, num_nf=1)
    vae = NVAE(cfg, DATASETS["mnist"])
    size = DATASETS["mnist"].image_size
    out = vae(torch.rand(2, 1, size, size).round(), generator=torch.Generator().manual_seed(0))
    (out.reconstruction + sum(out.kl_groups)).mean().backward()
    missing = [n for n, p in vae.flows.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing

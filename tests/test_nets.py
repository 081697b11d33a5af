"""Tests of the networks: NVAE (shapes, likelihoods against closed forms, temperature, SR penalty, state
round trips, DDP) and NCSN++ (shapes, time dependence, gradients, FIR resampling against a loop reference).
Tiny sizes; the file runs in seconds."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lsgm.config import ScoreNetConfig, VAEConfig
from lsgm.data import DatasetInfo
from lsgm.nets.layers import SRConv2d, WNConv2d, norm_scale_penalty
from lsgm.nets.ncsnpp import FIR_TAPS, NCSNpp, ResBlock, fir_downsample, fir_kernel, fir_upsample
from lsgm.nets.nvae import NVAE, DiscMixLogistic

BINARY = DatasetInfo("binary", channels=1, image_size=32, levels=2, crop=2)
GRAY = DatasetInfo("gray", channels=1, image_size=16, levels=17, crop=1)
RGB = DatasetInfo("rgb", channels=3, image_size=16, levels=256)


def tiny_vae_cfg(scales: int = 1, arch: str = "res_bnswish", use_se: bool = True, **kw) -> VAEConfig:
    mult = [1, 2] if scales == 1 else [1, 2, 2]
    return VAEConfig(num_channels=8, channel_mult=mult, num_latent_scales=scales, num_groups_per_scale=2,
                     num_latent_per_group=3, arch_instance=arch, use_se=use_se, num_mix=3, **kw)


def make_batch(data: DatasetInfo, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, data.levels, (n, data.channels, data.image_size, data.image_size), generator=g)
    return idx.float() / (data.levels - 1)  # (B, C, H, W) on the data grid in [0, 1]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------- NVAE


@pytest.mark.parametrize("data,scales,arch,use_se", list(itertools.product(
    [BINARY, GRAY, RGB], [1, 2], ["res_bnswish", "res_mbconv"], [True, False])))
def test_nvae_output_shapes(data, scales, arch, use_se):
    torch.manual_seed(0)
    cfg = tiny_vae_cfg(scales, arch, use_se)
    vae = NVAE(cfg, data)
    top = data.image_size // 2 ** (cfg.num_preprocess_blocks + scales - 1)
    assert vae.latent_shape == (6, top, top)
    x = make_batch(data, n=3)
    out = vae(x, generator=gen(1))
    assert out.z0.shape == (3, *vae.latent_shape)
    for name in ("log_q_z0", "lower_log_q", "lower_cross_entropy", "reconstruction"):
        assert getattr(out, name).shape == (3,), name
    assert len(out.kl_groups) == scales * cfg.num_groups_per_scale
    assert all(k.shape == (3,) for k in out.kl_groups)
    assert torch.isfinite(out.reconstruction).all() and (out.reconstruction > 0).all()
    if scales == 1:
        assert (out.lower_log_q == 0).all() and (out.lower_cross_entropy == 0).all()
    else:
        assert (out.lower_log_q != 0).all() and (out.lower_cross_entropy > 0).all()
    # the per-group KLs, the top log q and the lower terms must account for -log N(z0; 0, I) exactly
    neg_log_p_top = (0.5 * out.z0**2 + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    kl_sum = torch.stack(out.kl_groups).sum(0)
    torch.testing.assert_close(kl_sum - out.log_q_z0 - out.lower_log_q - out.lower_cross_entropy, neg_log_p_top,
                               rtol=1e-4, atol=1e-2)
    vae.eval()
    with torch.no_grad():
        img = vae.sample(2, generator=gen(2))
        dec = vae.decode(out.z0.detach())
    assert img.shape == (2, *x.shape[1:]) and dec.shape == x.shape
    assert img.min() >= 0 and img.max() <= 1 and dec.min() >= 0 and dec.max() <= 1


def test_nvae_rejects_bad_channel_mult():
    with pytest.raises(ValueError, match="channel_mult"):
        NVAE(VAEConfig(channel_mult=[1, 2, 2], num_latent_scales=1), GRAY)


def _capture_head_logits(vae: NVAE) -> list[torch.Tensor]:
    captured: list[torch.Tensor] = []
    vae.head.register_forward_hook(lambda module, inputs, output: captured.append(output))
    return captured


def test_bernoulli_reconstruction_is_cropped_bce():
    torch.manual_seed(0)
    vae = NVAE(tiny_vae_cfg(), BINARY)
    logits = _capture_head_logits(vae)
    x = make_batch(BINARY, n=2)
    out = vae(x, generator=gen(0))
    c = BINARY.crop
    expected = F.binary_cross_entropy_with_logits(logits[0][..., c:-c, c:-c], x[..., c:-c, c:-c], reduction="none")
    torch.testing.assert_close(out.reconstruction, expected.sum(dim=(1, 2, 3)))
    # cropping matters: the uncropped BCE is strictly larger
    assert (F.binary_cross_entropy_with_logits(logits[0], x, reduction="none").sum((1, 2, 3))
            > out.reconstruction + 1).all()


def _all_level_grids(channels: int, levels: int, h: int, w: int) -> torch.Tensor:
    """Every joint value of a pixel's channels, broadcast over the image: [levels^C, C, H, W]."""
    combos = torch.tensor(list(itertools.product(range(levels), repeat=channels)), dtype=torch.float32)
    return (combos / (levels - 1))[:, :, None, None].expand(-1, -1, h, w)


@pytest.mark.parametrize("channels,levels", [(1, 5), (1, 256), (3, 4)])
def test_dml_masses_sum_to_one(channels, levels):
    dml = DiscMixLogistic(channels, num_mix=3, levels=levels)
    logits = 3.0 * torch.randn(1, dml.out_channels, 2, 3, generator=gen(0))  # includes sharp and flat components
    x = _all_level_grids(channels, levels, 2, 3)
    log_p = dml.log_prob_map(logits.expand(x.shape[0], -1, -1, -1), x)  # (levels^C, H, W)
    torch.testing.assert_close(torch.logsumexp(log_p.double(), dim=0), torch.zeros(2, 3, dtype=torch.float64),
                               atol=1e-4, rtol=0)


def _reference_dml_prob(logits: torch.Tensor, x: torch.Tensor, num_mix: int, levels: int) -> torch.Tensor:
    """Plain float64 RGB DML probability with NVAE's layout for C=3: logits [B, 10M, H, W] -> [B, H, W]."""
    m, logits, xs = num_mix, logits.double(), 2 * x.double() - 1
    pi = torch.softmax(logits[:, :m], 1)
    mu = logits[:, m:4 * m].reshape(-1, 3, m, *x.shape[2:])
    s = torch.exp(logits[:, 4 * m:7 * m].reshape(-1, 3, m, *x.shape[2:]).clamp(min=-7))
    a = torch.tanh(logits[:, 7 * m:].reshape(-1, 3, m, *x.shape[2:]))
    r, g, b = xs[:, 0:1], xs[:, 1:2], xs[:, 2:3]
    means = [mu[:, 0], mu[:, 1] + a[:, 0] * r, mu[:, 2] + a[:, 1] * r + a[:, 2] * g]
    prob, half = pi.clone(), 1.0 / (levels - 1)
    for c in range(3):
        xc = xs[:, c:c + 1]
        upper = torch.where(xc > 1 - half, torch.ones_like(xc), torch.sigmoid((xc + half - means[c]) / s[:, c]))
        lower = torch.where(xc < -1 + half, torch.zeros_like(xc), torch.sigmoid((xc - half - means[c]) / s[:, c]))
        prob = prob * (upper - lower)
    return prob.sum(1)


def test_dml_matches_plain_reference():
    dml = DiscMixLogistic(3, num_mix=4, levels=8)
    logits = torch.randn(5, dml.out_channels, 3, 3, generator=gen(1))
    x = torch.randint(0, 8, (5, 3, 3, 3), generator=gen(2)).float() / 7
    expected = _reference_dml_prob(logits, x, 4, 8)
    torch.testing.assert_close(dml.log_prob_map(logits, x).double().exp(), expected, rtol=1e-4, atol=1e-7)


def test_dml_reconstruction_uses_head_and_crop():
    torch.manual_seed(0)
    vae = NVAE(tiny_vae_cfg(), GRAY)
    logits = _capture_head_logits(vae)
    x = make_batch(GRAY)
    out = vae(x, generator=gen(0))
    log_p = vae.likelihood.log_prob_map(logits[0], x)[:, 1:-1, 1:-1]  # (B, H - 2, W - 2)
    torch.testing.assert_close(out.reconstruction, -log_p.sum(dim=(1, 2)))


def test_dml_mean_is_clamped_to_unit_interval():
    dml = DiscMixLogistic(3, num_mix=2, levels=256)
    mean = dml.mean(50.0 * torch.randn(4, dml.out_channels, 5, 5, generator=gen(3)))
    assert mean.shape == (4, 3, 5, 5) and mean.min() >= 0 and mean.max() <= 1
    assert (mean == 0).any() and (mean == 1).any()  # the clamp is active at this logit scale


@pytest.mark.parametrize("data,scales", [(BINARY, 1), (RGB, 2)])
def test_sample_honours_temperature(data, scales):
    torch.manual_seed(0)
    vae = NVAE(tiny_vae_cfg(scales), data).eval()
    with torch.no_grad():
        cold = [vae.sample(3, temperature=0.0, generator=gen(s)) for s in (0, 1)]
        warm = [vae.sample(3, temperature=1.0, generator=gen(s)) for s in (0, 0, 1)]
        half = vae.sample(3, temperature=0.5, generator=gen(0))
    assert torch.equal(cold[0], cold[1])
    assert torch.equal(warm[0], warm[1])
    assert not torch.allclose(warm[0], warm[2])
    assert not torch.allclose(warm[0], half)
    # the top latent handed to the decoder is exactly T * N(0, I) drawn from the generator (NVAE PR 55)
    seen: list[torch.Tensor] = []
    decode = vae.decode
    vae.decode = lambda z0, **kw: seen.append(z0) or decode(z0, **kw)
    with torch.no_grad():
        vae.sample(3, temperature=0.3, generator=gen(7))
    torch.testing.assert_close(seen[0], 0.3 * torch.randn((3, *vae.latent_shape), generator=gen(7)))


def test_decode_depends_on_z0_and_stays_in_unit_interval():
    torch.manual_seed(0)
    vae = NVAE(tiny_vae_cfg(2), RGB).eval()
    z0 = 3.0 * torch.randn(2, *vae.latent_shape, generator=gen(0))
    with torch.no_grad():
        a = vae.decode(z0, temperature=0.0)
        b = vae.decode(z0 + 1.0, temperature=0.0)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, b)


def test_regularization_is_a_top_singular_value_sum():
    torch.manual_seed(0)
    vae = NVAE(tiny_vae_cfg(), GRAY)
    u_init = vae.stem.sn_u.clone()
    reg = vae.regularization()
    assert not torch.allclose(vae.stem.sn_u, u_init)  # the power-iteration state persists in the buffers
    assert reg.ndim == 0 and torch.isfinite(reg) and reg > 0
    true = sum(torch.linalg.matrix_norm(m.normalized_weight().reshape(m.out_channels, -1), ord=2)
               for m in vae.modules() if isinstance(m, WNConv2d))
    expected = (true + norm_scale_penalty(vae)).detach()
    assert reg.item() <= expected.item() * (1 + 1e-5)
    torch.testing.assert_close(reg.detach(), expected, rtol=2e-3, atol=0)
    reg.backward()
    assert all(m.log_weight_norm.grad is not None for m in vae.modules() if isinstance(m, WNConv2d))
    assert int(vae.sr_calls) == 1


@pytest.mark.parametrize("arch", ["res_bnswish", "res_mbconv"])
def test_spectral_regularizer_covers_every_conv_as_the_official_one(arch):
    """The official SpectralNormCalculator collects every NVAE conv (its Conv2D, weight-normalised or not, and
    the flows' ARConv2d): so does ours, MBConv's plain convs and the masked flow convs included; the penalty
    is their top singular values (of the weight the conv applies) plus the BN scales."""
    torch.manual_seed(0)
    vae = NVAE(tiny_vae_cfg(2, arch, num_nf=1, progressive_input="input_skip"), RGB)
    convs = [m for m in vae.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(isinstance(m, SRConv2d) for m in convs)
    reg = vae.regularization()  # 40 power iterations on the first call
    true = sum(torch.linalg.matrix_norm(m.sr_weight().reshape(m.out_channels, -1), ord=2) for m in convs)
    torch.testing.assert_close(reg.detach(), (true + norm_scale_penalty(vae)).detach(), rtol=5e-3, atol=0)


def test_input_skip_adds_the_downsampled_input_pyramid_after_each_down_cell():
    """progressive_input = input_skip (official InputSkipCombinerCell): after every encoder down cell, s += the
    pyramid's next level, pyramid = BN-Swish-conv3x3/2(pyramid), starting from the preprocessed image. With the
    skip conv zeroed the encoder is exactly the one without input skip."""
    torch.manual_seed(0)
    with_skip = NVAE(tiny_vae_cfg(2, progressive_input="input_skip"), RGB).eval()
    plain = NVAE(tiny_vae_cfg(2), RGB).eval()
    assert len(with_skip.input_skips) == 1 and plain.input_skips is None
    missing, unexpected = plain.load_state_dict(with_skip.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("input_skips.") for k in unexpected)
    x = make_batch(RGB)
    with torch.no_grad():
        feats, ref = with_skip._encode(x), plain._encode(x)
        assert torch.allclose(feats[-1], ref[-1])  # the finest scale is before any down cell
        assert not torch.allclose(feats[0], ref[0], atol=1e-4)  # the coarse scale reads the pyramid
        with_skip.input_skips[0].conv.log_weight_norm.fill_(-math.inf)
        with_skip.input_skips[0].conv.bias.zero_()
        assert all(torch.allclose(a, b) for a, b in zip(with_skip._encode(x), ref))


def test_state_dict_round_trip_is_exact():
    torch.manual_seed(0)
    vae = NVAE(tiny_vae_cfg(2, "res_mbconv"), RGB)
    x = make_batch(RGB)
    vae(x, generator=gen(0))  # move BN running stats away from their init
    vae.regularization()
    state = vae.state_dict()
    assert any(k.endswith("sn_u") for k in state) and "sr_calls" in state
    torch.manual_seed(123)
    clone = NVAE(tiny_vae_cfg(2, "res_mbconv"), RGB)
    clone.load_state_dict(state)
    vae.eval(), clone.eval()
    with torch.no_grad():
        a, b = vae(x, generator=gen(5)), clone(x, generator=gen(5))
        assert torch.equal(a.z0, b.z0) and torch.equal(a.reconstruction, b.reconstruction)
        assert torch.equal(vae.sample(2, generator=gen(6)), clone.sample(2, generator=gen(6)))
    assert torch.equal(vae.regularization(), clone.regularization())  # same power-iteration state
    assert int(clone.sr_calls) == 2  # the clone continued with the short iteration, not the first-call one


def test_nvae_trains_under_ddp(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        vae = NVAE(tiny_vae_cfg(), BINARY)
        model = DistributedDataParallel(vae)
        out = model(make_batch(BINARY), generator=gen(0))
        loss = (out.reconstruction + torch.stack(out.kl_groups).sum(0)).mean() + 1e-2 * vae.regularization()
        loss.backward()
        assert all(p.grad is not None for p in vae.parameters())
    finally:
        dist.destroy_process_group()


def test_paper_cifar10_latent_shape():
    cfg = VAEConfig(num_channels=128, channel_mult=[1, 2], num_preprocess_blocks=1, num_preprocess_cells=2,
                    num_postprocess_blocks=1, num_postprocess_cells=2, num_latent_scales=1, num_groups_per_scale=20,
                    num_latent_per_group=9, num_cell_per_cond_enc=2, num_cell_per_cond_dec=2)
    with torch.device("meta"):
        vae = NVAE(cfg, DatasetInfo("cifar10", 3, 32, 256))
    assert vae.latent_shape == (180, 16, 16)
    assert vae.head[1].out_channels == 100  # 10 mixtures x (1 + 3 + 3 + 3)


# ----------------------------------------------------------------------------------------------- NCSN++


def _perturb_zero_init(net: NCSNpp) -> None:
    """Give the near-zero-initialized output convs real weights so the output depends on everything."""
    g = gen(0)
    for name, p in net.named_parameters():
        if name.endswith(("conv1.weight", "out.weight", "conv_out.weight")):
            with torch.no_grad():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


CASES = [
    (ScoreNetConfig(nf=16, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4]), 6, 4),
    (ScoreNetConfig(nf=16, ch_mult=[1, 2], num_res_blocks=2, attn_resolutions=[8]), 6, 8),
    (ScoreNetConfig(nf=16, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8], embedding_type="fourier",
                    embedding_scale=16.0), 3, 16),
    (ScoreNetConfig(nf=16, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[4], fir=True), 3, 8),
]


@pytest.mark.parametrize("cfg,channels,res", CASES)
def test_ncsnpp_shape_time_dependence_and_batch_independence(cfg, channels, res):
    torch.manual_seed(0)
    net = NCSNpp(cfg, channels, res).eval()
    x = torch.randn(3, channels, res, res, generator=gen(1))
    t = torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        out0 = net(x, t)
        assert out0.shape == x.shape and out0.abs().max() < 1e-3  # near-zero output at init
        _perturb_zero_init(net)
        out = net(x, t)
        assert torch.isfinite(out).all()
        assert not torch.allclose(out, net(x, t.flip(0).contiguous()), atol=1e-5)
        torch.testing.assert_close(net(x[:1], t[:1]), out[:1], rtol=1e-4, atol=1e-5)


def test_ncsnpp_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = NCSNpp(CASES[0][0], 6, 4)
    _perturb_zero_init(net)
    net(torch.randn(2, 6, 4, 4), torch.rand(2)).square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_ncsnpp_time_embedding_is_fp32_under_autocast():
    net = NCSNpp(CASES[0][0], 6, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net.embed_time(torch.rand(2)).dtype == torch.float32
        assert net(torch.randn(2, 6, 4, 4), torch.rand(2)).shape == (2, 6, 4, 4)


def test_ncsnpp_rejects_indivisible_resolution():
    with pytest.raises(ValueError, match="divisible"):
        NCSNpp(ScoreNetConfig(ch_mult=[1, 2, 2]), 4, 6)


def test_score_network_sr_covers_its_convs_and_keeps_its_state():
    """Item 3: the official SR on the score network (no --custom_conv_dae): the top singular value of every conv
    (official nn.Conv2d: not the attention NINs) + GroupNorm max|gamma|; power-iteration state in the state_dict."""
    from lsgm.config import ScoreNetConfig
    from lsgm.nets.layers import SRConv2d
    from lsgm.nets.ncsnpp import NCSNpp

    torch.manual_seed(0)
    net = NCSNpp(ScoreNetConfig(nf=8, ch_mult=[1, 2], attn_resolutions=[4]), 3, 8)
    convs = [m for m in net.modules() if isinstance(m, SRConv2d)]
    plain = [m for m in net.modules() if type(m) is torch.nn.Conv2d]
    assert convs and plain  # attention projections stay plain (official NIN), everything else takes part
    gn = sum(m.weight.abs().max() for m in net.modules() if isinstance(m, torch.nn.GroupNorm))
    true = sum(torch.linalg.matrix_norm(c.weight.reshape(c.out_channels, -1), ord=2) for c in convs)
    assert float(net.regularization(conv=False)) == pytest.approx(float(gn), rel=1e-6)
    for _ in range(30):  # the power iteration converges to the top singular values
        penalty = net.regularization(conv=True)
    assert float(penalty) == pytest.approx(float(true + gn), rel=1e-3)
    penalty.backward()
    assert all(c.weight.grad is not None for c in convs)
    state = net.state_dict()
    assert "sr_counter.calls" in state and int(state["sr_counter.calls"]) == 30
    assert any(k.endswith("sn_u") for k in state)


# ----------------------------------------------------------------------------------------------- FIR resampling


def _upfirdn2d_loops(x: np.ndarray, taps, up: int, down: int, gain: float) -> np.ndarray:
    """score_sde's ``upsample_2d`` (up=2) / ``downsample_2d`` (down=2) written out with loops, from the
    definition of upfirdn2d: kernel outer(k, k) / sum * gain * up^2, zero insertion by ``up``, zero padding
    ((p+1)//2 + up - 1, p//2) for up and ((p+1)//2, p//2) for down (p = K - factor), TRUE 2-D convolution
    with the kernel (valid part), keep every ``down``-th sample. x: [B, C, H, W] (float64)."""
    k1 = np.asarray(taps, dtype=np.float64)
    k = np.outer(k1, k1) / np.outer(k1, k1).sum() * gain * up**2
    size, factor = len(k1), max(up, down)
    p = size - factor
    pad0, pad1 = ((p + 1) // 2 + up - 1, p // 2) if up > 1 else ((p + 1) // 2, p // 2)
    b, c, h, w = x.shape
    hp, wp = h * up + pad0 + pad1, w * up + pad0 + pad1
    out = np.zeros((b, c, (hp - size) // down + 1, (wp - size) // down + 1))
    for n, ch in itertools.product(range(b), range(c)):
        padded = np.zeros((hp, wp))
        for i, j in itertools.product(range(h), range(w)):
            padded[pad0 + i * up, pad0 + j * up] = x[n, ch, i, j]  # zero insertion, then padding
        for oi, oj in itertools.product(range(out.shape[2]), range(out.shape[3])):
            yi, yj = oi * down, oj * down  # decimation of the full-rate filtered signal
            acc = 0.0
            for a, bb in itertools.product(range(size), range(size)):  # convolution: the kernel flipped
                acc += padded[yi + a, yj + bb] * k[size - 1 - a, size - 1 - bb]
            out[n, ch, oi, oj] = acc
    return out


FIR_SHAPES = [(2, 3, 6, 10), (1, 5, 7, 5)]  # odd channel counts, non-square, an odd side


@pytest.mark.parametrize("shape", FIR_SHAPES)
@pytest.mark.parametrize("taps", [FIR_TAPS, (1.0, 2.0, 5.0, 3.0)])  # the official kernel; an asymmetric one
def test_fir_resampling_equals_upfirdn2d_by_loops(shape, taps):
    """FIR up/down (score_sde upsample_2d / downsample_2d, factor 2, gain 1) == upfirdn2d written as loops.
    The asymmetric kernel pins the convolution's orientation (invisible with [1, 3, 3, 1])."""
    x = torch.randn(*shape, generator=gen(0), dtype=torch.float64)
    k = fir_kernel(taps).double()
    up, down = fir_upsample(x, k), fir_downsample(x, k)
    b, c, h, w = shape
    assert up.shape == (b, c, 2 * h, 2 * w) and down.shape == (b, c, h // 2, w // 2)
    torch.testing.assert_close(up, torch.from_numpy(_upfirdn2d_loops(x.numpy(), taps, 2, 1, 1.0)))
    torch.testing.assert_close(down, torch.from_numpy(_upfirdn2d_loops(x.numpy(), taps, 1, 2, 1.0)))


def test_fir_resampling_keeps_a_constant_image_constant():
    """Gain: upsampling scales the kernel by factor^2 (zero insertion keeps 1 sample in 4), downsampling by 1;
    away from the zero-padded border a constant stays that constant. The official kernel sums to 1."""
    k = fir_kernel()
    assert k.shape == (4, 4) and float(k.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(k, torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)
    x = torch.full((1, 3, 8, 12), 0.7)
    up, down = fir_upsample(x, k), fir_downsample(x, k)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], torch.full_like(up[..., 1:-1, 1:-1], 0.7))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 0.7))
    assert float(up[0, 0, 0, 0]) < 0.7 and float(down[0, 0, 0, 0]) < 0.7  # the border sees the zero padding


@pytest.mark.parametrize("resample", ["up", "down"])
def test_fir_resblock_filters_branch_and_skip(resample):
    """official ResnetBlockBigGANpp with fir: upsample_2d / downsample_2d on act(GroupNorm(x)) AND on the skip x;
    checked against the block written out with the loop reference."""
    torch.manual_seed(0)
    block = ResBlock(5, 5, temb_dim=8, dropout=0.0, resample=resample, fir=True).double().eval()
    with torch.no_grad():
        block.conv1.weight.normal_(0.0, 0.1)  # away from the near-zero init: the branch matters
    x, temb = torch.randn(2, 5, 6, 4, generator=gen(1), dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    up, down = (2, 1) if resample == "up" else (1, 2)

    def fir(v: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(_upfirdn2d_loops(v.detach().numpy(), FIR_TAPS, up, down, 1.0))

    with torch.no_grad():
        h = block.conv0(fir(F.silu(block.norm0(x)))) + block.dense(F.silu(temb))[:, :, None, None]
        h = block.conv1(F.silu(block.norm1(h)))
        want = (block.skip(fir(x)) + h) / math.sqrt(2.0)
        torch.testing.assert_close(block(x, temb), want)


def test_ncsnpp_fir_adds_no_state_and_changes_the_output():
    """--fir is a fixed kernel: the same parameters and state_dict keys (a checkpoint loads either way), and a
    different function (the resampling resblocks filter)."""
    cfg = ScoreNetConfig(nf=16, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[4])
    torch.manual_seed(0)
    plain = NCSNpp(cfg, 3, 8).eval()
    torch.manual_seed(0)
    fir = NCSNpp(ScoreNetConfig(**{**cfg.__dict__, "fir": True}), 3, 8).eval()
    assert sum(p.numel() for p in fir.parameters()) == sum(p.numel() for p in plain.parameters())
    state = plain.state_dict()
    assert list(fir.state_dict()) == list(state)
    assert all(fir.state_dict()[k].shape == v.shape for k, v in state.items())
    _perturb_zero_init(plain)
    fir.load_state_dict(plain.state_dict())  # strict: the same weights, only the resampling differs
    x, t = torch.randn(2, 3, 8, 8, generator=gen(1)), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        out_plain, out_fir = plain(x, t), fir(x, t)
    assert out_fir.shape == x.shape and torch.isfinite(out_fir).all()
    assert (out_fir - out_plain).abs().max() > 1e-3

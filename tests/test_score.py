"""The mixed Normal/neural score wrapper."""

import torch
from torch import nn

from lsgm.config import SDEConfig
from lsgm.score import MixedScore
from lsgm.diffusion.sde import make_sde


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, z, t):
        self.seen = z.clone()
        return torch.full_like(z, 2.0)


def test_mixture_formula_per_channel():
    sde = make_sde(SDEConfig())
    net = Recorder()
    model = MixedScore(net, sde, (3, 2, 2), mixing_logit_init=-3.0)
    with torch.no_grad():
        model.mixing_logit[0, :, 0, 0] = torch.tensor([-2.0, 0.0, 4.0])
    z, t = torch.randn(5, 3, 2, 2), torch.rand(5)
    alpha = torch.sigmoid(torch.tensor([-2.0, 0.0, 4.0]))[None, :, None, None]
    expected = (1 - alpha) * sde.var(t).sqrt()[:, None, None, None] * z + alpha * 2.0
    torch.testing.assert_close(model(z, t), expected)
    assert model.mixing_logit.shape == (1, 3, 1, 1)


def test_inactive_channels_are_normal_and_hidden_from_the_backbone():
    sde = make_sde(SDEConfig())
    net = Recorder()
    model = MixedScore(net, sde, (3, 2, 2), mixing_logit_init=5.0)
    model.set_active(torch.tensor([True, False, True]))
    z, t = torch.randn(4, 3, 2, 2), torch.rand(4)
    out = model(z, t)
    assert torch.all(net.seen[:, 1] == 0)
    torch.testing.assert_close(out[:, 1], sde.var(t).sqrt()[:, None, None] * z[:, 1])
    assert model.alpha[0, 1].item() == 0.0 and model.alpha[0, 0].item() > 0.99
    assert "active" in model.state_dict()


def test_unmixed_ablation_returns_the_network_output():
    model = MixedScore(Recorder(), make_sde(SDEConfig()), (3, 2, 2), mixed=False)
    out = model(torch.randn(2, 3, 2, 2), torch.rand(2))
    torch.testing.assert_close(out, torch.full((2, 3, 2, 2), 2.0))


def test_works_for_latents_of_any_rank():
    model = MixedScore(Recorder(), make_sde(SDEConfig()), (4,))
    assert model(torch.randn(3, 4), torch.rand(3)).shape == (3, 4)


def test_mixed_score_and_loss_stay_fp32_under_bf16_autocast():
    """Item 5: (1 - alpha) sigma_t z_t + alpha eps' and the squared error are computed in fp32 under autocast
    (bf16 rounding of the mixture was ~3 decimal digits)."""
    from lsgm.config import ScoreNetConfig
    from lsgm.nets.ncsnpp import NCSNpp
    from lsgm.diffusion.objectives import denoising_l2

    torch.manual_seed(0)
    sde = make_sde(SDEConfig())
    score = MixedScore(NCSNpp(ScoreNetConfig(nf=8, ch_mult=[1]), 4, 4), sde, (4, 4, 4), mixing_logit_init=0.0)
    z, t = torch.randn(3, 4, 4, 4), torch.rand(3) * 0.9 + 0.05
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eps = score(z, t)
        net = score.backbone(z, t)
        l2 = denoising_l2(z, score, sde, t, torch.randn_like(z))
    assert net.dtype == torch.bfloat16  # the network itself runs in bf16 ...
    assert eps.dtype == torch.float32 and l2.dtype == torch.float32  # ... its mixture and the loss do not
    alpha = torch.sigmoid(score.mixing_logit)
    expected = (1 - alpha) * sde.var(t).sqrt()[:, None, None, None] * z + alpha * net.float()
    torch.testing.assert_close(eps, expected, rtol=1e-6, atol=1e-6)


def test_noise_conditioned_feeds_log_sigma_and_pixel_spaces_round_trip():
    from lsgm.score import NoiseConditioned, condition, to_model_space, to_unit
    from lsgm.diffusion.sde import VESDE

    seen = {}

    class Record(torch.nn.Module):
        def forward(self, x, t):
            seen["t"] = t
            return x

    sde = VESDE(0.01, 50.0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    NoiseConditioned(Record(), sde)(torch.zeros(3, 1, 2, 2, dtype=torch.float64), t)
    torch.testing.assert_close(seen["t"], torch.log(0.01 * (50.0 / 0.01) ** t))
    backbone = Record()
    assert condition(backbone, sde, "t") is backbone and isinstance(condition(backbone, sde, "log_sigma"), NoiseConditioned)
    x = torch.rand(4, 3)
    for centered in (True, False):
        torch.testing.assert_close(to_unit(to_model_space(x, centered), centered), x)
    torch.testing.assert_close(to_model_space(x, True), 2 * x - 1)
    torch.testing.assert_close(to_model_space(x, False), x)


class Zero(nn.Module):
    """eps' = 0: the mixed score at initialisation (the real output layer starts at gain 1e-5)."""

    def forward(self, z, t):
        return torch.zeros_like(z)


import math  # noqa: E402

import pytest  # noqa: E402

from lsgm.diffusion.sampling import ode_sample  # noqa: E402
from lsgm.score import initial_latent_scale  # noqa: E402


@pytest.mark.parametrize("sde_cfg", [SDEConfig(type="vpsde"), SDEConfig(type="geometric", sigma2_min=3e-5,
                                                                          sigma2_max=0.999)])
def test_the_initial_mixed_score_samples_a_rescaled_normal(sde_cfg):
    """Closed form: at eps' = 0 the probability-flow ODE maps z_1 to (m(t_eps)/m(1))^alpha z_1 per channel (the
    sample-quality control draws N(0, tau^2 I) with this tau); an inactive channel (alpha 0) keeps N(0, I)."""
    sde = make_sde(sde_cfg)
    model = MixedScore(Zero(), sde, (3, 2, 2), mixing_logit_init=-3.0)
    model.set_active(torch.tensor([True, False, True]))
    z1 = torch.randn(6, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z0 = ode_sample(model, sde, z1.shape, 1e-5, rtol=1e-9, atol=1e-9, z1=z1).z0
    alpha = model.alpha.detach().flatten()
    tau = initial_latent_scale(alpha, sde, 1e-5)
    torch.testing.assert_close(z0, z1 * tau.reshape(1, 3, 1, 1), rtol=1e-6, atol=1e-8)
    assert tau[1] == 1.0 and tau[0] > 1.0


def test_the_vpsde_initial_prior_is_wider_by_1_27():
    """The VPSDE (beta 0.1 .. 20) at mixing logit -3: tau = exp(sigmoid(-3) int_0^1 beta / 2) = 1.269, the latent
    inflation behind the quick LSGMs' sample-quality gain at initialisation."""
    sde = make_sde(SDEConfig(type="vpsde"))
    alpha = torch.sigmoid(torch.tensor([-3.0], dtype=torch.float64))
    integral = 0.1 * (1 - 1e-5) + 0.5 * (20.0 - 0.1) * (1 - 1e-10)
    want = math.exp(float(alpha) * integral / 2)
    assert float(initial_latent_scale(alpha, sde, 1e-5)) == pytest.approx(want, rel=1e-9)
    assert want == pytest.approx(1.269, abs=1e-3)

"""``lsgm import-official``: NVlabs/LSGM checkpoints -> this harness's model.pt.

The official state dicts are built HERE, independently of lsgm.official.importer: ``OfficialLayout`` walks the
official constructors (nvae.NVAE: stem, pre_process, enc_tower with its combiners and down cells,
progressive_input_cells, enc_sampler, nf_cells, eps_conv, dec_tower, post_process, image_conditional;
score_sde.ncsnpp.NCSNpp: mixing_logit and the flat all_modules list) in their registration order, naming every
official tensor with its shape and, for each, the key of this project's model it must land in. Every tensor gets
distinct random values, so a key that lands in the wrong place (a swapped combiner, a transposed NIN, a
mis-ordered flow) is caught by value. The mixture-of-logistics head (whose channels are reordered) and the
attention block (whose four NIN matrices become a fused conv) are checked by computing the official layer's
output from the official tensors, written out here, against ours.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lsgm.official import importer as oi
from lsgm import recipes
from lsgm.eval.common import load_run

TEMB_MULT = 4


# ----------------------------------------------------------------------------------------------- official layout
class OfficialLayout:
    """Official state-dict keys -> (shape, our key, transform of the official tensor into ours)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[tuple[int, ...], str | None]] = {}
        self.aliases: dict[str, str] = {}  # official key -> official key holding the same Parameter
        self.special: dict[str, tuple[tuple[str, ...], callable]] = {}  # our key <- fn(official tensors)

    def put(self, key: str, shape, ours: str | None) -> None:
        assert key not in self.entries, key
        self.entries[key] = (tuple(shape), ours)

    # official layers ---------------------------------------------------------------------------------------
    def wn_conv(self, off, ours, cin, cout, k, bias=True, groups=1):
        """layers.neural_operations.Conv2D (weight-normalised): weight, bias, log_weight_norm [C_out, 1, 1, 1]."""
        self.put(f"{off}.weight", (cout, cin // groups, k, k), f"{ours}.weight")
        if bias:
            self.put(f"{off}.bias", (cout,), f"{ours}.bias")
        self.put(f"{off}.log_weight_norm", (cout, 1, 1, 1), f"{ours}.log_weight_norm")

    def plain_conv(self, off, ours, cin, cout, k, groups=1):
        """Conv2D(weight_norm=False, bias=False): its __init__ stores the weight Parameter again as
        ``weight_normalized``, so the state dict carries it twice."""
        self.put(f"{off}.weight", (cout, cin // groups, k, k), f"{ours}.weight")
        self.put(f"{off}.weight_normalized", (cout, cin // groups, k, k), None)
        self.aliases[f"{off}.weight_normalized"] = f"{off}.weight"

    def bn(self, off, ours, c):
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.put(f"{off}.{name}", (c,), f"{ours}.{name}")
        self.put(f"{off}.num_batches_tracked", (), f"{ours}.num_batches_tracked")

    def linear(self, off, ours, cin, cout):
        self.put(f"{off}.weight", (cout, cin), f"{ours}.weight")
        self.put(f"{off}.bias", (cout,), f"{ours}.bias")

    def group_norm(self, off, ours, c):
        self.put(f"{off}.weight", (c,), f"{ours}.weight")
        self.put(f"{off}.bias", (c,), f"{ours}.bias")

    def conv(self, off, ours, cin, cout, k):
        """torch nn.Conv2d with bias (score_sde conv1x1 / conv3x3)."""
        self.put(f"{off}.weight", (cout, cin, k, k), f"{ours}.weight")
        self.put(f"{off}.bias", (cout,), f"{ours}.bias")

    # NVAE cells ---------------------------------------------------------------------------------------------
    def cell(self, off, ours, cin, cout, stride, kind, se):
        """layers.cells.Cell: skip (FactorizedReduce conv_1..4 down, Sequential(UpSample, Conv2D) up), _ops, se."""
        if stride == 2:
            for i, n in enumerate([cout // 4] * 3 + [cout - 3 * (cout // 4)]):
                self.wn_conv(f"{off}.skip.conv_{i + 1}", f"{ours}.skip.convs.{i}", cin, n, 1)
        elif stride == -1:
            self.wn_conv(f"{off}.skip.1", f"{ours}.skip.conv", cin, cout, 1, bias=False)
        if kind == "bnswish":  # two BNSwishConv ops: bn_act, conv_0 (3x3, bias)
            for i, c in enumerate((cin, cout)):
                self.bn(f"{off}._ops.{i}.bn_act", f"{ours}.branch.{i}.bn", c)
                self.wn_conv(f"{off}._ops.{i}.conv_0", f"{ours}.branch.{i}.conv", c, cout, 3)
        else:  # InvertedResidual: conv = Sequential([UpsamplingNearest2d], BN, ConvBNSwish, ConvBNSwish, Conv2D, BN)
            hidden, seq = round(cin * int(kind[-1])), f"{off}._ops.0.conv"
            u = 1 if stride == -1 else 0
            self.bn(f"{seq}.{u}.bn", f"{ours}.branch.net.0", cin)
            self.plain_conv(f"{seq}.{u + 1}.conv.0", f"{ours}.branch.net.1", cin, hidden, 1)
            self.bn(f"{seq}.{u + 1}.conv.1", f"{ours}.branch.net.2", hidden)
            self.plain_conv(f"{seq}.{u + 2}.conv.0", f"{ours}.branch.net.4", hidden, hidden, 5, groups=hidden)
            self.bn(f"{seq}.{u + 2}.conv.1", f"{ours}.branch.net.5", hidden)
            self.plain_conv(f"{seq}.{u + 3}", f"{ours}.branch.net.7", hidden, cout, 1)
            self.bn(f"{seq}.{u + 4}.bn", f"{ours}.branch.net.8", cout)
        if se:
            hid = max(cout // 16, 4)
            self.linear(f"{off}.se.se.0", f"{ours}.se.mlp.0", cout, hid)
            self.linear(f"{off}.se.se.2", f"{ours}.se.mlp.2", hid, cout)


def official_nvae(a: dict) -> OfficialLayout:
    """The official NVAE state layout for train_vae.py args ``a``, each key with our destination key."""
    lay = OfficialLayout()
    width = lambda level: a["num_channels_enc"] * a["channel_mult"][level]
    img = 1 if a["dataset"] in ("mnist", "omniglot") else 3
    se, L, G, nz = a["use_se"], a["num_latent_scales"], a["num_groups_per_scale"], a["num_latent_per_group"]
    dec = "bnswish" if a["arch_instance"] == "res_bnswish" else "mbconv6"
    post = "bnswish" if a["arch_instance"] == "res_bnswish" else "mbconv3"
    top = a["num_preprocess_blocks"] + L - 1
    size = 32 // 2**top
    lay.put("prior_ftr0", (width(top), size, size), "prior_ftr0")
    lay.wn_conv("stem", "stem", img, width(0), 3)
    lev, i = 0, 0
    for _ in range(a["num_preprocess_blocks"]):
        for c in range(a["num_preprocess_cells"]):
            down = c == a["num_preprocess_cells"] - 1
            lay.cell(f"pre_process.{i}", f"pre.{i}", width(lev), width(lev + down), 2 if down else 1, "bnswish", se)
            lev, i = lev + down, i + 1
    # encoder (finest scale first); encoder group j's combiner is read by decoder group N-1-j, ours enc_combiners[g-1]
    n, idx, j, skips = L * G, 0, 0, []
    for s in range(L):
        scale_in = width(lev)
        for _ in range(G):
            for c in range(a["num_cell_per_cond_enc"]):
                lay.cell(f"enc_tower.{idx}", f"enc_groups.{j}.{c}", width(lev), width(lev), 1, "bnswish", se)
                idx += 1
            if j < n - 1:
                lay.wn_conv(f"enc_tower.{idx}.conv", f"enc_combiners.{n - 1 - j - 1}.conv", width(lev), width(lev), 1)
                idx += 1
            j += 1
        if s < L - 1:
            lay.cell(f"enc_tower.{idx}", f"enc_down.{s}", width(lev), width(lev + 1), 2, "bnswish", se)
            idx += 1
            skips.append((scale_in, width(lev + 1)))
            lev += 1
    if a["progressive_input_vae"] == "input_skip":  # InputSkipCombinerCell after each down cell: a strided BNSwishConv
        for s, (cin, cout) in enumerate(skips):
            lay.bn(f"progressive_input_cells.{s}.conv.bn_act", f"input_skips.{s}.bn", cin)
            lay.wn_conv(f"progressive_input_cells.{s}.conv.conv_0", f"input_skips.{s}.conv", cin, cout, 3)
    # samplers, flows and eps convs per decoder group (top scale first), three separate official ModuleLists
    for g in range(n):
        lay.wn_conv(f"enc_sampler.{g}.1", f"posteriors.{g}.1", width(top - g // G), 2 * nz, 3)
    for g in range(n):
        for f in range(a["num_nf"]):
            for cell in ("cell1", "cell2"):
                off, ours = f"nf_cells.{g * a['num_nf'] + f}.{cell}", f"flows.{g}.{f}.{cell}"
                lay.wn_conv(f"{off}.conv.convz.0", f"{ours}.hidden.0", nz, 6 * nz, 3, bias=False)
                lay.wn_conv(f"{off}.conv.convz.2", f"{ours}.hidden.2", 6 * nz, 6 * nz, 5, bias=False, groups=6 * nz)
                lay.wn_conv(f"{off}.mu.conv_0", f"{ours}.mu.1", 6 * nz, nz, 1)
    for g in range(n):
        lay.wn_conv(f"eps_conv.{g}", f"eps_convs.{g}", nz, nz, 3)
    # decoder (top scale first): combiner, cells; an up cell between scales
    idx, g = 0, 0
    for s in range(L):
        lev = top - s
        for _ in range(G):
            lay.wn_conv(f"dec_tower.{idx}.conv", f"dec_combiners.{g}.conv", width(lev) + nz, width(lev), 1)
            idx += 1
            for c in range(a["num_cell_per_cond_dec"]):
                lay.cell(f"dec_tower.{idx}", f"dec_groups.{g}.{c}", width(lev), width(lev), 1, dec, se)
                idx += 1
            g += 1
        if s < L - 1:
            lay.cell(f"dec_tower.{idx}", f"dec_up.{s}", width(lev), width(lev - 1), -1, dec, se)
            idx += 1
    lev, i = top - L + 1, 0
    for _ in range(a["num_postprocess_blocks"]):
        for c in range(a["num_postprocess_cells"]):
            up = c == 0
            lay.cell(f"post_process.{i}", f"post.{i}", width(lev), width(lev - up), -1 if up else 1, post, se)
            lev, i = lev - up, i + 1
    if a["decoder_dist"] == "bin":
        lay.wn_conv("image_conditional.1", "head.1", width(0), 1, 3)
    else:  # 100 mixture-of-logistics channels, reordered here: checked functionally (test_..._dml_head_...)
        lay.put("image_conditional.1.weight", (100, width(0), 3, 3), "head.1.*")
        lay.put("image_conditional.1.bias", (100,), "head.1.*")
        lay.put("image_conditional.1.log_weight_norm", (100, 1, 1, 1), "head.1.*")
    return lay


def official_ncsnpp(b: dict, latent_channels: int, resolution: int) -> OfficialLayout:
    """The official NCSN++ (score_sde/ncsnpp.py, biggan resblocks, no progressive paths) state layout."""
    lay = OfficialLayout()
    nf, e, mult = b["num_channels_dae"], b["embedding_dim"], recipes.SCORE_CH_MULT[(b["dataset"], b["num_scales_dae"])]
    temb, nres, counter = TEMB_MULT * b["embedding_dim"], b["num_cell_per_scale_dae"], iter(range(1000))
    nxt = lambda: f"all_modules.{next(counter)}"

    def resblock(ours, cin, cout, resample=False):
        off = nxt()
        lay.group_norm(f"{off}.GroupNorm_0", f"{ours}.norm0", cin)
        lay.conv(f"{off}.Conv_0", f"{ours}.conv0", cin, cout, 3)
        lay.linear(f"{off}.Dense_0", f"{ours}.dense", temb, cout)
        lay.group_norm(f"{off}.GroupNorm_1", f"{ours}.norm1", cout)
        lay.conv(f"{off}.Conv_1", f"{ours}.conv1", cout, cout, 3)
        if cin != cout or resample:
            lay.conv(f"{off}.Conv_2", f"{ours}.skip", cin, cout, 1)

    def attn(ours, c):
        off = nxt()
        lay.group_norm(f"{off}.GroupNorm_0", f"{ours}.norm", c)
        for i in range(4):  # NIN: W [in, out], b [out]; checked by value through the special rules
            lay.put(f"{off}.NIN_{i}.W", (c, c), None)
            lay.put(f"{off}.NIN_{i}.b", (c,), None)
        lay.special[f"{ours}.qkv.weight"] = (tuple(f"{off}.NIN_{i}.W" for i in range(3)),
                                             lambda q, k, v: torch.cat([q.T, k.T, v.T])[:, :, None, None])
        lay.special[f"{ours}.qkv.bias"] = (tuple(f"{off}.NIN_{i}.b" for i in range(3)), lambda *bs: torch.cat(bs))
        lay.special[f"{ours}.out.weight"] = ((f"{off}.NIN_3.W",), lambda w: w.T[:, :, None, None])
        lay.special[f"{ours}.out.bias"] = ((f"{off}.NIN_3.b",), lambda b_: b_)

    lay.put("mixing_logit", (1, latent_channels, 1, 1), "mixing_logit")
    lay.linear(nxt(), "backbone.temb_mlp.0", e, temb)
    lay.linear(nxt(), "backbone.temb_mlp.2", temb, temb)
    lay.conv(nxt(), "backbone.conv_in", latent_channels, nf, 3)
    skips, cin = [nf], nf
    for level, m in enumerate(mult):
        for i in range(nres):
            resblock(f"backbone.down.{level}.blocks.{i}", cin, nf * m)
            cin = nf * m
            if resolution // 2**level == 16:
                attn(f"backbone.down.{level}.attns.{i}", cin)
            skips.append(cin)
        if level < len(mult) - 1:
            resblock(f"backbone.down.{level}.resample", cin, cin, resample=True)
            skips.append(cin)
    resblock("backbone.mid.0", cin, cin)
    attn("backbone.mid.1", cin)
    resblock("backbone.mid.2", cin, cin)
    for j, level in enumerate(reversed(range(len(mult)))):
        for i in range(nres + 1):
            resblock(f"backbone.up.{j}.blocks.{i}", cin + skips.pop(), nf * mult[level])
            cin = nf * mult[level]
        if resolution // 2**level == 16:
            attn(f"backbone.up.{j}.attns.0", cin)
        if level > 0:
            resblock(f"backbone.up.{j}.resample", cin, cin, resample=True)
    lay.group_norm(f"{nxt()}", "backbone.norm_out", cin)
    lay.conv(nxt(), "backbone.conv_out", cin, latent_channels, 3)
    return lay


def fill(lay: OfficialLayout, seed: int) -> dict:
    """Distinct values for every official tensor; aliases share their target's tensor (as in a real file)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, (shape, _) in lay.entries.items():
        if key in lay.aliases:
            continue
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.randint(1, 10**6, (), generator=g)
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        else:
            sd[key] = 0.3 * torch.randn(shape, generator=g)
    for alias, target in lay.aliases.items():
        sd[alias] = sd[target]
    return dict(sorted(sd.items(), key=lambda kv: list(lay.entries).index(kv[0])))  # registration order


# ----------------------------------------------------------------------------------------------- configs
EXTRAS = {"data": "/data", "root": "/ckpt", "save": "/ckpt/exp", "distributed": False, "global_rank": 0,
          "local_rank": 0, "num_total_iter": 100}  # what the official scripts add to args at run time

STAGE1 = {"dataset": "cifar10", "num_channels_enc": 10, "num_channels_dec": 10, "channel_mult": [1, 2, 3],
          "num_preprocess_blocks": 1, "num_postprocess_blocks": 1, "num_preprocess_cells": 2,
          "num_postprocess_cells": 2, "num_latent_scales": 2, "num_groups_per_scale": 2, "num_latent_per_group": 3,
          "num_nf": 1, "progressive_input_vae": "input_skip", "arch_instance": "res_mbconv", "use_se": True}
STAGE2_VAE = {"dataset": "cifar10", "num_channels_enc": 8, "num_channels_dec": 8, "channel_mult": [1, 2],
              "num_preprocess_blocks": 1, "num_postprocess_blocks": 1, "num_preprocess_cells": 1,
              "num_postprocess_cells": 1, "num_latent_scales": 1, "num_groups_per_scale": 2,
              "num_latent_per_group": 4, "arch_instance": "res_bnswish", "use_se": False, "num_cell_per_cond_enc": 2}
STAGE2 = {"dataset": "cifar10", "num_channels_dae": 8, "num_scales_dae": 3, "num_cell_per_scale_dae": 1,
          "embedding_dim": 8, "embedding_scale": 1000.0, "fir": True, "dae_arch": "ncsnpp", "use_se": False,
          "ema_decay": 0.9999, "sde_type": "vpsde", "iw_sample_p": "drop_all_iw", "train_vae": True,
          "mixing_logit_init": -3.0, "mixed_prediction": True, "vae_checkpoint": "/ckpt/vae/checkpoint.pt"}


def stage1_args(over: dict) -> dict:
    return {**recipes.official()["parser_defaults"]["train_vae"], **EXTRAS, **over}


def stage2_args() -> dict:
    """train_vada.py args: its parser's, plus the VAE architecture fields override_architecture_fields copied."""
    vae = stage1_args(STAGE2_VAE)
    return {**recipes.official()["parser_defaults"]["train_vada"], **EXTRAS, **STAGE2,
            **{f: vae[f] for f in oi.ARCH_FIELDS}}


def save_stage1(path: Path, args: dict, vae_sd: dict) -> Path:
    torch.save({"epoch": 3, "global_step": 300, "args": argparse.Namespace(**args), "vae_state_dict": vae_sd,
                "vae_optimizer": {"state": {}, "param_groups": [{"params": [], "lr": 0.01}]},
                "grad_scalar": {"scale": 1024.0}, "best_score": 1.5,
                "sn_calculator": {"sr_u": {torch.Size([4, 9]): torch.ones(2, 4)}, "sr_v": {}}}, path)
    return path


def stage2_blob(seed: int = 3):
    a = stage2_args()
    vae_lay = official_nvae(stage1_args(STAGE2_VAE))
    latent, res = STAGE2_VAE["num_groups_per_scale"] * STAGE2_VAE["num_latent_per_group"], 16
    dae_lay = official_ncsnpp(a, latent, res)
    dae = fill(dae_lay, seed)
    g = torch.Generator().manual_seed(seed + 1)
    emas = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in dae.items()}
    opt = {"state": {i: {"step": torch.tensor(5.0), "exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v),
                         "ema": emas[k]} for i, (k, v) in enumerate(dae.items())},
           "param_groups": [{"lr": 1e-4, "eps": 1e-4, "params": list(range(len(dae)))}]}
    blob = {"epoch": 2, "global_step": 77, "args": argparse.Namespace(**a), "vae_state_dict": fill(vae_lay, seed + 2),
            "dae_state_dict": dae, "dae_optimizer": opt, "grad_scalar": {"scale": 1024.0}}
    return blob, vae_lay, dae_lay, emas


# ----------------------------------------------------------------------------------------------- checks
def check_landed(lay: OfficialLayout, official: dict, ours: dict) -> None:
    """Every official tensor is in its place in ours (by value), and every key of ours got an official value."""
    filled = set()
    for key, (_, dest) in lay.entries.items():
        if dest is None or dest.endswith(".*"):
            continue
        assert torch.equal(ours[dest].to(official[key].dtype), official[key]), f"{key} -> {dest}"
        filled.add(dest)
    for dest, (sources, fn) in lay.special.items():
        assert torch.allclose(ours[dest], fn(*(official[s] for s in sources))), dest
        filled.add(dest)
    functional = {d[:-2] for _, d in lay.entries.values() if d and d.endswith(".*")}  # checked numerically
    left = [k for k in ours if k not in filled and not oi.is_fresh_buffer(k) and k != "active"
            and k.rsplit(".", 1)[0] not in functional]
    assert not left, left


def official_dml_mean_and_logp(logits: torch.Tensor, x: torch.Tensor, m: int, levels: int):
    """The official mixture of logistics, written out: [M mixture logits], then per row k = 0..2 of
    view(B, 3, 3M, H, W): M means, M log-scales (clamped at -7), M tanh coupling coefficients; x in [-1, 1]."""
    b, _, h, w = logits.shape
    pi = logits[:, :m]
    rows = logits[:, m:].reshape(b, 3, 3 * m, h, w)
    mu, log_s, co = rows[:, :, :m], rows[:, :, m:2 * m].clamp(min=-7.0), torch.tanh(rows[:, :, 2 * m:])
    sel = torch.softmax(pi, 1).unsqueeze(1)
    mm, cc = (mu * sel).sum(2), (co * sel).sum(2)
    x0 = mm[:, 0].clamp(-1, 1)
    x1 = (mm[:, 1] + cc[:, 0] * x0).clamp(-1, 1)
    x2 = (mm[:, 2] + cc[:, 1] * x0 + cc[:, 2] * x1).clamp(-1, 1)
    mean = (torch.stack([x0, x1, x2], 1) + 1) / 2
    xs = x.unsqueeze(2)  # (B, 3, 1, H, W)
    means = torch.stack([mu[:, 0], mu[:, 1] + co[:, 0] * xs[:, 0],
                         mu[:, 2] + co[:, 1] * xs[:, 0] + co[:, 2] * xs[:, 1]], 1)
    centred, inv = xs - means, torch.exp(-log_s)
    half = 1.0 / (levels - 1)
    cdf_plus, cdf_min = torch.sigmoid(inv * (centred + half)), torch.sigmoid(inv * (centred - half))
    logp = torch.where(xs < -0.999, torch.log(cdf_plus), torch.where(xs > 0.999, torch.log1p(-cdf_min),
                                                                    torch.log(cdf_plus - cdf_min)))
    logp = torch.logsumexp(logp.sum(1) + F.log_softmax(pi, 1), dim=1)
    return mean, logp


def official_attention(x, gn_w, gn_b, ws, bs):
    """The official AttnBlockpp on x [B, C, H, W]: GroupNorm, NIN q/k/v (y = x W + b per pixel), softmax over the
    key pixels of q.k / sqrt(C), values, NIN output projection, (x + h) / sqrt(2)."""
    b, c, h, w = x.shape
    hn = F.group_norm(x, max(min(c // 4, 32), 1), gn_w, gn_b, eps=1e-6)
    nin = lambda t, W, bias: torch.einsum("bchw,cd->bdhw", t, W) + bias[None, :, None, None]
    q, k, v = (nin(hn, ws[i], bs[i]) for i in range(3))
    att = torch.einsum("bchw,bcij->bhwij", q, k) * c**-0.5
    att = torch.softmax(att.reshape(b, h, w, h * w), dim=-1).reshape(b, h, w, h, w)
    out = nin(torch.einsum("bhwij,bcij->bchw", att, v), ws[3], bs[3])
    return (x + out) / math.sqrt(2.0)


# ----------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s1")
    args = stage1_args(STAGE1)
    lay = official_nvae(args)
    sd = fill(lay, 0)
    ckpt = save_stage1(tmp / "checkpoint.pt", args, sd)
    return ckpt, lay, sd, oi.import_checkpoint(ckpt)


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s2")
    blob, vae_lay, dae_lay, emas = stage2_blob()
    torch.save(blob, tmp / "checkpoint.pt")
    return tmp / "checkpoint.pt", blob, vae_lay, dae_lay, emas, oi.import_checkpoint(tmp / "checkpoint.pt")


def test_stage1_every_official_tensor_lands_in_its_place(stage1):
    _, lay, sd, model = stage1
    assert model["config"]["kind"] == "vae" and model["status"] == "completed" and model["step"] == 300
    cfg = model["config"]["vae"]
    assert (cfg["num_nf"], cfg["progressive_input"], cfg["num_latent_scales"]) == (1, "input_skip", 2)
    check_landed(lay, sd, model["state"]["vae"])
    meta = model["meta"]
    assert meta["imported"]["mapping_version"] == oi.MAPPING_VERSION and meta["official_args"]["num_nf"] == 1
    assert "global_rank" in meta["imported"]["ignored_args"] and meta["deviations"] == model["config"]["deviations"]
    assert any("sn_u" in d for d in model["config"]["deviations"])


def test_stage1_dml_head_matches_the_official_decoder_numerically(stage1):
    ckpt, _, sd, model = stage1
    torch.save(model, ckpt.with_name("model.pt"))
    run = load_run(ckpt.with_name("model.pt"))
    vae = run.vae
    feat = torch.randn(2, 10, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = vae.head(feat)
    w, lwn = sd["image_conditional.1.weight"], sd["image_conditional.1.log_weight_norm"]
    w_used = torch.exp(lwn) * w / (w.flatten(1).norm(dim=1)[:, None, None, None] + 1e-5)
    official = F.conv2d(F.elu(feat), w_used, sd["image_conditional.1.bias"], padding=1)
    x = torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(6)).float() / 255
    mean, logp = official_dml_mean_and_logp(official, 2 * x - 1, 10, 256)
    assert torch.allclose(vae.likelihood.mean(ours), mean, atol=1e-6)
    assert torch.allclose(vae.likelihood.log_prob_map(ours, x), logp, atol=1e-4)


def test_stage2_score_vae_and_ema_land_and_the_model_loads(stage2, tmp_path):
    path, blob, vae_lay, dae_lay, emas, model = stage2
    assert model["config"]["kind"] == "lsgm" and model["step"] == 77
    assert model["config"]["score"]["attn_resolutions"] == [16] and model["config"]["score"]["fir"] is True
    check_landed(vae_lay, blob["vae_state_dict"], model["state"]["vae"])
    check_landed(dae_lay, blob["dae_state_dict"], model["state"]["score"])
    check_landed(dae_lay, emas, model["ema"])  # EMA i of the optimizer belongs to the i-th dae parameter
    assert model["ema"]["active"].all() and model["meta"]["imported"]["ema_source"] == "dae_optimizer"
    # the CLI writes a model.pt that the evaluation loads, EMA applied
    out = tmp_path / "model.pt"
    assert oi.main([str(path), "--out", str(out)]) == 0
    run = load_run(out)
    assert run.ema and torch.equal(run.score.mixing_logit.detach(), emas["mixing_logit"])
    # checkpoint_fid.pt / checkpoint_nll.pt: no optimizer, the weights are the EMA already
    fid = {k: v for k, v in blob.items() if k not in ("dae_optimizer", "grad_scalar")}
    torch.save(fid, tmp_path / "checkpoint_fid.pt")
    m2 = oi.import_checkpoint(tmp_path / "checkpoint_fid.pt")
    assert m2["meta"]["imported"]["ema_source"] == "dae_state_dict"
    check_landed(dae_lay, blob["dae_state_dict"], m2["ema"])


def test_attention_mapping_reproduces_the_official_nin_attention(stage2):
    _, blob, _, dae_lay, _, model = stage2
    run_cfg = model["config"]
    from lsgm.config import RunConfig, from_dict
    from lsgm.score import build_score
    from lsgm.diffusion.sde import make_sde

    cfg = from_dict(RunConfig, run_cfg)
    score = build_score(cfg, (8, 16, 16), make_sde(cfg.sde))
    score.load_state_dict(model["state"]["score"])
    off = "all_modules.4"  # the first attention block: after the two temb Linears, conv_in, the first resblock
    assert f"{off}.NIN_0.W" in dae_lay.entries
    sd = blob["dae_state_dict"]
    x = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(9))
    want = official_attention(x, sd[f"{off}.GroupNorm_0.weight"], sd[f"{off}.GroupNorm_0.bias"],
                              [sd[f"{off}.NIN_{i}.W"] for i in range(4)], [sd[f"{off}.NIN_{i}.b"] for i in range(4)])
    with torch.no_grad():
        got = score.backbone.down[0].attns[0](x)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_extra_missing_or_misshaped_official_key_is_a_one_line_error(stage1, tmp_path):
    _, _, sd, _ = stage1
    args = stage1_args(STAGE1)
    cases = {
        "extra": ({**sd, "enc_tower.99.conv.weight": torch.zeros(1)}, "no mapping here: enc_tower.99.conv.weight"),
        "missing": ({k: v for k, v in sd.items() if k != "nf_cells.3.cell2.mu.conv_0.bias"},
                    "lacks 1 key(s) its args imply: nf_cells.3.cell2.mu.conv_0.bias"),
        "shape": ({**sd, "eps_conv.0.weight": torch.zeros(3, 3, 1, 1)}, "shape mismatch(es): eps_conv.0.weight"),
        "alias": ({**sd, "dec_tower.1._ops.0.conv.3.weight_normalized": torch.zeros(30, 180, 1, 1)},
                  "should duplicate dec_tower.1._ops.0.conv.3.weight"),
    }
    for name, (state, needle) in cases.items():
        ckpt = save_stage1(tmp_path / f"{name}.pt", args, state)
        with pytest.raises(oi.OfficialImportError) as info:
            oi.import_checkpoint(ckpt)
        msg = str(info.value)
        assert needle in msg and "\n" not in msg, (name, msg)
    # and through the CLI: exit 2, one line on stderr, no output file
    out = tmp_path / "model.pt"
    assert oi.main([str(tmp_path / "extra.pt"), "--out", str(out)]) == 2 and not out.exists()


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {_RunsCode.marker}",))


def test_checkpoint_with_other_pickled_globals_is_refused(tmp_path, capsys):
    _RunsCode.marker = tmp_path / "ran"
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"args": _RunsCode(), "vae_state_dict": {}}, ckpt)
    assert oi.main([str(ckpt), "--out", str(tmp_path / "model.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "was NOT loaded" in err and "\n" not in err and not (tmp_path / "ran").exists()
    # a plain argparse.Namespace is the one class allowed
    torch.save({"args": argparse.Namespace(dataset="cifar10"), "vae_state_dict": {}}, ckpt)
    assert oi.checkpoint_args(oi.load_official(ckpt), ckpt) == {"dataset": "cifar10"}


def test_stage2_vae_fields_come_from_the_args_or_vae_checkpoint(tmp_path):
    blob, *_ = stage2_blob()
    a = vars(blob["args"])
    lean = {k: v for k, v in a.items() if k not in ("num_nf", "channel_mult")}
    torch.save({**blob, "args": argparse.Namespace(**lean)}, tmp_path / "checkpoint.pt")
    with pytest.raises(oi.OfficialImportError, match="pass --vae-checkpoint"):
        oi.import_checkpoint(tmp_path / "checkpoint.pt")
    vae_ckpt = save_stage1(tmp_path / "vae.pt", stage1_args(STAGE2_VAE), {})
    model = oi.import_checkpoint(tmp_path / "checkpoint.pt", vae_checkpoint=vae_ckpt)
    assert model["config"]["vae"]["channel_mult"] == [1, 2]
    assert model["meta"]["imported"]["vae_fields_from_vae_checkpoint"] == ["channel_mult", "num_nf"]
    other = save_stage1(tmp_path / "other.pt", stage1_args({**STAGE2_VAE, "num_latent_per_group": 5}), {})
    with pytest.raises(oi.OfficialImportError, match="disagrees .* num_latent_per_group"):
        oi.import_checkpoint(tmp_path / "checkpoint.pt", vae_checkpoint=other)


def test_a_fourier_time_embedding_is_mapped_and_embeds_as_lsgms(tmp_path):
    """LSGM's RandomFourierEmbedding (``temb_fun.w`` [1, D/2], ``cat(sin, cos)(t (w 2 pi))``): mapped, not refused
    (the translation once refused every Fourier score network), and our embedding of it is LSGM's formula."""
    blob, _, _, _ = stage2_blob()
    args = vars(blob["args"])
    args.update(embedding_type="fourier", embedding_scale=16.0)
    w = torch.randn(1, args["embedding_dim"] // 2, generator=torch.Generator().manual_seed(9)) * 16.0
    blob["dae_state_dict"]["temb_fun.w"] = w
    blob.pop("dae_optimizer")
    torch.save(blob, tmp_path / "checkpoint_fid.pt")
    model = oi.import_checkpoint(tmp_path / "checkpoint_fid.pt")
    assert model["config"]["score"]["embedding_type"] == "fourier"
    torch.save(model, tmp_path / "model.pt")
    run = load_run(tmp_path / "model.pt")
    t = torch.tensor([1e-5, 0.3, 1.0])
    emb = t[:, None] @ (w * 2 * 3.14159265359)  # LSGM's forward, verbatim arithmetic
    torch.testing.assert_close(run.score.backbone.time_embed(t), torch.cat([torch.sin(emb), torch.cos(emb)], dim=1),
                               rtol=1e-5, atol=1e-4)
    blob["dae_state_dict"].pop("temb_fun.w")  # args say Fourier, the weights lack it: one line naming the key
    torch.save(blob, tmp_path / "no_w.pt")
    with pytest.raises(oi.OfficialImportError, match=r"lacks 1 key\(s\) its args imply: temb_fun\.w"):
        oi.import_checkpoint(tmp_path / "no_w.pt")

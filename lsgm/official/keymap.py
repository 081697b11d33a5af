"""The key-by-key map from an official NVlabs/LSGM state dict to this project's modules (:class:`KeyMap`), built by
walking our NVAE and NCSN++ in the order the official constructors register theirs, and its application
(:func:`convert_state`: every official key used once, every key of ours filled, shapes equal; the score EMA from the
official optimizer, :func:`ema_from_optimizer`). ``lsgm import-official`` (:mod:`lsgm.official.importer`) uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

SR_BUFFER_NAMES = ("sn_u", "sn_v")  # SRConv2d power-iteration vectors
SR_COUNTERS = ("sr_calls", "sr_counter.calls")  # NVAE / NCSNpp call counters
FIRST = 5  # keys listed in an error


class OfficialImportError(ValueError):
    """An official checkpoint that cannot be converted; the message (one line) says why."""


def _first(keys, n: int = FIRST) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# ----------------------------------------------------------------------------------------------- key map
@dataclass(frozen=True)
class Rule:
    """Our key ``ours`` gets ``fn(*official tensors at sources)`` (``fn`` None: the single source, unchanged)."""

    ours: str
    sources: tuple[str, ...]
    fn: Callable[..., torch.Tensor] | None = None
    why: str = ""
    inverse: Callable[[torch.Tensor], tuple] | None = None  # our tensor -> the official tensors (the writer's map)


class KeyMap:
    """Rules for one module (VAE or score), plus official alias keys that must equal another official key."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.aliases: list[tuple[str, str]] = []  # (official alias, official key it duplicates)

    def same(self, module: nn.Module, ours: str, off: str) -> None:
        """Every state entry of ``module`` (recursively) under the same relative name (SR buffers excepted)."""
        for name in module.state_dict():
            if name.rsplit(".", 1)[-1] in SR_BUFFER_NAMES:
                continue
            self.rules.append(Rule(f"{ours}.{name}", (f"{off}.{name}",)))

    def add(self, ours: str, sources: tuple[str, ...], fn=None, why: str = "", inverse=None) -> None:
        self.rules.append(Rule(ours, sources, fn, why, inverse))


def is_fresh_buffer(key: str) -> bool:
    """Our SR power-iteration state: no official counterpart, initialised fresh on import."""
    return key.rsplit(".", 1)[-1] in SR_BUFFER_NAMES or any(key == c or key.endswith("." + c) for c in SR_COUNTERS)


# ---- NVAE
def _plain_conv(km: KeyMap, conv: nn.Module, ours: str, off: str) -> None:
    """An official ``Conv2D(weight_norm=False)``: assigning its Parameter ``weight`` to ``self.weight_normalized``
    in ``__init__`` registers the same Parameter a second time, so its state dict carries
    ``weight_normalized`` as a duplicate of ``weight``."""
    km.same(conv, ours, off)
    km.aliases.append((f"{off}.weight_normalized", f"{off}.weight"))


def _cell_rules(km: KeyMap, cell: nn.Module, ours: str, off: str) -> None:
    """Our ``ResidualCell`` <- official ``layers.cells.Cell`` (skip, _ops, se)."""
    from lsgm.nets.layers import FactorizedReduce, MBConv, SqueezeExcite, UpSkip

    if isinstance(cell.skip, FactorizedReduce):  # official conv_1..conv_4 on the four pixel phases
        for i, conv in enumerate(cell.skip.convs):
            km.same(conv, f"{ours}.skip.convs.{i}", f"{off}.skip.conv_{i + 1}")
    elif isinstance(cell.skip, UpSkip):  # official Sequential(UpSample, Conv2D)
        km.same(cell.skip.conv, f"{ours}.skip.conv", f"{off}.skip.1")
    if isinstance(cell.branch, MBConv):  # official _ops.0 = InvertedResidual: conv = Sequential([Upsample], BN, ...)
        u = 1 if cell.branch.upsample else 0
        base = f"{off}._ops.0.conv"
        pairs = {0: f"{base}.{u}.bn", 1: f"{base}.{u + 1}.conv.0", 2: f"{base}.{u + 1}.conv.1",
                 4: f"{base}.{u + 2}.conv.0", 5: f"{base}.{u + 2}.conv.1", 7: f"{base}.{u + 3}",
                 8: f"{base}.{u + 4}.bn"}
        for idx, off_name in pairs.items():
            layer = cell.branch.net[idx]
            if isinstance(layer, nn.Conv2d):
                _plain_conv(km, layer, f"{ours}.branch.net.{idx}", off_name)
            else:
                km.same(layer, f"{ours}.branch.net.{idx}", off_name)
    else:  # res_bnswish: two official BNSwishConv ops (bn_act = BN + Swish, conv_0)
        for i, op in enumerate(cell.branch):
            km.same(op.bn, f"{ours}.branch.{i}.bn", f"{off}._ops.{i}.bn_act")
            km.same(op.conv, f"{ours}.branch.{i}.conv", f"{off}._ops.{i}.conv_0")
    if isinstance(cell.se, SqueezeExcite):
        km.same(cell.se.mlp[0], f"{ours}.se.mlp.0", f"{off}.se.se.0")
        km.same(cell.se.mlp[2], f"{ours}.se.mlp.2", f"{off}.se.se.2")


def dml_channel_order(channels: int, num_mix: int) -> list[int]:
    """For each logit channel of :class:`lsgm.nets.nvae.DiscMixLogistic` (``[M mix | C*M means | C*M log-scales |
    P*M coefficients]``), the official channel it is: official ``DiscMixLogistic`` reads ``[M mix]`` and then, per
    row k = 0..2, ``[M means | M log-scales | M coefficients]`` (``view(B, 3, 3M, H, W)``), where row k's
    coefficients are coupling k (k = 0: x0 -> ch1, 1: x0 -> ch2, 2: x1 -> ch2), our coefficient order too."""
    if channels != 3:
        raise OfficialImportError(f"the official mixture-of-logistics decoder is RGB only, got {channels} channels")
    m = num_mix
    order = list(range(m))
    order += [m + k * 3 * m + j for k in range(3) for j in range(m)]  # means
    order += [m + k * 3 * m + m + j for k in range(3) for j in range(m)]  # log-scales
    order += [m + k * 3 * m + 2 * m + j for k in range(3) for j in range(m)]  # coefficients
    return order


def nvae_keymap(vae: nn.Module) -> KeyMap:
    """Official ``nvae.NVAE`` state -> our :class:`lsgm.nets.nvae.NVAE` (built with the translated config)."""
    cfg, km = vae.cfg, KeyMap()
    km.same(vae.stem, "stem", "stem")
    km.add("prior_ftr0", ("prior_ftr0",))
    for i, cell in enumerate(vae.pre):
        _cell_rules(km, cell, f"pre.{i}", f"pre_process.{i}")
    # encoder tower, bottom-up as the official enc_tower list: per group its cells then a combiner (none after the
    # very last group), a down cell between scales; combiner of encoder group j serves decoder group N-1-j
    n_groups, per_scale, idx = vae.n_groups, cfg.num_groups_per_scale, 0
    for j in range(n_groups):
        for c, cell in enumerate(vae.enc_groups[j]):
            _cell_rules(km, cell, f"enc_groups.{j}.{c}", f"enc_tower.{idx}")
            idx += 1
        if j < n_groups - 1:
            km.same(vae.enc_combiners[n_groups - 2 - j], f"enc_combiners.{n_groups - 2 - j}", f"enc_tower.{idx}")
            idx += 1
        if (j + 1) % per_scale == 0 and (j + 1) // per_scale <= len(vae.enc_down):
            s = (j + 1) // per_scale - 1
            _cell_rules(km, vae.enc_down[s], f"enc_down.{s}", f"enc_tower.{idx}")
            idx += 1
    if vae.input_skips is not None:  # official InputSkipCombinerCell.conv = BNSwishConv(bn_act, conv_0)
        for s, skip in enumerate(vae.input_skips):
            km.same(skip.bn, f"input_skips.{s}.bn", f"progressive_input_cells.{s}.conv.bn_act")
            km.same(skip.conv, f"input_skips.{s}.conv", f"progressive_input_cells.{s}.conv.conv_0")
    # per decoder group (top first): posterior conv, flows (official flat nf_cells list), eps conv
    for g in range(n_groups):
        km.same(vae.posteriors[g][1], f"posteriors.{g}.1", f"enc_sampler.{g}.1")
        for n, flow in enumerate(vae.flows[g]):
            off = f"nf_cells.{g * cfg.num_nf + n}"
            for cell in ("cell1", "cell2"):
                ar = getattr(flow, cell)
                km.same(ar.hidden[0], f"flows.{g}.{n}.{cell}.hidden.0", f"{off}.{cell}.conv.convz.0")
                km.same(ar.hidden[2], f"flows.{g}.{n}.{cell}.hidden.2", f"{off}.{cell}.conv.convz.2")
                km.same(ar.mu[1], f"flows.{g}.{n}.{cell}.mu.1", f"{off}.{cell}.mu.conv_0")
        km.same(vae.eps_convs[g], f"eps_convs.{g}", f"eps_conv.{g}")
    # decoder tower, top-down as the official dec_tower list: combiner, cells, an up cell between scales
    idx = 0
    for g in range(n_groups):
        if g > 0 and g % per_scale == 0:
            s = g // per_scale - 1
            _cell_rules(km, vae.dec_up[s], f"dec_up.{s}", f"dec_tower.{idx}")
            idx += 1
        km.same(vae.dec_combiners[g], f"dec_combiners.{g}", f"dec_tower.{idx}")
        idx += 1
        for c, cell in enumerate(vae.dec_groups[g]):
            _cell_rules(km, cell, f"dec_groups.{g}.{c}", f"dec_tower.{idx}")
            idx += 1
    for i, cell in enumerate(vae.post):
        _cell_rules(km, cell, f"post.{i}", f"post_process.{i}")
    head, off = vae.head[1], "image_conditional.1"
    if vae.data.binary:
        km.same(head, "head.1", off)
    else:  # reorder the output channels to our mixture-of-logistics layout
        order = torch.tensor(dml_channel_order(vae.data.channels, cfg.num_mix))
        back = torch.argsort(order)
        for name in head.state_dict():
            if name not in SR_BUFFER_NAMES:
                km.add(f"head.1.{name}", (f"{off}.{name}",), lambda t, o=order: t[o],
                       "DML logit channels reordered", inverse=lambda t, b=back: (t[b],))
    return km


# ---- NCSN++
def nin_qkv(w_q, w_k, w_v):
    """Three official NIN weights (``W`` [in, out], ``y = x W + b``) -> our fused 1x1 conv weight [3C, C, 1, 1]
    (output channels: q, then k, then v)."""
    return torch.cat([w_q.t(), w_k.t(), w_v.t()], dim=0)[:, :, None, None]


def nin_conv(w):
    """One official NIN ``W`` [in, out] -> a 1x1 conv weight [out, in, 1, 1]."""
    return w.t()[:, :, None, None]


def _resblock_rules(km: KeyMap, block: nn.Module, ours: str, off: str) -> None:
    """Our ``ResBlock`` <- official ``ResnetBlockBigGANpp``."""
    pairs = {"norm0": "GroupNorm_0", "conv0": "Conv_0", "dense": "Dense_0", "norm1": "GroupNorm_1",
             "conv1": "Conv_1", "skip": "Conv_2"}
    for mine, theirs in pairs.items():
        layer = getattr(block, mine)
        if layer is not None:
            km.same(layer, f"{ours}.{mine}", f"{off}.{theirs}")


def _attn_rules(km: KeyMap, attn: nn.Module, ours: str, off: str) -> None:
    """Our ``AttnBlock`` (GroupNorm, fused qkv 1x1 conv, out 1x1 conv) <- official ``AttnBlockpp`` (GroupNorm_0,
    NIN_0..2 = q, k, v, NIN_3 = output projection)."""
    km.same(attn.norm, f"{ours}.norm", f"{off}.GroupNorm_0")
    km.add(f"{ours}.qkv.weight", tuple(f"{off}.NIN_{i}.W" for i in range(3)),
           nin_qkv, "NIN q,k,v fused, transposed", inverse=lambda w: tuple(p[:, :, 0, 0].t() for p in w.chunk(3)))
    km.add(f"{ours}.qkv.bias", tuple(f"{off}.NIN_{i}.b" for i in range(3)), lambda q, k, v: torch.cat([q, k, v]),
           inverse=lambda b: tuple(b.chunk(3)))
    km.add(f"{ours}.out.weight", (f"{off}.NIN_3.W",), nin_conv, "NIN transposed",
           inverse=lambda w: (w[:, :, 0, 0].t(),))
    km.add(f"{ours}.out.bias", (f"{off}.NIN_3.b",))


def ncsnpp_keymap(score: nn.Module) -> KeyMap:
    """Official ``score_sde.ncsnpp.NCSNpp`` (its ``mixing_logit`` and the flat ``all_modules`` list) -> our
    ``MixedScore(NCSNpp)``. ``all_modules`` order: two time-embedding Linears, the input conv, per level its
    resblocks (each followed by attention at the attention resolutions) and a down resblock (not after the last
    level), the middle Res-Attn-Res, per level (coarsest first) num_res_blocks + 1 resblocks, attention, an up
    resblock (not at the finest level), then the output GroupNorm and conv."""
    from lsgm.nets.ncsnpp import AttnBlock, FourierEmbedding

    km, net = KeyMap(), score.backbone
    km.add("mixing_logit", ("mixing_logit",))
    km.add("active", (), lambda: torch.ones_like(score.active), "official is_active is not saved: all active",
           inverse=lambda t: ())
    idx = iter(range(10**9))
    def om() -> str:  # the next official module's prefix
        return f"all_modules.{next(idx)}"

    if isinstance(net.time_embed, FourierEmbedding):  # LSGM's RandomFourierEmbedding: w [1, D/2], no all_modules slot
        km.add("backbone.time_embed.w", ("temb_fun.w",), lambda w: w.reshape(-1),
               "RandomFourierEmbedding.w [1, D/2] -> FourierEmbedding.w [D/2] (sin/cos(2 pi t w), the same map)",
               inverse=lambda w: (w.reshape(1, -1),))
    km.same(net.temb_mlp[0], "backbone.temb_mlp.0", om())
    km.same(net.temb_mlp[2], "backbone.temb_mlp.2", om())
    km.same(net.conv_in, "backbone.conv_in", om())
    for level, lv in enumerate(net.down):
        for i, (block, attn) in enumerate(zip(lv.blocks, lv.attns)):
            _resblock_rules(km, block, f"backbone.down.{level}.blocks.{i}", om())
            if isinstance(attn, AttnBlock):
                _attn_rules(km, attn, f"backbone.down.{level}.attns.{i}", om())
        if lv.resample is not None:
            _resblock_rules(km, lv.resample, f"backbone.down.{level}.resample", om())
    _resblock_rules(km, net.mid[0], "backbone.mid.0", om())
    _attn_rules(km, net.mid[1], "backbone.mid.1", om())
    _resblock_rules(km, net.mid[2], "backbone.mid.2", om())
    for j, lv in enumerate(net.up):
        for i, block in enumerate(lv.blocks):
            _resblock_rules(km, block, f"backbone.up.{j}.blocks.{i}", om())
        if isinstance(lv.attns[0], AttnBlock):
            _attn_rules(km, lv.attns[0], f"backbone.up.{j}.attns.0", om())
        if lv.resample is not None:
            _resblock_rules(km, lv.resample, f"backbone.up.{j}.resample", om())
    km.same(net.norm_out, "backbone.norm_out", om())
    km.same(net.conv_out, "backbone.conv_out", om())
    return km


# ---- applying a key map
def convert_state(km: KeyMap, official: dict, template: dict, what: str) -> dict:
    """Our state dict for a module whose fresh ``template`` state is given: every rule applied to ``official``.

    One-line errors: official keys the architecture needs but the checkpoint lacks, official keys without a
    mapping, our keys left unfilled (SR buffers excepted: they keep the template's fresh values), shape mismatches.
    """
    official = {k.removeprefix("module."): v for k, v in official.items()}
    used, out, missing, shapes = set(), {}, [], []
    for rule in km.rules:
        absent = [s for s in rule.sources if s not in official]
        if absent:
            missing += absent
            continue
        if rule.ours not in template:
            raise OfficialImportError(f"{what}: mapping names {rule.ours}, which this project's model does not have "
                                      "(the importer does not match this version of lsgm.nets)")
        value = rule.fn(*(official[s] for s in rule.sources)) if rule.fn else official[rule.sources[0]]
        want = template[rule.ours]
        if tuple(value.shape) != tuple(want.shape):
            src = "+".join(rule.sources) or "(constant)"
            shapes.append(f"{src} {list(value.shape)} -> {rule.ours} {list(want.shape)}")
            continue
        out[rule.ours] = value.detach().to(dtype=want.dtype).clone()
        used.update(rule.sources)
    if missing:
        raise OfficialImportError(f"{what}: the checkpoint lacks {len(missing)} key(s) its args imply: "
                                  f"{_first(missing)} (do the args describe these weights?)")
    if shapes:
        raise OfficialImportError(f"{what}: {len(shapes)} shape mismatch(es): {_first(shapes, 3)}")
    for alias, target in km.aliases:
        if alias in official:
            if target in official and torch.equal(official[alias], official[target]):
                used.add(alias)
            else:
                raise OfficialImportError(f"{what}: official {alias} should duplicate {target} but differs")
    extra = [k for k in official if k not in used]
    if extra:
        raise OfficialImportError(f"{what}: {len(extra)} official key(s) have no mapping here: {_first(extra)}")
    unfilled = [k for k in template if k not in out and not is_fresh_buffer(k)]
    if unfilled:
        raise OfficialImportError(f"{what}: {len(unfilled)} key(s) of this project's model get no official value: "
                                  f"{_first(unfilled)}")
    for k, fresh in template.items():
        if k not in out:
            out[k] = fresh.detach().clone()
    return out


def ema_from_optimizer(dae_state: dict, optimizer: dict | None, what: str = "score") -> dict | None:
    """The score network's EMA weights by official name, as ``EMA.swap_parameters_with_ema`` would swap them in:
    the optimizer's state is keyed by the parameter's position in ``dae.parameters()``, which is the order of
    ``dae_state_dict`` (the official NCSN++ registers no buffers). None when there is no EMA state at all
    (``--ema_decay 0``: the official evaluation then uses the raw weights)."""
    if not isinstance(optimizer, dict) or "state" not in optimizer or "param_groups" not in optimizer:
        return None
    state = optimizer["state"]
    if not any(isinstance(s, dict) and "ema" in s for s in state.values()):
        return None
    ids = [i for group in optimizer["param_groups"] for i in group["params"]]
    names = list(dae_state)
    if len(ids) != len(names):
        raise OfficialImportError(f"{what}: dae_optimizer covers {len(ids)} parameters but dae_state_dict has "
                                  f"{len(names)} entries; cannot place its EMA weights")
    out, lacking = {}, []
    for name, i in zip(names, ids):
        entry = state.get(i, {})
        if "ema" not in entry:
            lacking.append(name)
            continue
        ema = entry["ema"]
        if tuple(ema.shape) != tuple(dae_state[name].shape):
            raise OfficialImportError(f"{what}: EMA of {name} has shape {list(ema.shape)}, the weight "
                                      f"{list(dae_state[name].shape)}: optimizer and weights do not match")
        out[name] = ema
    if lacking:
        raise OfficialImportError(f"{what}: dae_optimizer has no EMA for {len(lacking)} parameter(s): "
                                  f"{_first(lacking)} (the official evaluation would fail on it too)")
    return out



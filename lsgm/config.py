"""Typed, strict run configuration.

A run (one trained model) is described by a :class:`RunConfig`. It loads from a nested mapping
(YAML/JSON) with :func:`from_dict`; an unknown key anywhere is an error that names the key, where it
was found and the keys allowed there. Every training command writes the resolved config back with
:func:`to_dict` so a run directory always says what produced it.

The defaults are the *smoke* sizes; the official recipes (``lsgm/recipes/official.yaml``, translated by
:mod:`lsgm.recipes`) and the workflow's ``config.yaml`` hold the paper and quick presets.

Two rules make a partial config safe:

* **A partial mapping merges into the field's own default.** ``{"train": {"vae_optim": {"warmup_steps": 5}}}``
  keeps every other key of the *default* ``vae_optim`` (Adamax, lr 1e-2, ...), never the generic
  ``OptimConfig()``; no sibling is ever dropped or reset.
* **Ranges are checked once, here**, for every way a config is built (plan time, ``--set``, a YAML file):
  each numeric field may carry ``metadata={"range": ...}`` and each section may check relations between its
  fields (``_check``); a violation is one line naming the key, the value and the allowed range.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lsgm.io import atomic_write_text
from lsgm.methods import Q_OBJECTIVES, SAMPLINGS, SDES, WEIGHTINGS, objective_error, sde_objective_error


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key and the fix."""


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric field: ``lo < x`` (or ``<=`` when ``lo_closed``) and ``x < hi`` (or ``<=``)."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_closed: bool = True
    hi_closed: bool = True

    def contains(self, x: float) -> bool:
        above = x >= self.lo if self.lo_closed else x > self.lo
        below = x <= self.hi if self.hi_closed else x < self.hi
        return above and below and not math.isnan(x)

    def __str__(self) -> str:
        left = ("[" if self.lo_closed else "(") + ("-inf" if self.lo == -math.inf else f"{self.lo:g}")
        right = ("inf" if self.hi == math.inf else f"{self.hi:g}") + ("]" if self.hi_closed else ")")
        return f"{left}, {right}"


def rng(default: Any, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
        hi_open: bool = False) -> Any:
    """A dataclass field with a default and an allowed range (checked by :func:`from_dict`)."""
    return field(default=default, metadata={"range": Range(lo, hi, not lo_open, not hi_open)})


POSITIVE = dict(lo=0.0, lo_open=True)
UNIT_OPEN = dict(lo=0.0, hi=1.0, lo_open=True, hi_open=True)  # (0, 1)


@dataclass
class DataConfig:
    name: str = "digits"  # digits | digits_binary | mnist | omniglot | cifar10 | celeba256
    root: str | None = None  # dataset folder for the paper-scale datasets
    download: bool = False  # allow fetching (checksum-verified) when files are missing
    num_workers: int = rng(0, 0)
    # Pixel SGM only: the network models 2 x - 1 in [-1, 1] (True; DDPM/VPSDE configs) or x in [0, 1] (False;
    # score_sde's VESDE configs, data.centered = False, whose sigma_max is measured on [0, 1] images)
    centered: bool = True
    # The split's image count when it is not the official one, e.g. a miniature (lsgm make-data); None = the official
    # size. A non-official count cannot match the official checksums, so those files are verified by parsing, array
    # shapes and this count (lsgm.data.get_dataset's expected_size).
    n_train: int | None = rng(None, 1)
    n_test: int | None = rng(None, 1)

    def split_size(self, split: str) -> int | None:
        """The expected image count of ``split`` ("train" | "test") for :func:`lsgm.data.get_dataset`."""
        return self.n_train if split == "train" else self.n_test


@dataclass
class VAEConfig:
    """NVAE backbone sizes (the official flags of train_vae.py, reference doc section 1.2 / 5.1)."""

    num_channels: int = rng(16, 1)  # num_channels_enc = num_channels_dec
    channel_mult: list[int] = field(default_factory=lambda: [1, 2])
    num_preprocess_blocks: int = 1
    num_preprocess_cells: int = 1
    num_postprocess_blocks: int = 1
    num_postprocess_cells: int = 1
    num_latent_scales: int = 1
    num_groups_per_scale: int = 2
    num_latent_per_group: int = 4
    num_cell_per_cond_enc: int = 1
    num_cell_per_cond_dec: int = 1
    arch_instance: Literal["res_bnswish", "res_mbconv"] = "res_bnswish"
    use_se: bool = True
    num_mix: int = rng(10, 1)  # discretized mixture of logistics components (non-binary data)
    log_sig_q_scale: float = rng(5.0, **POSITIVE)
    num_nf: int = rng(0, 0)  # paired autoregressive flow cells per latent group (official --num_nf)
    progressive_input: Literal["none", "input_skip"] = "none"  # official --progressive_input_vae


@dataclass
class ScoreNetConfig:
    """NCSN++-style U-Net sizes (reference doc section 5.2)."""

    nf: int = rng(32, 1)
    ch_mult: list[int] = field(default_factory=lambda: [1, 2])
    num_res_blocks: int = rng(1, 1)
    attn_resolutions: list[int] = field(default_factory=list)
    dropout: float = rng(0.0, 0.0, 1.0, hi_open=True)
    embedding_type: Literal["positional", "fourier"] = "positional"
    embedding_scale: float = rng(1000.0, **POSITIVE)
    embedding_dim: int = rng(128, 2)  # official: 128 (the time-embedding MLP is 128 -> 512 -> 512)
    # official --fir: the resblocks' 2x up/down-sampling (branch and skip) filters with the FIR kernel [1, 3, 3, 1]
    # (score_sde upsample_2d / downsample_2d) instead of nearest-neighbour / 2x2 average pooling. A fixed kernel:
    # no parameters, no state_dict keys, so checkpoints of either setting have the same shapes.
    fir: bool = False
    # What the time embedding sees: t, or log sigma_t ("log_sigma": score_sde's VESDE NCSN++, Fourier features of
    # log sigma_t, lsgm.score.NoiseConditioned). The pixel SGM only.
    condition: Literal["t", "log_sigma"] = "t"


@dataclass
class SDEConfig:
    type: Literal[SDES] = "vpsde"
    beta_min: float = rng(0.1, **POSITIVE)
    beta_max: float = rng(20.0, **POSITIVE)
    sigma2_0: float = rng(0.0, 0.0, 1.0, hi_open=True)  # VPSDE; the geometric SDE uses sigma2_0_geometric
    sigma2_min: float = rng(3e-5, **UNIT_OPEN)
    sigma2_max: float = rng(0.999, **UNIT_OPEN)
    sigma2_0_geometric: float = rng(3e-5, 0.0, 1.0, hi_open=True)
    sigma_min: float = rng(0.01, **POSITIVE)  # VESDE (the pixel-space original SGM): sigma_t = sigma_min (max/min)^t
    sigma_max: float = rng(348.0, **POSITIVE)  # score_sde CelebA-HQ-256; see lsgm.diffusion.sde.max_pairwise_distance
    t_eps: float = rng(1e-2, 0.0, 1.0, hi_open=True)  # training cut-off: t ~ [t_eps, 1]

    def _check(self) -> None:
        if self.beta_max < self.beta_min:
            raise ConfigError(f"beta_max = {self.beta_max:g} < beta_min = {self.beta_min:g}; need beta_max >= beta_min")
        if self.sigma2_max <= self.sigma2_min:
            raise ConfigError(f"sigma2_max = {self.sigma2_max:g} <= sigma2_min = {self.sigma2_min:g}; "
                              "need 0 < sigma2_min < sigma2_max < 1")
        if self.type == "vesde" and self.sigma_max <= self.sigma_min:
            raise ConfigError(f"sigma_max = {self.sigma_max:g} <= sigma_min = {self.sigma_min:g}; need sigma_max > sigma_min")
        if self.type == "vpsde" and self.t_eps == 0.0 and self.sigma2_0 == 0.0:
            raise ConfigError("t_eps = 0 with the VPSDE and sigma2_0 = 0 gives sigma^2(0) = 0 (log 0 in the "
                              "objective); use t_eps > 0 (1e-2) or the geometric SDE with sigma2_0_geometric > 0")
        if self.type == "geometric" and self.t_eps == 0.0 and self.sigma2_0_geometric == 0.0:
            raise ConfigError("t_eps = 0 with the geometric SDE needs sigma2_0_geometric > 0 (sigma^2(0) = 0 otherwise)")


@dataclass
class ObjectiveConfig:
    """One Table 6 cell: SGM weighting x t-sampling (p) x encoder objective (q)."""

    weighting: Literal[WEIGHTINGS] = "ll"  # w(t) of the score prior's loss (9): ll | un | re
    sampling: Literal[SAMPLINGS] = "uniform"  # t-sampling for the score prior's loss: uniform | is
    q_objective: Literal[Q_OBJECTIVES] = "rew"  # the encoder's: "rew." | r_ll(t) | U (rew | ll_is | ll_uniform)
    mode: Literal["joint", "disjoint"] = "joint"
    train_vae: bool = True  # False: score prior alone on a frozen VAE
    mixed_score: bool = True
    mixing_logit_init: float = rng(-3.0, -30.0, 30.0)
    drop_inactive_var: bool = False
    update_q_ema: bool = False

    def _check(self) -> None:
        error = objective_error(self.q_objective, self.mode, self.train_vae, self.update_q_ema)
        if error:
            raise ConfigError(error)


@dataclass
class OptimConfig:
    name: Literal["adamax", "adamw", "adam"] = "adamw"
    lr: float = rng(1e-3, 0.0, 1.0, lo_open=True)
    lr_min: float = rng(1e-4, 0.0, 1.0)
    warmup_steps: int = rng(0, 0)
    weight_decay: float = rng(3e-4, 0.0, 1.0)
    eps: float = rng(1e-8, 0.0, 1.0, lo_open=True)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])

    def _check(self) -> None:
        if self.lr_min > self.lr:
            raise ConfigError(f"lr_min = {self.lr_min:g} > lr = {self.lr:g}; the cosine schedule decays from lr to lr_min")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas = {self.betas} must be two numbers in [0, 1)")


@dataclass
class KLConfig:
    anneal_portion: float = rng(0.3, 0.0, 1.0)
    const_portion: float = rng(1e-4, 0.0, 1.0)
    const_coeff: float = rng(1e-4, 0.0, 1.0)
    max_coeff: float = rng(1.0, 0.0, 1.0, lo_open=True)
    balance: bool = True
    continue_anneal: bool = False  # stage 2: anneal kl_coeff 0.7 -> 1.0 over the first 10% of steps


@dataclass
class TrainConfig:
    steps: int = rng(50, 0)
    # The GLOBAL batch of one optimizer step (official: GPUs x per-GPU batch). Each of the world_size
    # processes sees global_batch / (world_size * grad_accum) samples per forward pass, where grad_accum is
    # the smallest number of micro-batches that keeps that at most max_batch_per_process (0: no cap).
    # The loss is the mean over the global batch whatever the split (see split_batch).
    global_batch: int = rng(32, 1)
    max_batch_per_process: int = rng(0, 0)
    vae_optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamax", lr=1e-2, lr_min=1e-4, eps=1e-3))
    score_optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=3e-4, lr_min=3e-4, eps=1e-4))
    kl: KLConfig = field(default_factory=KLConfig)
    sr_lambda_vae: float = rng(1e-2, 0.0)
    sr_lambda_score: float = rng(0.0, 0.0)
    # score network SR: the spectral-norm term over its conv layers (official: on unless --custom_conv_dae,
    # which makes the official SR look for NVAE conv classes the score network does not have) + GroupNorm max|gamma|
    sr_score_conv: bool = True
    ema_decay: float = rng(0.999, 0.0, 1.0)
    grad_clip: float = rng(0.0, 0.0)  # max global grad norm; 0 disables
    amp: Literal["off", "bf16", "fp16"] = "off"
    log_every: int = rng(10, 1)
    checkpoint_every_steps: int = rng(100, 0)
    checkpoint_every_minutes: float = rng(10.0, 0.0)
    val_batches: int = rng(4, 1)  # validation batches for the in-training NELBO
    # Checkpoint selection (stage 1, official train_vae.py): every select_every_steps steps and at the end, the
    # select_iw_samples-sample importance-weighted bound on the val_batches validation batches; the best weights
    # are the run's model.pt (and stage 2 starts from them). 0: the last weights.
    select_every_steps: int = rng(0, 0)
    select_iw_samples: int = rng(10, 1)
    force_nan_at_step: int = -1  # testing hook: inject a NaN loss at this step (divergence handling)
    # A stage-1 run that CONTINUES a trained backbone (`lsgm train-vae --vae BACKBONE/model.pt`): the control
    # "VAE backbone + stage-2 steps" trains the backbone on with its Normal prior for an LSGM's stage-2 steps,
    # optimizer and KL schedule (stage 2's, train.kl.continue_anneal), to separate a better prior from more training.
    continue_backbone: bool = False


@dataclass
class RunConfig:
    kind: Literal["vae", "lsgm", "sgm", "classifier"] = "vae"
    name: str = "run"
    seed: int = rng(0, 0)
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    score: ScoreNetConfig = field(default_factory=ScoreNetConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # where this run knowingly differs from the official recipe it follows (lsgm.recipes); copied into run.json
    deviations: list[str] = field(default_factory=list)

    def _check(self) -> None:
        error = sde_objective_error(self.sde.type, self.objective.weighting, self.objective.sampling)
        if self.kind in ("lsgm", "sgm") and error:
            raise ConfigError(error)


def split_batch(global_batch: int, world_size: int, max_per_process: int = 0) -> tuple[int, int]:
    """(per-process batch, gradient-accumulation steps) that realise ``global_batch`` on ``world_size``
    processes with at most ``max_per_process`` samples per forward pass (0: no cap). The smallest number of
    accumulation steps wins; global_batch = world_size * per_process * accumulation exactly, or ConfigError."""
    if global_batch < 1 or world_size < 1:
        raise ConfigError(f"global batch {global_batch} and world size {world_size} must be >= 1")
    cap = max_per_process or global_batch
    for accum in range(1, global_batch + 1):
        per, rest = divmod(global_batch, world_size * accum)
        if rest == 0 and 1 <= per <= cap:
            return per, accum
        if per == 0:
            break
    raise ConfigError(f"global batch {global_batch} cannot be split over {world_size} processes with at most "
                      f"{cap} samples each (need global = processes x per-process x accumulation); change the "
                      f"number of GPUs or train.max_batch_per_process")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _merge(base: dict, over: dict) -> dict:
    """``over`` merged into ``base``: nested mappings merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_field(f: dataclasses.Field, value: Any, where: str) -> None:
    bounds = f.metadata.get("range")
    if bounds is not None and isinstance(value, (int, float)) and not bounds.contains(float(value)):
        raise ConfigError(f"{where} = {value!r} is out of range; allowed: {bounds}")


def did_you_mean(unknown: list[str], allowed: list[str]) -> str:
    """``" did you mean 'x'?"`` naming the closest allowed key of each unknown one that has one (difflib), else ``""``."""
    pairs = [(key, close[0]) for key in unknown if (close := difflib.get_close_matches(str(key), allowed, n=1))]
    if not pairs:
        return ""
    if len(unknown) == 1:
        return f" did you mean {pairs[0][1]!r}?"
    return " did you mean " + ", ".join(f"{good!r} for {bad!r}" for bad, good in pairs) + "?"


def _unknown_keys(where: str, unknown: list[str], allowed: list[str]) -> ConfigError:
    return ConfigError(f"{where}: unknown key(s) {unknown};{did_you_mean(unknown, allowed)} allowed: {allowed}")


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _unknown_keys(where, unknown, list(fields))
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}")
        _check_field(fields[key], kwargs[key], f"{where}.{key}")
    obj = cls(**kwargs)
    check = getattr(obj, "_check", None)
    if check is not None:
        try:
            check()
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    return obj


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a (partial) mapping; unknown keys, wrong types and values out of range raise
    :class:`ConfigError` naming the key. Missing keys take their defaults, and a partial nested mapping is
    merged into that field's *own* default (e.g. ``TrainConfig.vae_optim``'s Adamax), never into a generic one."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise _unknown_keys(where, unknown, [f.name for f in dataclasses.fields(cls)])
    return _build(cls, _merge(to_dict(cls()), data), where)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def load_run_config(path: str | Path) -> RunConfig:
    """Load and validate a run config file (YAML or JSON)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    return from_dict(RunConfig, data, where=str(path))


def save_run_config(cfg: RunConfig, path: str | Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) and re-validate."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"override {item!r}: no section {part!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override {item!r}: unknown key {parts[-1]!r};{did_you_mean([parts[-1]], sorted(node))} "
                              f"allowed: {sorted(node)}")
        node[parts[-1]] = yaml.safe_load(raw)
    return from_dict(RunConfig, data)

"""Typed, strict run configuration.

A run (one trained model) is described by a :class:`RunConfig`. It loads from a nested mapping
(YAML/JSON) with :func:`from_dict`; an unknown key anywhere is an error that names the key, where it
was found and the keys allowed there. Every training command writes the resolved config back with
:func:`to_dict` so a run directory always says what produced it.

The defaults are the *smoke* sizes; the workflow's ``config.yaml`` holds the quick and paper presets.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key and the fix."""


@dataclass
class DataConfig:
    name: str = "digits"  # digits | digits_binary | mnist | omniglot | cifar10 | celeba256
    root: str | None = None  # dataset folder for the paper-scale datasets
    download: bool = False  # allow fetching (checksum-verified) when files are missing
    num_workers: int = 0


@dataclass
class VAEConfig:
    """NVAE backbone sizes (the official flags of train_vae.py, reference doc section 1.2 / 5.1)."""

    num_channels: int = 16  # num_channels_enc = num_channels_dec
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
    num_mix: int = 10  # discretized mixture of logistics components (non-binary data)
    log_sig_q_scale: float = 5.0


@dataclass
class ScoreNetConfig:
    """NCSN++-style U-Net sizes (reference doc section 5.2)."""

    nf: int = 32
    ch_mult: list[int] = field(default_factory=lambda: [1, 2])
    num_res_blocks: int = 1
    attn_resolutions: list[int] = field(default_factory=list)
    dropout: float = 0.0
    embedding_type: Literal["positional", "fourier"] = "positional"
    embedding_scale: float = 1000.0
    embedding_dim: int = 128  # official: 128 (the time-embedding MLP is 128 -> 512 -> 512)


@dataclass
class SDEConfig:
    type: Literal["vpsde", "geometric"] = "vpsde"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma2_0: float = 0.0  # VPSDE; the geometric SDE uses sigma2_0_geometric
    sigma2_min: float = 3e-5
    sigma2_max: float = 0.999
    sigma2_0_geometric: float = 3e-5
    t_eps: float = 1e-2  # training cut-off: t ~ [t_eps, 1]


@dataclass
class ObjectiveConfig:
    """One Table 6 cell: SGM weighting x t-sampling (p) x encoder objective (q)."""

    weighting: Literal["ll", "un", "re"] = "ll"  # w(t) of the score prior's loss (9)
    sampling: Literal["uniform", "is"] = "uniform"  # t-sampling for the score prior's loss
    q_objective: Literal["rew", "ll_is", "ll_uniform"] = "rew"  # "rew." or r_ll(t) for the encoder
    mode: Literal["joint", "disjoint"] = "joint"
    train_vae: bool = True  # False: score prior alone on a frozen VAE
    mixed_score: bool = True
    mixing_logit_init: float = -3.0
    drop_inactive_var: bool = False
    update_q_ema: bool = False


@dataclass
class OptimConfig:
    name: Literal["adamax", "adamw", "adam"] = "adamw"
    lr: float = 1e-3
    lr_min: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 3e-4
    eps: float = 1e-8
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class KLConfig:
    anneal_portion: float = 0.3
    const_portion: float = 1e-4
    const_coeff: float = 1e-4
    max_coeff: float = 1.0
    balance: bool = True
    continue_anneal: bool = False  # stage 2: anneal kl_coeff 0.7 -> 1.0 over the first 10% of steps


@dataclass
class TrainConfig:
    steps: int = 50
    batch_size: int = 32
    vae_optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamax", lr=1e-2, lr_min=1e-4, eps=1e-3))
    score_optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=3e-4, lr_min=3e-4, eps=1e-4))
    kl: KLConfig = field(default_factory=KLConfig)
    sr_lambda_vae: float = 1e-2
    sr_lambda_score: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    amp: Literal["off", "bf16", "fp16"] = "off"
    log_every: int = 10
    checkpoint_every_steps: int = 100
    checkpoint_every_minutes: float = 10.0
    val_batches: int = 4  # validation batches for the in-training NELBO
    force_nan_at_step: int = -1  # testing hook: inject a NaN loss at this step (divergence handling)


@dataclass
class RunConfig:
    kind: Literal["vae", "lsgm", "sgm", "classifier"] = "vae"
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    score: ScoreNetConfig = field(default_factory=ScoreNetConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
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


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {names}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


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
    from lsgm.utils import atomic_write_text

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
            raise ConfigError(f"override {item!r}: unknown key {parts[-1]!r}; allowed: {sorted(node)}")
        node[parts[-1]] = yaml.safe_load(raw)
    return from_dict(RunConfig, data)

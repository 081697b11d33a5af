"""The cluster a scale is submitted to, as ``snakemake --profile slurm`` sees it (pure Python, no Snakemake, no torch).

* :data:`GPUS`: the GPU kinds a user may declare (``cluster.gpu`` in the profile's ``cluster.yaml``): the vendor's dense
  peak throughput at the precision the recipes train in, memory, compute capability (bf16 needs 8.0, Ampere).
* :class:`Profile`: a Snakemake profile folder read as Snakemake reads it (``configfiles``, ``default-resources``,
  ``set-resources``, the ``slurm-*`` flags), so ``lsgm plan --profile slurm`` shows what ``snakemake --profile slurm``
  submits: the workflow config is config.yaml, then the profile's ``configfiles`` (or the command line's
  ``--configfile``, which replaces them), then ``--config KEY=VALUE`` (:func:`workflow_config`); a job's Slurm resources
  are the profile's ``default-resources``, overridden by the rule's own (the plan's), overridden by ``set-resources``
  (:meth:`Profile.job_resources`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lsgm.plan.common import PlanError, deep_merge

PLACEHOLDER_ACCOUNT = "CHANGE_ME"
CLUSTER_FILE = "cluster.yaml"  # the slurm profile's cluster settings (its ``configfiles``)


@dataclass(frozen=True)
class GPU:
    """A GPU kind: dense peak TFLOP/s at the recipes' precision (bf16; ``None`` where the GPU has no bf16, then the
    fp16 tensor-core peak is ``fp16_tflops``), memory, CUDA compute capability, and where the numbers come from."""

    name: str
    bf16_tflops: float | None
    memory_gib: float
    capability: float
    fp16_tflops: float
    source: str

    @property
    def bf16(self) -> bool:
        return self.capability >= 8.0


_SHEETS = "NVIDIA datasheets, dense tensor-core peak (no sparsity)"
GPUS: dict[str, GPU] = {g.name: g for g in (
    GPU("V100-16GB", None, 16, 7.0, 125.0, f"{_SHEETS}: V100 SXM2 fp16 125 TFLOP/s, no bf16"),
    GPU("V100-32GB", None, 32, 7.0, 125.0, f"{_SHEETS}: V100 SXM2 fp16 125 TFLOP/s, no bf16"),
    GPU("A100-40GB", 312.0, 40, 8.0, 312.0, f"{_SHEETS}: A100 SXM bf16 312 TFLOP/s"),
    GPU("A100-80GB", 312.0, 80, 8.0, 312.0, f"{_SHEETS}: A100 SXM bf16 312 TFLOP/s"),
    GPU("L40S", 362.0, 48, 8.9, 362.0, f"{_SHEETS}: L40S bf16 362 TFLOP/s"),
    GPU("H100-80GB", 989.0, 80, 9.0, 989.0, f"{_SHEETS}: H100 SXM bf16 989 TFLOP/s"),
    GPU("H200", 989.0, 141, 9.0, 989.0, f"{_SHEETS}: H200 SXM bf16 989 TFLOP/s"),
)}
# The GPUs `lsgm plan` shows when none is declared (cluster.gpu): the two the estimate is quoted for.
DEFAULT_ESTIMATE_GPUS = ("A100-80GB", "H100-80GB")


def gpu_named(name: str, where: str = "cluster.gpu") -> GPU:
    """The declared GPU ``name`` (PlanError, one line with the closest known name, for another)."""
    if name in GPUS:
        return GPUS[name]
    import difflib

    close = difflib.get_close_matches(name, GPUS, n=1, cutoff=0.4)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise PlanError(f"{where}: {name!r} is not a known GPU{hint} (known: {', '.join(GPUS)}; lsgm/plan/cluster.py GPUS)")


def cluster_settings(config: dict) -> dict:
    """``config["cluster"]`` with its defaults: the declared GPU (or None), Slurm's GPU type name (or None)."""
    own = config.get("cluster") or {}
    out = {"gpu": own.get("gpu"), "gpu_model": own.get("gpu_model")}
    if out["gpu"] is not None:
        gpu_named(out["gpu"])
    return out


# ----------------------------------------------------------------------------------------------- the profile
def _profile_value(folder: Path, value):
    """A scalar of a profile as Snakemake reads it: ``~`` and ``$VARS`` expanded, and a relative path that exists in
    the profile's folder taken from there (snakemake.profiles.ProfileConfigFileParser)."""
    if isinstance(value, (list, dict)) or value is None:
        return value
    text = os.path.expanduser(os.path.expandvars(str(value)))
    return str(folder / text) if (folder / text).exists() else text


@dataclass
class Profile:
    """A Snakemake profile: its file and the keys ``lsgm plan`` and the preflight read."""

    path: Path
    data: dict = field(default_factory=dict)

    @classmethod
    def find(cls, name: str) -> Profile:
        """``name`` as ``snakemake --profile NAME`` finds it: a file, or a folder (given, or in the working directory)
        holding ``config.yaml`` / ``profile.yaml``; PlanError naming what was looked for."""
        path = Path(name).expanduser()
        if path.is_dir():
            found = [path / f for f in ("profile.yaml", "config.yaml") if (path / f).is_file()]
            if not found:
                raise PlanError(f"profile {name}: no config.yaml or profile.yaml in {path}")
            path = found[0]
        if not path.is_file():
            raise PlanError(f"profile {name!r}: no such file or folder (from the repository root: --profile slurm)")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise PlanError(f"{path}: {str(err).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise PlanError(f"{path}: not a YAML mapping")
        return cls(path, data)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def configfiles(self) -> list[str]:
        """The profile's ``configfiles``: one path (Snakemake takes it from the profile's folder when it is there), or
        a list (taken as written, relative to the working directory, as Snakemake does)."""
        files = self.data.get("configfiles", self.data.get("configfile")) or []
        return [_profile_value(self.folder, files)] if isinstance(files, str) else [str(f) for f in files]

    def config(self) -> dict:
        """The profile's own ``config:`` (``--config`` in the profile: replaced whole by a command-line --config)."""
        return dict(self.data.get("config") or {})

    @property
    def no_account(self) -> bool:
        return bool(self.data.get("slurm-no-account", False))

    def job_resources(self, rule: str, resources: dict, default_resources: dict | None = None) -> dict:
        """What the executor plugin gets for a job of ``rule`` whose own resources are ``resources``:
        ``default-resources`` (or the command line's ``--default-resources``) < the rule's < ``set-resources``."""
        defaults = self.data.get("default-resources") or {} if default_resources is None else default_resources
        ours = {k: v for k, v in resources.items() if v is not None}
        return {**defaults, **ours, **((self.data.get("set-resources") or {}).get(rule) or {})}


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _typed(tree):
    """A value of ``--config`` as the workflow reads it (lsgm.config_sources.retyped): YAML scalars, ``1e-3`` a number."""
    if isinstance(tree, dict):
        return {k: _typed(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_typed(v) for v in tree]
    if isinstance(tree, str) and _EXPONENT.fullmatch(tree.strip()):
        return float(tree)
    return tree


def parse_config_args(entries: list[str]) -> dict:
    """``--config KEY=VALUE ...`` as the workflow reads them (Snakemake's parse: int, float, bool, then YAML; nested
    values as YAML scalars, :mod:`lsgm.config_sources`): the mapping merged over the config files."""
    out: dict = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not re.fullmatch(r"[a-zA-Z_][\w-]*\w", key):
            raise PlanError(f"--config {entry!r}: give KEY=VALUE pairs (a nested value: KEY='{{a: {{b: 1}}}}')")
        for parse in (int, float, _bool, yaml.safe_load, str):
            try:
                parsed = parse(value)
                break
            except (ValueError, yaml.YAMLError):
                continue
        out = deep_merge(out, {key: _typed(parsed) if value else None})
    return out


def _bool(text: str) -> bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise ValueError(text)


def read_yaml(name: str | Path) -> dict:
    try:
        with open(name, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as err:
        raise PlanError(f"{name}: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PlanError(f"{name}: not a YAML mapping")
    return data


def workflow_config(base: str | Path, profile: Profile | None, configfiles: list[str] | None = None,
                    config_args: list[str] = ()) -> tuple[dict, list[str]]:
    """The workflow's config as ``snakemake [--profile P] [--configfile F ...] [--config K=V ...]`` builds it, and the
    config files it read: config.yaml, then the command line's ``configfiles`` if given, else the profile's, then
    ``--config`` (the command line's, else the profile's ``config:``)."""
    files = list(configfiles) if configfiles else (profile.configfiles() if profile else [])
    config = deep_merge(read_yaml(base), *(read_yaml(f) for f in files))
    cli = parse_config_args(list(config_args)) if config_args else (profile.config() if profile else {})
    return deep_merge(config, cli), [str(base), *files]


def loads_cluster_file(configfiles: list[str]) -> bool:
    """Whether the slurm profile's cluster settings file is among the config files Snakemake read."""
    return any(Path(f).name == CLUSTER_FILE for f in configfiles)

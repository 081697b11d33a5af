"""The official NVlabs/LSGM commands as data (``official.yaml``): parsed, with the scripts' parser defaults filled in,
as :class:`OfficialRun` (arguments and launch geometry); the one epoch -> steps rule; the evaluation commands in this
project's settings. Torch-free."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from lsgm.datasets_info import EXPECTED_COUNTS

OFFICIAL_FILE = Path(__file__).with_name("official.yaml")
DATASET_NAMES = {"cifar10": "cifar10", "celeba_256": "celeba256", "mnist": "mnist", "omniglot": "omniglot"}
STAGE_SCRIPTS = {"stage1": "train_vae", "stage2": "train_vada"}


def steps_per_epoch(dataset: str, gpus: int, global_batch: int) -> int:
    """The optimizer steps of one epoch of ``dataset``'s official training split, counted as the official loader
    counts ``len(train_queue)``: a DistributedSampler shard of ceil(N / gpus) samples (padded) per GPU, cut into full
    per-GPU batches of ``global_batch / gpus`` (``drop_last=True``); at least 1. The one home of the epoch -> steps
    rule: the official recipes and a scale's ``epochs`` both use it."""
    if global_batch % gpus:
        raise RecipeError(f"a global batch of {global_batch} does not split over {gpus} GPUs; give a multiple of {gpus}")
    return max(1, math.ceil(EXPECTED_COUNTS[dataset]["train"] / gpus) // (global_batch // gpus))


def official_steps(epochs: float, dataset: str, gpus: int, global_batch: int) -> int:
    """``epochs`` (a scale may give a fraction) as optimizer steps (:func:`steps_per_epoch`)."""
    return int(epochs * steps_per_epoch(dataset, gpus, global_batch))


class RecipeError(ValueError):
    """The official recipe data cannot be used (unknown recipe, unknown flag); the message says which."""


@lru_cache(maxsize=1)
def official() -> dict:
    """The parsed ``official.yaml``."""
    with open(OFFICIAL_FILE, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _value(token: str):
    """A command-line value as argparse's ``type=int/float`` would read it (YAML 1.1 reads ``1e-4`` as a string)."""
    for cast in (int, float):
        try:
            return cast(token)
        except ValueError:
            pass
    return token


def parse_command(command: str) -> tuple[str, dict]:
    """``python train_vada.py --a 1 --b --c 1 2`` -> ``("train_vada", {"a": 1, "b": True, "c": [1, 2]})``."""
    tokens = shlex.split(command, posix=True)
    if len(tokens) < 2 or tokens[0] != "python" or not tokens[1].endswith(".py"):
        raise RecipeError(f"not a 'python script.py --flags' command: {command[:60]!r}")
    flags: dict = {}
    key = None
    for token in tokens[2:]:
        if token.startswith("--"):
            key = token[2:]
            flags[key] = True
            continue
        if key is None:
            raise RecipeError(f"value {token!r} before any flag in {command[:60]!r}")
        value = _value(token)
        current = flags[key]
        flags[key] = value if current is True else (current + [value] if isinstance(current, list) else [current, value])
    if isinstance(flags.get("channel_mult"), int):
        flags["channel_mult"] = [flags["channel_mult"]]
    return tokens[1][:-3], flags


def official_args(script: str, flags: dict) -> dict:
    """The script's parser defaults overridden by ``flags``; a flag the script does not define is an error
    (LSGM#5's ``--arch_instance_dae`` and path/launch flags are listed under ``ignored_flags``)."""
    data = official()
    defaults = data["parser_defaults"][script]
    unknown = sorted(set(flags) - set(defaults) - set(data["ignored_flags"]))
    if unknown:
        raise RecipeError(f"{script}.py has no flag(s) {unknown} (official.yaml parser_defaults.{script})")
    return {**defaults, **{k: v for k, v in flags.items() if k in defaults}}


@dataclass(frozen=True)
class OfficialRun:
    """One official training command: its arguments (defaults filled in) and launch geometry."""

    recipe: str
    stage: str  # "stage1" (train_vae.py) | "stage2" (train_vada.py)
    source: str
    command: str
    args: dict = field(repr=False)
    flags: dict = field(repr=False)

    @property
    def dataset(self) -> str:
        return DATASET_NAMES[self.args["dataset"]]

    @property
    def nodes(self) -> int:
        return int(self.args["num_proc_node"])

    @property
    def gpus_per_node(self) -> int:
        return int(self.args["num_process_per_node"])

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def per_gpu_batch(self) -> int:
        return int(self.args["batch_size"])

    @property
    def global_batch(self) -> int:
        return self.gpus * self.per_gpu_batch

    @property
    def epochs(self) -> int:
        return int(self.args["epochs"])

    @property
    def warmup_epochs(self) -> int:
        return int(self.args["warmup_epochs"])

    @property
    def iters_per_epoch(self) -> int:
        """``len(train_queue)`` of the official run (:func:`steps_per_epoch`)."""
        return steps_per_epoch(self.dataset, self.gpus, self.global_batch)

    @property
    def steps(self) -> int:
        return official_steps(self.epochs, self.dataset, self.gpus, self.global_batch)

    @property
    def warmup_steps(self) -> int:
        return official_steps(self.warmup_epochs, self.dataset, self.gpus, self.global_batch)


def recipe_names() -> list[str]:
    return list(official()["recipes"])


def official_run(recipe: str, stage: str) -> OfficialRun:
    """The official command of ``recipe`` (e.g. ``cifar10_fid``) for ``stage`` (``stage1`` | ``stage2``)."""
    recipes = official()["recipes"]
    if recipe not in recipes:
        raise RecipeError(f"no official recipe {recipe!r}; known: {', '.join(recipes)}")
    if stage not in STAGE_SCRIPTS or stage not in recipes[recipe]:
        raise RecipeError(f"official recipe {recipe!r} has no {stage!r} (stages: stage1, stage2)")
    entry = recipes[recipe][stage]
    script, flags = parse_command(entry["command"])
    if script != STAGE_SCRIPTS[stage]:
        raise RecipeError(f"{recipe}.{stage}: expected {STAGE_SCRIPTS[stage]}.py, got {script}.py")
    return OfficialRun(recipe, stage, entry["source"], entry["command"], official_args(script, flags), flags)


def eval_commands(recipe: str) -> list[dict]:
    """The official evaluation commands of ``recipe`` (following a reference to another recipe's)."""
    entry = official()["recipes"][recipe].get("eval", [])
    return eval_commands(entry) if isinstance(entry, str) else entry


def eval_settings(recipe: str) -> dict[str, dict]:
    """Official evaluation settings in this project's terms: ``{"nll": {...}, "fid": {...}}`` with
    ``t_eps``, ``tolerance``, ``batch_size`` (the official per-GPU batch: the ODE system's size),
    ``iw_samples``/``inner`` (nll), ``n_samples``/``temperature``/``bn_mode`` (fid)."""
    out: dict[str, dict] = {}
    for entry in eval_commands(recipe):
        script, flags = parse_command(entry["command"])
        a = official_args(script, flags)
        common = {"t_eps": float(a["ode_eps"]), "tolerance": float(a["ode_solver_tol"]),
                  "batch_size": int(a["batch_size"])}
        if a["nll_ode_eval"]:
            out["nll"] = {**common, "prior": "ode", "iw_samples": int(a["num_iw_samples"]),
                          "inner": int(a["num_iw_inner_samples"])}
        if a["fid_ode_eval"]:
            out["fid"] = {**common, "n_samples": int(a["num_fid_samples"]), "temperature": float(a["temp"]),
                          "vae_temperature": float(a["vae_temp"]),
                          "bn_mode": "train" if a["vae_train_mode"] else "eval"}
    return out

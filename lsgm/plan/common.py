"""Shared pieces of the plan: scale and kind names, the size-only keys of a miniature, resource keys,
:class:`PlanError`, config merging, and evaluation settings -> CLI flags (:func:`eval_args`).
"""

from __future__ import annotations

import copy
import hashlib
import json

from lsgm.eval import registry
from lsgm.eval import settings as eval_settings
from lsgm.eval.registry import CONTROL_EVALS  # noqa: F401  (re-exported)

SCALES = ("smoke", "quick", "demo", "paper", "mini")  # the scales that train
RELEASED = "released"  # the scale of the NVlabs/LSGM released checkpoints: imported, not trained (lsgm/plan/released.py)
ALL_SCALES = (*SCALES, RELEASED)
KINDS = ("vae", "lsgm", "sgm", "classifier")
# The evaluations are the registry's (lsgm/eval/registry.py): the metrics files a run may have, those the tables read
METRICS = tuple(n for n in registry.EVALUATIONS if n != "samples")
TABLE_METRICS = registry.read_by("tables")
# Settings blocks of scales.S.eval: the metrics, and the sample grid of every trained model (lsgm evaluate samples)
EVALUATIONS = registry.COMMANDS  # nll, fid, cost, samples
# What a sample grid takes from the official FID command / score_sde's PC sampler: how samples are drawn
SAMPLES_FROM_FID = ("tolerance", "t_eps", "batch_size", "temperature", "vae_temperature", "bn_mode", "sampler",
                    "pc_steps", "snr")
STAGES = {"vae": "stage1", "lsgm": "stage2"}
# A scale with ``base: B`` (the paper scale in miniature, ``mini``) is scale B resolved in full, then its ``shrink``
# overlay, which may change only these sizes (anything else is refused with one line naming the key): widths,
# cell/group counts, steps, batch sizes and sample counts. Its data sizes, data folder and launch geometry are its
# own keys (``data_sizes``, ``data_root``, ``launch``). tests/test_plan.py checks the resolved configs against B's.
RUN_SIZE_KEYS = frozenset({
    "vae.num_channels", "vae.num_preprocess_cells", "vae.num_postprocess_cells", "vae.num_groups_per_scale",
    "vae.num_latent_per_group", "vae.num_cell_per_cond_enc", "vae.num_cell_per_cond_dec",
    "score.nf", "score.num_res_blocks", "score.embedding_dim",
    "train.steps", "train.global_batch", "train.max_batch_per_process", "train.vae_optim.warmup_steps",
    "train.score_optim.warmup_steps", "train.select_every_steps", "train.select_iw_samples", "train.val_batches",
    "train.log_every", "train.checkpoint_every_steps", "train.checkpoint_every_minutes",
})
# ... of which these are the data's (filled in from ``data_sizes`` / ``data_root``, never given in ``shrink``)
RUN_DATA_KEYS = frozenset({"data.root", "data.n_train", "data.n_test"})
EVAL_SIZE_KEYS = frozenset({"n_samples", "batch_size", "n_batches", "fd_samples", "pc_steps", "n", "nrow",
                            "n_latents", "n_draws", "n_t_draws"})
# the keys a derived scale sets itself; every other key of its preset is its base's
DERIVED_OWN_KEYS = ("data_root", "resources", "launch")
# The slurm executor-plugin resources a job declares (workflow/rules/common.smk asks the plan for each one).
TRAIN_RESOURCE_KEYS = ("gpu", "gpu_model", "nodes", "tasks_per_node", "tasks", "gres", "mpi", "cpus_per_task", "mem_mb",
                       "runtime")
EVAL_RESOURCE_KEYS = ("gpu", "gpu_model", "cpus_per_task", "mem_mb", "runtime")


class PlanError(ValueError):
    """config.yaml describes something that cannot be run; the message says what and where."""


def deep_merge(base: dict, *overrides: dict | None) -> dict:
    out = copy.deepcopy(base)
    for over in overrides:
        for key, value in (over or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def flat_keys(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out.update(flat_keys(value, path + ".") if isinstance(value, dict) else {path: value})
    return out


def check_shrink(shrink: dict, where: str) -> None:
    """A miniature's overlay changes sizes only: every run-config key in ``RUN_SIZE_KEYS``, every evaluation key in
    ``EVAL_SIZE_KEYS``; else one line naming the key."""
    layers = [(f"{where}.eval", shrink.get("eval"))]
    for kind, block in (shrink.get("defaults") or {}).items():
        layers.append((f"{where}.defaults.{kind}", block))
    for kind, runs in (shrink.get("runs") or {}).items():
        layers += [(f"{where}.runs.{kind}.{name}", block) for name, block in runs.items()]
    layers.append((f"{where}.table6", shrink.get("table6")))
    for at, block in layers:
        if at.endswith(".eval"):
            block = {"eval": block}
        for key, value in flat_keys({k: v for k, v in (block or {}).items() if k in ("config", "eval")}).items():
            section, _, rest = key.partition(".")
            allowed = RUN_SIZE_KEYS if section == "config" else {f"{m}.{k}" for m in (*EVALUATIONS, "variance")
                                                                    for k in EVAL_SIZE_KEYS}
            if rest not in allowed:
                raise PlanError(f"{at}.{key}: a miniature may change sizes only (widths, cell/group counts, steps, "
                                f"batches, sample counts); {rest!r} is not one (lsgm/plan/ RUN_SIZE_KEYS, "
                                "EVAL_SIZE_KEYS)")
        extra = sorted(set(block or {}) - {"config", "eval"})
        if extra:
            raise PlanError(f"{at}: unknown key(s) {extra}; a miniature's overlay has config and eval only")


def short_hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def check_eval_settings(settings: dict, where: str) -> dict:
    """Every block of ``{evaluation: {key: value}}`` checked against :mod:`lsgm.eval.settings` (PlanError, one line
    naming ``where.eval.<evaluation>.<key>``, the value and what is allowed, or the closest known key)."""
    try:
        return {m: eval_settings.check_block(m, values, f"{where}: eval.{m}") for m, values in settings.items()}
    except eval_settings.SettingError as err:
        raise PlanError(str(err)) from None


def _with_samples(official: dict) -> dict:
    """Official evaluation settings plus a ``samples`` block: the FID's way of drawing samples (its sampler, ODE
    tolerance, end time, temperatures, BN mode, batch), so a sample grid shows what the FID measured."""
    fid = official.get("fid", {})
    return {**official, "samples": {k: v for k, v in fid.items() if k in SAMPLES_FROM_FID}}


def resolved_settings(evaluation: str, settings: dict, kind: str | None = None) -> dict:
    """What an evaluation job runs with: its settings over the command's defaults (:mod:`lsgm.eval.settings`), the
    ones a ``kind`` model does not use left out."""
    command = CONTROL_EVALS[evaluation][0] if evaluation in CONTROL_EVALS else evaluation  # a control: its command's
    out = {**eval_settings.defaults(command), **{k: v for k, v in settings.items() if v is not None}}
    out = {k: v for k, v in out.items() if v is not None or not eval_settings.SETTINGS[command][k].omit_unset}
    used = eval_settings.applicable(command, kind) if kind else out
    return {k: v for k, v in out.items() if k in used}


def eval_args(settings: dict) -> str:
    """``{"iw_samples": 8, "bn_train": True, "tolerances": [1e-3, 1e-2]}`` -> CLI flags; None/[]/False dropped."""
    parts = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False or value == []:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts.append(flag + " " + " ".join(str(v) for v in value))
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)

"""The official recipes (``official.yaml``) parsed and translated into this project's run configs.

``official_run(recipe, stage)`` parses one README command, fills in the script's parser defaults and
returns an :class:`OfficialRun`: the official arguments plus the launch geometry (nodes x GPUs x per-GPU
batch, epochs). ``run_config(run)`` translates it into a (partial) ``RunConfig`` mapping and the list of
named deviations (official flags with no counterpart here). ``eval_settings(recipe)`` does the same for the
evaluation commands. Torch-free: the plan and the tests use it.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from lsgm.datasets_info import DATASETS, EXPECTED_COUNTS

OFFICIAL_FILE = Path(__file__).with_name("official.yaml")
SCORE_SDE_FILE = Path(__file__).with_name("score_sde.yaml")
DATASET_NAMES = {"cifar10": "cifar10", "celeba_256": "celeba256", "mnist": "mnist", "omniglot": "omniglot"}
STAGE_SCRIPTS = {"stage1": "train_vae", "stage2": "train_vada"}
# official --iw_sample_p -> (weighting, t-sampling); --iw_sample_q -> encoder objective (reference section 3.4)
IW_SAMPLE_P = {"ll_uniform": ("ll", "uniform"), "ll_iw": ("ll", "is"), "drop_all_uniform": ("un", "uniform"),
               "drop_all_iw": ("un", "is"), "drop_sigma2t_uniform": ("re", "uniform"),
               "drop_sigma2t_iw": ("re", "is")}
IW_SAMPLE_Q = {"reweight_p_samples": "rew", "ll_iw": "ll_is", "ll_uniform": "ll_uniform"}
SDE_TYPES = {"vpsde": "vpsde", "geometric_sde": "geometric"}
# util/utils.py get_channel_multiplier(dataset, num_scales)
SCORE_CH_MULT = {("cifar10", 3): [1, 1, 1], ("omniglot", 3): [1, 1, 1], ("mnist", 2): [1, 1],
                 ("celeba_256", 3): [1, 1, 1], ("celeba_256", 4): [1, 2, 2, 2], ("celeba_256", 5): [1, 1, 2, 2, 2]}
SCORE_ATTN_RESOLUTIONS = [16]  # score_sde/ncsnpp.py: attn_resolutions = (16,), hard-coded
ADAMAX_EPS, VAE_ADAM_EPS, DAE_ADAM_EPS = 1e-3, 1e-3, 1e-4  # train_vae.py / train_vada.py optimizer constructors


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


# ----------------------------------------------------------------------------------------------- translation
def _vae_section(a: dict) -> dict:
    if a["num_channels_enc"] != a["num_channels_dec"]:
        raise RecipeError("num_channels_enc != num_channels_dec is not modelled (one num_channels)")
    return {"num_channels": a["num_channels_enc"], "channel_mult": list(a["channel_mult"]),
            "num_preprocess_blocks": a["num_preprocess_blocks"], "num_preprocess_cells": a["num_preprocess_cells"],
            "num_postprocess_blocks": a["num_postprocess_blocks"], "num_postprocess_cells": a["num_postprocess_cells"],
            "num_latent_scales": a["num_latent_scales"], "num_groups_per_scale": a["num_groups_per_scale"],
            "num_latent_per_group": a["num_latent_per_group"], "num_cell_per_cond_enc": a["num_cell_per_cond_enc"],
            "num_cell_per_cond_dec": a["num_cell_per_cond_dec"], "arch_instance": a["arch_instance"],
            "use_se": bool(a["use_se"]), "log_sig_q_scale": float(a["log_sig_q_scale"]),
            "num_nf": int(a["num_nf"]), "progressive_input": a["progressive_input_vae"]}


def _check_data(run: OfficialRun) -> None:
    """The dataset's decoder and bit depth are fixed here by the dataset; they must agree with the command."""
    a, info = run.args, DATASETS[run.dataset]
    want = "bin" if info.binary else "dml"
    if a["decoder_dist"] != want:
        raise RecipeError(f"{run.recipe}.{run.stage}: --decoder_dist {a['decoder_dist']} but {run.dataset} uses {want}")
    if not info.binary and 2 ** int(a["num_x_bits"]) != info.levels:
        raise RecipeError(f"{run.recipe}.{run.stage}: --num_x_bits {a['num_x_bits']} but {run.dataset} has "
                          f"{info.levels} levels")


def stage1_config(run: OfficialRun) -> tuple[dict, list[str]]:
    """train_vae.py arguments -> RunConfig mapping (kind vae) and the named deviations."""
    a = run.args
    _check_data(run)
    cfg = {
        "kind": "vae", "seed": 0, "data": {"name": run.dataset}, "vae": _vae_section(a),
        "train": {
            "steps": run.steps, "global_batch": run.global_batch, "max_batch_per_process": run.per_gpu_batch,
            "vae_optim": {"name": "adamax", "lr": float(a["learning_rate_vae"]),
                          "lr_min": float(a["learning_rate_min_vae"]), "eps": ADAMAX_EPS,
                          "weight_decay": float(a["weight_decay"]), "warmup_steps": run.warmup_steps},
            "kl": {"anneal_portion": float(a["kl_anneal_portion"]), "const_portion": float(a["kl_const_portion"]),
                   "const_coeff": float(a["kl_const_coeff"]), "max_coeff": float(a["kl_max_coeff"]), "balance": True},
            "sr_lambda_vae": float(a["weight_decay_norm"]),
            # train_vae.py: evaluate every max(epochs // 40, 1) epochs (and at the end) with a 10-sample bound
            "select_every_steps": max(run.epochs // 40, 1) * run.iters_per_epoch, "select_iw_samples": 10,
        },
    }
    deviations = []
    if a["weight_decay_norm_anneal"]:
        raise RecipeError(f"{run.recipe}.stage1: --weight_decay_norm_anneal is not modelled")
    if a["progressive_input_vae"] not in ("none", "input_skip"):
        raise RecipeError(f"{run.recipe}.stage1: --progressive_input_vae {a['progressive_input_vae']} is not modelled")
    return cfg, deviations


def stage2_config(run: OfficialRun) -> tuple[dict, list[str]]:
    """train_vada.py arguments -> RunConfig mapping (kind lsgm; the ``vae`` section comes from stage 1)."""
    a = run.args
    if a["iw_sample_p"] not in IW_SAMPLE_P:
        raise RecipeError(f"{run.recipe}.stage2: --iw_sample_p {a['iw_sample_p']} is not modelled")
    weighting, sampling = IW_SAMPLE_P[a["iw_sample_p"]]
    sde_type = SDE_TYPES[a["sde_type"]]
    sde = {"type": sde_type, "t_eps": float(a["time_eps"])}
    if sde_type == "vpsde":
        sde.update(beta_min=float(a["beta_start"]), beta_max=float(a["beta_end"]), sigma2_0=float(a["sigma2_0"]))
    else:
        sde.update(sigma2_min=float(a["sigma2_min"]), sigma2_max=float(a["sigma2_max"]),
                   sigma2_0_geometric=float(a["sigma2_0"]))
    key = (a["dataset"], int(a["num_scales_dae"]))
    if key not in SCORE_CH_MULT:
        raise RecipeError(f"{run.recipe}.stage2: no official channel multiplier for {key}")
    cfg = {
        "kind": "lsgm", "seed": 0, "data": {"name": run.dataset},
        "score": {"nf": int(a["num_channels_dae"]), "ch_mult": SCORE_CH_MULT[key],
                  "num_res_blocks": int(a["num_cell_per_scale_dae"]), "attn_resolutions": SCORE_ATTN_RESOLUTIONS,
                  "dropout": float(a["dropout"]), "embedding_type": a["embedding_type"],
                  "embedding_scale": float(a["embedding_scale"]), "embedding_dim": int(a["embedding_dim"]),
                  "fir": bool(a["fir"])},
        "sde": sde,
        "objective": {"weighting": weighting, "sampling": sampling, "q_objective": IW_SAMPLE_Q[a["iw_sample_q"]],
                      "mode": "disjoint" if a["disjoint_training"] else "joint", "train_vae": bool(a["train_vae"]),
                      "mixed_score": True, "mixing_logit_init": float(a["mixing_logit_init"]),
                      "drop_inactive_var": bool(a["drop_inactive_var"]), "update_q_ema": bool(a["update_q_ema"])},
        "train": {
            "steps": run.steps, "global_batch": run.global_batch, "max_batch_per_process": run.per_gpu_batch,
            "vae_optim": {"name": "adamw", "lr": float(a["learning_rate_vae"]), "lr_min": float(a["learning_rate_min_vae"]),
                          "eps": VAE_ADAM_EPS, "weight_decay": float(a["weight_decay"]), "warmup_steps": run.warmup_steps},
            "score_optim": {"name": "adamw", "lr": float(a["learning_rate_dae"]),
                            "lr_min": float(a["learning_rate_min_dae"]), "eps": DAE_ADAM_EPS,
                            "weight_decay": float(a["weight_decay"]), "warmup_steps": run.warmup_steps},
            "kl": {"continue_anneal": bool(a["cont_kl_anneal"]), "balance": bool(a["kl_balance_vada"])},
            "sr_lambda_vae": float(a["weight_decay_norm_vae"]), "sr_lambda_score": float(a["weight_decay_norm_dae"]),
            "sr_score_conv": not a["custom_conv_dae"],
            "ema_decay": float(a["ema_decay"]), "grad_clip": float(a["grad_clip_max_norm"]),
        },
    }
    # stage-2 KL continuation is fixed here to the official defaults 0.7 -> 1.0 over the first 10 %
    fixed = {"kl_anneal_portion_vada": 0.1, "kl_const_portion_vada": 0.0, "kl_const_coeff_vada": 0.7,
             "kl_max_coeff_vada": 1.0}
    for flag, value in fixed.items():
        if float(a[flag]) != value:
            raise RecipeError(f"{run.recipe}.stage2: --{flag} {a[flag]} is not modelled (only {value})")
    if a["embedding_type"] not in ("positional", "fourier"):
        raise RecipeError(f"{run.recipe}.stage2: --embedding_type {a['embedding_type']} is not modelled "
                          "(positional, fourier)")
    if a["progressive"] != "none" or a["progressive_input"] != "none":
        raise RecipeError(f"{run.recipe}.stage2: progressive score networks are not modelled")
    deviations = [
        "recipe: no in-training ODE evaluation (--train_ode_eps/--train_ode_solver_tol) and no checkpoint_fid / "
        "checkpoint_nll selection; the final EMA weights are evaluated",
    ]
    if "arch_instance_dae" in run.flags:
        deviations.append(f"recipe: --arch_instance_dae {run.flags['arch_instance_dae']} dropped: the flag is not "
                          "defined by train_vada.py (LSGM#5: the README command fails as written)")
    return cfg, deviations


def run_config(run: OfficialRun) -> tuple[dict, list[str]]:
    """(RunConfig mapping, deviations) of an official training command."""
    return stage1_config(run) if run.stage == "stage1" else stage2_config(run)


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


# ------------------------------------------------------------------------------ score_sde (the original SGM)
@lru_cache(maxsize=1)
def score_sde() -> dict:
    """The parsed ``score_sde.yaml``."""
    with open(SCORE_SDE_FILE, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _progressive_deviations(model: dict) -> list[str]:
    """score_sde's progressive image paths, which our NCSN++ does not have, as named deviations."""
    out = []
    if model["progressive"] != "none":
        out.append(f"recipe: score_sde's progressive output path (model.progressive {model['progressive']}) is not "
                   "modelled: our NCSN++ has no progressive paths")
    if model["progressive_input"] != "none":
        out.append(f"recipe: score_sde's progressive input path (model.progressive_input {model['progressive_input']}) "
                   "is not modelled: our NCSN++ has no progressive paths")
    return out


def score_sde_config(name: str) -> tuple[dict, list[str], dict]:
    """(RunConfig mapping of kind sgm, deviations, evaluation settings) of one score_sde config (``score_sde.yaml``).

    VESDE, unweighted denoising score matching (``likelihood_weighting: false``: w_un with t ~ U[t_eps, 1]; the loss
    is sum 0.5 ||eps - eps_theta||^2 up to the factor (1 - t_eps) of r(t)), Fourier features of log sigma_t, the
    network's output read as eps (``scale_by_sigma``), data in [0, 1], Adam without weight decay, linear warm-up then
    a constant rate, gradient clipping, EMA. The PC sampler's steps and snr become the ``cost`` evaluation's."""
    configs = score_sde()["configs"]
    if name not in configs:
        raise RecipeError(f"score_sde config {name!r} is not in {SCORE_SDE_FILE.name}; known: {sorted(configs)}")
    c = configs[name]
    tr, sa, da, mo, op, k = c["training"], c["sampling"], c["data"], c["model"], c["optim"], c["constants"]
    checks = {"training.sde": (tr["sde"], "vesde"), "training.continuous": (tr["continuous"], True),
              "training.reduce_mean": (tr["reduce_mean"], False), "sampling.method": (sa["method"], "pc"),
              "sampling.predictor": (sa["predictor"], "reverse_diffusion"),
              "sampling.corrector": (sa["corrector"], "langevin"), "sampling.noise_removal": (sa["noise_removal"], True),
              "model.scale_by_sigma": (mo["scale_by_sigma"], True), "model.skip_rescale": (mo["skip_rescale"], True),
              "model.resblock_type": (mo["resblock_type"], "biggan"), "model.fir_kernel": (mo["fir_kernel"], [1, 3, 3, 1]),
              "model.init_scale": (mo["init_scale"], 0.0), "model.conv_size": (mo["conv_size"], 3),
              "model.normalization": (mo["normalization"], "GroupNorm"), "model.nonlinearity": (mo["nonlinearity"], "swish"),
              "optim.optimizer": (op["optimizer"], "Adam"), "data.uniform_dequantization": (da["uniform_dequantization"], False)}
    for path, (value, needed) in checks.items():
        if value != needed:
            raise RecipeError(f"score_sde {name}: {path} = {value!r} is not modelled (only {needed!r})")
    cfg = {
        "kind": "sgm", "seed": 0,
        "data": {"centered": bool(da["centered"])},
        "sde": {"type": "vesde", "sigma_min": float(mo["sigma_min"]), "sigma_max": float(mo["sigma_max"]),
                "t_eps": float(k["train_t_eps"])},
        "objective": {"weighting": "ll" if tr["likelihood_weighting"] else "un", "sampling": "uniform",
                      "mixed_score": False},
        "score": {"nf": int(mo["nf"]), "ch_mult": list(mo["ch_mult"]), "num_res_blocks": int(mo["num_res_blocks"]),
                  "attn_resolutions": list(mo["attn_resolutions"]), "dropout": float(mo["dropout"]),
                  "embedding_type": mo["embedding_type"], "embedding_scale": float(mo["fourier_scale"]),
                  "fir": bool(mo["fir"]), "condition": "log_sigma"},
        "train": {"steps": int(tr["n_iters"]), "global_batch": int(tr["batch_size"]), "ema_decay": float(mo["ema_rate"]),
                  "grad_clip": float(op["grad_clip"]),
                  "score_optim": {"name": "adam", "lr": float(op["lr"]), "lr_min": float(op["lr"]),
                                  "eps": float(op["eps"]), "weight_decay": float(op["weight_decay"]),
                                  "betas": [float(op["beta1"]), float(k["adam_beta2"])],
                                  "warmup_steps": int(op["warmup"])}},
    }
    deviations = _progressive_deviations(mo)
    if not da["random_flip"]:
        deviations.append("recipe: score_sde trains without flips; ours flips CelebA-HQ (data pipeline)")
    pc = {"snr": float(sa["snr"]), "t_eps": float(k["sampling_t_eps"])}
    evals = {"cost": {**pc, "pc_steps": [int(mo["num_scales"])]},
             "fid": {**pc, "sampler": "pc", "pc_steps": int(mo["num_scales"])}}  # the published FIDs: PC samples
    return cfg, deviations, evals

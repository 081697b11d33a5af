"""The official commands translated into this project's run configs (kind vae / lsgm), with the named deviations:
what an official flag has no counterpart for. Torch-free."""

from __future__ import annotations

from lsgm.datasets_info import DATASETS
from lsgm.recipes.official import OfficialRun, RecipeError

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

"""score_sde's configs of the original SGM (``score_sde.yaml``), the pixel-space baseline, translated into run configs
(kind sgm) with the PC sampler's evaluation settings. Torch-free."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from lsgm.recipes.official import RecipeError

SCORE_SDE_FILE = Path(__file__).with_name("score_sde.yaml")


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

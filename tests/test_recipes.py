"""Recipe parity: every paper-scale run, RESOLVED (after every merge and default), against the official commands.

The official commands are data (lsgm/recipes/official.yaml: the NVlabs/LSGM README commands verbatim and the
scripts' parser defaults). Here each resolved run config from ``lsgm.plan.Plan(config.yaml, "paper")`` -- the
very object the Snakefile submits -- is compared field by field with what the official command means, written
out independently of the translation in lsgm/recipes (only the command parsing is shared). Every difference
must be a named deviation in the run's config (hence its run.json) and in the README's deviation list.
Torch-free and fast.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from lsgm import launch, recipes
from lsgm.config import split_batch
from lsgm.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SIZES = {"cifar10": 50_000, "celeba256": 27_000, "mnist": 60_000, "omniglot": 24_345}  # official splits
DATASETS = {"cifar10": "cifar10", "celeba_256": "celeba256", "mnist": "mnist", "omniglot": "omniglot"}
MAIN = {  # (kind, run name at paper scale) -> official recipe
    ("vae", "balanced"): "cifar10_balanced", ("vae", "fid"): "cifar10_fid", ("vae", "nll"): "cifar10_nll",
    ("vae", "celeba"): "celeba256", ("vae", "mnist"): "mnist", ("vae", "omniglot"): "omniglot",
    ("lsgm", "balanced"): "cifar10_balanced", ("lsgm", "fid"): "cifar10_fid", ("lsgm", "nll"): "cifar10_nll",
    ("lsgm", "celeba"): "celeba256", ("lsgm", "mnist"): "mnist", ("lsgm", "omniglot"): "omniglot",
}


@pytest.fixture(scope="module")
def paper() -> Plan:
    return Plan(yaml.safe_load((ROOT / "config.yaml").read_text()), "paper")


def official_args(recipe: str, stage: str) -> dict:
    script, flags = recipes.parse_command(recipes.official()["recipes"][recipe][stage]["command"])
    return recipes.official_args(script, flags)


def paper_run(paper: Plan, kind: str, name: str, recipe: str):
    dataset = DATASETS[official_args(recipe, "stage1")["dataset"]]
    return paper.run(kind, dataset, name, 0)


def iters_per_epoch(dataset: str, gpus: int, per_gpu: int) -> int:
    """The official len(train_queue): DistributedSampler shard ceil(N / GPUs), full batches only."""
    return math.ceil(TRAIN_SIZES[dataset] / gpus) // per_gpu


def expected_stage1(a: dict) -> dict:
    dataset = DATASETS[a["dataset"]]
    gpus = a["num_process_per_node"] * a["num_proc_node"]
    per_epoch = iters_per_epoch(dataset, gpus, a["batch_size"])
    return {
        "data.name": dataset,
        "train.global_batch": gpus * a["batch_size"], "train.steps": a["epochs"] * per_epoch,
        # train_vae.py: Adamax(lr=learning_rate_vae, weight_decay, eps=1e-3); warm-up then cosine to lr_min
        "train.vae_optim.name": "adamax", "train.vae_optim.lr": a["learning_rate_vae"],
        "train.vae_optim.lr_min": a["learning_rate_min_vae"], "train.vae_optim.eps": 1e-3,
        "train.vae_optim.weight_decay": a["weight_decay"], "train.vae_optim.warmup_steps": a["warmup_epochs"] * per_epoch,
        "train.kl.anneal_portion": a["kl_anneal_portion"], "train.kl.max_coeff": a["kl_max_coeff"],
        "train.kl.const_portion": a["kl_const_portion"], "train.kl.const_coeff": a["kl_const_coeff"],
        "train.kl.balance": True, "train.sr_lambda_vae": a["weight_decay_norm"], "train.grad_clip": 0.0,
        "vae.num_channels": a["num_channels_enc"], "vae.channel_mult": a["channel_mult"],
        "vae.num_preprocess_blocks": a["num_preprocess_blocks"], "vae.num_preprocess_cells": a["num_preprocess_cells"],
        "vae.num_postprocess_blocks": a["num_postprocess_blocks"],
        "vae.num_postprocess_cells": a["num_postprocess_cells"], "vae.num_latent_scales": a["num_latent_scales"],
        "vae.num_groups_per_scale": a["num_groups_per_scale"], "vae.num_latent_per_group": a["num_latent_per_group"],
        "vae.num_cell_per_cond_enc": a["num_cell_per_cond_enc"], "vae.num_cell_per_cond_dec": a["num_cell_per_cond_dec"],
        "vae.arch_instance": a["arch_instance"], "vae.use_se": a["use_se"], "vae.log_sig_q_scale": a["log_sig_q_scale"],
        "vae.num_nf": a["num_nf"], "vae.progressive_input": a["progressive_input_vae"],
        # train_vae.py keeps the best of evaluations every max(epochs // 40, 1) epochs, 10-sample bound
        "train.select_every_steps": max(a["epochs"] // 40, 1) * per_epoch, "train.select_iw_samples": 10,
    }


P_MODES = {"ll_uniform": ("ll", "uniform"), "ll_iw": ("ll", "is"), "drop_all_uniform": ("un", "uniform"),
           "drop_all_iw": ("un", "is"), "drop_sigma2t_uniform": ("re", "uniform"), "drop_sigma2t_iw": ("re", "is")}
Q_MODES = {"reweight_p_samples": "rew", "ll_iw": "ll_is", "ll_uniform": "ll_uniform"}
CH_MULT = {("cifar10", 3): [1, 1, 1], ("omniglot", 3): [1, 1, 1], ("mnist", 2): [1, 1],
           ("celeba_256", 4): [1, 2, 2, 2]}  # util/utils.py get_channel_multiplier


def expected_stage2(a: dict) -> dict:
    dataset = DATASETS[a["dataset"]]
    gpus = a["num_process_per_node"] * a["num_proc_node"]
    per_epoch = iters_per_epoch(dataset, gpus, a["batch_size"])
    weighting, sampling = P_MODES[a["iw_sample_p"]]
    out = {
        "data.name": dataset,
        "train.global_batch": gpus * a["batch_size"], "train.steps": a["epochs"] * per_epoch,
        # train_vada.py: FusedAdam (apex, adam_w_mode: AdamW) VAE eps 1e-3, DAE eps 1e-4, same weight decay
        "train.vae_optim.name": "adamw", "train.vae_optim.lr": a["learning_rate_vae"],
        "train.vae_optim.lr_min": a["learning_rate_min_vae"], "train.vae_optim.eps": 1e-3,
        "train.vae_optim.weight_decay": a["weight_decay"], "train.vae_optim.warmup_steps": a["warmup_epochs"] * per_epoch,
        "train.score_optim.name": "adamw", "train.score_optim.lr": a["learning_rate_dae"],
        "train.score_optim.lr_min": a["learning_rate_min_dae"], "train.score_optim.eps": 1e-4,
        "train.score_optim.weight_decay": a["weight_decay"],
        "train.score_optim.warmup_steps": a["warmup_epochs"] * per_epoch,
        "train.kl.continue_anneal": a["cont_kl_anneal"], "train.kl.balance": a["kl_balance_vada"],
        "train.sr_lambda_vae": a["weight_decay_norm_vae"], "train.sr_lambda_score": a["weight_decay_norm_dae"],
        # the official SR covers the score network's convs unless --custom_conv_dae
        "train.sr_score_conv": not a["custom_conv_dae"],
        "train.ema_decay": a["ema_decay"], "train.grad_clip": a["grad_clip_max_norm"],
        "sde.type": {"vpsde": "vpsde", "geometric_sde": "geometric"}[a["sde_type"]], "sde.t_eps": a["time_eps"],
        "objective.weighting": weighting, "objective.sampling": sampling,
        "objective.q_objective": Q_MODES[a["iw_sample_q"]],
        "objective.mode": "disjoint" if a["disjoint_training"] else "joint", "objective.train_vae": a["train_vae"],
        "objective.mixing_logit_init": a["mixing_logit_init"], "objective.drop_inactive_var": a["drop_inactive_var"],
        "objective.update_q_ema": a["update_q_ema"], "objective.mixed_score": True,
        "score.nf": a["num_channels_dae"], "score.ch_mult": CH_MULT[(a["dataset"], a["num_scales_dae"])],
        "score.num_res_blocks": a["num_cell_per_scale_dae"], "score.attn_resolutions": [16],
        "score.dropout": a["dropout"], "score.embedding_type": a["embedding_type"],
        "score.embedding_scale": a["embedding_scale"], "score.embedding_dim": a["embedding_dim"],
        "score.fir": a["fir"],  # --fir: FIR [1, 3, 3, 1] resampling in the score network's resblocks
    }
    if a["sde_type"] == "vpsde":
        out.update({"sde.beta_min": a["beta_start"], "sde.beta_max": a["beta_end"], "sde.sigma2_0": a["sigma2_0"]})
    else:
        out.update({"sde.sigma2_min": a["sigma2_min"], "sde.sigma2_max": a["sigma2_max"],
                    "sde.sigma2_0_geometric": a["sigma2_0"]})
    # the stage-2 KL continuation is the fixed official 0.7 -> 1.0 over the first 10 % (parser defaults)
    assert (a["kl_anneal_portion_vada"], a["kl_const_portion_vada"], a["kl_const_coeff_vada"],
            a["kl_max_coeff_vada"]) == (0.1, 0.0, 0.7, 1.0)
    return out


def lookup(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def assert_matches(run, expected: dict) -> None:
    diffs = [f"{k}: resolved {lookup(run.config, k)!r} != official {v!r}" for k, v in expected.items()
             if lookup(run.config, k) != v]
    assert not diffs, f"{run.kind}/{run.name}: " + "; ".join(diffs)


@pytest.mark.parametrize("kind, name", sorted(MAIN))
def test_resolved_paper_run_equals_the_official_command(paper, kind, name):
    recipe = MAIN[(kind, name)]
    stage = "stage1" if kind == "vae" else "stage2"
    a = official_args(recipe, stage)
    run = paper_run(paper, kind, name, recipe)
    assert_matches(run, expected_stage1(a) if kind == "vae" else expected_stage2(a))
    if kind == "lsgm":  # the LSGM trains the backbone's architecture
        assert run.config["vae"] == run.backbone.config["vae"]
        assert run.backbone.official == recipe


@pytest.mark.parametrize("kind, name", sorted(MAIN))
def test_launch_keeps_the_official_global_batch(paper, kind, name, monkeypatch):
    """Items 1 and 7: processes x per-process batch x accumulation is the official global batch, and the launcher
    starts exactly that many processes (one torchrun per node across nodes, as the official 2 x 8 GPU runs)."""
    recipe = MAIN[(kind, name)]
    a = official_args(recipe, "stage1" if kind == "vae" else "stage2")
    run = paper_run(paper, kind, name, recipe)
    official_gpus = a["num_process_per_node"] * a["num_proc_node"]
    job = run.job()
    assert job["global_batch"] == official_gpus * a["batch_size"]
    assert job["gpus"] * job["per_gpu_batch"] * job["grad_accum"] == job["global_batch"]
    # the trainer derives its split from the run config and its world size with the same rule
    assert split_batch(run.config["train"]["global_batch"], job["gpus"],
                       run.config["train"]["max_batch_per_process"]) == (job["per_gpu_batch"], job["grad_accum"])
    # with max_gpus_per_node 8 every official run fits: the official geometry exactly, no accumulation
    assert (job["nodes"], job["gpus"], job["per_gpu_batch"], job["grad_accum"]) == \
        (a["num_proc_node"], official_gpus, a["batch_size"], 1)
    # the launcher's geometry, and the process tree it becomes in a Slurm allocation of those nodes (lsgm.launch)
    prefix = run.launcher().split()
    assert prefix[:2] == ["lsgm", "launch"] and prefix[-1] == "--" and "--gpu" in prefix
    nnodes, nproc = (int(prefix[prefix.index(flag) + 1]) for flag in ("--nodes", "--nproc-per-node"))
    assert nproc * nnodes == official_gpus and nnodes == a["num_proc_node"]
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": str(nnodes), "SLURM_JOB_NODELIST": "g1", "SLURM_CPUS_PER_TASK": "8"}
    monkeypatch.setattr(launch, "first_node", lambda nodelist: "g1")
    cmd = " ".join(launch.build(nnodes, nproc, True, ["train-x"], env)[0])
    if nnodes > 1:
        assert cmd.startswith(f"srun --nodes={nnodes} --ntasks-per-node=1") and "--rdzv_backend=c10d" in cmd
    assert (f"--nproc_per_node={nproc}" in cmd) == (official_gpus > 1)


def test_fewer_gpus_keep_the_global_batch_by_accumulation():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg.update(max_gpus_per_node=4, max_nodes=1)
    run = Plan(cfg, "paper").run("lsgm", "cifar10", "fid", 0)
    job = run.job()
    assert (job["nodes"], job["gpus"], job["per_gpu_batch"], job["grad_accum"], job["global_batch"]) == (1, 4, 16, 4, 256)


def official_eval(recipe: str) -> dict:
    out = {}
    entries = recipes.official()["recipes"][recipe]["eval"]
    entries = recipes.official()["recipes"][entries]["eval"] if isinstance(entries, str) else entries
    for entry in entries:
        script, flags = recipes.parse_command(entry["command"])
        a = recipes.official_args(script, flags)
        common = {"t_eps": a["ode_eps"], "tolerance": a["ode_solver_tol"], "batch_size": a["batch_size"]}
        if a["nll_ode_eval"]:
            out["nll"] = {**common, "iw_samples": a["num_iw_samples"], "inner": a["num_iw_inner_samples"]}
        if a["fid_ode_eval"]:
            out["fid"] = {**common, "n_samples": a["num_fid_samples"], "temperature": a["temp"],
                          "vae_temperature": a["vae_temp"],
                          "bn_mode": "train" if a["vae_train_mode"] else "eval"}
    return out


@pytest.mark.parametrize("name", ["balanced", "fid", "nll", "celeba", "mnist", "omniglot"])
def test_evaluation_settings_equal_the_official_evaluation_commands(paper, name):
    """Item 4 among them: the CIFAR-10 FID samples to ode_eps 1e-6 as the official command does."""
    recipe = MAIN[("lsgm", name)]
    run = paper_run(paper, "lsgm", name, recipe)
    for metric, expected in official_eval(recipe).items():
        assert metric in run.evals
        got = {k: run.eval_settings[metric][k] for k in expected}
        assert got == expected, (name, metric)
    if recipe.startswith("cifar10"):
        assert run.eval_settings["fid"]["t_eps"] == 1e-6 and run.eval_settings["nll"]["t_eps"] == 1e-6


# The official scripts/precompute_fid_statistics.py (reference doc section 6.2), written out here independently of
# lsgm.datasets_info: the splits it reads per dataset (CelebA-HQ-256 and OMNIGLOT: train + validation), the files'
# 8 bits through its generic transform, at most 50,000 images.
OFFICIAL_FID_REFERENCE = {"cifar10": ("train",), "celeba256": ("train", "test"), "mnist": ("train",),
                          "omniglot": ("train", "test")}


@pytest.mark.parametrize("dataset", sorted(OFFICIAL_FID_REFERENCE))
def test_fid_reference_statistics_follow_the_official_script(paper, dataset):
    from lsgm.datasets_info import FID_REFERENCE

    spec = FID_REFERENCE[dataset]
    assert (spec.splits, spec.bits, spec.max_samples) == (OFFICIAL_FID_REFERENCE[dataset], 8, 50_000)
    if dataset in paper.sc["fd"]["features"]:  # the paper scale's FID: the DAG asks for exactly these statistics
        path = paper.stats_path(dataset)
        assert path.startswith(f"results/paper/fid_stats/{dataset}-{'+'.join(spec.splits)}-8bit-"), path


def test_table6_cells_follow_their_sde_recipe(paper):
    """Each Table 6 cell: the CIFAR-10 FID stage-2 recipe with its own objective and its SDE's official parameters."""
    vp, geo = official_args("cifar10_fid", "stage2"), official_args("cifar10_nll", "stage2")
    for run in paper.table6_runs():
        sde = run.config["sde"]
        if sde["type"] == "vpsde":
            assert (sde["beta_min"], sde["beta_max"], sde["sigma2_0"], sde["t_eps"]) == \
                (vp["beta_start"], vp["beta_end"], vp["sigma2_0"], vp["time_eps"])
        else:
            assert (sde["sigma2_min"], sde["sigma2_max"], sde["sigma2_0_geometric"], sde["t_eps"]) == \
                (geo["sigma2_min"], geo["sigma2_max"], geo["sigma2_0"], geo["time_eps"])
        assert run.config["train"]["vae_optim"]["name"] == "adamw"
        assert any("ASSUMED" in d for d in run.config["deviations"])


@pytest.mark.parametrize("name, fir", [("fid", True), ("nll", True), ("balanced", True), ("celeba", True),
                                       ("mnist", False), ("omniglot", False)])
def test_score_network_fir_follows_the_official_commands(paper, name, fir):
    """The CIFAR-10 and CelebA-HQ-256 stage-2 commands pass --fir, the MNIST and OMNIGLOT ones do not; the
    resolved paper config (hence the network built from it) follows. The pixel-space SGM baseline takes
    score_sde's NCSN++ setting (fir = True in its CelebA-HQ and CIFAR-10 configs)."""
    run = paper_run(paper, "lsgm", name, MAIN[("lsgm", name)])
    assert run.config["score"]["fir"] is fir
    assert ("--fir" in recipes.official()["recipes"][MAIN[("lsgm", name)]]["stage2"]["command"].split()) is fir
    assert paper.run("sgm", "celeba256", "celeba", 0).config["score"]["fir"] is True


def test_every_deviation_is_named_in_the_run_and_in_the_docs(paper):
    """Official flags without a counterpart are deviations of the runs they affect and are listed, word for word, in
    docs/deviations.md, which the README links."""
    assert "(docs/deviations.md)" in (ROOT / "README.md").read_text()
    listed = " ".join((ROOT / "docs" / "deviations.md").read_text().replace("`", "").split())
    nll_vae = paper.run("vae", "cifar10", "nll", 0)
    assert nll_vae.config["vae"]["num_nf"] == 2 and not any("num_nf" in d for d in nll_vae.config["deviations"])
    celeba = paper.run("lsgm", "celeba256", "celeba", 0)
    assert not any("--fir" in d for d in celeba.config["deviations"])  # modelled (score.fir), not a deviation
    seen = set()
    for run in paper.runs.values():
        for deviation in run.config["deviations"]:
            if deviation.startswith("recipe:"):
                seen.add(deviation)
    assert seen
    missing = [d for d in sorted(seen) if " ".join(d.split()) not in listed]
    assert not missing, f"deviations missing from docs/deviations.md: {missing}"


def test_official_data_parses_and_refuses_unknown_flags():
    for recipe in recipes.recipe_names():
        for stage in ("stage1", "stage2"):
            run = recipes.official_run(recipe, stage)
            assert run.source and run.gpus >= 1
    with pytest.raises(recipes.RecipeError, match="no flag"):
        recipes.official_args("train_vada", {"not_a_flag": 1})


def test_partial_nested_override_keeps_the_fields_own_defaults():
    """Item 2: a partial override of a nested section merges into THAT field's default, never a generic one.
    (The old loader built OptimConfig(warmup_steps=N): every paper backbone silently trained with AdamW lr 1e-3.)"""
    from lsgm.config import RunConfig, from_dict

    cfg = from_dict(RunConfig, {"train": {"vae_optim": {"warmup_steps": 7}, "kl": {"max_coeff": 0.7}}})
    assert (cfg.train.vae_optim.name, cfg.train.vae_optim.lr, cfg.train.vae_optim.eps) == ("adamax", 1e-2, 1e-3)
    assert cfg.train.vae_optim.warmup_steps == 7
    assert (cfg.train.kl.anneal_portion, cfg.train.kl.max_coeff, cfg.train.kl.balance) == (0.3, 0.7, True)
    assert cfg.train.score_optim.eps == 1e-4  # the sibling section keeps its own (non-generic) default


def test_pixel_sgm_follows_score_sdes_celebahq_256_config(paper):
    """The paper-scale pixel SGM against score_sde's CelebA-HQ-256 continuous NCSN++ config (lsgm/recipes/score_sde.yaml,
    written out from configs/default_lsun_configs.py + configs/ve/celebahq_256_ncsnpp_continuous.py), point by point;
    what has no counterpart is a named deviation of the run."""
    c = recipes.score_sde()["configs"]["celebahq_256_ncsnpp_continuous"]
    tr, sa, da, mo, op, k = c["training"], c["sampling"], c["data"], c["model"], c["optim"], c["constants"]
    run = paper.run("sgm", "celeba256", "celeba", 0)
    cfg = run.config
    assert tr["sde"] == "vesde" and cfg["sde"]["type"] == "vesde"
    assert (cfg["sde"]["sigma_min"], cfg["sde"]["sigma_max"]) == (mo["sigma_min"], mo["sigma_max"]) == (0.01, 348)
    assert cfg["sde"]["t_eps"] == k["train_t_eps"] == 1e-5
    # likelihood_weighting false: unweighted DSM on sigma-scaled noise, t ~ U[t_eps, 1], no mixed score
    assert not tr["likelihood_weighting"] and (cfg["objective"]["weighting"], cfg["objective"]["sampling"]) == ("un", "uniform")
    assert cfg["objective"]["mixed_score"] is False
    assert cfg["data"]["centered"] is da["centered"] is False
    score = cfg["score"]
    assert (score["nf"], score["ch_mult"], score["num_res_blocks"], score["attn_resolutions"]) == \
        (mo["nf"], list(mo["ch_mult"]), mo["num_res_blocks"], list(mo["attn_resolutions"]))
    assert (score["dropout"], score["embedding_type"], score["embedding_scale"], score["fir"]) == \
        (mo["dropout"], mo["embedding_type"], mo["fourier_scale"], mo["fir"])
    assert score["condition"] == "log_sigma"  # Fourier features of log sigma_t; output / sigma = the eps-parameterisation
    train = cfg["train"]
    assert (train["steps"], train["global_batch"], train["ema_decay"], train["grad_clip"]) == \
        (tr["n_iters"], tr["batch_size"], mo["ema_rate"], op["grad_clip"])
    opt = train["score_optim"]
    assert (opt["name"], opt["lr"], opt["lr_min"], opt["eps"], opt["weight_decay"], opt["betas"], opt["warmup_steps"]) == \
        ("adam", op["lr"], op["lr"], op["eps"], op["weight_decay"], [op["beta1"], k["adam_beta2"]], op["warmup"])
    assert train["amp"] == "off"  # score_sde trains in fp32 (no autocast)
    cost = run.eval_settings["cost"]
    assert cost["pc_steps"] == [mo["num_scales"]] and cost["snr"] == sa["snr"] and cost["t_eps"] == k["sampling_t_eps"]
    assert (sa["predictor"], sa["corrector"], sa["n_steps_each"], sa["noise_removal"]) == \
        ("reverse_diffusion", "langevin", 1, True)  # what lsgm.diffusion.sampling.pc_sample implements (one corrector step)
    named = [d for d in cfg["deviations"] if d.startswith("recipe:")]
    assert any("model.progressive output_skip" in d for d in named) and any("progressive_input input_skip" in d for d in named)
    assert not any("ASSUMED pixel" in d for d in named)

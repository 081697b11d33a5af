"""lsgm.plan without Snakemake: what the schema leaves to Python (dataset names, Table 6 cells) fails at plan
time with one line naming the key, and the resources the rules ask for are the plan's arithmetic."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml

from lsgm.plan import EVAL_RESOURCE_KEYS, TRAIN_RESOURCE_KEYS, Plan, PlanError

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())


def plan_error(mutate, scale: str = "quick") -> str:
    cfg = copy.deepcopy(CONFIG)
    mutate(cfg)
    with pytest.raises(PlanError) as err:
        Plan(cfg, scale)
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["scales"]["quick"]["datasets"].update(cifar10="digitz"),
     "scales.quick.datasets.cifar10: 'digitz' is not a dataset of lsgm/datasets_info.py"),
    (lambda c: c["scales"]["quick"]["datasets"].update(cifar100="digits"),
     "scales.quick.datasets: 'cifar100' is not a dataset of lsgm/datasets_info.py"),
    (lambda c: c["scales"]["quick"]["fd"]["features"].update(mnist="inception"),
     "scales.quick.fd.features: 'mnist' is not a dataset of this scale"),
    (lambda c: c["scales"]["quick"]["datasets"].pop("omniglot"),
     "dataset 'omniglot' missing from scales.quick.datasets"),
    (lambda c: c["table6"]["grid"]["vpsde"].append("re-is-rwe"),
     "table6.grid.vpsde: Table 6 cell 're-is-rwe' of SDE 'vpsde': q_objective 'rwe' is not one of"),
    (lambda c: c["table6"]["grid"].update(vesde=["ll-uniform-rew"]),
     "table6.grid.vesde: Table 6 cell 'll-uniform-rew' of SDE 'vesde': sde 'vesde' is not one of vpsde, geometric"),
    (lambda c: c["table6"]["grid"]["vpsde"].append("ll-uniform-ll_uniform"),
     "'ll-uniform-ll_uniform' is not a Table 6 column"),
    (lambda c: c["table6"]["grid"]["geometric"].append("ll-is-rew"),
     "Table 6 cell 'll-is-rew' with the geometric SDE: identical to 'll-uniform-*'"),
    (lambda c: c["table6"]["sde_official"].pop("geometric"),
     "table6.sde_official: no official recipe for the geometric SDE"),
    # the Table 2: the backbone's NLL with K = 100 beside LSGM NLLs with K = 1
    (lambda c: c["scales"]["quick"]["defaults"]["vae"]["eval"]["nll"].update(iw_samples=100),
     "NLLs not like for like"),
    (lambda c: c["scales"]["quick"]["runs"]["lsgm"]["fid"].update(eval={"nll": {"inner": 4}}),
     "tables.table2: NLLs not like for like"),
    (lambda c: c["recipes"]["vae"]["balanced_stage2"].update(stage2="fidd"),
     "recipes.vae.balanced_stage2 (scale quick): stage2 'fidd' is not a recipe under recipes.lsgm"),
    # an FD's bias depends on n: Table 6's reference row with another sample count than its cells
    (lambda c: c["scales"]["quick"]["runs"]["vae"].pop("table6"),
     "tables.table6: FDs/FIDs not like for like: lsgm/geometric-init has eval.fid.n_samples = 200, "
     "vae/table6 has 250"),
    (lambda c: c["scales"]["quick"]["runs"]["sgm"]["celeba"].update(same_as="cifar"),
     "scales.quick.runs.sgm.celeba.same_as: 'cifar' is not another recipe under recipes.sgm"),
    (lambda c: c["scales"]["quick"]["runs"]["lsgm"]["fid"].update(same_as="nll"),
     "scales.quick.runs.lsgm.fid.same_as: only pixel SGM recipes (sgm) can share another recipe's model"),
    (lambda c: c["scales"]["quick"]["runs"]["sgm"].update(cifar10={"same_as": "celeba"}),
     "scales.quick.runs.sgm.celeba.same_as: 'cifar10' is itself same_as another recipe; name the trained one"),
])
def test_what_the_schema_leaves_to_python_fails_in_one_line(mutate, message):
    assert message in plan_error(mutate)


def test_eval_resources_are_per_gpu_times_gpus():
    assert Plan(CONFIG, "smoke").eval_resources() == {"gpu": None, "cpus_per_task": 1, "mem_mb": 2000, "runtime": 30}
    assert Plan(CONFIG, "paper").eval_resources() == {"gpu": 1, "cpus_per_task": 8, "mem_mb": 48000, "runtime": 1440}
    cfg = copy.deepcopy(CONFIG)
    cfg["scales"]["paper"]["resources"]["eval"].update(gpus=2)
    assert Plan(cfg, "paper").eval_resources() == {"gpu": 2, "cpus_per_task": 16, "mem_mb": 96000, "runtime": 1440}
    assert set(Plan(CONFIG, "smoke").eval_resources()) == set(EVAL_RESOURCE_KEYS) - {"gpu_model"}
    cfg["cluster"] = {"gpu_model": "a100"}  # Slurm's GPU type: --gpus=a100:N; a CPU scale asks for none
    assert Plan(cfg, "paper").eval_resources()["gpu_model"] == "a100"
    assert "gpu_model" not in Plan(cfg, "smoke").eval_resources()


def test_train_resources_one_node_several_nodes_and_cpu():
    paper = Plan(CONFIG, "paper")
    two_nodes = paper.run("lsgm", "cifar10", "fid", 0)
    assert two_nodes.resources() == {"mem_mb": 8 * 24000, "runtime": 1440, "nodes": 2, "tasks_per_node": 8,
                                     "cpus_per_task": 8, "gres": "gpu:8", "mpi": "srun"}
    assert two_nodes.threads() == 64
    cell = paper.run("lsgm", "cifar10", "vpsde-w_un-is-q_rew", 0)
    assert cell.resources() == {"mem_mb": 4 * 24000, "runtime": 1440, "cpus_per_task": 32, "gpu": 4}
    cpu = Plan(CONFIG, "smoke").run("vae", "digits", "balanced", 0)
    assert cpu.resources() == {"mem_mb": 2000, "runtime": 60, "cpus_per_task": 1, "gpu": None} and cpu.threads() == 1
    for run in paper.training_runs():
        assert set(run.resources()) <= set(TRAIN_RESOURCE_KEYS)


@pytest.mark.parametrize("scale", ["smoke", "quick", "paper"])
def test_control_continues_the_backbone_with_the_lsgm_stage2_training(scale):
    """"VAE backbone + stage-2 steps": the balanced backbone's architecture and data, the balanced LSGM's whole train
    section (steps, batch, VAE optimizer, KL schedule), continued from the backbone's weights."""
    plan = Plan(CONFIG, scale)
    seed = CONFIG["scales"][scale]["seeds"][0]
    lsgm = plan.run("lsgm", plan.runs_of("lsgm", ["balanced"])[0].dataset, "balanced", seed)
    control = plan.run("vae", lsgm.dataset, "balanced_stage2", seed)
    assert control.backbone is lsgm.backbone and control.config["vae"] == lsgm.backbone.config["vae"]
    assert control.config["train"] == {**lsgm.config["train"], "continue_backbone": True}
    assert control.config["data"] == lsgm.backbone.config["data"] and control.gpus == lsgm.gpus
    assert control.metrics_path("nll") in plan.table_inputs("table2")


def test_table6_compiles_its_backbone_as_the_reference_row():
    plan = Plan(CONFIG, "quick")
    inputs = plan.table_inputs("table6")
    assert any("/vae/table6-s0/nll.json" in p for p in inputs) and any("/vae/table6-s0/fid.json" in p for p in inputs)


def test_a_recipe_same_as_another_is_not_trained_and_its_tables_read_the_other():
    """Quick: both pixel SGM recipes train on the same stand-in; one model (the CIFAR-10 recipe's) is the pixel row of
    Tables 2 and 3 and Figure 4's pixel SGM, and runs the evaluations of both recipes."""
    quick, paper = Plan(CONFIG, "quick"), Plan(CONFIG, "paper")
    assert quick.same_as == {("sgm", "celeba"): "cifar10"}
    pixel = [r for r in quick.trained_models() if r.kind == "sgm"]
    assert {r.name for r in pixel} == {"cifar10"} and {r.evals for r in pixel} == {("fid", "cost"), ("fid",)}
    for table in ("table2", "table3"):
        rows = [p for p in quick.table_inputs(table) if "/sgm/" in p]
        assert rows == [f"results/quick/metrics/digits/sgm/cifar10-s{s}/fid.json" for s in quick.seeds]
    assert "results/quick/metrics/digits/sgm/cifar10-s0/cost.json" in quick.figure4_inputs()
    assert {r.name for r in paper.trained_models() if r.kind == "sgm"} == {"celeba", "cifar10"}  # not at paper scale
    assert "'cifar10' trains on cifar10, 'celeba' on celeba256 at this scale" in plan_error(
        lambda c: c["scales"]["paper"]["runs"]["sgm"].update(celeba={"same_as": "cifar10"}), "paper")


# ------------------------------------------------------------------------------ the paper scale in miniature
def _differing(a: dict, b: dict) -> set[str]:
    from lsgm.plan import flat_keys

    fa, fb = flat_keys(a), flat_keys(b)
    return {k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k)}


def test_miniature_is_the_resolved_paper_scale_with_sizes_changed_only():
    """Every resolved miniature run config equals its paper run config but for the declared size keys (and the data
    the miniature writes, and the run's name); the evaluations, their settings but for sample counts and batches,
    the launch nodes and the evaluations each run has are the paper's."""
    from lsgm.plan import EVAL_SIZE_KEYS, RUN_DATA_KEYS, RUN_SIZE_KEYS
    from lsgm.plan.scaling import NOTE, RULE_KEYS

    paper, mini = Plan(CONFIG, "paper"), Plan(CONFIG, "mini")
    assert set(mini.runs) == set(paper.runs) and len(paper.runs) == 41  # 33 trained + 8 controls at initialisation
    for key, run in paper.runs.items():
        small = mini.runs[key]
        # sizes, data and name, and what the scaling rules derive from the sizes (lsgm/plan/scaling.py)
        assert _differing(run.config, small.config) <= RUN_SIZE_KEYS | RUN_DATA_KEYS | RULE_KEYS | {"name", "deviations"}
        assert {d for d in small.config["deviations"] if not d.startswith(NOTE)} == set(run.config["deviations"]), key
        assert {k.split(".", 1)[1] for k in _differing(run.eval_settings, small.eval_settings)} <= EVAL_SIZE_KEYS
        assert small.evals == run.evals and small.official == run.official and small.nodes == run.nodes, key
        assert small.gpus_per_node == 1 and not small.gpu and small.config["data"]["root"] == "data/mini"
        # the global batch by accumulation, as at the paper scale on fewer GPUs
        per, accum = small.batch_split
        assert per * accum * small.nodes == small.config["train"]["global_batch"]
    assert {k for k, r in mini.runs.items() if r.nodes == 2} == {k for k, r in paper.runs.items() if r.nodes == 2}
    assert mini.runs[("lsgm", "cifar10", "fid", 0)].launcher() == "lsgm launch --nodes 2 --nproc-per-node 1 --"
    two_node = mini.runs[("lsgm", "cifar10", "fid", 0)].resources()
    assert "gres" not in two_node and two_node["tasks"] == 2 and two_node["nodes"] == 2 and two_node["mpi"] == "srun"


@pytest.mark.parametrize("path, value, key", [
    (("defaults", "lsgm", "config", "sde"), {"beta_max": 10.0}, "config.sde.beta_max"),
    (("defaults", "vae", "config", "train"), {"kl": {"max_coeff": 0.5}}, "config.train.kl.max_coeff"),
    (("table6", "config", "objective"), {"weighting": "un"}, "config.objective.weighting"),
    (("eval", "fid"), {"tolerance": 1e-2}, "eval.fid.tolerance"),
    (("runs", "vae", "celeba", "config", "vae"), {"num_nf": 0}, "config.vae.num_nf"),
])
def test_miniature_overlay_refuses_anything_but_sizes(path, value, key):
    def mutate(c):
        node = c["scales"]["mini"]["shrink"]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    message = plan_error(mutate, "mini")
    assert key in message and "a miniature may change sizes only" in message, message


def test_lsgm_plan_lists_evaluations_warns_on_the_placeholder_account_and_refuses_zero_gpus(capsys, tmp_path):
    from lsgm.plan import main

    root = Path(__file__).resolve().parents[1]
    assert main(["--scale", "paper", "--workflow-config", str(root / "config.yaml"),
                 "--profile", str(root / "workflow/profiles/slurm/config.yaml")]) == 0
    out, err = capsys.readouterr()
    assert "| fid " in out and "n_samples 50000" in out
    assert "41 training jobs and 144 evaluation jobs at scale paper" in out
    assert err.count("\n") == 1 and "slurm_account is still 'CHANGE_ME'" in err
    profile = tmp_path / "profile.yaml"
    profile.write_text("default-resources:\n  slurm_account: my_lab\n")
    assert main(["--scale", "paper", "--workflow-config", str(root / "config.yaml"), "--profile", str(profile)]) == 0
    assert capsys.readouterr().err == ""
    assert main(["--max-gpus-per-node", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "lsgm plan: error: --max-gpus-per-node must be >= 1 (got 0)\n"


@pytest.mark.parametrize("scale", ["smoke", "quick", "paper", "mini"])
def test_a_sample_grid_is_drawn_with_the_sampler_settings_of_its_fd(scale):
    """A model's grid shows the samples its FD measures (at the quick scale the pixel SGM's grid once used 20 PC
    steps beside an FD of 200, and the LSGMs' an ODE tolerance 100x looser)."""
    keys = ("sampler", "pc_steps", "snr", "tolerance", "solver", "t_eps", "temperature", "vae_temperature", "bn_mode")
    jobs = Plan(CONFIG, scale).eval_jobs()
    fid = {job["run"]: job["settings"] for job in jobs if job["kind"] == "fid"}
    grids = [job for job in jobs if job["kind"] == "samples" and job["run"] in fid]
    assert grids
    for job in grids:
        assert {k: job["settings"].get(k) for k in keys} == {k: fid[job["run"]].get(k) for k in keys}, job["run"]


def test_epochs_become_steps_by_the_official_loaders_count_once():
    """One rule (lsgm.recipes.steps_per_epoch) for the official recipes and a scale's ``epochs``: the Table 6
    backbone's 200 epochs at its global batch of 256, counted on the official recipe's 8 GPUs, are
    200 x (ceil(50000 / 8) // (256 / 8)) = 200 x 195."""
    from lsgm import recipes

    backbone = Plan(CONFIG, "paper").run("vae", "cifar10", "table6", 0)
    assert backbone.config["train"]["global_batch"] == 256 and backbone.config["train"]["steps"] == 200 * 195
    official = recipes.official_run("cifar10_fid", "stage1")
    assert official.steps == official.epochs * (math.ceil(50000 / official.gpus) // official.per_gpu_batch)


def test_a_global_batch_that_does_not_split_over_the_official_gpus_is_refused():
    def odd_batch(c):
        c["scales"]["paper"]["runs"]["vae"]["table6"]["config"]["train"]["global_batch"] = 250

    message = plan_error(odd_batch, scale="paper")
    assert message == ("recipes.vae.table6 (scale paper): epochs -> steps: a global batch of 250 does not split over "
                       "8 GPUs; give a multiple of 8"), message

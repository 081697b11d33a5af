"""The Snakemake DAG, tested like code: dry runs of every scale, the slurm profile, single targets,
config validation, and lint. No training runs here (CPU seconds each); run from anywhere."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from lsgm import plan

ROOT = Path(__file__).resolve().parents[1]

# 10 VPSDE cells + 7 geometric cells. The paper's Table 6 has 2 x 10 columns with 3 n/a cells on the
# geometric row (w_ll r_ll = U, w_un r_un rew. and w_un r_un r_ll), so 17 trained cells per dataset-seed.
TABLE6_CELLS = 17
# the controls "LSGM at initialisation" (lsgm/controls.py): one per LSGM recipe and one per Table 6 SDE
INIT_CONTROLS = 6 + 2
MAIN_LSGMS = 6  # CIFAR-10 FID / NLL / balanced, CelebA-HQ-256, MNIST, OMNIGLOT
# one per main configuration + the Table 6 backbone + the control "balanced backbone + stage-2 steps"; the quick
# scale lets the CIFAR-10 FID and NLL LSGMs share the balanced backbone (scales.quick.runs.lsgm.*.backbone)
BACKBONES = {"smoke": 8, "quick": 6, "paper": 8}


def snakemake(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["snakemake", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run."""
    block = output.split("Job stats:", 1)[1]
    counts = {}
    for line in block.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def trained(text: str) -> Counter:
    """Training jobs of a dry run by kind (vae, lsgm, sgm): the `train` rule's output path names it (or its one-seed
    variant's, for the runs with fewer seeds than the scale where seeds are batched)."""
    outputs = re.findall(r"^rule train(?:_one_seed)?:\n    input: .*\n    output: results/\w+/runs/\w+/(\w+)/", text,
                         flags=re.M)
    return Counter(outputs)


def dry_run(*args: str) -> tuple[dict[str, int], str]:
    """Plan every job: --forceall, so outputs a local run left in results/ do not change what is counted."""
    proc = snakemake("-n", "--forceall", *args)
    text = proc.stdout + proc.stderr
    return job_counts(text), text


@pytest.mark.parametrize("scale", ["smoke", "quick"])
def test_offline_scales_plan_the_whole_dag(scale):
    counts, text = dry_run("--config", f"scale={scale}")
    sc = yaml.safe_load((ROOT / "config.yaml").read_text())["scales"][scale]
    seeds = sc["seeds"]
    grid_seeds = seeds[:sc.get("table6_n_seeds") or len(seeds)]
    jobs_per_run = 1 if sc.get("batch_seeds") else len(seeds)  # batched: one job trains every seed of a run
    # the Table 6 grid (cells, each SDE's control, its backbone) on scales.S.table6_n_seeds: with fewer seeds than the
    # scale, one job per seed (rule train_one_seed where seeds are batched)
    one_seed = sc.get("batch_seeds") and len(grid_seeds) < len(seeds)
    grid_jobs = len(grid_seeds) if one_seed or not sc.get("batch_seeds") else 1
    grid = {"lsgm": TABLE6_CELLS + 2, "vae": 1}
    kinds = trained(text)
    # one pixel SGM: the CelebA-HQ recipe is same_as the CIFAR-10 one on the shared stand-in
    assert kinds == {"lsgm": (MAIN_LSGMS + INIT_CONTROLS - 2) * jobs_per_run + grid["lsgm"] * grid_jobs,
                     "vae": (BACKBONES[scale] - 1) * jobs_per_run + grid["vae"] * grid_jobs, "sgm": 1 * jobs_per_run}
    assert counts["train"] + counts.get("train_one_seed", 0) == sum(kinds.values())
    assert counts.get("train_one_seed", 0) == (sum(grid.values()) * grid_jobs if one_seed else 0)
    main = sum(kinds.values()) - sum(grid.values()) * grid_jobs
    assert counts["run_config"] == main * len(seeds) // jobs_per_run + sum(grid.values()) * len(grid_seeds) + 1  # + FD's
    assert counts["train_classifier"] == 1 and counts["fid_stats"] == 1
    assert counts["tables"] == 5 and counts["figure4"] == 1
    assert {"evaluate", "evaluate_first_seed", "run_config"} <= set(counts)
    assert f"results/{scale}/fid_stats/digits-train-8bit-classifier-v1.pt" in text
    # the n/a cells of Table 6 are not planned, the others are
    assert "geometric-w_un-is-" not in text and "geometric-w_ll-is-" not in text
    assert "vpsde-w_un-is-q_rew" in text and "geometric-w_re-is-q_ll_is" in text


def test_a_fresh_clone_runs_the_whole_dag_and_ends_with_the_reproduction_report(tmp_path):
    """The README's main command on a fresh clone plans every job (nothing committed looks up to date) and its last
    job compares the run with the committed reference run (reference/quick); the reference itself is untouched."""
    clone = tmp_path / "x"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {"PYTHONPATH": str(clone), "PATH": __import__("os").environ["PATH"]}
    fresh = subprocess.run(["snakemake", "-n"], cwd=clone, capture_output=True, text=True, timeout=120, env=env)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    counts = job_counts(fresh.stdout + fresh.stderr)
    forced, _ = dry_run()
    assert counts == forced and counts["reproduction"] == 1 and counts["train"] > 0
    assert "--reference reference/quick" in snakemake("-n", "-p", "--forceall", "results/quick/reproduction.md").stdout
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=clone, capture_output=True, text=True).stdout
    assert tracked == "", "results/ is generated: nothing in it may be committed"
    assert (clone / "reference" / "quick" / "metrics").is_dir()


def test_default_scale_is_quick():
    _, text = dry_run()
    assert "results/quick/tables/table6.md" in text and "results/smoke/" not in text


def test_slurm_profile_resolves_and_requests_gpus():
    assert (ROOT / "slurm" / "config.yaml").is_file(), "`--profile slurm` needs ./slurm/config.yaml"
    counts, text = dry_run("--profile", "slurm")
    assert trained(text)["lsgm"] == MAIN_LSGMS + TABLE6_CELLS + INIT_CONTROLS
    assert counts["fid_stats"] == 2 and "train_classifier" not in counts  # Inception at paper scale
    assert "results/paper/fid_stats/cifar10-train-8bit-inception-v1.pt" in text
    assert "--dataset celeba256 --split train+test --bits 8" in text  # the official reference (train + validation)
    jobs = re.findall(r"rule (\w+):\n(.*?)(?=\n\[|\Z)", text, flags=re.S)
    n_trained = 0
    for rule, body in jobs:
        res = re.search(r"resources: (.*)", body)
        if rule.startswith("train") or rule.startswith("eval_") or rule == "fid_stats":
            assert res, f"{rule} has no resources line"
            fields = dict(kv.split("=", 1) for kv in res.group(1).split(", "))
            gpus = int(fields["gpu"]) if "gpu" in fields else int(fields["nodes"]) * int(fields["gres"].split(":")[-1])
            assert gpus >= 1, (rule, fields)
            assert int(fields["runtime"]) > 0 and int(fields["cpus_per_task"]) >= 1
            assert fields["slurm_partition"] and fields["slurm_account"]
            assert "tasks" not in fields  # would start one copy of the command per GPU
            if rule == "train":  # the profile's set-resources reach every training job
                assert fields["slurm_extra"] == "--signal=TERM@300", fields
            n_trained += rule.startswith("train")
        if rule in ("tables", "figure4", "run_config"):
            assert res is None or "gpu=" not in res.group(1)
    assert n_trained == MAIN_LSGMS + TABLE6_CELLS + INIT_CONTROLS + BACKBONES["paper"] + 2  # + the two pixel SGMs
    # several GPUs -> torchrun DDP on one node; the 16-GPU recipes on 2 nodes x 8 GPUs, one torchrun per node
    assert "lsgm launch --nodes 1 --nproc-per-node 8 --gpu -- train-vae" in text
    two_node = re.findall(r"wildcards: scale=paper, dataset=(\w+), kind=(\w+), run=(\w+), seed=0\n"
                          r"(?:    priority: \d+\n)?    resources: "
                          r"[^\n]*nodes=2, tasks_per_node=8, gres=gpu:8, mpi=srun", text)
    assert sorted(two_node) == [("celeba256", "lsgm", "celeba"), ("celeba256", "vae", "celeba"),
                                ("cifar10", "lsgm", "balanced"), ("cifar10", "lsgm", "fid"), ("cifar10", "lsgm", "nll"),
                                ("cifar10", "vae", "balanced_stage2")]  # the control runs as its LSGM
    assert "lsgm launch --nodes 2 --nproc-per-node 8 --gpu -- train-lsgm" in text  # lsgm.launch: srun + torchrun


def test_one_table6_cell_plans_only_its_chain():
    target = "results/quick/metrics/digits/lsgm/vpsde-w_un-is-q_rew-s0/nll.json"
    counts, text = dry_run(target)
    # the grid trains on the first scales.quick.table6_n_seeds (1) seeds: one job per seed, though the scale batches its seeds
    assert counts == {"run_config": 2, "train_one_seed": 2, "evaluate_one_seed": 1, "total": 5}
    assert trained(text) == {"vae": 1, "lsgm": 1}
    assert "results/quick/runs/digits/vae/table6-s0/model.pt" in text and "-s1/" not in text and "-s2/" not in text
    proc = snakemake("-n", target.replace("-s0/", "-s1/"), check=False)
    assert proc.returncode != 0 and "has no seed 1; its seeds: 0 (scales.quick.table6_n_seeds)" in proc.stdout + proc.stderr


def test_one_table_plans_only_its_runs():
    counts, text = dry_run("results/quick/tables/table5.md")  # MNIST: LSGM, its control at initialisation, backbone
    assert trained(text) == {"lsgm": 2, "vae": 1} and counts["tables"] == 1
    assert "fid_stats" not in counts


def test_unknown_target_fails_clearly():
    proc = snakemake("-n", "results/quick/metrics/digits/lsgm/geometric-w_un-is-q_rew-s0/nll.json", check=False)
    assert proc.returncode != 0
    assert "no lsgm run 'geometric-w_un-is-q_rew'" in proc.stdout + proc.stderr


def _with_config(tmp_path, mutate) -> subprocess.CompletedProcess:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    mutate(cfg)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return snakemake("-n", "--configfile", str(path), check=False)


def test_unknown_key_fails_with_the_schema_message(tmp_path):
    proc = _with_config(tmp_path, lambda c: c["scales"]["quick"]["eval"]["nll"].update(bogus_key=1))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # one line that leads with the offending key, not a page of schema (evaluation settings: lsgm/eval/settings.py)
    assert "config.yaml: scales.quick.eval.nll.bogus_key: unknown setting of nll (known: batch_size, inner" in out
    assert "Failed validating" not in out


def test_wrong_type_fails(tmp_path):
    proc = _with_config(tmp_path, lambda c: c["scales"]["quick"]["seeds"].append("one"))
    assert proc.returncode != 0 and "is not of type 'integer'" in proc.stdout + proc.stderr


def test_impossible_table6_cell_fails_clearly(tmp_path):
    proc = _with_config(tmp_path, lambda c: c["table6"]["grid"]["geometric"].append("un-is-rew"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Table 6 cell 'un-is-rew' with the geometric SDE: r_un(t) importance sampling" in out


def _quick_run_config(c: dict, kind: str, name: str, section: dict) -> None:
    c["scales"]["quick"]["runs"].setdefault(kind, {}).setdefault(name, {})["config"] = section


def test_vpsde_with_zero_t_eps_fails_clearly(tmp_path):
    proc = _with_config(tmp_path, lambda c: _quick_run_config(c, "lsgm", "mnist", {"sde": {"t_eps": 0.0}}))
    assert proc.returncode != 0 and "sigma^2(0) = 0" in proc.stdout + proc.stderr


@pytest.mark.parametrize("section, message", [
    ({"sde": {"beta_max": -20.0}}, "sde.beta_max = -20.0 is out of range; allowed: (0, inf]"),
    ({"sde": {"sigma2_max": 1.0}}, "sde.sigma2_max = 1.0 is out of range; allowed: (0, 1)"),
    ({"sde": {"t_eps": 1.0}}, "sde.t_eps = 1.0 is out of range; allowed: [0, 1)"),
    ({"train": {"score_optim": {"lr": -1e-4}}}, "train.score_optim.lr = -0.0001 is out of range; allowed: (0, 1]"),
    ({"train": {"ema_decay": 1.5}}, "train.ema_decay = 1.5 is out of range; allowed: [0, 1]"),
    ({"train": {"global_batch": 0}}, "train.global_batch = 0 is out of range; allowed: [1, inf]"),
])
def test_out_of_range_values_fail_at_plan_time_with_one_line(tmp_path, section, message):
    """Item 6: a bad physical/optimisation value never reaches a run (it would end as a fake 'diverged' cell)."""
    proc = _with_config(tmp_path, lambda c: _quick_run_config(c, "lsgm", "mnist", section))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in out, out[-600:]
    assert "recipes.lsgm.mnist (scale quick)" in out


def test_bad_eval_setting_fails_at_plan_time(tmp_path):
    proc = _with_config(tmp_path, lambda c: c["scales"]["quick"]["eval"]["fid"].update(tolerance=-1e-5))
    assert proc.returncode != 0 and "eval.fid.tolerance = -1e-05 is out of range" in proc.stdout + proc.stderr


def _train_jobs(text: str) -> list[tuple[list[str], str]]:
    """(outputs, shell command) of every `train` job of a dry run with -p."""
    jobs = re.findall(r"^rule train:\n(.*?)^Shell command: (.*?)$", text, flags=re.M | re.S)
    return [(re.search(r"^    output: (.*)$", body, flags=re.M).group(1).split(", "), cmd) for body, cmd in jobs]


@pytest.mark.parametrize("args", [("--profile", "slurm"), ("--config", "scale=mini")])
def test_unbatched_training_commands_name_each_run_once(args):
    """One job per seed (the paper scale and its miniature): each training command gets the job's one config, its run
    folder as --out and one checkpoint folder -- never the characters of a path (the per_seed bug: --out . . . /)."""
    _, text = dry_run("-p", *args)
    jobs = _train_jobs(text)
    assert len(jobs) == MAIN_LSGMS + TABLE6_CELLS + INIT_CONTROLS + BACKBONES["paper"] + 2
    for outputs, cmd in jobs:
        (model,) = outputs
        flags = re.findall(r"--(config|out|ckpt-dir|vae) (\S+)(?= --| >)", cmd)
        assert dict(flags)["out"] == str(Path(model).parent), cmd
        assert dict(flags)["config"] == model.replace("/runs/", "/configs/").replace("/model.pt", ".yaml"), cmd
        assert len(flags) == len({k for k, _ in flags}) and " . " not in cmd, cmd
        assert cmd.count("--ckpt-dir checkpoints/") == 1, cmd


def test_run_configs_load_strictly():
    """Every planned run config loads with lsgm.config (strict) and the cells map to RunConfig.objective."""
    from lsgm.config import RunConfig, from_dict

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    for scale in plan.SCALES:
        p = plan.Plan(cfg, scale)
        for run in p.runs.values():
            from_dict(RunConfig, run.config)
        cell = p.run("lsgm", p.sc["datasets"]["cifar10"], "geometric-w_re-is-q_ll_is", 0).config
        assert cell["sde"]["type"] == "geometric" and cell["sde"]["t_eps"] == 0.0
        assert (cell["objective"]["weighting"], cell["objective"]["sampling"], cell["objective"]["q_objective"]) \
            == ("re", "is", "ll_is")
    paper = plan.Plan(cfg, "paper")
    fid = paper.run("lsgm", "cifar10", "fid", 0)
    assert fid.config["train"]["steps"] == 1875 * (50000 // 256) and fid.gpus == 16
    assert fid.config["vae"] == fid.backbone.config["vae"]


def test_lint_is_clean_but_for_software_envs():
    """Accepted lint: 'Specify a conda environment or container for each rule' -- the harness is one pinned
    pip package (pyproject.toml) installed once; every rule calls its `lsgm` console script."""
    proc = snakemake("--lint", check=False)
    items = set(re.findall(r"^\s+\* (.+?):?$", proc.stdout + proc.stderr, flags=re.M))
    assert items <= {"Specify a conda environment or container for each rule."}, items


def test_snakemake_reads_the_default_profile_without_a_flag(monkeypatch):
    """The README command resumes after a kill (rerun-incomplete, keep-going) and runs `run:` jobs in the Snakemake
    process -- otherwise each one spawns a Snakemake that parses the workflow again (~1.4 s per run config, ~100 of
    them at the quick scale). Snakemake looks for profiles/default beside the Snakefile or in the working directory
    (a profile under workflow/profiles/ alone is never read with the Snakefile at the root)."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(ROOT)
    _, args = parse_args(["--cores", "2"])
    assert args.rerun_incomplete and args.keep_going and args.force_use_threads
    run_rules = [p.name for p in (ROOT / "workflow" / "rules").glob("*.smk")
                 if re.search(r"^\s+run:\s*$", p.read_text(), re.M)]
    assert run_rules, "no rule uses run: any more; force-use-threads can go from the default profile"


# --------------------------------------------------------------------------- where a config value came from
def test_nested_command_line_values_are_yaml_scalars():
    """`--config 'scales={smoke: {...: 32}}'`: Snakemake reads nested values as strings; they are YAML scalars here."""
    proc = snakemake("-n", "--config", "scale=smoke", "scales={smoke: {eval: {fid: {n_samples: 32, tolerance: 1e-3}}}}",
                     check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-1500:]


def test_a_misspelled_command_line_key_is_blamed_on_the_command_line_with_the_closest_key():
    proc = snakemake("-n", "--config", "scale=smoke", "scales={smoke: {eval: {fid: {n_sample: 32}}}}", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ("--config (command line): scales.smoke.eval.fid.n_sample: unknown setting of fid; did you mean "
            "'n_samples'? (known: ") in out, out[-1500:]
    assert "config.yaml:" not in out


def test_an_overlay_error_is_labelled_with_its_file(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"scales": {"quick": {"eval": {"fid": {"n_samples": "many"}}}}}))
    proc = snakemake("-n", "--configfile", str(overlay), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"{overlay}: scales.quick.eval.fid.n_samples = 'many' is not an int" in out, out[-1500:]


BAD_BETA = {"scales": {"quick": {"runs": {"lsgm": {"mnist": {"config": {"sde": {"beta_max": -20}}}}}}}}


@pytest.mark.parametrize("where", ["configfile", "command line"])
def test_a_value_error_names_where_the_value_was_set(tmp_path, where):
    if where == "configfile":
        overlay = tmp_path / "overlay.yaml"
        overlay.write_text(yaml.safe_dump(BAD_BETA))
        proc, label = snakemake("-n", "--configfile", str(overlay), check=False), str(overlay)
    else:
        value = "{quick: {runs: {lsgm: {mnist: {config: {sde: {beta_max: -20}}}}}}}"
        proc, label = snakemake("-n", "--config", f"scales={value}", check=False), "--config (command line)"
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "sde.beta_max = -20.0 is out of range" in out, out[-1500:]
    assert f"{label}: " in out and "set at scales.quick.runs.lsgm.mnist.config.sde.beta_max" in out, out[-1500:]


def test_a_misspelled_run_config_key_names_the_closest_one(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"scales": {"quick": {"runs": {"lsgm": {"mnist": {
        "config": {"train": {"ema_decy": 0.99}}}}}}}}))
    proc = snakemake("-n", "--configfile", str(overlay), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "unknown key(s) ['ema_decy']" in out and "did you mean 'ema_decay'?" in out, out[-1500:]


def literal_paths(root: Path) -> list[str]:
    """``file:line`` of every quoted ``results/``, ``logs/`` or ``checkpoints/`` path in the rules, the Snakefile and
    the package, but lsgm/plan/layout.py (the one home of the DAG's file layout)."""
    files = [root / "Snakefile", *sorted((root / "workflow" / "rules").glob("*.smk")), *sorted((root / "lsgm").rglob("*.py"))]
    literal = re.compile(r"""[fr]?["'](?:results|logs|checkpoints)/""")
    return [f"{p.relative_to(root)}:{i}" for p in files if p != root / "lsgm" / "plan" / "layout.py"
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if literal.search(line) and not line.lstrip().startswith("#")]


def test_every_path_of_the_dag_comes_from_the_layout_module():
    """The rules declare lsgm.plan.layout's patterns and the plan fills the same ones: a folder moves in one place
    (the tree before it had 61 quoted paths across the Snakefile, the rules and the plan)."""
    assert literal_paths(ROOT) == []

"""The slurm profile as a user runs it: its cluster settings survive any `--config`, and `lsgm plan --profile slurm`
shows what `snakemake --profile slurm` submits (nodes, GPUs, accumulation, Slurm resources), with its cost labelled as
measured or estimate. Real `snakemake` dry runs (seconds each), no cluster needed."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from lsgm.plan import main as plan_main
from lsgm.plan.cluster import Profile, parse_config_args, workflow_config

ROOT = Path(__file__).resolve().parents[1]
FOUR = ("--config", "max_gpus_per_node=4", "scales={paper: {fd: {inception_weights: /shared/w.pth}}}")
COMPARED = ("slurm_account", "slurm_partition", "nodes", "tasks_per_node", "tasks", "gpu", "gpu_model", "gres", "mpi",
            "cpus_per_task", "mem_mb", "runtime", "slurm_extra")


def run(*cmd: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def dry_run_jobs(*args: str) -> dict[str, dict]:
    """Every job of `snakemake -n -p --forceall ARGS` by its first output: rule, wildcards, resources, shell command."""
    proc = run("snakemake", "-n", "-p", "--forceall", *args)
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", proc.stdout + proc.stderr):
        head = re.match(r"(?:local)?rule (\w+):\n", block)
        out = re.search(r"^    output: (.*)$", block, re.M)
        if not head or not out:
            continue
        res = re.search(r"^    resources: (.*)$", block, re.M)
        resources = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
        wildcards = re.search(r"^    wildcards: (.*)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        for path in out.group(1).split(", "):
            jobs[path] = {"rule": head.group(1), "resources": resources, "shell": shell.group(1) if shell else "",
                          "wildcards": wildcards.group(1) if wildcards else ""}
    return jobs


@pytest.fixture(scope="module")
def four_per_node() -> tuple[dict, dict]:
    """`snakemake -n --profile slurm --config max_gpus_per_node=4` and `lsgm plan --profile slurm` with the same flags."""
    plan = json.loads(run("lsgm", "plan", "--profile", "slurm", *FOUR, "--json").stdout)
    return dry_run_jobs("--profile", "slurm", *FOUR), plan


def test_the_profile_plus_config_plans_the_paper_scale_at_four_gpus_per_node(four_per_node):
    """The issue: `--config max_gpus_per_node=4` replaced the profile's `config:` key whole and planned the quick
    scale. The profile's settings now come from its configfile (cluster.yaml), which `--config` merges over."""
    jobs, _ = four_per_node
    train = {p: j for p, j in jobs.items() if j["rule"] == "train"}
    assert len(train) == 41 and all(p.startswith("results/paper/runs/") for p in train), sorted(train)[:3]
    assert not any("scale=quick" in j["wildcards"] for j in jobs.values())
    gres = {j["resources"].get("gres") for j in train.values()} - {None}
    assert gres == {"gpu:4"}, gres  # every multi-node job: 2 nodes x 4 GPUs, never gpu:8
    assert max(int(j["resources"].get("gpu", 0)) for j in train.values()) <= 4
    assert "--nproc-per-node 4 --gpu -- train-lsgm" in train["results/paper/runs/cifar10/lsgm/fid-s0/model.pt"]["shell"]


def test_scale_mini_still_works_through_the_profile():
    jobs = dry_run_jobs("results/mini/tables/table5.md", "--profile", "slurm", "--config", "scale=mini")
    train = [p for p, j in jobs.items() if j["rule"] == "train"]
    assert train and all(p.startswith("results/mini/") for p in train), train


def test_lsgm_plan_shows_what_snakemake_submits(four_per_node):
    """Every training and evaluation job: the same Slurm resources (account, partition, nodes, tasks, GPUs, gres,
    CPUs, memory, time, extra flags) and the same launch geometry (nodes x processes per node)."""
    jobs, plan = four_per_node
    assert plan["scale"] == "paper" and plan["config_files"][-1].endswith("slurm/cluster.yaml")
    compared = 0
    for job in plan["jobs"] + plan["eval_jobs"]:
        dry = jobs[job["target"]]
        ours = {k: str(v) for k, v in job["slurm"].items()}
        theirs = {k: v for k, v in dry["resources"].items() if k in COMPARED}
        assert ours == theirs, (job["target"], ours, theirs)
        if dry["rule"] == "train":
            per_node = job["gpus"] // job["nodes"]
            assert f"lsgm launch --nodes {job['nodes']} --nproc-per-node {per_node} --gpu --" in dry["shell"], job
            assert job["per_gpu_batch"] * job["grad_accum"] * job["gpus"] == job["global_batch"], job
        compared += 1
    assert compared == len(plan["jobs"]) + len(plan["eval_jobs"]) == 41 + 144  # the controls at init included
    accum = {j["target"]: j["grad_accum"] for j in plan["jobs"]}
    assert accum["results/paper/runs/cifar10/lsgm/fid-s0/model.pt"] == 2  # 16 official GPUs on 2 x 4


def test_lsgm_plan_prints_totals_labelled_as_estimates(capsys):
    assert plan_main(["--profile", "slurm", "--config", "cluster={gpu: A100-40GB}", "max_gpus_per_node=4"]) == 0
    out = capsys.readouterr().out
    totals = out.split("\n\n")[-1]
    assert "41 training jobs and 144 evaluation jobs at scale paper" in totals
    assert ("estimate (FLOPs x assumed utilisation): FLOPs / (A100-40GB bf16 peak 312 TFLOP/s x 10%-30% utilisation)"
            in totals), totals
    assert re.search(r"training [\d,]+-[\d,]+ \(41 of 41 jobs\)", totals), totals
    assert "peak GPU memory per job, estimate" in totals and "may not fit A100-40GB's 40 GiB" in totals, totals
    assert "GPU: A100-40GB (cluster.gpu)" in out.splitlines()[0]


def test_a_configfile_on_the_command_line_replaces_the_cluster_file_and_plan_says_so(tmp_path, capsys):
    """Snakemake's rule, mirrored: a command-line --configfile replaces the profile's configfiles (so scale paper)."""
    overlay = tmp_path / "mine.yaml"
    overlay.write_text("scales: {paper: {seeds: [0]}}\n")
    profile = Profile.find(str(ROOT / "slurm"))
    config, files = workflow_config(ROOT / "config.yaml", profile, [str(overlay)], [])
    assert config["scale"] == "quick" and not any(f.endswith("cluster.yaml") for f in files)
    assert plan_main(["--profile", str(ROOT / "slurm"), "--configfile", str(overlay), "--scale", "paper"]) == 0
    err = capsys.readouterr().err
    assert "the profile's cluster.yaml is not loaded: --configfile replaces the profile's configfiles" in err


def test_config_values_are_read_as_snakemake_reads_them():
    assert parse_config_args(["max_gpus_per_node=4", "preflight=false", "cluster={gpu: H100-80GB}", "tol=1e-3"]) == {
        "max_gpus_per_node": 4, "preflight": False, "cluster": {"gpu": "H100-80GB"}, "tol": 1e-3}


def test_a_declared_gpu_type_reaches_both_kinds_of_gpu_request():
    """cluster.gpu_model: --gpus=MODEL:N on one node, --gres=gpu:MODEL:N per node on several (a gpu_model in the
    profile's default-resources would have added --gpus=MODEL:1 beside the 2-node jobs' --gres)."""
    import yaml

    from lsgm.plan import Plan

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["cluster"] = {"gpu_model": "a100"}
    plan = Plan(config, "paper")
    assert plan.run("lsgm", "cifar10", "fid", 0).resources()["gres"] == "gpu:a100:8"
    assert "gpu_model" not in plan.run("lsgm", "cifar10", "fid", 0).resources()
    assert plan.run("vae", "mnist", "mnist", 0).resources().items() >= {"gpu": 2, "gpu_model": "a100"}.items()


def test_an_unknown_gpu_is_one_line_with_the_closest_name(capsys):
    assert plan_main(["--profile", "slurm", "--config", "cluster={gpu: A100-80G}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'A100-80G' is not a known GPU; did you mean 'A100-80GB'?" in err


def test_the_inception_weights_path_is_settable_in_the_config(four_per_node):
    """scales.paper.fd.inception_weights (the schema refused it): every FID job gets the file as its flag, and a file
    that is not there yet does not stop the plan (the preflight checks it, in one line, before submitting)."""
    jobs, _ = four_per_node
    fid = [j for j in jobs.values() if j["rule"] in ("fid_stats", "eval_fid", "eval_cost")]
    assert fid and all("--inception-weights /shared/w.pth" in j["shell"] for j in fid)


def test_a_measured_gpu_step_time_replaces_the_estimate(tmp_path, monkeypatch, capsys):
    """benchmarks/results/paper_step_<gpu>.json (benchmarks/paper_step.py on a GPU): its recipes' training jobs show
    measured GPU-hours, the others keep the estimate."""
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "paper_step_h100.json").write_text(json.dumps({"steps": {
        "mnist/stage1": {"seconds_per_step": 0.1, "per_gpu_batch": 100}}}))
    monkeypatch.chdir(tmp_path)
    assert plan_main(["--profile", str(ROOT / "slurm"), "--workflow-config", str(ROOT / "config.yaml"), "--json"]) == 0
    jobs = {j["target"]: j for j in json.loads(capsys.readouterr().out)["jobs"]}
    mnist = jobs["results/paper/runs/mnist/vae/mnist-s0/model.pt"]
    assert mnist["gpu_hours"] == pytest.approx(0.1 * mnist["steps"] * mnist["gpus"] / 3600)
    assert mnist["gpu_hours_estimate"] == {}
    other = jobs["results/paper/runs/omniglot/vae/omniglot-s0/model.pt"]
    assert other["gpu_hours"] is None and set(other["gpu_hours_estimate"]) == {"A100-80GB", "H100-80GB"}


def test_a_changed_network_makes_the_count_stale_and_cpu_scales_have_no_gpu_hours(capsys):
    import yaml

    from lsgm.plan import Costs, Plan, Report
    from lsgm.plan.cost import load_flops

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["scales"]["paper"]["table6"]["config"]["score"]["nf"] = 128  # every Table 6 cell's network changes
    plan = Plan(config, "paper")
    stale = Costs(load_flops()).stale(plan.training_runs())
    assert len(stale) == 17 and all("/lsgm/vpsde-" in s or "/lsgm/geometric-" in s for s in stale)
    totals = Report(plan, None, None, "A100-80GB").totals()
    assert any("17 runs' networks changed since benchmarks/results/paper_flops.json was counted" in t for t in totals)
    assert any("training" in t and "(22 of 41 jobs)" in t for t in totals), totals  # 17 cells, 2 SDEs' inits
    quick = Report(Plan(config, "quick"), None, None, None).totals()
    # runs x seeds; the Table 6 grid (17 cells, 2 SDE controls, its backbone) on one seed (scales.quick.table6_n_seeds)
    assert quick == ["81 training jobs and 205 evaluation jobs at scale quick, CPU only (no GPU-hours)"]

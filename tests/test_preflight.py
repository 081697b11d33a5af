"""The login-node preflight (lsgm/preflight.py): each fault a first `snakemake --profile slurm` on a new cluster would
meet on a compute node is refused before anything is submitted, in one line naming the fix. Unit tests of each check
with a stand-in `sinfo`/`srun`, then the real thing on the local Slurm cluster (scripts/local-slurm.sh up; skipped
without it): `snakemake --profile slurm` with each fault, and nothing in the queue afterwards."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lsgm import preflight
from lsgm.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
GPU_JOB = preflight.Job("train", {"slurm_account": "lab", "slurm_partition": "gpu", "gpu": 8, "runtime": 1440})


class Fake:
    """`sinfo` / `srun` answering from a table: {partition: [(gres, time limit)]}, and one srun result."""

    def __init__(self, partitions: dict, srun: tuple[int, str, str] = (0, "", "")):
        self.partitions, self.srun, self.calls = partitions, srun, []

    def __call__(self, cmd, **kwargs):
        self.calls.append(cmd)
        if cmd[0] == "srun":
            rc, out, err = self.srun
            return subprocess.CompletedProcess(cmd, rc, out, err)
        if "-p" in cmd:
            rows = self.partitions.get(cmd[cmd.index("-p") + 1], [])
            return subprocess.CompletedProcess(cmd, 0, "".join(f"{cmd[cmd.index('-p') + 1]}|{g}|{t}\n" for g, t in rows), "")
        return subprocess.CompletedProcess(cmd, 0, "".join(f"{p}\n" for p in self.partitions), "")


@pytest.fixture(autouse=True)
def _sinfo_on_path(monkeypatch):
    monkeypatch.setattr(preflight.shutil, "which", lambda name: f"/usr/bin/{name}")


def one_line(result: preflight.Result, check: str) -> str:
    lines = [p for p in result.problems if p.startswith(f"{check}:")]
    assert len(lines) == 1 and "\n" not in lines[0], result.summary()
    return lines[0]


# ------------------------------------------------------------------------------------------------ the checks
@pytest.mark.parametrize("account, no_account, expect", [
    ("CHANGE_ME", False, "problem"), ("", False, "problem"), ("CHANGE_ME", True, "warning"), ("lab", False, "ok")])
def test_account(account, no_account, expect):
    result = preflight.Result()
    preflight.check_account([preflight.Job("train", {"slurm_account": account})], no_account, result)
    if expect == "problem":
        line = one_line(result, "account")
        assert "default-resources: slurm_account" in line and "--slurm-no-account" in line
    elif expect == "warning":
        assert not result.problems and "still passes -A CHANGE_ME" in result.warnings[0]
    else:
        assert not result.problems and not result.warnings


def test_a_missing_partition_names_the_ones_that_exist():
    result = preflight.Result()
    assert preflight.check_partitions([GPU_JOB], None, result, Fake({"debug": [("(null)", "infinite")]})) == set()
    assert one_line(result, "partition") == ("partition: 'gpu' does not exist (sinfo knows: debug): set "
                                             "slurm_partition in workflow/profiles/slurm/config.yaml (default-resources)")


@pytest.mark.parametrize("gres, model, ok", [
    ("(null)", None, False), ("gpu:4(S:0-1)", None, False), ("gpu:a100:8(S:0-1)", None, True),
    ("gpu:a100:8(S:0-1)", "a100", True), ("gpu:v100:8(S:0-1)", "a100", False)])
def test_a_partition_offers_the_gpus_the_jobs_ask_for(gres, model, ok):
    result = preflight.Result()
    preflight.check_partitions([GPU_JOB], model, result, Fake({"gpu": [(gres, "2-00:00:00")]}))
    if ok:
        assert not result.problems and result.notes[0].startswith("partition gpu (GPUs per node: 8"), result.summary()
    else:
        assert "the jobs ask for up to 8" in one_line(result, "partition") and not result.notes


def test_a_partition_time_limit_below_the_jobs_runtime_is_refused():
    result = preflight.Result()
    preflight.check_partitions([GPU_JOB], None, result, Fake({"gpu": [("gpu:8", "12:00:00")]}))
    assert "allows 720 min per job, the jobs ask for 1440" in one_line(result, "partition")
    assert preflight._minutes("1-00:00:00") == 1440 and preflight._minutes("infinite") == float("inf")


def test_the_declared_gpu_supports_the_recipes_precision():
    runs = [r for r in Plan(CONFIG, "paper").training_runs() if r.kind == "lsgm"][:2]
    for declared, expect in ((None, "no GPU kind is declared"), ("V100-32GB", "V100-32GB has no bf16")):
        result = preflight.Result()
        preflight.check_gpu(runs, [GPU_JOB], declared, lambda r: None, result)
        assert expect in one_line(result, "gpu")
    result = preflight.Result()
    preflight.check_gpu(runs, [GPU_JOB], "A100-40GB", lambda r: 55.0, result)
    assert not result.problems and "2 job(s) may not fit A100-40GB's 40 GiB" in result.warnings[0]


def test_the_environment_probe_runs_the_jobs_python_on_a_compute_node():
    fake = Fake({"gpu": [("gpu:8", "infinite")]}, srun=(1, "", "ModuleNotFoundError: No module named 'lsgm'\n"))
    result = preflight.Result()
    preflight.check_environment([GPU_JOB], {"gpu"}, "/venv/bin/python", result, fake)
    assert fake.calls[0][:3] == ["srun", "--partition", "gpu"] and "--account" in fake.calls[0]
    line = one_line(result, "environment")
    assert "ModuleNotFoundError: No module named 'lsgm'" in line and "the nodes share" in line
    fine = Fake({}, srun=(0, json.dumps({"torch": "2", "lsgm_command": "/venv/bin/lsgm"}) + "\n", ""))
    result = preflight.Result()
    preflight.check_environment([GPU_JOB], {"gpu"}, "/venv/bin/python", result, fine)
    assert not result.problems and "imports on a compute node" in result.notes[0]
    busy = Fake({}, srun=(1, "", "srun: error: Unable to allocate resources: Requested nodes are busy\n"))
    result = preflight.Result()
    preflight.check_environment([GPU_JOB], {"gpu"}, "/venv/bin/python", result, busy)
    assert not result.problems and "not checked" in result.warnings[0]


def test_corrupt_or_missing_inception_weights_are_one_line(tmp_path):
    import torch

    corrupt, good = tmp_path / "weights.pth", tmp_path / "good.pth"
    torch.save({"conv.weight": torch.zeros(2)}, good)
    corrupt.write_bytes(good.read_bytes()[:200])  # a truncated download
    for path, expect in ((corrupt, "is corrupted or truncated"), (tmp_path / "none.pth", "not found at")):
        result = preflight.Result()
        preflight.check_inception(str(path), result)
        line = one_line(result, "inception")
        assert expect in line and "weights-inception-2015-12-05-6726825d.pth" in line, line
    result = preflight.Result()
    preflight.check_inception(str(good), result)
    assert not result.problems and str(good) in result.notes[0]


def test_data_the_jobs_read_is_verified_as_the_jobs_load_it(tmp_path):
    from lsgm.data.miniature import write_miniature

    write_miniature("cifar10", tmp_path, 8, 4)
    needs = {("cifar10", "train", str(tmp_path), 8), ("cifar10", "test", str(tmp_path), 4)}
    result = preflight.Result()
    preflight.check_data(needs, result)
    assert not result.problems and "cifar10/test, cifar10/train" in result.notes[0]
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    result = preflight.Result()
    preflight.check_data(needs, result)
    assert "cifar10: missing test_batch" in one_line(result, "data")


def test_the_paper_jobs_need_their_data_and_a_miniature_writes_its_own():
    paper, mini = Plan(CONFIG, "paper"), Plan(CONFIG, "mini")
    jobs = [preflight.Job("train", {}, {"dataset": "mnist", "kind": "lsgm", "run": "mnist", "seed": "0"}),
            preflight.Job("fid_stats", {}, {"dataset": "celeba256", "splits": "train+test", "features": "inception"})]
    assert preflight.data_needs(paper, jobs) == {("mnist", "train", "data", None), ("mnist", "test", "data", None),
                                                 ("celeba256", "train", "data", None), ("celeba256", "test", "data", None)}
    assert preflight.data_needs(mini, jobs) == set() and preflight.uses_inception(paper, jobs)


def test_the_cluster_settings_must_be_loaded():
    result = preflight.Result()
    preflight.check_cluster_file(["/x/config.yaml", "/y/mine.yaml"], {"scale": "quick"}, result)
    assert "this run is scale 'quick' without cluster settings" in one_line(result, "config")
    result = preflight.Result()
    preflight.check_cluster_file(["/x/slurm/cluster.yaml"], {"scale": "paper", "cluster": {}}, result)
    assert not result.problems


def test_only_a_slurm_run_is_checked_and_preflight_false_skips(capsys):
    """The gate in the Snakefile's onstart: local runs and `--config preflight=false` submit without the checks."""
    from types import SimpleNamespace

    def workflow(executor: str):
        dag = SimpleNamespace(needrun_jobs=lambda: [])
        return SimpleNamespace(executor_plugin=SimpleNamespace(name=executor), dag=dag)

    assert preflight.of_workflow(workflow("local"), {"preflight": True}, None) is None
    assert preflight.of_workflow(workflow("slurm"), {"preflight": False}, None) is None
    assert capsys.readouterr().err == "preflight: skipped (preflight: false)\n"
    assert preflight.of_workflow(workflow("slurm"), {"preflight": True}, None) is None  # nothing to submit


# ------------------------------------------------------------------------------------------------ on a real cluster
def cluster_missing() -> str | None:
    spec = importlib.util.spec_from_file_location("cluster_test", ROOT / "tests" / "test_slurm_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cluster_missing()


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    why = cluster_missing()
    if why:
        pytest.skip(why)
    spec = importlib.util.spec_from_file_location("slurm_cluster", ROOT / "benchmarks" / "slurm_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.copy_workflow(tmp_path_factory.mktemp("preflight") / "wf")


def job_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def snakemake(work: Path, *args: str, env: dict | None = None) -> tuple[int, str]:
    proc = subprocess.run(["snakemake", "--profile", "slurm", "--slurm-status-command", "squeue",
                           "--slurm-init-seconds-before-status-checks", "5", *args], cwd=work, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout + proc.stderr


MINI = ("data/mini/mnist.manifest.json", "--config", "scale=mini")
PAPER = ("results/paper/fid_stats/cifar10-train-8bit-inception-v1.pt",)
FAULTS = {
    "CHANGE_ME account": (MINI + ("--default-resources", "slurm_account=CHANGE_ME", "slurm_partition=debug"), {},
                          ["account: slurm_account is still the placeholder 'CHANGE_ME': set your account in "
                           "workflow/profiles/slurm/config.yaml"]),
    "missing partition": (MINI + ("--default-resources", "slurm_account=lsgm", "slurm_partition=gpu"), {},
                          ["partition: 'gpu' does not exist (sinfo knows: debug): set slurm_partition"]),
    "missing data and corrupt weights": (
        PAPER + ("--default-resources", "slurm_account=lsgm", "slurm_partition=debug"), {"corrupt": True},
        ["data: cifar10: missing cifar-10-python.tar.gz (md5 c58f30108f718f92721af3b95e74349a); put them in data",
         "inception: Inception-v3 weights", "is corrupted or truncated (", "partition: 'debug' offers 0 GPUs"]),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_is_refused_on_the_cluster_before_anything_is_submitted(workflow, fault, tmp_path):
    args, how, expected = FAULTS[fault]
    env = {}
    if how.get("corrupt"):
        weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
        weights.write_bytes(b"PK\x03\x04 a download cut short")
        env["LSGM_INCEPTION_WEIGHTS"] = str(weights)
    shutil.rmtree(workflow / "data", ignore_errors=True)
    before = job_ids()
    rc, out = snakemake(workflow, *args, env=env)
    assert rc != 0 and "nothing was submitted" in out, out[-3000:]
    problems = [line for line in out.splitlines() if line.startswith("  problem: ")]
    for text in expected:
        assert sum(text in line for line in problems) == 1, (text, problems)
    assert "Traceback" not in out and "has been submitted" not in out, out[-3000:]
    assert not job_ids() - before  # nothing reached the queue (finished jobs age out of squeue after MinJobAge)


def test_a_clean_run_passes_the_preflight_and_then_submits(workflow):
    shutil.rmtree(workflow / "data", ignore_errors=True)
    rc, out = snakemake(workflow, *MINI, "--default-resources", "slurm_account=lsgm", "slurm_partition=debug")
    assert rc == 0, out[-3000:]
    assert out.index("preflight: ok") < out.index("has been submitted with SLURM jobid"), out[-3000:]
    assert "ok: environment imports on a compute node" in out

"""The paper scale in miniature through a REAL Slurm cluster (benchmarks/slurm_cluster.py): a slice of its DAG that
runs every kind of job once, each via sbatch, 2-node trainings through srun + torchrun, metrics that reproduce the
committed reference run of the miniature (reference/mini), a requeued and a cancelled trainer resumed to
bit-identical weights. CI starts the cluster (scripts/local-slurm.sh up in .ci/run); without one the test is skipped
and says why."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cluster_missing() -> str | None:
    if shutil.which("sinfo") is None:
        return "no Slurm here (sinfo not found); `sudo scripts/local-slurm.sh up` starts a 2-node local cluster"
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, check=False)
    nodes = {line.split()[0] for line in out.stdout.splitlines() if line.split()[-1].startswith(("idle", "mix"))}
    if out.returncode != 0 or not {"n1", "n2"} <= nodes:
        return (f"no local Slurm cluster with idle nodes n1, n2 (sinfo: {(out.stdout + out.stderr).strip()[:120]!r}); "
                "`scripts/local-slurm.sh up` starts one")
    return None


def _driver():
    spec = importlib.util.spec_from_file_location("slurm_cluster", ROOT / "benchmarks" / "slurm_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    why = cluster_missing()
    if why:
        pytest.skip(why)
    return _driver().measure(tmp_path_factory.mktemp("slurm"))


@pytest.mark.slow
def test_every_job_is_submitted_and_a_two_node_job_runs_on_both_nodes(record):
    # every job of the slice (benchmarks/slurm_cluster.py: TARGETS) is an sbatch job (7 trainings, 14 evaluations,
    # a sample grid, the reference statistics, 2 data sets and the Inception stand-in) but the localrules: 7 run
    # configs, 2 tables and Figure 4, counted by rule so that a new rule says which one it is
    assert record["jobs_submitted_with_sbatch"] == 26, record
    local = {"figure4": 1, "run_config": 7, "tables": 2}
    assert record["local_rule_jobs_by_rule"] == local, record
    two_node = {j["run"]: j for j in record["multi_node_jobs"]}
    assert {"celeba256/vae/celeba-s0", "celeba256/lsgm/celeba-s0"} <= set(two_node), two_node  # both stages
    assert all(sorted(j["hosts"]) == ["n1", "n2"] and j["world_size"] == 2 for j in two_node.values()), two_node


@pytest.mark.slow
def test_metrics_through_slurm_reproduce_the_committed_miniature(record):
    """Every metrics file of the slice against the same file of reference/mini (a local run of the same code): every
    field reproduces (|Δ| <= 1e-3 x |reference|: on one machine the runs are bit-equal, Slurm's and a local one alike,
    benchmarks/results/slurm_cluster.json), or, on another machine's floating point, moves by at most 4 combined
    standard errors (an adaptive solver's step count can), never a field without a standard error."""
    cmp = record["metrics_vs_reference"]
    assert cmp["files"] == cmp["files_in_reference"] == 14 and cmp["only_in_one"] == 0, cmp
    assert cmp["fields"] > 0 and cmp["fields"] == cmp["reproduced"] + cmp["moved"], cmp  # only_in_one == 0: all of them
    assert cmp["moved_without_se"] == 0 and (cmp["largest_z"] is None or cmp["largest_z"] <= 4), cmp


@pytest.mark.slow
def test_requeued_and_cancelled_trainers_resume_to_the_uninterrupted_weights(record):
    pre = record["preemption"]
    for how in ("requeue", "scancel"):
        run = pre[how]
        assert run["status"] == "completed" and run["resumed_from_steps"], run
        assert run["bit_identical_to_uninterrupted"], run
    assert pre["retries_reported"] >= 1  # the cancelled job: reported and resubmitted by the executor

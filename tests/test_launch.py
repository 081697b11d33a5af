"""lsgm.launch: the process tree of a launch geometry, inside and outside a Slurm allocation (no process started)."""

from __future__ import annotations

import sys

import pytest

from lsgm import launch

CMD = ["train-lsgm", "--config", "RUN.yaml", "--out", "OUT"]
SLURM = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_CPUS_PER_TASK": "8"}


@pytest.fixture(autouse=True)
def _hostnames(monkeypatch):
    monkeypatch.setattr(launch, "first_node", lambda nodelist: {"n[1-2]": "n1"}[nodelist])


def test_two_nodes_in_an_allocation_start_one_torchrun_per_node_at_a_c10d_rendezvous():
    cmd, layout = launch.build(2, 8, True, CMD, SLURM)
    assert cmd[:5] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=64", "--gres=gpu:8"]
    assert cmd[5:12] == ["torchrun", "--nnodes=2", "--nproc_per_node=8", "--rdzv_backend=c10d", "--rdzv_id=1234",
                         "--rdzv_endpoint=n1:29734", "-m"]
    assert cmd[12:] == ["lsgm", *CMD] and layout == "2 nodes x 8 processes"


def test_cpu_processes_ask_for_no_gpus():
    cmd, _ = launch.build(2, 1, False, CMD, {**SLURM, "SLURM_CPUS_PER_TASK": "1"})
    assert "--cpus-per-task=1" in cmd and not any(c.startswith("--gres") for c in cmd)


@pytest.mark.parametrize("env", [{}, {**SLURM, "SLURM_JOB_NUM_NODES": "1"}])
def test_a_multi_node_recipe_without_its_nodes_runs_all_processes_here(env):
    """A local run of the miniature (or an allocation too small): the cluster run's world size, on one machine."""
    cmd, layout = launch.build(2, 1, False, CMD, env)
    assert cmd == ["torchrun", "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "lsgm", *CMD]
    assert "all 2 processes on this machine" in layout


def test_one_node_is_standalone_torchrun_as_a_step_of_its_own_in_an_allocation():
    """Slurm signals only the steps' tasks, and the executor plugin's step is an inner snakemake that does not pass
    SIGTERM on: the trainer (or torchrun) must be a step's task to checkpoint before SIGKILL."""
    torchrun = ["torchrun", "--standalone", "--nnodes=1", "--nproc_per_node=4", "-m", "lsgm", *CMD]
    assert launch.build(1, 4, True, CMD, {})[0] == torchrun
    one = {**SLURM, "SLURM_JOB_NUM_NODES": "1"}
    step = ["srun", "--overlap", "--nodes=1", "--ntasks=1", "--cpus-per-task=8"]
    assert launch.build(1, 4, True, CMD, one)[0] == [*step, *torchrun]
    assert launch.build(1, 1, False, CMD, one)[0] == [*step, sys.executable, "-m", "lsgm", *CMD]
    assert launch.build(1, 1, False, CMD, {})[0] == [sys.executable, "-m", "lsgm", *CMD]


def test_bad_geometry_is_one_line(capsys):
    assert launch.main(["--nodes", "0", "--nproc-per-node", "1", "--", "train-vae"]) == 2
    assert launch.main(["--nodes", "1", "--nproc-per-node", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("lsgm launch: error:") for line in err)


def test_the_allocation_is_read_from_scontrol_when_the_plugin_stripped_the_environment(monkeypatch):
    """The executor plugin's job step keeps only SLURM_JOB_ID (measured on the local cluster); a 2-node job must still
    find its nodes, or it silently runs both processes on one node."""
    class Done:
        stdout = "JobId=7 JobName=x NumNodes=2 NumCPUs=2 CPUs/Task=1 NodeList=n[1-2] Command=(null)\n"
    calls = []
    monkeypatch.setattr(launch.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or Done())
    env = launch.allocation({"SLURM_JOB_ID": "7", "PATH": "/bin"})
    assert calls == [["scontrol", "show", "job", "-o", "7"]]
    assert (env["SLURM_JOB_NUM_NODES"], env["SLURM_JOB_NODELIST"], env["SLURM_CPUS_PER_TASK"]) == ("2", "n[1-2]", "1")
    assert launch.build(2, 1, False, CMD, env)[0][0] == "srun"
    assert launch.allocation({}) == {}


@pytest.mark.parametrize("nodes, nproc, env, each", [
    (1, 1, {}, 16),  # one process: the job's threads
    (1, 8, {}, 2),  # one node: the node's threads shared by its 8 processes
    (2, 8, SLURM, 2),  # one torchrun per node: per node, as on one node
    (2, 2, {}, 4),  # a 2-node recipe without an allocation: all 4 processes here
    (1, 32, {}, 1),  # never below one
])
def test_the_jobs_threads_are_shared_by_the_processes_on_each_node(nodes, nproc, env, each):
    """Snakemake sets OMP_NUM_THREADS (and MKL_NUM_THREADS, ...) = the job's threads, one node's worth; torchrun
    would hand all of them to every worker."""
    out = launch.thread_env({"OMP_NUM_THREADS": "16", "MKL_NUM_THREADS": "16", "PATH": "/bin"},
                            launch.processes_here(nodes, nproc, env))
    assert out == {"OMP_NUM_THREADS": str(each), "MKL_NUM_THREADS": str(each), "PATH": "/bin"}


def test_the_launched_command_gets_its_share_of_the_threads(tmp_path, monkeypatch):
    """What main execs: the built command with the shared-out thread variables (nothing is started here)."""
    seen = {}
    monkeypatch.setattr(launch.os, "execvpe", lambda f, argv, env: seen.update(argv=argv, env=env))
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert launch.main(["--nodes", "1", "--nproc-per-node", "4", "--", *CMD]) == 0
    assert seen["argv"][:2] == ["torchrun", "--standalone"] and seen["env"]["OMP_NUM_THREADS"] == "2"

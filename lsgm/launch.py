"""``lsgm launch``: start one ``lsgm`` command on a run's processes, from the launch geometry as data.

The plan gives every multi-process training job ``lsgm launch --nodes N --nproc-per-node P [--gpu] -- <command>``
(:meth:`lsgm.plan.Run.launcher`); this module turns that into the process tree and ``exec``s it.

Inside a Slurm allocation every launch is a job step of its own (``srun``), so the trainer (or torchrun, which
forwards it to its workers) is a step's task: Slurm 22.05's cgroup tracker delivers SIGTERM (requeue, scancel, time
limit, the profile's ``--signal=TERM@300``) only to the steps' tasks, and the executor plugin's own step runs an inner
snakemake that does not pass it on (measured on the local cluster: without a step of its own the trainer got no
signal before SIGKILL). ``--overlap`` lets the step share the CPUs of that plugin step.

- one process: ``lsgm <command>`` (in an allocation: ``srun --overlap --ntasks=1 ... python -m lsgm <command>``);
- one node: ``torchrun --standalone --nnodes=1 --nproc_per_node=P -m lsgm <command>`` (in an allocation, as a step);
- several nodes inside a Slurm allocation of at least N nodes: ``srun`` starts one ``torchrun`` per node
  (``--ntasks-per-node=1``, the node's CPUs and, with ``--gpu``, its P GPUs), and they meet at a c10d rendezvous
  on the allocation's first node (port 29500 + job id mod 1000, so jobs sharing a node differ);
- several nodes with no allocation (a local run of a multi-node recipe, e.g. the miniature on a workstation):
  the same N x P processes on this machine, ``torchrun --standalone --nproc_per_node=N*P``. Ranks, world size and
  the batch split are those of the cluster run, so the numbers are too (up to the order of DDP's reductions).

Threads: Snakemake exports ``OMP_NUM_THREADS`` (and the MKL / OpenBLAS / ... variables) = the job's ``threads``
into every shell job, and a job's threads are those of one node (:meth:`lsgm.plan.Run.threads`). The processes
started here share them: each gets ``threads // processes on this node`` (at least 1), where torchrun would give
every worker all of them (or 1 when unset).

Torch-free: it runs before every multi-process job and only builds a command line.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

RDZV_PORT = 29500
# the thread-count variables Snakemake sets for a shell job (snakemake/shell.py), shared out among the processes
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def torchrun(nodes: int, nproc_per_node: int, command: list[str], rdzv: str | None = None,
             rdzv_id: str = "") -> list[str]:
    """The torchrun command of one node: standalone (its own rendezvous) or joining ``rdzv`` (host:port)."""
    if rdzv is None:
        return ["torchrun", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc_per_node}", "-m", "lsgm", *command]
    return ["torchrun", f"--nnodes={nodes}", f"--nproc_per_node={nproc_per_node}", "--rdzv_backend=c10d",
            f"--rdzv_id={rdzv_id}", f"--rdzv_endpoint={rdzv}", "-m", "lsgm", *command]


def first_node(nodelist: str) -> str:
    """The first host of a Slurm node list (``n[1-2]`` -> ``n1``), as ``scontrol show hostnames`` expands it."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True)
    return out.stdout.split()[0]


def allocation(env: dict) -> dict:
    """The Slurm allocation this process runs in, with the environment variables the launch needs
    (``SLURM_JOB_NUM_NODES``, ``SLURM_JOB_NODELIST``, ``SLURM_CPUS_PER_TASK``); {} outside one. The executor plugin's
    job step removes every SLURM_* variable but the job id from the job's environment, so what is missing is read
    from ``scontrol show job``."""
    if not env.get("SLURM_JOB_ID"):
        return {}
    if env.get("SLURM_JOB_NUM_NODES") and env.get("SLURM_JOB_NODELIST"):
        return env
    out = subprocess.run(["scontrol", "show", "job", "-o", env["SLURM_JOB_ID"]], check=True, capture_output=True,
                         text=True).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    return {**env, "SLURM_JOB_NUM_NODES": fields["NumNodes"], "SLURM_JOB_NODELIST": fields["NodeList"],
            "SLURM_CPUS_PER_TASK": env.get("SLURM_CPUS_PER_TASK") or fields.get("CPUs/Task", "1")}


def allocated_nodes(env: dict) -> int:
    """Nodes of the Slurm allocation described by ``env`` (:func:`allocation`; 0 outside one)."""
    return int(env.get("SLURM_JOB_NUM_NODES") or 0) if env.get("SLURM_JOB_ID") else 0


def own_step(cmd: list[str], env: dict) -> list[str]:
    """``cmd`` as a job step of its own when this process runs in a Slurm allocation (see the module docstring)."""
    if not allocated_nodes(env):
        return cmd
    cpus = env.get("SLURM_CPUS_PER_TASK", "1")
    return ["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--cpus-per-task={cpus}", *cmd]


def build(nodes: int, nproc_per_node: int, gpu: bool, command: list[str], env: dict) -> tuple[list[str], str]:
    """(argv to exec, one line saying which layout it is)."""
    world = nodes * nproc_per_node
    if world == 1:
        return own_step([sys.executable, "-m", "lsgm", *command], env), "one process"
    if nodes == 1:
        return own_step(torchrun(1, nproc_per_node, command), env), f"one node x {nproc_per_node} processes"
    have = allocated_nodes(env)
    if have < nodes:
        where = "no Slurm allocation" if not have else f"a Slurm allocation of {have} node(s)"
        return (torchrun(1, world, command),
                f"{nodes} nodes x {nproc_per_node} processes wanted, {where}: all {world} processes on this machine")
    cpus = int(env.get("SLURM_CPUS_PER_TASK", "1")) * nproc_per_node  # the job has one task per process
    # no --kill-on-bad-exit: a rank that stopped for a checkpoint must not kill the rank still writing it
    srun = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", f"--cpus-per-task={cpus}"]
    if gpu:
        srun.append(f"--gres=gpu:{nproc_per_node}")
    rdzv = f"{first_node(env['SLURM_JOB_NODELIST'])}:{RDZV_PORT + int(env['SLURM_JOB_ID']) % 1000}"
    cmd = [*srun, *torchrun(nodes, nproc_per_node, command, rdzv, env["SLURM_JOB_ID"])]
    return cmd, f"{nodes} nodes x {nproc_per_node} processes"


def processes_here(nodes: int, nproc_per_node: int, env: dict) -> int:
    """How many of the launch's processes run on this node (:func:`build`'s layouts)."""
    if nodes == 1 or allocated_nodes(env) >= nodes:
        return nproc_per_node
    return nodes * nproc_per_node  # a multi-node recipe without its nodes: every process here


def thread_env(env: dict, processes: int) -> dict:
    """``env`` with each thread-count variable it sets divided among ``processes`` (at least 1 each)."""
    return {**env, **{k: str(max(1, int(env[k]) // processes)) for k in THREAD_VARS if env.get(k, "").isdigit()}}


def main(argv: list[str] | None = None) -> int:
    """``lsgm launch --nodes N --nproc-per-node P [--gpu] [--dry-run] -- COMMAND ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="lsgm launch", usage="lsgm launch --nodes N --nproc-per-node P [--gpu] [--dry-run] "
                                "-- COMMAND ...", description="start an lsgm command on N nodes x P processes "
                                "(srun + torchrun in a Slurm allocation, torchrun on one machine otherwise), e.g. "
                                "lsgm launch --nodes 2 --nproc-per-node 8 --gpu -- train-lsgm --config RUN.yaml ...")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--nproc-per-node", type=int, required=True)
    p.add_argument("--gpu", action="store_true", help="one GPU per process (srun --gres=gpu:P)")
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    if "--" not in argv:
        if {"-h", "--help"} & set(argv):
            p.print_help()
            return 0
        print("lsgm launch: error: give the lsgm command after '--' (e.g. -- train-vae --config RUN.yaml ...)",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    args = p.parse_args(argv[:split])
    command = argv[split + 1:]
    if args.nodes < 1 or args.nproc_per_node < 1 or not command:
        print("lsgm launch: error: --nodes and --nproc-per-node must be >= 1 and a command must follow '--'",
              file=sys.stderr)
        return 2
    alloc = allocation(dict(os.environ))
    cmd, layout = build(args.nodes, args.nproc_per_node, args.gpu, command, alloc)
    env = thread_env(dict(os.environ), processes_here(args.nodes, args.nproc_per_node, alloc))
    threads = f" ({env['OMP_NUM_THREADS']} CPU threads each)" if "OMP_NUM_THREADS" in env else ""
    print(f"lsgm launch: {layout}{threads}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached

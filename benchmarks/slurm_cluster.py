"""The paper scale in miniature through a real Slurm cluster: a slice of its DAG that runs every kind of job once
(``TARGETS``), each job submitted with sbatch, the metrics compared with the committed reference run of the miniature
(``reference/mini``, field by field with the DAG's reproduction rule; with ``--local`` also with a local run of the
same slice, bit for bit), a requeued and a cancelled training job resumed. Writes
``benchmarks/results/slurm_cluster.json`` (tests/test_slurm_cluster.py runs the same code into a temporary folder,
without the local run).

Needs a Slurm cluster whose nodes are this machine (``scripts/local-slurm.sh up``: two emulated nodes n1, n2)::

    scripts/local-slurm.sh up
    python benchmarks/slurm_cluster.py            # ~10 min on 2 cores
    scripts/local-slurm.sh down

The workflow is copied into fresh folders (nothing lands in this checkout); the jobs run the installed ``lsgm``.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lsgm.io import atomic_write_json, provenance  # noqa: E402

WORKFLOW = ("Snakefile", "config.yaml", "workflow", "profiles", "slurm")
# What a user changes in the slurm profile (README: account and partition), and what a cluster without accounting
# needs (sacct answers nothing there: the executor would wait forever); frequent status checks for a small DAG.
CLUSTER_ARGS = ("--default-resources", "slurm_account=lsgm", "slurm_partition=debug",
                "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5")
SCALE = ("--config", "scale=mini")
# What goes through the scheduler: a slice of the miniature that runs every kind of job of the paper path once -- the
# data and Inception stand-ins, reference statistics, stage 1 and stage 2 on 2 nodes (CelebA-HQ-256) and a 1-node
# recipe (MNIST), the control at initialisation, the pixel SGM, every evaluation (NLL, FID, FID of the matched Normal,
# cost), a sample grid, two tables and Figure 4 -- not the whole miniature (239 jobs, ~50 min of sbatch round trips on
# 2 cores): the other jobs differ from these in their configs only, which tests/test_built_commands.py checks.
TARGETS = ("results/mini/tables/table3.md", "results/mini/tables/table5.md", "results/mini/figure4.png",
           "results/mini/samples/celeba256/lsgm/celeba-s0.png")
# Preemption: two fast trainers made long enough to be interrupted (sizes only: the shrink overlay)
PREEMPT_OVERLAY = {"scales": {"mini": {"shrink": {"runs": {"vae": {
    name: {"config": {"train": {"steps": 40, "checkpoint_every_steps": 4}}} for name in ("mnist", "omniglot")}}}}}}
PREEMPT_TARGETS = {"requeue": "results/mini/runs/mnist/vae/mnist-s0/model.pt",
                   "scancel": "results/mini/runs/omniglot/vae/omniglot-s0/model.pt"}
TIME_FIELDS = re.compile(r"seconds|wall|time", re.I)  # measured durations differ run to run by nature


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW:
        src = ROOT / name
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            (dest / name).symlink_to(src.readlink())
        elif src.exists():
            (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def reproduction(work: Path) -> dict:
    """Every metrics file of this run against the same file of the committed reference run of the miniature
    (``reference/mini``, made locally by ``snakemake --cores 2 --config scale=mini`` from a fresh clone), field by
    field with the DAG's own reproduction rule (``lsgm.report.reproduction``): reproduced (|Δ| <= 1e-3 x
    |reference|), or moved by how many combined standard errors."""
    from lsgm.report.reproduction import compare_runs

    ours = metric_files(work)
    reference = {name: doc for name, doc in metric_files(ROOT / "reference" / "mini", "metrics").items() if name in ours}
    df = compare_runs(list(ours.values()), list(reference.values()))
    one_side = df["verdict"].str.startswith(("new", "missing", "not run"))
    compared = df[~one_side]
    ok = compared["verdict"].str.startswith("reproduced")
    moved = compared[~ok]
    z = moved["z"].abs()
    return {"files": len(ours), "files_in_reference": len(reference),
            "fields": int(len(compared)), "reproduced": int(ok.sum()), "moved": int(len(moved)),
            "moved_without_se": int(z.isna().sum()), "largest_z": None if z.dropna().empty else float(z.max()),
            "only_in_one": int(one_side.sum()),
            "moved_fields": moved[["kind", "run", "field", "value", "reference", "z"]].head(20).to_dict("records")}


def start_snakemake(work: Path, *args: str, log: str) -> subprocess.Popen:
    out = open(work / log, "w")  # noqa: SIM115 -- closed with the process
    return subprocess.Popen(["snakemake", *args], cwd=work, stdout=out, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


def run_snakemake(work: Path, *args: str, log: str, timeout: float = 3600) -> tuple[int, float, str]:
    start = time.time()
    rc = finish(start_snakemake(work, *args, log=log), timeout)
    return rc, time.time() - start, (work / log).read_text()


def submissions(log: str) -> list[str]:
    """SLURM job ids the executor submitted (one line per sbatch)."""
    return re.findall(r"has been submitted with SLURM jobid (\d+)", log)


def numbers(tree, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a metrics document's ``metrics`` (cost rows included), keyed by its path."""
    out = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            out.update(numbers(value, path + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and not TIME_FIELDS.search(str(key)):
            out[path] = float(value)
    return out


def metric_files(work: Path, *where: str) -> dict[str, dict]:
    base = work.joinpath(*(where or ("results", "mini", "metrics")))
    return {str(p.relative_to(base)): json.loads(p.read_text()) for p in sorted(base.rglob("*.json"))}


def compare_metrics(slurm: Path, local: Path) -> dict:
    """Field by field: bit-equal count, and the largest relative difference where not equal."""
    a, b = metric_files(slurm), metric_files(local)
    fields = equal = 0
    worst = {"relative": 0.0, "field": None}
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            raise AssertionError(f"metrics file {name} exists in only one of the runs")
        na, nb = numbers(a[name]["metrics"]), numbers(b[name]["metrics"])
        assert set(na) == set(nb), name
        for key in na:
            x, y = na[key], nb[key]
            fields += 1
            if x == y or (math.isnan(x) and math.isnan(y)):
                equal += 1
                continue
            rel = abs(x - y) / max(abs(x), abs(y), 1e-300)
            if rel > worst["relative"]:
                worst = {"relative": rel, "field": f"{name}:{key}", "slurm": x, "local": y}
    statuses = sorted({d["status"] for d in a.values()})
    return {"files": len(a), "numeric_fields": fields, "bit_equal": equal, "largest_difference": worst,
            "statuses": statuses, "timing_fields_excluded": TIME_FIELDS.pattern}


def multi_node_runs(work: Path) -> list[dict]:
    """Training runs that ran on more than one node: their ranks' nodes and Slurm job (run.json)."""
    out = []
    for path in sorted((work / "results" / "mini" / "runs").rglob("run.json")):
        training = json.loads(path.read_text())["training"]
        if len(set(training.get("hosts", []))) > 1:  # torchrun's c10d rendezvous assigns ranks to nodes freely
            out.append({"run": str(path.parent.relative_to(work / "results" / "mini" / "runs")),
                        "hosts": sorted(training["hosts"]), "world_size": training["world_size"],
                        "slurm_job_id": training["slurm_job_id"], "grad_accum": training["grad_accum"]})
    return out


def squeue_jobs() -> list[tuple[str, str, str]]:
    """(job id, state, comment) of the cluster's jobs; the executor names the rule and wildcards in the comment."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True, check=False).stdout
    return [tuple(line.split("|", 2)) for line in out.splitlines() if line.count("|") == 2]


def wait_for(predicate, timeout: float, what: str, every: float = 0.5):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def checkpoint_of(work: Path, target: str) -> Path | None:
    stem = target.removeprefix("results/mini/runs/").removesuffix("/model.pt")
    found = sorted((work / "checkpoints" / "mini").glob(f"{stem}-*/ckpt.pt"))
    return found[0] if found else None


def state_equal(a: Path, b: Path) -> bool:
    """The trained weights (every state_dict and the EMA) of two model.pt files are bit-identical."""
    import torch

    x, y = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    tensors = lambda d: {f"{k}.{n}": t for k in ("state", "ema") for n, t in  # noqa: E731
                         ((n, t) for sd in ([d[k]] if k == "ema" else d[k].values()) if sd for n, t in sd.items())}
    tx, ty = tensors(x), tensors(y)
    return x["step"] == y["step"] and set(tx) == set(ty) and all(torch.equal(tx[k], ty[k]) for k in tx)


def preemption(base: Path) -> dict:
    """Two trainers interrupted on the scheduler, each compared with an uninterrupted local run: one requeued
    (``scontrol requeue``: SIGTERM, the trainer checkpoints and exits 75, Slurm runs the job again and it resumes),
    one cancelled (``scancel``: the executor reports the failure and its retry resumes)."""
    import yaml

    record = {}
    works = {}
    for name in ("slurm", "local"):
        works[name] = copy_workflow(base / f"preempt-{name}")
        (works[name] / "preempt.yaml").write_text(yaml.safe_dump(PREEMPT_OVERLAY))
    extra = ("--configfile", "preempt.yaml")  # merged over config.yaml (targets first: these options take lists)
    rc, seconds, _ = run_snakemake(works["local"], *PREEMPT_TARGETS.values(), "--cores", "2", *SCALE, *extra,
                                   log="snakemake.log", timeout=1800)
    # through the profile, a command-line --configfile replaces the profile's configfiles: pass its cluster.yaml too
    # (docs/slurm.md; the preflight refuses a slurm run without the cluster settings)
    slurm_extra = ("--configfile", "slurm/cluster.yaml", "preempt.yaml")
    assert rc == 0, (works["local"] / "snakemake.log").read_text()[-3000:]
    record["uninterrupted_local_seconds"] = round(seconds, 1)
    start = time.time()
    proc = start_snakemake(works["slurm"], *PREEMPT_TARGETS.values(), "--profile", "slurm", *CLUSTER_ARGS, *SCALE,
                           *slurm_extra, log="snakemake.log")
    for how, target in PREEMPT_TARGETS.items():
        stem = target.removeprefix("results/mini/runs/").removesuffix("/model.pt")
        wait_for(lambda: checkpoint_of(works["slurm"], target), 900, f"the first checkpoint of {stem}")
        job = wait_for(lambda: [j for j, state, comment in squeue_jobs() if state == "RUNNING" and "rule_train" in
                                comment and stem.split("/")[-1].removesuffix("-s0") in comment], 60, f"{stem}'s job")[0]
        ckpt_step = _ckpt_step(checkpoint_of(works["slurm"], target))
        cmd = ["scontrol", "requeue", job] if how == "requeue" else ["scancel", job]
        subprocess.run(cmd, check=True)
        record[how] = {"target": target, "slurm_job_id": job, "command": " ".join(cmd),
                       "checkpoint_step_before": ckpt_step}
    rc = finish(proc, 1800)
    log = (works["slurm"] / "snakemake.log").read_text()
    record["seconds"] = round(time.time() - start, 1)
    assert rc == 0, log[-3000:]
    for how, target in PREEMPT_TARGETS.items():
        run = json.loads((works["slurm"] / target).with_name("run.json").read_text())
        record[how].update(resumed_from_steps=run["training"]["resumed_from_steps"],
                           final_step=run["step"], status=run["status"],
                           bit_identical_to_uninterrupted=state_equal(works["slurm"] / target, works["local"] / target))
    record["submissions"] = len(submissions(log))
    record["retries_reported"] = len(re.findall(r"Trying to restart job", log))
    record["errors_reported"] = re.findall(r"Error in rule (\w+):", log)
    return record


def _ckpt_step(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["step"])


def measure(base: Path, local: bool = False) -> dict:
    """The miniature DAG through Slurm (and, ``local``, on this machine too), then the preemption runs."""
    cluster = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T %c"], capture_output=True, text=True, check=True)
    version = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    slurm_work = copy_workflow(base / "slurm")
    rc, slurm_seconds, log = run_snakemake(slurm_work, *TARGETS, "--profile", "slurm", *CLUSTER_ARGS, *SCALE,
                                           log="snakemake.log")
    assert rc == 0, log[-4000:]
    jobs = submissions(log)
    local_jobs = collections.Counter(re.findall(r"^localrule (\w+):", log, flags=re.M))
    local_seconds = None
    if local:
        local_work = copy_workflow(base / "local")
        rc, local_seconds, local_log = run_snakemake(local_work, *TARGETS, "--cores", "2", *SCALE,
                                                     log="snakemake.log")
        assert rc == 0, local_log[-4000:]
    record = {
        "what": "a slice of snakemake --profile slurm --config scale=mini (the paper scale in miniature: TARGETS) on "
                "a real Slurm cluster of two emulated nodes (scripts/local-slurm.sh), its metrics against the "
                "committed reference run of the miniature (reference/mini)",
        "targets": list(TARGETS),
        "slurm_version": version, "nodes": cluster.stdout.split("\n")[:-1],
        "command": "snakemake " + " ".join((*TARGETS, "--profile", "slurm", *CLUSTER_ARGS, *SCALE)),
        "jobs_submitted_with_sbatch": len(jobs), "local_rule_jobs": sum(local_jobs.values()),
        "local_rule_jobs_by_rule": dict(sorted(local_jobs.items())),
        "retries_reported": len(re.findall(r"Trying to restart job", log)),
        "multi_node_jobs": multi_node_runs(slurm_work),
        "wall_seconds": {"slurm": round(slurm_seconds, 1),
                         "local": None if local_seconds is None else round(local_seconds, 1)},
        "metrics_vs_reference": reproduction(slurm_work),
        "metrics_vs_local": compare_metrics(slurm_work, local_work) if local else None,
        "preemption": preemption(base),
    }
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "slurm_cluster.json"))
    p.add_argument("--local", action="store_true", help="also run the DAG locally and compare field by field")
    args = p.parse_args(argv)
    import tempfile

    base = Path(args.work or tempfile.mkdtemp(prefix="lsgm-slurm-"))
    started = time.time()
    record = measure(base, local=args.local)
    record["provenance"] = provenance("cpu", wall_seconds=time.time() - started)
    atomic_write_json(Path(args.out), record)
    print(json.dumps({k: v for k, v in record.items() if k != "provenance"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

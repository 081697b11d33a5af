"""The login-node preflight of ``snakemake --profile slurm``: everything a first submission would otherwise find on a
compute node after the queue wait, checked before ANY job is submitted, reported as one summary, one line per fault
naming the fix, and a non-zero exit.

It runs in the Snakemake process, in the Snakefile's ``onstart`` (``workflow/rules/common.smk``
``preflight_or_stop``): Snakemake calls ``onstart`` after it built the DAG and created the executor and before the
scheduler hands the executor a single job (snakemake/workflow.py ``execute``), and not in a dry run or in the jobs
(``--no-hooks``). Only with the slurm executor; ``--config preflight=false`` skips it. Checks, on the jobs that would be
submitted (the DAG's, not the localrules):

  account      ``slurm_account`` set and not the placeholder (or ``--slurm-no-account``);
  partition    every partition exists (``sinfo``), offers GPUs (of ``cluster.gpu_model``, as many per node as a job asks)
               where the jobs ask for GPUs, and allows the jobs' time limit;
  gpu          a GPU kind is declared (``cluster.gpu``) and supports the precision the recipes train in (bf16: compute
               capability 8.0, Ampere or newer); an estimate of a job's peak memory over it is a warning;
  data         every dataset split the jobs read is present and verified, by the loaders the jobs use (checksums,
               parsing, counts; a miniature's data the DAG writes itself);
  inception    the Inception-v3 weights of the FIDs are present and load (a corrupt file is one line);
  environment  the login node's Python imports on a compute node of the partition (one ``srun`` of a 1-CPU probe).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lsgm.plan.cluster import CLUSTER_FILE, GPUS, PLACEHOLDER_ACCOUNT, loads_cluster_file

PROFILE = "workflow/profiles/slurm/config.yaml"
SKIP = "--config preflight=false skips the preflight"
PROBE_SECONDS = 120  # how long the compute-node probe may wait for a node (srun --immediate)
PROBE = ("import json, shutil, sys, torch, lsgm, snakemake, snakemake_executor_plugin_slurm_jobstep; "
         "print(json.dumps({'python': sys.executable, 'torch': torch.__version__, 'lsgm': lsgm.__file__, "
         "'lsgm_command': shutil.which('lsgm')}))")
Runner = Callable[..., subprocess.CompletedProcess]


@dataclass
class Job:
    """What the preflight needs of one job the executor would submit."""

    rule: str
    resources: dict
    wildcards: dict = field(default_factory=dict)

    @property
    def gpus_per_node(self) -> int:
        if self.resources.get("gres"):
            return int(str(self.resources["gres"]).rsplit(":", 1)[-1])
        return int(self.resources.get("gpu") or 0)


@dataclass
class Result:
    problems: list[str] = field(default_factory=list)  # each one line naming the fix: the run is refused
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = (f"preflight: {len(self.problems)} problem(s); nothing was submitted ({SKIP})" if self.problems
                else "preflight: ok")
        lines = [f"  problem: {p}" for p in self.problems] + [f"  warning: {w}" for w in self.warnings]
        return "\n".join([head, *lines, *(f"  ok: {n}" for n in self.notes)])


# ------------------------------------------------------------------------------------------------ checks
def check_account(jobs: list[Job], no_account: bool, result: Result) -> None:
    accounts = {str(j.resources.get("slurm_account") or "") for j in jobs}
    bad = sorted(a for a in accounts if a in ("", PLACEHOLDER_ACCOUNT))
    if bad and not no_account:
        what = f"is still the placeholder {PLACEHOLDER_ACCOUNT!r}" if PLACEHOLDER_ACCOUNT in bad else "is not set"
        result.problems.append(f"account: slurm_account {what}: set your account in {PROFILE} (default-resources: "
                               "slurm_account) or pass --default-resources slurm_account=ACCOUNT "
                               "slurm_partition=PARTITION; a cluster without accounts: --slurm-no-account")
    elif bad and PLACEHOLDER_ACCOUNT in bad:
        result.warnings.append(f"account: --slurm-no-account, but snakemake-executor-plugin-slurm still passes "
                               f"-A {PLACEHOLDER_ACCOUNT} (slurm_account in {PROFILE}); a cluster without accounting "
                               "ignores it, on one with accounting delete the slurm_account line instead")
    else:
        result.notes.append(f"account {', '.join(sorted(accounts)) or '(none: --slurm-no-account)'}")


def _sinfo(partition: str, run: Runner) -> list[dict] | None:
    """``sinfo`` of one partition: a row per node group (GRES, time limit), [] if it does not exist, None without
    sinfo."""
    if shutil.which("sinfo") is None:
        return None
    out = run(["sinfo", "-h", "-p", partition, "-o", "%P|%G|%l"], capture_output=True, text=True, timeout=60)
    rows = [line.split("|") for line in out.stdout.splitlines() if line.count("|") == 2]
    return [{"partition": p.rstrip("*"), "gres": g, "time": t} for p, g, t in rows]


def _gres_gpus(gres: str, model: str | None) -> int:
    """Most GPUs per node in a ``sinfo %G`` field (``gpu:a100:8(S:0-1),tmpdisk:100``), of ``model`` if given."""
    best = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] != "gpu" or len(parts) < 2:
            continue
        count = parts[-1]
        kind = parts[1] if len(parts) == 3 else None
        if count.isdigit() and (model is None or kind == model):
            best = max(best, int(count))
    return best


def _minutes(limit: str) -> float:
    """A Slurm time limit (``infinite``, ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH:MM:SS``) in minutes."""
    if limit in ("infinite", "UNLIMITED", "n/a", ""):
        return float("inf")
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    hms = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    return int(days or 0) * 1440 + hms[0] * 60 + hms[1] + hms[2] / 60


def check_partitions(jobs: list[Job], gpu_model: str | None, result: Result, run: Runner = subprocess.run) -> set[str]:
    """Each partition the jobs use exists, has GPUs where they ask for them, and allows their runtime; returns the
    partitions that exist."""
    ok = set()
    for partition in sorted({str(j.resources.get("slurm_partition") or "") for j in jobs}):
        mine = [j for j in jobs if str(j.resources.get("slurm_partition") or "") == partition]
        if not partition:
            result.problems.append(f"partition: {len(mine)} jobs have no slurm_partition: set it in {PROFILE} "
                                   "(default-resources: slurm_partition)")
            continue
        rows = _sinfo(partition, run)
        if rows is None:
            result.problems.append("partition: sinfo not found: run snakemake on the cluster's login node, where the "
                                   "Slurm commands are")
            return ok
        if not rows:
            known = _sinfo_all(run)
            result.problems.append(f"partition: {partition!r} does not exist (sinfo knows: {', '.join(known) or 'none'}"
                                   f"): set slurm_partition in {PROFILE} (default-resources)")
            continue
        ok.add(partition)
        before = len(result.problems)
        need = max(j.gpus_per_node for j in mine)
        have = max(_gres_gpus(r["gres"], gpu_model) for r in rows)
        if need and have < need:
            kind = f"GPUs of type {gpu_model!r} (cluster.gpu_model)" if gpu_model else "GPUs"
            result.problems.append(f"partition: {partition!r} offers {have} {kind} per node (sinfo %G: "
                                   f"{', '.join(sorted({r['gres'] for r in rows}))}), the jobs ask for up to {need}: "
                                   "choose a GPU partition (slurm_partition), fix cluster.gpu_model, or lower "
                                   "max_gpus_per_node (workflow/profiles/slurm/cluster.yaml)")
        longest = max(int(j.resources.get("runtime") or 0) for j in mine)
        limit = max(_minutes(r["time"]) for r in rows)
        if longest > limit:
            result.problems.append(f"partition: {partition!r} allows {limit:g} min per job, the jobs ask for "
                                   f"{longest}: lower runtime in config.yaml (scales.S.defaults.KIND.runtime, "
                                   "resources.eval.runtime; training resumes from checkpoints on retry)")
        if len(result.problems) == before:
            result.notes.append(f"partition {partition} (GPUs per node: {have}, time limit: {rows[0]['time']})")
    return ok


def _sinfo_all(run: Runner) -> list[str]:
    out = run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
    return sorted({line.strip().rstrip("*") for line in out.stdout.splitlines() if line.strip()})


def check_gpu(plan_runs: Iterable, jobs: list[Job], declared: str | None, memory: Callable, result: Result) -> None:
    """A declared GPU kind for GPU jobs, with the precision the runs train in; memory estimates over it warn."""
    if not any(j.gpus_per_node for j in jobs):
        return
    if declared is None:
        result.problems.append(f"gpu: the jobs ask for GPUs but no GPU kind is declared: set cluster.gpu in "
                               f"workflow/profiles/slurm/{CLUSTER_FILE} (one of {', '.join(GPUS)})")
        return
    gpu = GPUS[declared]
    amps = {r.config["train"].get("amp") for r in plan_runs}
    if "bf16" in amps and not gpu.bf16:
        result.problems.append(f"gpu: {gpu.name} has no bf16 (compute capability {gpu.capability}; bf16 needs 8.0, "
                               "Ampere or newer) and the recipes train with train.amp: bf16: use an Ampere or newer "
                               "partition, or set train.amp: fp16 in config.yaml (scales.paper.defaults.{vae,lsgm}."
                               "config.train: fp16 + GradScaler, as the official code)")
    over = sorted((gib, r.stem) for r in plan_runs if (gib := memory(r)) is not None and gib > gpu.memory_gib)
    if over:
        result.warnings.append(f"gpu: {len(over)} job(s) may not fit {gpu.name}'s {gpu.memory_gib:g} GiB (estimate "
                               f"{over[-1][0]:,.0f} GiB for {over[-1][1]}; lsgm plan --profile slurm lists them)")
    result.notes.append(f"gpu {gpu.name} ({'bf16' if gpu.bf16 else 'no bf16'}, {gpu.memory_gib:g} GiB)")


def check_data(needs: Iterable[tuple[str, str, str | None, int | None]], result: Result) -> None:
    """Every (dataset, split, root, expected size) the jobs read loads as a job would load it (no download)."""
    from lsgm.data import get_dataset
    from lsgm.data.common import DatasetError

    checked = []
    for dataset, split, root, size in sorted(set(needs), key=str):
        try:
            get_dataset(dataset, split, root=root, download=False, expected_size=size)
        except DatasetError as err:
            result.problems.append(f"data: {err} (fetch: lsgm fetch-data --root {root or 'ROOT'}; docs/slurm.md)")
            continue
        checked.append(f"{dataset}/{split}")
    if checked:
        result.notes.append(f"data {', '.join(checked)} (verified as the jobs load them)")


def check_inception(explicit: str | None, result: Result) -> None:
    """The Inception-v3 weights resolve (``fd.inception_weights`` > $LSGM_INCEPTION_WEIGHTS > torch's hub cache) and
    load as data."""
    from lsgm.eval.common import EvalError
    from lsgm.eval.features import INCEPTION_URL, inception_weights_path, missing_inception_message
    from lsgm.utils import UserFileError, load_torch_file

    fix = f"re-download {INCEPTION_URL} (or set scales.paper.fd.inception_weights in config.yaml)"
    try:
        path = inception_weights_path(explicit)
        if path is None:
            raise EvalError(missing_inception_message())
        state = load_torch_file(path, "Inception-v3 weights", fix)
    except (EvalError, UserFileError) as err:
        result.problems.append(f"inception: {' '.join(str(err).split())}")
        return
    if not isinstance(state, dict) or not state:
        result.problems.append(f"inception: {path} holds no state dict: {fix}")
        return
    result.notes.append(f"inception weights {path}")


def check_environment(jobs: list[Job], partitions: set[str], python: str, result: Result,
                      run: Runner = subprocess.run) -> None:
    """One 1-CPU ``srun`` on the jobs' partition: the Python the jobs run imports torch, lsgm, snakemake and the
    jobstep plugin there, and finds the ``lsgm`` command."""
    usable = [j for j in jobs if str(j.resources.get("slurm_partition") or "") in partitions]
    if not usable:
        return
    job = usable[0]
    cmd = ["srun", "--partition", str(job.resources["slurm_partition"]), "--nodes", "1", "--ntasks", "1",
           "--cpus-per-task", "1", "--time", "5", f"--immediate={PROBE_SECONDS}", "--job-name", "lsgm-preflight"]
    account = str(job.resources.get("slurm_account") or "")
    if account and account != PLACEHOLDER_ACCOUNT:
        cmd += ["--account", account]
    try:
        out = run([*cmd, python, "-c", PROBE], capture_output=True, text=True, timeout=PROBE_SECONDS + 60)
    except subprocess.TimeoutExpired:
        result.warnings.append(f"environment: the compute-node probe did not finish in {PROBE_SECONDS + 60} s; not "
                               "checked")
        return
    lines = (out.stdout + out.stderr).strip().splitlines()
    if out.returncode == 0 and lines:
        try:
            found = json.loads(out.stdout.strip().splitlines()[-1])
        except ValueError:
            found = {}
        if found.get("lsgm_command"):
            result.notes.append(f"environment imports on a compute node (torch {found.get('torch')}, {python})")
            return
        result.problems.append(f"environment: on a compute node the `lsgm` command is not on PATH ({python} imports "
                               "lsgm): install the package into a virtual environment on a shared filesystem and "
                               "activate it before snakemake (the jobs inherit its PATH)")
        return
    last = lines[-1] if lines else f"exit {out.returncode}"
    if "immediate" in last.lower() or "unable to allocate" in last.lower() or "timeout" in last.lower():
        result.warnings.append(f"environment: no node of {job.resources['slurm_partition']!r} took the 1-CPU probe "
                               f"within {PROBE_SECONDS} s ({last}); not checked")
        return
    result.problems.append(f"environment: {python} fails on a compute node ({last}): put the virtual environment on a "
                           "filesystem the nodes share, with lsgm installed (pip install -e .), and activate it "
                           "before snakemake")


def check_cluster_file(configfiles: list[str], config: dict, result: Result) -> None:
    """The cluster settings are in the config: the profile's cluster file, or a file of the user's with a ``cluster``
    section (a ``--configfile`` on the command line replaces the profile's configfiles, and with them scale paper)."""
    if not loads_cluster_file(configfiles) and "cluster" not in config:
        result.problems.append(f"config: the slurm profile's {CLUSTER_FILE} is not loaded (a --configfile on the "
                               f"command line replaces the profile's configfiles), so this run is scale "
                               f"{config.get('scale')!r} without cluster settings: pass both, --configfile "
                               f"workflow/profiles/slurm/{CLUSTER_FILE} YOUR.yaml")


# ------------------------------------------------------------------------------------------------ the whole check
DATA_RULES = ("train", "fid_stats", "eval_nll")
INCEPTION_RULES = ("fid_stats", "eval_fid", "eval_cost")


def _runs_of(plan, job: Job) -> list:
    """The plan's runs of a training or evaluation job (every seed of a batched one)."""
    w = job.wildcards
    if not {"dataset", "kind", "run"} <= set(w):
        return []
    seeds = [int(w["seed"])] if "seed" in w else plan.seeds
    return [plan.run(w["kind"], w["dataset"], w["run"], s) for s in seeds]


def data_needs(plan, jobs: list[Job]) -> set[tuple[str, str, str | None, int | None]]:
    """(dataset, split, root, expected size) of every split the jobs read; a miniature's data (written by the DAG's
    make_data jobs) and the bundled stand-ins (no files) are left out."""
    made = set(plan.sc.get("data_sizes", {}))
    needs = set()
    for job in (j for j in jobs if j.rule in DATA_RULES):
        if job.rule == "fid_stats":
            dataset = job.wildcards["dataset"]
            root = plan.sc.get("data_root")
            needs |= {(dataset, s, root, None) for s in job.wildcards["splits"].split("+")}
            continue
        for run in _runs_of(plan, job):
            data = run.config["data"]
            splits = ("train", "test") if job.rule == "train" else ("test",)
            needs |= {(data["name"], s, data.get("root"), data.get(f"n_{s}")) for s in splits}
    return {n for n in needs if n[0] not in made and not n[0].startswith("digits")}


def uses_inception(plan, jobs: list[Job]) -> bool:
    for job in (j for j in jobs if j.rule in INCEPTION_RULES):
        features = job.wildcards.get("features") or plan.sc["fd"]["features"].get(job.wildcards.get("dataset"))
        if features == "inception":
            return True
    return False


def run_checks(plan, jobs: list[Job], *, config: dict, configfiles: list[str], no_account: bool, python: str,
               memory: Callable | None = None, runner: Runner = subprocess.run) -> Result:
    """Every check on the jobs the slurm executor would submit (``jobs``: not the localrules) of ``plan``'s scale."""
    result = Result()
    check_cluster_file(configfiles, config, result)
    check_account(jobs, no_account, result)
    partitions = check_partitions(jobs, plan.cluster["gpu_model"], result, runner)
    runs = [r for j in jobs if j.rule == "train" for r in _runs_of(plan, j)]
    check_gpu(runs, jobs, plan.cluster["gpu"], memory or (lambda run: None), result)
    check_data(data_needs(plan, jobs), result)
    weights = plan.inception_weights()
    if uses_inception(plan, jobs) and not _made_by_dag(plan):
        check_inception(weights, result)
    if partitions and not any(p.startswith(("account", "partition")) for p in result.problems):
        check_environment(jobs, partitions, python, result, runner)
    return result


def _made_by_dag(plan) -> bool:
    """A miniature's random Inception weights are a DAG output (rule inception_random), not a user's file."""
    return plan.sc["fd"].get("inception_weights") == "random"


def of_workflow(workflow, config: dict, plan) -> Result | None:
    """The preflight of a Snakemake run (the Snakefile's ``onstart``), its summary printed; None where it does not
    apply: another executor than slurm, ``preflight: false``, or nothing to submit."""
    import sys

    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm":
        return None
    if not config.get("preflight", True):
        print("preflight: skipped (preflight: false)", file=sys.stderr)
        return None
    jobs = [Job(job.rule.name, dict(job.resources.items()), dict(job.wildcards_dict))
            for job in workflow.dag.needrun_jobs() if not job.is_local]
    if not jobs:
        return None
    from lsgm.plan.cost import Costs, load_flops

    result = run_checks(plan, jobs, config=config, configfiles=[str(f) for f in workflow.config_settings.configfiles],
                        no_account=bool(getattr(workflow.executor_settings, "no_account", False)),
                        python=sys.executable, memory=Costs(load_flops()).memory_gib)
    print(result.summary(), file=sys.stderr)
    return result

"""``lsgm plan``: every job of a scale as the slurm executor will submit it -- nodes, GPUs, batches, the Slurm resources
of each job -- with its cost: GPU-hours (measured where a GPU step time exists, else an estimate from counted FLOPs,
:mod:`lsgm.plan.cost`) and peak GPU memory (an estimate), and the totals.

``lsgm plan --profile slurm`` reads what ``snakemake --profile slurm`` reads (:mod:`lsgm.plan.cluster`): config.yaml,
the profile's ``configfiles`` (or ``--configfile``, which replaces them), ``--config KEY=VALUE``, and the profile's
``default-resources`` / ``set-resources`` (or ``--default-resources``).
"""

from __future__ import annotations

import json
import sys

from lsgm.plan.cluster import (
    CLUSTER_FILE, PLACEHOLDER_ACCOUNT, GPUS, Profile, loads_cluster_file, parse_config_args, workflow_config,
)
from lsgm.plan.common import ALL_SCALES, RELEASED, PlanError
from lsgm.plan.cost import Costs, Estimate, estimate_for, fits, hours_text, load_flops, load_measured, measured_hours
from lsgm.plan.plan import Plan
from lsgm.plan.released import ReleasedPlan, make_plan
from lsgm.plan.run import Run

gpu_hours = measured_hours  # the measured GPU-hours of a run (name kept: external callers)
TRAIN_RULE = "train"
EVAL_RULES = {"fid_stats": "fid_stats", "nll": "evaluate", "fid": "evaluate", "fid_normal": "evaluate",
              "cost": "evaluate_first_seed", "samples": "samples", "variance": "variance"}
SLURM_KEYS = ("slurm_account", "slurm_partition", "nodes", "tasks_per_node", "tasks", "gpu", "gpu_model", "gres",
              "mpi", "cpus_per_task", "mem_mb", "runtime", "slurm_extra")


def slurm_request(res: dict) -> str:
    """The resources of a job as one short cell: ``2 nodes x gres gpu:8, 8 tasks x 8 CPUs, 192000 MB``."""
    if res.get("nodes", 1) > 1:
        tasks = res.get("tasks_per_node") or res.get("tasks", 1) // res["nodes"]
        gpus = f"gres {res['gres']}, " if res.get("gres") else ""
        return f"{res['nodes']} nodes x {gpus}{tasks} tasks x {res['cpus_per_task']} CPUs, {res['mem_mb']} MB"
    gpu = f"{res['gpu_model']}:{res['gpu']}" if res.get("gpu_model") else res.get("gpu")
    return f"{f'gpus {gpu}, ' if gpu else ''}{res['cpus_per_task']} CPUs, {res['mem_mb']} MB"


class Report:
    """The plan of one scale with what it will cost, as ``lsgm plan`` prints it."""

    def __init__(self, plan: Plan, profile: Profile | None, default_resources: dict | None, gpu: str | None):
        self.plan, self.profile, self.default_resources = plan, profile, default_resources
        self.gpu = GPUS[gpu] if gpu else None
        self.estimates: list[Estimate] = estimate_for(gpu)
        self.costs = Costs(load_flops())
        self.measured, self.measured_from = load_measured()
        self.runs = plan.training_runs()
        self.by_stem = {r.stem: r for r in self.runs}

    def slurm(self, rule: str, resources: dict) -> dict:
        ours = {k: v for k, v in resources.items() if v is not None}
        full = self.profile.job_resources(rule, ours, self.default_resources) if self.profile else ours
        return {k: full[k] for k in SLURM_KEYS if full.get(k) is not None}

    def train_hours(self, run: Run) -> dict:
        """``{"measured": h}`` from a GPU step time, else ``{GPU: (most, least)}`` from the counted FLOPs."""
        measured = measured_hours(run, self.measured)
        if measured is not None:
            return {"measured": measured}
        flops = self.costs.train_flops(run)
        return {} if flops is None else {e.gpu.name: e.hours(flops) for e in self.estimates}

    def eval_hours(self, job: dict) -> dict:
        flops = self.costs.eval_flops(job, self.by_stem.get(job["run"]))
        return {} if flops is None else {e.gpu.name: e.hours(flops) for e in self.estimates}

    # ------------------------------------------------------------------------------------------------ json
    def jobs(self) -> list[dict]:
        out = []
        for run in self.runs:
            hours = self.train_hours(run)
            out.append(run.job(with_config=True) | {
                "gpu_hours": hours.get("measured"), "gpu_hours_estimate": {g: list(h) for g, h in hours.items()
                                                                          if g != "measured"},
                "peak_memory_gib_estimate": self.costs.memory_gib(run), "slurm": self.slurm(TRAIN_RULE, run.resources())})
        return out

    def eval_jobs(self) -> list[dict]:
        res = self.plan.eval_resources()
        return [job | {"gpu_hours_estimate": {g: list(h) for g, h in self.eval_hours(job).items()},
                       "slurm": self.slurm(EVAL_RULES[job["kind"]], res)} for job in self.plan.eval_jobs()]

    # ------------------------------------------------------------------------------------------------ text
    def gpu_label(self) -> str:
        return " / ".join(e.gpu.name for e in self.estimates)

    def hours_cell(self, hours: dict) -> str:
        if "measured" in hours:
            return f"{hours['measured']:,.0f} (measured)"
        return " / ".join(hours_text(hours.get(e.gpu.name)) for e in self.estimates)

    def train_table(self) -> str:
        from tabulate import tabulate

        rows = []
        for run in self.runs:
            j, gib = run.job(), self.costs.memory_gib(run)
            rows.append([run.stem, j["kind"], j["recipe"], j["nodes"], j["gpus"], j["per_gpu_batch"], j["grad_accum"],
                         j["global_batch"], j["epochs"] if j["epochs"] is not None else "—", j["steps"],
                         j["runtime_minutes"], slurm_request(self.slurm(TRAIN_RULE, run.resources())),
                         self.hours_cell(self.train_hours(run)), "—" if gib is None else f"{gib:,.1f}",
                         fits(gib, self.gpu)])
        headers = ["run", "kind", "recipe", "nodes", "gpus", "per-process batch", "accum", "global batch", "epochs",
                   "steps", "runtime/attempt (min)", "Slurm request", f"GPU-h est. ({self.gpu_label()})",
                   "peak GiB/GPU est.", f"fits {self.gpu.name}" if self.gpu else "fits (no cluster.gpu)"]
        notes = [f"\n{kind} recipe {name!r} is not trained at this scale: its rows use recipe {other!r} "
                 f"(scales.{self.plan.scale}.runs.{kind}.{name}.same_as)"
                 for (kind, name), other in sorted(self.plan.same_as.items())]
        return tabulate(rows, headers=headers, tablefmt="github") + "".join(notes)

    def eval_table(self) -> str:
        """The evaluation jobs, grouped by kind and the settings that set their cost."""
        from collections import defaultdict

        from tabulate import tabulate

        groups: dict[tuple, list[dict]] = defaultdict(list)
        for job in self.plan.eval_jobs():
            cost = {k: job["settings"].get(k) for k in ("n_samples", "tolerance", "tolerances", "pc_steps", "batch_size")
                    if job["settings"].get(k) not in (None, [])}
            groups[(job["kind"], json.dumps(cost))].append(job)
        rows = []
        for (kind, cost), jobs in groups.items():
            hours = [self.eval_hours(j) for j in jobs]
            total = {e.gpu.name: tuple(sum(h[e.gpu.name][i] for h in hours) for i in (0, 1))
                     for e in self.estimates if all(e.gpu.name in h for h in hours)}
            rows.append([kind, len(jobs), jobs[0]["gpus"], jobs[0]["runtime_minutes"],
                         ", ".join(f"{k} {v}" for k, v in json.loads(cost).items()) or "—", self.hours_cell(total)])
        headers = ["evaluation", "jobs", "gpus", "runtime/attempt (min)", "settings", f"GPU-h est. ({self.gpu_label()})"]
        return tabulate(rows, headers=headers, tablefmt="github")

    def totals(self) -> list[str]:
        """Jobs, GPUs, GPU-hours and peak GPU memory per job, each labelled measured or estimate."""
        evals = self.plan.eval_jobs()
        train = [self.train_hours(r) for r in self.runs]
        gpu_jobs = [r for r in self.runs if r.gpus and r.gpu]
        widest = max(gpu_jobs, key=lambda r: r.gpus, default=None)
        lines = [f"{len(self.runs)} training jobs and {len(evals)} evaluation jobs at scale {self.plan.scale}; GPUs per "
                 f"job: training up to {widest.gpus} ({widest.nodes} x {widest.gpus_per_node}), evaluation "
                 f"{self.plan.eval_resources()['gpu'] or 0}" if widest else
                 f"{len(self.runs)} training jobs and {len(evals)} evaluation jobs at scale {self.plan.scale}, CPU only "
                 "(no GPU-hours)"]
        if widest is None:
            return lines
        measured = [h["measured"] for h in train if "measured" in h]
        if measured:
            lines.append(f"GPU-hours, training, measured ({self.measured_from}): {sum(measured):,.0f} for "
                         f"{len(measured)} of {len(train)} jobs")
        for e in self.estimates:
            t = [h[e.gpu.name] for h in train if e.gpu.name in h]
            v = [h[e.gpu.name] for h in (self.eval_hours(j) for j in evals) if e.gpu.name in h]
            if t or v:
                lines.append(f"GPU-hours on {e.gpu.name}, {e.label}: training {hours_text(_sum(t))} "
                             f"({len(t)} of {len(train)} jobs), evaluation {hours_text(_sum(v))} ({len(v)} of "
                             f"{len(evals)} jobs{self._nfe_note()})")
        if not any("measured" in h or h for h in train):
            lines.append("GPU-hours: no count (python benchmarks/paper_flops.py) and no GPU step time "
                         "(benchmarks/paper_step.py) for these runs")
        stale = self.costs.stale(self.runs)
        if stale:
            lines.append(f"{len(stale)} runs' networks changed since benchmarks/results/paper_flops.json was counted "
                         f"(e.g. {stale[0]}): rerun python benchmarks/paper_flops.py")
        mem = {r.stem: self.costs.memory_gib(r) for r in gpu_jobs}
        known = {k: v for k, v in mem.items() if v is not None}
        if known:
            worst = max(known, key=known.get)
            line = (f"peak GPU memory per job, estimate (weights, gradients, optimizer states, EMA and the counted "
                    f"activations at the per-process batch): up to {known[worst]:,.1f} GiB ({worst})")
            if self.gpu:
                over = sorted(k for k, v in known.items() if v > self.gpu.memory_gib)
                line += (f"; {len(over)} job(s) may not fit {self.gpu.name}'s {self.gpu.memory_gib:g} GiB: "
                         f"{', '.join(over)}" if over else f"; every job fits {self.gpu.name}'s {self.gpu.memory_gib:g} GiB")
            else:
                line += "; declare cluster.gpu (workflow/profiles/slurm/cluster.yaml) to check the fit"
            lines.append(line)
        return lines

    def _nfe_note(self) -> str:
        return ("; ODE NFE per sample: the paper's 138 (CIFAR-10, tolerance 1e-5) and 23 (CelebA-HQ, 1e-2), assumed 138 "
                "elsewhere")

    def header(self, files: list[str]) -> str:
        where = f"scale {self.plan.scale} from {' + '.join(files)}"
        if self.profile:
            res = self.slurm(TRAIN_RULE, {})
            where += (f"; profile {self.profile.path}: account {res.get('slurm_account', '(none)')}, partition "
                      f"{res.get('slurm_partition', '(default)')}")
        return where + f"; GPU: {self.gpu.name + ' (cluster.gpu)' if self.gpu else 'none declared (cluster.gpu)'}"


def _sum(pairs: list[tuple[float, float]]) -> tuple[float, float] | None:
    return (sum(p[0] for p in pairs), sum(p[1] for p in pairs)) if pairs else None


def warnings_for(profile: Profile | None, files: list[str], report: Report) -> list[str]:
    """What would go wrong at submission that the plan can already see: the placeholder account, a profile whose
    cluster file a --configfile replaced."""
    out = []
    if profile is None:
        return out
    account = report.slurm(TRAIN_RULE, {}).get("slurm_account")
    if str(account) == PLACEHOLDER_ACCOUNT and not profile.no_account:
        out.append(f"slurm_account is still {PLACEHOLDER_ACCOUNT!r} in {profile.path} (default-resources): set your "
                   "account there before `snakemake --profile slurm` (a cluster without accounts: --slurm-no-account)")
    if profile.configfiles() and not loads_cluster_file(files):
        out.append(f"the profile's {CLUSTER_FILE} is not loaded: --configfile replaces the profile's configfiles; "
                   f"pass it too (--configfile {profile.folder / CLUSTER_FILE} YOUR.yaml)")
    return out


def released_report(plan: ReleasedPlan, as_json: bool) -> str:
    """``lsgm plan --scale released``: the expected files (sizes where ``--released-root`` holds them), the import
    jobs, the evaluation jobs; GPU-hours through :func:`lsgm.plan.released.gpu_hours` (not estimated yet)."""
    from collections import Counter

    from tabulate import tabulate

    jobs, imports = plan.eval_jobs(), plan.import_jobs()
    if as_json:
        files = [{"file": f.relpath, "path": plan.path_of(f), "stage": f.stage, "recipe": f.recipe,
                  "dataset": f.dataset, "role": f.role} for f in plan.release_files()]
        return json.dumps({"scale": RELEASED, "released_root": plan.root, "files": files,
                           "jobs": imports, "eval_jobs": jobs}, indent=1)
    rows = [[j["run"], j["settings"]["checkpoint"], j["runtime_minutes"]] for j in imports]
    kinds = Counter(j["kind"] for j in jobs)
    known = [j["gpu_hours"] for j in jobs if j["gpu_hours"] is not None]
    hours = (f"estimated {sum(known):,.0f} GPU-hours" if known else "GPU-hours not estimated yet (the hook: "
             "lsgm.plan.released.gpu_hours)")
    return "\n".join([f"The release ({'released_root ' + plan.root if plan.root else 'pass --released-root DIR'}):",
                      plan.listing(), "",
                      tabulate(rows, headers=["import (CPU)", "official checkpoint", "runtime (min)"],
                               tablefmt="github"), "",
                      tabulate(sorted(kinds.items()), headers=["evaluation", "jobs"], tablefmt="github"), "",
                      f"{len(imports)} imports and {len(jobs)} evaluation jobs at scale {RELEASED} "
                      f"(nothing trained); {hours}"])


def print_why(plan: Plan, name: str, key: str) -> int:
    """``lsgm plan --why RUN KEY``: the layers that set KEY of the run named RUN (``quick/digits/lsgm/balanced-s0`` or
    ``digits/lsgm/balanced-s0``); one line if there is no such run."""
    import difflib

    from lsgm.plan.layers import why

    runs = {r.stem: r for r in plan.runs.values()}
    run = runs.get(name.removeprefix(f"{plan.scale}/"))
    if run is None:
        close = difflib.get_close_matches(name.removeprefix(f"{plan.scale}/"), list(runs), n=1)
        hint = f"; did you mean {plan.scale}/{close[0]}?" if close else ""
        print(f"lsgm plan: error: no run {name!r} at scale {plan.scale}{hint} (runs are DATASET/KIND/RUN-sSEED)",
              file=sys.stderr)
        return 2
    print(why(run, key))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``lsgm plan [--profile slurm] [--scale S] [--config K=V ...] [--configfile F ...] [--json] ...``."""
    import argparse

    p = argparse.ArgumentParser(prog="lsgm plan", description="every job of one scale as it will be submitted, and "
                                "what it will cost (GPU-hours, GPU memory) before anything is submitted")
    p.add_argument("--profile", default=None, help="a Snakemake profile (slurm): read as `snakemake --profile` does")
    p.add_argument("--scale", choices=ALL_SCALES, default=None,
                   help="default: the config's scale with --profile (the slurm profile: paper), else paper")
    p.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE",
                   help="as `snakemake --config`; a path (no '='): the whole config.yaml, as --workflow-config")
    p.add_argument("--configfile", nargs="+", default=[], metavar="FILE",
                   help="as `snakemake --configfile`: replaces the profile's configfiles, merged over config.yaml")
    p.add_argument("--default-resources", nargs="+", default=None, metavar="NAME=VALUE",
                   help="as `snakemake --default-resources`: replaces the profile's")
    p.add_argument("--workflow-config", default="config.yaml", help="the workflow's whole config.yaml")
    p.add_argument("--gpu", choices=sorted(GPUS), default=None, help="the GPU to estimate for (default: cluster.gpu)")
    p.add_argument("--json", action="store_true", help="JSON with every job's resolved run config and resources")
    p.add_argument("--max-gpus-per-node", type=int, default=None, help="= --config max_gpus_per_node=N")
    p.add_argument("--max-nodes", type=int, default=None, help="= --config max_nodes=N")
    p.add_argument("--released-root", default=None, help="scale released: the folder of the NVlabs/LSGM release "
                   "(= --config released_root=DIR)")
    p.add_argument("--check", action="store_true", help="scale released: check the release's files (one line)")
    p.add_argument("--why", nargs=2, metavar=("RUN", "KEY"),
                   help="which config layer set KEY of RUN (e.g. --why quick/digits/lsgm/balanced-s0 train.ema_decay, "
                        "or eval.nll.t_draws): every layer that sets it, in merge order (lsgm/plan/layers.py)")
    args = p.parse_args(argv)
    paths = [c for c in args.config if "=" not in c]  # the earlier form: --config config.yaml
    if len(paths) > 1:
        print(f"lsgm plan: error: --config {' '.join(paths)}: give one whole config.yaml (--workflow-config) and "
              "overlays as --configfile", file=sys.stderr)
        return 2
    if paths:
        args.workflow_config, args.config = paths[0], [c for c in args.config if "=" in c]
    for flag in ("max_gpus_per_node", "max_nodes"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            print(f"lsgm plan: error: --{flag.replace('_', '-')} must be >= 1 (got {getattr(args, flag)})",
                  file=sys.stderr)
            return 2
        if getattr(args, flag) is not None:
            args.config.append(f"{flag}={getattr(args, flag)}")
    if args.released_root is not None:
        args.config.append(f"released_root={args.released_root}")
    try:
        profile = Profile.find(args.profile) if args.profile else None
        config, files = workflow_config(args.workflow_config, profile, args.configfile, args.config)
        missing = [k for k in ("scales", "recipes") if k not in config]
        if missing:
            raise PlanError(f"{args.workflow_config}: not a whole config (no {', '.join(missing)}); pass a partial "
                            f"file as --configfile {args.workflow_config} to overlay config.yaml")
        scale = args.scale or (config.get("scale", "paper") if profile else "paper")
        plan = make_plan(config, scale)
        if isinstance(plan, ReleasedPlan):
            if args.check:
                plan.check_release()
            print(released_report(plan, args.json))
            return 0
        if args.why:
            return print_why(plan, *args.why)
        defaults = parse_config_args(args.default_resources) if args.default_resources else None
        report = Report(plan, profile, defaults, args.gpu or plan.cluster["gpu"])
    except PlanError as err:
        print(f"lsgm plan: error: {err}", file=sys.stderr)
        return 2
    except KeyError as err:  # a required key the schema would name (snakemake validates config.yaml first)
        print(f"lsgm plan: error: the config lacks the key {err}; compare it with config.yaml", file=sys.stderr)
        return 2
    for line in warnings_for(profile, files, report):
        print(f"lsgm plan: warning: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps({"scale": scale, "config_files": files, "gpu_hours_from": report.measured_from,
                          "estimate": [e.label for e in report.estimates], "jobs": report.jobs(),
                          "eval_jobs": report.eval_jobs(), "totals": report.totals()}, indent=1))
        return 0
    print(report.header(files) + "\n")
    print(report.train_table())
    print("\n" + report.eval_table())
    print("\n" + "\n".join(report.totals()))
    return 0

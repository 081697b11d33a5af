"""``lsgm plan``: every training and evaluation job of a scale as a table (or ``--json``), with the GPU-hour
estimate from a measured step time (:func:`gpu_hours`) and the placeholder-account warning.
"""

from __future__ import annotations

import json

from lsgm.plan.common import ALL_SCALES, RELEASED, PlanError, STAGES, deep_merge
from lsgm.plan.plan import Plan
from lsgm.plan.released import ReleasedPlan, make_plan
from lsgm.plan.run import Run


# ----------------------------------------------------------------------------------------------- lsgm plan
def gpu_hours(run: Run, measured: dict | None) -> float | None:
    """Estimated GPU-hours of a paper run from a measured step time (``benchmarks/results/paper_step_<gpu>.json``:
    ``{"steps": {"<recipe>/<stage>": {"seconds_per_step": s, "per_gpu_batch": b}}}``), scaled to this run's per-GPU
    batch and accumulation; ``None`` where nothing was measured."""
    if not measured or run.official is None or run.kind not in STAGES:
        return None
    entry = measured.get("steps", {}).get(f"{run.official}/{STAGES[run.kind]}")
    if not entry:
        return None
    per_gpu, accum = run.batch_split
    seconds = entry["seconds_per_step"] * accum * per_gpu / entry["per_gpu_batch"]
    return seconds * run.config["train"]["steps"] * max(1, run.gpus) / 3600.0


def load_measured(pattern: str = "benchmarks/results/paper_step_*.json") -> tuple[dict | None, str | None]:
    """The first GPU result of benchmarks/paper_step.py, if any (name, content)."""
    import glob

    for path in sorted(glob.glob(pattern)):
        if "cpu" in path:
            continue
        with open(path, encoding="utf-8") as fh:
            return json.load(fh), path
    return None, None


def plan_table(plan: Plan, measured: dict | None) -> str:
    from tabulate import tabulate

    rows = []
    for run in plan.training_runs():
        j = run.job()
        hours = gpu_hours(run, measured)
        rows.append([run.stem, j["kind"],
                     j["recipe"], j["nodes"], j["gpus"], j["processes"], j["per_gpu_batch"], j["grad_accum"],
                     j["global_batch"],
                     j["epochs"] if j["epochs"] is not None else "—", j["steps"], j["runtime_minutes"],
                     "—" if hours is None else f"{hours:,.0f}"])
    headers = ["run", "kind", "recipe", "nodes", "gpus", "processes", "per-process batch", "accum", "global batch",
               "epochs", "steps",
               "runtime/attempt (min)", "est. GPU-h"]
    notes = [f"\n{kind} recipe {name!r} is not trained at this scale: its rows use recipe {other!r} "
             f"(scales.{plan.scale}.runs.{kind}.{name}.same_as)" for (kind, name), other in sorted(plan.same_as.items())]
    return tabulate(rows, headers=headers, tablefmt="github") + "".join(notes)


def eval_table(plan: Plan) -> str:
    """The evaluation jobs, grouped by kind: how many, their resources, and the settings that set their cost."""
    from collections import defaultdict

    from tabulate import tabulate

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for job in plan.eval_jobs():
        cost = {k: job["settings"].get(k) for k in ("n_samples", "tolerance", "tolerances", "pc_steps", "batch_size")
                if job["settings"].get(k) not in (None, [])}
        groups[(job["kind"], json.dumps(cost))].append(job)
    rows = [[kind, len(jobs), jobs[0]["gpus"], jobs[0]["runtime_minutes"],
             ", ".join(f"{k} {v}" for k, v in json.loads(cost).items()) or "—", "—"]
            for (kind, cost), jobs in groups.items()]
    headers = ["evaluation", "jobs", "gpus", "runtime/attempt (min)", "settings", "est. GPU-h"]
    return (tabulate(rows, headers=headers, tablefmt="github")
            + f"\n{sum(len(j) for j in groups.values())} evaluation jobs (GPU-hours not estimated: none timed on a GPU)")


def released_report(plan: ReleasedPlan, as_json: bool) -> str:
    """``lsgm plan --scale released``: the expected files (sizes where ``--released-root`` holds them), the import
    jobs, the evaluation jobs; GPU-hours through :func:`lsgm.plan.released.gpu_hours` (not estimated yet)."""
    jobs, imports = plan.eval_jobs(), plan.import_jobs()
    if as_json:
        files = [{"file": f.relpath, "path": plan.path_of(f), "stage": f.stage, "recipe": f.recipe,
                  "dataset": f.dataset, "role": f.role} for f in plan.release_files()]
        return json.dumps({"scale": RELEASED, "released_root": plan.root, "files": files,
                           "jobs": imports, "eval_jobs": jobs}, indent=1)
    from tabulate import tabulate

    rows = [[j["run"], j["settings"]["checkpoint"], j["runtime_minutes"]] for j in imports]
    known = [j["gpu_hours"] for j in jobs if j["gpu_hours"] is not None]
    hours = (f"estimated {sum(known):,.0f} GPU-hours" if known else "GPU-hours not estimated yet (the hook: "
             "lsgm.plan.released.gpu_hours, filled by the FLOP-based estimates of lsgm plan)")
    return "\n".join([f"The release ({'released_root ' + plan.root if plan.root else 'pass --released-root DIR'}):",
                      plan.listing(), "",
                      tabulate(rows, headers=["import (CPU)", "official checkpoint", "runtime (min)"],
                               tablefmt="github"), "", eval_table(plan), "",
                      f"{len(imports)} imports and {len(jobs)} evaluation jobs at scale {RELEASED} "
                      f"(nothing trained); {hours}"])


def warn_unset_account(profile: str) -> None:
    """One warning line when the slurm profile's account is still the placeholder (sbatch would refuse every job)."""
    import sys

    import yaml

    try:
        with open(profile, encoding="utf-8") as fh:
            account = (yaml.safe_load(fh).get("default-resources") or {}).get("slurm_account")
    except (OSError, yaml.YAMLError, AttributeError):
        return
    if account == "CHANGE_ME":
        print(f"lsgm plan: warning: slurm_account is still 'CHANGE_ME' in {profile} (default-resources): set your "
              "account there before `snakemake --profile slurm`", file=sys.stderr)


def load_config(path: str, overlays: list[str] = ()) -> dict:
    """config.yaml (whole) with ``overlays`` merged over it as Snakemake merges ``--configfile``; PlanError (one
    line naming the file) for a file that is unreadable, no mapping, or an overlay passed as the whole config."""
    import yaml

    def read(name: str) -> dict:
        try:
            with open(name, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except (OSError, yaml.YAMLError) as err:
            raise PlanError(f"{name}: {str(err).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise PlanError(f"{name}: not a YAML mapping")
        return data

    config = read(path)
    missing = [k for k in ("scales", "recipes") if k not in config]
    if missing:
        raise PlanError(f"{path}: not a whole config (no {', '.join(missing)}); pass a partial file as "
                        f"--configfile {path} to overlay config.yaml")
    return deep_merge(config, *(read(name) for name in overlays))


def print_why(plan: Plan, name: str, key: str) -> int:
    """``lsgm plan --why RUN KEY``: the layers that set KEY of the run named RUN (``quick/digits/lsgm/balanced-s0`` or
    ``digits/lsgm/balanced-s0``); one line if there is no such run."""
    import sys

    from lsgm.plan.layers import why

    runs = {r.stem: r for r in plan.runs.values()}
    run = runs.get(name.removeprefix(f"{plan.scale}/"))
    if run is None:
        import difflib

        close = difflib.get_close_matches(name.removeprefix(f"{plan.scale}/"), list(runs), n=1)
        hint = f"; did you mean {plan.scale}/{close[0]}?" if close else ""
        print(f"lsgm plan: error: no run {name!r} at scale {plan.scale}{hint} (runs are DATASET/KIND/RUN-sSEED)",
              file=sys.stderr)
        return 2
    print(why(run, key))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``lsgm plan --scale S [--json] [--config config.yaml] [--max-gpus-per-node N] [--max-nodes N]``."""
    import argparse
    import sys

    import yaml

    p = argparse.ArgumentParser(prog="lsgm plan", description="every training job of one scale of the DAG, resolved "
                                "(what will this cost before I submit)")
    p.add_argument("--scale", choices=ALL_SCALES, default="paper")
    p.add_argument("--released-root", default=None, help="scale released: the folder of the NVlabs/LSGM release "
                   "(lists each expected file with its size; --check: refuse a missing or truncated one)")
    p.add_argument("--check", action="store_true", help="scale released: check the release's files (one line)")
    p.add_argument("--config", default="config.yaml", help="the workflow's whole config.yaml")
    p.add_argument("--configfile", nargs="+", default=[], metavar="FILE",
                   help="overlays merged over --config in order, as `snakemake --configfile FILE` does")
    p.add_argument("--json", action="store_true", help="JSON with every job's fully resolved run config")
    p.add_argument("--max-gpus-per-node", type=int, default=None)
    p.add_argument("--max-nodes", type=int, default=None)
    p.add_argument("--profile", default="workflow/profiles/slurm/config.yaml", help="the slurm profile (its account)")
    p.add_argument("--why", nargs=2, metavar=("RUN", "KEY"),
                   help="which config layer set KEY of RUN (e.g. --why quick/digits/lsgm/balanced-s0 train.ema_decay, "
                        "or eval.nll.t_draws): every layer that sets it, in merge order (lsgm/plan/layers.py)")
    args = p.parse_args(argv)
    for flag in ("max_gpus_per_node", "max_nodes"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            print(f"lsgm plan: error: --{flag.replace('_', '-')} must be >= 1 (got {getattr(args, flag)})",
                  file=sys.stderr)
            return 2
    try:
        config = load_config(args.config, args.configfile)
        if args.max_gpus_per_node:
            config["max_gpus_per_node"] = args.max_gpus_per_node
        if args.max_nodes:
            config["max_nodes"] = args.max_nodes
        if args.released_root is not None:
            config["released_root"] = args.released_root
        plan = make_plan(config, args.scale)
        if args.check and isinstance(plan, ReleasedPlan):
            plan.check_release()
        warn_unset_account(args.profile)
    except PlanError as err:
        print(f"lsgm plan: error: {err}", file=sys.stderr)
        return 2
    except KeyError as err:  # a required key the schema would name (snakemake validates config.yaml first)
        print(f"lsgm plan: error: the config lacks the key {err}; compare it with config.yaml", file=sys.stderr)
        return 2
    if args.why:
        return print_why(plan, *args.why)
    if isinstance(plan, ReleasedPlan):
        print(released_report(plan, args.json))
        return 0
    measured, source = load_measured()
    if args.json:
        jobs = [run.job(with_config=True) | {"gpu_hours": gpu_hours(run, measured)} for run in plan.training_runs()]
        print(json.dumps({"scale": args.scale, "gpu_hours_from": source, "jobs": jobs,
                          "eval_jobs": plan.eval_jobs()}, indent=1))
        return 0
    print(plan_table(plan, measured))
    print("\n" + eval_table(plan))
    total = [gpu_hours(r, measured) for r in plan.training_runs()]
    known = [h for h in total if h is not None]
    print(f"\n{len(total)} training jobs at scale {args.scale}; "
          + (f"estimated {sum(known):,.0f} GPU-hours for {len(known)} of them (from {source})" if known
             else "no GPU step time measured yet (benchmarks/paper_step.py), so no GPU-hour estimate"))
    return 0

"""Training throughput of stage 1 (VAE), stage 2 (LSGM) and the pixel SGM at the quick-scale sizes.

The run configs are the ones the workflow trains at ``scale: quick`` (resolved from the repo's
``config.yaml`` by ``lsgm/plan/``: the CIFAR-10 "fid" recipes mapped to the offline digits);
if that cannot be resolved, the QUICK_FALLBACK sizes below are used and the results file says so.
Each trainer is built exactly as ``lsgm train-*`` builds it; after ``--warmup`` steps, ``--steps`` calls of
its ``train_step`` (forward, backward, optimizer, EMA; data loading included) are timed.

    python benchmarks/train_throughput.py [--steps 30] [--warmup 3] [--threads N] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from lsgm.config import RunConfig, from_dict, to_dict
from lsgm.train.run import Run
from lsgm.io import atomic_write_json, provenance

ROOT = Path(__file__).resolve().parent.parent
QUICK_FALLBACK = {  # used only when config.yaml's quick preset cannot be resolved
    "vae": {"kind": "vae", "data": {"name": "digits"}, "train": {"global_batch": 64}},
    "lsgm": {"kind": "lsgm", "data": {"name": "digits"},
             "objective": {"weighting": "un", "sampling": "is", "q_objective": "rew"},
             "train": {"global_batch": 64, "vae_optim": {"name": "adamw", "lr": 1e-4, "lr_min": 1e-5, "eps": 1e-3}}},
    "sgm": {"kind": "sgm", "data": {"name": "digits"}, "train": {"global_batch": 64}},
}


def quick_configs() -> tuple[dict[str, RunConfig], str]:
    """(kind -> RunConfig, where the sizes came from)."""
    try:
        from lsgm.plan import Plan

        plan = Plan(yaml.safe_load((ROOT / "config.yaml").read_text()), "quick")
        runs = {r.kind: r for r in plan.runs.values() if r.name == "fid" and r.kind in ("vae", "lsgm")}
        runs["sgm"] = next(r for r in plan.runs.values() if r.kind == "sgm")
        cfgs = {k: from_dict(RunConfig, r.config) for k, r in runs.items()}
        return cfgs, f"config.yaml scale quick (lsgm/plan/): vae/lsgm recipe 'fid', sgm recipe '{runs['sgm'].name}'"
    except Exception as err:  # noqa: BLE001 - fall back, and record why
        cfgs = {k: from_dict(RunConfig, v) for k, v in QUICK_FALLBACK.items()}
        return cfgs, f"QUICK_FALLBACK in benchmarks/train_throughput.py (config.yaml not usable: {err})"


def time_task(task, run: Run, steps: int, warmup: int) -> dict:
    times = []
    for step in range(warmup + steps):
        batches = [next(task.loader).to(run.device) for _ in range(run.grad_accum)]
        t0 = time.perf_counter()
        task.train_step(batches, step)
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    total, batch = sum(times), run.cfg.train.global_batch
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in task.modules.items()}
    return {"steps_per_second": steps / total, "samples_per_second": steps * batch / total,
            "seconds_per_step_median": statistics.median(times), "seconds_per_step_min": min(times),
            "timed_steps": steps, "warmup_steps": warmup, "batch_size": batch, "parameters": params,
            "sizes": {"vae": to_dict(run.cfg.vae) if run.cfg.kind != "sgm" else None,
                      "score": to_dict(run.cfg.score) if run.cfg.kind != "vae" else None,
                      "objective": to_dict(run.cfg.objective) if run.cfg.kind == "lsgm" else None,
                      "dataset": run.cfg.data.name}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_throughput.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from lsgm.train.lsgm import LSGMTask
    from lsgm.train.sgm import SGMTask
    from lsgm.train.vae import VAETask

    cfgs, source = quick_configs()
    results, t_start, load_before = {}, time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = Run(cfgs["vae"], tmp / "vae")
        vae_task = VAETask(run)
        results["stage1_vae"] = time_task(vae_task, run, args.steps, args.warmup)
        run.finish(vae_task, "completed", args.steps + args.warmup, None)  # a model.pt for stage 2 to load
        run.close()
        cfg2 = from_dict(RunConfig, {**to_dict(cfgs["lsgm"]), "vae": to_dict(cfgs["vae"].vae)})
        run = Run(cfg2, tmp / "lsgm")
        results["stage2_lsgm"] = time_task(LSGMTask(run, str(tmp / "vae" / "model.pt")), run, args.steps, args.warmup)
        run.close()
        run = Run(cfgs["sgm"], tmp / "sgm")
        results["pixel_sgm"] = time_task(SGMTask(run), run, args.steps, args.warmup)
        run.close()
    device = run.device
    out = {"benchmark": "train_throughput", "sizes_source": source, "results": results,
           "ratio_stage2_over_stage1_step_time": results["stage1_vae"]["steps_per_second"]
           / results["stage2_lsgm"]["steps_per_second"],
           "settings": {"steps": args.steps, "warmup": args.warmup, "torch_threads": torch.get_num_threads(),
                        "amp": "off" if device.type == "cpu" else "per config", "command": " ".join(sys.argv),
                        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
                        "note": "CPU timings are sensitive to other processes on the machine: compare the "
                                "load averages (a load above the core count means contended timings)"},
           "provenance": provenance(device, wall_seconds=time.time() - t_start)}
    atomic_write_json(Path(args.out), out)
    for name, r in results.items():
        print(f"{name:12s} {r['steps_per_second']:7.2f} steps/s  {r['samples_per_second']:8.1f} samples/s  "
              f"(batch {r['batch_size']}, median {1e3 * r['seconds_per_step_median']:.1f} ms/step)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One paper-size step of every official recipe: the full-size networks, built from the RESOLVED paper run
configs (``lsgm.plan.Plan(config.yaml, "paper")``), each part timed in its own process.

Parts, per recipe (the six official recipes; the Table 6 cells share cifar10_fid's networks):
  stage1  one optimizer step of the NVAE (``VAETask.train_step``: forward, KL, SR, backward, Adamax)
  stage2  one optimizer step of the LSGM (``LSGMTask.train_step``: VAE + score network, SR, EMA)
  nll     one ODE NLL batch (``lsgm.eval.nll.batch_terms``, prior ``ode``, the official NLL t_eps/tolerance)
  sample  one ODE sampling batch (``lsgm.eval.generate.sample_batch``, the official FID t_eps/tolerance)

On a CPU the batch is 1-2 per process (``--batch``, default 1): this catches shape, dtype and memory bugs at
real sizes, and the seconds are CPU seconds. On a GPU the default is the official per-GPU batch with bf16
autocast. The data are random images on the dataset's grid (no dataset needed); the networks are freshly
initialised, so ODE NFEs are those of an untrained prior (lower than a trained one's). Each part runs in a
fresh process, so its peak memory (GPU: ``max_memory_allocated``; CPU: the process's max RSS) is its own; a
part that fails records its error and the others go on. Results go to
``benchmarks/results/paper_step_<device>.json``; ``lsgm plan`` reads a GPU file's ``steps`` for GPU-hours.

    python benchmarks/paper_step.py [--recipes cifar10_fid ...] [--parts stage1 stage2 nll sample]
                                    [--batch N] [--timed 1] [--warmup 1] [--threads N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from lsgm.utils import synchronize

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("stage1", "stage2", "nll", "sample")
RUNS = {  # official recipe -> (paper dataset, run name) in config.yaml
    "cifar10_fid": ("cifar10", "fid"), "cifar10_nll": ("cifar10", "nll"), "cifar10_balanced": ("cifar10", "balanced"),
    "celeba256": ("celeba256", "celeba"), "mnist": ("mnist", "mnist"), "omniglot": ("omniglot", "omniglot"),
}
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks (vendor sheets)


# ----------------------------------------------------------------------------------------------- one part
class RandomImages(torch.utils.data.Dataset):
    """Random images on a dataset's value grid: (x [C, H, W] in [0, 1], 0)."""

    def __init__(self, info, n: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, info.levels, (n, info.channels, info.image_size, info.image_size), generator=gen)
        self.x = idx.float() / (info.levels - 1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], 0


def _configs(recipe: str, batch: int, amp: str) -> tuple[dict, dict, dict]:
    """(stage-1 config, stage-2 config, eval settings) of a recipe's paper run, at this per-process batch."""
    from lsgm.plan import Plan

    plan = Plan(yaml.safe_load((ROOT / "config.yaml").read_text()), "paper")
    dataset, name = RUNS[recipe]
    lsgm_run = plan.run("lsgm", dataset, name, 0)
    out = []
    for run in (lsgm_run.backbone, lsgm_run):
        cfg = json.loads(json.dumps(run.config))
        cfg["train"].update(global_batch=batch, max_batch_per_process=0, amp=amp, select_every_steps=0)
        out.append(cfg)
    return out[0], out[1], lsgm_run.eval_settings


def _patch_data(n: int) -> None:
    """Every dataset the trainers ask for is random images (benchmark only)."""
    from lsgm.data import dataset_info
    from lsgm.train import lsgm as lsgm_task
    from lsgm.train import vae as vae_task

    def fake(name, split, root=None, download=False, augment=True, expected_size=None):
        return RandomImages(dataset_info(name), n, seed=0 if split == "train" else 1)

    vae_task.get_dataset = lsgm_task.get_dataset = fake


def _timed_steps(task, run, warmup: int, timed: int) -> list[float]:
    times = []
    for step in range(warmup + timed):
        batches = [next(task.loader).to(run.device) for _ in range(run.grad_accum)]
        synchronize(run.device)
        t0 = time.perf_counter()
        task.train_step(batches, step)
        synchronize(run.device)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_part(recipe: str, part: str, batch: int, warmup: int, timed: int, work: Path) -> dict:
    """One part of one recipe in this process; returns its record."""
    from lsgm.config import RunConfig, from_dict
    from lsgm.train.distributed import unwrap
    from lsgm.train.run import Run
    from lsgm.utils import atomic_torch_save

    cuda = torch.cuda.is_available()
    amp = "bf16" if cuda else "off"
    c1, c2, evals = _configs(recipe, batch, amp)
    _patch_data(max(4 * batch, 8))
    vae_file, lsgm_file = work / "vae.pt", work / "lsgm.pt"
    record: dict = {"per_gpu_batch": batch, "amp": amp}
    if part == "stage1":
        from lsgm.train.vae import VAETask

        run = Run(from_dict(RunConfig, c1), work / "stage1")
        task = VAETask(run)
        times = _timed_steps(task, run, warmup, timed)
        record.update(seconds_per_step=min(times), seconds=times, parameters={"vae": _count(task.modules["vae"])})
        run.close()
    elif part == "stage2":
        from lsgm.data import dataset_info
        from lsgm.nets.nvae import NVAE
        from lsgm.train.lsgm import LSGMTask

        cfg1 = from_dict(RunConfig, c1)
        vae = NVAE(cfg1.vae, dataset_info(cfg1.data.name))  # an untrained backbone is enough to time stage 2
        atomic_torch_save({"config": c1, "status": "completed", "step": 0, "state": {"vae": vae.state_dict()},
                           "ema": None, "meta": {}}, vae_file)
        del vae
        run = Run(from_dict(RunConfig, c2), work / "stage2")
        task = LSGMTask(run, str(vae_file))
        times = _timed_steps(task, run, warmup, timed)
        record.update(seconds_per_step=min(times), seconds=times,
                      parameters={k: _count(m) for k, m in task.modules.items()},
                      latent_shape=list(unwrap(task.vae).latent_shape))
        atomic_torch_save({"config": c2, "status": "completed", "step": 0, **task.model_state(), "meta": {}},
                          lsgm_file)
        run.close()
    else:
        from lsgm.eval.common import load_run, resolve_device

        if not lsgm_file.exists():
            raise RuntimeError("needs the stage2 part's model file (run the stage2 part first)")
        device = resolve_device("auto")
        loaded = load_run(lsgm_file, device=device)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
        if part == "nll":
            from lsgm.eval.cli import ODE_SOLVER, ODE_T_EPS, ODE_TOLERANCE, PROBE
            from lsgm.eval.nll import PriorSettings, batch_terms

            s = evals.get("nll", {})
            ps = PriorSettings("ode", t_eps=s.get("t_eps", ODE_T_EPS), tolerance=s.get("tolerance", ODE_TOLERANCE),
                               solver=ODE_SOLVER, probe=PROBE, inner=1, t_draws=0)
            x = torch.stack([RandomImages(loaded.data, batch, seed=2)[i][0] for i in range(batch)]).to(device)
            synchronize(device)
            t0 = time.perf_counter()
            with ctx:
                terms = batch_terms(loaded, x, ps, iw_samples=1, seed=0, batch_index=0)
            synchronize(device)
            record.update(seconds_per_batch=time.perf_counter() - t0, nfe=terms.nfe, t_eps=ps.t_eps,
                          tolerance=ps.tolerance, nll_nats_untrained=float(terms.nll.mean()))
        else:
            from lsgm.eval.cli import ODE_SOLVER, ODE_T_EPS, ODE_TOLERANCE
            from lsgm.eval.generate import Sampling, sample_batch

            s = evals.get("fid", {})
            t_eps, tol = s.get("t_eps", ODE_T_EPS), s.get("tolerance", ODE_TOLERANCE)
            sampling = Sampling(sampler="ode", tolerance=tol, solver=ODE_SOLVER, t_eps=t_eps, temperature=1.0,
                                vae_temperature=1.0, pc_steps=None, snr=None)
            with ctx:
                res = sample_batch(loaded, 0, batch, seed=0, sampling=sampling, device=device)
            record.update(seconds_per_batch=res.seconds, solve_seconds=res.sampler_seconds, nfe=res.nfe,
                          t_eps=t_eps, tolerance=tol)
    if cuda:
        record["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        record["peak_memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        record["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        record["peak_memory_kind"] = "process max RSS (CPU)"
    return record


# ----------------------------------------------------------------------------------------------- driver
def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def device_tag(name: str) -> str:
    if name == "cpu":
        return "cpu"
    for gpu in BF16_PEAK_TFLOPS:
        if gpu in name:
            return gpu.lower()
    return name.lower().replace(" ", "_")


def official_batch(recipe: str, stage: str) -> int:
    from lsgm import recipes

    return recipes.official_run(recipe, stage).per_gpu_batch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--batch", type=int, default=None,
                   help="per-process batch (default: 1 on CPU, the official per-GPU batch on a GPU)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--timed", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--timeout", type=int, default=3600, help="seconds per part")
    p.add_argument("--out", default=None)
    p.add_argument("--merge", action="store_true",
                   help="add to the results file's other recipes/parts instead of replacing the file")
    p.add_argument("--one", nargs=3, metavar=("RECIPE", "PART", "WORKDIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:  # child process: one part, JSON on the last stdout line
        recipe, part, work = args.one
        record = run_part(recipe, part, args.batch, args.warmup, args.timed, Path(work))
        print(json.dumps(record))
        return 0

    name = device_name()
    tag = device_tag(name)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"paper_step_{tag}.json")
    results, steps, started = {}, {}, time.time()
    if args.merge and out.exists():  # keep the other recipes/parts of an earlier run of the same device
        earlier = json.loads(out.read_text())
        results, steps = earlier["results"], earlier["steps"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for recipe in args.recipes:
        results.setdefault(recipe, {})
        with tempfile.TemporaryDirectory() as work:
            for part in args.parts:
                stage = "stage1" if part == "stage1" else "stage2"
                batch = args.batch or (1 if tag == "cpu" else official_batch(recipe, stage))
                cmd = [sys.executable, __file__, "--one", recipe, part, work, "--batch", str(batch),
                       "--warmup", str(args.warmup), "--timed", str(args.timed)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                t0 = time.time()
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
                    if proc.returncode:
                        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else
                                           f"exit {proc.returncode}")
                    record = json.loads(proc.stdout.strip().splitlines()[-1])
                except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as err:
                    record = {"error": str(err)[-500:], "per_gpu_batch": batch}
                record.update(wall_seconds=time.time() - t0, load_average_1min=os.getloadavg()[0],
                              command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
                results[recipe][part] = record
                if part in ("stage1", "stage2") and "seconds_per_step" in record:
                    steps[f"{recipe}/{part}"] = {"seconds_per_step": record["seconds_per_step"],
                                                 "per_gpu_batch": batch}
                summary = (f"{record['seconds_per_step']:.2f} s/step" if "seconds_per_step" in record else
                           f"{record['seconds_per_batch']:.2f} s/batch, NFE {record['nfe']}"
                           if "seconds_per_batch" in record else f"ERROR {record['error'][:200]}")
                print(f"{recipe:17s} {part:7s} batch {batch}: {summary}", flush=True)
                write(out, name, tag, results, steps, args, started)  # after every part: a kill loses one part
    print(f"wrote {out}")
    return 0


def write(out: Path, name: str, tag: str, results: dict, steps: dict, args: argparse.Namespace,
          started: float) -> None:
    from lsgm.io import atomic_write_json, provenance

    doc = {
        "benchmark": "paper_step", "device": name, "results": results, "steps": steps,
        "settings": {"recipes": args.recipes, "parts": args.parts, "batch": args.batch or "default",
                     "warmup": args.warmup, "timed": args.timed, "torch_threads": args.threads or torch.get_num_threads(),
                     "amp": "bf16 autocast" if tag != "cpu" else "off (CPU)", "data": "random images on the grid",
                     "weights": "fresh initialisation (ODE NFEs are an untrained prior's)",
                     "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                     "load_average_1_5_15min_at_end": os.getloadavg()},
        "provenance": provenance(torch.device("cuda" if tag != "cpu" else "cpu"), wall_seconds=time.time() - started),
    }
    if tag in {g.lower() for g in BF16_PEAK_TFLOPS}:
        doc["bf16_peak_tflops"] = BF16_PEAK_TFLOPS[tag.upper()]
    atomic_write_json(out, doc)


if __name__ == "__main__":
    sys.exit(main())

"""Latent vs pixel-space sampling cost, side by side in one process (Figure 4's "4.15 s vs 45 min / 3.9 min").

For every ODE tolerance the LSGM (probability-flow ODE in latent space + decoder) and the pixel-space SGM
(probability-flow ODE on pixels) sample the same number of batches, alternating batch by batch so that
machine load affects both alike; the pixel SGM's predictor-corrector sampler runs at each step count.
One warm-up batch per sampler/setting is excluded. Output: NFE and seconds per batch of each, and the
ratios pixel / latent, with provenance, in ``benchmarks/results/sampling_cost.json``.

    python benchmarks/sampling_cost.py [--lsgm results/quick/runs/digits/lsgm/celeba-s0/model.pt]
        [--sgm results/quick/runs/digits/sgm/celeba-s0/model.pt] [--tolerances 1e-5 1e-4 1e-3 1e-2]
        [--pc-steps 100 1000] [--batch-size 16] [--n-batches 5] [--train-missing DIR]

``--train-missing DIR`` trains small digits models with the training CLIs into DIR when a model file is
absent (a stand-in for the workflow's quick-scale models; the output records which models were used).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from lsgm.config import RunConfig, apply_overrides, save_run_config
from lsgm.eval.cli import COST_TOLERANCES, ODE_SOLVER, ODE_T_EPS, PC_SNR
from lsgm.eval.common import load_run, resolve_device
from lsgm.eval.generate import Sampling, sample_batch
from lsgm.io import atomic_write_json, provenance

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LSGM = "results/quick/runs/digits/lsgm/celeba-s0/model.pt"
DEFAULT_SGM = "results/quick/runs/digits/sgm/celeba-s0/model.pt"
OUT = ROOT / "benchmarks" / "results" / "sampling_cost.json"

# Stand-in quick models (only with --train-missing): the celeba recipes' SDE/objective on digits.
_SDE = ["sde.type=vpsde", "sde.t_eps=0.01"]
STANDIN = {
    "vae": ["train.steps=600", "train.global_batch=64", "train.log_every=100", "train.val_batches=2"],
    "lsgm": [*_SDE, "objective.weighting=re", "objective.sampling=is", "objective.q_objective=ll_is",
             "objective.mode=disjoint", "objective.mixing_logit_init=-6.0", "train.steps=300", "train.global_batch=64",
             "train.log_every=100", "train.val_batches=2", "train.ema_decay=0.99"],
    # the original SGM's family (score_sde's VE recipe, lsgm/recipes/score_sde.yaml) at the quick scale's size
    "sgm": ["sde.type=vesde", "sde.sigma_min=0.01", "sde.sigma_max=4.8", "sde.t_eps=1e-5", "objective.weighting=un",
            "objective.sampling=uniform", "objective.mixed_score=false", "data.centered=false",
            "score.condition=log_sigma", "score.embedding_type=fourier", "score.embedding_scale=16.0",
            "train.steps=600", "train.global_batch=64", "train.log_every=100", "train.val_batches=2",
            "train.ema_decay=0.99", "train.grad_clip=1.0", "train.score_optim.name=adam", "train.score_optim.lr=0.0002",
            "train.score_optim.lr_min=0.0002", "train.score_optim.eps=1e-8", "train.score_optim.weight_decay=0.0"],
}


def train_standins(folder: Path) -> tuple[Path, Path]:
    """Train VAE -> LSGM and the pixel SGM on digits with the CLIs (a few minutes on 2 CPU cores)."""
    from lsgm.train import lsgm as train_lsgm
    from lsgm.train import sgm as train_sgm
    from lsgm.train import vae as train_vae

    paths = {k: folder / k / "model.pt" for k in STANDIN}
    for kind, trainer, extra in (("vae", train_vae, []), ("lsgm", train_lsgm, ["--vae", str(paths["vae"])]),
                                 ("sgm", train_sgm, [])):
        if paths[kind].exists():
            continue
        cfg_path = folder / f"{kind}.yaml"
        save_run_config(apply_overrides(RunConfig(kind=kind, name=f"standin-{kind}"), STANDIN[kind]), cfg_path)
        if trainer.main(["--config", str(cfg_path), "--out", str(paths[kind].parent), *extra]) != 0:
            raise SystemExit(f"training the stand-in {kind} failed")
    return paths["lsgm"], paths["sgm"]


def _summary(batches: list) -> dict:
    nfe = np.array([b.nfe for b in batches], dtype=float)
    sec = np.array([b.seconds for b in batches])
    solve = np.array([b.sampler_seconds for b in batches])
    return {"nfe_mean": float(nfe.mean()), "nfe_std": float(nfe.std()), "seconds_per_batch": float(sec.mean()),
            "seconds_std": float(sec.std()), "solve_seconds_per_batch": float(solve.mean()),
            "n_batches": len(batches)}


def measure(runs: dict, *, sampling: Sampling, batch_size: int, n_batches: int, seed: int, device) -> dict:
    """Alternate one batch of each run (warm-up batch first, excluded): {name: summary}."""
    records = {name: [] for name in runs}
    for b in range(n_batches + 1):
        for name, run in runs.items():
            batch = sample_batch(run, b * batch_size, batch_size, seed=seed, sampling=sampling, device=device)
            if b > 0:
                records[name].append(batch)
    return {name: _summary(batches) for name, batches in records.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lsgm", default=DEFAULT_LSGM)
    p.add_argument("--sgm", default=DEFAULT_SGM)
    p.add_argument("--tolerances", type=float, nargs="+", default=COST_TOLERANCES)
    p.add_argument("--pc-steps", type=int, nargs="*", default=[100, 1000])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-batches", type=int, default=5)
    p.add_argument("--t-eps", type=float, default=ODE_T_EPS)
    p.add_argument("--snr", type=float, default=PC_SNR, help="PC corrector snr (score_sde CelebA-HQ-256: 0.075)")
    p.add_argument("--solver", default=ODE_SOLVER)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--train-missing", metavar="DIR", help="train stand-in models here if a model file is absent")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)

    started = time.perf_counter()
    lsgm_path, sgm_path = Path(args.lsgm), Path(args.sgm)
    if not (lsgm_path.exists() and sgm_path.exists()):
        if not args.train_missing:
            print(f"sampling_cost: missing {lsgm_path if not lsgm_path.exists() else sgm_path}; run the quick "
                  f"workflow (snakemake --cores all) or pass --train-missing DIR", file=sys.stderr)
            return 2
        lsgm_path, sgm_path = train_standins(Path(args.train_missing))
    device = resolve_device(args.device)
    runs = {"lsgm": load_run(lsgm_path, device=device), "sgm": load_run(sgm_path, device=device)}
    diverged = [f"{name}: {run.reason}" for name, run in runs.items() if run.diverged]
    if diverged:
        atomic_write_json(Path(args.out), {"benchmark": "sampling_cost", "status": "diverged",
                                           "reason": "; ".join(diverged), "ode": [], "pc": [],
                                           "provenance": provenance(device)})
        print(f"sampling_cost: diverged model(s): {'; '.join(diverged)}", file=sys.stderr)
        return 0
    common = dict(batch_size=args.batch_size, n_batches=args.n_batches, seed=args.seed, device=device)
    rows = []
    for tol in args.tolerances:
        ode = Sampling(sampler="ode", tolerance=tol, solver=args.solver, t_eps=args.t_eps, temperature=1.0,
                       vae_temperature=1.0, pc_steps=None, snr=None)
        res = measure(runs, sampling=ode, **common)
        rows.append({"tolerance": tol, "lsgm_ode": res["lsgm"], "sgm_ode": res["sgm"],
                     "nfe_ratio_sgm_over_lsgm": res["sgm"]["nfe_mean"] / res["lsgm"]["nfe_mean"],
                     "time_ratio_sgm_over_lsgm": res["sgm"]["seconds_per_batch"] / res["lsgm"]["seconds_per_batch"]})
        print(f"tol {tol:g}: LSGM NFE {res['lsgm']['nfe_mean']:.1f} {res['lsgm']['seconds_per_batch']:.3f}s | "
              f"SGM NFE {res['sgm']['nfe_mean']:.1f} {res['sgm']['seconds_per_batch']:.3f}s", flush=True)
    pc_rows = []
    for steps in args.pc_steps:
        pc = Sampling(sampler="pc", tolerance=None, solver=args.solver, t_eps=args.t_eps, temperature=1.0,
                      vae_temperature=1.0, pc_steps=steps, snr=args.snr)
        res = measure({"sgm": runs["sgm"]}, sampling=pc, **common)["sgm"]
        pc_rows.append({"n_steps": steps, "sgm_pc": res,
                        "vs_lsgm_ode": {r["tolerance"]: {"nfe_ratio": res["nfe_mean"] / r["lsgm_ode"]["nfe_mean"],
                                                         "time_ratio": res["seconds_per_batch"]
                                                         / r["lsgm_ode"]["seconds_per_batch"]} for r in rows}})
        print(f"PC {steps} steps: NFE {res['nfe_mean']:.0f} {res['seconds_per_batch']:.3f}s", flush=True)
    record = {
        "benchmark": "sampling_cost",
        "status": "ok",
        "models": {name: {"path": str(run.path), "step": run.step, "ema": run.ema, "status": run.status,
                          "config": run.config_dict} for name, run in runs.items()},
        "settings": {"tolerances": args.tolerances, "pc_steps": args.pc_steps, "batch_size": args.batch_size,
                     "n_batches": args.n_batches, "warmup_batches": 1, "t_eps": args.t_eps, "solver": args.solver,
                     "snr": args.snr, "n_corrector": 1, "seed": args.seed,
                     "timing": "whole batch (noise, solve, LSGM decode), device synchronised; LSGM and SGM batches "
                               "alternate so load affects both alike"},
        "ode": rows, "pc": pc_rows,
        "provenance": provenance(device, wall_seconds=time.perf_counter() - started,
                                 argv=sys.argv[1:] if argv is None else argv),
    }
    atomic_write_json(Path(args.out), record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

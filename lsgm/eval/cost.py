"""Sampling cost: NFE, seconds per batch and FD/FID per ODE tolerance (and per PC step count).

For every tolerance (and, for the pixel-space SGM, every predictor-corrector step count) the sampler runs
``n_batches`` timed batches of ``batch_size`` (16, as Table 9 / Figure 4); ONE warm-up batch per evaluation, at its
first setting, is excluded from NFE and time (the same network and batch shape at every setting: a warm-up per
setting only repeated it, and cost a 1000-step PC solve); the FD/FID at that setting is computed on ``fd_samples`` further samples with
the same per-sample seeding as ``lsgm evaluate fid``. Seconds cover the whole batch (noise, solve, VAE
decode, device synchronised) and the solve alone. The device is named in the provenance; timings are only
comparable on the same device.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from lsgm.eval.common import SEED_RULE, EvalError, LoadedRun, evaluation_seed, load_run, metrics_record, resolve_device, set_bn_mode
from lsgm.eval.features import Extractor
from lsgm.eval.fid import sample_features
from lsgm.eval.frechet import FD_BOOTSTRAP_DRAWS, fd_standard_error, feature_statistics, frechet_distance
from lsgm.eval.reference import check_stats, extractor_for_stats, load_stats
from lsgm.eval.generate import Sampling, sample_batch

ROW_KEYS = ("sampler", "tolerance", "n_steps", "nfe_mean", "nfe_std", "nfe_stderr", "seconds_per_batch",
            "seconds_std", "seconds_stderr", "solve_seconds_per_batch", "batch_size", "n_batches", "fd_name", "fd", "fd_stderr", "fd_n_samples")


def time_sampler(run: LoadedRun, *, sampling: Sampling, batch_size: int, n_batches: int, seed: int,
                 device: torch.device, warmup: bool = True) -> dict:
    """NFE and seconds of ``n_batches`` batches (samples ``batch_size``.. of ``seed``), after a warm-up batch (samples
    0..; excluded) if ``warmup``."""
    if warmup:
        sample_batch(run, 0, batch_size, seed=seed, sampling=sampling, device=device)
    batches = [sample_batch(run, b * batch_size, batch_size, seed=seed, sampling=sampling, device=device)
               for b in range(1, n_batches + 1)]
    nfe = np.array([b.nfe for b in batches], dtype=float)
    sec = np.array([b.seconds for b in batches])
    solve = np.array([b.sampler_seconds for b in batches])
    n = len(batches)
    return {"nfe_mean": float(nfe.mean()), "nfe_std": float(nfe.std()),
            "nfe_stderr": float(nfe.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
            "seconds_per_batch": float(sec.mean()), "seconds_std": float(sec.std()),
            "seconds_stderr": float(sec.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
            "solve_seconds_per_batch": float(solve.mean()),
            "batch_size": batch_size, "n_batches": n_batches}


def cost_row(run: LoadedRun, extractor: Extractor | None, ref: dict | None, *, sampling: Sampling, batch_size: int,
             n_batches: int, fd_samples: int, fd_batch_size: int, seed: int, device: torch.device,
             warmup: bool = True) -> dict:
    """One row of the cost table: the setting ``sampling`` (an ODE tolerance or a PC step count), NaN-filled
    where sampling fails."""
    row = {"sampler": sampling.sampler, "tolerance": sampling.tolerance, "n_steps": sampling.pc_steps,
           "fd_name": extractor.metric_name if extractor else None, "fd_n_samples": fd_samples}
    try:
        row.update(time_sampler(run, sampling=sampling, batch_size=batch_size, n_batches=n_batches, seed=seed,
                                device=device, warmup=warmup))
        if extractor is not None and fd_samples > 1:
            feats, _ = sample_features(run, extractor, fd_samples, fd_batch_size, seed=seed, sampling=sampling,
                                       device=device)
            row["fd"] = frechet_distance(feature_statistics(feats), ref)
            row["fd_stderr"] = fd_standard_error(feats, ref, seed=seed)
        else:
            row["fd"] = row["fd_stderr"] = None
    except (FloatingPointError, AssertionError) as err:  # NaN samples / solver underflow: a NaN row
        failed = ("nfe_mean", "nfe_std", "nfe_stderr", "seconds_per_batch", "seconds_std", "seconds_stderr",
                  "solve_seconds_per_batch", "fd", "fd_stderr")
        row.update({k: math.nan for k in failed}, error=str(err).splitlines()[0])
        row.setdefault("batch_size", batch_size)
        row.setdefault("n_batches", n_batches)
    return {k: row.get(k) for k in ROW_KEYS} | ({"error": row["error"]} if "error" in row else {})


def evaluate_cost(model: str, stats: str | None, *, tolerances: list[float], batch_size: int, n_batches: int,
                  fd_samples: int, fd_batch_size: int, pc_steps: list[int] | None, samplers: list[str] | None,
                  solver: str, t_eps: float, temperature: float, vae_temperature: float, snr: float, seed: int,
                  bn_mode: str, use_ema: bool, classifier: str | None, inception_weights: str | None,
                  device: str | None) -> dict:
    """``lsgm evaluate cost``: rows per tolerance (ODE) and per step count (PC, pixel SGM). ``samplers`` None:
    ODE and PC for a pixel SGM, the ODE otherwise; ``pc_steps`` None: 1000 where PC runs. ``stats``: needed for the
    FD at each setting (``fd_samples`` > 1), else unused."""
    if fd_samples > 1 and not stats:
        raise EvalError("--stats FILE.pt is required for the FD at each setting (or pass --fd-samples 0)")
    stats_path = stats if fd_samples > 1 else None
    started = time.perf_counter()
    dev = resolve_device(device)
    run = load_run(model, use_ema=use_ema, device=dev)
    extractor = ref = stats = None
    if stats_path is not None:
        stats = load_stats(stats_path)
        extractor = extractor_for_stats(stats, classifier, inception_weights, dev)
        check_stats(stats, extractor, run.cfg.data.name, stats_path)
        ref = {"mu": stats["mu"].numpy(), "sigma": stats["sigma"].numpy()}
    samplers = samplers or (["ode", "pc"] if run.kind == "sgm" else ["ode"])
    pc_steps = pc_steps if pc_steps is not None else ([1000] if "pc" in samplers else [])
    plan = [("ode", tol, None) for tol in tolerances] if "ode" in samplers else []
    plan += [("pc", None, steps) for steps in pc_steps] if ("pc" in samplers and run.kind == "sgm") else []
    settings = {
        "tolerances": tolerances, "pc_steps": pc_steps if run.kind == "sgm" else [], "samplers": samplers,
        "solver": solver, "t_eps": t_eps, "temperature": temperature, "vae_temperature": vae_temperature,
        "snr": snr, "n_corrector": 1,
        "batch_size": batch_size, "n_batches": n_batches, "warmup_batches": 1,
        "warmup": "one batch per evaluation, at its first setting", "fd_samples": fd_samples,
        "fd_batch_size": fd_batch_size, "seed": seed, "eval_seed": evaluation_seed(seed, run.cfg.name, "cost"),
        "seed_rule": SEED_RULE, "bn_mode": bn_mode,
        "fd_stderr": f"bootstrap over the fd_samples generated features ({FD_BOOTSTRAP_DRAWS} resamples, reference "
                     "statistics fixed)",
        "timing": "seconds per batch of batch_size: noise + solve + decode, device synchronised, warm-up excluded",
        "nfe": "score evaluations per batch solve, incl. rejected steps and initial step selection",
        "stderr": "nfe_stderr, seconds_stderr: over the n_batches timed batches; fd_stderr: bootstrap",
        "feature_extractor": extractor.describe() if extractor else None,
        "reference": None if stats is None else {"path": str(stats_path), "name": stats["name"], "n": stats["n"]},
    }
    if run.kind == "vae":
        plan = [("vae", None, None)]
    if run.diverged:
        rows = [{k: None for k in ROW_KEYS} | {"sampler": s, "tolerance": t, "n_steps": n, "nfe_mean": math.nan,
                                                "fd": math.nan, "seconds_per_batch": math.nan} for s, t, n in plan]
        return metrics_record("cost", run, {"rows": rows}, settings, device=dev, started=started)
    set_bn_mode(run.vae, bn_mode)
    rows = [cost_row(run, extractor, ref, batch_size=batch_size, n_batches=n_batches, fd_samples=fd_samples,
                     fd_batch_size=fd_batch_size, seed=settings["eval_seed"], device=dev, warmup=i == 0,
                     sampling=Sampling(sampler=s, tolerance=t, solver=solver, t_eps=t_eps, temperature=temperature,
                                       vae_temperature=vae_temperature, pc_steps=n, snr=snr))
            for i, (s, t, n) in enumerate(plan)]
    failed = [r for r in rows if "error" in r]
    status, reason = ("ok", None) if not failed else ("ok", f"{len(failed)} setting(s) failed: {failed[0]['error']}")
    return metrics_record("cost", run, {"rows": rows}, settings, status=status, reason=reason, device=dev,
                          started=started)

"""FID / FD of generated samples (``lsgm evaluate fid``): the samples' features against reference statistics
(:mod:`lsgm.eval.reference`), the distance and its bootstrap standard error (:mod:`lsgm.eval.frechet`).

Protocol (reference doc section 6.2, with the official flaws fixed):
- samples: :mod:`lsgm.eval.generate` (one generator per sample index, so the set of samples does not
  depend on the batch size), quantised to uint8 (round(255 x), clamped) before the features.
- features: :mod:`lsgm.eval.features` (Inception-v3 pool3 at paper scale, the offline classifier
  otherwise; the metric is then named ``fd_<dataset>``, never ``fid``).
- statistics: pooled over ALL samples (the official code averages per-GPU covariances), Fréchet distance
  by torch-fidelity's ``fid_statistics_to_metric``; reference statistics once per dataset as the official
  ``scripts/precompute_fid_statistics.py`` computes them (:data:`lsgm.datasets_info.FID_REFERENCE`: CIFAR-10 and
  MNIST the training split, CelebA-HQ-256 and OMNIGLOT train + validation, all at the files' 8 bits, binary data as
  grey levels, at most 50,000 images), the specification in the file's name and metadata, validated on load.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from lsgm.eval.common import (
    SEED_RULE,
    EvalError,
    LoadedRun,
    evaluation_seed,
    metrics_record,
    quantize_uint8,
    resolve_device,
    set_bn_mode,
    to_rgb,
)
from lsgm.eval.features import Extractor
from lsgm.eval.frechet import (
    FD_BOOTSTRAP_DRAWS,
    fd_standard_error,
    feature_statistics,
    frechet_distance,
    per_process_statistics,
)
from lsgm.eval.generate import SampleBatch, Sampling, make_sampling, matched_scale, sample_batch, sampling_settings
from lsgm.eval.reference import check_stats, extractor_for_stats, load_stats


def sample_features(run: LoadedRun, extractor: Extractor, n_samples: int, batch_size: int, *, seed: int,
                    sampling: Sampling, device: torch.device) -> tuple[torch.Tensor, list[SampleBatch]]:
    """Features [n_samples, D] of the uint8-quantised samples 0 .. n_samples - 1 of ``seed``, and the batch
    records (images dropped)."""
    feats, batches = [], []
    for start in range(0, n_samples, batch_size):
        batch = sample_batch(run, start, min(batch_size, n_samples - start), seed=seed, sampling=sampling,
                             device=device)
        if not torch.isfinite(batch.images).all():
            raise FloatingPointError(f"non-finite samples in batch starting at {start}")
        feats.append(extractor(to_rgb(quantize_uint8(batch.images))))
        batch.images = batch.images[:0]
        batches.append(batch)
    return torch.cat(feats), batches


# --------------------------------------------------------------------------------------------------
# `lsgm evaluate fid`
# --------------------------------------------------------------------------------------------------


def evaluate_fid(model: str, stats: str | None, *, n_samples: int, tolerance: float, sampler: str,
                 pc_steps: int | None, snr: float, solver: str, batch_size: int, temperature: float,
                 vae_temperature: float, seed: int, bn_mode: str, t_eps: float, use_ema: bool,
                 classifier: str | None, inception_weights: str | None, device: str | None,
                 latent: str = "prior", official_processes: int | None = None) -> dict:
    """FID (Inception) or FD (classifier features) of ``n_samples`` samples against ``stats_path``: ODE samples, or
    for the pixel SGM (``sampler='pc'``) predictor-corrector samples with ``pc_steps`` steps, as the original SGM's
    published FIDs were measured. ``latent='matched_normal'``: an LSGM's decoder with its score prior replaced by the
    Normal its mixed score is at initialisation (the sample-quality control; a record of kind ``fid_normal``)."""
    from lsgm.eval.common import load_run

    if not stats:
        raise EvalError("--stats FILE.pt is required (lsgm fid-stats --dataset NAME --features ... --out FILE.pt)")
    stats_path = stats
    started = time.perf_counter()
    dev = resolve_device(device)
    run = load_run(model, use_ema=use_ema, device=dev)
    stats = load_stats(stats_path)
    extractor = extractor_for_stats(stats, classifier, inception_weights, dev)
    check_stats(stats, extractor, run.cfg.data.name, stats_path)
    sampling = make_sampling(run.kind, sampler=sampler, tolerance=tolerance, pc_steps=pc_steps, snr=snr,
                             solver=solver, t_eps=t_eps, temperature=temperature, vae_temperature=vae_temperature,
                             latent=latent)
    kind = "fid_normal" if latent == "matched_normal" else "fid"
    settings = {
        **sampling_settings(run.kind, sampling), "n_samples": n_samples, "batch_size": batch_size,
        "bn_mode": bn_mode, "seed": seed, "eval_seed": evaluation_seed(seed, run.cfg.name, kind), "seed_rule": SEED_RULE,
        "seeding": "per-sample generator seeded by (eval_seed, sample index)", "decoder": "mean",
        "quantization": "uint8 round(255 x)", "feature_extractor": extractor.describe(),
        "reference": {"path": str(stats_path), "name": stats["name"], "dataset": stats["dataset"],
                      "split": stats["split"], "n": stats["n"], **stats["reference"]},
        "statistics": "pooled mean/covariance over all samples; torch-fidelity fid_statistics_to_metric",
        "torch_fidelity_extractor": extractor.name,
    }
    name = extractor.metric_name
    metrics = {name: math.nan, f"{name}_stderr": math.nan, "nfe_mean": math.nan}
    settings["stderr"] = (f"{name}_stderr: bootstrap over the n_samples generated features ({FD_BOOTSTRAP_DRAWS} "
                          "resamples, the reference statistics fixed): the Monte Carlo error of the samples drawn")
    if run.diverged:
        return metrics_record(kind, run, metrics, settings, device=dev, started=started)
    if latent == "matched_normal":
        tau = matched_scale(run, t_eps).flatten()
        settings["latent_scale"] = {"tau": [round(float(v), 6) for v in tau], "mean": float(tau.mean()),
                                    "rule": "tau = (m(t_eps) / m(1))^alpha_0 per channel, alpha_0 = sigmoid(objective."
                                            "mixing_logit_init) (0 on inactive channels): the mixed score with eps' = 0",
                                    "mixing_logit_init": run.cfg.objective.mixing_logit_init}
    set_bn_mode(run.vae, bn_mode)
    try:
        feats, batches = sample_features(run, extractor, n_samples, batch_size, seed=settings["eval_seed"],
                                         sampling=sampling, device=dev)
    except (FloatingPointError, AssertionError) as err:  # NaN samples / solver underflow: not a crash
        return metrics_record(kind, run, metrics, settings, status="diverged", reason=f"sampling failed: {err}",
                              device=dev, started=started)
    ref = {"mu": stats["mu"].numpy(), "sigma": stats["sigma"].numpy()}
    metrics[name] = frechet_distance(feature_statistics(feats), ref)
    metrics[f"{name}_stderr"] = fd_standard_error(feats, ref, seed=settings["eval_seed"])
    if official_processes:  # the same samples, the official per-process covariances (docs/official_checkpoints.md)
        settings["official_processes"] = official_processes
        try:
            metrics[f"official_{name}"] = frechet_distance(per_process_statistics(feats, official_processes), ref)
        except EvalError as err:
            metrics[f"official_{name}"] = math.nan
            settings["official_note"] = str(err)
    nfe = np.array([b.nfe for b in batches], dtype=float)
    metrics["nfe_mean"] = float(nfe.mean())
    metrics["nfe_stderr"] = float(nfe.std(ddof=1) / math.sqrt(nfe.size)) if nfe.size > 1 else math.nan
    return metrics_record(kind, run, metrics, settings, device=dev, started=started)

"""Sample generation for evaluation: per-sample seeded noise -> sampler -> decoder, timed.

Sample k draws its initial noise (and lower-scale VAE noise) from its own generator seeded by (seed, k),
so the SET of samples does not depend on the batch size. LSGM: z_1 -> probability-flow ODE (or PC)
-> ``vae.decode`` (decoder mean); VAE: decoder mean of z_0 ~ N(0, T^2 I); pixel SGM: the ODE in pixel
space mapped to [0, 1]. The adaptive ODE solve of one batch is one system (its step sizes depend on the
whole batch, as in the official code), so final samples agree across batch sizes to the solver tolerance,
their noise exactly. Used by FID/FD, cost evaluation and the benchmarks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lsgm.eval.common import (
    EvalError,
    LoadedRun,
    per_sample_normal,
    sample_generators,
    sample_seed,
)
from lsgm.utils import synchronize


@dataclass(frozen=True)
class Sampling:
    """How evaluation samples are drawn: settings recorded beside every metric. No defaults here: the options of
    ``lsgm evaluate`` hold them, and config.yaml sets each one for the DAG."""

    sampler: str  # "ode" (probability-flow ODE) | "pc" (predictor-corrector; pixel SGM)
    tolerance: float | None  # ODE rtol = atol (None for PC)
    solver: str  # torchdiffeq method of the ODE
    t_eps: float  # the sampler's end time
    temperature: float  # scale of the top latent's starting noise (LSGM z_1; VAE z_0), official --temp
    vae_temperature: float  # scale of the decoder's lower-scale groups, official --vae_temp
    pc_steps: int | None  # PC steps (None for the ODE)
    snr: float | None  # PC corrector signal-to-noise ratio (None for the ODE)
    latent: str = "prior"  # LSGM: "prior" (its score prior) | "matched_normal" (N(0, tau^2 I), the initial prior)


def make_sampling(kind: str, *, sampler: str, tolerance: float, pc_steps: int | None, snr: float, solver: str,
                  t_eps: float, temperature: float, vae_temperature: float, latent: str = "prior") -> Sampling:
    """The :class:`Sampling` of one sampler's command-line settings for a ``kind`` run (``lsgm evaluate fid`` and
    ``samples``): PC is the pixel SGM's sampler and needs its step count; the ODE's tolerance is dropped under PC,
    PC's steps and snr under the ODE."""
    if sampler == "pc" and kind != "sgm":
        raise EvalError(f"--sampler pc is the pixel SGM's sampler; this is a {kind} run (use --sampler ode)")
    if sampler == "pc" and not pc_steps:
        raise EvalError("--sampler pc needs --pc-steps N (the original SGM: its num_scales, e.g. 2000)")
    if latent != "prior" and kind != "lsgm":
        raise EvalError(f"--latent {latent} replaces an LSGM's score prior; this is a {kind} run (drop --latent)")
    pc = sampler == "pc"
    return Sampling(sampler=sampler, tolerance=None if pc else tolerance, solver=solver, t_eps=t_eps,
                    temperature=temperature, vae_temperature=vae_temperature, pc_steps=pc_steps if pc else None,
                    snr=snr if pc else None, latent=latent)


def sampling_settings(kind: str, s: Sampling) -> dict:
    """``s`` as a metrics file records it: ``None`` where a ``kind`` run does not use a setting (the VAE has no
    sampler, the pixel SGM no temperatures)."""
    pc, vae, sgm = s.sampler == "pc", kind == "vae", kind == "sgm"
    if s.latent == "matched_normal":  # no sampler: z_0 ~ N(0, tau^2 I), then the decoder
        return {"sampler": None, "pc_steps": None, "snr": None, "n_corrector": None, "tolerance": None, "solver": None,
                "latent": s.latent, "t_eps": s.t_eps, "temperature": s.temperature,
                "vae_temperature": s.vae_temperature}
    return {"sampler": None if vae else s.sampler, "pc_steps": s.pc_steps, "snr": s.snr, "n_corrector": 1 if pc else None,
            "tolerance": None if vae else s.tolerance, "solver": None if vae else s.solver,
            "t_eps": None if vae else s.t_eps, "temperature": None if sgm else s.temperature,
            "vae_temperature": None if sgm else s.vae_temperature}


def matched_scale(run: LoadedRun, t_eps: float) -> torch.Tensor:
    """tau [1, C, 1, ...] of an LSGM run: the latent scale of its mixed score at initialisation
    (:func:`lsgm.score.initial_latent_scale` at its initial mixing logit, alpha 0 on inactive channels)."""
    from lsgm.score import initial_latent_scale

    score = run.score
    alpha0 = torch.sigmoid(torch.tensor(run.cfg.objective.mixing_logit_init, dtype=torch.float64)) \
        * score.active.to(torch.float64).cpu()
    if not run.cfg.objective.mixed_score:
        raise EvalError(f"{run.path}: --latent matched_normal needs the mixed score (objective.mixed_score)")
    try:
        tau = initial_latent_scale(alpha0, run.sde, t_eps)
    except ValueError as err:
        raise EvalError(f"{run.path}: --latent matched_normal: {err}") from None
    return tau.reshape((1, -1) + (1,) * (len(run.vae.latent_shape) - 1)).float()


@dataclass
class SampleBatch:
    images: torch.Tensor  # [B, C, H, W] float in [0, 1]
    nfe: int  # score evaluations of this batch's solve (0 for the VAE)
    sampler_seconds: float  # ODE / PC solve only
    seconds: float  # whole batch: noise, solve, decode (device synchronised)


def _decode(vae, z0: torch.Tensor, temperature: float, generators: list[torch.Generator]) -> torch.Tensor:
    """Decoder mean of z0 [B, ...]; lower-scale groups ~ N(0, temperature^2 I) (the official ``--vae_temp``),
    each sample's lower noise from its generator (decoded one by one in eval mode; BN train mode needs the
    batch, so there the noise is per batch)."""
    has_lower = vae.n_groups > vae.cfg.num_groups_per_scale
    if not has_lower:
        return vae.decode(z0, temperature=temperature)
    if vae.training:
        return vae.decode(z0, temperature=temperature, generator=generators[0])
    return torch.cat([vae.decode(z0[i : i + 1], temperature=temperature, generator=g)
                      for i, g in enumerate(generators)])


@torch.no_grad()
def sample_batch(run: LoadedRun, start: int, count: int, *, seed: int, sampling: Sampling,
                 device: torch.device | str) -> SampleBatch:
    """Samples ``start .. start + count - 1`` of an evaluation seeded ``seed`` (images in [0, 1]), drawn as
    ``sampling`` says (the VAE: its decoder only)."""
    from lsgm.diffusion.sampling import SampleResult, ode_sample, pc_sample
    from lsgm.score import to_unit

    s, device = sampling, torch.device(device)
    gens = sample_generators(seed, start, count, device="cpu")
    synchronize(device)
    begin = time.perf_counter()
    if run.kind == "vae":
        z0 = per_sample_normal(tuple(run.vae.latent_shape), gens, device, scale=s.temperature)
        images, nfe, solve = _decode(run.vae, z0, s.vae_temperature, gens), 0, 0.0
    else:
        shape = tuple(run.vae.latent_shape) if run.kind == "lsgm" else (
            run.data.channels, run.data.image_size, run.data.image_size)
        # the prior N(0, prior_var I): N(0, I) for VP-type SDEs, N(0, sigma_max^2 I) for the VESDE
        z1 = per_sample_normal(shape, gens, device,
                               scale=(s.temperature if run.kind == "lsgm" else 1.0) * run.sde.prior_std)
        if s.latent == "matched_normal":  # the LSGM's initial prior, N(0, tau^2 I): no score network
            res = SampleResult(z0=z1 * matched_scale(run, s.t_eps).to(device, z1.dtype), nfe=0, seconds=0.0)
        elif s.sampler == "ode":
            res = ode_sample(run.score, run.sde, z1.shape, s.t_eps, rtol=s.tolerance, atol=s.tolerance,
                             method=s.solver, z1=z1)
        else:
            # the PC sampler's Langevin/predictor noise is one stream per batch (its API takes one generator)
            pc_gen = torch.Generator(device=device)
            pc_gen.manual_seed(sample_seed(seed, start, stream=1))
            res = pc_sample(run.score, run.sde, z1.shape, s.pc_steps, s.t_eps, snr=s.snr, generator=pc_gen, z1=z1)
        nfe, solve = res.nfe, res.seconds
        images = _decode(run.vae, res.z0, s.vae_temperature, gens) if run.kind == "lsgm" else to_unit(res.z0, run.cfg.data.centered)
    synchronize(device)
    return SampleBatch(images.float().clamp(0, 1), nfe, solve, time.perf_counter() - begin)


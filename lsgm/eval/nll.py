"""NELBO and importance-weighted NLL with named terms (reference doc section 6.1, official flaws fixed).

For each test batch x and each of K importance samples k (one encoder draw each):

    NELBO_k = reconstruction + log q(z_0|x) + log q(z_lower|x)          (negative encoder entropy)
            + CE(z_0) + (-log N(z_lower; 0, I))                          (cross entropy)

with the prior term CE(z_0) = -log p(z_0) from
- ``ode``: the probability-flow ODE (``ode_log_likelihood``; Hutchinson probe drawn ONCE per solve, the
  batch solved as one system, its size recorded), averaged over M inner solves with their standard error;
- ``dsm``: Theorem 1's denoising bound with the likelihood-weighted importance sampler r_ll(t), averaged
  over ``t_draws`` time draws with the mixed score's Normal part as a control variate (its part of the integral
  is exact, the draws estimate the rest: ``prior_cross_entropy_cv``; unbiased, and its Monte Carlo error far
  smaller), plus ``truncation_term`` (-D log m(t_eps)): Theorem 1 gives the cross entropy of
  z_{t_eps}, and the term makes the NELBO with it an upper bound for every SDE and t_eps (zero where m(t_eps) = 1);
- the stage-1 VAE: its Normal prior, ``normal_cross_entropy``.

``nelbo_bound`` is the NELBO whose prior term is always the ``dsm`` bound (the training t_eps, ``t_draws`` time
draws): an upper bound on -log p(x) in expectation over the encoder, time and noise draws, unlike the ODE terms
(ODE error, Hutchinson noise); for a VAE it is its NELBO. An importance-weighted NLL (K > 1) with the ``dsm`` prior
term is refused: the noise of its time draws sits inside the logsumexp, which biases it low (below the bound it
estimates), so it would be neither a bound nor an estimate.

log p(x) ~= logsumexp_k(-NELBO_k) - log K. With K = 1 the NLL equals the NELBO (LSGM#13 is avoided by
returning named fields). Units: bits/dim over ``DatasetInfo.eval_dims`` for continuous data (CelebA-HQ-256
is 5-bit data, so its bpd are 5-bit bpd, as in the paper), nats for binary data. BN is in eval mode.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader

from lsgm.eval.settings import SETTINGS
from lsgm.eval.common import (
    SEED_RULE, EvalError, LoadedRun, evaluation_seed, load_run, metrics_record, resolve_device, sample_seed,
)
from lsgm.diffusion.likelihood import iw_nll, nats_to_bpd, ode_log_likelihood
from lsgm.diffusion.objectives import (
    nelbo_terms, normal_part_expectation, prior_cross_entropy, prior_cross_entropy_cv, truncation_term,
)
from lsgm.gaussian import normal_cross_entropy
from lsgm.diffusion.time_sampling import make_time_sampler


ODE_T_EPS = SETTINGS["fid"]["t_eps"].default  # the official --ode_eps 1e-5, shared with the samplers


@dataclass
class PriorSettings:
    """How the prior term is estimated (no defaults: ``lsgm evaluate nll``'s options hold them)."""

    prior: str  # "ode" | "dsm" | "normal"
    t_eps: float | None  # ODE end time / DSM lower time (None for the Normal prior)
    tolerance: float  # ODE rtol = atol
    solver: str  # torchdiffeq method
    probe: str  # Hutchinson probe: gaussian | rademacher
    inner: int  # M ODE solves per encoder sample
    t_draws: int  # DSM time draws per encoder sample


@dataclass
class PriorTerm:
    cross_entropy: torch.Tensor  # [B] -log p(z_0), mean over the M solves / t draws
    inner_sem: torch.Tensor | None  # [B] standard error of that mean over the M solves (ODE, M > 1)
    nfe: list[int] = field(default_factory=list)  # one per ODE solve
    mc_var: torch.Tensor | None = None  # [B] variance of the DSM mean from its t draws (Monte Carlo; None: not DSM)


def prior_term(run: LoadedRun, z0: torch.Tensor, ps: PriorSettings, gen: torch.Generator) -> PriorTerm:
    """-log p(z_0) [B] under the run's prior (see the module docstring)."""
    if ps.prior == "normal":
        return PriorTerm(normal_cross_entropy(z0), None)
    if ps.prior == "dsm":
        try:
            sampler = make_time_sampler("ll", "is", run.sde, ps.t_eps)
        except ValueError as err:
            raise EvalError(f"DSM prior term: {err} (pass --t-eps)") from err
        with torch.no_grad():
            if hasattr(run.score, "parts"):  # the Normal part as a control variate (dsm_estimator())
                expectation = normal_part_expectation(z0, run.score.normal_weight(), run.sde, ps.t_eps)
                draws = torch.stack([prior_cross_entropy_cv(z0, run.score, run.sde, sampler, expectation, generator=gen)
                                     for _ in range(ps.t_draws)])  # (T, B)
            else:
                draws = torch.stack([prior_cross_entropy(z0, run.score, run.sde, sampler, generator=gen).double()
                                     for _ in range(ps.t_draws)])
        truncation = truncation_term(run.sde, ps.t_eps, z0[0].numel())
        mc_var = draws.var(0, unbiased=True) / ps.t_draws if ps.t_draws > 1 else torch.full_like(draws[0], math.nan)
        return PriorTerm(draws.mean(0) + truncation, None, mc_var=mc_var)
    solves = [ode_log_likelihood(z0, run.score, run.sde, ps.t_eps, rtol=ps.tolerance, atol=ps.tolerance,
                                 probe=ps.probe, generator=gen, method=ps.solver) for _ in range(ps.inner)]
    ce = -torch.stack([s.logp for s in solves])  # (M, B)
    sem = ce.std(0, unbiased=True) / math.sqrt(ps.inner) if ps.inner > 1 else None
    return PriorTerm(ce.mean(0), sem, [s.nfe for s in solves])


@dataclass
class BatchTerms:
    """Per-sample terms of one batch in nats; [B] each (means over the K importance samples)."""

    nelbo: torch.Tensor
    nll: torch.Tensor
    nelbo_bound: torch.Tensor
    reconstruction: torch.Tensor
    neg_entropy: torch.Tensor
    prior_ce: torch.Tensor
    lower_ce: torch.Tensor
    inner_sem: torch.Tensor | None
    nfe: list[int]
    bound_mc_var: torch.Tensor | None = None  # [B] Monte Carlo variance of nelbo_bound's DSM term (its t draws)


def batch_terms(run: LoadedRun, x: torch.Tensor, ps: PriorSettings, iw_samples: int, seed: int,
                batch_index: int) -> BatchTerms:
    """NELBO terms and the IW NLL of one batch x [B, C, H, W]; encoder noise and probes are seeded by
    (seed, batch_index, k)."""
    terms = {name: [] for name in ("nelbo", "recon", "neg_ent", "prior", "lower", "sem", "bound", "mc")}
    nfe: list[int] = []
    for k in range(iw_samples):
        gen = torch.Generator(device=x.device)
        gen.manual_seed(sample_seed(seed, batch_index, stream=2 + k))
        with torch.no_grad():
            out = run.vae(x, generator=gen)
        prior = prior_term(run, out.z0, ps, gen)
        parts = nelbo_terms(out, prior.cross_entropy)
        bound, mc = parts.nelbo, prior.mc_var
        if ps.prior == "ode":  # the same encoder sample under the DSM bound (training t_eps)
            dsm = prior_term(run, out.z0, replace(ps, prior="dsm", t_eps=run.cfg.sde.t_eps), gen)
            bound, mc = nelbo_terms(out, dsm.cross_entropy).nelbo, dsm.mc_var
        values = {"nelbo": parts.nelbo, "recon": parts.reconstruction, "neg_ent": parts.neg_entropy,
                  "prior": parts.prior_cross_entropy, "lower": parts.lower_cross_entropy, "sem": prior.inner_sem,
                  "bound": bound, "mc": mc}
        for name, value in values.items():
            terms[name].append(value)
        nfe += prior.nfe
    stack = {k: torch.stack(v).detach().double().cpu() for k, v in terms.items() if v and v[0] is not None}
    sem = stack.get("sem")
    return BatchTerms(nelbo=stack["nelbo"].mean(0), nll=iw_nll(stack["nelbo"]), nelbo_bound=stack["bound"].mean(0),
                      reconstruction=stack["recon"].mean(0),
                      neg_entropy=stack["neg_ent"].mean(0), prior_ce=stack["prior"].mean(0),
                      lower_ce=stack["lower"].mean(0),
                      inner_sem=None if sem is None else sem.pow(2).mean(0).sqrt() / math.sqrt(iw_samples), nfe=nfe,
                      bound_mc_var=stack["mc"].sum(0) / iw_samples ** 2 if "mc" in stack else None)


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    return float(values.mean()), (float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan)


PER_EXAMPLE = ("nelbo", "nll", "nelbo_bound")  # kept per test example (paired differences between models)


def summarize(batches: list[BatchTerms], unit: str, dims: int) -> dict:
    """Dataset means (and standard errors over test examples: data and Monte Carlo error together) in ``unit``;
    ``nelbo_bound_mc_stderr``: the Monte Carlo part of its DSM term alone (the t draws), sqrt(sum_i var_i) / N."""
    conv = (lambda v: nats_to_bpd(v, dims)) if unit == "bpd" else (lambda v: v)
    cat = {name: conv(torch.cat([getattr(b, name) for b in batches]))
           for name in ("nelbo", "nll", "nelbo_bound", "reconstruction", "neg_entropy", "prior_ce", "lower_ce")}
    nelbo, nelbo_se = _mean_se(cat["nelbo"])
    nll, nll_se = _mean_se(cat["nll"])
    bound, bound_se = _mean_se(cat["nelbo_bound"])
    out = {"nelbo": nelbo, "nelbo_stderr": nelbo_se, "nll": nll, "nll_stderr": nll_se,
           "nelbo_bound": bound, "nelbo_bound_stderr": bound_se,
           "reconstruction": float(cat["reconstruction"].mean()), "neg_entropy": float(cat["neg_entropy"].mean()),
           "cross_entropy": float((cat["prior_ce"] + cat["lower_ce"]).mean()),
           "prior_cross_entropy": float(cat["prior_ce"].mean()), "lower_cross_entropy": float(cat["lower_ce"].mean()),
           "n_examples": int(cat["nll"].numel())}
    sems = [b.inner_sem for b in batches if b.inner_sem is not None]
    if sems:  # standard error of the dataset-mean cross entropy due to the M inner solves
        sem = conv(torch.cat(sems))
        out["ode_inner_stderr"] = float(sem.pow(2).sum().sqrt() / sem.numel())
    mc = [b.bound_mc_var for b in batches if b.bound_mc_var is not None]
    if mc:  # nats^2 -> unit: the conversion is linear
        var = torch.cat(mc)
        out["nelbo_bound_mc_stderr"] = float(conv(var.sum().sqrt()) / var.numel())
    nfe = [n for b in batches for n in b.nfe]
    if nfe:
        out["nfe_mean"], out["nfe_std"] = float(np.mean(nfe)), float(np.std(nfe))
        out["nfe_stderr"] = float(np.std(nfe, ddof=1) / math.sqrt(len(nfe))) if len(nfe) > 1 else math.nan
    return out


def per_example(batches: list[BatchTerms], unit: str, dims: int) -> dict[str, list[float]]:
    """The per-example values of :data:`PER_EXAMPLE` in ``unit``, in test-split order (the record's ``per_example``:
    two models evaluated on the same split are compared example by example)."""
    conv = (lambda v: nats_to_bpd(v, dims)) if unit == "bpd" else (lambda v: v)
    return {name: [float(f"{v:.7g}") for v in conv(torch.cat([getattr(b, name) for b in batches])).tolist()]
            for name in PER_EXAMPLE}  # 7 significant digits: far below any standard error, a third of the bytes


def _test_loader(run: LoadedRun, split: str, batch_size: int, root: str | None) -> DataLoader:
    from lsgm.data import DatasetError, get_dataset

    try:
        dataset = get_dataset(run.cfg.data.name, split, root=root or run.cfg.data.root, download=False, augment=False,
                              expected_size=run.cfg.data.split_size(split))
    except DatasetError as err:
        raise EvalError(str(err)) from err
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False)


def evaluate_nll(model: str, *, prior: str, iw_samples: int, inner: int, tolerance: float, t_eps: float | None,
                 probe: str, solver: str, batch_size: int, n_batches: int | None, seed: int, split: str,
                 use_ema: bool, t_draws: int, root: str | None, device: str | None) -> dict:
    """``lsgm evaluate nll``: the metrics record (see the module docstring). ``t_eps`` None: the ODE's default end time
    1e-5 (ODE prior), the training t_eps (DSM prior)."""
    started = time.perf_counter()
    dev = resolve_device(device)
    run = load_run(model, use_ema=use_ema, device=dev)
    if run.kind == "sgm":
        raise EvalError(f"{model} is a pixel-space SGM run; nll evaluates vae and lsgm runs")
    if iw_samples < 1 or inner < 1:
        raise EvalError("--iw-samples and --inner must be >= 1")
    kind = "normal" if run.kind == "vae" else prior
    if kind == "dsm" and iw_samples > 1:
        raise EvalError(f"--iw-samples {iw_samples} with --prior dsm: the DSM prior term's time-draw noise inside the "
                        "logsumexp biases the NLL low; use --iw-samples 1 (the NELBO) or --prior ode")
    if t_eps is None and kind == "dsm":
        t_eps = run.cfg.sde.t_eps
    if t_eps is None and kind == "ode":
        t_eps = ODE_T_EPS
    ps = PriorSettings(kind, t_eps=t_eps, tolerance=tolerance, solver=solver, probe=probe, inner=inner,
                       t_draws=t_draws)
    data = run.data
    settings = {
        "prior": kind, "iw_samples": iw_samples, "inner": inner if kind == "ode" else None,
        "tolerance": tolerance if kind == "ode" else None, "solver": solver if kind == "ode" else None,
        "probe": probe if kind == "ode" else None, "probe_per": "solve" if kind == "ode" else None,
        "t_eps": t_eps if kind in ("ode", "dsm") else None, "t_draws": t_draws if kind in ("ode", "dsm") else None,
        "dsm_sampler": "ll/is" if kind in ("ode", "dsm") else None,
        "dsm_estimator": dsm_estimator(run) if kind in ("ode", "dsm") else None, "batch_size": batch_size,
        "nelbo_bound": {"normal": "the NELBO (exact Normal prior)",
                        "dsm": "the NELBO (DSM prior term with the truncation term -D log m(t_eps))",
                        "ode": f"the NELBO with the DSM prior term (r_ll importance-sampled t in [training t_eps "
                               f"{run.cfg.sde.t_eps:g}, 1], {t_draws} draws per encoder sample, plus the "
                               f"truncation term -D log m(t_eps))"}[kind],
        "nelbo_bound_t_eps": None if kind == "normal" else (run.cfg.sde.t_eps if kind == "ode" else t_eps),
        "ode_system": "one ODE per batch (NFE depends on the batch size)" if kind == "ode" else None,
        "n_batches": n_batches, "split": split, "seed": seed, "eval_seed": evaluation_seed(seed, run.cfg.name, "nll"),
        "seed_rule": SEED_RULE + "; the dynamic binarization of the test data (binary data) draws from torch's "
                     "generator seeded by seed itself: every model is evaluated on the same test images",
        "bn_mode": "eval", "temperature": 1.0,
        "unit": data.unit, "eval_dims": data.eval_dims,
        "unit_note": _unit_note(data), "dynamic_binarization": data.binary,
    }
    metrics = {"nelbo": math.nan, "nll": math.nan, "nll_stderr": math.nan, "nelbo_bound": math.nan, "reconstruction": math.nan,
               "neg_entropy": math.nan, "cross_entropy": math.nan, "unit": data.unit, "prior": kind}
    if kind == "ode":
        metrics["nfe_mean"] = math.nan
    if run.diverged:
        return metrics_record("nll", run, metrics, settings, device=dev, started=started)
    run.vae.eval()
    if run.score is not None:
        run.score.eval()
        settings["truncation_nats"] = truncation_term(run.sde, settings["nelbo_bound_t_eps"],
                                                      math.prod(run.vae.latent_shape))
    torch.manual_seed(seed)  # dynamic binarization of the test data draws from torch's global generator
    batches = []
    try:
        for i, (x, _) in enumerate(_test_loader(run, split, batch_size, root)):
            if n_batches is not None and i >= n_batches:
                break
            batches.append(batch_terms(run, x.to(dev), ps, iw_samples, settings["eval_seed"], i))
    except AssertionError as err:  # torchdiffeq underflow / step budget: report, never crash
        return metrics_record("nll", run, metrics, settings, status="diverged", reason=f"ODE solve failed: {err}",
                              device=dev, started=started)
    metrics.update(summarize(batches, data.unit, data.eval_dims))
    settings["n_examples"] = metrics["n_examples"]
    status = "ok" if math.isfinite(metrics["nll"]) else "diverged"
    reason = None if status == "ok" else "non-finite NLL"
    record = metrics_record("nll", run, metrics, settings, status=status, reason=reason, device=dev, started=started)
    record["per_example"] = per_example(batches, data.unit, data.eval_dims)
    return record


def dsm_estimator(run: LoadedRun) -> str:
    """What the DSM prior term's draws estimate (recorded in the settings)."""
    if hasattr(run.score, "parts"):
        return ("control variate: the mixed score's Normal part (1 - alpha) mixing_component(z_t, t), its expectation "
                "over (t, eps) integrated exactly (Gauss-Legendre quadrature in t); the time draws estimate the rest")
    return "plain: weight_q ||eps - eps_theta||^2 per time draw"


def _unit_note(data) -> str:
    if data.unit == "nats":
        return f"nats per example over {data.eval_dims} dims (dynamically binarized test data)"
    if data.name == "celeba256":
        return "bits/dim of 5-bit data (32 levels), as the paper's CelebA-HQ-256 numbers"
    return f"bits/dim over {data.eval_dims} dims of {data.levels}-level data"

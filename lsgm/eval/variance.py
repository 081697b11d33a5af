"""Measured variance of the Monte Carlo estimators each Table 6 cell trains with (paper sections 3.3-3.4).

The paper motivates the geometric VPSDE and importance sampling of t by the variance of the training objective's
one-sample estimates. For one cell (SDE, weighting, t-sampling, q objective) the two estimators are those of
:class:`lsgm.train.lsgm.LSGMTask` (one draw of (t, noise) per latent z0, built from
:func:`lsgm.diffusion.objectives.diffusion_terms` and the samplers of :mod:`lsgm.diffusion.time_sampling`):

* ``score_loss``    weight_p(t) ||eps - eps_theta(z_t, t)||^2, t ~ the cell's p-sampler (objective (9));
* ``cross_entropy`` weight_q(t) ||eps - eps_theta(z_t, t)||^2 + C(z0), t from the p-samples (q ``rew``) or the
  cell's own likelihood sampler (``ll_is``: r_ll(t); ``ll_uniform``) -- Theorem 1, the encoder's objective (8).

**Crossed design.** For N fixed latents z0_i and M draws, draw j has one time t_j shared by the N latents and an own
noise per latent; X_ij is the one-sample estimate. For a given z0_i the draws (t_j, eps_ij) are independent, so the
columns are the brief's "independent draws for a given z0", and a two-way random-effects ANOVA
(:func:`crossed_moments`) separates, without bias,

    per_z0_variance = E_z0 Var_{t,eps}[X | z0]     (the per-sample variance a training step sees)
    variance        = Var_{z0,t,eps}[X]             (total, z0 included)
    t_variance      = Var_t E_{z0,eps}[X | t]       (the part t-sampling alone adds: what the SDE and IS control)

**Closed form** (:func:`closed_form_rows`): q = p = N(0, I) with the exact score and no network. With this code's
conventions (:mod:`lsgm.diffusion.sde`) a VP-type SDE has sigma^2(0) = sigma2_0 (a variance already present at t = 0),
m_t^2 = (1 - sigma_t^2) / (1 - sigma2_0) and d sigma_t^2/dt = g^2 (1 - sigma_t^2). Take z0 ~ N(0, (1 - sigma2_0) I),
i.e. z at t = 0 (z0 plus the sigma2_0 noise) is N(0, I); then z_t = m_t z0 + sigma_t eps has variance
m_t^2 (1 - sigma2_0) + sigma_t^2 = 1: q(z_t) = N(0, I) = p(z_t) at every t, the exact eps-prediction is
E[eps | z_t] = sigma_t z_t (``sde.mixing_component``, the Normal part of the mixed score), and

    eps - sigma_t z_t = (1 - sigma_t^2) eps - sigma_t m_t z0  ~  N(0, ((1 - sigma_t^2)^2 + sigma_t^2 (1 - sigma_t^2)) I)
                                                                = N(0, (1 - sigma_t^2) I),
    h(t) := E ||eps - sigma_t z_t||^2 = D (1 - sigma_t^2),
    w_ll(t)/2 h(t) = g^2 / (2 sigma_t^2) D (1 - sigma_t^2) = D/2 d log sigma_t^2 / dt.

(With z0 ~ N(0, I) itself and sigma2_0 > 0 the integrand would be D/2 d log sigma_t^2/dt / (1 - sigma2_0 sigma_t^2):
the stationary N(0, (1 - sigma2_0) I) is what makes it exact; for the VPSDE's sigma2_0 = 0 the two coincide.)
Integrating z0 and eps out, a single draw of t gives X(t) = weight(t) h(t) (+ E C(z0) for the cross entropy), an
unbiased estimate of the t-integral whose variance is Var_r[X(t)]:

* geometric VPSDE (sigma2_0 = sigma2_min): sigma_t^2 = sigma2_min r^t, d log sigma_t^2 / dt = log r is constant, so
  w_ll with uniform t has X(t) = (1 - t_eps) D/2 log r for every t: ZERO variance;
* VPSDE: d log sigma_t^2 / dt = beta(t) (1 - sigma_t^2) / sigma_t^2 ~ 1/t near 0: w_ll with uniform t has a large
  variance;
* importance sampling r(t) proportional to w(t) (1 - sigma_t^2) (:mod:`lsgm.diffusion.time_sampling`) makes the matching
  weight_p(t) h(t) constant: zero variance for every SDE (and weight_q h for q ``ll_is``).

Each closed-form row gives a Monte Carlo value (``n_t_draws`` draws of t through the cell's samplers), the exact value
(``analytic_*``: a 1-D integral over t, evaluated by Gauss-Legendre quadrature; exactly 0 where the integrand is
constant) and, through ``diffusion_terms`` with the exact score, the same crossed design as the trained
models (noise included). The cross entropy's mean is the entropy D/2 (1 + log 2 pi) of N(0, I) in every cell.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lsgm.eval.common import EvalError, LoadedRun, load_run, sample_seed
from lsgm.methods import TABLE6_COLUMNS, TABLE6_SDES, Cell
from lsgm.diffusion.objectives import EpsFn, cross_entropy_const, diffusion_terms
from lsgm.diffusion.sde import SDE, make_sde
from lsgm.diffusion.time_sampling import (
    TimeSample,
    TimeSampler,
    make_q_sampler,
    make_time_sampler,
)

ESTIMATORS = ("score_loss", "cross_entropy")
SOURCES = ("closed_form", "trained")
# mean .. t_variance: the crossed design (both sources); t_only_*: closed form, the noise-free integrand E[X | t] at
# n_t_draws draws of t; analytic_*: closed form, exact (quadrature, or 0 for a constant integrand); model: the model.pt
# (closed form: whose SDE and t_eps it uses); seconds: that model's whole measurement (both sources)
COLUMNS = ["source", "dataset", "sde", "weighting", "sampling", "q_objective", "cell", "header", "estimator", "mean",
           "variance", "per_z0_variance", "t_variance", "t_only_mean", "t_only_variance", "analytic_mean",
           "analytic_t_variance", "analytic_method", "dims", "n_latents", "n_draws", "n_t_draws", "seed", "status",
           "model", "step", "ema", "seconds"]
STREAMS = {"images": 1, "latents": 2, "draws": 3, "t_draws": 4}  # independent random streams of one seed


@dataclass(frozen=True)
class VarianceSettings:
    """Every setting of the measurement (defaults live in the CLI, ``lsgm report variance``)."""

    n_latents: int  # N fixed latents z0 (test images through the encoder; closed form: N(0, (1 - sigma2_0) I))
    n_draws: int  # M draws of (t, noise) per latent
    n_t_draws: int  # closed form: draws of t for the noise-free integrand
    seed: int
    batch_size: int  # latents x draws per score pass
    split: str = "test"
    use_ema: bool = True

    def __post_init__(self):
        if self.n_latents < 2 or self.n_draws < 2 or self.n_t_draws < 2:
            raise ValueError("variance needs n_latents, n_draws and n_t_draws >= 2")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class Moments:
    """Mean and variances of a one-sample estimator (see the module docstring)."""

    mean: float
    variance: float
    per_z0_variance: float
    t_variance: float


def crossed_moments(x: torch.Tensor) -> Moments:
    """Two-way random-effects ANOVA of ``x`` [M draws, N latents] where draw j shares its t across the latents:
    unbiased estimates of Var[X], E_z0 Var[X | z0] and Var_t E[X | t] (the last two may come out slightly negative
    from sampling noise when the true value is ~0)."""
    x = x.double()
    m, n = x.shape
    grand = x.mean()
    per_t, per_z0 = x.mean(dim=1), x.mean(dim=0)  # (M,), (N,)
    resid = x - per_t[:, None] - per_z0[None, :] + grand  # (M, N)
    ms_e = float(resid.pow(2).sum()) / ((m - 1) * (n - 1))
    ms_t = n * float((per_t - grand).pow(2).sum()) / (m - 1)
    ms_z = m * float((per_z0 - grand).pow(2).sum()) / (n - 1)
    within = float(x.var(dim=0).mean())  # E_z0 Var[X | z0]: each column is M independent draws
    return Moments(mean=float(grand), variance=within + (ms_z - ms_e) / m, per_z0_variance=within,
                   t_variance=(ms_t - ms_e) / n)


def _shared_t(ts: TimeSample, n: int) -> TimeSample:
    """Each of the M times for all N latents: [M] -> [M * N], draw-major (row j * N + i)."""
    return TimeSample(ts.t.repeat_interleave(n), ts.weight_p.repeat_interleave(n), ts.weight_q.repeat_interleave(n),
                      ts.t_eps)


@torch.no_grad()
def estimator_draws(z0: torch.Tensor, eps_fn: EpsFn, sde: SDE, p_sampler: TimeSampler, q_sampler: TimeSampler | None,
                    *, n_draws: int, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The one-sample estimates {estimator: [n_draws, N]} of the latents ``z0`` [N, ...], as the trainer forms them
    (``LSGMTask._score_terms``): a shared t per draw, own noise per latent; ``q_sampler`` None reuses the p-samples."""
    n = z0.shape[0]
    kw = {"generator": generator, "device": z0.device, "dtype": z0.dtype}
    per_pass = max(1, batch_size // n)  # draws per score pass
    out: dict[str, list[torch.Tensor]] = {name: [] for name in ESTIMATORS}
    for start in range(0, n_draws, per_pass):
        m = min(per_pass, n_draws - start)
        z = z0.repeat(m, *([1] * (z0.ndim - 1)))  # (m * N, ...), draw-major
        terms = diffusion_terms(z, eps_fn, sde, _shared_t(p_sampler.sample(m, **kw), n), generator=generator)
        out["score_loss"].append(terms.sgm_loss.view(m, n))
        if q_sampler is not None:
            terms = diffusion_terms(z, eps_fn, sde, _shared_t(q_sampler.sample(m, **kw), n), generator=generator)
        out["cross_entropy"].append(terms.cross_entropy.view(m, n))
    return {name: torch.cat(parts) for name, parts in out.items()}


def _generator(seed: int, stream: str, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(sample_seed(seed, 0, STREAMS[stream]))
    return gen


def cell_samplers(cell: Cell, sde: SDE, t_eps: float) -> tuple[TimeSampler, TimeSampler | None]:
    """The cell's p-sampler and its encoder's own sampler (None for q ``rew``), as training builds them."""
    p_sampler = make_time_sampler(cell.weighting, cell.sampling, sde, t_eps)
    return p_sampler, make_q_sampler(cell.q_objective, p_sampler)


# ------------------------------------------------------------------------------------------- closed form
def _check_vp(sde: SDE) -> None:
    if sde.prior_var != 1.0:
        raise ValueError(f"the closed form q = p = N(0, I) needs a VP-type SDE (prior N(0, I)), not {sde.type}")


def normal_latents(sde: SDE, n: int, dims: int, generator: torch.Generator) -> torch.Tensor:
    """[n, dims] float64 z0 ~ N(0, (1 - sigma2_0) I): diffused by the SDE, N(0, I) at every t (module docstring)."""
    _check_vp(sde)
    return math.sqrt(1.0 - sde.sigma2_0) * torch.randn(n, dims, generator=generator, dtype=torch.float64,
                                                       device=generator.device)


def normal_denoising_error(sde: SDE, t: torch.Tensor, dims: int) -> torch.Tensor:
    """h(t) = E ||eps - sigma_t z_t||^2 = D (1 - sigma_t^2) for q = p = N(0, I) (module docstring); shape of t."""
    _check_vp(sde)
    return dims * (1.0 - sde.var(t))


def normal_ce_constant(sde: SDE, t_eps: float, dims: int) -> float:
    """E C(z0) over z0 ~ N(0, (1 - sigma2_0) I): C is linear in ||z0||^2, so C at ||z0||^2 = D (1 - sigma2_0)."""
    z0 = torch.full((1, dims), math.sqrt(1.0 - sde.sigma2_0), dtype=torch.float64)
    return float(cross_entropy_const(z0, sde, t_eps)[0])


def normal_integrand(sde: SDE, ts: TimeSample, dims: int, estimator: str, ce_constant: float) -> torch.Tensor:
    """E[one-sample estimate | t] for q = p = N(0, I): weight_p h(t) (score loss) or weight_q h(t) + E C (cross
    entropy), [B] for the times of ``ts``."""
    h = normal_denoising_error(sde, ts.t, dims)
    if estimator == "score_loss":
        return ts.weight_p * h
    return ts.weight_q * h + ce_constant


def _estimator_sampler(estimator: str, p_sampler: TimeSampler, q_sampler: TimeSampler | None) -> TimeSampler:
    return p_sampler if estimator == "score_loss" or q_sampler is None else q_sampler


def _quadrature(sampler: TimeSampler, dims: int, estimator: str, ce_constant: float, panels: int = 200,
                nodes: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(r(t) dt weights, X(t)) at the nodes of a composite Gauss-Legendre rule on [t_eps, 1], float64: panels graded
    geometrically toward t_eps (where the VPSDE's d log sigma_t^2 / dt ~ 1/t and r_ll, r_re concentrate) merged with
    uniform ones."""
    t_eps = sampler.t_eps
    graded = t_eps + (1.0 - t_eps) * np.geomspace(1e-12, 1.0, panels)
    edges = np.unique(np.concatenate([[t_eps], graded, np.linspace(t_eps, 1.0, panels + 1)]))
    x, w = np.polynomial.legendre.leggauss(nodes)
    half = 0.5 * np.diff(edges)[:, None]  # (panels', 1)
    t = torch.from_numpy((0.5 * (edges[:-1] + edges[1:])[:, None] + half * x[None, :]).ravel())
    measure = torch.from_numpy((half * w[None, :]).ravel()) * sampler.density(t)  # r(t) dt
    w_p, w_q = sampler.weights(t)
    return measure, normal_integrand(sampler.sde, TimeSample(t, w_p, w_q, t_eps), dims, estimator, ce_constant)


def quadrature_moments(sampler: TimeSampler, dims: int, estimator: str, ce_constant: float,
                       orders: tuple[int, ...] = (2,)) -> tuple[float, ...]:
    """(E_r[X], then E_r[(X - E X)^k] for k in ``orders``) of the closed-form integrand X(t) under the sampler's
    density r: the exact values, by quadrature (:func:`_quadrature`)."""
    measure, value = _quadrature(sampler, dims, estimator, ce_constant)
    mean = float((measure * value).sum())
    return (mean, *(float((measure * (value - mean).pow(k)).sum()) for k in orders))


def closed_form_rows(cell: Cell, sde: SDE, t_eps: float, dims: int, settings: VarianceSettings) -> list[dict]:
    """The two rows (score_loss, cross_entropy) of the closed form q = p = N(0, I) for one cell."""
    p_sampler, q_sampler = cell_samplers(cell, sde, t_eps)
    ce_constant = normal_ce_constant(sde, t_eps, dims)
    device = torch.device("cpu")
    z0 = normal_latents(sde, settings.n_latents, dims, _generator(settings.seed, "latents", device))
    draws = estimator_draws(z0, sde.mixing_component, sde, p_sampler, q_sampler, n_draws=settings.n_draws,
                            batch_size=settings.batch_size, generator=_generator(settings.seed, "draws", device))
    rows = []
    for estimator in ESTIMATORS:
        sampler = _estimator_sampler(estimator, p_sampler, q_sampler)
        ts = sampler.sample(settings.n_t_draws, generator=_generator(settings.seed, "t_draws", device),
                            dtype=torch.float64)
        x = normal_integrand(sde, ts, dims, estimator, ce_constant)  # (n_t_draws,)
        a_mean, a_var = quadrature_moments(sampler, dims, estimator, ce_constant)
        constant = a_var <= (1e-12 * max(abs(a_mean), 1.0)) ** 2
        mom = crossed_moments(draws[estimator])
        rows.append(_row("closed_form", cell, estimator, mom, dims, settings, status="ok") | {
            "t_only_mean": float(x.mean()), "t_only_variance": float(x.var()), "analytic_mean": a_mean,
            "analytic_t_variance": 0.0 if constant else a_var, "n_t_draws": settings.n_t_draws,
            "analytic_method": "constant integrand (exactly 0)" if constant else "quadrature"})
    return rows


# ----------------------------------------------------------------------------------------------- trained
def _row(source: str, cell: Cell, estimator: str, mom: Moments | None, dims: int, settings: VarianceSettings,
         status: str, run: LoadedRun | None = None) -> dict:
    nan = math.nan
    return {"source": source, "sde": cell.sde, "weighting": cell.weighting, "sampling": cell.sampling,
            "q_objective": cell.q_objective, "cell": cell.text, "header": TABLE6_COLUMNS.get(cell.text, cell.text),
            "estimator": estimator, "mean": mom.mean if mom else nan, "variance": mom.variance if mom else nan,
            "per_z0_variance": mom.per_z0_variance if mom else nan, "t_variance": mom.t_variance if mom else nan,
            "t_only_mean": nan, "t_only_variance": nan, "analytic_mean": nan, "analytic_t_variance": nan,
            "analytic_method": "", "dims": dims,
            "n_latents": settings.n_latents, "n_draws": settings.n_draws, "n_t_draws": 0, "seed": settings.seed,
            "status": status, "model": str(run.path) if run else "", "step": run.step if run else -1,
            "ema": run.ema if run else False, "seconds": nan}


def cell_of(run: LoadedRun) -> Cell:
    """The Table 6 cell (SDE and objective) a trained LSGM ran with."""
    if run.kind != "lsgm":
        raise EvalError(f"{run.path} is a {run.kind} run; the variance measurement needs an LSGM model.pt")
    o = run.cfg.objective
    return Cell(run.cfg.sde.type, o.weighting, o.sampling, o.q_objective)


@torch.no_grad()
def encoder_latents(run: LoadedRun, settings: VarianceSettings, device: torch.device) -> torch.Tensor:
    """z0 [N, C, H, W]: one posterior sample of each of N fixed images of the split (a seeded choice of indices)."""
    from lsgm.data import get_dataset

    data = get_dataset(run.cfg.data.name, settings.split, root=run.cfg.data.root, download=False, augment=False,
                       expected_size=run.cfg.data.split_size(settings.split))
    if len(data) < settings.n_latents:
        raise EvalError(f"n_latents = {settings.n_latents} > {len(data)} images in the {settings.split} split")
    gen = _generator(settings.seed, "images", torch.device("cpu"))
    index = torch.randperm(len(data), generator=gen)[: settings.n_latents].tolist()
    x = torch.stack([data[i][0] for i in index]).to(device)
    return run.vae(x, generator=_generator(settings.seed, "latents", device)).z0.float()


def latent_dims(run: LoadedRun) -> int:
    """D of the top latent (a diverged run has no modules: the architecture is rebuilt from its config)."""
    if run.vae is not None:
        return int(np.prod(run.vae.latent_shape))
    from lsgm.nets.nvae import NVAE

    return int(np.prod(NVAE(run.cfg.vae, run.data).latent_shape))


def trained_rows(run: LoadedRun, cell: Cell, dims: int, settings: VarianceSettings, device: torch.device) -> list[dict]:
    """The two rows of a trained cell; NaN rows (status ``diverged``) for a diverged run."""
    if run.diverged:
        return [_row("trained", cell, e, None, dims, settings, status="diverged", run=run) for e in ESTIMATORS]
    p_sampler, q_sampler = cell_samplers(cell, run.sde, run.cfg.sde.t_eps)
    z0 = encoder_latents(run, settings, device)
    draws = estimator_draws(z0, run.score, run.sde, p_sampler, q_sampler, n_draws=settings.n_draws,
                            batch_size=settings.batch_size, generator=_generator(settings.seed, "draws", device))
    rows = []
    for estimator in ESTIMATORS:
        finite = bool(torch.isfinite(draws[estimator]).all())
        mom = crossed_moments(draws[estimator]) if finite else None
        rows.append(_row("trained", cell, estimator, mom, dims, settings, status="ok" if finite else "nonfinite",
                         run=run))
    return rows


def measure_variance(models: list[str | Path], settings: VarianceSettings, device: torch.device) -> list[dict]:
    """Closed-form and trained rows of every model (an LSGM model.pt each; usually the Table 6 cells), in the order
    of :data:`lsgm.methods.TABLE6_COLUMNS` per SDE. A diverged model gives NaN trained rows, never an error."""
    rows = []
    for path in models:
        started = time.perf_counter()
        run = load_run(path, use_ema=settings.use_ema, device=device)
        cell, dims = cell_of(run), latent_dims(run)
        sde = run.sde if run.sde is not None else make_sde(run.cfg.sde)
        cell_rows = closed_form_rows(cell, sde, run.cfg.sde.t_eps, dims, settings)
        cell_rows += trained_rows(run, cell, dims, settings, device)
        seconds = time.perf_counter() - started
        rows += [r | {"dataset": run.cfg.data.name, "model": str(path), "step": run.step, "seconds": seconds}
                 for r in cell_rows]
    order = {text: k for k, text in enumerate(TABLE6_COLUMNS)}
    sdes = {sde: k for k, sde in enumerate(TABLE6_SDES)}
    return sorted(rows, key=lambda r: (sdes.get(r["sde"], len(sdes)), r["sde"], order.get(r["cell"], len(order)),
                                       r["cell"], SOURCES.index(r["source"]), ESTIMATORS.index(r["estimator"])))

"""Variance of the training estimators (lsgm/eval/variance.py, `lsgm report variance`).

The closed form q = p = N(0, I) with the exact score: the likelihood-weighted integrand is D/2 d log sigma_t^2/dt, so
the geometric VPSDE with w_ll and uniform t has zero variance and the VPSDE does not; Monte Carlo agrees with the exact
(quadrature) values in every Table 6 cell; the closed form agrees with the project's own objective code. Then the
ANOVA of the crossed design, and the CLI on a tiny smoke-trained LSGM (with a diverged copy: NaN rows, no crash).
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch
from scipy import integrate

from lsgm.eval import variance as V
from lsgm.methods import TABLE6_COLUMNS, TABLE6_SDES, Cell
from lsgm.diffusion.objectives import denoising_l2
from lsgm.diffusion.sde import VPSDE, GeometricVPSDE

D = 128
ENTROPY = D / 2 * (1 + math.log(2 * math.pi))  # of N(0, I) in D dims: the cross entropy q = p
SDES = {"vpsde": (VPSDE(0.1, 20.0, 0.0), 1e-2), "geometric": (GeometricVPSDE(3e-5, 0.999, 3e-5), 1e-2)}
CELLS = [Cell.parse(sde, text) for sde in TABLE6_SDES for text in TABLE6_COLUMNS
         if Cell.parse(sde, text).table6_error is None]
SETTINGS = V.VarianceSettings(n_latents=8, n_draws=16, n_t_draws=20000, seed=0, batch_size=128)


def _t_only(cell: Cell, estimator: str, n: int = 20000):
    """(draws of the noise-free integrand, exact mean, variance, 4th central moment) of one cell's estimator."""
    sde, t_eps = SDES[cell.sde]
    p, q = V.cell_samplers(cell, sde, t_eps)
    sampler = V._estimator_sampler(estimator, p, q)
    const = V.normal_ce_constant(sde, t_eps, D)
    ts = sampler.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return V.normal_integrand(sde, ts, D, estimator, const), *V.quadrature_moments(sampler, D, estimator, const, (2, 4))


# ------------------------------------------------------------------------------------------- closed form
def test_geometric_ll_uniform_has_zero_variance_and_vpsde_does_not():
    cell = Cell("geometric", "ll", "uniform", "rew")
    sde, t_eps = SDES["geometric"]
    for estimator in V.ESTIMATORS:
        draws, mean, var, _ = _t_only(cell, estimator)
        assert float(draws.var()) <= (1e-12 * mean) ** 2, f"{estimator}: Monte Carlo variance {float(draws.var())}"
        assert abs(var) <= (1e-12 * mean) ** 2, f"{estimator}: exact variance {var}"
        vp_draws, _, vp_var, _ = _t_only(Cell("vpsde", "ll", "uniform", "rew"), estimator)
        assert float(vp_draws.var()) > 1e3 and vp_var > 1e3  # ~1/t near t_eps: large, and certainly not 0
    rows = {r["estimator"]: r for r in V.closed_form_rows(cell, sde, t_eps, D, SETTINGS)}
    assert rows["score_loss"]["analytic_t_variance"] == 0.0 and rows["cross_entropy"]["analytic_t_variance"] == 0.0
    assert rows["score_loss"]["analytic_method"].startswith("constant")
    # why: w_ll/(2 r) h = (1 - t_eps) D/2 d log sigma_t^2 / dt = (1 - t_eps) D/2 log r at every t
    t = torch.linspace(t_eps, 1.0, 101, dtype=torch.float64)
    w_p, w_q = V.cell_samplers(cell, sde, t_eps)[0].weights(t)
    x = V.normal_integrand(sde, V.TimeSample(t, w_p, w_q, t_eps), D, "score_loss", 0.0)
    torch.testing.assert_close(x, torch.full_like(x, (1 - t_eps) * D / 2 * math.log(0.999 / 3e-5)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("cell", CELLS, ids=[c.run_name for c in CELLS])
def test_monte_carlo_agrees_with_the_exact_values(cell):
    for estimator in V.ESTIMATORS:
        draws, mean, var, mu4 = _t_only(cell, estimator)
        n = draws.numel()
        if var <= (1e-12 * max(abs(mean), 1.0)) ** 2:  # a constant integrand: every draw is the mean
            torch.testing.assert_close(draws, torch.full_like(draws, mean), rtol=1e-10, atol=0)
            continue
        assert abs(float(draws.mean()) - mean) < 5 * math.sqrt(var / n), (estimator, float(draws.mean()), mean)
        se_var = math.sqrt(max(mu4 - var**2, 0.0) / n)  # standard error of the sample variance
        assert abs(float(draws.var()) - var) < 5 * se_var, (estimator, float(draws.var()), var, se_var)


@pytest.mark.parametrize("cell", CELLS, ids=[c.run_name for c in CELLS])
def test_cross_entropy_is_unbiased_in_every_cell(cell):
    """E[estimate] = CE(N(0, I) || N(0, I)) = D/2 (1 + log 2 pi), whatever weighting and t-sampling."""
    sde, t_eps = SDES[cell.sde]
    p, q = V.cell_samplers(cell, sde, t_eps)
    const = V.normal_ce_constant(sde, t_eps, D)
    mean = V.quadrature_moments(V._estimator_sampler("cross_entropy", p, q), D, "cross_entropy", const)[0]
    assert mean == pytest.approx(ENTROPY, rel=1e-10)


def test_quadrature_against_scipy_and_closed_forms():
    sde, t_eps = SDES["vpsde"]
    for weighting, exact in (("ll", D / 2 * math.log(float(sde.var(torch.tensor(1.0, dtype=torch.float64))
                                                           / sde.var(torch.tensor(t_eps, dtype=torch.float64))))),
                             ("re", D / 2 * float(sde.var(torch.tensor(1.0, dtype=torch.float64))
                                                  - sde.var(torch.tensor(t_eps, dtype=torch.float64))))):
        p, _ = V.cell_samplers(Cell("vpsde", weighting, "uniform", "rew"), sde, t_eps)
        mean, var = V.quadrature_moments(p, D, "score_loss", 0.0)
        assert mean == pytest.approx(exact, rel=1e-10)

        def x(t, p=p):
            tt = torch.tensor([t], dtype=torch.float64)
            w_p, w_q = p.weights(tt)
            return float(V.normal_integrand(sde, V.TimeSample(tt, w_p, w_q, t_eps), D, "score_loss", 0.0)[0])

        second = integrate.quad(lambda t: x(t) ** 2 / (1 - t_eps), t_eps, 1.0, limit=200, epsrel=1e-10,
                                points=[2 * t_eps, 0.1])[0]
        assert var == pytest.approx(second - mean**2, rel=1e-6)


def test_closed_form_matches_the_objective_code():
    """h(t) = D (1 - sigma_t^2) is what denoising_l2 (the trainer's ||eps - eps_theta||^2) averages to with the exact
    eps-prediction sigma_t z_t (``mixing_component``) and z0 ~ N(0, (1 - sigma2_0) I); the crossed design of the
    one-sample estimates (noise included) has the exact means."""
    gen = torch.Generator().manual_seed(0)
    for name, (sde, t_eps) in SDES.items():
        z0 = V.normal_latents(sde, 4000, D, gen)
        for t_value in (t_eps, 0.3, 0.9):
            t = torch.full((z0.shape[0],), t_value, dtype=torch.float64)
            l2 = denoising_l2(z0, sde.mixing_component, sde, t, torch.randn(z0.shape, generator=gen,
                                                                            dtype=torch.float64)).double()
            h = float(V.normal_denoising_error(sde, t[:1], D))
            assert abs(float(l2.mean()) - h) < 5 * float(l2.std()) / math.sqrt(l2.numel()), (name, t_value)
        settings = dataclasses.replace(SETTINGS, n_latents=32, n_draws=64)
        cell = Cell(name, "ll", "uniform", "ll_is")
        rows = {r["estimator"]: r for r in V.closed_form_rows(cell, sde, t_eps, D, settings)}
        ce = rows["cross_entropy"]  # q ll_is: r_ll, a constant integrand; the spread is the noise's
        n = settings.n_latents * settings.n_draws
        assert abs(ce["mean"] - ENTROPY) < 5 * math.sqrt(ce["variance"] / n)
        assert ce["analytic_mean"] == pytest.approx(ENTROPY, rel=1e-10) and ce["per_z0_variance"] > 0


def test_crossed_moments_recovers_known_components():
    gen = torch.Generator().manual_seed(0)
    m, n = 300, 300
    a = 2.0 * torch.randn(1, n, generator=gen)  # per-latent effect: variance 4
    b = 3.0 * torch.randn(m, 1, generator=gen)  # per-t effect: variance 9
    x = 5.0 + a + b + torch.randn(m, n, generator=gen)  # noise: variance 1
    mom = V.crossed_moments(x)
    var_t, var_z = float(b.var()), float(a.var())  # the drawn effects' spread (~9 and ~4)
    assert mom.mean == pytest.approx(float(x.mean()))
    assert mom.t_variance == pytest.approx(var_t, rel=0.02)
    assert mom.per_z0_variance == pytest.approx(var_t + 1.0, rel=0.02)
    assert mom.variance == pytest.approx(var_t + var_z + 1.0, rel=0.02)
    assert V.crossed_moments(torch.full((4, 3), 2.0)) == V.Moments(2.0, 0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------------------------- the CLI
def _variant(blob: dict, path, sde: str, weighting: str, sampling: str, q_objective: str, status: str = "completed"):
    """A copy of a trained LSGM's model.pt as another cell (the score's weights do not depend on the SDE)."""
    from lsgm.utils import atomic_torch_save

    out = {**blob, "config": {**blob["config"], "sde": {**blob["config"]["sde"], "type": sde},
                              "objective": {**blob["config"]["objective"], "weighting": weighting,
                                            "sampling": sampling, "q_objective": q_objective}}, "status": status}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(out, path)
    return path


@pytest.fixture(scope="module")
def smoke_models(tmp_path_factory):
    """A tiny LSGM smoke-trained through the CLIs (2 + 2 steps), and copies as two more cells, one diverged."""
    from lsgm.config import RunConfig, apply_overrides, save_run_config
    from lsgm.train import lsgm as train_lsgm
    from lsgm.train import vae as train_vae

    tmp = tmp_path_factory.mktemp("variance")
    tiny = ["vae.num_channels=8", "vae.num_latent_per_group=2", "vae.use_se=false", "vae.num_mix=2", "score.nf=8",
            "score.ch_mult=[1]", "train.steps=2", "train.global_batch=8", "train.log_every=1", "train.val_batches=1"]
    vae_cfg, lsgm_cfg = tmp / "vae.yaml", tmp / "lsgm.yaml"
    save_run_config(apply_overrides(RunConfig(kind="vae", name="v"), tiny), vae_cfg)
    assert train_vae.main(["--config", str(vae_cfg), "--out", str(tmp / "vae")]) == 0
    save_run_config(apply_overrides(RunConfig(kind="lsgm", name="l"), [*tiny, "sde.type=vpsde", "objective.weighting=ll",
                                                                        "objective.sampling=uniform"]), lsgm_cfg)
    assert train_lsgm.main(["--config", str(lsgm_cfg), "--vae", str(tmp / "vae" / "model.pt"),
                            "--out", str(tmp / "vpsde")]) == 0
    trained = tmp / "vpsde" / "model.pt"
    blob = torch.load(trained, weights_only=False)
    return [trained, _variant(blob, tmp / "geo" / "model.pt", "geometric", "ll", "uniform", "rew"),
            _variant(blob, tmp / "div" / "model.pt", "vpsde", "un", "is", "ll_is", status="diverged")]


def test_cli_writes_rows_figure_and_provenance(smoke_models, tmp_path, capsys):
    from lsgm.report import cli

    out = tmp_path / "out"
    argv = ["variance", "--models", *map(str, smoke_models), "--scale", "smoke", "--out-dir", str(out),
            "--n-latents", "4", "--n-draws", "6", "--n-t-draws", "500", "--batch-size", "64", "--seed", "3"]
    assert cli.main(argv) == 0
    assert "12 rows from 3 models" in capsys.readouterr().out
    df = pd.read_csv(out / "variance.csv")
    assert list(df.columns) == V.COLUMNS and len(df) == 12  # 3 cells x (closed form, trained) x 2 estimators
    assert set(df["source"]) == {"closed_form", "trained"} and set(df["estimator"]) == set(V.ESTIMATORS)
    assert (df["n_latents"] == 4).all() and (df["n_draws"] == 6).all() and (df["seed"] == 3).all()
    assert set(df["cell"]) == {"ll-uniform-rew", "un-is-ll_is"} and set(df["sde"]) == {"vpsde", "geometric"}
    trained = df[df["source"] == "trained"]
    diverged = trained[trained["status"] == "diverged"]
    assert len(diverged) == 2 and diverged[["mean", "variance", "per_z0_variance"]].isna().all().all()
    ok = trained[trained["status"] == "ok"]
    assert len(ok) == 4 and ok[["mean", "variance", "per_z0_variance"]].notna().all().all()
    assert (ok["ema"]).all() and (ok["step"] == 2).all()
    closed = df[df["source"] == "closed_form"]
    assert closed[["mean", "analytic_mean", "t_only_variance"]].notna().all().all()  # the diverged cell's too
    geo = closed[(closed["sde"] == "geometric")]
    assert (geo["analytic_t_variance"] == 0.0).all() and (geo["t_only_variance"] <= 1e-12).all()
    vp = closed[(closed["sde"] == "vpsde") & (closed["cell"] == "ll-uniform-rew")]
    assert (vp["t_only_variance"] > 1e3).all()
    assert (out / "variance.png").stat().st_size > 20_000
    assert "smoke scale" in (out / "variance.caption.txt").read_text()
    prov = pd.read_json(out / "variance.provenance.json", typ="series")
    assert prov["settings"]["n_draws"] == 6 and len(prov["models"]) == 3 and "commit" in prov


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    from lsgm.report import cli

    assert cli.main(["variance", "--models", str(tmp_path / "nope.pt"), "--scale", "smoke",
                     "--out-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "variance.csv").exists()
    with pytest.raises(SystemExit):
        cli.main(["variance", "--metrics", "m.json", "--scale", "smoke", "--out-dir", str(tmp_path)])


# ------------------------------------------------------------------------------------------------ the plan
def test_plan_lists_the_cells_of_the_first_seed_and_checks_the_settings():
    from pathlib import Path

    import yaml

    from lsgm.plan import Plan, PlanError, eval_args

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    plan = Plan(config, "quick")
    inputs = plan.variance_inputs()
    assert len(inputs) == len(CELLS) == 17 and all(p.endswith("-s0/model.pt") for p in inputs)
    assert "results/quick/runs/digits/lsgm/geometric-w_ll-uniform-q_rew-s0/model.pt" in inputs
    assert {"results/quick/variance.png", "results/quick/variance.csv"} <= set(plan.targets())
    assert "--n-latents 16" in eval_args(plan.variance_settings())
    config["scales"]["quick"]["eval"]["variance"]["n_draws"] = 1
    with pytest.raises(PlanError, match="eval.variance.n_draws = 1 is out of range"):
        Plan(config, "quick")

"""Evaluation: IW/NELBO, Fréchet distance, per-sample seeding, feature extractors, error paths, end to end.

Everything runs on CPU with tiny models; the end-to-end test smoke-trains through the CLIs.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lsgm.config import RunConfig, apply_overrides, save_run_config, to_dict
from lsgm.data import dataset_info
from lsgm.eval import cli as eval_cli
from lsgm.eval import features as features_mod
from lsgm.eval import fid as fid_mod
from lsgm.eval import frechet as frechet_mod
from lsgm.eval import reference as reference_mod
from lsgm.eval.generate import Sampling, sample_batch
from lsgm.eval.common import EvalError, LoadedRun, load_run, per_sample_normal, sample_generators
from lsgm.eval.nll import PriorSettings, batch_terms, iw_nll
from lsgm.nets.classifier import FeatureClassifier
from lsgm.nets.nvae import NVAE
from lsgm.score import build_score
from lsgm.diffusion.sde import make_sde
from lsgm.utils import atomic_torch_save

TINY_VAE = ["vae.num_channels=8", "vae.num_latent_per_group=2", "vae.use_se=false", "vae.num_mix=2"]
TINY_SCORE = ["score.nf=8", "score.ch_mult=[1]"]


def _cfg(kind: str, *overrides: str) -> RunConfig:
    return apply_overrides(RunConfig(kind=kind, name=f"test-{kind}"), [*TINY_VAE, *TINY_SCORE, *overrides])


def _save_model(path: Path, cfg: RunConfig, state: dict, ema=None, status: str = "completed") -> Path:
    atomic_torch_save({"config": to_dict(cfg), "status": status, "step": 3, "state": state, "ema": ema}, path)
    return path


def _lsgm_run(tmp_path: Path, *overrides: str) -> Path:
    """An untrained LSGM model.pt (random weights are enough for seeding and plumbing tests)."""
    torch.manual_seed(0)
    cfg = _cfg("lsgm", *overrides)
    vae = NVAE(cfg.vae, dataset_info(cfg.data.name))
    score = build_score(cfg, vae.latent_shape, make_sde(cfg.sde))
    return _save_model(tmp_path / "lsgm" / "model.pt", cfg, {"vae": vae.state_dict(), "score": score.state_dict()},
                       ema=score.state_dict())


def _classifier_file(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = FeatureClassifier(1, 10)
    cfg = RunConfig(kind="classifier")
    atomic_torch_save({"config": to_dict(cfg), "status": "completed", "step": 1,
                       "state": {"classifier": net.state_dict()}, "ema": None, "arch": net.hparams}, path)
    return path


# ------------------------------------------------------------------------------------------------ NLL
def test_iw_with_one_sample_equals_nelbo():
    nelbo = torch.tensor([[3.0, 120.5, -7.25]])
    assert torch.allclose(iw_nll(nelbo), nelbo[0])
    many = torch.tensor([[3.0, 5.0], [4.0, 1.0], [9.0, 2.0]])
    assert (iw_nll(many) <= many.mean(0)).all()  # Jensen: the IW bound is tighter


@pytest.mark.parametrize("prior", ["dsm", "ode"])
def test_iw_k1_equals_nelbo_through_the_evaluation(tmp_path, prior):
    run = load_run(_lsgm_run(tmp_path))
    x = torch.rand(4, 1, 8, 8).mul(16).round().div(16)
    ps = PriorSettings(prior, t_eps=1e-2 if prior == "dsm" else 1e-5, tolerance=1e-3, solver="dopri5",
                       probe="gaussian", inner=2, t_draws=2)
    terms = batch_terms(run, x, ps, iw_samples=1, seed=0, batch_index=0)
    assert torch.allclose(terms.nll, terms.nelbo)
    total = terms.reconstruction + terms.neg_entropy + terms.prior_ce + terms.lower_ce
    assert torch.allclose(total, terms.nelbo)
    assert (terms.inner_sem is not None) == (prior == "ode")
    # nelbo_bound: the same encoder sample with the DSM prior term -- the NELBO itself when the prior term is DSM
    assert torch.isfinite(terms.nelbo_bound).all()
    assert torch.equal(terms.nelbo_bound, terms.nelbo) == (prior == "dsm")


# ------------------------------------------------------------------------------------------------ FD
def test_frechet_distance_zero_for_identical_sets_and_grows_with_shift():
    feats = torch.from_numpy(np.random.default_rng(0).normal(size=(600, 16)))
    ref = frechet_mod.feature_statistics(feats)
    assert abs(frechet_mod.frechet_distance(frechet_mod.feature_statistics(feats.clone()), ref)) < 1e-6
    small = frechet_mod.frechet_distance(frechet_mod.feature_statistics(feats + 0.25), ref)
    large = frechet_mod.frechet_distance(frechet_mod.feature_statistics(feats + 1.0), ref)
    assert 0 < small < large
    assert small == pytest.approx(16 * 0.25**2, rel=1e-6)  # a pure mean shift: ||delta||^2


def test_reference_fd_is_the_closed_form_for_commuting_covariances():
    """Features whose sample covariance is exactly diagonal against a diagonal reference: FD = |mu1 - mu2|^2 +
    sum_i (sqrt(a_i) - sqrt(b_i))^2, with fewer samples than features (the bootstrap's case at 2048-d) and more."""
    rng = np.random.default_rng(0)
    for n, dim in ((5, 12), (40, 6)):
        k = min(n - 1, dim)
        q = np.linalg.qr(np.hstack([np.ones((n, 1)), rng.normal(size=(n, k))]))[0][:, 1:]  # centred, orthonormal
        scales = rng.uniform(0.5, 2.0, size=k)
        x = np.zeros((n, dim))
        x[:, :k] = q * scales
        mu1 = rng.normal(size=dim)
        a = np.zeros(dim)
        a[:k] = scales**2 / (n - 1)
        b = rng.uniform(0.1, 3.0, size=dim)
        mu2 = rng.normal(size=dim)
        exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
        fd = frechet_mod.ReferenceFD({"mu": mu2, "sigma": np.diag(b)})(torch.from_numpy(x + mu1))
        assert fd == pytest.approx(exact, rel=1e-10), (n, dim)


def test_reference_fd_equals_torch_fidelitys_frechet_distance():
    """The bootstrap's FD (no sqrtm) is torch-fidelity's FD of the same features, for N > D and N <= D."""
    rng = np.random.default_rng(1)
    for n, dim in ((300, 16), (10, 64)):
        mix = rng.normal(size=(dim, dim))
        ref = frechet_mod.feature_statistics(torch.from_numpy(rng.normal(size=(500, dim)) @ mix))
        feats = torch.from_numpy(rng.normal(size=(n, dim)) @ mix.T + 0.3)
        expected = frechet_mod.frechet_distance(frechet_mod.feature_statistics(feats), ref)
        assert frechet_mod.ReferenceFD(ref)(feats) == pytest.approx(expected, rel=1e-7), (n, dim)


def test_fd_standard_error_is_the_spread_of_the_fd_over_sample_sets():
    """The bootstrap SE of an FD (cost rows' ``fd_stderr``) estimates the standard deviation of the FD over
    independent sets of N samples (a shifted Gaussian against fixed N(0, I) statistics), and is reproducible."""
    dim, n = 4, 100
    ref = {"mu": np.zeros(dim), "sigma": np.eye(dim)}
    gen = torch.Generator().manual_seed(1)
    sets = [torch.randn(n, dim, generator=gen, dtype=torch.float64) + 0.3 for _ in range(200)]
    spread = np.std([frechet_mod.frechet_distance(frechet_mod.feature_statistics(x), ref) for x in sets], ddof=1)
    estimates = [frechet_mod.fd_standard_error(x, ref) for x in sets[:20]]
    assert np.mean(estimates) == pytest.approx(spread, rel=0.35)
    assert frechet_mod.fd_standard_error(sets[0], ref, seed=3) == frechet_mod.fd_standard_error(sets[0], ref, seed=3)


# ------------------------------------------------------------------------------------------------ seeding
ODE = Sampling(sampler="ode", tolerance=1e-5, solver="dopri5", t_eps=1e-5, temperature=1.0, vae_temperature=1.0,
               pc_steps=None, snr=None)


def _samples(run: LoadedRun, n: int, batch_size: int, sampling: Sampling = ODE) -> torch.Tensor:
    return torch.cat([sample_batch(run, s, min(batch_size, n - s), seed=7, sampling=sampling, device="cpu").images
                      for s in range(0, n, batch_size)])


def test_per_sample_noise_is_independent_of_batch_size():
    a = per_sample_normal((2, 3), sample_generators(5, 0, 3)), per_sample_normal((2, 3), sample_generators(5, 3, 4))
    b = per_sample_normal((2, 3), sample_generators(5, 0, 7))
    assert torch.equal(torch.cat(a), b)


def test_vae_samples_identical_for_batch_sizes_3_and_5(tmp_path):
    # two latent scales: the lower-scale noise must also be per sample
    cfg = _cfg("vae", "vae.num_latent_scales=2", "vae.channel_mult=[1,1,1]")
    vae = NVAE(cfg.vae, dataset_info("digits"))
    run = load_run(_save_model(tmp_path / "vae.pt", cfg, {"vae": vae.state_dict()}))
    x3, x5 = _samples(run, 15, 3), _samples(run, 15, 5)
    assert torch.allclose(x3, x5, atol=1e-6)
    assert not torch.allclose(x3[0], x3[1])


def test_temperature_scales_the_top_latent_and_vae_temperature_the_lower_groups(tmp_path):
    """Official evaluate_vada.py: --temp for the latent the prior models, --vae_temp for the decoder's lower
    groups. Zeroing one removes exactly that source of randomness."""
    cfg = _cfg("vae", "vae.num_latent_scales=2", "vae.channel_mult=[1,1,1]")
    vae = NVAE(cfg.vae, dataset_info("digits"))
    run = load_run(_save_model(tmp_path / "vae.pt", cfg, {"vae": vae.state_dict()}))

    def two(**temperatures):  # samples 0 and 1: different per-sample noise
        return sample_batch(run, 0, 2, seed=7, sampling=dataclasses.replace(ODE, **temperatures), device="cpu").images

    no_lower = two(temperature=1.0, vae_temperature=0.0)
    z0 = per_sample_normal(tuple(run.vae.latent_shape), sample_generators(7, 0, 2))
    assert torch.allclose(no_lower, run.vae.decode(z0, temperature=0.0), atol=1e-6)  # lower groups exactly 0
    no_top = two(temperature=0.0, vae_temperature=1.0)
    gen = sample_generators(7, 0, 1)[0]
    per_sample_normal(tuple(run.vae.latent_shape), [gen])  # sample 0's stream: its z0 draw, then its lower groups
    assert torch.allclose(no_top[:1], run.vae.decode(torch.zeros_like(z0[:1]), temperature=1.0, generator=gen),
                          atol=1e-6)
    assert not torch.allclose(no_lower, two(), atol=1e-4) and not torch.allclose(no_top, two(), atol=1e-4)


def test_lsgm_samples_agree_across_batch_sizes(tmp_path):
    run = load_run(_lsgm_run(tmp_path))
    tight = dataclasses.replace(ODE, tolerance=1e-6)
    x3, x5 = _samples(run, 10, 3, tight), _samples(run, 10, 5, tight)
    # same noise per sample; the batch is one adaptive ODE system, so the images agree to solver accuracy
    assert torch.allclose(x3, x5, atol=1e-3)


# ------------------------------------------------------------------------------------------------ extractors
def test_classifier_extractor_registers_with_torch_fidelity(tmp_path):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    path = _classifier_file(tmp_path / "clf.pt")
    name = features_mod.register_classifier_extractor()
    assert features_mod.register_classifier_extractor() == name  # idempotent
    assert FEATURE_EXTRACTORS_REGISTRY[name] is features_mod.ClassifierFeatureExtractor
    fe = create_feature_extractor(name, ["features"], cuda=False, verbose=False,
                                  feature_extractor_weights_path=str(path))
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    (feats,) = fe(images)
    assert feats.shape == (5, fe.feature_dim) and torch.isfinite(feats).all()
    ext = features_mod.make_extractor("classifier", path)
    assert ext.metric_name == "fd_digits" and ext.metric_name != "fid"
    assert ext(images).shape == (5, ext.dim)


def test_missing_inception_weights_offline_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv(features_mod.OFFLINE_ENV, "1")
    monkeypatch.delenv(features_mod.INCEPTION_ENV, raising=False)
    with pytest.raises(EvalError, match=features_mod.INCEPTION_FILE):
        features_mod.make_extractor("inception")
    out = tmp_path / "stats.pt"
    assert reference_mod.main(["--dataset", "digits", "--features", "inception", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and features_mod.INCEPTION_FILE in err and "--inception-weights" in err
    assert not out.exists()
    assert reference_mod.main(["--dataset", "digits", "--features", "inception", "--inception-weights",
                         str(tmp_path / "nope.pth"), "--out", str(out)]) == 2
    assert not out.exists()


def test_stats_from_another_extractor_are_rejected(tmp_path, capsys):
    clf_a, clf_b = _classifier_file(tmp_path / "a.pt", 0), _classifier_file(tmp_path / "b.pt", 1)
    stats = tmp_path / "stats.pt"
    assert reference_mod.main(["--dataset", "digits", "--features", "classifier", "--classifier", str(clf_a),
                         "--max-samples", "64", "--out", str(stats)]) == 0
    meta = reference_mod.load_stats(stats)
    assert meta["n"] == 64 and meta["split"] == "train" and meta["version"] == reference_mod.STATS_VERSION
    model, out = _lsgm_run(tmp_path), tmp_path / "fid.json"
    code = eval_cli.main(["fid", "--model", str(model), "--stats", str(stats), "--classifier", str(clf_b),
                          "--out", str(out), "--n-samples", "4"])
    assert code == 2 and not out.exists()
    assert "recompute" in capsys.readouterr().err


def test_missing_model_file_exit_2_without_output(tmp_path, capsys):
    out = tmp_path / "nll.json"
    assert eval_cli.main(["nll", "--model", str(tmp_path / "none" / "model.pt"), "--out", str(out)]) == 2
    assert not out.exists() and "does not exist" in capsys.readouterr().err


def test_diverged_run_gives_nan_metrics_and_exit_0(tmp_path):
    cfg = _cfg("lsgm")
    model = _save_model(tmp_path / "div" / "model.pt", cfg, {}, status="diverged")
    (model.parent / "run.json").write_text(json.dumps({"status": "diverged", "reason": "non-finite loss at step 3"}))
    stats = tmp_path / "stats.pt"
    reference_mod.main(["--dataset", "digits", "--features", "classifier", "--classifier",
                  str(_classifier_file(tmp_path / "c.pt")), "--max-samples", "32", "--out", str(stats)])
    for what, extra in (("nll", []), ("fid", ["--stats", str(stats)]), ("cost", ["--stats", str(stats)])):
        out = tmp_path / f"{what}.json"
        assert eval_cli.main([what, "--model", str(model), "--out", str(out), *extra]) == 0
        rec = json.loads(out.read_text())
        assert rec["status"] == "diverged" and "non-finite" in rec["reason"]
        values = rec["metrics"]["rows"][0] if what == "cost" else rec["metrics"]
        assert any(isinstance(v, float) and math.isnan(v) for v in values.values())


# ------------------------------------------------------------------------------------------------ end to end
def _train(module: str, argv: list[str]) -> None:
    import importlib

    assert importlib.import_module(module).main(argv) == 0


def _smoke_models(tmp: Path) -> dict[str, Path]:
    """Smoke-train classifier, VAE and LSGM through the CLIs (LSGM built directly if its trainer is absent)."""
    clf_cfg = tmp / "clf.yaml"
    save_run_config(apply_overrides(RunConfig(kind="classifier", name="clf"), ["train.steps=60", "train.global_batch=64",
                                                                              "train.log_every=30"]), clf_cfg)
    _train("lsgm.train.classifier", ["--config", str(clf_cfg), "--out", str(tmp / "clf")])
    vae_cfg = tmp / "vae.yaml"
    save_run_config(_cfg("vae", "train.steps=8", "train.global_batch=16", "train.log_every=4", "train.val_batches=1"),
                    vae_cfg)
    _train("lsgm.train.vae", ["--config", str(vae_cfg), "--out", str(tmp / "vae")])
    lsgm_cfg = _cfg("lsgm", "train.steps=4", "train.global_batch=16", "train.log_every=2", "train.val_batches=1")
    try:
        import lsgm.train.lsgm  # noqa: F401
    except ImportError:
        blob = torch.load(tmp / "vae" / "model.pt", weights_only=False)
        vae = NVAE(lsgm_cfg.vae, dataset_info("digits"))
        vae.load_state_dict(blob["state"]["vae"])
        score = build_score(lsgm_cfg, vae.latent_shape, make_sde(lsgm_cfg.sde))
        _save_model(tmp / "lsgm" / "model.pt", lsgm_cfg, {"vae": vae.state_dict(), "score": score.state_dict()},
                    ema=copy.deepcopy(score.state_dict()))
    else:
        save_run_config(lsgm_cfg, tmp / "lsgm.yaml")
        _train("lsgm.train.lsgm", ["--config", str(tmp / "lsgm.yaml"), "--vae", str(tmp / "vae" / "model.pt"),
                                   "--out", str(tmp / "lsgm")])
    return {"clf": tmp / "clf" / "model.pt", "vae": tmp / "vae" / "model.pt", "lsgm": tmp / "lsgm" / "model.pt"}


CONTRACT_KEYS = {"kind", "run", "status", "reason", "metrics", "settings", "checkpoint", "provenance"}


def test_end_to_end_smoke_evaluation(tmp_path):
    models = _smoke_models(tmp_path)
    accuracy = json.loads((models["clf"].parent / "run.json").read_text())["validation"]["test_accuracy"]
    assert 0.0 <= accuracy <= 1.0
    stats = tmp_path / "digits-classifier.pt"
    assert reference_mod.main(["--dataset", "digits", "--features", "classifier", "--classifier", str(models["clf"]),
                         "--out", str(stats)]) == 0
    calls = {
        "nll": ["nll", "--iw-samples", "2", "--inner", "2", "--tolerance", "1e-3", "--batch-size", "16",
                "--n-batches", "1"],
        "fid": ["fid", "--stats", str(stats), "--n-samples", "40", "--batch-size", "20", "--tolerance", "1e-3"],
        "cost": ["cost", "--stats", str(stats), "--tolerances", "1e-3", "1e-2", "--batch-size", "4",
                 "--n-batches", "1", "--fd-samples", "20", "--fd-batch-size", "20"],
    }
    for model in ("vae", "lsgm"):
        for what, argv in calls.items():
            out = tmp_path / f"{model}-{what}.json"
            assert eval_cli.main([argv[0], "--model", str(models[model]), "--out", str(out), *argv[1:]]) == 0
            rec = json.loads(out.read_text())
            assert CONTRACT_KEYS <= set(rec) and rec["kind"] == what and rec["status"] == "ok", rec["reason"]
            assert rec["run"]["model"] == model and rec["checkpoint"]["path"] == str(models[model])
            assert rec["checkpoint"]["ema"] == (model == "lsgm")  # the LSGM's score is evaluated with its EMA
            assert {"commit", "versions", "device", "wall_seconds", "config"} <= set(rec["provenance"])
            metrics = rec["metrics"]
            if what == "nll":
                assert metrics["unit"] == "bpd" and metrics["nll"] == pytest.approx(metrics["nll"])
                assert {"nelbo", "nll", "nll_stderr", "reconstruction", "neg_entropy", "cross_entropy"} <= set(metrics)
                assert rec["settings"]["iw_samples"] == 2 and rec["settings"]["bn_mode"] == "eval"
                assert ("nfe_mean" in metrics) == (model == "lsgm")
            elif what == "fid":
                assert "fid" not in metrics and math.isfinite(metrics["fd_digits"])
                assert rec["settings"]["n_samples"] == 40
            else:
                rows = metrics["rows"]
                assert all(math.isfinite(r["fd"]) and r["fd_name"] == "fd_digits" for r in rows)
                assert len(rows) == (2 if model == "lsgm" else 1)


class _Payload:
    """Unpickling this runs ``os.system`` -- what a crafted model.pt would do under weights_only=False."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("loader", ["model", "stats", "classifier"])
def test_a_model_file_with_a_code_payload_is_refused_and_nothing_runs(tmp_path, loader):
    """Checkpoints are data, not code: every user-given torch file loads with weights_only=True."""
    from lsgm.eval.common import EvalError, read_model_file
    from lsgm.eval.features import load_classifier
    from lsgm.eval.reference import load_stats

    marker = tmp_path / "pwned"
    bad = tmp_path / "model.pt"
    torch.save({"config": {}, "state": {}, "evil": _Payload(marker)}, bad)
    load = {"model": read_model_file, "stats": load_stats, "classifier": load_classifier}[loader]
    with pytest.raises(EvalError, match="NOT loaded") as err:
        load(bad)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_cost_warms_up_once_per_evaluation_and_times_the_same_samples(tmp_path, monkeypatch):
    """One warm-up batch per evaluation (at its first setting), not per setting: the timed batches of every setting
    are samples batch_size.. of the seed, whether or not a warm-up precedes them."""
    import lsgm.eval.cost as cost_mod

    calls = []
    real = cost_mod.sample_batch

    def counting(run, start, n, **kw):
        calls.append((kw["sampling"].tolerance, start, n))
        return real(run, start, n, **kw)

    monkeypatch.setattr(cost_mod, "sample_batch", counting)
    rec = cost_mod.evaluate_cost(str(_lsgm_run(tmp_path)), None, tolerances=[1e-2, 1e-1], batch_size=2, n_batches=2,
                                 fd_samples=0, fd_batch_size=4, pc_steps=None, samplers=None, solver="dopri5",
                                 t_eps=1e-5, temperature=1.0, vae_temperature=1.0, snr=0.16, seed=0, bn_mode="eval",
                                 use_ema=True, classifier=None, inception_weights=None, device="cpu")
    assert calls == [(1e-2, 0, 2), (1e-2, 2, 2), (1e-2, 4, 2), (1e-1, 2, 2), (1e-1, 4, 2)]
    assert [r["n_batches"] for r in rec["metrics"]["rows"]] == [2, 2]
    assert rec["settings"]["warmup_batches"] == 1


# ------------------------------------------------------------------------------- nelbo_bound, closed form
def test_nelbo_bound_is_an_upper_bound_of_the_exact_log_likelihood():
    """A Gaussian LSGM with every density known: prior p(z_eps) = N(0, I) (exact score eps = sigma_t z_t of the
    VPSDE), generative step z_0 | z_eps = N(z_eps / m, sigma^2 / m^2 I) (:func:`lsgm.diffusion.objectives.truncation_term`),
    decoder N(z_0, tau^2 I), so p(x) = N(0, (S + tau^2) I) with S = (1 + sigma^2) / m^2, and the exact posterior as
    encoder. At t_eps = 0.26 (m^2 = 0.497): E[nelbo_bound] - (-log p(x)) = D/2 (2 sigma^2 - log(1 + sigma^2)) >= 0
    (the KL of the forward kernel to the true posterior of z_eps); without the truncation term (the old
    ``nelbo_bound``) the difference is -D (artanh sigma^2 - sigma^2) < 0: below the exact -log p(x), so no bound."""
    from types import SimpleNamespace

    from lsgm.diffusion.objectives import truncation_term
    from lsgm.gaussian import gaussian_log_prob
    from lsgm.diffusion.sde import VPSDE

    sde, t_eps, tau, dims, n = VPSDE(0.1, 20.0, 0.0), 0.26, 0.5, 8, 4000
    tt = torch.tensor(t_eps, dtype=torch.float64)
    var, m = float(sde.var(tt)), float(sde.mean_coeff(tt))
    s = (1 + var) / m**2
    a, b = s / (s + tau**2), s * tau**2 / (s + tau**2)  # q(z0 | x) = N(a x, b): the exact posterior

    def encoder(x, generator=None):
        z0 = a * x + math.sqrt(b) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        zeros = torch.zeros(x.shape[0], dtype=x.dtype)
        log_sd = torch.full_like(x, 0.5 * math.log(b))
        return SimpleNamespace(z0=z0, log_q_z0=gaussian_log_prob(z0, a * x, log_sd), lower_log_q=zeros,
                               lower_cross_entropy=zeros,
                               reconstruction=-gaussian_log_prob(x, z0, torch.full_like(x, math.log(tau))))

    run = SimpleNamespace(vae=encoder, score=lambda z_t, t: append_sigma(sde, t, z_t), sde=sde,
                          cfg=SimpleNamespace(sde=SimpleNamespace(t_eps=t_eps)))
    x = math.sqrt(s + tau**2) * torch.randn(n, 2, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    truth = -gaussian_log_prob(x, torch.zeros_like(x), torch.full_like(x, 0.5 * math.log(s + tau**2)))
    ps = PriorSettings("dsm", t_eps=t_eps, tolerance=1e-5, solver="dopri5", probe="gaussian", inner=1, t_draws=8)
    bound = batch_terms(run, x, ps, iw_samples=1, seed=0, batch_index=0).nelbo_bound
    old = bound - truncation_term(sde, t_eps, dims)

    for value, exact in ((bound, dims / 2 * (2 * var - math.log(1 + var))), (old, -dims * (math.atanh(var) - var))):
        gap = value - truth
        se = float(gap.std()) / math.sqrt(n)
        assert abs(float(gap.mean()) - exact) < 5 * se, (float(gap.mean()), exact, se)
    assert float((bound - truth).mean()) > 10 * float((bound - truth).std()) / math.sqrt(n)  # a bound
    assert float((old - truth).mean()) < -3 * float((old - truth).std()) / math.sqrt(n)  # the old one: below -log p


def append_sigma(sde, t, z_t):
    """The exact eps-prediction sigma_t z_t of N(0, I) marginals (VPSDE)."""
    return sde.var(t).sqrt().view(-1, *([1] * (z_t.dim() - 1))).to(z_t) * z_t


def test_truncation_term_vanishes_where_the_mean_coefficient_is_one():
    from lsgm.diffusion.objectives import truncation_term
    from lsgm.diffusion.sde import VESDE, GeometricVPSDE, VPSDE

    assert truncation_term(VESDE(0.01, 50.0), 1e-5, 100) == 0.0
    assert truncation_term(GeometricVPSDE(3e-5, 0.999, 3e-5), 0.0, 100) == pytest.approx(0.0, abs=1e-12)
    vp = VPSDE(0.1, 20.0, 0.0)  # D/2 int_0^eps beta = D/2 (beta_0 eps + (beta_1 - beta_0) eps^2 / 2)
    assert truncation_term(vp, 1e-2, 3072) == pytest.approx(3072 / 2 * (0.1e-2 + 19.9e-4 / 2), rel=1e-9)


# ------------------------------------------------------------------------------------------------ faults, bad input
class _Computed(Exception):
    """Raised by a stand-in for the work a command does: the test fails if the work started."""


def _work(*args, **kwargs):
    raise _Computed("the command started its work before checking its outputs")


def _unwritable_case(tmp_path: Path, monkeypatch, command: str) -> tuple[list[str], Path]:
    """(argv of ``lsgm <command>`` whose output lies under a regular file, that output); the command's work is
    replaced by :func:`_work`."""
    from lsgm.data import miniature
    from lsgm.official import importer as official_import
    from lsgm.report import cli as report_cli
    from lsgm.train import cli as train_cli

    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder should be\n")
    out = blocker / "sub" / "out"
    model = str(_lsgm_run(tmp_path))
    monkeypatch.setattr(eval_cli, "run_evaluation", _work)
    monkeypatch.setattr(reference_mod, "make_extractor", _work)
    monkeypatch.setattr(train_cli, "Run", _work)
    monkeypatch.setattr(report_cli, "load_metrics", _work)
    monkeypatch.setattr(report_cli, "run_variance", _work)
    monkeypatch.setattr(miniature, "write_miniature", _work)
    monkeypatch.setattr(official_import, "import_checkpoint", _work)
    what = command.split()[-1]
    stats = ["--stats", str(tmp_path / "stats.pt")] if what in ("fid", "cost") else []
    argv = {
        "evaluate": ["evaluate", what, "--model", model, "--out", f"{out}.{'png' if what == 'samples' else 'json'}",
                     *stats],
        "fid-stats": ["fid-stats", "--dataset", "digits", "--features", "inception", "--out", f"{out}.pt"],
        "train-vae": ["train-vae", "--config", str(_write_vae_config(tmp_path)), "--out", str(out)],
        "report": ["report", what, "--metrics", str(tmp_path / "m.json"), "--scale", "smoke", "--out-dir", str(out)],
        "make-data": ["make-data", "--dataset", "mnist", "--root", str(out), "--n-train", "8", "--n-test", "8"],
        "import-official": ["import-official", str(tmp_path / "checkpoint.pt"), "--out", f"{out}.pt"],
    }[command.split()[0]]
    if command == "report variance":
        argv[2] = "--models"
    return argv, out


def _write_vae_config(tmp_path: Path) -> Path:
    path = tmp_path / "vae.yaml"
    save_run_config(_cfg("vae"), path)
    return path


UNWRITABLE = ["evaluate nll", "evaluate fid", "evaluate cost", "evaluate samples", "fid-stats", "train-vae",
              "report tables", "report figure4", "report variance", "make-data", "import-official"]


@pytest.mark.parametrize("command", UNWRITABLE)
def test_an_unwritable_output_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, command):
    """Every command checks that it can write its outputs before it works (a 50,000-sample FID must not end in a
    PermissionError traceback): exit 2, one line naming the path."""
    from lsgm.cli import main

    argv, out = _unwritable_case(tmp_path, monkeypatch, command)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "a-file") in err, err
    assert "is a file" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_folder_without_write_permission_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(eval_cli, "run_evaluation", _work)
    locked.chmod(0o555)
    try:
        assert eval_cli.main(["nll", "--model", str(_lsgm_run(tmp_path)), "--out", str(locked / "nll.json")]) == 2
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(locked) in err and "ermission denied" in err, err


NOT_TORCH = {"text": b"this is a text file, not a checkpoint\n",
             "random": bytes((i * 7919 + 13) % 251 for i in range(4096))}


@pytest.mark.parametrize("content", sorted(NOT_TORCH))
def test_a_non_torch_model_file_says_it_is_not_a_model_file(tmp_path, capsys, content):
    """Not 'holds objects other than tensors ... would run code': that is for a pickle with classes in it."""
    bad = tmp_path / "model.pt"
    bad.write_bytes(NOT_TORCH[content])
    out = tmp_path / "nll.json"
    assert eval_cli.main(["nll", "--model", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a model file" in err and "run code" not in err, err
    assert not out.exists()


def test_a_truncated_model_file_is_called_corrupt(tmp_path, capsys):
    model = _lsgm_run(tmp_path)
    model.write_bytes(model.read_bytes()[:1000])
    assert eval_cli.main(["nll", "--model", str(model), "--out", str(tmp_path / "nll.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupted or truncated" in err and str(model) in err, err


@pytest.fixture(scope="module")
def stats_file(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("stats")
    stats = tmp / "stats.pt"
    assert reference_mod.main(["--dataset", "digits", "--features", "classifier", "--classifier",
                         str(_classifier_file(tmp / "c.pt")), "--max-samples", "32", "--out", str(stats)]) == 0
    return stats


def _damage(stats: dict, how: str) -> dict:
    mu, sigma = stats["mu"], stats["sigma"]
    if how == "short mu":
        stats["mu"] = mu[:-1]
    elif how == "non-square sigma":
        stats["sigma"] = sigma[:, :-1]
    elif how == "NaN":
        stats["sigma"] = sigma.clone()
        stats["sigma"][0, 0] = math.nan
    elif how == "other D":
        stats["mu"], stats["sigma"] = mu[:5].clone(), sigma[:5, :5].clone()
    return stats


@pytest.mark.parametrize("how, message", [("short mu", "shape"), ("non-square sigma", "shape"),
                                          ("NaN", "NaN or inf"), ("other D", "features"),
                                          ("random bytes", "is not a statistics file")])
def test_bad_statistics_are_refused_before_sampling(tmp_path, monkeypatch, capsys, stats_file, how, message):
    """Reference statistics with wrong shapes, NaN, a dimension the extractor does not give, or not a torch file: one
    line at load, before any sample is drawn (not an AssertionError or LinAlgError after sampling)."""
    bad = tmp_path / "stats.pt"
    if how == "random bytes":
        bad.write_bytes(NOT_TORCH["random"])
    else:
        torch.save(_damage(torch.load(stats_file, weights_only=True), how), bad)
    monkeypatch.setattr(fid_mod, "sample_features", _work)
    out = tmp_path / "fid.json"
    code = eval_cli.main(["fid", "--model", str(_lsgm_run(tmp_path)), "--stats", str(bad), "--out", str(out),
                          "--n-samples", "8", "--batch-size", "8"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(bad) in err and message in err, err
    assert not out.exists()

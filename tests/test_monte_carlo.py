"""The evaluations' Monte Carlo error in the open: every run and every evaluation draws its own noise (derived from
the configured seed, the run's name and the evaluation, and recorded), and each metric records the standard error of
its draws."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lsgm.config import RunConfig, apply_overrides, to_dict
from lsgm.data import dataset_info
from lsgm.eval import cli as eval_cli
from lsgm.eval import reference as reference_mod
from lsgm.controls import draws_name
from lsgm.eval.common import evaluation_seed, load_run
from lsgm.eval.nll import PriorSettings, prior_term
from lsgm.nets.classifier import FeatureClassifier
from lsgm.nets.nvae import NVAE
from lsgm.score import build_score
from lsgm.diffusion.sde import make_sde
from lsgm.utils import atomic_torch_save

TINY = ["vae.num_channels=8", "vae.num_latent_per_group=2", "vae.use_se=false", "vae.num_mix=2", "score.nf=8",
        "score.ch_mult=[1]"]


def _seed_copies(tmp_path: Path) -> list[Path]:
    """One LSGM's weights saved as the runs of two training seeds (names ...-s0 and ...-s1): whatever differs between
    their evaluations is the evaluations' own draws."""
    torch.manual_seed(0)
    paths = []
    for seed in (0, 1):
        cfg = apply_overrides(RunConfig(kind="lsgm", name=f"quick/digits/lsgm/test-s{seed}", seed=seed), TINY)
        if seed == 0:
            vae = NVAE(cfg.vae, dataset_info(cfg.data.name))
            score = build_score(cfg, vae.latent_shape, make_sde(cfg.sde))
        path = tmp_path / f"s{seed}" / "model.pt"
        atomic_torch_save({"config": to_dict(cfg), "status": "completed", "step": 3,
                           "state": {"vae": vae.state_dict(), "score": score.state_dict()},
                           "ema": score.state_dict()}, path)
        paths.append(path)
    return paths


def test_the_evaluation_seed_differs_by_run_and_evaluation_and_is_stable():
    a = evaluation_seed(0, "quick/digits/lsgm/balanced-s0", "nll")
    assert a == evaluation_seed(0, "quick/digits/lsgm/balanced-s0", "nll")  # a rerun draws the same
    others = {evaluation_seed(0, "quick/digits/lsgm/balanced-s1", "nll"),
              evaluation_seed(0, "quick/digits/lsgm/balanced-s0", "fid"),
              evaluation_seed(1, "quick/digits/lsgm/balanced-s0", "nll"),
              evaluation_seed(0, "quick/digits/vae/balanced-s0", "nll"),
              evaluation_seed(0, "quick/digits/lsgm/geometric-init-s0", "nll"),
              evaluation_seed(0, "quick/digits/lsgm/fid-s0", "nll")}
    assert a not in others and len(others) == 6
    assert 0 <= a < 2**63


def test_a_control_at_initialisation_draws_what_its_lsgm_draws():
    """Common random numbers: learned = LSGM - at initialisation is a paired difference of one training seed."""
    for evaluation in ("nll", "fid", "cost"):
        assert (evaluation_seed(0, "quick/digits/lsgm/balanced_init-s2", evaluation)
                == evaluation_seed(0, "quick/digits/lsgm/balanced-s2", evaluation))
    assert draws_name("paper/cifar10/lsgm/nll_init-s0") == "paper/cifar10/lsgm/nll-s0"
    assert draws_name("quick/digits/lsgm/geometric-init-s0") == "quick/digits/lsgm/geometric-init-s0"
    assert draws_name("quick/digits/vae/balanced-s0") == "quick/digits/vae/balanced-s0"


def test_two_training_seeds_are_never_evaluated_with_the_same_draws(tmp_path):
    """Identical weights under two training seeds' names: their per-example NELBOs (encoder noise, DSM times and noise)
    must differ. With one evaluation seed for every run, as before, they were identical and the spread over seeds
    hid the evaluation's own error."""
    outs = []
    for i, model in enumerate(_seed_copies(tmp_path)):
        out = tmp_path / f"nll{i}.json"
        assert eval_cli.main(["nll", "--model", str(model), "--out", str(out), "--prior", "dsm", "--t-draws", "4",
                              "--batch-size", "8", "--n-batches", "1", "--seed", "0"]) == 0
        outs.append(json.loads(out.read_text()))
    seeds = [o["settings"]["eval_seed"] for o in outs]
    assert seeds[0] != seeds[1] and all(o["settings"]["seed"] == 0 for o in outs)
    a, b = (o["per_example"]["nelbo_bound"] for o in outs)
    assert len(a) == len(b) == 8
    assert all(x != y for x, y in zip(a, b)), "the two seeds' evaluations shared their draws"


def test_two_training_seeds_draw_different_samples(tmp_path):
    """The FD's samples of the two seeds' runs differ (and each records its derived seed and the FD's standard
    error)."""
    stats = tmp_path / "stats.pt"
    torch.manual_seed(0)
    net = FeatureClassifier(1, 10)
    atomic_torch_save({"config": to_dict(RunConfig(kind="classifier")), "status": "completed", "step": 1,
                       "state": {"classifier": net.state_dict()}, "ema": None, "arch": net.hparams}, tmp_path / "c.pt")
    assert reference_mod.main(["--dataset", "digits", "--features", "classifier", "--classifier", str(tmp_path / "c.pt"),
                         "--max-samples", "32", "--out", str(stats)]) == 0
    records = []
    for i, model in enumerate(_seed_copies(tmp_path)):
        out = tmp_path / f"fid{i}.json"
        assert eval_cli.main(["fid", "--model", str(model), "--stats", str(stats), "--out", str(out), "--n-samples",
                              "8", "--batch-size", "8", "--tolerance", "1e-3", "--seed", "0"]) == 0
        records.append(json.loads(out.read_text()))
    values = [r["metrics"]["fd_digits"] for r in records]
    assert values[0] != values[1]
    assert all(r["metrics"]["fd_digits_stderr"] > 0 for r in records)
    assert records[0]["settings"]["eval_seed"] != records[1]["settings"]["eval_seed"]


def test_the_dsm_terms_monte_carlo_error_is_the_spread_of_repeated_draws(tmp_path):
    """The recorded Monte Carlo standard error of the DSM prior term (from the within-example variance of its t
    draws) is the standard deviation of the dataset mean over independent repetitions (within the sampling error of
    the check: 200 repetitions give the std to ~5 %). The backbone is moved off its initialisation (eps' = O(0.1)): at
    eps' ~ 0 the control variate leaves no Monte Carlo error (~1e-6 nats here, float32 rounding), nothing to check."""
    run = load_run(_seed_copies(tmp_path)[0])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in run.score.backbone.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    z0 = torch.randn(16, *run.vae.latent_shape, generator=torch.Generator().manual_seed(3))
    ps = PriorSettings("dsm", t_eps=1e-2, tolerance=1e-5, solver="dopri5", probe="gaussian", inner=1, t_draws=8)
    means, ses = [], []
    for r in range(200):
        term = prior_term(run, z0, ps, torch.Generator().manual_seed(1000 + r))
        means.append(float(term.cross_entropy.mean()))
        ses.append(float(term.mc_var.sum().sqrt() / z0.shape[0]))
    spread = torch.tensor(means).std().item()
    recorded = math.sqrt(sum(s * s for s in ses) / len(ses))
    assert recorded == pytest.approx(spread, rel=0.2), (recorded, spread)

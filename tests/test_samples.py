"""Sample grids (the paper's Figure 5): ``lsgm evaluate samples`` on tiny trained runs, and the plan's grid targets.

The models are trained for two steps through the training CLIs on the binary digits stand-in (the MNIST/OMNIGLOT
stand-in), so the grid must hold Bernoulli means (grey levels), never a binarized draw.
"""

from __future__ import annotations

import importlib
import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lsgm.config import RunConfig, apply_overrides, save_run_config, to_dict
from lsgm.data import dataset_info
from lsgm.eval import cli as eval_cli
from lsgm.eval.common import evaluation_seed, load_run
from lsgm.eval.generate import make_sampling, sample_batch
from lsgm.eval.samples import PADDING, grid_size, sidecar_path
from lsgm.plan import Plan, eval_args, resolved_settings
from lsgm.score import build_score
from lsgm.diffusion.sde import make_sde
from lsgm.utils import atomic_torch_save

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.name=digits_binary", "vae.num_channels=8", "vae.num_latent_per_group=2", "vae.use_se=false",
        "score.nf=8", "score.ch_mult=[1]", "train.steps=2", "train.global_batch=8", "train.log_every=1",
        "train.val_batches=1"]
FLAGS = ["--n", "6", "--nrow", "4", "--batch-size", "4", "--tolerance", "1e-3"]  # 2 batches, 2 grid rows


def _train(kind: str, tmp: Path, *extra: str) -> Path:
    cfg = tmp / f"{kind}.yaml"
    save_run_config(apply_overrides(RunConfig(kind=kind, name=f"test-{kind}"), TINY), cfg)
    module = importlib.import_module(f"lsgm.train.{kind}")
    assert module.main(["--config", str(cfg), "--out", str(tmp / kind), *extra]) == 0
    return tmp / kind / "model.pt"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    vae = _train("vae", tmp)
    return {"vae": vae, "lsgm": _train("lsgm", tmp, "--vae", str(vae))}


def _grid(png: Path) -> np.ndarray:
    return np.asarray(Image.open(png).convert("L"))


def _cells(grid: np.ndarray, n: int, nrow: int, size: int) -> np.ndarray:
    """The n images [n, size, size] of a make_grid grid (padding removed)."""
    step = size + PADDING
    return np.stack([grid[PADDING + (k // nrow) * step:][:size, PADDING + (k % nrow) * step:][:, :size]
                     for k in range(n)])


@pytest.mark.parametrize("kind", ["vae", "lsgm"])
def test_grid_png_and_sidecar(models, tmp_path, kind):
    out = tmp_path / "grid.png"
    assert eval_cli.main(["samples", "--model", str(models[kind]), "--out", str(out), *FLAGS]) == 0
    assert Image.open(out).size == grid_size(6, 4, 8) == (4 * (8 + PADDING) + PADDING, 2 * (8 + PADDING) + PADDING)
    rec = json.loads(sidecar_path(out).read_text())
    assert sidecar_path(out) == tmp_path / "grid.json"
    assert rec["kind"] == "samples" and rec["status"] == "ok" and rec["reason"] is None
    assert rec["run"]["model"] == kind and rec["run"]["dataset"] == "digits_binary"
    assert rec["checkpoint"] == {"path": str(models[kind]), "ema": kind == "lsgm", "step": 2}
    assert {"commit", "versions", "device", "wall_seconds", "config"} <= set(rec["provenance"])
    s = rec["settings"]
    assert (s["n"], s["nrow"], s["seed"], s["batch_size"], s["bn_mode"]) == (6, 4, 0, 4, "eval")
    assert (s["sampler"], s["tolerance"]) == (("ode", 1e-3) if kind == "lsgm" else (None, None))
    assert rec["image"] == {"path": str(out), "width": 42, "height": 22, "cols": 4, "rows": 2, "image_size": 8,
                            "channels": 1, "placeholder": False}
    assert (rec["metrics"]["nfe_mean"] > 0) == (kind == "lsgm")


def test_binary_grid_holds_bernoulli_means_not_a_binarized_draw(models, tmp_path):
    """Figure 5 shows decoder means: grey levels in (0, 1), the very images the FID evaluation samples."""
    out = tmp_path / "grid.png"
    assert eval_cli.main(["samples", "--model", str(models["lsgm"]), "--out", str(out), *FLAGS]) == 0
    cells = _cells(_grid(out), 6, 4, 8)
    grey = (cells > 0) & (cells < 255)
    assert grey.mean() > 0.2, f"only {grey.mean():.0%} of the pixels are grey levels: a binarized draw?"
    assert 0.0 < json.loads(sidecar_path(out).read_text())["metrics"]["pixel_mean"] < 1.0
    run = load_run(models["lsgm"])
    sampling = make_sampling("lsgm", sampler="ode", tolerance=1e-3, pc_steps=None, snr=0.16, solver="dopri5",
                             t_eps=1e-5, temperature=1.0, vae_temperature=1.0)
    seed = json.loads(sidecar_path(out).read_text())["settings"]["eval_seed"]
    assert seed == evaluation_seed(0, run.cfg.name, "fid")  # the FID's own draws
    images = torch.cat([sample_batch(run, start, min(4, 6 - start), seed=seed, sampling=sampling, device="cpu").images
                        for start in (0, 4)])
    expected = (images[:, 0] * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    assert np.abs(cells.astype(int) - expected.astype(int)).max() <= 1  # the same samples as the FID's


def test_diverged_run_gives_a_placeholder_and_exit_0(tmp_path):
    cfg = apply_overrides(RunConfig(kind="lsgm", name="div"), TINY)
    model = tmp_path / "div" / "model.pt"
    atomic_torch_save({"config": to_dict(cfg), "status": "diverged", "step": 1, "state": {}, "ema": None}, model)
    (model.parent / "run.json").write_text(json.dumps({"status": "diverged", "reason": "non-finite loss at step 1"}))
    out = tmp_path / "grid.png"
    assert eval_cli.main(["samples", "--model", str(model), "--out", str(out), *FLAGS]) == 0
    grid = _grid(out)
    assert grid.shape == (22, 42) and len(np.unique(grid)) > 1  # the grid's size, with the word on it
    rec = json.loads(sidecar_path(out).read_text())
    assert rec["status"] == "diverged" and "non-finite" in rec["reason"] and rec["image"]["placeholder"]
    assert math.isnan(rec["metrics"]["pixel_mean"])


def test_pixel_sgm_pc_grid_and_pc_refused_for_a_latent_model(models, tmp_path, capsys):
    torch.manual_seed(0)
    cfg = apply_overrides(RunConfig(kind="sgm", name="sgm"), [*TINY, "sde.type=vesde", "sde.sigma_max=4.8"])
    info = dataset_info(cfg.data.name)
    score = build_score(cfg, (info.channels, info.image_size, info.image_size), make_sde(cfg.sde))
    model = tmp_path / "sgm" / "model.pt"
    atomic_torch_save({"config": to_dict(cfg), "status": "completed", "step": 0, "state": {"score": score.state_dict()},
                       "ema": score.state_dict()}, model)
    out = tmp_path / "sgm.png"
    assert eval_cli.main(["samples", "--model", str(model), "--out", str(out), *FLAGS, "--sampler", "pc",
                          "--pc-steps", "2"]) == 0
    s = json.loads(sidecar_path(out).read_text())["settings"]
    assert (s["sampler"], s["pc_steps"], s["tolerance"], s["temperature"]) == ("pc", 2, None, None)
    bad = tmp_path / "bad.png"
    assert eval_cli.main(["samples", "--model", str(models["vae"]), "--out", str(bad), "--sampler", "pc",
                          "--pc-steps", "2"]) == 2
    assert not bad.exists() and "pixel SGM's sampler" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the plan
# vae (incl. the control) + lsgm (6 main, 17 Table 6 cells) + pixel SGMs (2; 1 where the CIFAR-10 one is same_as)
TRAINED = {"smoke": 40, "quick": 38, "paper": 41}  # trained models per seed: 8 of them the LSGMs at initialisation


@pytest.mark.parametrize("scale", ["smoke", "quick", "paper"])
def test_plan_has_one_grid_per_trained_model_at_its_first_seed(scale):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["scales"][scale]["seeds"] = [3, 1]
    plan = Plan(config, scale)
    grids = [t for t in plan.targets() if "/samples/" in t]
    trained = plan.trained_models()
    # the Table 6 grid (17 cells, 2 SDE controls, its backbone) on the first table6_n_seeds seeds only
    grid_once = 20 if config["scales"][scale].get("table6_n_seeds") == 1 else 0
    assert len(trained) == 2 * TRAINED[scale] - grid_once and len(grids) == TRAINED[scale]
    assert grids == plan.samples_targets() and all(g.endswith("-s3.png") for g in grids)
    assert sorted(grids) == sorted(r.samples_path for r in trained if r.seed == 3)
    assert {r.kind for r in trained} == {"vae", "lsgm", "sgm"}
    # every trained model's model.pt is needed by a metrics target (no grid trains an otherwise unused model)
    needed = {r.model_path for r in plan.runs.values() if r.evals} | {r.backbone.model_path for r in plan.runs.values()
                                                                     if r.evals and r.backbone}
    assert {r.model_path for r in trained} == needed - {r.model_path for r in plan.runs.values()
                                                        if r.kind == "classifier"}
    # the flags parse as `lsgm evaluate samples` options
    parser = eval_cli.build_parser()
    for run in trained:
        args = parser.parse_args(["samples", "--model", "m.pt", "--out", "g.png",
                                  *shlex.split(eval_args(run.eval_settings["samples"]))])
        fid = run.eval_settings["fid"]
        if run.kind == "sgm":  # the pixel SGM's own sampler, as its FD
            assert args.sampler == "pc" == fid["sampler"] and args.pc_steps and args.snr == fid["snr"]
        elif run.kind == "lsgm":  # the FID's / FD's ODE settings (the official defaults where a model has no FID)
            fid = resolved_settings("fid", fid)
            assert (args.tolerance, args.t_eps) == (fid["tolerance"], fid["t_eps"])

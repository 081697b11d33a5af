"""How fast a quick LSGM recipe's score prior learns: held-out cross entropy against training steps.

The quick scale's LSGMs train their score prior for a few hundred steps; whether that is enough for the prior to
beat the backbone's N(0, I) is a measurement, not an assumption. This script trains the score prior of one quick
LSGM recipe (``--recipe``, resolved by ``lsgm/plan/`` exactly as the DAG resolves it) on the latents of its FROZEN
quick backbone (``objective.train_vae = false``: the encoder cannot move, so every cross entropy below is of the same
latents), once per budget in ``--budgets``. Each budget is a run of its own whose EMA decay and warm-up follow the
scaling rules of ``lsgm.plan.scaling`` (as the DAG's quick runs get them), or the values given with ``--ema-decay`` /
``--warmup-steps`` (recorded as such).

Held-out cross entropy (bits/dim of the images, the tables' unit): each of the backbone's test digits is encoded with
``--posterior-samples`` encoder draws; -log p(z0) of a draw is Theorem 1's denoising bound (r_ll importance-sampled
t in [training t_eps, 1], ``--t-draws`` draws, plus the truncation term), the plain average of the draws: the DAG's
``nelbo_bound`` estimates the same quantity with a control variate (benchmarks/dsm_estimator.py compares the two). Every model is evaluated on the same latents with the same (t, noise) draws, so differences between
models are paired per test digit; their standard errors are over the test digits (data and Monte Carlo error
together). Beside it:

- N(0, I): the exact cross entropy of the backbone's own prior on the same latents;
- the initialisation: the recipe's model at step 0 (initial mixing logit, eps' ~ 0), evaluated like the others;
- the headroom: simple densities fitted on training-digit latents (``--posterior-samples`` each) and scored on the
  held-out ones: a full-covariance Gaussian (Ledoit-Wolf shrinkage) and a diagonal Gaussian mixture.

    python benchmarks/prior_learning.py [--recipe balanced] [--budgets 200 1000 3000] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from lsgm.config import RunConfig, from_dict
from lsgm.io import atomic_write_json, provenance

ROOT = Path(__file__).resolve().parent.parent
LOG2 = math.log(2.0)


def quick_runs(recipe: str, seed: int, steps: int | None = None) -> tuple[dict, dict]:
    """(backbone run config, LSGM run config) of ``recipe`` at the quick scale, as the DAG resolves them; ``steps``:
    as the DAG would resolve it with that many stage-2 steps (the scaling rules of lsgm/plan/scaling.py included)."""
    from lsgm.plan import Plan

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    if steps is not None:
        spec = config["scales"]["quick"]["runs"].setdefault("lsgm", {}).setdefault(recipe, {})
        spec.setdefault("config", {}).setdefault("train", {})["steps"] = steps
    plan = Plan(config, "quick")
    lsgm = next(r for r in plan.runs.values() if r.kind == "lsgm" and r.name == recipe and r.seed == seed)
    return copy.deepcopy(lsgm.backbone.config), copy.deepcopy(lsgm.config)


def train_backbone(cfg: dict, out: Path) -> Path:
    """The quick backbone, trained as ``lsgm train-vae`` trains it; -> its model.pt."""
    from lsgm.train.loop import train
    from lsgm.train.run import Run
    from lsgm.train.vae import VAETask

    run = Run(from_dict(RunConfig, cfg), out)
    try:
        train(run, VAETask(run))
    finally:
        run.close()
    return out / "model.pt"


class Latents:
    """Encoder draws of a split: ``z`` [N * K, C, H, W] in image-major order (image i's draws are rows i*K .. i*K+K-1)."""

    def __init__(self, vae, dataset, samples: int, seed: int, batch: int = 100):
        from lsgm.eval.common import sample_seed

        zs = []
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False)
        torch.manual_seed(seed)  # dynamic binarisation (binary data) draws from the global generator
        with torch.no_grad():
            for b, (x, _) in enumerate(loader):
                draws = []
                for k in range(samples):
                    gen = torch.Generator().manual_seed(sample_seed(seed, b, stream=2 + k))
                    draws.append(vae(x, generator=gen).z0)
                zs.append(torch.stack(draws, 1).flatten(0, 1))  # (B * K, C, H, W), image-major
        self.z, self.samples = torch.cat(zs), samples

    @property
    def images(self) -> int:
        return self.z.shape[0] // self.samples

    def per_image(self, values: torch.Tensor) -> torch.Tensor:
        """[N * K] per-draw values -> [N] per-image means."""
        return values.reshape(self.images, self.samples).mean(1)


def dsm_cross_entropy(score, sde, t_eps: float, z: torch.Tensor, t_draws: int, seed: int,
                      batch: int = 2000) -> torch.Tensor:
    """Theorem 1's bound of -log p(z) [N] (nats) under ``score``: r_ll importance-sampled t, ``t_draws`` draws, the
    truncation term; the same (t, noise) draws for every model (a generator seeded by ``seed`` per chunk)."""
    from lsgm.diffusion.objectives import prior_cross_entropy, truncation_term
    from lsgm.diffusion.time_sampling import make_time_sampler

    sampler = make_time_sampler("ll", "is", sde, t_eps)
    out = []
    with torch.no_grad():
        for c, chunk in enumerate(z.split(batch)):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + c)
            draws = [prior_cross_entropy(chunk, score, sde, sampler, generator=gen) for _ in range(t_draws)]
            out.append(torch.stack(draws).double().mean(0))
    return torch.cat(out) + truncation_term(sde, t_eps, z[0].numel())


def paired(a: torch.Tensor, b: torch.Tensor | None = None) -> tuple[float, float]:
    """Mean and standard error over images of ``a`` (or of ``a - b``, paired per image)."""
    d = (a - b if b is not None else a).double()
    return float(d.mean()), float(d.std(unbiased=True) / math.sqrt(d.numel()))


def headroom(train: Latents, test: Latents, to_bpd, components: int, seed: int) -> dict:
    """-log p of the held-out latents (per image, bpd) under densities fitted on the training latents, and their gain
    over N(0, I) (paired SE)."""
    from sklearn.covariance import LedoitWolf
    from sklearn.mixture import GaussianMixture
    from scipy.stats import multivariate_normal

    from lsgm.gaussian import normal_cross_entropy

    xtr = train.z.flatten(1).double().numpy()
    xte = test.z.flatten(1).double().numpy()
    normal = test.per_image(normal_cross_entropy(test.z.double()))
    lw = LedoitWolf().fit(xtr)
    gauss = -multivariate_normal(mean=lw.location_, cov=lw.covariance_).logpdf(xte)
    gmm = GaussianMixture(components, covariance_type="diag", random_state=seed, max_iter=200).fit(xtr)
    mix = -gmm.score_samples(xte)
    out = {}
    for name, nats, what in (("gaussian_ledoit_wolf", gauss, "full-covariance Gaussian, Ledoit-Wolf shrinkage "
                                                               f"(shrinkage {lw.shrinkage_:.3g})"),
                             ("gaussian_mixture", mix, f"{components}-component diagonal Gaussian mixture")):
        ce = test.per_image(torch.from_numpy(nats))
        m, se = paired(to_bpd(ce))
        gain, gain_se = paired(to_bpd(ce), to_bpd(normal))
        nats_gain = paired(ce, normal)
        out[name] = {"what": what, "cross_entropy_bpd": m, "stderr_bpd": se, "minus_normal_bpd": gain,
                     "minus_normal_stderr_bpd": gain_se, "minus_normal_nats": nats_gain[0],
                     "minus_normal_stderr_nats": nats_gain[1]}
    return out


def train_prior(lsgm_cfg: dict, vae_path: Path, ema_decay: float | None, warmup: int | None,
                out: Path, curve_every: int, evaluate) -> tuple[object, dict, list]:
    """One budget: the recipe's LSGM (``lsgm_cfg``: resolved at the budget's steps) with its VAE frozen; -> (task,
    config used, learning curve)."""
    from lsgm.train.distributed import unwrap
    from lsgm.train.lsgm import LSGMTask
    from lsgm.train.run import Run

    cfg = copy.deepcopy(lsgm_cfg)
    cfg["objective"]["train_vae"] = False
    steps = cfg["train"]["steps"]
    if ema_decay is not None:
        cfg["train"]["ema_decay"] = ema_decay
    if warmup is not None:
        cfg["train"]["score_optim"]["warmup_steps"] = warmup
    run = Run(from_dict(RunConfig, cfg), out)
    task = LSGMTask(run, str(vae_path))
    curve = []
    try:
        for step in range(steps):
            batches = [next(task.loader).to(run.device) for _ in range(run.grad_accum)]
            stats = task.train_step(batches, step)
            if curve_every and (step + 1) % curve_every == 0 and step + 1 < steps:
                net = unwrap(task.score).eval()
                with task.ema.swapped(net):
                    curve.append({"step": step + 1, **evaluate(net), "alpha_mean": stats["alpha_mean"]})
    finally:
        run.close()
    return task, cfg, curve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="balanced", help="quick LSGM recipe (recipes.lsgm.NAME in config.yaml)")
    p.add_argument("--budgets", type=int, nargs="+", default=[200, 1000, 3000], help="stage-2 steps, one run each")
    p.add_argument("--seed", type=int, default=0, help="training seed (the backbone's and the prior's)")
    p.add_argument("--backbone", help="the quick backbone's model.pt (default: train it here)")
    p.add_argument("--ema-decay", type=float, help="override the scaling rule's EMA decay (recorded)")
    p.add_argument("--warmup-steps", type=int, help="override the scaling rule's score warm-up (recorded)")
    p.add_argument("--posterior-samples", type=int, default=8, help="encoder draws per digit")
    p.add_argument("--t-draws", type=int, default=16, help="DSM time draws per encoder draw")
    p.add_argument("--curve-every", type=int, default=0, help="also evaluate every N steps of the longest budget")
    p.add_argument("--components", type=int, default=16, help="Gaussian mixture components (headroom)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prior_learning.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lsgm.data import get_dataset
    from lsgm.eval.common import load_run
    from lsgm.gaussian import normal_cross_entropy
    from lsgm.diffusion.sde import make_sde
    from lsgm.train.distributed import unwrap

    started, load_before = time.time(), os.getloadavg()
    vae_cfg, lsgm_cfg = quick_runs(args.recipe, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vae_path = Path(args.backbone) if args.backbone else train_backbone(vae_cfg, tmp / "vae")
        backbone = load_run(vae_path)
        info = backbone.data
        to_bpd = (lambda nats: nats / (info.eval_dims * LOG2)) if info.unit == "bpd" else (lambda nats: nats)
        sets = {split: get_dataset(info.name, split, root=vae_cfg["data"].get("root"), download=False, augment=False)
                for split in ("train", "test")}
        train_lat = Latents(backbone.vae, sets["train"], args.posterior_samples, seed=1000 + args.seed)
        test_lat = Latents(backbone.vae, sets["test"], args.posterior_samples, seed=2000 + args.seed)
        sde = make_sde(from_dict(RunConfig, lsgm_cfg).sde)
        t_eps = lsgm_cfg["sde"]["t_eps"]
        normal = test_lat.per_image(normal_cross_entropy(test_lat.z.double()))

        def evaluate(score) -> dict:
            ce = test_lat.per_image(dsm_cross_entropy(score, sde, t_eps, test_lat.z, args.t_draws, seed=7))
            m, se = paired(to_bpd(ce))
            d, d_se = paired(to_bpd(ce), to_bpd(normal))
            return {"cross_entropy_bpd": m, "stderr_bpd": se, "minus_normal_bpd": d, "minus_normal_stderr_bpd": d_se,
                    "_per_image": ce}

        rows, curve = [], []
        init_ce = None
        for i, steps in enumerate(sorted(set([0] + args.budgets))):
            last = steps == max(args.budgets)
            t0 = time.time()
            task, cfg, c = train_prior(quick_runs(args.recipe, args.seed, steps)[1], vae_path, args.ema_decay,
                                       args.warmup_steps,
                                       tmp / f"lsgm-{steps}", args.curve_every if last else 0, evaluate)
            train_seconds = time.time() - t0
            net = unwrap(task.score).eval()
            with task.ema.swapped(net):
                res = evaluate(net)
            ce = res.pop("_per_image")
            if steps == 0:
                init_ce = ce
            d, d_se = paired(to_bpd(ce), to_bpd(init_ce))
            row = {"steps": steps, **res, "minus_init_bpd": d, "minus_init_stderr_bpd": d_se,
                   "alpha_mean": float(unwrap(task.score).alpha.detach().mean()), "ema_decay": cfg["train"]["ema_decay"],
                   "warmup_steps": cfg["train"]["score_optim"]["warmup_steps"], "train_seconds": train_seconds,
                   "beats_normal": res["minus_normal_bpd"] + 2 * res["minus_normal_stderr_bpd"] < 0}
            rows.append(row)
            print(f"steps {steps:6d}: CE {row['cross_entropy_bpd']:.4f} bpd, vs N(0,I) {row['minus_normal_bpd']:+.4f}"
                  f" ± {row['minus_normal_stderr_bpd']:.4f}, vs init {d:+.4f} ± {d_se:.4f} (alpha "
                  f"{row['alpha_mean']:.4f}, ema {row['ema_decay']:.4g}, warm-up {row['warmup_steps']}, "
                  f"{train_seconds:.0f} s)", flush=True)
            for point in c:
                point.pop("_per_image")
                curve.append(point)
        room = headroom(train_lat, test_lat, to_bpd, args.components, args.seed)
    for name, r in room.items():
        print(f"headroom {name}: {r['minus_normal_bpd']:+.4f} ± {r['minus_normal_stderr_bpd']:.4f} bpd vs N(0,I)")
    nm, nse = paired(to_bpd(normal))
    quick_steps = quick_runs(args.recipe, args.seed)[1]["train"]["steps"]
    beating = [r["steps"] for r in rows if r["beats_normal"]]
    rate = max((r["steps"] / r["train_seconds"] for r in rows if r["steps"]), default=math.nan)
    verdict = {
        "quick_steps": quick_steps,
        "quick_beats_normal": any(r["beats_normal"] for r in rows if r["steps"] == quick_steps),
        "first_budget_beating_normal": min(beating) if beating else None,
        "rule": "beats N(0, I): cross entropy - N(0, I)'s + 2 paired standard errors < 0",
        "frozen_steps_per_second": rate,
        "note": "steps per second with the VAE frozen on this machine; the DAG trains the VAE jointly (about half as "
                "fast: benchmarks/results/train_throughput.json)"}
    out = {"benchmark": "prior_learning", "recipe": args.recipe, "seed": args.seed, "verdict": verdict,
           "unit": info.unit, "dataset": info.name,
           "normal": {"cross_entropy_bpd": nm, "stderr_bpd": nse, "what": "exact -log N(z0; 0, I) per image"},
           "budgets": rows, "curve": curve, "headroom": room,
           "settings": {"posterior_samples": args.posterior_samples, "t_draws": args.t_draws, "t_eps": t_eps,
                        "test_images": test_lat.images, "train_images": train_lat.images,
                        "ema_decay_override": args.ema_decay, "warmup_override": args.warmup_steps,
                        "torch_threads": torch.get_num_threads(), "command": " ".join(sys.argv),
                        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()}},
           "provenance": provenance(torch.device("cpu"), wall_seconds=time.time() - started)}
    atomic_write_json(Path(args.out), out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

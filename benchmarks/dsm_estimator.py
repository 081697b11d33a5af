"""The DSM prior term's Monte Carlo error: the plain estimator against the control variate, on the same draws.

The evaluation's ``nelbo_bound`` estimates Theorem 1's integral int w_ll/2 E||eps - eps_theta(z_t, t)||^2 dt by time
draws. Most of its noise is the mixed score's Normal part (a chi-square in eps, times importance weights that grow
like 1 / m(t)^2 near t = 1); ``lsgm.diffusion.objectives.prior_cross_entropy_cv`` integrates that part exactly and
draws only the rest. This script evaluates both on the same test digits, encoder draws and (t, eps) draws, for each
``--model`` (a trained LSGM's model.pt, e.g. the quick scale's balanced LSGM and its control at initialisation), and
records per model: each estimator's mean and Monte Carlo standard error at ``--t-draws`` draws (bits/dim, the tables'
unit), their paired difference (zero in expectation: both are unbiased), the variance ratio, and the seconds per
draw. The quick scale's ``t_draws`` is chosen from these numbers (config.yaml).

    snakemake --cores all results/quick/runs/digits/lsgm/balanced-s0/model.pt \\
        results/quick/runs/digits/lsgm/balanced_init-s0/model.pt
    python benchmarks/dsm_estimator.py --model results/quick/runs/digits/lsgm/balanced-s0/model.pt \\
        results/quick/runs/digits/lsgm/balanced_init-s0/model.pt [--t-draws 512] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from lsgm.io import atomic_write_json, provenance

ROOT = Path(__file__).resolve().parent.parent


def compare(model: str, t_draws: int, seed: int) -> dict:
    from lsgm.diffusion.likelihood import nats_to_bpd
    from lsgm.diffusion.objectives import normal_part_expectation, prior_cross_entropy, prior_cross_entropy_cv
    from lsgm.diffusion.time_sampling import make_time_sampler
    from lsgm.eval.common import load_run
    from lsgm.eval.nll import _test_loader

    run = load_run(model, use_ema=True, device=torch.device("cpu"))
    run.vae.eval()
    run.score.eval()
    t_eps = run.cfg.sde.t_eps
    sampler = make_time_sampler("ll", "is", run.sde, t_eps)
    plain, cv, seconds = [], [], {"plain": 0.0, "cv": 0.0}
    with torch.no_grad():
        for i, (x, _) in enumerate(_test_loader(run, "test", 150, None)):
            enc = torch.Generator().manual_seed(seed * 1_000_003 + i)
            z0 = run.vae(x, generator=enc).z0
            expectation = normal_part_expectation(z0, run.score.normal_weight(), run.sde, t_eps)
            draws = {"plain": [], "cv": []}
            for k in range(t_draws):  # the same (t, eps) for both: one generator state per draw, used twice
                state = torch.Generator().manual_seed(seed * 7_919 + i * 100_003 + k)
                for name in ("plain", "cv"):
                    gen = torch.Generator().manual_seed(state.initial_seed())
                    start = time.perf_counter()
                    value = (prior_cross_entropy(z0, run.score, run.sde, sampler, generator=gen).double()
                             if name == "plain" else
                             prior_cross_entropy_cv(z0, run.score, run.sde, sampler, expectation, generator=gen))
                    seconds[name] += time.perf_counter() - start
                    draws[name].append(value)
            plain.append(torch.stack(draws["plain"]))
            cv.append(torch.stack(draws["cv"]))
    plain, cv = torch.cat(plain, 1), torch.cat(cv, 1)  # (T, N) nats
    n = plain.shape[1]
    bpd = lambda v: float(nats_to_bpd(v, run.data.eval_dims))

    def summary(d: torch.Tensor) -> dict:
        return {"mean_bpd": bpd(d.mean()), "mc_stderr_bpd": bpd((d.var(0) / t_draws).sum().sqrt()) / n,
                "seconds_per_draw": seconds["plain" if d is plain else "cv"] / t_draws}

    diff = (plain - cv).mean(0)
    return {"model": model, "run": run.cfg.name, "n_examples": n, "t_draws": t_draws, "t_eps": t_eps,
            "plain": summary(plain), "control_variate": summary(cv),
            "plain_minus_cv_bpd": bpd(diff.mean()), "plain_minus_cv_stderr_bpd": bpd(diff.std() / math.sqrt(n)),
            "variance_ratio": float(plain.var(0).sum() / cv.var(0).sum()),
            "draws_for_equal_error": "the control variate needs variance_ratio times fewer draws for the plain "
                                     "estimator's Monte Carlo error"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", required=True, help="LSGM model.pt files (trained runs)")
    p.add_argument("--t-draws", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dsm_estimator.json"))
    args = p.parse_args(argv)
    missing = [m for m in args.model if not Path(m).is_file()]
    if missing:
        print(f"error: {missing[0]} does not exist; build it first (snakemake --cores all {missing[0]})",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.time()
    rows = [compare(m, args.t_draws, args.seed) for m in args.model]
    for r in rows:
        print(f"{r['run']}: plain {r['plain']['mean_bpd']:.5f} +- {r['plain']['mc_stderr_bpd']:.5f}, "
              f"control variate {r['control_variate']['mean_bpd']:.5f} +- {r['control_variate']['mc_stderr_bpd']:.5f}"
              f" bpd; paired difference {r['plain_minus_cv_bpd']:+.5f} +- {r['plain_minus_cv_stderr_bpd']:.5f}; "
              f"variance ratio {r['variance_ratio']:.0f}")
    atomic_write_json(args.out, {"benchmark": "dsm_estimator", "rows": rows, "seed": args.seed,
                                 "threads": args.threads,
                                 "provenance": provenance(torch.device("cpu"), wall_seconds=time.time() - started)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

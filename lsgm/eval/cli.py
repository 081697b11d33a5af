"""``lsgm evaluate nll | fid | cost | samples``: one metrics JSON per model (samples: a PNG grid and its JSON);
``--model A B --out a.json b.json`` evaluates several models, e.g. the seeds of one run, in one process (one torch
import instead of one per model).

Exit codes: 0 with a complete file (also for a diverged run: NaN metrics and the reason); 2 with a
one-line error on stderr and no output file for unusable input (missing model or statistics, statistics
from another extractor, missing Inception weights offline).
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_BAD_INPUT = 2
# The one home of the evaluation defaults (the library takes every setting as a required argument; the DAG passes
# each one from config.yaml; the benchmarks import these): the official ODE tolerance, end time and solver
# (evaluate_vada.py), the Hutchinson probe, and score_sde's PC corrector signal-to-noise ratio.
ODE_TOLERANCE = 1e-5
ODE_T_EPS = 1e-5
ODE_SOLVER = "dopri5"
PROBE = "gaussian"
PC_SNR = 0.16


def _common(p: argparse.ArgumentParser, out: str = "metrics JSON to write (atomically)") -> None:
    p.add_argument("--model", required=True, nargs="+", help="DIR/model.pt of a training run (one or more)")
    p.add_argument("--out", required=True, nargs="+", help=f"{out}, one per --model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema", dest="ema", action="store_true", default=True, help="use the EMA weights (default)")
    p.add_argument("--no-ema", dest="ema", action="store_false")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def _generation(p: argparse.ArgumentParser) -> None:
    """How samples are generated (every command that samples: fid, cost, samples)."""
    p.add_argument("--solver", default=ODE_SOLVER, help="torchdiffeq method")
    p.add_argument("--t-eps", type=float, default=ODE_T_EPS, help=f"ODE end time (official ode_eps {ODE_T_EPS:g})")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scale of the top latent's starting noise (official --temp)")
    p.add_argument("--vae-temperature", type=float, default=1.0,
                   help="scale of the decoder's lower-scale groups (official --vae_temp)")
    p.add_argument("--bn-mode", default="eval", choices=["eval", "train"])


def _one_sampler(p: argparse.ArgumentParser) -> None:
    """One sampler setting (fid, samples; cost sweeps several)."""
    p.add_argument("--tolerance", type=float, default=ODE_TOLERANCE, help="ODE rtol = atol")
    p.add_argument("--sampler", default="ode", choices=["ode", "pc"],
                   help="pixel SGM: 'pc' samples with predictor-corrector (the original SGM's FID protocol)")
    p.add_argument("--pc-steps", type=int, default=None, help="PC steps (with --sampler pc)")
    p.add_argument("--snr", type=float, default=PC_SNR, help="PC corrector signal-to-noise ratio")


def _sampling(p: argparse.ArgumentParser) -> None:
    """Generation and the features of the FD/FID (fid, cost)."""
    p.add_argument("--stats", help="reference statistics (lsgm fid-stats)")
    _generation(p)
    p.add_argument("--classifier", help="override the classifier model.pt recorded in the statistics")
    p.add_argument("--inception-weights", help="weights-inception-2015-12-05-6726825d.pth (offline); "
                   "also $LSGM_INCEPTION_WEIGHTS")


def _n_batches(value: str) -> int | None:
    return None if value == "all" else int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsgm evaluate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)

    nll = sub.add_parser("nll", help="NELBO split into named terms and the importance-weighted NLL")
    _common(nll)
    nll.add_argument("--prior", default="ode", choices=["ode", "dsm"], help="LSGM prior term (VAE: its Normal prior)")
    nll.add_argument("--iw-samples", type=int, default=1, help="K importance samples")
    nll.add_argument("--inner", type=int, default=1, help="M ODE solves per encoder sample (mean, std. error)")
    nll.add_argument("--batch-size", type=int, default=128)
    nll.add_argument("--tolerance", type=float, default=ODE_TOLERANCE, help="ODE rtol = atol")
    nll.add_argument("--t-eps", type=float, default=None,
                     help=f"default: {ODE_T_EPS:g} (ode), the training t_eps (dsm)")
    nll.add_argument("--probe", default=PROBE, choices=["gaussian", "rademacher"])
    nll.add_argument("--solver", default=ODE_SOLVER)
    nll.add_argument("--t-draws", type=int, default=16,
                     help="time draws per encoder sample of the DSM prior term (--prior dsm, and nelbo_bound)")
    nll.add_argument("--n-batches", type=_n_batches, default=None, help="N or 'all' (default)")
    nll.add_argument("--split", default="test", choices=["test", "train"])
    nll.add_argument("--root", help="dataset folder (default: the run's data.root)")

    fid = sub.add_parser("fid", help="FID (Inception) or FD (classifier features) of generated samples")
    _common(fid)
    _sampling(fid)
    fid.add_argument("--batch-size", type=int, default=64)
    fid.add_argument("--n-samples", type=int, default=50_000)
    _one_sampler(fid)

    cost = sub.add_parser("cost", help="NFE, seconds per batch and FD per tolerance / PC step count")
    _common(cost)
    _sampling(cost)
    cost.add_argument("--batch-size", type=int, default=16)
    cost.add_argument("--tolerances", type=float, nargs="+", default=[ODE_TOLERANCE, 1e-4, 1e-3, 1e-2])
    cost.add_argument("--n-batches", type=int, default=20, help="timed batches (after one warm-up batch)")
    cost.add_argument("--fd-samples", type=int, default=1000, help="samples for the FD at each setting (0: none)")
    cost.add_argument("--fd-batch-size", type=int, default=100)
    cost.add_argument("--pc-steps", type=int, nargs="*", default=None, help="pixel SGM: PC step counts")
    cost.add_argument("--sampler", dest="samplers", nargs="+", choices=["ode", "pc"], default=None,
                      help="pixel SGM: which samplers (default both)")
    cost.add_argument("--snr", type=float, default=PC_SNR)

    samples = sub.add_parser("samples", help="a PNG grid of samples (decoder means) and its sidecar JSON",
                             description="A grid of --n samples drawn as `lsgm evaluate fid` draws them, written to "
                             "--out (PNG) with the settings, checkpoint and provenance in --out with suffix .json. "
                             "A diverged run gives a placeholder PNG (exit 0).")
    _common(samples, out="PNG to write (atomically); its sidecar JSON beside it (suffix .json)")
    _generation(samples)
    _one_sampler(samples)
    samples.add_argument("--n", type=int, default=64, help="samples in the grid")
    samples.add_argument("--nrow", type=int, default=8, help="samples per grid row")
    samples.add_argument("--batch-size", type=int, default=64)
    return parser


def run_nll(args: argparse.Namespace) -> dict:
    from lsgm.eval.nll import evaluate_nll

    t_eps = ODE_T_EPS if args.t_eps is None and args.prior == "ode" else args.t_eps
    return evaluate_nll(args.model, prior=args.prior, iw_samples=args.iw_samples, inner=args.inner,
                        tolerance=args.tolerance, t_eps=t_eps, probe=args.probe, solver=args.solver,
                        batch_size=args.batch_size, n_batches=args.n_batches, seed=args.seed, split=args.split,
                        use_ema=args.ema, t_draws=args.t_draws, root=args.root, device=args.device)


def run_fid(args: argparse.Namespace) -> dict:
    from lsgm.eval.common import EvalError
    from lsgm.eval.fid import evaluate_fid

    if not args.stats:
        raise EvalError("--stats FILE.pt is required (lsgm fid-stats --dataset NAME --features ... --out FILE.pt)")
    return evaluate_fid(args.model, args.stats, n_samples=args.n_samples, tolerance=args.tolerance,
                        sampler=args.sampler, pc_steps=args.pc_steps, snr=args.snr, solver=args.solver, batch_size=args.batch_size, temperature=args.temperature,
                        vae_temperature=args.vae_temperature, seed=args.seed, bn_mode=args.bn_mode,
                        t_eps=args.t_eps, use_ema=args.ema, classifier=args.classifier,
                        inception_weights=args.inception_weights, device=args.device)


def run_cost(args: argparse.Namespace) -> dict:
    from lsgm.eval.common import EvalError
    from lsgm.eval.cost import evaluate_cost

    if args.fd_samples > 1 and not args.stats:
        raise EvalError("--stats FILE.pt is required for the FD at each setting (or pass --fd-samples 0)")
    return evaluate_cost(args.model, args.stats if args.fd_samples > 1 else None, tolerances=args.tolerances,
                         batch_size=args.batch_size, n_batches=args.n_batches, fd_samples=args.fd_samples,
                         fd_batch_size=args.fd_batch_size, pc_steps=args.pc_steps, samplers=args.samplers,
                         solver=args.solver, t_eps=args.t_eps, temperature=args.temperature,
                         vae_temperature=args.vae_temperature, snr=args.snr, seed=args.seed, bn_mode=args.bn_mode,
                         use_ema=args.ema, classifier=args.classifier, inception_weights=args.inception_weights,
                         device=args.device)


def run_samples(args: argparse.Namespace) -> dict:
    from lsgm.eval.samples import evaluate_samples

    return evaluate_samples(args.model, args.out, n=args.n, nrow=args.nrow, batch_size=args.batch_size,
                            tolerance=args.tolerance, sampler=args.sampler, pc_steps=args.pc_steps, snr=args.snr,
                            solver=args.solver, temperature=args.temperature, vae_temperature=args.vae_temperature,
                            seed=args.seed, bn_mode=args.bn_mode, t_eps=args.t_eps, use_ema=args.ema,
                            device=args.device)


def run_evaluation(args: argparse.Namespace) -> dict:
    """Dispatch to the evaluation named by ``args.what``; returns the metrics record (``samples`` has written its
    PNG and sidecar itself)."""
    return {"nll": run_nll, "fid": run_fid, "cost": run_cost, "samples": run_samples}[args.what](args)


def check_outputs(what: str, outs: list[str]) -> None:
    """Before any work: every file the evaluation writes can be written (``samples``: the PNG and its sidecar JSON);
    stale temp files of earlier killed writes there are removed (:func:`lsgm.io.check_output`)."""
    from lsgm.io import check_output

    for out in outs:
        check_output(out)
        if what == "samples":
            from lsgm.eval.samples import sidecar_path

            check_output(sidecar_path(out), "--out (its sidecar)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.model) != len(args.out):
        parser.error(f"{len(args.model)} --model but {len(args.out)} --out: give one metrics file per model")
    from lsgm.data import DatasetError
    from lsgm.eval.common import EvalError, write_metrics
    from lsgm.io import OutputError

    try:
        check_outputs(args.what, args.out)
    except OutputError as err:
        print(f"lsgm evaluate {args.what}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for model, out in zip(args.model, args.out):
        one = argparse.Namespace(**{**vars(args), "model": model, "out": out})
        try:
            record = run_evaluation(one)
        except (EvalError, DatasetError) as err:
            print(f"lsgm evaluate {args.what}: error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if args.what != "samples":
            write_metrics(out, record)
        print(json.dumps({"out": out, "status": record["status"], "metrics": record["metrics"]}, default=str)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())

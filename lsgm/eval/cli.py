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

from lsgm.eval.settings import SETTINGS, SettingError, add_arguments, check_args

EXIT_BAD_INPUT = 2
# The evaluation defaults live in lsgm.eval.settings (the one home of every setting: type, default, range); these
# names are kept for the benchmarks.
ODE_TOLERANCE = SETTINGS["fid"]["tolerance"].default
ODE_T_EPS = SETTINGS["fid"]["t_eps"].default
ODE_SOLVER = SETTINGS["fid"]["solver"].default
PROBE = SETTINGS["nll"]["probe"].default
PC_SNR = SETTINGS["fid"]["snr"].default
COST_TOLERANCES = SETTINGS["cost"]["tolerances"].default


def _common(p: argparse.ArgumentParser, out: str = "metrics JSON to write (atomically)") -> None:
    p.add_argument("--model", required=True, nargs="+", help="DIR/model.pt of a training run (one or more)")
    p.add_argument("--out", required=True, nargs="+", help=f"{out}, one per --model")
    p.add_argument("--ema", dest="ema", action="store_true", default=True, help="use the EMA weights (default)")
    p.add_argument("--no-ema", dest="ema", action="store_false")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def _features(p: argparse.ArgumentParser) -> None:
    """The reference statistics and the features of the FD/FID (fid, cost)."""
    p.add_argument("--stats", help="reference statistics (lsgm fid-stats)")
    p.add_argument("--classifier", help="override the classifier model.pt recorded in the statistics")
    p.add_argument("--inception-weights", help="weights-inception-2015-12-05-6726825d.pth (offline); "
                   "also $LSGM_INCEPTION_WEIGHTS")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsgm evaluate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    helps = {"nll": "NELBO split into named terms and the importance-weighted NLL",
             "fid": "FID (Inception) or FD (classifier features) of generated samples",
             "cost": "NFE, seconds per batch and FD per tolerance / PC step count"}
    for command in ("nll", "fid", "cost"):
        p = sub.add_parser(command, help=helps[command])
        _common(p)
        add_arguments(p, command)
        if command == "nll":
            p.add_argument("--root", help="dataset folder (default: the run's data.root)")
        else:
            _features(p)
    samples = sub.add_parser("samples", help="a PNG grid of samples (decoder means) and its sidecar JSON",
                             description="A grid of --n samples drawn as `lsgm evaluate fid` draws them, written to "
                             "--out (PNG) with the settings, checkpoint and provenance in --out with suffix .json. "
                             "A diverged run gives a placeholder PNG (exit 0).")
    _common(samples, out="PNG to write (atomically); its sidecar JSON beside it (suffix .json)")
    add_arguments(samples, "samples")
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
                        inception_weights=args.inception_weights, device=args.device, latent=args.latent,
                        official_processes=args.official_processes)


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
                            device=args.device, latent=args.latent)


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
    try:
        check_args(args.what, args, "command line")
    except SettingError as err:
        print(f"lsgm evaluate {args.what}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
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

"""``lsgm evaluate nll | fid | cost | samples``: one metrics JSON per model (samples: a PNG grid and its JSON);
``--model A B --out a.json b.json`` evaluates several models, e.g. the seeds of one run, in one process (one torch
import instead of one per model).

The commands, their inputs and functions are the registry's (:mod:`lsgm.eval.registry`), their settings the one home
of evaluation settings (:mod:`lsgm.eval.settings`): every declared setting becomes a flag and reaches the command's
``evaluate_*`` function as the keyword of its name.

Exit codes: 0 with a complete file (also for a diverged run: NaN metrics and the reason); 2 with a
one-line error on stderr and no output file for unusable input (missing model or statistics, statistics
from another extractor, missing Inception weights offline).
"""

from __future__ import annotations

import argparse
import json
import sys

from lsgm.eval.registry import COMMANDS, of_command
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

INPUTS = {  # the command-line inputs an evaluation may read beyond --model (lsgm.eval.registry: Evaluation.inputs)
    "stats": ("--stats", "reference statistics (lsgm fid-stats)"),
    "classifier": ("--classifier", "override the classifier model.pt recorded in the statistics"),
    "inception_weights": ("--inception-weights", "weights-inception-2015-12-05-6726825d.pth (offline); also "
                          "$LSGM_INCEPTION_WEIGHTS"),
    "root": ("--root", "dataset folder (default: the run's data.root)"),
}


def _common(p: argparse.ArgumentParser, out: str = "metrics JSON to write (atomically)") -> None:
    p.add_argument("--model", required=True, nargs="+", help="DIR/model.pt of a training run (one or more)")
    p.add_argument("--out", required=True, nargs="+", help=f"{out}, one per --model")
    p.add_argument("--ema", dest="ema", action="store_true", default=True, help="use the EMA weights (default)")
    p.add_argument("--no-ema", dest="ema", action="store_false")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsgm evaluate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for command in COMMANDS:
        evaluation = of_command(command)
        p = sub.add_parser(command, help=evaluation.help, description=evaluation.help)
        _common(p, out="PNG to write (atomically); its sidecar JSON beside it (suffix .json)" if "out" in
                evaluation.inputs else "metrics JSON to write (atomically)")
        add_arguments(p, command)
        for name in evaluation.inputs:
            if name in INPUTS:
                p.add_argument(INPUTS[name][0], help=INPUTS[name][1])
    return parser


def run_evaluation(args: argparse.Namespace) -> dict:
    """The evaluation named by ``args.what`` on ``args.model``: every setting of its command and its inputs, as the
    keywords of its function; returns the metrics record (``samples`` has written its PNG and sidecar itself)."""
    evaluation = of_command(args.what)
    settings = {name: getattr(args, name) for name in SETTINGS[evaluation.command]}
    inputs = {name: getattr(args, name) for name in evaluation.inputs}
    return evaluation.call(args.model, inputs, settings, use_ema=args.ema, device=args.device)


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

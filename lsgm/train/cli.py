"""The ``lsgm train-*`` command line shared by the trainers: arguments, config resolution, dry run, exit codes.

``--config`` (a run config), ``--set KEY=VALUE`` overrides, ``--dry-run`` (print the resolved config and
exit); a bad config, unusable data, an unusable ``--vae`` file or an output that cannot be written (checked before
any work) exits with code 2 and a one-line message. A run whose ``--vae`` backbone diverged is a diverged outcome
without training (exit 0; :class:`lsgm.train.run.BackboneDiverged`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import yaml

from lsgm.config import ConfigError, RunConfig, apply_overrides, load_run_config, to_dict
from lsgm.data import DatasetError
from lsgm.io import OutputError, check_output
from lsgm.train.checkpoint import remove_checkpoint
from lsgm.train.loop import train
from lsgm.train.run import BackboneDiverged, Run, ckpt_dir_of
from lsgm.train.task import Task
from lsgm.utils import UserFileError

EXIT_CONFIG = 2  # unusable config / arguments


def parse_args(argv: list[str], kind: str, needs_vae: bool = False, accepts_vae: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"lsgm train-{kind}", description=f"train a {kind} run (see docs/ARCHITECTURE.md)")
    # Several runs (e.g. the seeds of one recipe) train one after the other in one process: --config, --out and
    # (if given) --ckpt-dir and --vae take one value per run, in the same order.
    p.add_argument("--config", required=True, nargs="+", help="run config YAML (lsgm.config.RunConfig)")
    p.add_argument("--out", required=True, nargs="+",
                   help="run directory: config.yaml, stats.jsonl, run.json, model.pt")
    if needs_vae:
        p.add_argument("--vae", nargs="+", help="stage-1 VAE_DIR/model.pt (required unless --dry-run)")
    elif accepts_vae:
        p.add_argument("--vae", nargs="+", help="the trained backbone VAE_DIR/model.pt a run with "
                                                "train.continue_backbone continues (required for those runs)")
    p.add_argument("--ckpt-dir", default=None, nargs="+", help="resume checkpoints (default OUT/.ckpt)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--master-port", type=int, default=None,
                   help="DDP rendezvous port when MASTER_PORT is not set by the launcher (default 29500)")
    args = p.parse_args(argv)
    if needs_vae and not args.vae and not args.dry_run:
        p.error("the following arguments are required: --vae")
    n = len(args.config)
    for name in ("out", "ckpt_dir", "vae"):
        given = getattr(args, name, None)
        if given is not None and len(given) != n:
            p.error(f"{n} --config but {len(given)} --{name.replace('_', '-')}: give one per run config")
    return args


def one_run(args: argparse.Namespace, i: int) -> argparse.Namespace:
    """The arguments of the i-th run of a multi-run call."""
    out = {**vars(args), "config": args.config[i], "out": args.out[i],
           "ckpt_dir": args.ckpt_dir[i] if args.ckpt_dir else None}
    if getattr(args, "vae", None) is not None:
        out["vae"] = args.vae[i]
    return argparse.Namespace(**out)


def resolve_config(args: argparse.Namespace, kind: str) -> RunConfig:
    cfg = apply_overrides(load_run_config(args.config), args.overrides)
    if cfg.kind != kind:
        raise ConfigError(f"{args.config}: kind is {cfg.kind!r} but this command trains {kind!r} runs")
    return cfg


def cli_main(argv: list[str] | None, kind: str, build_task: Callable[[Run, argparse.Namespace], Task],
             needs_vae: bool = False, accepts_vae: bool = False) -> int:
    """Shared ``main``: parse, resolve, dry-run or train. Bad configs exit with code 2 and a clear message."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv, kind, needs_vae, accepts_vae)
    except SystemExit as err:  # argparse: --help (0) or usage error (2)
        return int(err.code or 0)
    if not args.dry_run:
        try:  # every run's outputs, before the first one trains
            for i in range(len(args.config)):
                run_args = one_run(args, i)
                check_output(run_args.out, "--out", folder=True)
                check_output(ckpt_dir_of(Path(run_args.out), run_args.ckpt_dir), "--ckpt-dir", folder=True)
        except OutputError as err:
            print(f"lsgm train-{kind}: error: {err}", file=sys.stderr)
            return EXIT_CONFIG
    for i in range(len(args.config)):
        code = train_one(one_run(args, i), kind, build_task)
        if code:
            return code
    return 0


def train_one(args: argparse.Namespace, kind: str, build_task: Callable[[Run, argparse.Namespace], Task]) -> int:
    """Resolve, dry-run or train one run config."""
    try:
        cfg = resolve_config(args, kind)
    except ConfigError as err:
        print(f"lsgm train-{kind}: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if args.dry_run:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    run = Run(cfg, Path(args.out), Path(args.ckpt_dir) if args.ckpt_dir else None, args.master_port)
    try:
        task = build_task(run, args)
        return train(run, task)
    except BackboneDiverged as err:
        print(f"lsgm train-{kind}: {err.reason}: this run is a diverged outcome, nothing trained", file=sys.stderr)
        run.finish_untrained(err, kind)
        remove_checkpoint(run)  # one of a run on an earlier backbone would resume it
        return 0
    except ConfigError as err:
        print(f"lsgm train-{kind}: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except DatasetError as err:
        print(f"lsgm train-{kind}: data error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except UserFileError as err:
        print(f"lsgm train-{kind}: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        run.close()

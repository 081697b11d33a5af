"""The ``lsgm train-*`` command line shared by the trainers: arguments, config resolution, dry run, exit codes.

``--config`` (a run config), ``--set KEY=VALUE`` overrides, ``--dry-run`` (print the resolved config and
exit); a bad config or unusable data exits with code 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import yaml

from lsgm.config import ConfigError, RunConfig, apply_overrides, load_run_config, to_dict
from lsgm.data import DatasetError
from lsgm.train.loop import train
from lsgm.train.run import Run
from lsgm.train.task import Task

EXIT_CONFIG = 2  # unusable config / arguments


def parse_args(argv: list[str], kind: str, needs_vae: bool = False, accepts_vae: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"lsgm train-{kind}", description=f"train a {kind} run (see docs/ARCHITECTURE.md)")
    p.add_argument("--config", required=True, help="run config YAML (lsgm.config.RunConfig)")
    p.add_argument("--out", required=True, help="run directory: config.yaml, stats.jsonl, run.json, model.pt")
    if needs_vae:
        p.add_argument("--vae", help="stage-1 VAE_DIR/model.pt (required unless --dry-run)")
    elif accepts_vae:
        p.add_argument("--vae", help="the trained backbone VAE_DIR/model.pt a run with train.continue_backbone "
                                     "continues (required for those runs unless --dry-run)")
    p.add_argument("--ckpt-dir", default=None, help="resume checkpoints (default OUT/.ckpt)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--master-port", type=int, default=None,
                   help="DDP rendezvous port when MASTER_PORT is not set by the launcher (default 29500)")
    args = p.parse_args(argv)
    if needs_vae and not args.vae and not args.dry_run:
        p.error("the following arguments are required: --vae")
    return args


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
    except ConfigError as err:
        print(f"lsgm train-{kind}: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except DatasetError as err:
        print(f"lsgm train-{kind}: data error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        run.close()

"""``lsgm report tables|figure4|variance``: compile metrics JSON files into the paper's tables and Figure 4, and
measure the variance of the Table 6 cells' training estimators.

```
lsgm report tables  --metrics F.json ... --scale S --out-dir DIR [--dataset-map JSON] [--rows JSON] [--commit SHA]
lsgm report tables  --metrics F.json ... --scale S --table tableN --md F.md --csv F.csv [--seeds-csv F.csv] [...]
lsgm report figure4 --metrics F.json ... --scale S --out-dir DIR [--commit SHA]
lsgm report variance --models M/model.pt ... --scale S --out-dir DIR [--n-latents N] [--n-draws M] [--n-t-draws K]
                     [--batch-size B] [--seed S] [--device D] [--no-ema] [--commit SHA]
lsgm report reproduction --scale S --md F.md --csv F.csv (--metrics F.json ... --reference DIR | --tables T.csv ...)
```
``reproduction``: this run beside a committed reference run, or our table rows beside the paper
(:mod:`lsgm.report.reproduction`).
``--out-dir`` gets every table's ``.md``, ``.csv``, ``.seeds.csv`` and ``.caption.txt``; ``--table`` with
``--md``/``--csv`` builds one table and writes exactly those files (and ``--seeds-csv``, its per-seed CSV, if given:
the workflow's rule, one job per table).
``variance`` loads each trained LSGM (torch, imported only for it) and writes ``variance.csv``, ``variance.png``,
``variance.caption.txt`` and ``variance.provenance.json`` (:mod:`lsgm.eval.variance`, :mod:`lsgm.report.variance`).
``--dataset-map`` / ``--rows`` take inline JSON or a path to a JSON file, e.g.
``{"table2": "digits", "table4": "digits_binary"}`` and ``{"table2": ["lsgm_balanced", "vae"]}``.
A metrics file that is not valid JSON or lacks a required key is refused with one line naming the
file and the key (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lsgm.eval import registry
from lsgm.eval import settings as eval_settings
from lsgm.io import check_output, git_commit
from lsgm.plan.common import SCALES

REQUIRED = ("kind", "run", "run.name", "run.model", "run.dataset", "status", "metrics")
REQUIRED_BY_KIND = {name: e.fields for name, e in registry.EVALUATIONS.items()}  # lsgm/eval/registry.py
KINDS = {"tables": registry.read_by("tables"), "figure4": registry.read_by("figure4"), "variance": ()}
# the variance measurement's defaults (config.yaml scales.S.eval.variance overrides them in the workflow)
VARIANCE_DEFAULTS = eval_settings.defaults("variance")  # n_latents, n_draws, n_t_draws, batch_size, seed


class MetricsError(ValueError):
    """A metrics file the report cannot use; the message names the file and the problem."""


def _lookup(doc: Any, dotted: str) -> bool:
    """Whether the dotted key (``run.name``) is present in a nested mapping."""
    for part in dotted.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return False
        doc = doc[part]
    return True


def validate_metrics(doc: Any, source: str, kinds: tuple[str, ...]) -> dict:
    """Check one metrics document against the ARCHITECTURE.md contract; raise :class:`MetricsError`."""
    if not isinstance(doc, dict):
        raise MetricsError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    for key in REQUIRED:
        if not _lookup(doc, key):
            raise MetricsError(f"{source}: missing key {key!r}")
    if doc["kind"] not in kinds:
        raise MetricsError(f"{source}: kind {doc['kind']!r} is not used here (expected {' or '.join(kinds)})")
    for key in REQUIRED_BY_KIND[doc["kind"]]:
        if not _lookup(doc, key):
            raise MetricsError(f"{source}: missing key {key!r}")
    return doc


def load_metrics(paths: list[str], kinds: tuple[str, ...]) -> list[dict]:
    """Read and validate metrics files (NaN allowed: diverged runs write it)."""
    docs = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise MetricsError(f"{path}: cannot read metrics JSON ({err})") from err
        docs.append(validate_metrics(doc, path, kinds))
    return docs


def json_arg(text: str | None) -> Any:
    """A JSON option given inline or as a path to a JSON file."""
    if text is None:
        return None
    path = Path(text)
    try:
        return json.loads(path.read_text(encoding="utf-8") if path.is_file() else text)
    except json.JSONDecodeError as err:
        raise MetricsError(f"not valid JSON (inline or file): {text!r} ({err})") from err


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options of ``lsgm report``."""
    parser = argparse.ArgumentParser(prog="lsgm report", description="compile tables and figures")
    parser.add_argument("what", choices=sorted([*KINDS, "reproduction"]),
                        help="tables: Tables 2-6; figure4: Figure 4; variance: the variance of the Table 6 cells' "
                        "training estimators; reproduction: this run beside its reference (its own options: "
                        "lsgm report reproduction --help)")
    parser.add_argument("--metrics", nargs="+", help="metrics JSON files (tables, figure4)")
    parser.add_argument("--models", nargs="+", help="variance: LSGM model.pt files (the Table 6 cells)")
    parser.add_argument("--scale", required=True, help=f"{' | '.join(SCALES)} (printed in captions)")
    parser.add_argument("--out-dir", type=Path, help="every table's files (tables), Figure 4's or the variance files")
    parser.add_argument("--table", default=None, help="tables: build only this one (e.g. table2), to --md/--csv")
    parser.add_argument("--md", type=Path, help="with --table: its markdown file (caption, blank line, table)")
    parser.add_argument("--csv", type=Path, help="with --table: its CSV file")
    parser.add_argument("--seeds-csv", type=Path, help="with --table: its per-seed CSV (one line per run x metric)")
    parser.add_argument("--dataset-map", default=None, help="JSON {tableN: run.dataset} (inline or file)")
    parser.add_argument("--rows", default=None, help="JSON {tableN: [run names]} (inline or file)")
    parser.add_argument("--commit", default=None, help="default: the commit of this source tree")
    eval_settings.add_arguments(parser, "variance")
    parser.add_argument("--device", default="auto", help="variance: cpu | cuda | auto")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                        help="variance: the score's EMA weights (default) or its raw weights")
    args = parser.parse_args(argv)
    variance = args.what == "variance"
    if variance != (args.models is not None) or variance == (args.metrics is not None):
        parser.error("variance takes --models (not --metrics); tables and figure4 take --metrics")
    one = args.what == "tables" and args.table is not None
    if one and (args.md is None or args.csv is None or args.out_dir is not None):
        parser.error("--table writes exactly --md FILE and --csv FILE (no --out-dir)")
    if not one and (args.out_dir is None or args.md is not None or args.csv is not None
                    or args.seeds_csv is not None):
        parser.error(f"{args.what} needs --out-dir DIR (--md/--csv/--seeds-csv only with tables --table)")
    return args


def run_tables(args: argparse.Namespace, docs: list[dict], commit: str) -> str:
    """Build and write Tables 2-6 (or the one ``--table``); return the summary line."""
    from lsgm.report.render import write_table, write_tables
    from lsgm.report.tables import ALL_TABLES, build_tables

    only = (args.table,) if args.table else ALL_TABLES
    tables = build_tables(docs, args.scale, commit, json_arg(args.dataset_map), json_arg(args.rows), only=only)
    if args.table:
        written = write_table(tables[args.table], args.md, args.csv, args.seeds_csv)
    else:
        written = write_tables(tables, args.out_dir)
    where = args.out_dir or ", ".join(map(str, written))
    return (f"lsgm report tables: {len(tables)} table{'s' * (len(tables) > 1)} ({len(written)} files) from "
            f"{len(docs)} metrics files -> {where}")


def run_figure4(args: argparse.Namespace, docs: list[dict], commit: str) -> str:
    """Write Figure 4 (PNG, CSV, caption); return the summary line."""
    from lsgm.report.figure import figure4

    out = args.out_dir
    df = figure4(docs, out / "figure4.png", out / "figure4.csv", {"scale": args.scale, "commit": commit})
    return f"lsgm report figure4: {len(df)} rows from {len(docs)} metrics files -> {out / 'figure4.png'}"


def run_variance(args: argparse.Namespace, commit: str) -> str:
    """Measure and write the variance table and figure; return the summary line."""
    import time

    from lsgm.eval.common import EvalError, resolve_device
    from lsgm.eval.variance import COLUMNS, VarianceSettings, measure_variance
    from lsgm.io import provenance
    from lsgm.report.variance import write_variance

    started = time.perf_counter()
    try:
        settings = VarianceSettings(**{key: getattr(args, key) for key in VARIANCE_DEFAULTS}, use_ema=args.ema)
        device = resolve_device(args.device)
        rows = measure_variance(args.models, settings, device)
    except EvalError as err:
        raise ValueError(str(err)) from None
    info = {"scale": args.scale, "commit": commit, "dataset": ", ".join(sorted({r["dataset"] for r in rows}))}
    prov = provenance(device, wall_seconds=time.perf_counter() - started, scale=args.scale, settings=vars(settings),
                      models=[str(m) for m in args.models])
    df = write_variance(rows, COLUMNS, args.out_dir, info, prov)
    return (f"lsgm report variance: {len(df)} rows from {len(args.models)} models in "
            f"{time.perf_counter() - started:.1f} s -> {args.out_dir / 'variance.csv'}")


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work: every output (``--out-dir``, or ``--md``/``--csv``/``--seeds-csv``) can be written."""
    if args.out_dir is not None:
        check_output(args.out_dir, "--out-dir", folder=True)
    for flag in ("md", "csv", "seeds_csv"):
        if getattr(args, flag) is not None:
            check_output(getattr(args, flag), f"--{flag.replace('_', '-')}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lsgm report``; prints a one-line summary (or a one-line error, exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["reproduction"]:
        from lsgm.report.reproduction import main as reproduction_main

        return reproduction_main(argv[1:])
    args = parse_args(argv)
    try:
        check_outputs(args)
        commit = args.commit or git_commit()
        if args.what == "variance":
            summary = run_variance(args, commit)
        else:
            docs = load_metrics(args.metrics, KINDS[args.what])
            summary = (run_tables if args.what == "tables" else run_figure4)(args, docs, commit)
    except ValueError as err:  # MetricsError, OutputError, or a table that cannot be built (named in the message)
        print(f"lsgm report {args.what}: error: {err}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

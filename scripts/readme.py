"""Keep every number the README and the pages of docs/ quote equal to the committed file it comes from.

    python scripts/readme.py --check     exit 1 and name each stale value (tests/test_readme.py runs this)
    python scripts/readme.py --write     rewrite the generated values and blocks from the files
    (both over README.md and docs/*.md; --readme FILE for one file)

The README (and every docs/*.md) marks what it quotes; the marks are HTML comments, invisible on a rendered page:

* a value: ``<!--v SPEC-->TEXT<!--/v-->`` where SPEC is one of
    ``j|FILE|KEY[|AGG][|FMT]``   a JSON file's value; KEY is dotted (``results.mnist.stage1.seconds_per_step``; ``*``
                                 matches every key or list item), AGG one of min, max, sum, len (over the ``*``
                                 matches), FMT a Python format spec (``.1f``, ``,.0f``; default: the value as is);
    ``c|FILE|COL=VAL&...|COLUMN[|FMT]``  the one CSV row whose columns equal the values (numbers compared as numbers);
    ``t|TABLE|ROW|COLUMN[|SCALE]``  a table's cell exactly as ``reference/SCALE/tables/TABLE.md`` prints it
                                 (``mean ± se``, a learned difference with its ``*``; default scale quick); ROW is the
                                 Method, or for Table 6 ``SDE/Metric``;
    ``p|NAME``                   a fact of the resolved plan (:data:`PLAN_FACTS`);
    ``l|FILE``                   the first line of a text file (``reference/quick/reproduction.md``: its summary);
    ``a|FILE|COLUMN|AGG[|FMT]``  an aggregate (max, min, len, ...) of a CSV column's absolute finite values;
* a block: ``<!-- BEGIN NAME -->`` ... ``<!-- END NAME -->``, NAME one of :data:`BLOCKS` (e.g. ``plan-slurm``, the
  output of ``lsgm plan --profile slurm`` in docs/slurm.md).

``CLAIMS`` are the README's words about the numbers (``MNIST and OMNIGLOT stand-ins improve on their backbone``):
each is a sentence the README may hold only while its test on the committed tables holds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lsgm.report.table6 import chance_of_at_least  # noqa: E402

README = ROOT / "README.md"
PAGES = [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # every page whose marks are checked
VALUE = re.compile(r"<!--v (?P<spec>[^>]*?)-->(?P<text>.*?)<!--/v-->", re.S)
BLOCK = re.compile(r"(<!-- BEGIN (?P<name>[a-z0-9-]+) -->\n)(?P<text>.*?)(<!-- END (?P=name) -->)", re.S)


class StaleError(ValueError):
    """A mark the README cannot resolve (a missing file, key or row): the message names it."""


# ----------------------------------------------------------------------------- values
def _walk(doc: Any, parts: list[str]) -> list[Any]:
    if not parts:
        return [doc]
    head, rest = parts[0], parts[1:]
    if head == "*":
        items = doc.values() if isinstance(doc, dict) else doc
        return [v for item in items for v in _walk(item, rest)]
    if isinstance(doc, list):
        return _walk(doc[int(head)], rest)
    if not isinstance(doc, dict) or head not in doc:
        raise StaleError(f"no key {head!r}")
    return _walk(doc[head], rest)


AGGREGATES: dict[str, Callable[[list], Any]] = {"min": min, "max": max, "sum": sum, "len": len}


def _format(value: Any, fmt: str) -> str:
    if not fmt:
        return str(value)
    if fmt == "min:s":
        return f"{int(value // 60)} min {round(value % 60)} s"
    return format(value, fmt)


def _json(path: str, key: str, *rest: str) -> str:
    doc = json.loads((ROOT / path).read_text(encoding="utf-8"))
    values = [v for v in _walk(doc, key.split(".")) if v is not None]
    agg = rest[0] if rest and rest[0] in AGGREGATES else None
    fmt = rest[-1] if rest and rest[-1] not in AGGREGATES else ""
    if agg is None and len(values) != 1:
        raise StaleError(f"{key} matches {len(values)} values; give min, max, sum or len")
    if agg and len(values) == 1 and isinstance(values[0], (list, dict)):  # len of [a list] would be 1
        raise StaleError(f"{key} is one {type(values[0]).__name__}; aggregate its items with {key}.*|{agg}")
    return _format(AGGREGATES[agg](values) if agg else values[0], fmt)


def _equal(cell: Any, wanted: str) -> bool:
    try:
        return math.isclose(float(cell), float(wanted), rel_tol=1e-12)
    except (TypeError, ValueError):
        return str(cell) == wanted


def _csv(path: str, filters: str, column: str, fmt: str = "") -> str:
    df = pd.read_csv(ROOT / path, dtype=str, keep_default_na=False)
    rows = df
    for cond in filters.split("&"):
        col, wanted = cond.split("=", 1)
        rows = rows[rows[col].map(lambda v, w=wanted: _equal(v, w))]
    if len(rows) != 1:
        raise StaleError(f"{filters} matches {len(rows)} rows of {path}")
    value = rows.iloc[0][column]
    try:
        return _format(float(value), fmt) if fmt else value
    except ValueError:
        return value


def md_rows(table: str, scale: str = "quick") -> list[dict[str, str]]:
    """The rows of ours in ``reference/SCALE/tables/TABLE.md`` as the table prints them (column -> cell text)."""
    md = (ROOT / "reference" / scale / "tables" / f"{table}.md").read_text(encoding="utf-8")
    lines = [line for line in md.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    header = cells[0]
    return [dict(zip(header, row)) for row in cells[2:] if row[0].startswith("Ours")]


def _table(table: str, row: str, column: str, scale: str = "quick") -> str:
    rows = md_rows(table, scale)
    if "Metric" in (rows[0] if rows else {}):
        sde, metric = row.rsplit("/", 1)
        found = [r for r in rows if r["SDE"] == sde and r["Metric"] == metric]
    else:
        found = [r for r in rows if r["Method"] == row]
    if len(found) != 1:
        raise StaleError(f"{table}: {len(found)} rows named {row!r}")
    if column not in found[0]:
        raise StaleError(f"{table}: no column {column!r}")
    return found[0][column]


def _plan(scale: str):
    import yaml

    from lsgm.plan import Plan

    return Plan(yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8")), scale)


def _fd_n(scale: str, table6: bool) -> str:
    plan = _plan(scale)
    from lsgm.controls import table6_init_name

    cells = {r.name for r in plan.table6_runs()} | {table6_init_name(sde) for sde in ("vpsde", "geometric")}
    ns = {r.eval_settings["fid"]["n_samples"] for r in plan.trained_models() if "fid" in r.evals
          and ((r.name in cells or r.name == plan.config["table6"]["backbone"]) == table6)}
    if len(ns) != 1:
        raise StaleError(f"FD sample counts {sorted(ns)} at {scale}")
    return str(ns.pop())


PLAN_FACTS: dict[str, Callable[[], str]] = {
    "paper-training-jobs": lambda: str(len(_plan("paper").training_runs())),
    "mini-training-jobs": lambda: str(len(_plan("mini").training_runs())),
    "quick-fd-samples": lambda: _fd_n("quick", table6=False),
    "quick-table6-fd-samples": lambda: _fd_n("quick", table6=True),
    "quick-seeds": lambda: str(len(_plan("quick").seeds)),
    "quick-sgm-fd-pc-steps": lambda: str(next(r.eval_settings["fid"]["pc_steps"] for r in _plan("quick").trained_models()
                                              if r.kind == "sgm" and "fid" in r.evals)),
}


def value_of(spec: str) -> str:
    kind, *args = spec.split("|")
    try:
        if kind == "j":
            return _json(*args)
        if kind == "c":
            return _csv(*args)
        if kind == "t":
            return _table(*args)
        if kind == "p":
            return PLAN_FACTS[args[0]]()
        if kind == "a":
            path, column, agg, *fmt = args
            values = pd.to_numeric(pd.read_csv(ROOT / path)[column], errors="coerce").abs().dropna().tolist()
            return _format(AGGREGATES[agg](values), fmt[0] if fmt else "")
        if kind == "l":
            return (ROOT / args[0]).read_text(encoding="utf-8").splitlines()[0]
    except (OSError, KeyError, IndexError, ValueError, TypeError) as err:
        raise StaleError(f"{spec}: {err}") from err
    raise StaleError(f"{spec}: unknown kind {kind!r} (j, c, t, p, l, a)")


# ----------------------------------------------------------------------------- blocks
PLAN_SLURM = ["plan", "--profile", "slurm", "--config", "cluster={gpu: A100-80GB}"]


def _plan_slurm() -> str:
    """``lsgm plan --profile slurm --config 'cluster={gpu: A100-80GB}'`` from the repository root (its stdout)."""
    import os

    from lsgm.cli import main

    out, here = io.StringIO(), os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            main(PLAN_SLURM)
    finally:
        os.chdir(here)
    return out.getvalue()


def _table_excerpt(table: str) -> str:
    md = (ROOT / "reference" / "quick" / "tables" / f"{table}.md").read_text(encoding="utf-8")
    rows = [line for line in md.splitlines() if line.startswith("|")]
    return "\n".join(rows[:2] + [r for r in rows[2:] if "| Ours (measured)" in r]) + "\n"


FRONT_COLUMNS = ["Method", "n", "NELBO (bpd)", "NLL (bpd)", "fd_digits (ours)"]


def _front_table() -> str:
    """Table 2's rows of the balanced recipe, its controls and backbone at the quick scale, in a few columns."""
    rows = [r for r in md_rows("table2") if "balanced" in r["Method"]]
    lines = ["| " + " | ".join(FRONT_COLUMNS) + " |", "|" + "|".join(":--" if c == "Method" else "--:"
                                                                  for c in FRONT_COLUMNS) + "|"]
    lines += ["| " + " | ".join(r[c] for c in FRONT_COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _job_seconds() -> str:
    """Job-seconds by rule of the reference run (Snakemake's benchmark files)."""
    total: dict[str, list[float]] = {}
    bench = ROOT / "reference" / "quick" / "benchmarks"
    for tsv in sorted(bench.rglob("*.tsv")):
        rule = tsv.relative_to(bench).parts[0].removesuffix(".tsv")
        total.setdefault(rule, []).append(float(pd.read_csv(tsv, sep="\t")["s"].iloc[0]))
    rows = sorted(total.items(), key=lambda kv: -sum(kv[1]))
    df = pd.DataFrame([{"rule": k, "jobs": len(v), "job-seconds": round(sum(v))} for k, v in rows])
    df.loc[len(df)] = {"rule": "all torch jobs", "jobs": int(df["jobs"].sum()), "job-seconds": int(df["job-seconds"].sum())}
    return df.to_markdown(index=False) + "\n"


BLOCKS: dict[str, Callable[[], str]] = {
    "plan-slurm": lambda: "```\n$ lsgm " + " ".join(PLAN_SLURM[:-1]) + " 'cluster={gpu: A100-80GB}'\n" + _plan_slurm() + "```\n",
    "table2-front": _front_table,
    "table2-quick": lambda: _table_excerpt("table2"),
    "table6-quick": lambda: _table_excerpt("table6"),
    "job-seconds-quick": _job_seconds,
}


# ----------------------------------------------------------------------------- claims
def _cell(table: str, row: str, column: str) -> float:
    return float(_table(table, row, column).split(" ± ")[0])


def _learned_cells(prefix: str, column_start: str) -> list[str]:
    """The cells of every ``prefix`` row of ours in Tables 2-5 (``learned:`` = LSGM - at initialisation, ``learned
    prior:`` = LSGM - its N(0, tau^2 I) control) under the columns starting with ``column_start``."""
    cells = [cell for table in ("table2", "table3", "table4", "table5") for row in md_rows(table)
             if row["Method"].startswith(prefix) for col, cell in row.items()
             if col.startswith(column_start) and cell not in ("—", "")]
    if not cells:
        raise StaleError(f"no {prefix!r} cells under {column_start!r} in Tables 2-5")
    return cells


def _significant_decrease(cell: str) -> bool:
    return cell.endswith("*") and float(cell.split(" ± ")[0]) < 0


def _significant_increase(cell: str) -> bool:
    return cell.endswith("*") and float(cell.split(" ± ")[0]) > 0


CLAIMS: dict[str, Callable[[], bool]] = {
    # every LSGM's likelihood improved in stage 2 beyond its standard error (the controls at initialisation)
    "Every LSGM's NELBO and NLL fall below its control at initialisation by more than two standard errors": lambda: all(
        _significant_decrease(c) for col in ("NELBO", "NLL") for c in _learned_cells("learned: ", col)),
    # no sample-quality difference from either control is beyond two standard errors
    "No LSGM's sample quality differs from either control by more than two standard errors": lambda: not any(
        c.endswith("*") for prefix in ("learned: ", "learned prior: ") for c in _learned_cells(prefix, "fd_")),
    # at quick the same pipeline without the score prior (backbone + stage-2 steps, Normal prior) has the better
    # likelihood: the LSGM's NELBO and NLL minus that control's are increases beyond 2 se
    "Against the same pipeline without the score prior, the quick LSGM's NELBO and NLL are worse by more than two "
    "standard errors": lambda: all(_significant_increase(c) for col in ("NELBO", "NLL")
                                   for c in _learned_cells("score prior vs more training: ", col)),
    # the demo budget: the score prior learns beyond both controls (reference/demo/tables/table2.md)
    "At 10,000 stage-2 steps the LSGM beats its control at initialisation and the same pipeline without the score prior "
    "by more than two standard errors in NELBO, NLL and sample quality": lambda: _demo_learns(),
    # Table 6: the NELBO's learned differences are decreases beyond 2 se in more cells than noise gives (binomial
    # chance < 0.01), the fd_digits ones in no more than noise gives (> 0.05), and no two cells of an SDE are told apart
    "Table 6's NELBO shows what stage 2 learned beyond the evaluations' noise; its fd_digits does not, and no two cells "
    "of an SDE differ by more than two standard errors": lambda: _table6_nelbo_learns(),
}


def _table6_nelbo_learns() -> bool:
    marks = _table6_marks()
    nelbo = next(k for k in marks if k.startswith("NELBO"))
    fd = next(k for k in marks if k.startswith("fd_"))
    cells = _table6_learned_cells(nelbo)
    marked = [c for sde in cells.values() for c in sde if c.endswith("*")]
    return (chance_of_at_least(*marks[nelbo]) < 0.01 and all(_significant_decrease(c) for c in marked)
            and chance_of_at_least(*marks[fd]) > 0.05 and not _table6_cells_apart(cells))


def _table6_learned_cells(metric: str) -> dict[str, list[str]]:
    """Per SDE: the cells of Table 6's 'learned METRIC: cell − at initialisation' row."""
    out: dict[str, list[str]] = {}
    for row in md_rows("table6"):
        if row["Metric"] == f"learned {metric}: cell − at initialisation":
            out[row["SDE"]] = [cell for col, cell in row.items()
                               if col not in ("Section", "SDE", "Metric", "n", "vs paper", "source") and " ± " in cell]
    return out


def _table6_cells_apart(cells: dict[str, list[str]]) -> bool:
    """Two cells of one SDE whose learned values differ by more than 2 sqrt(se_a^2 + se_b^2) (conservative: the
    shared value at initialisation is in both se)."""
    for sde in cells.values():
        values = [tuple(float(x) for x in c.rstrip(" *").split(" ± ")) for c in sde]
        if any(abs(a - b) > 2 * math.hypot(sa, sb) for i, (a, sa) in enumerate(values) for b, sb in values[i + 1:]):
            return True
    return False


def _demo_learns() -> bool:
    """Every NELBO, NLL and FD cell of the demo's 'learned:' and 'score prior vs more training:' rows is a decrease
    beyond 2 se."""
    rows = [r for r in md_rows("table2", "demo")
            if r["Method"].startswith(("learned: ", "score prior vs more training: "))]
    cells = [cell for r in rows for col, cell in r.items() if col.startswith(("NELBO", "NLL", "fd_"))]
    return len(rows) == 2 and len(cells) == 6 and all(_significant_decrease(c) for c in cells)


def _table6_marks() -> dict[str, tuple[int, int]]:
    """Per metric of Table 6: (cells whose learned difference is marked *, cells with one), over both SDEs."""
    out: dict[str, list[int]] = {}
    for row in md_rows("table6"):
        found = re.match(r"learned (.+): cell − at initialisation$", row["Metric"])
        for col, cell in row.items() if found else ():
            if col not in ("Section", "SDE", "Metric", "n", "vs paper", "source") and " ± " in cell:
                counts = out.setdefault(found[1], [0, 0])
                counts[0] += cell.endswith("*")
                counts[1] += 1
    return {metric: (k, n) for metric, (k, n) in out.items()}


# ----------------------------------------------------------------------------- check / write
def render(text: str) -> tuple[str, list[str]]:
    """The README with every mark regenerated, and the problems found (stale values, false claims)."""
    problems: list[str] = []

    def value(match: re.Match) -> str:
        spec, old = match["spec"], match["text"]
        try:
            new = value_of(spec)
        except StaleError as err:
            problems.append(f"cannot resolve {err}")
            return match[0]
        if new != old:
            problems.append(f"stale value {old!r}, the file says {new!r} ({spec})")
        return f"<!--v {spec}-->{new}<!--/v-->"

    def block(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            problems.append(f"unknown block {name!r} (one of {sorted(BLOCKS)})")
            return match[0]
        new = BLOCKS[name]()
        if new != match["text"]:
            problems.append(f"stale block {name!r}")
        return match[1] + new + match[4]

    out = VALUE.sub(value, BLOCK.sub(block, text))
    flat = " ".join(out.split())
    for claim, holds in CLAIMS.items():
        if claim in flat and not holds():
            problems.append(f"false claim: {claim!r} (the committed tables say otherwise)")
    return out, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--write", action="store_true")
    parser.add_argument("--readme", type=Path, default=None, help="one file (default: README.md and docs/*.md)")
    args = parser.parse_args(argv)
    failed = False
    for page in [args.readme] if args.readme else PAGES:
        new, problems = render(page.read_text(encoding="utf-8"))
        if args.write:
            page.write_text(new, encoding="utf-8")
            problems = [p for p in problems if not p.startswith(("stale value", "stale block"))]
        for problem in problems:
            print(f"{page.relative_to(ROOT) if page.is_relative_to(ROOT) else page}: {problem}", file=sys.stderr)
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())

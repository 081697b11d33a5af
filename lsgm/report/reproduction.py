"""``lsgm report reproduction``: does this run reproduce its reference, metric by metric?

Two references, by scale:

* **A committed reference run** (``reference/<scale>/``, e.g. the quick scale's): every numeric metric of every
  metrics file of this run (``results/<scale>/metrics/**.json``) beside the same field of the reference's file of
  the same run and kind: value, reference, difference, relative difference, the difference in units of the
  combined standard error where both runs have one, and a verdict. The files are paired by ``(kind, run.name)``,
  cost rows by ``(sampler, tolerance, n_steps)``; timings (seconds) are not compared (the machine decides them).
* **The published numbers** (the paper scale, and any scale without a reference run): the tables' ``Δ … vs
  paper`` cells of our measured rows, with the tables' own ``reproduced`` verdict and tolerance
  (``lsgm/report/published.yaml``, ``reproduction:``).

Verdicts against a reference run: ``reproduced`` when ``|Δ| <= RTOL x |reference| + ATOL`` (or NaN in both, a
divergence that reproduces). RTOL = 1e-3: two fresh clones of one commit on this machine agreed to 1.1e-4 relative
at most over 10,465 fields (issue 21's measurement; ``reference/quick/reproduction.csv`` is the committed one), so
1e-3 sits above the run-to-run noise of the same code and below the metrics' standard errors. A field that moved gets
``moved (z SE)`` with its distance in combined standard errors, or ``moved (no SE)``. The last line printed (and the
first of the markdown) is the summary, e.g. ``212 of 213 metrics reproduce reference/quick (…)``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from lsgm.controls import init_of, table6_init_name
from lsgm.io import atomic_write_text, check_output
from lsgm.report.runs import Agg, Group, collect_runs, fd_names, group_runs, nelbo_key, paired_difference

RTOL = 1e-3  # relative tolerance of "reproduced" (see the module docstring for the measurement behind it)
ATOL = 1e-9  # absolute floor, for fields whose reference is 0
NOT_COMPARED = ("seconds", "wall")  # substrings of timing fields: the machine decides them, not the code
COLUMNS = ["kind", "run", "field", "value", "reference", "difference", "relative_difference", "combined_se",
           "z", "verdict"]


class ReproductionError(ValueError):
    """A reference or metrics file the report cannot use; the message names it."""


def _read(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ReproductionError(f"{path}: cannot read metrics JSON ({err})") from err
    if not isinstance(doc, dict) or not {"kind", "run", "metrics", "status"} <= set(doc):
        raise ReproductionError(f"{path}: not a metrics file (needs kind, run, status, metrics)")
    return doc


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _timing(field: str) -> bool:
    return any(part in field for part in NOT_COMPARED)


def metric_fields(doc: dict) -> Iterator[tuple[str, float, float | None]]:
    """``(field, value, standard error or None)`` of every compared numeric metric of one metrics document."""
    metrics = doc["metrics"]
    if doc["kind"] == "cost":
        for row in metrics.get("rows", []):
            where = f"{row.get('sampler')}"
            where += f" tol {row['tolerance']:g}" if row.get("tolerance") is not None else ""
            where += f" {row['n_steps']} steps" if row.get("n_steps") is not None else ""
            n_batches = _number(row.get("n_batches"))
            nfe_std = _number(row.get("nfe_std"))
            nfe_se = nfe_std / math.sqrt(n_batches) if nfe_std is not None and n_batches else None
            for field, se in (("nfe_mean", nfe_se), ("fd", _number(row.get("fd_stderr")))):
                value = _number(row.get(field))
                if value is not None:
                    yield f"{where}: {field}", value, se
        return
    for field, value in metrics.items():
        value = _number(value)
        if value is None or field.endswith(("_stderr", "_std")) or _timing(field):
            continue
        yield field, value, _number(metrics.get(f"{field}_stderr"))


def _verdict(value: float, reference: float, se: float | None) -> tuple[str, float | None]:
    """The verdict of one field and its distance in combined standard errors (None without one)."""
    if math.isnan(value) and math.isnan(reference):
        return "reproduced (NaN in both)", None
    if math.isnan(value) or math.isnan(reference):
        return f"moved (NaN in {'this run' if math.isnan(value) else 'the reference'})", None
    diff = value - reference
    z = diff / se if se else None
    if abs(diff) <= RTOL * abs(reference) + ATOL:
        return "reproduced", z
    return ("moved (no SE)" if z is None else f"moved ({z:+.1f} SE)"), z


def compare_runs(run_docs: list[dict], reference_docs: list[dict]) -> pd.DataFrame:
    """One row per compared field of every (kind, run) in either set (see the module docstring)."""
    ours = {(d["kind"], d["run"]["name"]): d for d in run_docs}
    refs = {(d["kind"], d["run"]["name"]): d for d in reference_docs}
    rows = []
    for key in sorted(set(ours) | set(refs)):
        mine, ref = ours.get(key), refs.get(key)
        mine_f = {f: (v, s) for f, v, s in metric_fields(mine)} if mine else {}
        ref_f = {f: (v, s) for f, v, s in metric_fields(ref)} if ref else {}
        for field in sorted(set(mine_f) | set(ref_f)):
            row = dict.fromkeys(COLUMNS)
            row.update(kind=key[0], run=key[1], field=field)
            if field not in ref_f:
                row.update(value=mine_f[field][0], verdict="new (not in the reference)")
            elif field not in mine_f:
                row.update(reference=ref_f[field][0],
                           verdict="missing in this run" if mine else "not run (its metrics file is absent)")
            else:
                (value, se_a), (reference, se_b) = mine_f[field], ref_f[field]
                se = math.hypot(se_a, se_b) if se_a is not None and se_b is not None else None
                verdict, z = _verdict(value, reference, se)
                diff = value - reference
                row.update(value=value, reference=reference, difference=diff, combined_se=se, z=z, verdict=verdict,
                           relative_difference=diff / abs(reference) if reference else None)
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _value_column(columns: list[str], metric: str) -> str | None:
    """The column holding our mean of ``metric`` (``NLL`` -> ``NLL (bpd)``, ``FID`` -> ``FID``)."""
    for col in columns:
        if col == metric or col.startswith(f"{metric} ("):
            return col
    return None


def _metric_verdict(row_verdict: Any, metric: str) -> str:
    """One metric's verdict from a table row's ``reproduced`` text (``yes``, ``no (NLL, FID)``, ``not comparable…``)."""
    text = "" if row_verdict is None or (isinstance(row_verdict, float) and math.isnan(row_verdict)) \
        else str(row_verdict)
    if text.startswith("no (") and metric not in text.split(")")[0]:
        return "reproduced"
    return {"yes": "reproduced"}.get(text.split(";")[0].strip(), text or "no verdict")


def compare_published(table_csvs: list[Path]) -> pd.DataFrame:
    """Our measured rows' ``Δ X vs paper`` cells from the tables' CSVs, with the tables' verdicts."""
    rows = []
    for path in table_csvs:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        table = Path(path).name.split(".")[0]
        if "Section" not in df:
            raise ReproductionError(f"{path}: not a table CSV of lsgm report tables (no Section column)")
        ours = df[df["Section"].str.startswith("Ours")]
        label_col = "Method" if "Method" in df else "SDE"
        if "Metric" in df:  # Table 6: a Δ row and a verdict row per SDE, one column per cell
            cells = [c for c in df.columns if c not in ("Section", "SDE", "Metric", "n", "vs paper", "source")
                     and not c.endswith((" std", " se", " eval_se", " n", " diverged", " mark"))]
            for sde, group in ours.groupby("SDE", sort=False):
                deltas = group[group["Metric"] == "Δ FID vs paper"]
                verdicts = group[group["Metric"] == "FID reproduced"]
                values = group[group["Metric"].isin(["FID", "fid"])]
                if deltas.empty:
                    for _, row in group.iterrows():
                        rows += [_published_row(table, f"{sde}, {c}", row["Metric"], row[c], None, row["vs paper"])
                                 for c in cells if row[c] not in ("", "—", "n/a")]
                    continue
                for c in cells:
                    ours_value = values[c].iloc[0] if len(values) else None
                    rows.append(_published_row(table, f"{sde}, {c}", "FID", ours_value, deltas[c].iloc[0],
                                               _metric_verdict(verdicts[c].iloc[0] if len(verdicts) else None, "FID")))
            continue
        for _, row in ours.iterrows():
            for col in [c for c in df.columns if c.startswith("Δ ") and c.endswith(" vs paper")]:
                metric = col[2:-len(" vs paper")]
                value_col = _value_column(list(df.columns), metric)
                if row[col] in ("", "—"):
                    continue
                rows.append(_published_row(table, row[label_col], metric, row.get(value_col), row[col],
                                           _metric_verdict(row["reproduced"], metric)))
    return pd.DataFrame(rows, columns=["table", "row", "metric", "value", "paper", "difference", "verdict"])


def _published_row(table: str, label: str, metric: str, value: Any, delta: Any, verdict: Any) -> dict:
    value_f, delta_f = _float(value), _float(delta)
    paper = value_f - delta_f if value_f is not None and delta_f is not None else None
    return {"table": table, "row": label, "metric": metric, "value": value_f, "paper": paper,
            "difference": delta_f, "verdict": verdict if delta_f is not None or verdict else str(delta)}


def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def summary_vs_reference(df: pd.DataFrame, reference: str) -> str:
    """The one line a run ends with (against a reference run)."""
    one_side = df["verdict"].str.startswith(("new", "missing", "not run"))
    compared = df[~one_side]
    ok = compared["verdict"].str.startswith("reproduced")
    text = (f"{int(ok.sum())} of {len(compared)} metrics reproduce {reference} (|Δ| <= {RTOL:g} x |reference|)")
    moved = compared[~ok]
    if len(moved):
        worst = moved.loc[moved["relative_difference"].abs().fillna(math.inf).idxmax()]
        text += (f"; largest deviation: {worst['run']} {worst['kind']} {worst['field']} {worst['value']:.6g} vs "
                 f"{worst['reference']:.6g} ({worst['verdict']})")
    elif len(compared):
        worst = compared.loc[compared["relative_difference"].abs().fillna(0).idxmax()]
        text += f"; largest deviation {abs(worst['relative_difference'] or 0):.1e} relative ({worst['field']})"
    others = int(one_side.sum())
    return text + (f"; {others} fields only in one of the two (see the report)" if others else "")


def summary_vs_paper(df: pd.DataFrame) -> str:
    """The one line a run ends with (against the published numbers)."""
    compared = df[df["difference"].notna()]
    ok = compared["verdict"].astype(str).str.startswith("reproduced")
    text = f"{int(ok.sum())} of {len(compared)} compared metrics reproduce the paper's published numbers"
    reduced = compared["verdict"].astype(str).str.startswith("not comparable (reduced protocol")
    if reduced.any():  # the released scale at a small sample count: a difference, no verdict
        text += f" ({int(reduced.sum())} of them under a reduced protocol: a difference without a verdict)"
    other = len(df) - len(compared)
    if other:
        reasons = sorted(set(df.loc[df["difference"].isna(), "verdict"].astype(str)))
        text += f"; {other} not compared ({'; '.join(reasons)})"
    return text


LEARNED_COLUMNS = ["lsgm", "start", "metric", "learned", "se", "n", "beyond_2_se", "reference", "reference_se"]


def _learned_rows(groups: list[Group]) -> dict[tuple[str, str, str], Agg]:
    """``{(lsgm recipe, its control at initialisation, metric): LSGM - at initialisation}`` for every LSGM recipe with a
    control (Table 6: every cell against its SDE's); the FD also against its sample-quality control."""
    by_name = {(g.recipe, g.dataset): g for g in groups if g.model == "lsgm"}
    out = {}
    for group in by_name.values():
        sde = group.entries[0]["run"].get("sde")
        if init_of(group.recipe, sde):
            continue
        start = by_name.get((f"{group.recipe}_init", group.dataset)) or by_name.get((table6_init_name(sde), group.dataset))
        fds = sorted({n for e in group.entries for n in fd_names(e["fid"])})
        for kind, key, metric in [("nll", nelbo_key, "NELBO"), ("nll", "nll", "NLL"),
                                  *(("fid", name, name) for name in fds)]:
            if start is not None and (diff := paired_difference(group, start, kind, key)) is not None:
                out[(group.recipe, start.recipe, metric)] = diff
        for name in fds:
            diff = paired_difference(group, group, "fid", name, kind_b="fid_normal")
            if diff is not None:
                out[(group.recipe, "its N(0, τ² I) control", name)] = diff
    return out


def learned(run_docs: list[dict], reference_docs: list[dict] | None = None) -> pd.DataFrame:
    """What stage 2 learned, this run beside the reference: LSGM - at initialisation per recipe and metric (mean over
    seeds ± se, seeds' differences paired over the test examples: lsgm/controls.py), and the FD against the
    sample-quality control."""
    ours = _learned_rows(group_runs(list(collect_runs(run_docs).values())))
    refs = _learned_rows(group_runs(list(collect_runs(reference_docs or []).values())))
    rows = []
    for (recipe, start, metric), agg in sorted(ours.items()):
        ref = refs.get((recipe, start, metric))
        rows.append({"lsgm": recipe, "start": start, "metric": metric, "learned": agg.mean, "se": agg.se, "n": agg.n,
                     "beyond_2_se": "yes" if agg.significant else "no",
                     "reference": None if ref is None else ref.mean, "reference_se": None if ref is None else ref.se})
    return pd.DataFrame(rows, columns=LEARNED_COLUMNS)


def render(df: pd.DataFrame, summary: str, intro: str, learned_df: pd.DataFrame | None = None) -> str:
    """The markdown report: the summary line, what was compared, what stage 2 learned, then the moved fields first."""
    order = df.assign(_ok=df["verdict"].astype(str).str.startswith("reproduced")).sort_values(
        "_ok", kind="stable").drop(columns="_ok")
    table = order.to_markdown(index=False, floatfmt=".6g") if len(order) else "(nothing to compare)"
    section = ""
    if learned_df is not None and len(learned_df):
        section = ("## Learned by stage 2\n\nlearned = LSGM − its control (at initialisation: the same run config and "
                   "seed with 0 stage-2 steps; or, for the FD, its decoder with the prior replaced by the Normal of its "
                   "initial mixed score), mean over seeds ± se (each seed's difference paired over the same test "
                   "examples where the files keep them; se combines the spread over seeds with the evaluations' own "
                   "error); beyond_2_se: |learned| > 2 se. reference: the same in the reference run.\n\n"
                   f"{learned_df.to_markdown(index=False, floatfmt='.4g')}\n\n## Every metric\n\n")
    return f"{summary}\n\n{intro}\n\n{section}{table}\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lsgm report reproduction",
                                     description="this run's metrics beside its reference, with verdicts")
    parser.add_argument("--scale", required=True)
    parser.add_argument("--metrics", nargs="*", default=[], help="this run's metrics JSON files")
    parser.add_argument("--reference", type=Path, default=None,
                        help="a reference run's folder (reference/<scale>); without it: the tables vs the paper")
    parser.add_argument("--tables", nargs="*", default=[], help="the tables' CSVs (compared with the paper)")
    parser.add_argument("--md", type=Path, required=True)
    parser.add_argument("--csv", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.reference is None and not args.tables:
        parser.error("give --reference DIR (a reference run) or --tables CSV ... (the published numbers)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; prints the summary line (or a one-line error, exit 2)."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        check_output(args.md, "--md")
        check_output(args.csv, "--csv")
        if args.reference is not None:
            if not (args.reference / "metrics").is_dir():
                raise ReproductionError(f"--reference {args.reference}: no metrics/ folder there")
            refs = [_read(p) for p in sorted((args.reference / "metrics").rglob("*.json"))]
            docs = [_read(Path(p)) for p in args.metrics]
            df = compare_runs(docs, refs)
            learned_df = learned(docs, refs)
            summary = summary_vs_reference(df, str(args.reference))
            intro = (f"Scale {args.scale}: every numeric metric of this run's {len(args.metrics)} metrics files beside "
                     f"the committed reference run {args.reference} ({len(refs)} files), paired by kind and run. "
                     f"reproduced: |Δ| <= {RTOL:g} x |reference| + {ATOL:g} (two fresh clones of one commit agree to "
                     "1.1e-4 relative at most); z: Δ in combined standard errors where both have one. Timings are not "
                     "compared. Fields that moved come first.")
        else:
            df = compare_published(args.tables)
            learned_df = learned([_read(Path(p)) for p in args.metrics])  # the tables' controls, when given
            summary = summary_vs_paper(df)
            intro = (f"Scale {args.scale}: our measured rows of {len(args.tables)} tables beside the paper's published "
                     "numbers (difference = our seed mean - the paper's value; the verdict and its tolerance are the "
                     "tables' own, lsgm/report/published.yaml `reproduction:`).")
    except ValueError as err:
        print(f"lsgm report reproduction: error: {err}", file=sys.stderr)
        return 2
    atomic_write_text(args.csv, df.to_csv(index=False))
    atomic_write_text(args.md, render(df, summary, intro, learned_df))
    print(summary)
    return 0

"""Table 6: the ablation of SGM weighting, time sampling and encoder objective, per SDE (rows = SDE x metric,
columns = the 10 cells and the backbone's ``no score prior``), with marks and, at the paper's data, Δ rows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pandas as pd

from lsgm.methods import TABLE6_COLUMNS, Cell
from lsgm.report.comparison import NOT_COMPARABLE_FD, check_labels, check_unit, not_comparable
from lsgm.report.runs import (
    NA,
    OURS_SECTION,
    PAPER_SECTIONS,
    SDE_LABELS,
    Agg,
    Group,
    fd_names,
    group_metric,
    group_runs,
    nelbo_key,
    published_rows,
    seed_records,
)


BACKBONE_COLUMN = "no score prior"


def cell_of(run: dict) -> Cell:
    return Cell(run.get("sde"), run.get("weighting"), run.get("sampling"), run.get("q_objective"))


def mark_best(values: dict[str, Any]) -> dict[str, Any]:
    """Mark the cells not distinguishable from the best (lowest mean) cell of one SDE and metric:
    ``|mean - best| <= 2 sqrt(se^2 + se_best^2)``, se = std / sqrt(n) over seeds. No marks when the best cell has
    fewer than 2 seeds (its spread is unknown); a cell with fewer than 2 seeds is never marked."""
    finite = {h: v for h, v in values.items() if isinstance(v, Agg) and math.isfinite(v.mean)}
    if not finite:
        return values
    best = min(finite.values(), key=lambda a: a.mean)
    if best.n < 2:
        return values
    out = dict(values)
    for header, agg in finite.items():
        if agg.n >= 2 and abs(agg.mean - best.mean) <= 2 * math.sqrt(agg.se ** 2 + best.se ** 2):
            out[header] = replace(agg, mark=True)
    return out


def n_text(aggs: list[Any]) -> int | str | None:
    """The n of a Table 6 row: one number, or the range when its cells differ."""
    ns = sorted({a.n for a in aggs if isinstance(a, Agg)})
    return None if not ns else ns[0] if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"


def table6_metrics(entries: list[dict]) -> list[tuple[str, str, Callable | str]]:
    """``(row label, document kind, metric key)``: one row per FD/FID name, then NELBO (bits/dim)."""
    names = sorted({n for e in entries for n in fd_names(e["fid"])})
    return [(name, "fid", name) for name in names] + [("NELBO (bpd)", "nll", nelbo_key)]


def vs_paper_text(label: str, why_not: str | None, comparable_fid: bool) -> str:
    if why_not:
        return why_not
    if label.startswith("NELBO"):
        return "not compared (the paper does not state its NELBO estimator)"
    return "see the Δ rows" if comparable_fid else NOT_COMPARABLE_FD


def table6_sde_rows(sde: str, cells: dict[Cell, list[dict]], metrics: list, meta: dict,
                    paper: dict[tuple[str, str], dict], relative: float) -> tuple[list[dict], list[dict]]:
    """The rows of one measured SDE (one per metric, plus Δ rows at paper scale) and their per-seed records."""
    label = f"{SDE_LABELS.get(sde, sde)} (measured)"
    columns = {header: Cell.parse(sde, text) for text, header in TABLE6_COLUMNS.items()}
    dataset = next(e["run"]["dataset"] for c, es in cells.items() if c.sde == sde for e in es)
    rows, seeds = [], []
    for metric, kind, key in metrics:
        values = {}
        for header, cell in columns.items():
            group = Group("lsgm", cell.run_name, dataset, cells.get(cell, []))
            values[header] = NA if cell.na_reason else group_metric(group, kind, key)
            seeds += seed_records("table6", label, header, group.entries, [(kind, key)])
        values = mark_best(values)
        why_not = not_comparable([e for c, es in cells.items() if c.sde == sde for e in es], meta)
        comparable = metric == "fid" and why_not is None
        rows.append({"Section": OURS_SECTION, "SDE": label, "Metric": metric, "n": n_text(list(values.values())),
                     **values, "vs paper": vs_paper_text(metric, why_not, comparable), "source": "ours"})
        if comparable:
            theirs = {h: paper.get((sde, h), {}).get("fid") for h in columns}
            rows += table6_delta_rows(label, values, theirs, relative)
    return rows, seeds


def table6_delta_rows(label: str, values: dict[str, Any], paper: dict[str, Any], relative: float) -> list[dict]:
    """At the paper's data and features: ``Δ FID vs paper`` (ours mean - paper) and ``FID reproduced``
    (|Δ| <= ``relative`` x the paper's FID; a cell both diverged in counts as reproduced)."""
    deltas, verdicts = {}, {}
    for header, ours in values.items():
        theirs = paper.get(header)
        deltas[header] = verdicts[header] = None
        if not isinstance(ours, Agg) or not isinstance(theirs, float):
            continue
        if math.isnan(theirs):
            verdicts[header] = "yes (diverged)" if ours.n_diverged else "no (paper: NaN)"
            continue
        deltas[header] = ours.mean - theirs
        ok = math.isfinite(deltas[header]) and abs(deltas[header]) <= relative * abs(theirs)
        verdicts[header] = "yes" if ok else "no"
    common = {"Section": OURS_SECTION, "SDE": label, "n": None, "vs paper": None, "source": "ours"}
    return [{**common, "Metric": "Δ FID vs paper", **deltas}, {**common, "Metric": "FID reproduced", **verdicts}]


def table6_backbone_rows(groups: list[Group], metrics: list) -> tuple[list[dict], list[dict]]:
    """The reference rows: the Table 6 backbone (a VAE: no score prior), its NELBO and FD."""
    rows, seeds = [], []
    for group in groups:
        label = f"VAE backbone (recipe {group.recipe}, no score prior)"
        for metric, kind, key in metrics:
            value = group_metric(group, kind, key)
            rows.append({"Section": OURS_SECTION, "SDE": label, "Metric": metric,
                         "n": n_text([value]), **dict.fromkeys(TABLE6_COLUMNS.values()), BACKBONE_COLUMN: value,
                         "vs paper": None, "source": "ours"})
            seeds += seed_records("table6", label, BACKBONE_COLUMN, group.entries, [(kind, key)])
    return rows, seeds


def table6_paper_rows(published: dict) -> list[dict[str, Any]]:
    """The paper's Table 6: per SDE a FID row and a NELBO (bits/dim) row."""
    rows = []
    cells = published_rows(published, "table6")
    for method in dict.fromkeys(r["method"] for r in cells):
        mine = {r["column"]: r for r in cells if r["method"] == method}
        for label, key in (("FID", "fid"), ("NELBO (bpd)", "nelbo")):
            values = {header: mine[header][key] for header in TABLE6_COLUMNS.values()}
            rows.append({"Section": PAPER_SECTIONS["Ours"], "SDE": method, "Metric": label, **values,
                         "source": "paper"})
    return rows


def build_table6(entries: list[dict], published: dict) -> pd.DataFrame:
    """Table 6 (no caption): rows = SDE x metric (ours over seeds, the backbone reference, then the paper),
    columns = the 10 cells and the backbone's ``no score prior``."""
    meta = published["tables"]["table6"]
    for entry in entries:
        check_unit(entry, "table6", meta["unit"])
    cells: dict[Cell, list[dict]] = defaultdict(list)
    for entry in entries:
        if entry["run"]["model"] == "lsgm":
            cells[cell_of(entry["run"])].append(entry)
    metrics = table6_metrics(entries)
    paper = {(r["sde"], r["column"]): r for r in published_rows(published, "table6")}
    rows, seeds = [], []
    for sde in SDE_LABELS:
        if any(cell.sde == sde for cell in cells):
            more_rows, more_seeds = table6_sde_rows(sde, cells, metrics, meta, paper,
                                                    published["reproduction"]["fid"]["relative"])
            rows, seeds = rows + more_rows, seeds + more_seeds
    backbones = group_runs([e for e in entries if e["run"]["model"] == "vae"])
    more_rows, more_seeds = table6_backbone_rows(backbones, metrics)
    paper_rows = table6_paper_rows(published)
    check_labels("table6", sorted({r["SDE"] for r in rows + more_rows}), [r["SDE"] for r in paper_rows])
    columns = ["Section", "SDE", "Metric", "n", *TABLE6_COLUMNS.values(), BACKBONE_COLUMN, "vs paper", "source"]
    df = pd.DataFrame([{c: r.get(c) for c in columns} for r in rows + more_rows + paper_rows], columns=columns,
                      dtype=object)
    df.attrs.update(value_columns=[*TABLE6_COLUMNS.values(), BACKBONE_COLUMN], marks=True, seeds=seeds + more_seeds)
    return df

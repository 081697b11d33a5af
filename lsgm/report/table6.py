"""Table 6: the ablation of SGM weighting, time sampling and encoder objective, per SDE (rows = SDE x metric,
columns = the 10 cells, the backbone's ``no score prior`` and the SDE's cells ``at initialisation``), with marks, the
controls (``learned`` = cell - at initialisation; the sample-quality control and ``learned prior``) and, at the paper's
data, Δ rows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pandas as pd

from lsgm.controls import table6_init_name
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
    paired_difference,
    recipe_of,
    published_rows,
    seed_records,
)


BACKBONE_COLUMN = "no score prior"
INIT_COLUMN = "at initialisation"  # the SDE's cells before stage 2 (lsgm/controls.py)


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


def table6_sde_rows(sde: str, cells: dict[Cell, list[dict]], init: list[dict], metrics: list, meta: dict,
                    paper: dict[tuple[str, str], dict], relative: float) -> tuple[list[dict], list[dict]]:
    """The rows of one measured SDE (one per metric, its controls, plus Δ rows at paper scale) and their per-seed
    records. ``init``: the entries of the SDE's control at initialisation."""
    label = f"{SDE_LABELS.get(sde, sde)} (measured)"
    columns = {header: Cell.parse(sde, text) for text, header in TABLE6_COLUMNS.items()}
    dataset = next(e["run"]["dataset"] for c, es in cells.items() if c.sde == sde for e in es)
    groups = {h: Group("lsgm", cell.run_name, dataset, cells.get(cell, [])) for h, cell in columns.items()}
    start = Group("lsgm", table6_init_name(sde), dataset, init) if init else None
    rows, seeds = [], []
    for metric, kind, key in metrics:
        values = {}
        for header, cell in columns.items():
            values[header] = NA if cell.na_reason else group_metric(groups[header], kind, key)
            seeds += seed_records("table6", label, header, groups[header].entries, [(kind, key)])
        values = mark_best(values)
        if start is not None:
            values[INIT_COLUMN] = group_metric(start, kind, key)
            seeds += seed_records("table6", label, INIT_COLUMN, start.entries, [(kind, key)])
        why_not = not_comparable([e for c, es in cells.items() if c.sde == sde for e in es], meta)
        comparable = metric == "fid" and why_not is None
        rows.append({"Section": OURS_SECTION, "SDE": label, "Metric": metric, "n": n_text(list(values.values())),
                     **values, "vs paper": vs_paper_text(metric, why_not, comparable), "source": "ours"})
        more, more_seeds = table6_control_rows(label, metric, kind, key, columns, groups, start)
        rows, seeds = rows + more, seeds + more_seeds
        if comparable:
            theirs = {h: paper.get((sde, h), {}).get("fid") for h in columns}
            rows += table6_delta_rows(label, values, theirs, relative)
    return rows, seeds


def table6_control_rows(label: str, metric: str, kind: str, key, columns: dict[str, Cell], groups: dict[str, Group],
                        start: Group | None) -> tuple[list[dict], list[dict]]:
    """Under a metric's row: ``learned`` (each cell - the SDE's cells at initialisation) and, for the FD, the
    sample-quality control (each cell's prior replaced by N(0, tau^2 I)) and ``learned prior`` (cell - control)."""
    common = {"Section": OURS_SECTION, "SDE": label, "vs paper": None, "source": "ours"}
    rows, seeds = [], []

    def row(name: str, value_of) -> dict:
        values = {h: NA if cell.na_reason else value_of(groups[h]) for h, cell in columns.items()}
        return {**common, "Metric": name, "n": n_text(list(values.values())), **values}

    if start is not None:
        rows.append(row(f"learned {metric}: cell − at initialisation",
                        lambda g: paired_difference(g, start, kind, key) if g.entries else None))
    if kind == "fid" and any(e["fid_normal"] is not None for g in groups.values() for e in g.entries):
        control = f"{metric}, score prior → N(0, τ² I) (control)"
        rows.append(row(control, lambda g: group_metric(g, "fid_normal", key)))
        for header, group in groups.items():
            seeds += seed_records("table6", label, f"{header} ({control})", group.entries, [("fid_normal", key)])
        rows.append(row(f"learned prior {metric}: cell − its control",
                        lambda g: paired_difference(g, g, "fid", key, kind_b="fid_normal") if g.entries else None))
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


def split_entries(entries: list[dict]) -> tuple[dict[Cell, list[dict]], dict[str, list[dict]]]:
    """Table 6's LSGM entries by cell, and each SDE's control at initialisation."""
    cells: dict[Cell, list[dict]] = defaultdict(list)
    inits: dict[str, list[dict]] = defaultdict(list)
    for entry in entries:
        run = entry["run"]
        if run["model"] == "lsgm" and recipe_of(run) == table6_init_name(run["sde"]):
            inits[run["sde"]].append(entry)
        elif run["model"] == "lsgm":
            cells[cell_of(run)].append(entry)
    return cells, inits


def learned_cells(entries: list[dict]) -> dict[str, tuple[int, int]]:
    """Per metric: (cells whose learned difference is more than 2 se from 0, cells with a learned difference)."""
    cells, inits = split_entries(entries)
    out: dict[str, list[int]] = {}
    for metric, kind, key in table6_metrics(entries):
        for cell, es in cells.items():
            start = inits.get(cell.sde)
            if not start:
                continue
            dataset = es[0]["run"]["dataset"]
            diff = paired_difference(Group("lsgm", cell.run_name, dataset, es),
                                     Group("lsgm", table6_init_name(cell.sde), dataset, start), kind, key)
            if diff is not None:
                counts = out.setdefault(metric, [0, 0])
                counts[0] += diff.significant
                counts[1] += 1
    return {m: (a, b) for m, (a, b) in out.items()}


# P(|Z| > 2) for a standard Normal: how often a cell that learned nothing still gets a learned difference beyond 2 se
CHANCE_BEYOND_2SE = math.erfc(2 / math.sqrt(2))


def chance_of_at_least(k: int, n: int, p: float = CHANCE_BEYOND_2SE) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the chance that k or more of n cells that learned nothing are marked."""
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def build_table6(entries: list[dict], published: dict) -> pd.DataFrame:
    """Table 6 (no caption): rows = SDE x metric (ours over seeds, the backbone reference, then the paper),
    columns = the 10 cells and the backbone's ``no score prior``."""
    meta = published["tables"]["table6"]
    for entry in entries:
        check_unit(entry, "table6", meta["unit"])
    cells, inits = split_entries(entries)
    metrics = table6_metrics(entries)
    paper = {(r["sde"], r["column"]): r for r in published_rows(published, "table6")}
    rows, seeds = [], []
    for sde in SDE_LABELS:
        if any(cell.sde == sde for cell in cells):
            more_rows, more_seeds = table6_sde_rows(sde, cells, inits.get(sde, []), metrics, meta, paper,
                                                    published["reproduction"]["fid"]["relative"])
            rows, seeds = rows + more_rows, seeds + more_seeds
    backbones = group_runs([e for e in entries if e["run"]["model"] == "vae"])
    more_rows, more_seeds = table6_backbone_rows(backbones, metrics)
    paper_rows = table6_paper_rows(published)
    check_labels("table6", sorted({r["SDE"] for r in rows + more_rows}), [r["SDE"] for r in paper_rows])
    columns = ["Section", "SDE", "Metric", "n", *TABLE6_COLUMNS.values(), BACKBONE_COLUMN, INIT_COLUMN, "vs paper",
               "source"]
    df = pd.DataFrame([{c: r.get(c) for c in columns} for r in rows + more_rows + paper_rows], columns=columns,
                      dtype=object)
    df.attrs.update(value_columns=[*TABLE6_COLUMNS.values(), BACKBONE_COLUMN, INIT_COLUMN], marks=True,
                    seeds=seeds + more_seeds)
    return df

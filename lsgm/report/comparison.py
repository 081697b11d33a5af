"""Our rows against the paper's: whether they can be compared at all (stand-in data, miniature sizes), the
guards a table refuses to be built without (labels, units, like for like), and ``Δ vs paper`` / ``reproduced``.
"""

from __future__ import annotations

import math
from typing import Any

from lsgm.datasets_info import EXPECTED_COUNTS
from lsgm.like_for_like import NLL_SCORE_PRIOR, mismatches
from lsgm.report.runs import Agg, Group, nll_setting, published_rows, scale_of


NOT_COMPARABLE_DATA = "not comparable (stand-in data)"
NOT_COMPARABLE_MINI = "not comparable (miniature)"  # the paper's data and recipes, at toy sizes (scale mini)
NOT_COMPARABLE_FD = "not comparable (FD, not FID)"
COMPARED = {"nll": "NLL", "fid": "FID"}  # the metrics a row of ours is compared on with its paper counterpart
COMPARABLE_SCALES = (None, "paper", "released")  # the paper's models at the paper's sizes (released: NVlabs' own)
PAPER_FID_SAMPLES = 50_000  # every FID of the paper's tables


def not_comparable(entries: list[dict], meta: dict) -> str | None:
    """Why our rows cannot be compared with the paper's: an offline stand-in dataset, or the paper's data at
    miniature sizes (a scale other than ``paper``); None when they can."""
    if any(e["run"]["dataset"] != meta["dataset"] for e in entries):
        return NOT_COMPARABLE_DATA
    if any(scale_of(e["run"]) not in COMPARABLE_SCALES for e in entries):
        return NOT_COMPARABLE_MINI
    return None


def reduced_protocol(entries: list[dict]) -> str | None:
    """Why a row's evaluations are smaller than the paper's protocol (FID on fewer than 50,000 samples, NLL on part of
    the test split), or None: its Δ vs paper is then printed, its verdict is not given."""
    notes = []
    for e in entries:
        fid, nll = e.get("fid"), e.get("nll")
        n = (fid or {}).get("settings", {}).get("n_samples")
        if n is not None and n < PAPER_FID_SAMPLES:
            notes.append(f"FID on {n:,} of {PAPER_FID_SAMPLES:,} samples")
        if nll is not None:
            count = nll.get("settings", {}).get("n_examples", nll.get("metrics", {}).get("n_examples"))
            full = EXPECTED_COUNTS.get(e["run"]["dataset"], {}).get("test")
            if count is not None and full is not None and count < full:
                notes.append(f"NLL on {count:,} of {full:,} test images")
    return ", ".join(sorted(set(notes))) or None


def check_labels(table: str, ours: list[str], paper: list[str]) -> None:
    """Refuse a row of ours whose label equals a paper label up to case (they must never be confused)."""
    papers = {p.strip().casefold() for p in paper}
    clash = [label for label in ours if label.strip().casefold() in papers]
    if clash:
        raise ValueError(f"{table}: rows of ours labelled like the paper's rows: {', '.join(clash)}")


def check_like_for_like(table: str, groups: list[Group], scale: str) -> None:
    """Refuse a table whose measured rows are not the same estimate (:mod:`lsgm.like_for_like`, the plan's rule):
    NLL rows that differ in K (iw_samples) or, among the LSGM rows, in M, the ODE tolerance, the prior term or
    t_eps; FD/FID rows that differ in the sample count."""
    rows = []
    for group in groups:
        for entry in group.entries:
            nll, fid = entry["nll"], entry["fid"]
            if nll is not None and nll.get("metrics", {}).get("nll") is not None:  # NaN (diverged) counts
                rows.append(("nll", group.model, group.label, {k: nll_setting(nll, k) for k in NLL_SCORE_PRIOR}))
            if fid is not None:
                rows.append(("fid", group.model, group.label, fid.get("settings", {})))
    fix = f"set the same {{key}} in config.yaml scales.{scale}.eval.{{metric}} for every LSGM"
    fixes = {"iw_samples": f"set the same iw_samples in config.yaml scales.{scale}.eval.nll and "
                           f"scales.{scale}.defaults.vae.eval.nll",
             "n_samples": f"set the same n_samples in config.yaml scales.{scale}.eval.fid (and its runs./defaults. "
                          "overrides)"}
    names = {"iw_samples": "K (iw_samples)", "inner": "M (inner ODE solves)", "tolerance": "ODE tolerance",
             "prior": "prior term", "t_eps": "t_eps (NLL)", "n_samples": "sample count (n_samples)"}
    for metric, key, values in mismatches(rows)[:1]:
        seen = "; ".join(f"{key}={v}: {', '.join(map(repr, sorted(labels)))}" for v, labels in values.items())
        rows_name = "NLL" if metric == "nll" else "FD/FID"
        raise ValueError(f"{table}: the measured {rows_name} rows differ in {names[key]} ({seen}); "
                         f"{fixes.get(key, fix.format(key=key, metric=metric))}")


def counterpart(group: Group, table: str, published: dict) -> dict | None:
    """The paper's row measured like ours (``ours: {kind, recipe}`` in ``published.yaml``), or None."""
    for row in published_rows(published, table):
        ours = row.get("ours") or {}
        if ours.get("kind") == group.model and ours.get("recipe") == group.recipe:
            return row
    return None


def tolerance_of(metric: str, paper_value: float, unit: str, published: dict) -> float:
    """How far ours may be from the paper's value and still count as reproduced (``reproduction:``)."""
    rule = published["reproduction"][metric]
    return rule[unit] if metric == "nll" else rule["relative"] * abs(paper_value)


def compare_row(group: Group, values: dict[str, Any], paper: dict | None, meta: dict,
                published: dict) -> tuple[dict[str, Any], str | None]:
    """``({metric: Δ cell}, reproduced verdict)`` of one row of ours against its paper counterpart.

    ``values[metric]``: our Agg (``fid``: None when we measured an FD in other features). Δ = our seed mean
    minus the paper's value; at stand-in data every mark is :data:`NOT_COMPARABLE_DATA`, never a number.
    """
    keys = [k for k in COMPARED if k in meta["metrics"]]
    if paper is None:
        return {k: None for k in keys}, None
    why = not_comparable(group.entries, meta) if group.entries else \
        (NOT_COMPARABLE_DATA if group.dataset != meta["dataset"] else None)
    if why:
        return {k: "not comparable" for k in keys}, why
    deltas, verdicts, notes = {}, [], []
    for key in keys:
        ours, theirs = values.get(key), paper.get(key)
        deltas[key] = None
        if not isinstance(theirs, (int, float)) or not math.isfinite(theirs):
            continue
        if key == "fid" and ours is None and values.get("fd"):
            deltas[key] = "not comparable"
            notes.append(f"FID {NOT_COMPARABLE_FD}")
            continue
        if not isinstance(ours, Agg):
            continue
        deltas[key] = ours.mean - theirs
        ok = not math.isnan(deltas[key]) and abs(deltas[key]) <= tolerance_of(key, theirs, meta["unit"], published)
        verdicts.append((COMPARED[key] + (" diverged" if ours.n_diverged else ""), ok))
    if not verdicts:
        return deltas, "; ".join(notes) or None
    released = any(scale_of(e["run"]) == "released" for e in group.entries)
    reduced = reduced_protocol(group.entries) if released else None
    if reduced:  # the released scale: Δ printed (what the run gives); a verdict would claim the paper's protocol
        return deltas, "; ".join([f"not comparable (reduced protocol: {reduced})", *notes])
    failed = [name for name, ok in verdicts if not ok]
    verdict = "yes" if not failed else f"no ({', '.join(failed)})"
    return deltas, "; ".join([verdict, *notes])


def check_unit(entry: dict, table: str, unit: str) -> None:
    """Refuse an NLL document whose unit is not the table's (bits/dim vs nats)."""
    doc = entry["nll"]
    got = None if doc is None else doc.get("metrics", {}).get("unit")
    if got is not None and got != unit:
        raise ValueError(f"{table}: run {entry['run']['name']!r} reports NLL in {got!r}, table is in {unit!r}")


def delta_headers(meta: dict) -> dict[str, str]:
    return {k: f"Δ {label} vs paper" for k, label in COMPARED.items() if k in meta["metrics"]}

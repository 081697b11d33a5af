"""Tables 2-5: our rows (one recipe over its seeds, with its NLL estimator), the paper's LSGM rows, the
baselines.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd

from lsgm.report.comparison import (
    check_labels,
    check_like_for_like,
    check_unit,
    compare_row,
    counterpart,
    delta_headers,
)
from lsgm.controls import init_of
from lsgm.report.render import fmt_setting
from lsgm.report.runs import (
    OURS_SECTION,
    PAPER_SECTIONS,
    SDE_LABELS,
    STAGE2_SUFFIX,
    Group,
    fd_names,
    group_metric,
    nelbo_key,
    nll_setting,
    paired_difference,
    published_rows,
    scale_of,
    seed_records,
)

RELEASED_SCALE = "released"  # runs of the NVlabs/LSGM released checkpoints (lsgm/plan/released.py)
OFFICIAL_FID = "FID (official cov.)"  # the same samples' FID with evaluate_vada.py's per-process covariances


ESTIMATOR = {"K": "iw_samples", "M": "inner", "prior term": "prior", "ODE tol.": "tolerance", "t_eps (NLL)": "t_eps",
             "t_eps (NELBO)": "nelbo_bound_t_eps"}


def group_label(group: Group) -> str:
    """Our row's label; it names the recipe, so it never equals a paper label (checked by
    :func:`check_labels`)."""
    if group.entries and scale_of(group.entries[0]["run"]) == RELEASED_SCALE:
        what = "LSGM (released checkpoint" if group.model == "lsgm" else "VAE backbone (released stage-1 checkpoint"
        return f"{what}, recipe {group.recipe})"
    if group.model == "lsgm" and init_of(group.recipe):
        return f"LSGM at initialisation (recipe {init_of(group.recipe)}: 0 stage-2 steps)"
    if group.model == "lsgm":
        return f"LSGM, recipe {group.recipe}"
    if group.model == "vae" and group.recipe.endswith(STAGE2_SUFFIX):
        return f"VAE backbone + stage-2 steps (Normal prior, recipe {group.recipe})"
    if group.model == "vae":
        return f"VAE backbone (recipe {group.recipe})"
    if group.model == "sgm":
        sde = group.entries[0]["run"].get("sde")
        return f"Pixel SGM ({SDE_LABELS.get(sde, sde)}), recipe {group.recipe}" if sde else \
            f"Pixel SGM, recipe {group.recipe}"
    return f"{group.model}, recipe {group.recipe}"


def label_groups(groups: list[Group]) -> None:
    """Give every group its label (with its dataset appended where two groups would share one)."""
    counts = defaultdict(int)
    for group in groups:
        counts[group_label(group)] += 1
    for group in groups:
        base = group_label(group)
        group.label = base if counts[base] == 1 else f"{base}, {group.dataset}"


def estimator_columns(group: Group) -> dict[str, str | None]:
    """The NLL estimator of a row, from its nll documents' settings (``{a, b}`` if its seeds differ)."""
    docs = [e["nll"] for e in group.entries if e["nll"] is not None]
    out: dict[str, str | None] = {}
    for header, key in ESTIMATOR.items():
        values = sorted({fmt_setting(nll_setting(d, key)) for d in docs if nll_setting(d, key) is not None})
        out[header] = None if not values else values[0] if len(values) == 1 else "{" + ", ".join(values) + "}"
    return out


def bound_headers(table_meta: dict) -> dict[str, str]:
    """The NELBO and NLL column headers of a results table, by name (``NELBO (bpd)``, ``NLL (bpd)``)."""
    metrics = table_meta["metrics"]
    return {"nelbo": metrics.get("nelbo", f"NELBO ({table_meta['unit']})"), "nll": metrics["nll"]}


def metric_columns(table_meta: dict, groups: list[Group]) -> tuple[list[str], dict[str, str]]:
    """Metric headers of a results table (NELBO, NLL, then sample quality) and, for our FD metrics,
    ``{fd_name: header}``: an FD of ours that is not Inception FID gets its own column (``fd_digits (ours)``),
    so an FD number is never under "FID"."""
    metrics = table_meta["metrics"]
    headers = [bound_headers(table_meta)["nelbo"], bound_headers(table_meta)["nll"]]
    headers += [h for k, h in metrics.items() if k not in ("nelbo", "nll")]
    fd_headers: dict[str, str] = {}
    if "fid" in metrics:
        for name in sorted({n for g in groups for e in g.entries for n in fd_names(e["fid"])}):
            fd_headers[name] = metrics["fid"] if name == "fid" else f"{name} (ours)"
            if fd_headers[name] not in headers:
                headers.append(fd_headers[name])
        if any("official_fid" in (e["fid"] or {}).get("metrics", {}) for g in groups for e in g.entries):
            headers.append(OFFICIAL_FID)
    return headers, fd_headers


def measured_row(table: str, group: Group, meta: dict, columns: list[str], fd_headers: dict[str, str],
                 published: dict) -> tuple[dict[str, Any], list[dict]]:
    """One row of ours (one recipe over its seeds) and its per-seed records."""
    nelbo_h, nll_h = bound_headers(meta)["nelbo"], bound_headers(meta)["nll"]
    row: dict[str, Any] = dict.fromkeys(columns)
    row.update({"Section": OURS_SECTION, "Method": group.label, "n": len(group.entries), "source": "ours",
                "bound": False, nelbo_h: group_metric(group, "nll", nelbo_key),
                nll_h: group_metric(group, "nll", "nll"), **estimator_columns(group)})
    names = sorted({n for e in group.entries for n in fd_names(e["fid"])})
    for name in names:
        row[fd_headers.get(name, name)] = group_metric(group, "fid", name)
    official = [("fid", "official_fid")] if OFFICIAL_FID in columns and any(
        "official_fid" in (e["fid"] or {}).get("metrics", {}) for e in group.entries) else []
    if official:
        row[OFFICIAL_FID] = group_metric(group, "fid", "official_fid")
    values = {"nll": row[nll_h], "fid": row[fd_headers["fid"]] if "fid" in fd_headers and "fid" in names else None,
              "fd": any(n != "fid" for n in names)}
    deltas, row["reproduced"] = compare_row(group, values, counterpart(group, table, published), meta, published)
    row.update({delta_headers(meta)[k]: v for k, v in deltas.items()})
    specs = [("nll", nelbo_key), ("nll", "nll"), *(("fid", name) for name in names), *official]
    return row, seed_records(table, group.label, "", group.entries, specs)


def latent_scale(group: Group) -> str:
    """The tau of a row's sample-quality control, as its fid_normal files record it."""
    taus = sorted({f"{d['settings']['latent_scale']['mean']:.3g}" for e in group.entries
                   if (d := e["fid_normal"]) is not None and d.get("settings", {}).get("latent_scale")})
    return ", ".join(taus) or "?"


def control_rows(table: str, group: Group, init: Group | None, meta: dict, columns: list[str],
                 fd_headers: dict[str, str], pipeline: Group | None = None) -> tuple[list[dict[str, Any]], list[dict]]:
    """The controls of one LSGM row (lsgm/controls.py): ``learned`` = LSGM - at initialisation (every metric), the
    sample-quality control (its prior replaced by N(0, tau^2 I)) and ``learned prior`` = LSGM - that control (FD),
    and, where the table has it, ``score prior vs more training`` = LSGM - its backbone trained on for the same stage-2
    steps with its Normal prior (``pipeline``: the same pipeline without the method); each a difference per seed with
    its standard error."""
    nelbo_h, nll_h = bound_headers(meta)["nelbo"], bound_headers(meta)["nll"]
    names = sorted({n for e in group.entries for n in fd_names(e["fid"])})
    base = {"Section": OURS_SECTION, "n": len(group.entries), "source": "ours", "bound": False}
    rows, seeds = [], []
    if init is not None:
        row = {**dict.fromkeys(columns), **base, "Method": f"learned: LSGM − at initialisation (recipe {group.recipe})",
               nelbo_h: paired_difference(group, init, "nll", nelbo_key), nll_h: paired_difference(group, init, "nll",
                                                                                                 "nll")}
        row.update({fd_headers.get(n, n): paired_difference(group, init, "fid", n) for n in names})
        rows.append(row)
    if any(e["fid_normal"] is not None for e in group.entries):
        name = group.label if scale_of(group.entries[0]["run"]) == RELEASED_SCALE else f"LSGM, recipe {group.recipe}"
        label = f"{name}, score prior → N(0, τ² I), τ = {latent_scale(group)} (control)"
        row = {**dict.fromkeys(columns), **base, "Method": label}
        row.update({fd_headers.get(n, n): group_metric(group, "fid_normal", n) for n in names})
        seeds += seed_records(table, label, "", group.entries, [("fid_normal", n) for n in names])
        learned = {**dict.fromkeys(columns), **base,
                   "Method": f"learned prior: LSGM − its N(0, τ² I) control (recipe {group.recipe})"}
        learned.update({fd_headers.get(n, n): paired_difference(group, group, "fid", n, kind_b="fid_normal")
                        for n in names})
        rows += [row, learned]
    if pipeline is not None:
        row = {**dict.fromkeys(columns), **base,
               "Method": f"score prior vs more training: LSGM − {pipeline.label}",
               nelbo_h: paired_difference(group, pipeline, "nll", nelbo_key),
               nll_h: paired_difference(group, pipeline, "nll", "nll")}
        row.update({fd_headers.get(n, n): paired_difference(group, pipeline, "fid", n) for n in names})
        rows.append(row)
    return rows, seeds


def ordered_rows(table: str, groups: list[Group], meta: dict, columns: list[str], fd_headers: dict[str, str],
                 published: dict) -> list[tuple[dict[str, Any], list[dict]]]:
    """Our rows: each LSGM with, under it, its control at initialisation, ``learned``, its sample-quality control and
    ``learned prior``; then the other rows in their order."""
    inits = {init_of(g.recipe): g for g in groups if g.model == "lsgm" and init_of(g.recipe)}
    pipelines = {g.recipe[:-len(STAGE2_SUFFIX)]: g for g in groups
                 if g.model == "vae" and g.recipe.endswith(STAGE2_SUFFIX)}
    out, placed = [], set()
    for group in groups:
        if group.model == "lsgm" and not init_of(group.recipe):
            out.append(measured_row(table, group, meta, columns, fd_headers, published))
            init = inits.get(group.recipe)
            if init is not None:
                out.append(measured_row(table, init, meta, columns, fd_headers, published))
                placed.add(id(init))
            more, seeds = control_rows(table, group, init, meta, columns, fd_headers, pipelines.get(group.recipe))
            out += [(row, seeds if i == 0 else []) for i, row in enumerate(more)]
    out += [measured_row(table, g, meta, columns, fd_headers, published) for g in groups
            if id(g) not in placed and not (g.model == "lsgm" and not init_of(g.recipe))]
    return out


def paper_row(row: dict, table_meta: dict, columns: list[str]) -> dict[str, Any]:
    """One published row (the paper's own LSGM rows have source ``paper``, baselines ``paper [ref]``)."""
    values = dict.fromkeys(columns)
    for key, header in table_meta["metrics"].items():
        values[header] = row.get(key)
    source = "paper" if row.get("ref") is None else f"paper [{row['ref']}]"
    values.update({"Section": PAPER_SECTIONS.get(row["family"], row["family"]), "Method": row["method"],
                   "source": source, "bound": bool(row.get("bound", False))})
    return values


def build_results_table(table: str, groups: list[Group], published: dict, scale: str) -> pd.DataFrame:
    """Table 2, 3, 4 or 5 (no caption): our rows, then the paper's LSGM rows, then the baselines."""
    meta = published["tables"][table]
    for group in groups:
        for entry in group.entries:
            check_unit(entry, table, meta["unit"])
    check_like_for_like(table, groups, scale)
    headers, fd_headers = metric_columns(meta, groups)
    columns = ["Section", "Method", "n", *headers, *ESTIMATOR, *delta_headers(meta).values(), "reproduced",
               "source", "bound"]
    built = ordered_rows(table, groups, meta, columns, fd_headers, published)
    paper = sorted(published_rows(published, table), key=lambda r: r["family"] != "Ours")  # stable
    check_labels(table, [g.label for g in groups], [r["method"] for r in paper])
    df = pd.DataFrame([r for r, _ in built] + [paper_row(r, meta, columns) for r in paper], columns=columns,
                      dtype=object)
    df.attrs.update(value_columns=headers, marks=False, seeds=[s for _, seeds in built for s in seeds])
    return df

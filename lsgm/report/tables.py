"""Compile the paper's Tables 2-6: our measured rows beside the published numbers.

A table is a :class:`pandas.DataFrame` whose metric cells hold one of three kinds of value:

* a ``float`` -- a measured or published number; ``nan`` means the run diverged (printed ``NaN``);
* the string :data:`NA` (``"n/a"``) -- skipped, or an undefined combination (printed ``n/a``);
* ``None`` -- not measured / not reported (printed ``—``).

``df.attrs["caption"]`` holds the caption. :func:`write_tables` writes, per table,
``tableN.md`` (caption, blank line, markdown table with 2 decimals), ``tableN.csv`` (the same
cells at full precision; tokens ``NaN``, ``n/a``, ``—``; read it with
``pd.read_csv(path, keep_default_na=False)``) and ``tableN.caption.txt`` (the caption alone, so the
CSV stays a plain CSV).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lsgm.datasets_info import offline_standin
from lsgm.methods import TABLE6_COLUMNS, Cell
from lsgm.io import atomic_write_text

PUBLISHED = Path(__file__).with_name("published.yaml")
NA = "n/a"
TOKENS = {"nan": "NaN", "na": NA, "missing": "—"}
DECIMALS = 2
RESULT_TABLES = ("table2", "table3", "table4", "table5")
ALL_TABLES = (*RESULT_TABLES, "table6")
MODEL_LABELS = {"vae": "VAE Backbone", "sgm": "Pixel SGM"}
MODEL_SECTIONS = {"lsgm": "Ours", "vae": "Ours", "sgm": "Score"}
MODEL_ORDER = {"lsgm": 0, "vae": 1, "sgm": 2}
UNITS = {"bpd": "bits/dim", "nats": "nats"}
SDE_LABELS = {"geometric": "Geom. VPSDE", "vpsde": "VPSDE", "vesde": "VESDE"}


# ----------------------------------------------------------------------------- published numbers
def load_published(path: Path = PUBLISHED) -> dict[str, Any]:
    """The published numbers: ``{"tables": {key: meta}, "rows": [row, ...]}`` (see the YAML header)."""
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def published_rows(published: dict[str, Any], table: str) -> list[dict[str, Any]]:
    """The published rows of one table, in the paper's order."""
    return [row for row in published["rows"] if row["table"] == table]


def default_dataset_map(scale: str, published: dict[str, Any]) -> dict[str, str]:
    """Which dataset each table's measured rows come from: the paper's (``published.yaml``) at ``paper`` scale,
    else its offline stand-in (:func:`lsgm.datasets_info.offline_standin`)."""
    return {table: meta["dataset"] if scale == "paper" else offline_standin(meta["dataset"])
            for table, meta in published["tables"].items()}


# ----------------------------------------------------------------------------- measured runs
def collect_runs(metrics: list[dict]) -> dict[str, dict[str, Any]]:
    """Group metrics documents by run name: ``{name: {"run": run, "nll": doc|None, "fid": doc|None}}``.

    Documents of other kinds (``cost``) are ignored; two documents of one kind for one run are an error.
    """
    runs: dict[str, dict[str, Any]] = {}
    for doc in metrics:
        if doc["kind"] not in ("nll", "fid"):
            continue
        name = doc["run"]["name"]
        entry = runs.setdefault(name, {"run": doc["run"], "nll": None, "fid": None})
        if entry[doc["kind"]] is not None:
            raise ValueError(f"run {name!r}: more than one {doc['kind']!r} metrics document")
        entry[doc["kind"]] = doc
    return runs


def metric_value(doc: dict | None, key: str) -> float | str | None:
    """One metric of a document as a table cell: nan if diverged, NA if skipped/null, None if absent."""
    if doc is None:
        return None
    if doc.get("status") == "diverged":
        return math.nan
    if doc.get("status") == "skipped":
        return NA
    if key not in doc.get("metrics", {}):
        return None
    value = doc["metrics"][key]
    return NA if value is None else float(value)


def fd_names(doc: dict | None) -> list[str]:
    """The sample-quality metric names in a ``fid`` document: ``fid`` (Inception) or ``fd_<extractor>``."""
    if doc is None:
        return []
    names = [k for k in doc.get("metrics", {}) if k == "fid" or k.startswith("fd_")]
    if names:
        return names
    extractor = doc.get("settings", {}).get("feature_extractor")
    return ["fid" if extractor in (None, "inception") else f"fd_{extractor}"]


def select_runs(runs: dict[str, dict], table: str, dataset_map: dict[str, str],
                rows: dict[str, list[str]] | None) -> list[dict]:
    """Our runs for one table: the names in ``rows[table]`` (in that order) if given, else every run
    whose ``run.dataset`` is ``dataset_map[table]`` (LSGM runs by name, then VAE, then pixel SGM)."""
    if rows and table in rows:
        missing = [name for name in rows[table] if name not in runs]
        if missing:
            raise ValueError(f"{table}: rows name runs with no metrics: {', '.join(missing)}")
        return [runs[name] for name in rows[table]]
    dataset = dataset_map.get(table)
    chosen = [r for r in runs.values() if r["run"]["dataset"] == dataset]
    return sorted(chosen, key=lambda r: (MODEL_ORDER.get(r["run"]["model"], 9), r["run"]["name"]))


def lsgm_label(name: str) -> str:
    """``quick/digits/lsgm/fid-s0`` -> ``LSGM (fid, s0)``; other names are kept as they are."""
    match = re.fullmatch(r"(?:.*/)?(?P<recipe>[^/]+)-s(?P<seed>\d+)", name)
    return f"LSGM ({match['recipe']}, s{match['seed']})" if match else name


def run_label(entry: dict, selected: list[dict]) -> str:
    """An LSGM run is shown by its name; the VAE backbone and pixel SGM by their role
    (with the run name appended when the table holds several of them)."""
    run = entry["run"]
    if run["model"] not in MODEL_LABELS:
        return lsgm_label(run["name"])
    same = sum(1 for e in selected if e["run"]["model"] == run["model"])
    label = MODEL_LABELS[run["model"]]
    if run["model"] == "sgm" and run.get("sde"):  # the original SGM is a VESDE model (score_sde)
        label = f"{label} ({SDE_LABELS.get(run['sde'], run['sde'])})"
    return f"{label} ({run['name']})" if same > 1 else label


# ----------------------------------------------------------------------------- Tables 2-5
def metric_columns(table_meta: dict, selected: list[dict]) -> tuple[list[str], dict[str, str]]:
    """Column headers of a results table and, for our FD metrics, ``{fd_name: header}``.

    The paper's FID column stays ``FID``; an FD of ours that is not Inception FID gets its own
    column named for its features (e.g. ``fd_digits (ours)``), so an FD number is never under "FID".
    """
    headers = list(table_meta["metrics"].values())
    fd_headers: dict[str, str] = {}
    if "fid" in table_meta["metrics"]:
        for name in sorted({n for e in selected for n in fd_names(e["fid"])}):
            fd_headers[name] = table_meta["metrics"]["fid"] if name == "fid" else f"{name} (ours)"
            if fd_headers[name] not in headers:
                headers.append(fd_headers[name])
    return headers, fd_headers


def check_unit(entry: dict, table: str, unit: str) -> None:
    """Refuse an NLL document whose unit is not the table's (bits/dim vs nats)."""
    doc = entry["nll"]
    got = None if doc is None else doc.get("metrics", {}).get("unit")
    if got is not None and got != unit:
        raise ValueError(f"{table}: run {entry['run']['name']!r} reports NLL in {got!r}, table is in {unit!r}")


def measured_row(entry: dict, table_meta: dict, headers: list[str], fd_headers: dict[str, str],
                 label: str) -> dict[str, Any]:
    """One of our rows: NELBO/NLL from the nll document, FID/FD from the fid document."""
    row: dict[str, Any] = {h: None for h in headers}
    for key, header in table_meta["metrics"].items():
        if key != "fid":
            row[header] = metric_value(entry["nll"], key)
    for name in fd_names(entry["fid"]):
        row[fd_headers[name]] = metric_value(entry["fid"], name)
    model = entry["run"]["model"]
    bound = model == "lsgm" and "nll" in table_meta["metrics"]
    return {"Section": MODEL_SECTIONS.get(model, "Ours"), "Method": label, **row,
            "source": "ours", "bound": bound}


def paper_row(row: dict, table_meta: dict, headers: list[str]) -> dict[str, Any]:
    """One published row (the paper's own LSGM rows have source ``paper``, baselines ``paper [ref]``)."""
    values = {h: None for h in headers}
    for key, header in table_meta["metrics"].items():
        values[header] = row.get(key)
    source = "paper" if row.get("ref") is None else f"paper [{row['ref']}]"
    return {"Section": row["family"], "Method": row["method"], **values, "source": source,
            "bound": bool(row.get("bound", False))}


def build_results_table(table: str, selected: list[dict], published: dict) -> pd.DataFrame:
    """Table 2, 3, 4 or 5 (no caption): our rows, then the paper's LSGM rows, then the baselines."""
    meta = published["tables"][table]
    headers, fd_headers = metric_columns(meta, selected)
    for entry in selected:
        check_unit(entry, table, meta["unit"])
    ours = [measured_row(e, meta, headers, fd_headers, run_label(e, selected)) for e in selected]
    paper = published_rows(published, table)
    paper.sort(key=lambda r: r["family"] != "Ours")  # stable: the paper's own rows first, order kept
    rows = ours + [paper_row(r, meta, headers) for r in paper]
    return pd.DataFrame(rows, columns=["Section", "Method", *headers, "source", "bound"], dtype=object)


# ----------------------------------------------------------------------------- Table 6
def combine(values: list) -> float | str | None:
    """Several seeds of one cell: None if none measured, NA if all skipped, NaN if any diverged, else the mean."""
    present = [v for v in values if v is not None]
    numbers = [v for v in present if not isinstance(v, str)]
    if not present:
        return None
    if not numbers:
        return NA
    return math.nan if any(math.isnan(v) for v in numbers) else sum(numbers) / len(numbers)


def table6_cells(selected: list[dict]) -> dict[Cell, list[dict]]:
    """Our LSGM runs grouped by Table 6 cell (the ``run`` section's sde, weighting, sampling, q_objective)."""
    cells: dict[Cell, list[dict]] = defaultdict(list)
    for entry in selected:
        run = entry["run"]
        cells[Cell(run.get("sde"), run.get("weighting"), run.get("sampling"), run.get("q_objective"))].append(entry)
    return cells


def table6_value(cell: Cell, entries: list[dict], kind: str, key: str) -> float | str | None:
    """One cell of our Table 6: n/a where the paper prints n/a (even if run), else its seeds combined."""
    return NA if cell.na_reason else combine([metric_value(e[kind], key) for e in entries])


def table6_measured_rows(selected: list[dict]) -> list[dict[str, Any]]:
    """Two or more rows per measured SDE: one per FD/FID name, then NELBO (bits/dim)."""
    cells = table6_cells(selected)
    names = sorted({n for e in selected for n in fd_names(e["fid"])})
    metrics = [(name, "fid", name) for name in names] + [("NELBO (bpd)", "nll", "nelbo")]
    rows = []
    for sde, sde_label in SDE_LABELS.items():
        if not any(cell.sde == sde for cell in cells):
            continue
        columns = {header: Cell.parse(sde, text) for text, header in TABLE6_COLUMNS.items()}
        for label, kind, key in metrics:
            values = {header: table6_value(cell, cells.get(cell, []), kind, key) for header, cell in columns.items()}
            rows.append({"SDE": sde_label, "Metric": label, **values, "source": "ours"})
    return rows


def table6_paper_rows(published: dict) -> list[dict[str, Any]]:
    """The paper's Table 6: per SDE a FID row and a NELBO (bits/dim) row."""
    rows = []
    cells = published_rows(published, "table6")
    for method in dict.fromkeys(r["method"] for r in cells):
        mine = {r["column"]: r for r in cells if r["method"] == method}
        for label, key in (("FID", "fid"), ("NELBO (bpd)", "nelbo")):
            values = {header: mine[header][key] for header in TABLE6_COLUMNS.values()}
            rows.append({"SDE": method, "Metric": label, **values, "source": "paper"})
    return rows


def build_table6(selected: list[dict], published: dict) -> pd.DataFrame:
    """Table 6 (no caption): rows = SDE x metric (ours, then the paper), columns = the 10 cells."""
    for entry in selected:
        check_unit(entry, "table6", published["tables"]["table6"]["unit"])
    lsgm_runs = [e for e in selected if e["run"]["model"] == "lsgm"]
    rows = table6_measured_rows(lsgm_runs) + table6_paper_rows(published)
    return pd.DataFrame(rows, columns=["SDE", "Metric", *TABLE6_COLUMNS.values(), "source"], dtype=object)


def build_table(table: str, selected: list[dict], published: dict) -> pd.DataFrame:
    """One table without its caption."""
    if table == "table6":
        return build_table6(selected, published)
    return build_results_table(table, selected, published)


# ----------------------------------------------------------------------------- captions
def unique_settings(docs: list[dict], keys: tuple[str, ...], section: str = "settings") -> str:
    """``key=value`` for each key found in the documents' settings (``{a, b}`` when they differ)."""
    parts = []
    for key in keys:
        values = sorted({str(d[section][key]) for d in docs if d.get(section, {}).get(key) is not None})
        if values:
            parts.append(f"{key}={values[0] if len(values) == 1 else '{' + ', '.join(values) + '}'}")
    return ", ".join(parts) if parts else "—"


def describe_fd(name: str) -> str:
    """What a sample-quality metric name means."""
    if name == "fid":
        return "fid = FID, Fréchet Inception Distance (Inception-v3 features)"
    return (f"{name} = Fréchet distance in the features of the offline `{name[3:]}` classifier "
            f"(an in-domain FD, NOT FID; not comparable in value with the paper's FID)")


def metric_lines(table: str, meta: dict, selected: list[dict]) -> list[str]:
    """Caption lines defining the metrics of our rows and the settings they were measured with."""
    nll_docs = [e["nll"] for e in selected if e["nll"] is not None]
    fid_docs = [e["fid"] for e in selected if e["fid"] is not None]
    unit = UNITS[meta["unit"]]
    lines = [f"Likelihood ({unit}, ours): NELBO = negative ELBO; NLL = importance-weighted NLL estimate "
             f"({unique_settings(nll_docs, ('prior',), 'metrics')}; "
             f"{unique_settings(nll_docs, ('n_samples', 'iw_samples', 'tolerance', 'solver', 't_eps'))})."]
    if table != "table6":
        lines.append("≤ marks an upper bound: an LSGM's NLL (paper and ours) is an importance-weighted "
                     "estimate using the probability-flow ODE likelihood of the score prior, which bounds "
                     "the true NLL from above.")
    if "fid" in meta["metrics"]:
        names = sorted({n for e in selected for n in fd_names(e["fid"])})
        described = "; ".join(describe_fd(n) for n in names) or "none measured"
        lines.append(f"Sample quality (ours): {described}. n samples and ODE solver: "
                     f"{unique_settings(fid_docs, ('n_samples', 'tolerance', 'solver', 'temperature'))}.")
        lines.append("Paper rows: FID on 50k samples, Inception-v3 features.")
    return lines


def commit_line(commit: str, selected: list[dict]) -> str:
    """The report's commit, plus the commits the metrics were computed at when they differ."""
    docs = [e[k] for e in selected for k in ("nll", "fid") if e[k] is not None]
    seen = sorted({d.get("provenance", {}).get("commit", "unknown") for d in docs} - {commit})
    extra = f" (metrics computed at: {', '.join(seen)})" if seen else ""
    return f"Commit: {commit}{extra}."


def dataset_line(table: str, meta: dict, selected: list[dict], scale: str) -> str:
    """Which data our rows were measured on, and what it stands in for."""
    used = sorted({e["run"]["dataset"] for e in selected})
    if not used:
        return f"Our rows: none measured at {scale} scale. Paper rows: {meta['dataset']}."
    standin = "" if used == [meta["dataset"]] else f" (offline stand-in for {meta['dataset']})"
    return f"Our rows: measured on `{', '.join(used)}`{standin}. Paper rows: {meta['dataset']}."


def caption(table: str, published: dict, selected: list[dict], scale: str, commit: str) -> str:
    """The caption of one table: title, scale, dataset, metric definitions, settings, cell legend, commit."""
    meta = published["tables"][table]
    number = table.removeprefix("table")
    lines = [f"Table {number}: {meta['title']}. Scale: {scale}.",
             dataset_line(table, meta, selected, scale),
             *metric_lines(table, meta, selected),
             "Cells: NaN = diverged; n/a = skipped or undefined combination; — = not measured / not "
             "reported. Lower is better for every metric.",
             f"Published numbers: {meta['source']['seed']} ({meta['source']['table']}); source column: "
             "ours = measured here, paper [n] = the paper's citation n.",
             commit_line(commit, selected)]
    if table == "table6":
        lines.insert(-2, "Columns: w_x = SGM weighting (ll, un, re); U = t ~ U[t_eps, 1], r_x = importance-"
                         "sampled t; last part = encoder objective (rew. = reweighted, r_ll = likelihood "
                         "weighting with r_ll(t) sampling). n/a: r_un(t) does not exist for the geometric "
                         "VPSDE, and r_ll(t) is U[0, 1] for it. Cells with several seeds show their mean.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- build + write
def build_tables(metrics: list[dict], scale: str, commit: str, dataset_map: dict | None = None,
                 rows: dict[str, list[str]] | None = None, published: dict | None = None,
                 only: tuple[str, ...] = ALL_TABLES) -> dict[str, pd.DataFrame]:
    """Tables 2-6 (or the tables ``only`` names) as DataFrames keyed ``table2`` .. ``table6`` (caption in
    ``df.attrs["caption"]``); a table of one is the same as in the full set.

    ``dataset_map[table]`` is the ``run.dataset`` whose runs fill that table (default:
    :func:`default_dataset_map`); ``rows[table]`` (optional) lists run names explicitly instead.
    """
    unknown = [table for table in only if table not in ALL_TABLES]
    if unknown:
        raise ValueError(f"no table {', '.join(unknown)}; the tables: {', '.join(ALL_TABLES)}")
    published = published or load_published()
    dataset_map = {**default_dataset_map(scale, published), **(dataset_map or {})}
    runs = collect_runs(metrics)
    tables = {}
    for table in only:
        selected = select_runs(runs, table, dataset_map, rows)
        df = build_table(table, selected, published)
        df.attrs["caption"] = caption(table, published, selected, scale, commit)
        tables[table] = df
    return tables


def format_cell(value: Any, decimals: int | None = DECIMALS, bound: bool = False) -> str:
    """A cell as text: fixed decimals (``None``: full precision), ``NaN``, ``n/a`` or ``—``."""
    if value is None:
        return TOKENS["missing"]
    if isinstance(value, str):
        return value
    if math.isnan(value):
        return TOKENS["nan"]
    text = repr(float(value)) if decimals is None else f"{value:.{decimals}f}"
    return f"≤ {text}" if bound else text


def render(df: pd.DataFrame, decimals: int | None) -> pd.DataFrame:
    """All cells as text. Markdown (fixed decimals) folds ``bound`` into the NLL cell as ``≤``; the
    CSV (full precision) keeps the ``bound`` column."""
    meta_cols = {"Section", "Method", "SDE", "Metric", "source", "bound"}
    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        if col == "bound" and decimals is not None:
            continue
        if col in meta_cols:
            out[col] = df[col].astype(str)
            continue
        marked = "bound" in df and col.startswith("NLL") and decimals is not None
        bounds = df["bound"] if marked else [False] * len(df)
        out[col] = [format_cell(v, decimals, bool(b)) for v, b in zip(df[col], bounds)]
    return out


def to_markdown(df: pd.DataFrame) -> str:
    """Caption, blank line, then the markdown table (numbers kept as printed)."""
    table = render(df, DECIMALS).to_markdown(index=False, disable_numparse=True)
    return f"{df.attrs.get('caption', '')}\n\n{table}\n"


def table_texts(df: pd.DataFrame) -> dict[str, str]:
    """The files of one table by suffix: ``md`` (caption, blank line, table), ``csv``, ``caption.txt``."""
    return {"md": to_markdown(df), "csv": render(df, None).to_csv(index=False),
            "caption.txt": df.attrs.get("caption", "") + "\n"}


def write_tables(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Write ``tableN.md``, ``tableN.csv`` and ``tableN.caption.txt`` atomically; return the paths."""
    written = []
    for key, df in tables.items():
        for suffix, text in table_texts(df).items():
            path = Path(out_dir) / f"{key}.{suffix}"
            atomic_write_text(path, text)
            written.append(path)
    return written


def write_table(df: pd.DataFrame, md: Path, csv: Path) -> list[Path]:
    """Write one table's markdown (its caption inside) and CSV to exactly these paths, atomically."""
    texts = table_texts(df)
    for path, suffix in ((md, "md"), (csv, "csv")):
        atomic_write_text(Path(path), texts[suffix])
    return [Path(md), Path(csv)]

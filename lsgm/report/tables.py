"""Compile the paper's Tables 2-6: our measured rows beside the published numbers.

Our runs are named ``{scale}/{dataset}/{kind}/{recipe}-s{seed}``; a printed row of ours is one recipe (kind +
recipe name) over its seeds. A table is a :class:`pandas.DataFrame` whose cells hold one of:

* an :class:`Agg` -- one of our metrics over the row's seeds (mean ± sample std, n, how many diverged; a mean of
  ``nan`` when any seed diverged: printed ``NaN (k of n seeds diverged)``, never a silently dropped seed);
* a ``float`` -- a published number (``nan``: the paper prints NaN) or a difference ``Δ vs paper``;
* a ``str`` -- :data:`NA` (``"n/a"``: skipped, or an undefined combination), a setting, or a verdict text;
* ``None`` -- not measured / not reported (printed ``—``).

``df.attrs`` holds ``caption``, ``value_columns`` (the columns whose :class:`Agg` cells the CSV splits into
mean / std / n / diverged columns), ``marks`` (Table 6: the CSV gets a mark column per cell) and ``seeds``
(the per-seed long records). :func:`write_tables` writes, per table, ``tableN.md`` (caption, blank line,
markdown table with 2 decimals), ``tableN.csv`` (the printed rows at full precision; tokens ``NaN``, ``n/a``,
``—``; read it with ``pd.read_csv(path, keep_default_na=False)``), ``tableN.seeds.csv`` (one line per run x
metric: the value and the settings it was measured with) and ``tableN.caption.txt``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lsgm.datasets_info import offline_standin
from lsgm.io import atomic_write_text
from lsgm.like_for_like import NLL_SCORE_PRIOR, mismatches
from lsgm.methods import TABLE6_COLUMNS, Cell

PUBLISHED = Path(__file__).with_name("published.yaml")
NA = "n/a"
TOKENS = {"nan": "NaN", "na": NA, "missing": "—"}
DECIMALS = 2
RESULT_TABLES = ("table2", "table3", "table4", "table5")
ALL_TABLES = (*RESULT_TABLES, "table6")
OURS_SECTION = "Ours (measured)"
PAPER_SECTIONS = {"Ours": "LSGM (paper)"}  # the paper's own rows; baselines keep the paper's family
MODEL_ORDER = {"lsgm": 0, "vae": 1, "sgm": 2}
UNITS = {"bpd": "bits/dim", "nats": "nats"}
SDE_LABELS = {"geometric": "Geom. VPSDE", "vpsde": "VPSDE", "vesde": "VESDE"}
STAGE2_SUFFIX = "_stage2"  # a vae control recipe: the backbone trained on for the LSGM's stage-2 steps
TABLE6_BACKBONE = "table6"  # the vae recipe of the Table 6 backbone (its reference row)
NOT_COMPARABLE_DATA = "not comparable (stand-in data)"
NOT_COMPARABLE_MINI = "not comparable (miniature)"  # the paper's data and recipes, at toy sizes (scale mini)
NOT_COMPARABLE_FD = "not comparable (FD, not FID)"
MARK = "†"
ESTIMATOR = {"K": "iw_samples", "M": "inner", "prior term": "prior", "ODE tol.": "tolerance", "t_eps (NLL)": "t_eps",
             "t_eps (NELBO)": "nelbo_bound_t_eps"}
COMPARED = {"nll": "NLL", "fid": "FID"}  # the metrics a row of ours is compared on with its paper counterpart
BACKBONE_COLUMN = "no score prior"
BACKBONE_DIVERGED = "backbone diverged"  # how a run's reason starts when its stage-1 backbone diverged (not trained)
SEED_COLUMNS = ("table", "section", "row", "column", "run", "seed", "metric", "value", "eval_stderr", "K", "M",
                "prior", "estimator", "tolerance", "t_eps", "t_draws", "n_examples", "n_samples", "status", "reason",
                "commit")


# ----------------------------------------------------------------------------- published numbers
def load_published(path: Path = PUBLISHED) -> dict[str, Any]:
    """The published numbers: ``{"tables": {key: meta}, "reproduction": {...}, "rows": [row, ...]}``."""
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def published_rows(published: dict[str, Any], table: str) -> list[dict[str, Any]]:
    """The published rows of one table, in the paper's order."""
    return [row for row in published["rows"] if row["table"] == table]


def default_dataset_map(scale: str, published: dict[str, Any], runs: dict | None = None) -> dict[str, str]:
    """Which dataset each table's measured rows come from: the paper's (``published.yaml``) at ``paper`` scale or
    when our runs are on it (the paper scale in miniature), else its offline stand-in
    (:func:`lsgm.datasets_info.offline_standin`)."""
    ours = {r["run"]["dataset"] for r in (runs or {}).values()}
    return {table: meta["dataset"] if scale == "paper" or meta["dataset"] in ours else offline_standin(meta["dataset"])
            for table, meta in published["tables"].items()}


def scale_of(run: dict) -> str | None:
    """``mini/cifar10/lsgm/fid-s0`` -> ``mini`` (None for a name without the scale)."""
    return run["name"].split("/", 1)[0] if run["name"].count("/") >= 3 else None


def not_comparable(entries: list[dict], meta: dict) -> str | None:
    """Why our rows cannot be compared with the paper's: an offline stand-in dataset, or the paper's data at
    miniature sizes (a scale other than ``paper``); None when they can."""
    if any(e["run"]["dataset"] != meta["dataset"] for e in entries):
        return NOT_COMPARABLE_DATA
    if any(scale_of(e["run"]) not in (None, "paper") for e in entries):
        return NOT_COMPARABLE_MINI
    return None


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


RUN_NAME = re.compile(r"(?:.*/)?(?P<recipe>[^/]+?)-s(?P<seed>\d+)")


def recipe_of(run: dict) -> str:
    """``quick/digits/lsgm/fid-s0`` -> ``fid``; a name without ``-s<seed>`` is its own recipe."""
    match = RUN_NAME.fullmatch(run["name"])
    return match["recipe"] if match else run["name"]


def seed_of(run: dict) -> int | None:
    """The run's seed (``run.seed``; else the ``-s<seed>`` of its name)."""
    if run.get("seed") is not None:
        return int(run["seed"])
    match = RUN_NAME.fullmatch(run["name"])
    return int(match["seed"]) if match else None


@dataclass
class Group:
    """One recipe of ours (model, recipe, dataset) and its runs, one per seed (sorted by seed)."""

    model: str
    recipe: str
    dataset: str
    entries: list[dict]
    label: str = ""

    @property
    def seeds(self) -> list[int | None]:
        return [seed_of(e["run"]) for e in self.entries]


def group_runs(entries: list[dict]) -> list[Group]:
    """Our runs grouped into recipes, in the order of their first run."""
    groups: dict[tuple, Group] = {}
    for entry in entries:
        run = entry["run"]
        key = (run["model"], recipe_of(run), run["dataset"])
        groups.setdefault(key, Group(*key, entries=[])).entries.append(entry)
    for group in groups.values():
        group.entries.sort(key=lambda e: (seed_of(e["run"]) is None, seed_of(e["run"]) or 0, e["run"]["name"]))
    return list(groups.values())


def is_table6_run(run: dict) -> bool:
    """A Table 6 run: an LSGM named for its cell (``vpsde-w_un-is-q_rew``) or the Table 6 backbone."""
    if run["model"] == "vae":
        return recipe_of(run) == TABLE6_BACKBONE
    fields = [run.get(k) for k in ("sde", "weighting", "sampling", "q_objective")]
    return run["model"] == "lsgm" and None not in fields and Cell(*fields).run_name == recipe_of(run)


def select_runs(runs: dict[str, dict], table: str, dataset_map: dict[str, str],
                rows: dict[str, list[str]] | None) -> list[dict]:
    """Our runs for one table: the names in ``rows[table]`` (in that order) if given, else every run whose
    ``run.dataset`` is ``dataset_map[table]`` -- Table 6 takes the Table 6 runs (:func:`is_table6_run`), the
    other tables the rest (LSGM runs by name, then VAE, then pixel SGM)."""
    if rows and table in rows:
        missing = [name for name in rows[table] if name not in runs]
        if missing:
            raise ValueError(f"{table}: rows name runs with no metrics: {', '.join(missing)}")
        return [runs[name] for name in rows[table]]
    dataset = dataset_map.get(table)
    chosen = [r for r in runs.values()
              if r["run"]["dataset"] == dataset and is_table6_run(r["run"]) == (table == "table6")]
    return sorted(chosen, key=lambda r: (MODEL_ORDER.get(r["run"]["model"], 9), r["run"]["name"]))


# ----------------------------------------------------------------------------- one metric over seeds
@dataclass(frozen=True)
class Agg:
    """One metric of one row of ours over its seeds: ``values`` (one per seed reporting it; nan = diverged)."""

    values: tuple[float, ...]
    mark: bool = False  # Table 6: not distinguishable from the best cell of its SDE
    by_backbone: int = 0  # of the diverged seeds, those whose backbone diverged (never trained)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def n_diverged(self) -> int:
        return sum(1 for v in self.values if math.isnan(v))

    @property
    def mean(self) -> float:
        return math.nan if self.n_diverged else statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (ddof=1); nan with one seed or a diverged seed."""
        return math.nan if self.n_diverged or self.n < 2 else statistics.stdev(self.values)

    @property
    def se(self) -> float:
        return self.std / math.sqrt(self.n)


def metric_value(doc: dict | None, key: str) -> float | str | None:
    """One metric of a document: nan if diverged, NA if skipped/null, None if absent."""
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


def aggregate(values: list[float | str | None]) -> Agg | str | None:
    """Several seeds of one metric: None if none measured, NA if all skipped, else an :class:`Agg`."""
    numbers = tuple(v for v in values if isinstance(v, float))
    if numbers:
        return Agg(numbers)
    return NA if any(v == NA for v in values) else None


def nelbo_key(doc: dict | None) -> str:
    """The NELBO of a document: ``nelbo_bound`` (Theorem 1's DSM bound for an LSGM) when present, else
    ``nelbo``."""
    return "nelbo_bound" if doc is not None and "nelbo_bound" in doc.get("metrics", {}) else "nelbo"


def fd_names(doc: dict | None) -> list[str]:
    """The sample-quality metric names in a ``fid`` document: ``fid`` (Inception) or ``fd_<extractor>``."""
    if doc is None:
        return []
    names = [k for k in doc.get("metrics", {}) if k == "fid" or (k.startswith("fd_") and not k.endswith("_stderr"))]
    if names:
        return names
    extractor = doc.get("settings", {}).get("feature_extractor")
    if isinstance(extractor, dict):
        extractor = extractor.get("metric_name", "fd_?").removeprefix("fd_")
    return ["fid" if extractor in (None, "inception", "fid") else f"fd_{extractor}"]


def backbone_diverged(doc: dict | None) -> bool:
    """Whether a document is of a run that was not trained because its stage-1 backbone diverged."""
    return doc is not None and doc.get("status") == "diverged" and \
        str(doc.get("reason") or "").startswith(BACKBONE_DIVERGED)


def group_metric(group: Group, kind: str, key: Callable[[dict | None], str] | str) -> Agg | str | None:
    """One metric of a row over its seeds (``key``: a metric name, or a function of the document)."""
    docs = [e[kind] for e in group.entries]
    agg = aggregate([metric_value(doc, key if isinstance(key, str) else key(doc)) for doc in docs])
    return replace(agg, by_backbone=sum(map(backbone_diverged, docs))) if isinstance(agg, Agg) else agg


# ----------------------------------------------------------------------------- per-seed records
def _stderr(doc: dict, key: str) -> float | None:
    metrics = doc.get("metrics", {})
    for name in (f"{key}_stderr", "fd_stderr" if key.startswith("fd_") else "fid_stderr", "stderr"):
        if metrics.get(name) is not None:
            return float(metrics[name])
    return None


def estimator(doc: dict, key: str, model: str) -> str:
    """What one number of one document is, in a short code (see ``workflow/report/tables.rst``)."""
    prior = doc.get("settings", {}).get("prior") or doc.get("metrics", {}).get("prior") or "normal"
    if key == "nll":
        return "iw_bound_normal" if model == "vae" else f"iw_estimate_{prior}"
    if key == "nelbo_bound":
        return "nelbo_normal" if model == "vae" else "nelbo_dsm_bound"
    if key == "nelbo":
        return "nelbo_normal" if model == "vae" else f"nelbo_{prior}"
    return "fid_inception" if key == "fid" else f"fd_{key.removeprefix('fd_')}_features"


def seed_record(table: str, label: str, column: str, entry: dict, kind: str, key: str) -> dict[str, Any]:
    """One line of ``tableN.seeds.csv``: one run's value of one metric and the settings it was measured with."""
    doc, run = entry[kind], entry["run"]
    settings = doc.get("settings", {})
    nll_doc = kind == "nll"
    ode = key != "nelbo_bound"  # the Theorem 1 bound solves no ODE: no M, no tolerance
    return {"table": table, "section": OURS_SECTION, "row": label, "column": column, "run": run["name"],
            "seed": seed_of(run), "metric": key, "value": metric_value(doc, key), "eval_stderr": _stderr(doc, key),
            "K": settings.get("iw_samples") if nll_doc else None,
            "M": settings.get("inner") if nll_doc and ode else None,
            "prior": _setting(doc, "prior") if nll_doc else None,
            "estimator": estimator(doc, key, run["model"]), "tolerance": settings.get("tolerance") if ode else None,
            "t_eps": settings.get("nelbo_bound_t_eps" if key == "nelbo_bound" else "t_eps") if nll_doc else None,
            "t_draws": settings.get("t_draws") if key == "nelbo_bound" else None,
            "n_examples": settings.get("n_examples", doc.get("metrics", {}).get("n_examples")),
            "n_samples": settings.get("n_samples"), "status": doc.get("status"),
            "reason": doc.get("reason") if doc.get("status") != "ok" else None,
            "commit": doc.get("provenance", {}).get("commit")}


def seed_records(table: str, label: str, column: str, group_entries: list[dict],
                 specs: list[tuple[str, Callable[[dict | None], str] | str]]) -> list[dict]:
    """The per-seed lines of one row (or Table 6 cell): every run x every metric spec ``(kind, key)``."""
    out = []
    for entry in group_entries:
        for kind, key in specs:
            if entry[kind] is not None:
                name = key if isinstance(key, str) else key(entry[kind])
                out.append(seed_record(table, label, column, entry, kind, name))
    return out


# ----------------------------------------------------------------------------- labels and guards
def group_label(group: Group) -> str:
    """Our row's label; it names the recipe, so it never equals a paper label (checked by
    :func:`check_labels`)."""
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


def check_labels(table: str, ours: list[str], paper: list[str]) -> None:
    """Refuse a row of ours whose label equals a paper label up to case (they must never be confused)."""
    papers = {p.strip().casefold() for p in paper}
    clash = [label for label in ours if label.strip().casefold() in papers]
    if clash:
        raise ValueError(f"{table}: rows of ours labelled like the paper's rows: {', '.join(clash)}")


def _setting(doc: dict, key: str) -> Any:
    """One setting of an nll document (``prior`` falls back to ``metrics.prior``)."""
    value = doc.get("settings", {}).get(key)
    return doc.get("metrics", {}).get("prior") if value is None and key == "prior" else value


def check_like_for_like(table: str, groups: list[Group], scale: str) -> None:
    """Refuse a table whose measured rows are not the same estimate (:mod:`lsgm.like_for_like`, the plan's rule):
    NLL rows that differ in K (iw_samples) or, among the LSGM rows, in M, the ODE tolerance, the prior term or
    t_eps; FD/FID rows that differ in the sample count."""
    rows = []
    for group in groups:
        for entry in group.entries:
            nll, fid = entry["nll"], entry["fid"]
            if nll is not None and nll.get("metrics", {}).get("nll") is not None:  # NaN (diverged) counts
                rows.append(("nll", group.model, group.label, {k: _setting(nll, k) for k in NLL_SCORE_PRIOR}))
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


def fmt_setting(value: Any) -> str:
    """A setting as printed: ``1e-05``, ``100``, ``ode``."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def estimator_columns(group: Group) -> dict[str, str | None]:
    """The NLL estimator of a row, from its nll documents' settings (``{a, b}`` if its seeds differ)."""
    docs = [e["nll"] for e in group.entries if e["nll"] is not None]
    out: dict[str, str | None] = {}
    for header, key in ESTIMATOR.items():
        values = sorted({fmt_setting(_setting(d, key)) for d in docs if _setting(d, key) is not None})
        out[header] = None if not values else values[0] if len(values) == 1 else "{" + ", ".join(values) + "}"
    return out


# ----------------------------------------------------------------------------- Δ vs paper
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
    failed = [name for name, ok in verdicts if not ok]
    verdict = "yes" if not failed else f"no ({', '.join(failed)})"
    return deltas, "; ".join([verdict, *notes])


# ----------------------------------------------------------------------------- Tables 2-5
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
    return headers, fd_headers


def check_unit(entry: dict, table: str, unit: str) -> None:
    """Refuse an NLL document whose unit is not the table's (bits/dim vs nats)."""
    doc = entry["nll"]
    got = None if doc is None else doc.get("metrics", {}).get("unit")
    if got is not None and got != unit:
        raise ValueError(f"{table}: run {entry['run']['name']!r} reports NLL in {got!r}, table is in {unit!r}")


def delta_headers(meta: dict) -> dict[str, str]:
    return {k: f"Δ {label} vs paper" for k, label in COMPARED.items() if k in meta["metrics"]}


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
    values = {"nll": row[nll_h], "fid": row[fd_headers["fid"]] if "fid" in fd_headers and "fid" in names else None,
              "fd": any(n != "fid" for n in names)}
    deltas, row["reproduced"] = compare_row(group, values, counterpart(group, table, published), meta, published)
    row.update({delta_headers(meta)[k]: v for k, v in deltas.items()})
    specs = [("nll", nelbo_key), ("nll", "nll"), *(("fid", name) for name in names)]
    return row, seed_records(table, group.label, "", group.entries, specs)


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
    built = [measured_row(table, g, meta, columns, fd_headers, published) for g in groups]
    paper = sorted(published_rows(published, table), key=lambda r: r["family"] != "Ours")  # stable
    check_labels(table, [g.label for g in groups], [r["method"] for r in paper])
    df = pd.DataFrame([r for r, _ in built] + [paper_row(r, meta, columns) for r in paper], columns=columns,
                      dtype=object)
    df.attrs.update(value_columns=headers, marks=False, seeds=[s for _, seeds in built for s in seeds])
    return df


# ----------------------------------------------------------------------------- Table 6
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


def build_table(table: str, entries: list[dict], published: dict, scale: str) -> pd.DataFrame:
    """One table without its caption."""
    if table == "table6":
        return build_table6(entries, published)
    groups = group_runs(entries)
    label_groups(groups)
    return build_results_table(table, groups, published, scale)


# ----------------------------------------------------------------------------- captions
def unique_settings(docs: list[dict], keys: tuple[str, ...], section: str = "settings") -> str:
    """``key=value`` for each key found in the documents' settings (``{a, b}`` when they differ)."""
    parts = []
    for key in keys:
        values = sorted({fmt_setting(d[section][key]) for d in docs if d.get(section, {}).get(key) is not None})
        if values:
            parts.append(f"{key}={values[0] if len(values) == 1 else '{' + ', '.join(values) + '}'}")
    return ", ".join(parts) if parts else "—"


def describe_fd(name: str) -> str:
    """What a sample-quality metric name means."""
    if name == "fid":
        return "fid = FID, Fréchet Inception Distance (Inception-v3 features)"
    return (f"{name} = Fréchet distance in the features of the offline `{name[3:]}` classifier "
            f"(an in-domain FD, NOT FID; not comparable in value with the paper's FID)")


def seeds_line(entries: list[dict]) -> str:
    """How many seeds each row of ours aggregates, and how."""
    groups = group_runs(entries)
    if not groups:
        return "Rows of ours: none."
    ns = sorted({len(g.entries) for g in groups})
    seeds = sorted({s for g in groups for s in g.seeds if s is not None})
    n = f"n = {ns[0]} seed{'s' * (ns[0] > 1)} per row of ours" if len(ns) == 1 else \
        f"n = {ns[0]}–{ns[-1]} seeds per row of ours"
    single = " With n = 1 a cell is that seed's value: no ± std, no spread known." if ns[0] == 1 else ""
    return (f"Rows of ours (section \"{OURS_SECTION}\"): one per recipe, mean ± std over its seeds (sample std, "
            f"ddof=1); {n} (column n; seeds {', '.join(map(str, seeds)) or '?'}); (n=k) on a cell with fewer "
            f"seeds than its row.{single} NaN (k of n seeds diverged): a seed diverged, so the mean is NaN (every "
            "seed's value is in tableN.seeds.csv).")


def nelbo_line(unit: str, nll_docs: list[dict]) -> str:
    """What the NELBO column is, and which LSGM rows fall back to ``nelbo`` (no ``nelbo_bound`` in their files)."""
    lsgm = [d for d in nll_docs if d["run"]["model"] != "vae" and d.get("status") != "diverged"]
    bound = [d for d in lsgm if nelbo_key(d) == "nelbo_bound"]
    fallback = sorted({recipe_of(d["run"]) for d in lsgm if nelbo_key(d) == "nelbo"})
    parts = []
    if bound:
        parts.append("LSGM rows: the prior cross entropy is the denoising score matching bound of Theorem 1 "
                     "(likelihood weighting, importance-sampled t in [t_eps, 1], "
                     f"{unique_settings(bound, ('t_draws',)).replace('—', 't_draws not recorded')}) plus the "
                     "truncation term -D log m(t_eps) that makes it a bound on -log p(z0) for every SDE and t_eps "
                     "(column t_eps (NELBO))")
    if any(d["run"]["model"] == "vae" for d in nll_docs):
        parts.append("VAE rows: the exact N(0, I) prior")
    if fallback:
        which = "every LSGM row" if not bound else f"LSGM recipes {', '.join(fallback)}"
        parts.append(f"fallback for {which} (no `nelbo_bound` in their metrics files): `nelbo`, whose prior cross "
                     "entropy is the probability-flow ODE's -log p(z0), a Hutchinson estimate -- a bound only up to "
                     "the ODE solver's error, not the Theorem 1 bound")
    return (f"NELBO ({unit}, ours): negative ELBO, an upper bound on -log p(x) in expectation (over the encoder "
            f"sample and, for an LSGM, the diffusion time); {'; '.join(parts)}.")


def nll_line(unit: str, nll_docs: list[dict]) -> str:
    """What the NLL column is, with the estimator's settings."""
    lsgm = [d for d in nll_docs if d["run"]["model"] == "lsgm"]
    vae = [d for d in nll_docs if d["run"]["model"] == "vae"]
    k = unique_settings(nll_docs, ("iw_samples",)).replace("iw_samples", "K")
    line = f"NLL ({unit}, ours): importance-weighted -log (1/K sum_k exp(-NELBO_k)) with {k}"
    if lsgm:
        settings = unique_settings(lsgm, ("inner", "tolerance", "solver", "t_eps")).replace("inner", "M")
        line += (f"; LSGM rows: the prior's log p from the probability-flow ODE ({settings}, Hutchinson trace "
                 "estimator) -- an estimate, not a bound, for the LSGM rows (ODE error, Hutchinson noise, "
                 "logsumexp bias for K > 1)")
    if vae:
        line += "; VAE rows: the importance-weighted bound with the exact N(0, I) prior (an upper bound)"
    return line + (". Columns K, M, prior term, ODE tol., t_eps (NLL): the NLL estimator of each row (its nll files' "
                   "settings); t_eps (NELBO): the lower time of the NELBO's Theorem 1 integral.")


def compare_lines(table: str, meta: dict, published: dict, why_not: str | None) -> list[str]:
    """What ``Δ vs paper`` and ``reproduced`` mean, with the tolerance."""
    rule = published["reproduction"]
    nll_tol = f"|Δ NLL| <= {rule['nll'][meta['unit']]} {UNITS[meta['unit']]}"
    fid_tol = f"|Δ FID| <= {rule['fid']['relative']:.0%} of the paper's FID"
    tols = " and ".join(t for k, t in (("nll", nll_tol), ("fid", fid_tol)) if k in meta["metrics"])
    lines = [(f"Δ vs paper: our seed mean minus the paper's value for the paper's row measured the same way "
             f"(published.yaml `ours:`; — = no counterpart). reproduced: yes when {tols} for every compared metric "
             "(the ± std beside shows the seed spread; it is not part of the rule). NELBO is not compared: the "
             "paper prints no NELBO of the same estimator. An FD in classifier features is never compared with "
             "FID.")]
    if why_not == NOT_COMPARABLE_DATA:
        lines.append(f"At this scale our data is an offline stand-in: every comparison reads {NOT_COMPARABLE_DATA!r}.")
    elif why_not:
        lines.append(f"At this scale the models are the paper's recipes at toy sizes on toy data in the paper's formats "
                     f"(and FIDs use random Inception weights): every comparison reads {why_not!r}.")
    return lines


def metric_lines(table: str, meta: dict, entries: list[dict], published: dict) -> list[str]:
    """Caption lines defining the metrics of our rows and the settings they were measured with."""
    nll_docs = [e["nll"] for e in entries if e["nll"] is not None]
    fid_docs = [e["fid"] for e in entries if e["fid"] is not None]
    unit = UNITS[meta["unit"]]
    lines = [seeds_line(entries), nelbo_line(unit, nll_docs) if nll_docs else "NELBO (ours): none measured."]
    if table != "table6":
        lines.append(nll_line(unit, nll_docs) if nll_docs else "NLL (ours): none measured.")
        lines.append("≤ is the paper's notation: the paper prints it before its own LSGM NLLs (kept on those "
                     "paper rows); no row of ours carries it.")
    if "fid" in meta["metrics"]:
        names = sorted({n for e in entries for n in fd_names(e["fid"])})
        described = "; ".join(describe_fd(n) for n in names) or "none measured"
        lines.append(f"Sample quality (ours): {described}. n samples and sampler: "
                     f"{unique_settings(fid_docs, ('n_samples', 'sampler', 'tolerance', 'solver', 'temperature'))}.")
        lines.append("Paper rows: FID on 50k samples, Inception-v3 features.")
    if any(e["run"]["model"] == "vae" and recipe_of(e["run"]).endswith(STAGE2_SUFFIX) for e in entries):
        lines.append("VAE backbone + stage-2 steps (Normal prior): the backbone trained on for the LSGM's stage-2 "
                     "steps with its Normal prior and the stage-2 optimizer -- it separates \"a better prior\" "
                     "from \"more training\".")
    if table != "table6":
        lines += compare_lines(table, meta, published, not_comparable(entries, meta))
    return lines


def commit_line(commit: str, entries: list[dict]) -> str:
    """The report's commit, plus the commits the metrics were computed at when they differ."""
    docs = [e[k] for e in entries for k in ("nll", "fid") if e[k] is not None]
    seen = sorted({d.get("provenance", {}).get("commit", "unknown") for d in docs} - {commit})
    extra = f" (metrics computed at: {', '.join(seen)})" if seen else ""
    return f"Commit: {commit}{extra}."


def dataset_line(meta: dict, entries: list[dict], scale: str) -> str:
    """Which data our rows were measured on, and what it stands in for."""
    used = sorted({e["run"]["dataset"] for e in entries})
    if not used:
        return f"Our rows: none measured at {scale} scale. Paper rows: {meta['dataset']}."
    standin = "" if used == [meta["dataset"]] else f" (offline stand-in for {meta['dataset']})"
    return f"Our rows: measured on `{', '.join(used)}`{standin}. Paper rows: {meta['dataset']}."


def table6_lines(entries: list[dict], meta: dict, relative: float) -> list[str]:
    """Table 6's own caption lines: columns, marks, the backbone reference, the comparison with the paper."""
    ns = sorted({len(g.entries) for g in group_runs([e for e in entries if e["run"]["model"] == "lsgm"])})
    marks = (f"{MARK} marks, per SDE and metric, the cell with the lowest mean and every cell not distinguishable "
             "from it: |mean - best mean| <= 2 sqrt(se² + se_best²), se = std / sqrt(n) over seeds "
             f"(n = {', '.join(map(str, ns)) or '—'} per cell); cells with n < 2 are never marked")
    marks += "; with n = 1 no marks are drawn." if ns and ns[-1] < 2 else "."
    why_not = not_comparable(entries, meta)
    vs = (f"vs paper: {NOT_COMPARABLE_DATA} (our data is an offline stand-in)." if why_not == NOT_COMPARABLE_DATA else
          f"vs paper: {why_not} (the paper's recipes at toy sizes)." if why_not else
          f"vs paper: Δ FID vs paper = our mean - the paper's FID per cell; FID reproduced: |Δ| <= {relative:.0%} "
          "of the paper's FID (a cell diverged in both counts as reproduced); NELBO is not compared (the paper "
          "does not state its estimator).")
    columns = ("Columns: w_x = SGM weighting (ll, un, re); U = t ~ U[t_eps, 1], r_x = importance-sampled t; last "
               "part = encoder objective (rew. = reweighted, r_ll = likelihood weighting with r_ll(t) sampling). "
               "n/a: r_un(t) does not exist for the geometric VPSDE, and r_ll(t) is U[0, 1] for it.")
    has_backbone = any(e["run"]["model"] == "vae" for e in entries)
    reference = (f"Reference row: the Table 6 backbone, a VAE without a score prior (column '{BACKBONE_COLUMN}'): "
                 "its NELBO and FD." if has_backbone else
                 f"Reference row: none -- no metrics of the Table 6 backbone (vae recipe `{TABLE6_BACKBONE}`) among "
                 "the inputs.")
    return [columns, marks, reference, vs]


def caption(table: str, published: dict, entries: list[dict], scale: str, commit: str) -> str:
    """The caption of one table: title, scale, dataset, metric definitions, settings, cell legend, commit."""
    meta = published["tables"][table]
    number = table.removeprefix("table")
    lines = [f"Table {number}: {meta['title']}. Scale: {scale}.",
             dataset_line(meta, entries, scale),
             *metric_lines(table, meta, entries, published),
             ("Cells: NaN = diverged; n/a = skipped or undefined combination; — = not measured / not "
             "reported. Lower is better for every metric."),
             *([f"{BACKBONE_DIVERGED}: the stage-1 backbone of the run diverged, so the run built on it was not "
                "trained (each seed's reason: column reason of tableN.seeds.csv)."]
               if any(backbone_diverged(e[k]) for e in entries for k in ("nll", "fid")) else []),
             (f"Sections: \"{OURS_SECTION}\" = measured here; \"{PAPER_SECTIONS['Ours']}\" = the paper's own rows; "
             "baselines keep the paper's family. Published numbers: "
             f"{meta['source']['seed']} ({meta['source']['table']}); source column: ours = measured here, "
             "paper [n] = the paper's citation n. Per-seed values and settings: tableN.seeds.csv."),
             commit_line(commit, entries)]
    if table == "table6":
        lines[-2:-2] = table6_lines(entries, meta, published["reproduction"]["fid"]["relative"])
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
    runs = collect_runs(metrics)
    dataset_map = {**default_dataset_map(scale, published, runs), **(dataset_map or {})}
    tables = {}
    for table in only:
        entries = select_runs(runs, table, dataset_map, rows)
        df = build_table(table, entries, published, scale)
        df.attrs["caption"] = caption(table, published, entries, scale, commit)
        tables[table] = df
    return tables


def format_number(value: float, decimals: int | None) -> str:
    return repr(float(value)) if decimals is None else f"{value:.{decimals}f}"


def format_agg(agg: Agg, row_n: Any = None) -> str:
    """An aggregated cell as printed: ``mean ± std`` (one seed: the value), ``NaN (k of n seeds diverged)`` (``NaN (k
    of n seeds: backbone diverged)`` when the runs were not trained because their backbone diverged), with ``(n=k)``
    when its n is not the row's (column ``n``) and a trailing mark (Table 6)."""
    if agg.n_diverged:
        seeds = f"{agg.n_diverged} of {agg.n} seed{'s' * (agg.n > 1)}"
        text = (f"NaN ({seeds}: {BACKBONE_DIVERGED})" if agg.by_backbone == agg.n_diverged else
                f"NaN ({seeds} diverged, {agg.by_backbone} of them: {BACKBONE_DIVERGED})" if agg.by_backbone else
                f"NaN ({seeds} diverged)")
    else:
        text = format_number(agg.mean, DECIMALS)
        text += f" ± {format_number(agg.std, DECIMALS)}" if agg.n > 1 else ""
        text += "" if str(agg.n) == str(row_n) else f" (n={agg.n})"
    return f"{text} {MARK}" if agg.mark else text


def format_cell(value: Any, decimals: int | None = DECIMALS, bound: bool = False, signed: bool = False) -> str:
    """A non-aggregated cell as text: fixed decimals (``None``: full precision), ``NaN``, ``n/a`` or ``—``."""
    if value is None:
        return TOKENS["missing"]
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int)):
        return str(value)
    if math.isnan(value):
        return TOKENS["nan"]
    if signed and decimals is not None:
        return f"{value if round(value, decimals) else 0.0:+.{decimals}f}"  # no "-0.00"
    text = format_number(value, decimals)
    return f"≤ {text}" if bound else text


def render(df: pd.DataFrame, decimals: int | None = DECIMALS) -> pd.DataFrame:
    """The table as printed in markdown: all cells as text, ``bound`` folded into the paper's NLL cells as ``≤``."""
    out = pd.DataFrame(index=df.index)
    bounds = df["bound"] if "bound" in df else pd.Series(False, index=df.index)
    row_n = df["n"] if "n" in df else pd.Series(None, index=df.index)
    delta_rows = df["Metric"].astype(str).str.startswith("Δ") if "Metric" in df else pd.Series(False, index=df.index)
    for col in df.columns:
        if col == "bound":
            continue
        marked = col.startswith("NLL")
        out[col] = [format_agg(v, n) if isinstance(v, Agg) else
                    format_cell(v, decimals, bool(b) and marked, signed=col.startswith("Δ") or bool(d))
                    for v, b, n, d in zip(df[col], bounds, row_n, delta_rows)]
    return out.astype(object)


def _csv_value(value: Any) -> str:
    return format_cell(value, None)


def csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The CSV of a table: the printed rows at full precision; each value column split into its mean (under the
    column's own header), ``std``, ``n`` and ``diverged`` (Table 6 also ``mark``); paper values in the first."""
    value_cols = set(df.attrs.get("value_columns", ()))
    out: dict[str, list[str]] = {}
    for col in df.columns:
        cells = list(df[col])
        if col not in value_cols:
            out[col] = [_csv_value(v) for v in cells]
            continue
        out[col] = [_csv_value(v.mean) if isinstance(v, Agg) else _csv_value(v) for v in cells]
        out[f"{col} std"] = [_csv_value(v.std) if isinstance(v, Agg) else TOKENS["missing"] for v in cells]
        out[f"{col} n"] = [str(v.n) if isinstance(v, Agg) else TOKENS["missing"] for v in cells]
        out[f"{col} diverged"] = [str(v.n_diverged) if isinstance(v, Agg) else TOKENS["missing"] for v in cells]
        if df.attrs.get("marks"):
            out[f"{col} mark"] = [MARK if isinstance(v, Agg) and v.mark else "" for v in cells]
    return pd.DataFrame(out, dtype=object)


def seeds_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The per-seed long CSV of a table (:data:`SEED_COLUMNS`), numbers at full precision."""
    records = [{k: ("" if r.get(k) is None else _csv_value(r[k]) if isinstance(r[k], float) else str(r[k]))
                for k in SEED_COLUMNS} for r in df.attrs.get("seeds", [])]
    return pd.DataFrame(records, columns=list(SEED_COLUMNS), dtype=object)


def to_markdown(df: pd.DataFrame) -> str:
    """Caption, blank line, then the markdown table (numbers kept as printed)."""
    table = render(df, DECIMALS).to_markdown(index=False, disable_numparse=True)
    return f"{df.attrs.get('caption', '')}\n\n{table}\n"


def table_texts(df: pd.DataFrame) -> dict[str, str]:
    """The files of one table by suffix: ``md`` (caption, blank line, table), ``csv``, ``seeds.csv``,
    ``caption.txt``."""
    return {"md": to_markdown(df), "csv": csv_frame(df).to_csv(index=False),
            "seeds.csv": seeds_frame(df).to_csv(index=False), "caption.txt": df.attrs.get("caption", "") + "\n"}


def write_tables(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Write ``tableN.md``, ``tableN.csv``, ``tableN.seeds.csv`` and ``tableN.caption.txt`` atomically."""
    written = []
    for key, df in tables.items():
        for suffix, text in table_texts(df).items():
            path = Path(out_dir) / f"{key}.{suffix}"
            atomic_write_text(path, text)
            written.append(path)
    return written


def write_table(df: pd.DataFrame, md: Path, csv: Path, seeds_csv: Path | None = None) -> list[Path]:
    """Write one table's markdown (its caption inside), CSV and (if given) per-seed CSV to exactly these paths."""
    texts = table_texts(df)
    targets = [(md, "md"), (csv, "csv")] + ([(seeds_csv, "seeds.csv")] if seeds_csv is not None else [])
    for path, suffix in targets:
        atomic_write_text(Path(path), texts[suffix])
    return [Path(p) for p, _ in targets]

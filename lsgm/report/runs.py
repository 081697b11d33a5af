"""Our runs as the tables see them: the published numbers, the metrics files grouped by run and recipe, one
metric over a row's seeds (:class:`Agg`), and the per-seed records of ``tableN.seeds.csv``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from lsgm.controls import table6_init_name
from lsgm.eval.registry import read_by
from lsgm.datasets_info import offline_standin
from lsgm.methods import Cell


PUBLISHED = Path(__file__).with_name("published.yaml")
NA = "n/a"
OURS_SECTION = "Ours (measured)"
PAPER_SECTIONS = {"Ours": "LSGM (paper)"}  # the paper's own rows; baselines keep the paper's family
MODEL_ORDER = {"lsgm": 0, "vae": 1, "sgm": 2}
SDE_LABELS = {"geometric": "Geom. VPSDE", "vpsde": "VPSDE", "vesde": "VESDE"}
STAGE2_SUFFIX = "_stage2"  # a vae control recipe: the backbone trained on for the LSGM's stage-2 steps
TABLE6_BACKBONE = "table6"  # the vae recipe of the Table 6 backbone (its reference row)
BACKBONE_DIVERGED = "backbone diverged"  # how a run's reason starts when its stage-1 backbone diverged (not trained)
SEED_COLUMNS = ("table", "section", "row", "column", "run", "seed", "metric", "value", "eval_stderr", "K", "M",
                "prior", "estimator", "tolerance", "t_eps", "t_draws", "n_examples", "n_samples", "status", "reason",
                "commit")


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


TABLE_KINDS = read_by("tables")  # the documents a table reads (lsgm/eval/registry.py; fid_normal: the control)


def collect_runs(metrics: list[dict]) -> dict[str, dict[str, Any]]:
    """Group metrics documents by run name: ``{name: {"run": run, "nll": doc|None, "fid": doc|None, "fid_normal":
    doc|None}}``.

    Documents of other kinds (``cost``) are ignored; two documents of one kind for one run are an error.
    """
    runs: dict[str, dict[str, Any]] = {}
    for doc in metrics:
        if doc["kind"] not in TABLE_KINDS:
            continue
        name = doc["run"]["name"]
        entry = runs.setdefault(name, {"run": doc["run"], **dict.fromkeys(TABLE_KINDS)})
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
    """A Table 6 run: an LSGM named for its cell (``vpsde-w_un-is-q_rew``), the control at initialisation of an SDE's
    cells (``vpsde-init``) or the Table 6 backbone."""
    if run["model"] == "vae":
        return recipe_of(run) == TABLE6_BACKBONE
    fields = [run.get(k) for k in ("sde", "weighting", "sampling", "q_objective")]
    if run["model"] != "lsgm" or None in fields:
        return False
    return Cell(*fields).run_name == recipe_of(run) or recipe_of(run) == table6_init_name(run["sde"])


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


@dataclass(frozen=True)
class Agg:
    """One metric of one row of ours over its seeds: ``values`` (one per seed reporting it; nan = diverged) and each
    value's evaluation standard error ``stderrs`` (its Monte Carlo error; nan where the file records none)."""

    values: tuple[float, ...]
    mark: bool = False  # Table 6: not distinguishable from the best cell of its SDE
    by_backbone: int = 0  # of the diverged seeds, those whose backbone diverged (never trained)
    stderrs: tuple[float, ...] = ()
    difference: bool = False  # a difference of two rows (printed signed, to 3 decimals, * beyond 2 se)

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
    def eval_se(self) -> float:
        """The evaluations' own standard error, root mean square over the seeds (nan: none recorded)."""
        finite = [s for s in self.stderrs if s is not None and math.isfinite(s)]
        return math.sqrt(statistics.fmean(s * s for s in finite)) if finite else math.nan

    @property
    def se(self) -> float:
        """The standard error of the mean over seeds, the evaluations' Monte Carlo error included:
        se^2 = std^2 / n + eval_se^2. The spread over seeds already holds each evaluation's independent draws, but
        every seed is evaluated on the same test split, whose sampling error is common to all seeds and so missing
        from the spread; eval_se (over the test examples) holds it, so adding it in full is conservative. With one
        seed: eval_se; without recorded evaluation errors: std / sqrt(n)."""
        if self.n_diverged:
            return math.nan
        eval_se = self.eval_se
        if self.n < 2:
            return eval_se
        spread = self.std ** 2 / self.n
        return math.sqrt(spread + eval_se ** 2) if math.isfinite(eval_se) else math.sqrt(spread)

    @property
    def significant(self) -> bool:
        """A difference more than 2 standard errors from 0."""
        return math.isfinite(self.se) and abs(self.mean) > 2 * self.se


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
    """One metric of a row over its seeds (``key``: a metric name, or a function of the document), with each seed's
    evaluation standard error."""
    docs = [e[kind] for e in group.entries]
    names = [key if isinstance(key, str) else key(doc) for doc in docs]
    values = [metric_value(doc, name) for doc, name in zip(docs, names)]
    agg = aggregate(values)
    if not isinstance(agg, Agg):
        return agg
    stderrs = tuple(_stderr(doc, name) for doc, name, v in zip(docs, names, values) if isinstance(v, float))
    return replace(agg, by_backbone=sum(map(backbone_diverged, docs)),
                   stderrs=tuple(math.nan if s is None else s for s in stderrs))


def paired_difference(a: Group, b: Group, kind_a: str, key: Callable[[dict | None], str] | str,
                      kind_b: str | None = None) -> Agg | None:
    """Row ``a`` minus row ``b`` per seed (seeds both have), as an :class:`Agg` of differences: each seed's
    difference and its standard error -- over the test examples of the per-example differences where both files keep
    them (``per_example``: the same split, paired example by example; the examples' own spread cancels), else
    sqrt(se_a^2 + se_b^2) (independent draws). None when no seed has both."""
    kind_b = kind_b or kind_a
    by_seed = {seed_of(e["run"]): e[kind_b] for e in b.entries}
    values, stderrs, backbone = [], [], 0
    for entry in a.entries:
        doc_a, doc_b = entry[kind_a], by_seed.get(seed_of(entry["run"]))
        if doc_a is None or doc_b is None:
            continue
        name_a, name_b = ((key if isinstance(key, str) else key(doc)) for doc in (doc_a, doc_b))
        va, vb = metric_value(doc_a, name_a), metric_value(doc_b, name_b)
        if not (isinstance(va, float) and isinstance(vb, float)):
            continue
        values.append(va - vb)
        stderrs.append(_difference_stderr(doc_a, doc_b, name_a, name_b))
        backbone += backbone_diverged(doc_a) or backbone_diverged(doc_b)
    if not values:
        return None
    return Agg(tuple(values), stderrs=tuple(stderrs), by_backbone=backbone, difference=True)


def _difference_stderr(doc_a: dict, doc_b: dict, name_a: str, name_b: str) -> float:
    per_a, per_b = (doc.get("per_example", {}).get(name) for doc, name in ((doc_a, name_a), (doc_b, name_b)))
    if per_a and per_b and len(per_a) == len(per_b) and len(per_a) > 1:
        diffs = [x - y for x, y in zip(per_a, per_b)]
        return statistics.stdev(diffs) / math.sqrt(len(diffs))
    se_a, se_b = _stderr(doc_a, name_a), _stderr(doc_b, name_b)
    return math.nan if se_a is None or se_b is None else math.hypot(se_a, se_b)


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
            "prior": nll_setting(doc, "prior") if nll_doc else None,
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


def nll_setting(doc: dict, key: str) -> Any:
    """One setting of an nll document (``prior`` falls back to ``metrics.prior``)."""
    value = doc.get("settings", {}).get(key)
    return doc.get("metrics", {}).get("prior") if value is None and key == "prior" else value

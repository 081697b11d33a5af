"""Compile the paper's Tables 2-6: our measured rows beside the published numbers.

Our runs are named ``{scale}/{dataset}/{kind}/{recipe}-s{seed}``; a printed row of ours is one recipe (kind +
recipe name) over its seeds. A table is a :class:`pandas.DataFrame` whose cells hold one of:

* an :class:`~lsgm.report.runs.Agg` -- one of our metrics over the row's seeds (mean ± sample std, n, how many
  diverged; a mean of ``nan`` when any seed diverged: printed ``NaN (k of n seeds diverged)``, never a silently
  dropped seed);
* a ``float`` -- a published number (``nan``: the paper prints NaN) or a difference ``Δ vs paper``;
* a ``str`` -- :data:`~lsgm.report.runs.NA` (``"n/a"``: skipped, or an undefined combination), a setting, or a
  verdict text;
* ``None`` -- not measured / not reported (printed ``—``).

``df.attrs`` holds ``caption``, ``value_columns`` (the columns whose ``Agg`` cells the CSV splits into mean / std /
n / diverged columns), ``marks`` (Table 6: the CSV gets a mark column per cell) and ``seeds`` (the per-seed long
records). :func:`lsgm.report.render.write_tables` writes, per table, ``tableN.md`` (caption, blank line, markdown
table with 2 decimals), ``tableN.csv`` (the printed rows at full precision; tokens ``NaN``, ``n/a``, ``—``; read it
with ``pd.read_csv(path, keep_default_na=False)``), ``tableN.seeds.csv`` (one line per run x metric: the value and
the settings it was measured with) and ``tableN.caption.txt``.

The parts, each its own module: :mod:`~lsgm.report.runs` (published numbers, metrics files grouped into rows,
:class:`~lsgm.report.runs.Agg`, per-seed records), :mod:`~lsgm.report.comparison` (the guards, ``Δ vs paper``,
``reproduced``), :mod:`~lsgm.report.results_tables` (Tables 2-5), :mod:`~lsgm.report.table6`,
:mod:`~lsgm.report.captions` and :mod:`~lsgm.report.render` (text, CSV, files). This module puts them together.
"""

from __future__ import annotations

import pandas as pd

from lsgm.report.captions import caption
from lsgm.report.results_tables import build_results_table, label_groups
from lsgm.report.runs import collect_runs, default_dataset_map, group_runs, load_published, select_runs
from lsgm.report.table6 import build_table6


RESULT_TABLES = ("table2", "table3", "table4", "table5")
ALL_TABLES = (*RESULT_TABLES, "table6")


def build_table(table: str, entries: list[dict], published: dict, scale: str) -> pd.DataFrame:
    """One table without its caption."""
    if table == "table6":
        return build_table6(entries, published)
    groups = group_runs(entries)
    label_groups(groups)
    return build_results_table(table, groups, published, scale)


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

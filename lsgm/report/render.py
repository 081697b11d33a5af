"""A table as text: the markdown cells (``mean ± std``, ``NaN (k of n seeds diverged)``, ``≤``), the CSV at full
precision, the per-seed CSV, and the atomic writes of ``tableN.{md,csv,seeds.csv,caption.txt}``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from lsgm.io import atomic_write_text
from lsgm.report.runs import BACKBONE_DIVERGED, NA, SEED_COLUMNS, Agg


TOKENS = {"nan": "NaN", "na": NA, "missing": "—"}
DECIMALS = 2
DIFFERENCE_DECIMALS = 3  # a learned difference is often a few thousandths of a bit/dim
MARK = "†"
SIGNIFICANT = "*"  # a difference more than 2 standard errors from 0


def fmt_setting(value: Any) -> str:
    """A setting as printed: ``1e-05``, ``100``, ``ode``."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_number(value: float, decimals: int | None) -> str:
    return repr(float(value)) if decimals is None else f"{value:.{decimals}f}"


def format_agg(agg: Agg, row_n: Any = None) -> str:
    """An aggregated cell as printed: ``mean ± se`` (the standard error of the mean, the evaluations' Monte Carlo
    error included: :attr:`Agg.se`; ± omitted where unknown), ``NaN (k of n seeds diverged)`` (``NaN (k of n seeds:
    backbone diverged)`` when the runs were not trained because their backbone diverged), with ``(n=k)`` when its n is
    not the row's (column ``n``) and a trailing mark (Table 6). A difference: signed, 3 decimals, ``*`` when more than
    2 standard errors from 0."""
    if agg.n_diverged:
        seeds = f"{agg.n_diverged} of {agg.n} seed{'s' * (agg.n > 1)}"
        text = (f"NaN ({seeds}: {BACKBONE_DIVERGED})" if agg.by_backbone == agg.n_diverged else
                f"NaN ({seeds} diverged, {agg.by_backbone} of them: {BACKBONE_DIVERGED})" if agg.by_backbone else
                f"NaN ({seeds} diverged)")
    else:
        decimals = DIFFERENCE_DECIMALS if agg.difference else DECIMALS
        text = format_cell(agg.mean, decimals, signed=agg.difference)
        text += f" ± {format_number(agg.se, decimals)}" if math.isfinite(agg.se) else ""
        text += f" {SIGNIFICANT}" if agg.difference and agg.significant else ""
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
    column's own header), ``std`` (over seeds), ``se`` (the printed ±: :attr:`Agg.se`), ``eval_se`` (the evaluations'
    own), ``n`` and ``diverged`` (Table 6 also ``mark``); paper values in the first."""
    value_cols = set(df.attrs.get("value_columns", ()))
    out: dict[str, list[str]] = {}
    for col in df.columns:
        cells = list(df[col])
        if col not in value_cols:
            out[col] = [_csv_value(v) for v in cells]
            continue
        out[col] = [_csv_value(v.mean) if isinstance(v, Agg) else _csv_value(v) for v in cells]
        out[f"{col} std"] = [_csv_value(v.std) if isinstance(v, Agg) else TOKENS["missing"] for v in cells]
        out[f"{col} se"] = [_csv_value(v.se) if isinstance(v, Agg) else TOKENS["missing"] for v in cells]
        out[f"{col} eval_se"] = [_csv_value(v.eval_se) if isinstance(v, Agg) else TOKENS["missing"] for v in cells]
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

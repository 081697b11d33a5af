"""The variance table and figure: ``variance.csv``, ``variance.png``, ``variance.caption.txt`` and
``variance.provenance.json``.

Rows come from :func:`lsgm.eval.variance.measure_variance` (one per source x cell x estimator; the columns are
explained there). The figure has one panel per (estimator, SDE); each Table 6 cell of that SDE is a group of bars on a
log axis:

* closed form, t only: Var_t of the noise-free integrand (q = p = N(0, I), exact score); the exact value is a black
  tick on the bar;
* closed form, per z0: E_z0 Var_{t,eps} of the one-sample estimate with the exact score (noise included);
* trained, t part: Var_t E[X | t] of the trained cell (crossed-design ANOVA);
* trained, per z0: E_z0 Var_{t,eps}[X | z0] of the trained cell: the per-sample variance a training step sees.

A log axis cannot show 0: a value that is exactly 0 is written ``0`` at the foot of its bar, a non-positive estimate
(an ANOVA difference within its noise) ``≤0``, and a diverged cell ``NaN``. Torch-free (pandas, matplotlib).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from lsgm.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from lsgm.methods import TABLE6_COLUMNS, TABLE6_SDES

SDE_LABELS = {"vpsde": "VPSDE", "geometric": "Geom. VPSDE"}
ESTIMATOR_LABELS = {"score_loss": "score-model loss (objective 9)",
                    "cross_entropy": "encoder cross entropy (objective 8)"}
BARS = (("closed_form", "t_only_variance", "closed form, t only", "C0"),
        ("closed_form", "per_z0_variance", "closed form, per z0 (t + noise)", "C9"),
        ("trained", "t_variance", "trained, t part", "C3"),
        ("trained", "per_z0_variance", "trained, per z0 (t + noise)", "C1"))
ZERO_RELATIVE = 1e-10  # a variance below (1e-10 x mean)^2 is zero to float precision


def variance_frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """The CSV's frame: ``columns`` in order, numbers as floats (NaN where diverged)."""
    df = pd.DataFrame(rows)
    for col in columns:
        if col not in df:
            df[col] = math.nan
    return df[columns]


def _cells(df: pd.DataFrame, sde: str) -> list[str]:
    present = set(df.loc[df["sde"] == sde, "cell"])
    return [c for c in TABLE6_COLUMNS if c in present] + sorted(present - set(TABLE6_COLUMNS))


def _value(df: pd.DataFrame, sde: str, cell: str, estimator: str, source: str, column: str) -> float:
    hit = df[(df["sde"] == sde) & (df["cell"] == cell) & (df["estimator"] == estimator) & (df["source"] == source)]
    return float(hit[column].iloc[0]) if len(hit) else math.nan


def zero_label(value: float, mean: float) -> str | None:
    """What to write instead of a bar: ``NaN``, ``0`` (zero to float precision: below (1e-10 mean)^2) or ``≤0`` (a
    negative estimate); ``None`` for a value a log axis can show."""
    if math.isnan(value):
        return "NaN"
    scale = max(abs(mean), 1.0) if math.isfinite(mean) else 1.0
    if abs(value) <= (ZERO_RELATIVE * scale) ** 2:
        return "0"
    return "≤0" if value < 0 else None


def _draw_panel(ax, df: pd.DataFrame, sde: str, estimator: str) -> None:
    """One (SDE, estimator) panel: a group of len(BARS) bars per cell (one ``bar`` call per series)."""
    cells = _cells(df, sde)
    width = 0.8 / len(BARS)
    foot = blended_transform_factory(ax.transData, ax.transAxes)
    for k, (source, column, label, colour) in enumerate(BARS):
        xs = [i + (k - (len(BARS) - 1) / 2) * width for i in range(len(cells))]
        mean_col = "t_only_mean" if column.startswith("t_only") else "mean"
        values = [_value(df, sde, cell, estimator, source, column) for cell in cells]
        texts = [zero_label(v, _value(df, sde, cell, estimator, source, mean_col)) for v, cell in zip(values, cells)]
        ax.bar(xs, [v if t is None else 0.0 for v, t in zip(values, texts)], width, color=colour, label=label)
        for x, text in zip(xs, texts):
            if text is not None:
                ax.text(x, 0.01, text, transform=foot, ha="center", va="bottom", rotation=90, fontsize=8,
                        color=colour, fontweight="bold")
        if column == "t_only_variance":
            exact = [_value(df, sde, cell, estimator, source, "analytic_t_variance") for cell in cells]
            keep = [(x, e) for x, e in zip(xs, exact) if e > 0]
            if keep:
                ax.hlines([e for _, e in keep], [x - width / 2 for x, _ in keep], [x + width / 2 for x, _ in keep],
                          color="black", lw=1.5, label="closed form, exact")
    ax.set_yscale("log")
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([TABLE6_COLUMNS.get(c, c) for c in cells], rotation=35, ha="right", fontsize=8)
    ax.set_title(f"{SDE_LABELS.get(sde, sde)}: {ESTIMATOR_LABELS.get(estimator, estimator)}", fontsize=9)
    ax.set_ylabel("variance (nats²)")
    ax.grid(True, axis="y", which="major", alpha=0.3)


def render_variance(df: pd.DataFrame, caption: str) -> bytes:
    """The PNG (rows: estimators; columns: SDEs) as bytes."""
    sdes = [s for s in TABLE6_SDES if s in set(df["sde"])] + sorted(set(df["sde"]) - set(TABLE6_SDES))
    estimators = [e for e in ESTIMATOR_LABELS if e in set(df["estimator"])]
    height = 4.2 * max(1, len(estimators)) + 1.2
    fig = Figure(figsize=(6.5 * max(1, len(sdes)), height))  # fixed margins: a layout engine costs seconds here
    axes = fig.subplots(max(1, len(estimators)), max(1, len(sdes)), squeeze=False, sharey="row")  # SDEs compared
    fig.subplots_adjust(left=0.07, right=0.99, top=1 - 1.0 / height, bottom=1.3 / height, hspace=0.5, wspace=0.15)
    for r, estimator in enumerate(estimators):
        for c, sde in enumerate(sdes):
            _draw_panel(axes[r][c], df, sde, estimator)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(caption, fontsize=8, wrap=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def variance_caption(df: pd.DataFrame, info: dict) -> str:
    """Scale, dataset, sizes, seed, commit and what the bars are."""
    n = "no rows"
    if len(df):
        first = df.iloc[0]
        n = (f"{int(first['n_latents'])} latents x {int(first['n_draws'])} draws of (t, noise), "
             f"{int(df['n_t_draws'].max())} draws of t for the closed form, seed {int(first['seed'])}")
    return (f"Variance of the one-sample training estimators per Table 6 cell ({info.get('scale', '?')} scale; "
            f"dataset {info.get('dataset', 'unknown')}; {n}; commit {info.get('commit', 'unknown')}). "
            "Closed form: q = p = N(0, I) with the exact score (no network); trained: the cell's model on its "
            "encoder's test latents. 'per z0' = variance over (t, noise) for a fixed z0, averaged over z0; "
            "'t only/part' = variance of E[estimate | t]. 0 = exactly zero (a log axis cannot show it).")


def write_variance(rows: list[dict], columns: list[str], out_dir: Path, info: dict, provenance: dict) -> pd.DataFrame:
    """Write ``variance.csv``, ``variance.png``, ``variance.caption.txt`` and ``variance.provenance.json`` into
    ``out_dir`` (each atomically); return the CSV's frame. ``info``: scale, commit, dataset."""
    out_dir = Path(out_dir)
    df = variance_frame(rows, columns)
    caption = variance_caption(df, info)
    atomic_write_text(out_dir / "variance.csv", df.to_csv(index=False))
    atomic_write_bytes(out_dir / "variance.png", render_variance(df, caption))
    atomic_write_text(out_dir / "variance.caption.txt", caption + "\n")
    atomic_write_json(out_dir / "variance.provenance.json", provenance)
    return df

"""Figure 4: sample quality and sampling cost against the ODE solver's error tolerance.

The paper's Figure 4 plots FID and NFE against the ODE tolerance for LSGM on CelebA-HQ-256 and quotes
the pixel-space SGM's cost (45 min with PC, 3.9 min with the ODE, against LSGM's 4.15 s). Here three
panels share a log tolerance axis: (a) FID/FD, (b) NFE, (c) seconds per batch. ODE sampling is a line
per model; predictor-corrector (PC) sampling has no tolerance and is drawn as a horizontal dashed line.
NFE and seconds are on log axes.

**Matched quality** (:func:`matched_quality`), one reading for every LSGM ODE tolerance: the *cheapest* pixel-SGM
sampler setting (any PC step count or ODE tolerance; cheapest = fewest NFE) whose FD/FID is no worse than the LSGM's
within their combined standard error (``fd_pixel <= fd_lsgm + sqrt(se_lsgm^2 + se_pixel^2)``, the bootstrap
``fd_stderr`` of each cost row). The NFE and wall-time ratios pixel / LSGM at that point are on the figure and in the
CSV's ``matched_*`` columns; where no pixel setting is that good, the row says ``none`` and the ratios are empty.

Outputs: the PNG (rendered with the Agg canvas, no pyplot state), a CSV with one row per
(model, sampler, tolerance) and a ``.caption.txt`` beside the PNG.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from lsgm.io import atomic_write_bytes, atomic_write_text

CSV_COLUMNS = ["model", "run", "sampler", "tolerance", "n_steps", "nfe_mean", "nfe_std",
               "seconds_per_batch", "seconds_std", "batch_size", "fd_name", "fd", "fd_stderr", "fd_n_samples",
               "device"]
# the matched-quality columns, filled on every LSGM ODE row (see matched_quality)
MATCH_COLUMNS = ["matched_setting", "matched_run", "matched_sampler", "matched_tolerance", "matched_steps",
                 "matched_fd", "matched_fd_stderr", "matched_nfe_ratio", "matched_time_ratio", "same_device"]
MODEL_LABELS = {"lsgm": "LSGM", "sgm": "Pixel SGM", "vae": "VAE", "lsgm_init": "LSGM at initialisation"}
PANELS = (("fd", "fd_stderr", None), ("nfe_mean", "nfe_std", "NFE"),
          ("seconds_per_batch", "seconds_std", "seconds per batch"))


def model_kind(doc: dict) -> str:
    """``lsgm``, ``sgm``, or ``lsgm_init``: the control at initialisation (0 stage-2 steps; lsgm/controls.py), drawn
    beside its LSGM: the cost of a prior that has learned nothing."""
    run = doc["run"]
    return "lsgm_init" if run["model"] == "lsgm" and run.get("steps") == 0 else run["model"]


def model_label(doc: dict, docs: list[dict]) -> str:
    """``LSGM`` / ``LSGM at initialisation`` / ``Pixel SGM``; the run name is appended when several runs share one."""
    kind = model_kind(doc)
    label = MODEL_LABELS.get(kind, kind)
    same = sum(1 for d in docs if model_kind(d) == kind)
    return f"{label} ({doc['run']['name']})" if same > 1 else label


def cost_table(cost_metrics: list[dict]) -> pd.DataFrame:
    """One row per (model, sampler, tolerance) from ``cost`` metrics documents (see ARCHITECTURE.md)."""
    rows = []
    for doc in cost_metrics:
        label = model_label(doc, cost_metrics)
        device = doc.get("provenance", {}).get("device")
        for row in doc["metrics"].get("rows", []):
            rows.append({"model": label, "run": doc["run"]["name"], "kind": model_kind(doc),
                         **{k: row.get(k) for k in CSV_COLUMNS[2:-1]}, "device": device})
    df = pd.DataFrame(rows, columns=["kind", *CSV_COLUMNS])
    for col in ("tolerance", "nfe_mean", "nfe_std", "seconds_per_batch", "seconds_std", "fd", "fd_stderr"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df = df.sort_values(["model", "sampler", "tolerance"], kind="stable", ignore_index=True)
    return _with_matched_quality(df)


def _setting(row: pd.Series) -> str:
    """``PC 500 steps`` / ``ODE tol 0.001``: a pixel sampler setting as the figure and CSV name it."""
    if row["sampler"] == "pc":
        return f"PC {int(row['n_steps'])} steps"
    return f"{str(row['sampler']).upper()} tol {row['tolerance']:g}"


def _se(value: Any) -> float:
    """A row's FD standard error (0 where the cost record has none)."""
    return 0.0 if value is None or pd.isna(value) else float(value)


def matched_quality(df: pd.DataFrame) -> list[dict]:
    """For each LSGM ODE row (one per tolerance): the cheapest pixel-SGM setting (fewest NFE, then seconds) whose FD is
    no worse than the LSGM's within their combined standard error, with the ratios pixel / LSGM of NFE and seconds.
    ``setting`` is ``none`` (ratios NaN) where no pixel setting is that good; no entries without pixel FD rows."""
    se = df["fd_stderr"].map(_se) if "fd_stderr" in df else pd.Series(0.0, index=df.index)
    pixel = df[(df["kind"] == "sgm") & df["fd"].notna()].sort_values(["nfe_mean", "seconds_per_batch"], kind="stable")
    if pixel.empty:
        return []
    out = []
    for index, row in df[(df["kind"] == "lsgm") & (df["sampler"] == "ode") & df["fd"].notna()].iterrows():
        bound = pixel["fd"] - row["fd"] - (se[index] ** 2 + se[pixel.index] ** 2) ** 0.5
        good = pixel[bound <= 0]
        match = {"index": index, "model": row["model"], "tolerance": float(row["tolerance"]), "fd": float(row["fd"]),
                 "fd_stderr": float(se[index]), "setting": "none", "run": None, "sampler": None,
                 "pixel_tolerance": None, "steps": None, "pixel_fd": None, "pixel_fd_stderr": None,
                 "nfe_ratio": math.nan, "time_ratio": math.nan, "same_device": None,
                 "best_pixel": _setting(pixel.loc[pixel["fd"].idxmin()]), "best_pixel_fd": float(pixel["fd"].min())}
        if len(good):
            cheap = good.iloc[0]
            match.update(setting=_setting(cheap), run=cheap["run"], sampler=cheap["sampler"],
                         pixel_tolerance=None if pd.isna(cheap["tolerance"]) else float(cheap["tolerance"]),
                         steps=None if pd.isna(cheap["n_steps"]) else int(cheap["n_steps"]),
                         pixel_fd=float(cheap["fd"]), pixel_fd_stderr=float(se[cheap.name]),
                         nfe_ratio=float(cheap["nfe_mean"] / row["nfe_mean"]),
                         time_ratio=float(cheap["seconds_per_batch"] / row["seconds_per_batch"]),
                         same_device=bool(cheap["device"] == row["device"]))
        out.append(match)
    return out


def _with_matched_quality(df: pd.DataFrame) -> pd.DataFrame:
    for col in MATCH_COLUMNS:
        df[col] = pd.Series([None] * len(df), dtype=object)
    names = {"matched_setting": "setting", "matched_run": "run", "matched_sampler": "sampler",
             "matched_tolerance": "pixel_tolerance", "matched_steps": "steps", "matched_fd": "pixel_fd",
             "matched_fd_stderr": "pixel_fd_stderr", "matched_nfe_ratio": "nfe_ratio",
             "matched_time_ratio": "time_ratio", "same_device": "same_device"}
    for match in matched_quality(df):
        for col, key in names.items():
            df.at[match["index"], col] = match[key]
    return df


def _unique(values: Any) -> str:
    """Distinct non-missing values as text (``a, b``), or ``unknown``."""
    seen = sorted({str(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))})
    return ", ".join(seen) if seen else "unknown"


def figure_caption(df: pd.DataFrame, cost_metrics: list[dict], info: dict) -> str:
    """Scale, dataset, the runs shown, samples per FD, device, batch size, commit and the metric named as measured."""
    dataset = info.get("dataset") or _unique(d["run"]["dataset"] for d in cost_metrics)
    device = info.get("device") or _unique(d.get("provenance", {}).get("device") for d in cost_metrics)
    batch = info.get("batch_size") or _unique(df["batch_size"])
    runs = "; ".join(f"{model_label(d, cost_metrics)}: {d['run']['name']}" for d in cost_metrics)
    fd = _unique(df["fd_name"])
    return (f"Figure 4 ({info.get('scale', '?')} scale): {fd} and sampling cost vs ODE solver tolerance. "
            f"Dataset: {dataset}. Runs (first seed): {runs}. {fd} on {_unique(df['fd_n_samples'])} samples per "
            f"setting, ± its bootstrap standard error. Device: {device}. Batch size: {batch}. "
            f"Commit: {info.get('commit', 'unknown')}. PC sampling (no tolerance) is a dashed/dotted line per step count; "
            f"NFE and time error bars are one standard deviation over batches. Matched quality, per LSGM tolerance: the "
            f"cheapest pixel-SGM setting (fewest NFE) whose {fd} is no worse than the LSGM's within their combined "
            f"standard error (x in panels b and c; none where no pixel setting is that good)."
            + (" LSGM at initialisation: the LSGM's run config with 0 stage-2 steps (its prior a rescaled Normal, whose "
               "linear ODE is cheap): a cost ratio it shares with the LSGM is not the learned prior's."
               if (df["kind"] == "lsgm_init").any() else ""))


PC_STYLES = ["--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]  # one dash pattern per PC step count


def _draw_panel(ax: Any, df: pd.DataFrame, value: str, error: str, ylabel: str) -> None:
    """ODE rows as lines over tolerance, PC rows as horizontal dashed lines, one colour per model."""
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(df["model"]))}
    for (model, sampler), group in df.groupby(["model", "sampler"], sort=False):
        if sampler == "ode":
            err = group[error] if error in group else None
            ax.errorbar(group["tolerance"], group[value], yerr=err, marker="o", capsize=3,
                        color=colours[model], label=f"{model} ODE")
            continue
        for k, (_, row) in enumerate(group.iterrows()):
            steps = "" if pd.isna(row["n_steps"]) else f", {int(row['n_steps'])} steps"
            ax.axhline(row[value], linestyle=PC_STYLES[k % len(PC_STYLES)], color=colours[model],
                       label=f"{model} {sampler.upper()}{steps}")
    ax.set_xscale("log")
    ax.set_xlabel("ODE solver error tolerance")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def render_figure(df: pd.DataFrame, caption: str) -> bytes:
    """The three-panel PNG as bytes."""
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    axes = fig.subplots(1, len(PANELS))
    fd_label = _unique(df["fd_name"]).replace("fid", "FID")
    for ax, (value, error, ylabel), letter in zip(axes, PANELS, "abc"):
        _draw_panel(ax, df, value, error, ylabel or fd_label)
        ax.set_title(f"({letter}) {ylabel or fd_label}")
    if len(df) and df["nfe_mean"].gt(0).all():
        axes[1].set_yscale("log")  # PC (thousands of NFE) and ODE costs differ by orders of magnitude
    if len(df) and df["seconds_per_batch"].gt(0).all():
        axes[2].set_yscale("log")
    notes, marked = [], False
    for match in matched_quality(df):
        head = f"LSGM tol {match['tolerance']:g}: {fd_label} {match['fd']:.3g} ± {match['fd_stderr']:.2g}"
        if match["setting"] == "none":
            notes.append(f"{head}: no pixel setting is as good (best: {match['best_pixel']}, "
                         f"{fd_label} {match['best_pixel_fd']:.3g})")
            continue
        row = df.loc[match["index"]]
        pixel = df[(df["run"] == match["run"]) & (df["sampler"] == match["sampler"])
                   & (df["n_steps"].eq(match["steps"]) if match["steps"] is not None
                      else df["tolerance"].eq(match["pixel_tolerance"]))].iloc[0]
        for ax, (value, _, _) in zip(axes[1:], PANELS[1:]):
            ax.plot([row["tolerance"]], [pixel[value]], marker="x", markersize=10, color="black", linestyle="none",
                    zorder=5, label=None if marked else "pixel SGM at matched quality")
        marked = True
        device = "" if match["same_device"] else " (timed on different devices)"
        notes.append(f"{head} ~ pixel {match['setting']} ({fd_label} {match['pixel_fd']:.3g} ± "
                     f"{match['pixel_fd_stderr']:.2g}): {match['nfe_ratio']:.3g}x the NFE, {match['time_ratio']:.3g}x "
                     f"the time{device}")
    if notes:
        fig.supxlabel("\n".join(textwrap.fill(n, width=190) for n in notes), fontsize="small")
        axes[1].legend(fontsize="small")
    axes[0].legend(fontsize="small")
    fig.suptitle(caption, fontsize="small", wrap=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def figure4(cost_metrics: list[dict], out_png: Path, out_csv: Path, caption_info: dict) -> pd.DataFrame:
    """Write Figure 4 (PNG + CSV + caption beside the PNG) from ``cost`` metrics; return the CSV's frame.

    ``caption_info``: ``scale`` and ``commit`` (required in practice); ``dataset``, ``device`` and
    ``batch_size`` override what the metrics say.
    """
    df = cost_table(cost_metrics)
    caption = figure_caption(df, cost_metrics, caption_info)
    out_png = Path(out_png)
    atomic_write_bytes(out_png, render_figure(df, caption))
    atomic_write_text(Path(out_csv), df.drop(columns="kind").to_csv(index=False))
    atomic_write_text(out_png.with_suffix(".caption.txt"), caption + "\n")
    return df

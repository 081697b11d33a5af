"""Figure 4: sample quality and sampling cost against the ODE solver's error tolerance.

The paper's Figure 4 plots FID and NFE against the ODE tolerance for LSGM on CelebA-HQ-256 and quotes
the pixel-space SGM's cost (45 min with PC, 3.9 min with the ODE, against LSGM's 4.15 s). Here three
panels share a log tolerance axis: (a) FID/FD, (b) NFE, (c) seconds per batch. ODE sampling is a line
per model; predictor-corrector (PC) sampling has no tolerance and is drawn as a horizontal dashed line.
NFE and seconds are on log axes. The **matched-quality point** (:func:`matched_quality`) is the LSGM ODE tolerance
whose FD/FID is closest to the pixel SGM's PC sampler with the most steps (the original SGM's sampler); it is
starred in every panel, and the NFE and wall-time ratios (pixel PC / LSGM ODE at that point, and pixel ODE / LSGM
ODE at the same tolerance) are written on the figure and in the CSV's ``matched_*`` / ``*_ratio`` columns.

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
               "seconds_per_batch", "seconds_std", "batch_size", "fd_name", "fd", "device"]
# the matched-quality columns (filled on the matched LSGM row only; see matched_quality)
MATCH_COLUMNS = ["matched_quality", "pc_reference_run", "pc_reference_steps", "pc_reference_fd", "fd_within_tolerance",
                 "pc_nfe_ratio", "pc_time_ratio", "ode_nfe_ratio", "ode_time_ratio", "same_device"]
MATCH_TOLERANCE = 0.10  # an FD within 10 % of the pixel PC sampler's counts as the same quality
MODEL_LABELS = {"lsgm": "LSGM", "sgm": "Pixel SGM", "vae": "VAE"}
PANELS = (("fd", "fd_std", None), ("nfe_mean", "nfe_std", "NFE"),
          ("seconds_per_batch", "seconds_std", "seconds per batch"))


def model_label(doc: dict, docs: list[dict]) -> str:
    """``LSGM`` / ``Pixel SGM``; the run name is appended when several runs share a model."""
    model = doc["run"]["model"]
    label = MODEL_LABELS.get(model, model)
    same = sum(1 for d in docs if d["run"]["model"] == model)
    return f"{label} ({doc['run']['name']})" if same > 1 else label


def cost_table(cost_metrics: list[dict]) -> pd.DataFrame:
    """One row per (model, sampler, tolerance) from ``cost`` metrics documents (see ARCHITECTURE.md)."""
    rows = []
    for doc in cost_metrics:
        label = model_label(doc, cost_metrics)
        device = doc.get("provenance", {}).get("device")
        for row in doc["metrics"].get("rows", []):
            rows.append({"model": label, "run": doc["run"]["name"], "kind": doc["run"]["model"],
                         **{k: row.get(k) for k in CSV_COLUMNS[2:-1]}, "device": device})
    df = pd.DataFrame(rows, columns=["kind", *CSV_COLUMNS])
    for col in ("tolerance", "nfe_mean", "nfe_std", "seconds_per_batch", "seconds_std", "fd"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df = df.sort_values(["model", "sampler", "tolerance"], kind="stable", ignore_index=True)
    return _with_matched_quality(df)


def matched_quality(df: pd.DataFrame) -> list[dict]:
    """For each LSGM model: the ODE tolerance whose FD/FID is closest to the pixel SGM's PC sampler with the most steps
    (the reference), with the ratios pixel PC / LSGM and pixel ODE (same tolerance) / LSGM of NFE and seconds.
    Empty when there is no pixel PC row or no finite LSGM ODE row."""
    pc = df[(df["kind"] == "sgm") & (df["sampler"] == "pc") & df["fd"].notna()]
    if pc.empty:
        return []
    ref = pc.loc[pd.to_numeric(pc["n_steps"]).idxmax()]
    out = []
    for model, group in df[(df["kind"] == "lsgm") & (df["sampler"] == "ode") & df["fd"].notna()].groupby("model"):
        best = group.loc[(group["fd"] - ref["fd"]).abs().idxmin()]
        pixel_ode = df[(df["kind"] == "sgm") & (df["sampler"] == "ode") & (df["run"] == ref["run"])
                       & (df["tolerance"] == best["tolerance"])]
        ode = pixel_ode.iloc[0] if len(pixel_ode) else None
        out.append({"index": best.name, "model": model, "tolerance": float(best["tolerance"]), "fd": float(best["fd"]),
                    "pc_reference_run": ref["run"], "pc_reference_steps": int(ref["n_steps"]),
                    "pc_reference_fd": float(ref["fd"]),
                    "fd_within_tolerance": bool(abs(best["fd"] - ref["fd"]) <= MATCH_TOLERANCE * abs(ref["fd"])),
                    "pc_nfe_ratio": float(ref["nfe_mean"] / best["nfe_mean"]),
                    "pc_time_ratio": float(ref["seconds_per_batch"] / best["seconds_per_batch"]),
                    "ode_nfe_ratio": float(ode["nfe_mean"] / best["nfe_mean"]) if ode is not None else math.nan,
                    "ode_time_ratio": float(ode["seconds_per_batch"] / best["seconds_per_batch"]) if ode is not None
                    else math.nan,
                    "same_device": bool(ref["device"] == best["device"])})
    return out


def _with_matched_quality(df: pd.DataFrame) -> pd.DataFrame:
    for col in MATCH_COLUMNS:
        df[col] = pd.Series([None] * len(df), dtype=object)
    for match in matched_quality(df):
        df.at[match["index"], "matched_quality"] = "matched"
        for col in MATCH_COLUMNS[1:]:
            df.at[match["index"], col] = match[col]
    return df


def _unique(values: Any) -> str:
    """Distinct non-missing values as text (``a, b``), or ``unknown``."""
    seen = sorted({str(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))})
    return ", ".join(seen) if seen else "unknown"


def figure_caption(df: pd.DataFrame, cost_metrics: list[dict], info: dict) -> str:
    """Scale, dataset, device, batch size, commit and the metric named as measured."""
    dataset = info.get("dataset") or _unique(d["run"]["dataset"] for d in cost_metrics)
    device = info.get("device") or _unique(d.get("provenance", {}).get("device") for d in cost_metrics)
    batch = info.get("batch_size") or _unique(df["batch_size"])
    return (f"Figure 4 ({info.get('scale', '?')} scale): {_unique(df['fd_name'])} and sampling cost vs "
            f"ODE solver tolerance. Dataset: {dataset}. Device: {device}. Batch size: {batch}. "
            f"Commit: {info.get('commit', 'unknown')}. PC sampling (no tolerance) is a dashed/dotted line per step count; "
            f"error bars are one standard deviation over batches.")


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
    notes = []
    for match in matched_quality(df):
        row = df.loc[match["index"]]
        for ax, (value, _, _) in zip(axes, PANELS):
            ax.plot([row["tolerance"]], [row[value]], marker="*", markersize=16, color="gold", markeredgecolor="black",
                    zorder=5, label="LSGM: FD closest to pixel PC" if ax is axes[0] else None)
        text = (f"{match['model']} at tol {match['tolerance']:g} ({fd_label} {match['fd']:.3g}) vs pixel PC "
                f"{match['pc_reference_steps']} steps ({fd_label} {match['pc_reference_fd']:.3g}): "
                f"pixel PC needs {match['pc_nfe_ratio']:.3g}x the NFE, {match['pc_time_ratio']:.3g}x the time")
        if not math.isnan(match["ode_nfe_ratio"]):
            text += f"; pixel ODE {match['ode_nfe_ratio']:.3g}x NFE, {match['ode_time_ratio']:.3g}x time"
        if not match["same_device"]:
            text += " (timed on different devices)"
        if not match["fd_within_tolerance"]:
            text += (f". NOT the same quality: no LSGM tolerance comes within {MATCH_TOLERANCE:.0%} of the pixel PC "
                     f"sampler's {fd_label}")
        notes.append(textwrap.fill("\u2605 matched quality: " + text, width=190))
    if notes:
        fig.supxlabel("\n".join(notes), fontsize="small")
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

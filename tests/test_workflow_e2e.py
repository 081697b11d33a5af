"""The whole DAG at the smoke scale, end to end (what CI runs): every table and the figure exist with
the expected rows and columns, and numbers are finite wherever training converged."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
TABLE_COLUMNS = {
    "table2": ["Section", "Method", "NLL (bpd)", "FID", "fd_digits (ours)", "source"],
    "table3": ["Section", "Method", "NLL (bpd)", "FID", "fd_digits (ours)", "source"],
    "table4": ["Section", "Method", "NELBO (nats)", "NLL (nats)", "source"],
    "table5": ["Section", "Method", "NELBO (nats)", "NLL (nats)", "source"],
}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Run the smoke DAG in a copy of the workflow (the installed `lsgm` package does the work)."""
    work = tmp_path_factory.mktemp("smoke")
    for name in ("Snakefile", "config.yaml", "workflow"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    cmd = ["snakemake", "--cores", "2", "--config", "scale=smoke", "--quiet", "rules"]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


def ours(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["source"] == "ours"]


@pytest.mark.slow
@pytest.mark.parametrize("table", sorted(TABLE_COLUMNS))
def test_tables_2_to_5_have_our_rows_then_the_papers(smoke_run, table):
    out = smoke_run / "results" / "smoke" / "tables"
    df = read_table(out / f"{table}.csv")
    for column in TABLE_COLUMNS[table]:
        assert column in df.columns, (table, list(df.columns))
    mine = ours(df)
    assert len(mine) >= 2 and "VAE Backbone" in set(mine["Method"])
    assert any(m.startswith("LSGM (") for m in mine["Method"])
    assert (df["source"].str.startswith("paper")).sum() >= 8  # the paper's own rows and every baseline
    assert list(df["source"][: len(mine)]) == ["ours"] * len(mine)  # ours first
    metric_cols = [c for c in TABLE_COLUMNS[table][2:-1] if c != "FID"]
    for col in metric_cols:
        values = [float(v) for v in mine[col] if v not in ("—", "n/a")]
        assert values and all(math.isfinite(v) for v in values), (table, col, list(mine[col]))
    caption = (out / f"{table}.md").read_text().split("\n\n")[0]
    assert "Scale: smoke" in caption and "digits" in caption and "Commit:" in caption


@pytest.mark.slow
def test_table6_grid_has_every_cell_and_na_where_undefined(smoke_run):
    df = read_table(smoke_run / "results" / "smoke" / "tables" / "table6.csv")
    mine = ours(df)
    assert set(mine["SDE"]) == {"Geom. VPSDE", "VPSDE"} and len(mine) == 4  # FD and NELBO rows per SDE
    cells = [c for c in df.columns if c not in ("SDE", "Metric", "source")]
    assert len(cells) == 10
    geo = mine[mine["SDE"] == "Geom. VPSDE"].iloc[0]
    assert [geo[c] for c in ("w_ll r_ll rew.", "w_un r_un rew.", "w_un r_un r_ll")] == ["n/a"] * 3
    statuses = {}
    for path in (smoke_run / "results" / "smoke" / "metrics" / "digits" / "lsgm").glob("*-w_*/nll.json"):
        statuses[path.parent.name] = json.loads(path.read_text())["status"]
    assert len(statuses) == 17
    for _, row in mine.iterrows():
        for c in cells:
            if row[c] not in ("n/a", "NaN"):
                assert math.isfinite(float(row[c])), (row["SDE"], row["Metric"], c)


@pytest.mark.slow
def test_figure4_has_lsgm_and_pixel_sgm_costs(smoke_run):
    out = smoke_run / "results" / "smoke"
    assert (out / "figure4.png").stat().st_size > 10_000
    df = pd.read_csv(out / "figure4.csv")
    assert {"model", "sampler", "tolerance", "nfe_mean", "seconds_per_batch", "fd_name", "fd"} <= set(df.columns)
    assert {"LSGM", "Pixel SGM"} <= set(df["model"])
    assert (df["nfe_mean"] > 0).all() and df["fd"].map(math.isfinite).all()


@pytest.mark.slow
def test_every_metrics_file_records_its_settings_and_provenance(smoke_run):
    files = list((smoke_run / "results" / "smoke" / "metrics").rglob("*.json"))
    assert len(files) == 27 + 25 + 5  # nll, fid (the CIFAR-10 pixel SGM too), cost
    for path in files:
        doc = json.loads(path.read_text())
        assert doc["status"] in ("ok", "diverged")
        assert doc["settings"] and doc["provenance"]["commit"] and doc["provenance"]["versions"]["torch"]
        assert doc["checkpoint"]["path"] and "config" in doc["provenance"]


@pytest.mark.slow
def test_snakemake_report_is_browsable(smoke_run):
    cmd = ["snakemake", "--cores", "1", "--config", "scale=smoke", "--report", "report.html"]
    proc = subprocess.run(cmd, cwd=smoke_run, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (smoke_run / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_one_sample_grid_per_trained_model(smoke_run):
    out = smoke_run / "results" / "smoke" / "samples"
    grids = sorted(out.rglob("*.png"))
    assert len(grids) == 7 + 6 + 17 + 2  # every trained vae, lsgm (Table 6 cells too) and pixel SGM, seed 0
    for png in grids:
        doc = json.loads(png.with_suffix(".json").read_text())
        assert png.name.endswith("-s0.png") and doc["kind"] == "samples" and doc["status"] in ("ok", "diverged")
        assert doc["image"]["placeholder"] == (doc["status"] == "diverged") and doc["provenance"]["commit"]

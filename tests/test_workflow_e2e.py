"""The whole DAG at the smoke scale, end to end (what CI runs): every table and the figure exist with
the expected rows and columns, and numbers are finite wherever training converged."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from lsgm.methods import TABLE6_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
ESTIMATOR = ["K", "M", "prior term", "ODE tol."]
TABLE_COLUMNS = {  # Section, Method, n, the metrics (each with std / n / diverged in the CSV), ..., source
    "table2": ["Section", "Method", "n", "NELBO (bpd)", "NLL (bpd)", "FID", "fd_digits (ours)", *ESTIMATOR,
               "Δ NLL vs paper", "Δ FID vs paper", "reproduced", "source"],
    "table3": ["Section", "Method", "n", "NELBO (bpd)", "NLL (bpd)", "FID", "fd_digits (ours)", *ESTIMATOR,
               "Δ NLL vs paper", "Δ FID vs paper", "reproduced", "source"],
    "table4": ["Section", "Method", "n", "NELBO (nats)", "NLL (nats)", *ESTIMATOR, "Δ NLL vs paper", "reproduced",
               "source"],
    "table5": ["Section", "Method", "n", "NELBO (nats)", "NLL (nats)", *ESTIMATOR, "Δ NLL vs paper", "reproduced",
               "source"],
}
METRICS = {"table2": ["NELBO (bpd)", "NLL (bpd)", "fd_digits (ours)"],
           "table3": ["NELBO (bpd)", "NLL (bpd)", "fd_digits (ours)"],
           "table4": ["NELBO (nats)", "NLL (nats)"], "table5": ["NELBO (nats)", "NLL (nats)"]}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Run the smoke DAG in a copy of the workflow (the installed `lsgm` package does the work)."""
    work = tmp_path_factory.mktemp("smoke")
    for name in ("Snakefile", "config.yaml", "workflow", "profiles"):  # profiles/default: what the README command reads
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    cmd = ["snakemake", "--cores", "2", "--config", "scale=smoke", "--quiet", "rules"]
    proc = subprocess.run(cmd, check=False, cwd=work, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (work / "snakemake.out").write_text(proc.stdout + proc.stderr, encoding="utf-8")
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
    assert len(mine) >= 2 and any(m.startswith("VAE backbone (recipe ") for m in mine["Method"])
    assert any(m.startswith("LSGM, recipe ") for m in mine["Method"])
    # under every LSGM: its control at initialisation and what it learned (lsgm/controls.py)
    assert any(m.startswith("LSGM at initialisation (recipe ") for m in mine["Method"])
    learned = mine[mine["Method"].str.match(r"learned|score prior vs more training")]  # the difference rows
    assert len(learned) and all(f"{c} se" in df.columns for c in METRICS[table])
    assert set(mine["Section"]) == {"Ours (measured)"}
    assert (df["source"].str.startswith("paper")).sum() >= 8  # the paper's own rows and every baseline
    assert list(df["source"][: len(mine)]) == ["ours"] * len(mine)  # ours first
    for col in METRICS[table]:
        values = [float(v) for v in mine[col] if v not in ("—", "n/a")]
        assert values and all(math.isfinite(v) for v in values), (table, col, list(mine[col]))
        assert {f"{col} std", f"{col} n", f"{col} diverged"} <= set(df.columns)
    assert set(mine["reproduced"]) <= {"not comparable (stand-in data)", "—"}  # stand-in data: never a number
    caption = (out / f"{table}.md").read_text().split("\n\n")[0]
    assert "Scale: smoke" in caption and "digits" in caption and "Commit:" in caption
    seeds = read_table(out / f"{table}.seeds.csv")  # every row of ours but the differences has its per-seed records
    assert set(seeds["row"]) == set(mine["Method"]) - set(learned["Method"])
    assert set(seeds["status"]) <= {"ok", "diverged"}


@pytest.mark.slow
def test_table6_grid_has_every_cell_and_na_where_undefined(smoke_run):
    df = read_table(smoke_run / "results" / "smoke" / "tables" / "table6.csv")
    mine = ours(df)
    lsgm = mine[mine["SDE"].isin(["Geom. VPSDE (measured)", "VPSDE (measured)"])]
    # per SDE: FD, learned FD, the FD's control and learned prior, NELBO and learned NELBO
    assert len(lsgm) == 12, list(lsgm["Metric"])
    assert "at initialisation" in df.columns
    cells = [c for c in df.columns[4:] if c in TABLE6_COLUMNS.values()]
    assert len(cells) == 10 and all(f"{c} std" in df.columns and f"{c} mark" in df.columns for c in cells)
    geo = mine[mine["SDE"] == "Geom. VPSDE (measured)"].iloc[0]
    assert [geo[c] for c in ("w_ll r_ll rew.", "w_un r_un rew.", "w_un r_un r_ll")] == ["n/a"] * 3
    statuses = {}
    for path in (smoke_run / "results" / "smoke" / "metrics" / "digits" / "lsgm").glob("*-w_*/nll.json"):
        statuses[path.parent.name] = json.loads(path.read_text())["status"]
    assert len(statuses) == 17
    for _, row in lsgm.iterrows():
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
    import yaml

    from lsgm.plan import Plan

    files = list((smoke_run / "results" / "smoke" / "metrics").rglob("*.json"))
    # one file per planned evaluation: nll, fid, fid_normal (the controls included), cost
    plan = Plan(yaml.safe_load((smoke_run / "config.yaml").read_text()), "smoke")
    assert len(files) == sum(len(r.evals) for r in plan.runs.values())
    assert {json.loads(p.read_text())["kind"] for p in files} == {"nll", "fid", "fid_normal", "cost"}
    for path in files:
        doc = json.loads(path.read_text())
        assert doc["status"] in ("ok", "diverged")
        assert doc["settings"] and doc["provenance"]["commit"] and doc["provenance"]["versions"]["torch"]
        assert doc["checkpoint"]["path"] and "config" in doc["provenance"]


@pytest.mark.slow
def test_every_job_ran_torch_on_its_threads(smoke_run):
    """Each job's torch used exactly the job's threads (Snakemake's OMP_NUM_THREADS; here 1 of the 2 cores), as its
    metrics file and each trainer's run.json record it: two 1-thread jobs side by side never take every core each."""
    import yaml

    from lsgm.plan import Plan

    plan = Plan(yaml.safe_load((smoke_run / "config.yaml").read_text()), "smoke")
    threads = {plan.eval_resources()["cpus_per_task"], *(r.threads() for r in plan.training_runs())}
    assert threads == {1}  # the smoke scale: one thread a job, on two cores (--cores 2)
    files = [*(smoke_run / "results" / "smoke" / "metrics").rglob("*.json"),
             *(smoke_run / "results" / "smoke" / "runs").rglob("run.json")]
    devices = {str(p.relative_to(smoke_run)): json.loads(p.read_text())["provenance"]["device"] for p in files}
    assert len(devices) > 60 and all(d.endswith("(torch threads 1)") for d in devices.values()), devices


@pytest.mark.slow
def test_snakemake_report_is_browsable(smoke_run):
    cmd = ["snakemake", "--cores", "1", "--config", "scale=smoke", "--report", "report.html"]
    proc = subprocess.run(cmd, check=False, cwd=smoke_run, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (smoke_run / "report.html").read_text(encoding="utf-8", errors="replace")
    assert len(html) > 10_000
    # what the README says it holds: the tables, the figures, the sample grids and the reproduction report
    for caption in ("Reproduction report of scale", "Figure 4 at scale"):
        assert caption in html, caption


@pytest.mark.slow
def test_one_sample_grid_per_trained_model(smoke_run):
    out = smoke_run / "results" / "smoke" / "samples"
    grids = sorted(out.rglob("*.png"))
    # every trained vae (the control too), lsgm (Table 6 cells and the controls at initialisation too) and the one pixel
    # SGM (celeba is same_as cifar10), seed 0
    assert len(grids) == 8 + 6 + 17 + 8 + 1
    for png in grids:
        doc = json.loads(png.with_suffix(".json").read_text())
        assert png.name.endswith("-s0.png") and doc["kind"] == "samples" and doc["status"] in ("ok", "diverged")
        assert doc["image"]["placeholder"] == (doc["status"] == "diverged") and doc["provenance"]["commit"]


@pytest.mark.slow
def test_a_diverged_backbone_is_an_outcome_of_the_dag(tmp_path):
    """Table 5 at the smoke scale, first healthy, then with its backbone forced to diverge: the DAG goes on (exit 0),
    the LSGM built on the backbone is NaN with the reason "backbone diverged" -- never a failed job, never the stale
    number of the LSGM trained on the earlier backbone."""
    for name in ("Snakefile", "config.yaml", "workflow", "profiles"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    overlay = tmp_path / "diverge.yaml"
    overlay.write_text(json.dumps({"scales": {"smoke": {"runs": {"vae": {"mnist": {
        "config": {"train": {"force_nan_at_step": 0}}}}}}}}))
    target = "results/smoke/tables/table5.csv"
    for extra in ([], ["--configfile", str(overlay)]):
        cmd = ["snakemake", "--cores", "2", *extra, "--config", "scale=smoke", "--quiet", "rules", "--", target]
        proc = subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        mine = ours(read_table(tmp_path / target)).set_index("Method")
        lsgm, vae = mine.loc["LSGM, recipe mnist"], mine.loc["VAE backbone (recipe mnist)"]
        if not extra:
            assert math.isfinite(float(lsgm["NLL (nats)"])) and math.isfinite(float(vae["NLL (nats)"]))
    assert lsgm["NLL (nats)"] == "NaN" and lsgm["NLL (nats) diverged"] == "1" and vae["NLL (nats)"] == "NaN"
    md = (tmp_path / target).with_suffix(".md").read_text()
    assert "NaN (1 of 1 seed: backbone diverged)" in md and "NaN (1 of 1 seed diverged)" in md
    run = json.loads((tmp_path / "results/smoke/runs/digits_binary/lsgm/mnist-s0/run.json").read_text())
    assert run["status"] == "diverged" and run["reason"].startswith("backbone diverged")


@pytest.mark.slow
def test_the_run_ends_with_its_reproduction_summary(smoke_run):
    """The default target's last job: the tables against the paper (smoke has no reference run); the run's output
    ends with the report's summary line."""
    report = smoke_run / "results" / "smoke" / "reproduction.md"
    summary = report.read_text(encoding="utf-8").splitlines()[0]
    assert "compared metrics reproduce the paper's published numbers" in summary
    assert f"reproduction (results/smoke/reproduction.md): {summary}" in (smoke_run / "snakemake.out").read_text()

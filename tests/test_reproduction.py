"""``lsgm report reproduction``: this run beside a committed reference run, or our table rows beside the paper."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from test_tables import NO_CELL, cell, fd_docs, nll_docs

from lsgm.report import cli
from lsgm.report.reproduction import RTOL, compare_runs, summary_vs_reference
from lsgm.report.render import write_table
from lsgm.report.tables import build_tables


def cost_doc(name: str, fd: float, fd_se: float | None = 0.2) -> dict:
    rows = [{"sampler": "ode", "tolerance": 1e-5, "n_steps": None, "nfe_mean": 20.0, "nfe_std": 2.0, "n_batches": 4,
             "seconds_per_batch": 0.1, "seconds_std": 0.01, "fd": fd, "fd_stderr": fd_se},
            {"sampler": "pc", "tolerance": None, "n_steps": 100, "nfe_mean": 200.0, "nfe_std": 0.0, "n_batches": 4,
             "seconds_per_batch": 3.0, "fd": 4.0, "fd_stderr": 0.1}]
    return {"kind": "cost", "run": {"name": name, "model": "lsgm", "dataset": "digits"}, "status": "ok",
            "metrics": {"rows": rows}}


@pytest.fixture
def reference() -> list[dict]:
    return [*nll_docs("lsgm", "fid", [2.0, 2.1]), *fd_docs("lsgm", "fid", [3.0, 3.2]),
            *nll_docs("lsgm", "nll", [1.9, math.nan]), cost_doc("quick/digits/lsgm/fid-s0", 5.0)]


def verdicts(df: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    return {(r.kind, r.run, r.field): r.verdict for r in df.itertuples()}


def test_the_same_numbers_reproduce_and_timings_are_not_compared(reference):
    run = copy.deepcopy(reference)
    for doc in run:  # timings differ from machine to machine
        for row in doc["metrics"].get("rows", []):
            row["seconds_per_batch"] *= 3
    run[0]["metrics"]["nll"] *= 1 + RTOL / 2  # below the tolerance: run-to-run noise
    df = compare_runs(run, reference)
    assert df["verdict"].str.startswith("reproduced").all(), df[~df["verdict"].str.startswith("reproduced")]
    assert not df["field"].str.contains("seconds").any()
    assert verdicts(df)[("nll", "quick/digits/lsgm/nll-s1", "nll")] == "reproduced (NaN in both)"
    assert {"ode tol 1e-05: fd", "ode tol 1e-05: nfe_mean", "pc 100 steps: fd"} <= set(df["field"])
    line = summary_vs_reference(df, "reference/quick")
    assert line.startswith(f"{len(df)} of {len(df)} metrics reproduce reference/quick")


def test_a_moved_metric_is_measured_in_combined_standard_errors(reference):
    run = copy.deepcopy(reference)
    run[0]["metrics"]["nll"] += 0.05  # nll_stderr 0.01 in both: 0.05 / sqrt(2 x 0.01^2) = 3.5 SE
    run[-1]["metrics"]["rows"][0]["fd"] = 5.1  # fd SE 0.2 in both: 0.1 / 0.283 = 0.35 SE
    run[-1]["metrics"]["rows"][0]["fd_stderr"] = None
    run[1]["metrics"]["nll"] = math.nan  # diverged here, not in the reference
    df = compare_runs(run, reference)
    v = verdicts(df)
    assert v[("nll", "quick/digits/lsgm/fid-s0", "nll")] == "moved (+3.5 SE)"
    assert v[("cost", "quick/digits/lsgm/fid-s0", "ode tol 1e-05: fd")] == "moved (no SE)"
    assert v[("nll", "quick/digits/lsgm/fid-s1", "nll")] == "moved (NaN in this run)"
    row = df[(df["run"] == "quick/digits/lsgm/fid-s0") & (df["field"] == "nll") & (df["kind"] == "nll")].iloc[0]
    assert row["difference"] == pytest.approx(0.05) and row["z"] == pytest.approx(0.05 / math.hypot(0.01, 0.01))
    line = summary_vs_reference(df, "reference/quick")
    assert line.startswith(f"{len(df) - 3} of {len(df)} metrics reproduce")
    assert "largest deviation: quick/digits/lsgm/fid-s1 nll nll" in line  # NaN: the largest there is


def test_a_run_not_made_and_a_new_field_are_named(reference):
    run = copy.deepcopy(reference[1:])
    run[0]["metrics"]["new_metric"] = 1.0
    df = compare_runs(run, reference)
    v = verdicts(df)
    assert v[("nll", "quick/digits/lsgm/fid-s0", "nll")] == "not run (its metrics file is absent)"
    assert v[("nll", "quick/digits/lsgm/fid-s1", "new_metric")] == "new (not in the reference)"
    assert "fields only in one of the two" in summary_vs_reference(df, "reference/quick")


def test_cli_against_a_reference_folder_prints_the_summary_line(reference, tmp_path, capsys):
    ref_dir, files = tmp_path / "reference" / "quick", []
    for i, doc in enumerate(reference):
        path = ref_dir / "metrics" / f"{i}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc), encoding="utf-8")
        mine = tmp_path / "results" / f"{i}.json"
        mine.parent.mkdir(exist_ok=True)
        mine.write_text(json.dumps(doc), encoding="utf-8")
        files.append(str(mine))
    md, csv = tmp_path / "r.md", tmp_path / "r.csv"
    assert cli.main(["reproduction", "--scale", "quick", "--metrics", *files, "--reference", str(ref_dir),
                     "--md", str(md), "--csv", str(csv)]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith("22 of 22 metrics reproduce")
    assert md.read_text(encoding="utf-8").startswith(line) and len(pd.read_csv(csv)) == 22
    assert cli.main(["reproduction", "--scale", "quick", "--metrics", *files, "--reference", str(tmp_path / "none"),
                     "--md", str(md), "--csv", str(csv)]) == 2
    assert "no metrics/ folder there" in capsys.readouterr().err


def test_at_the_paper_scale_the_reference_is_the_published_numbers(tmp_path, capsys):
    docs = [*nll_docs("lsgm", "fid", [3.43, 3.45, 3.44], dataset="cifar10", scale="paper"),
            *fd_docs("lsgm", "fid", [2.4, 2.5, 2.6], dataset="cifar10", scale="paper", metric="fid"),
            *nll_docs("lsgm", "nll", [2.87, 2.86, 2.88], dataset="cifar10", scale="paper"),
            *fd_docs("lsgm", "nll", [6.9, 6.8, 7.0], dataset="cifar10", scale="paper", metric="fid"),
            *fd_docs("sgm", "cifar10", [2.2, 2.25, 2.15], dataset="cifar10", scale="paper", metric="fid",
                     cell={**NO_CELL, "sde": "vesde"})]
    c = cell("vpsde", "ll-uniform-rew")
    docs += fd_docs("lsgm", "vpsde-w_ll-uniform-q_rew", [6.1, 6.2, 6.15], dataset="cifar10", scale="paper",
                    metric="fid", cell=c)
    tables = build_tables(docs, "paper", "c0ffee1", only=("table2", "table6"))
    csvs = []
    for name, df in tables.items():
        write_table(df, tmp_path / f"{name}.md", tmp_path / f"{name}.csv")
        csvs.append(str(tmp_path / f"{name}.csv"))
    md, csv = tmp_path / "r.md", tmp_path / "r.csv"
    assert cli.main(["reproduction", "--scale", "paper", "--tables", *csvs, "--md", str(md), "--csv", str(csv)]) == 0
    df = pd.read_csv(csv)
    got = {(r.table, r.row, r.metric): r for r in df.itertuples()}
    fid = got[("table2", "LSGM, recipe fid", "FID")]
    assert fid.verdict == "no (FID)" and fid.difference == pytest.approx(0.4) and fid.paper == pytest.approx(2.10)
    assert got[("table2", "LSGM, recipe fid", "NLL")].verdict == "reproduced"  # its NLL is within 0.02 bpd
    assert got[("table2", "LSGM, recipe nll", "NLL")].verdict == "reproduced"
    cell6 = got[("table6", "VPSDE (measured), w_ll U rew.", "FID")]
    assert cell6.verdict == "reproduced" and cell6.difference == pytest.approx(0.0, abs=1e-9)
    line = capsys.readouterr().out.strip()
    compared = df["difference"].notna().sum()
    assert line.startswith(f"{(df['verdict'] == 'reproduced').sum()} of {compared} compared metrics reproduce the paper")


@pytest.mark.parametrize("scale, table", [*(("quick", f"table{i}") for i in range(2, 7)), ("demo", "table2")])
def test_the_reference_tables_are_what_this_code_builds_from_the_reference_metrics(scale, table):
    """reference/{quick,demo}/tables/ are the report of their metrics/: a change to the report code that moves a
    byte of them is a change of behaviour (rebuild them with ``lsgm report tables --table T --metrics ... --commit
    C``, inputs from ``Plan.table_inputs``, and say why in the commit)."""
    import yaml

    from lsgm.plan import Plan
    from lsgm.report.render import table_texts

    root = Path(__file__).resolve().parents[1]
    ref = root / "reference" / scale
    plan = Plan(yaml.safe_load((root / "config.yaml").read_text()), scale)
    paths = [ref / Path(p).relative_to(f"results/{scale}") for p in plan.table_inputs(table)]
    docs = [json.loads(p.read_text()) for p in paths]
    md = (ref / "tables" / f"{table}.md").read_text()
    commit = md.split("\nCommit: ", 1)[1].split(".", 1)[0].split(" ", 1)[0]
    texts = table_texts(build_tables(docs, scale, commit, only=(table,))[table])
    for suffix in ("md", "csv", "seeds.csv"):
        assert texts[suffix] == (ref / "tables" / f"{table}.{suffix}").read_text(), f"{table}.{suffix}"


def test_the_reference_runs_dsm_term_meets_its_monte_carlo_target():
    """config.yaml's target for the quick scale: the DSM term of every NELBO (main tables: 32 time draws per test digit
    on the whole test split; Table 6: 16; both with the control variate) has a Monte Carlo standard error <= 0.002
    bits/dim per run, so the learned differences the tables state are not the evaluation's noise."""
    root = Path(__file__).resolve().parents[1]
    checked = {}
    for path in sorted((root / "reference" / "quick" / "metrics").rglob("nll.json")):
        doc = json.loads(path.read_text())
        se, settings = doc["metrics"].get("nelbo_bound_mc_stderr"), doc["settings"]
        if se is None:
            continue
        assert settings["dsm_estimator"].startswith("control variate"), path
        unit = doc["metrics"]["unit"]
        checked[path.parent.name] = se if unit == "bpd" else se / (settings["eval_dims"] * math.log(2))
    assert len(checked) >= 50, sorted(checked)  # every LSGM and control at initialisation, 3 seeds; Table 6's cells
    assert max(checked.values()) <= 0.002, max(checked.items(), key=lambda kv: kv[1])

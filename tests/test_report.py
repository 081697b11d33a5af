"""Tests of the report: published numbers, Tables 2-6, Figure 4 and the ``lsgm report`` CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from lsgm.methods import TABLE6_COLUMNS
from lsgm.report import cli
from lsgm.report.figure import CSV_COLUMNS, MATCH_COLUMNS, figure4
from lsgm.report.runs import NA, load_published, published_rows

# the seed documents live in shared/ beside the checkout (where CI puts them too)
SEED = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "001_75e494dcbc515994.txt"
COMMIT = "c0ffee1"
CELL = {"sde": None, "weighting": None, "sampling": None, "q_objective": None}


# ----------------------------------------------------------------------------- synthetic metrics
def make_doc(kind: str, name: str, model: str, dataset: str, metrics: dict, status: str = "ok",
             **run: str) -> dict:
    """A metrics document in the ARCHITECTURE.md format."""
    settings = ({"n_samples": 512, "tolerance": 1e-5, "solver": "dopri5", "feature_extractor": "digits"}
                if kind == "fid" else {"iw_samples": 8, "tolerance": 1e-5})
    return {"kind": kind, "run": {"name": name, "model": model, "dataset": dataset, **CELL, **run, "seed": 0},
            "status": status, "reason": "nan loss" if status == "diverged" else None, "metrics": metrics,
            "settings": settings, "checkpoint": {"path": f"{name}/model.pt", "ema": True, "step": 10},
            "provenance": {"commit": COMMIT, "versions": {}, "device": "cpu", "wall_seconds": 1.0, "config": {}}}


def nll(name, model, dataset, nelbo, value, unit="bpd", status="ok", **run):
    return make_doc("nll", name, model, dataset,
                    {"nelbo": nelbo, "nll": value, "nll_stderr": 0.01, "unit": unit, "prior": "ode"}, status, **run)


def fd(name, model, dataset, value, status="ok", metric="fd_digits", **run):
    return make_doc("fid", name, model, dataset, {metric: value}, status, **run)


VP_LL = {"sde": "vpsde", "weighting": "ll", "sampling": "uniform", "q_objective": "rew"}
VP_UN_IS = {"sde": "vpsde", "weighting": "un", "sampling": "is", "q_objective": "rew"}
GEO_UN_U = {"sde": "geometric", "weighting": "un", "sampling": "uniform", "q_objective": "rew"}
GEO_UN_IS = {"sde": "geometric", "weighting": "un", "sampling": "is", "q_objective": "rew"}


@pytest.fixture
def metrics() -> list[dict]:
    """ok runs, a diverged run (NaN), a skipped metric (null), a run without its FD file (missing)."""
    return [
        nll("lsgm_vp", "lsgm", "digits", 2.5, 2.412345678, **VP_LL),
        fd("lsgm_vp", "lsgm", "digits", 12.3456789, **VP_LL),
        nll("lsgm_geo", "lsgm", "digits", math.nan, math.nan, status="diverged", **GEO_UN_U),
        fd("lsgm_geo", "lsgm", "digits", math.nan, status="diverged", **GEO_UN_U),
        nll("lsgm_is", "lsgm", "digits", 2.6, 2.55, **VP_UN_IS),
        fd("lsgm_is", "lsgm", "digits", 3.0, **VP_UN_IS),
        nll("lsgm_geo_is", "lsgm", "digits", 2.7, 2.6, **GEO_UN_IS),
        nll("vae", "vae", "digits", 2.9, None),  # NLL skipped -> n/a; no FD file -> missing
        fd("sgm", "sgm", "digits", 5.0),
        nll("vae_bin", "vae", "digits_binary", 90.0, 88.5, unit="nats"),
        nll("lsgm_bin", "lsgm", "digits_binary", 86.0, 85.25, unit="nats"),
    ]


# ----------------------------------------------------------------------------- published.yaml
def parse_seed_tables(path: Path) -> dict[str, list[tuple]]:
    """Rows of Tables 2-5 in the seed: (family label as printed, method, ref, value1, value2, bound)."""
    tables: dict[str, list[tuple]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        head = re.match(r"Table ([2-5]):", line)
        if head:
            current = f"table{head.group(1)}"
            tables[current] = []
            continue
        fields = line.split("\t")
        if current is not None and not line.strip() and tables[current]:
            current = None  # a blank line ends the table
        if current is None or len(fields) != 4 or fields[1] == "Method":
            continue
        method, ref = re.match(r"(.*?)(?: \[(\d+)\])?$", fields[1].strip()).groups()
        values = [None if v.strip() == "-" else float(v.replace("≤", "")) for v in fields[2:]]
        tables[current].append((fields[0], method.replace("δ -", "δ-"), ref and int(ref), *values,
                                "≤" in line))
    return tables


def carried_families(seed_rows: list[tuple]) -> list[str]:
    """The seed prints a family once per block; carry it down (SDE (NCSN++) is Score, see the YAML)."""
    families, current = [], None
    for label, method, *_ in seed_rows:
        current = label or current
        families.append("Score" if method == "SDE (NCSN++)" else current)
    return families


@pytest.mark.skipif(not SEED.exists(), reason="seed documents not available")
def test_published_tables_2_to_5_are_the_seed_rows():
    published = load_published()
    seed = parse_seed_tables(SEED)
    assert {k: len(v) for k, v in seed.items()} == {"table2": 26, "table3": 12, "table4": 8, "table5": 8}
    for table, seed_rows in seed.items():
        keys = list(published["tables"][table]["metrics"])
        mine = [(r["family"], r["method"], r["ref"], r.get(keys[0]), r.get(keys[1]), bool(r.get("bound")))
                for r in published_rows(published, table)]
        expected = [(f, *r[1:]) for f, r in zip(carried_families(seed_rows), seed_rows)]
        assert mine == expected, table
    other = parse_seed_tables(SEED.with_name("002_de7728599b0d976e.txt"))  # Tables 2 and 3 again
    assert other["table3"] == seed["table3"]
    assert other["table2"][:16] == seed["table2"][:16] and other["table2"][16][1:] == seed["table2"][16][1:]


def test_published_spot_checks_and_families():
    published = load_published()
    by = {(r["table"], r["method"]): r for r in published["rows"] if r["table"] != "table6"}
    assert by[("table2", "StyleGAN2-ADA")]["fid"] == 2.92 and by[("table2", "StyleGAN2-ADA")]["ref"] == 84
    assert by[("table2", "StyleGAN2-ADA")]["nll"] is None
    assert by[("table5", "MAE")]["nll"] == 77.98 and by[("table5", "MAE")]["family"] == "Aut. Reg."
    assert by[("table2", "LSGM (FID)")]["bound"] is True and by[("table2", "LSGM (FID)")]["nll"] == 3.43
    assert by[("table3", "PGGAN")]["fid"] == 8.03 and by[("table4", "Ladder VAE")]["nll"] == 102.11
    assert by[("table2", "SDE (NCSN++)")]["family"] == "Score"
    assert by[("table2", "VFlow")]["family"] == by[("table2", "ANF")]["family"] == "Flows"
    counts = {t: len(published_rows(published, t)) for t in published["tables"]}
    assert counts == {"table2": 26, "table3": 12, "table4": 8, "table5": 8, "table6": 20}
    families = {r["family"] for r in published["rows"]}
    assert families == {"Ours", "VAEs", "Score", "Flows", "Aut. Reg.", "GANs"}


def test_published_table6_cells():
    cells = {(r["sde"], r["column"]): r for r in published_rows(load_published(), "table6")}
    assert list(TABLE6_COLUMNS.values()) == [r["column"] for r in cells.values()][:10]
    assert (cells[("vpsde", "w_un r_un rew.")]["fid"], cells[("vpsde", "w_un r_un rew.")]["nelbo"]) == (5.39, 2.98)
    assert (cells[("geometric", "w_ll U rew.")]["fid"], cells[("geometric", "w_ll U rew.")]["nelbo"]) == (10.18, 2.96)
    assert math.isnan(cells[("geometric", "w_un U rew.")]["fid"])
    assert cells[("geometric", "w_un r_un rew.")]["fid"] == NA and cells[("geometric", "w_ll r_ll rew.")]["nelbo"] == NA
    assert cells[("vpsde", "w_re U r_ll")]["fid"] == 4.99 and math.isnan(cells[("vpsde", "w_re U rew.")]["nelbo"])
    assert cells[("vpsde", "w_re r_re rew.")]["fid"] == 15.12 and cells[("geometric", "w_re U rew.")]["nelbo"] == 3.04
    for r in cells.values():  # the cell keys are our config's names
        assert TABLE6_COLUMNS[f"{r['weighting']}-{r['sampling']}-{r['q_objective']}"] == r["column"]


# Tables 2-6 themselves: tests/test_tables.py


# ----------------------------------------------------------------------------- Figure 4
def cost_doc(name: str, model: str, rows: list[dict]) -> dict:
    doc = make_doc("cost", name, model, "digits", {"rows": rows})
    doc["provenance"]["device"] = "cpu:test"
    return doc


def cost_row(sampler: str, tolerance, nfe: float, seconds: float, fd_value: float, n_steps=None) -> dict:
    return {"sampler": sampler, "tolerance": tolerance, "n_steps": n_steps, "nfe_mean": nfe, "nfe_std": 1.0,
            "seconds_per_batch": seconds, "seconds_std": 0.01, "batch_size": 16, "fd_name": "fd_digits",
            "fd": fd_value}


@pytest.fixture
def cost_metrics() -> list[dict]:
    tols = (1e-5, 1e-3, 1e-2)
    return [cost_doc("lsgm", "lsgm", [cost_row("ode", t, 40 / (i + 1), 0.1, 5 + i) for i, t in enumerate(tols)]),
            cost_doc("sgm", "sgm", [cost_row("ode", t, 120 / (i + 1), 1.0, 4 + i) for i, t in enumerate(tols)]
                     + [cost_row("pc", None, 200, 3.0, 4.0, n_steps=100)])]


def test_figure4_writes_png_and_csv(cost_metrics, tmp_path):
    figure4(cost_metrics, tmp_path / "figure4.png", tmp_path / "figure4.csv", {"scale": "smoke", "commit": COMMIT})
    png = (tmp_path / "figure4.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    df = pd.read_csv(tmp_path / "figure4.csv")
    assert list(df.columns) == CSV_COLUMNS + MATCH_COLUMNS and len(df) == 7
    assert df["matched_setting"].notna().sum() == 3  # one per LSGM tolerance
    pc = df[df["sampler"] == "pc"].iloc[0]
    assert pc["model"] == "Pixel SGM" and math.isnan(pc["tolerance"]) and pc["n_steps"] == 100
    caption = (tmp_path / "figure4.caption.txt").read_text(encoding="utf-8")
    assert all(s in caption for s in ("smoke", "digits", "cpu:test", "Batch size: 16", COMMIT, "fd_digits",
                                      "LSGM: lsgm", "Pixel SGM: sgm", "samples per setting", "Matched quality"))


# ----------------------------------------------------------------------------- CLI
def write_json(path: Path, doc: dict) -> str:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


def test_cli_tables_and_figure4(metrics, cost_metrics, tmp_path, capsys):
    files = [write_json(tmp_path / f"m{i}.json", d) for i, d in enumerate(metrics)]
    out = tmp_path / "tables"
    assert cli.main(["tables", "--metrics", *files, "--scale", "smoke", "--out-dir", str(out),
                     "--commit", "abc123", "--dataset-map", '{"table3": "none"}']) == 0
    assert sorted(p.name for p in out.glob("*.md")) == [f"table{n}.md" for n in range(2, 7)]
    assert "Commit: abc123" in (out / "table6.caption.txt").read_text(encoding="utf-8")
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    costs = [write_json(tmp_path / f"c{i}.json", d) for i, d in enumerate(cost_metrics)]
    assert cli.main(["figure4", "--metrics", *costs, "--scale", "smoke", "--out-dir", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "figure4.png").stat().st_size > 0 and (tmp_path / "fig" / "figure4.csv").exists()


def test_cli_writes_one_table_exactly_as_in_the_full_set(metrics, tmp_path, capsys):
    """``--table T --md F --csv F``: the workflow's one command per table; the same bytes as T in the full set,
    and no other file."""
    files = [write_json(tmp_path / f"m{i}.json", d) for i, d in enumerate(metrics)]
    common = ["tables", "--metrics", *files, "--scale", "quick", "--commit", "abc123"]
    assert cli.main([*common, "--out-dir", str(tmp_path / "all")]) == 0
    for table in ("table2", "table4", "table6"):
        one = tmp_path / table
        one.mkdir()
        assert cli.main([*common, "--table", table, "--md", str(one / "t.md"), "--csv", str(one / "t.csv")]) == 0
        assert sorted(p.name for p in one.iterdir()) == ["t.csv", "t.md"]
        for suffix in ("md", "csv"):
            assert (one / f"t.{suffix}").read_bytes() == (tmp_path / "all" / f"{table}.{suffix}").read_bytes()
    capsys.readouterr()
    nowhere = ["--md", str(tmp_path / "x.md"), "--csv", str(tmp_path / "x.csv")]
    assert cli.main([*common, "--table", "table9", *nowhere]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no table table9" in err
    for bad in (["--table", "table2", "--md", "x.md"], ["--table", "table2", "--md", "x.md", "--csv", "x.csv",
                                                         "--out-dir", "d"], ["--md", "x.md", "--out-dir", "d"], []):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*common, *bad])
        assert exit_.value.code == 2


def test_default_dataset_map_is_the_workflows():
    """Without --dataset-map a table takes the dataset config.yaml maps its paper dataset to at that scale."""
    import yaml

    from lsgm.report.runs import default_dataset_map

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    published = load_published()
    for scale in ("smoke", "quick", "paper"):
        expected = {t: config["scales"][scale]["datasets"][meta["dataset"]] for t, meta in published["tables"].items()}
        assert default_dataset_map(scale, published) == expected
    assert default_dataset_map("quick", published) == {"table2": "digits", "table3": "digits", "table6": "digits",
                                                       "table4": "digits_binary", "table5": "digits_binary"}


def test_cli_refuses_a_metrics_file_without_a_key(metrics, tmp_path, capsys):
    bad = dict(metrics[0], run={k: v for k, v in metrics[0]["run"].items() if k != "dataset"})
    path = write_json(tmp_path / "bad.json", bad)
    assert cli.main(["tables", "--metrics", path, "--scale", "smoke", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.json" in err and "run.dataset" in err
    cost = write_json(tmp_path / "cost.json", make_doc("cost", "x", "lsgm", "digits", {}))
    assert cli.main(["figure4", "--metrics", cost, "--scale", "smoke", "--out-dir", str(tmp_path)]) == 2
    assert "metrics.rows" in capsys.readouterr().err


def test_figure4_matches_each_lsgm_tolerance_with_the_cheapest_pixel_setting_as_good(cost_metrics, tmp_path):
    """Per LSGM ODE tolerance: the pixel setting (PC or ODE) with the fewest NFE whose FD is no worse than the LSGM's
    within their combined standard error; ``none`` (no ratios) where no pixel setting is that good."""
    lsgm_rows, sgm_rows = cost_metrics[0]["metrics"]["rows"], cost_metrics[1]["metrics"]["rows"]
    # LSGM fd 5 / 6 / 7 at 40 / 20 / 13.3 NFE; pixel ODE fd 4 / 5 / 6 at 120 / 60 / 40 NFE, PC 100 steps fd 4 at 200
    lsgm_rows.append(cost_row("ode", 1e-4, 30, 0.08, 1.0))  # better than every pixel setting
    sgm_rows[2]["fd_stderr"] = 0.9  # pixel ODE tol 1e-2: fd 6 +- 0.9
    lsgm_rows[0]["fd_stderr"] = 0.6  # LSGM tol 1e-5: fd 5 +- 0.6; 6 - 5 = 1 <= sqrt(0.6^2 + 0.9^2) = 1.08
    df = figure4(cost_metrics, tmp_path / "f.png", tmp_path / "f.csv", {"scale": "smoke", "commit": COMMIT})
    lsgm = df[df["kind"] == "lsgm"].set_index("tolerance")
    assert lsgm.loc[1e-5, "matched_setting"] == "ODE tol 0.01"  # within the SE, cheaper than ODE 1e-3 (fd 5, 60 NFE)
    assert lsgm.loc[1e-5, "matched_nfe_ratio"] == pytest.approx(40 / 40)
    assert lsgm.loc[1e-5, "matched_time_ratio"] == pytest.approx(1.0 / 0.1)
    assert lsgm.loc[1e-3, "matched_setting"] == "ODE tol 0.01"  # fd 6 vs 6: no worse
    assert lsgm.loc[1e-3, "matched_nfe_ratio"] == pytest.approx(40 / 20)
    assert lsgm.loc[1e-4, "matched_setting"] == "none" and pd.isna(lsgm.loc[1e-4, "matched_nfe_ratio"])
    assert lsgm["same_device"].dropna().all()
    no_se = [cost_metrics[0], {**cost_metrics[1], "metrics": {"rows": [{**r, "fd_stderr": None} for r in sgm_rows]}}]
    no_se[0] = {**no_se[0], "metrics": {"rows": [{**r, "fd_stderr": None} for r in lsgm_rows]}}
    df = figure4(no_se, tmp_path / "g.png", tmp_path / "g.csv", {"scale": "smoke", "commit": COMMIT})
    row = df[(df["kind"] == "lsgm") & (df["tolerance"] == 1e-5)].iloc[0]
    assert row["matched_setting"] == "ODE tol 0.001"  # without standard errors 6 > 5: the next cheapest as good
    pc_only = [cost_metrics[0], {**cost_metrics[1], "metrics": {"rows": [sgm_rows[-1]]}}]
    df = figure4(pc_only, tmp_path / "h.png", tmp_path / "h.csv", {"scale": "smoke", "commit": COMMIT})
    row = df[(df["kind"] == "lsgm") & (df["tolerance"] == 1e-2)].iloc[0]
    assert row["matched_setting"] == "PC 100 steps" and row["matched_steps"] == 100
    assert row["matched_nfe_ratio"] == pytest.approx(200 / (40 / 3))
    csv = pd.read_csv(tmp_path / "h.csv")
    assert csv["matched_setting"].notna().sum() == 4
    assert "NOT the same" not in (tmp_path / "h.caption.txt").read_text(encoding="utf-8")

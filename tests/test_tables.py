"""Tests of Tables 2-6: rows over seeds, labels and sections, like-for-like NLLs, Δ vs paper, Table 6 marks."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from lsgm.methods import TABLE6_COLUMNS
from lsgm.report import cli
from lsgm.report.comparison import NOT_COMPARABLE_DATA, NOT_COMPARABLE_FD, check_labels
from lsgm.report.render import MARK, render, write_tables
from lsgm.report.runs import NA, OURS_SECTION, SEED_COLUMNS, Agg, load_published, published_rows
from lsgm.report.table6 import mark_best
from lsgm.report.tables import build_tables

COMMIT = "c0ffee1"
NO_CELL = {"sde": None, "weighting": None, "sampling": None, "q_objective": None}
LSGM_NLL = {"prior": "ode", "iw_samples": 1, "inner": 1, "tolerance": 1e-5, "solver": "dopri5", "t_eps": 1e-5,
            "t_draws": 16, "n_examples": 300, "nelbo_bound_t_eps": 0.01}
VAE_NLL = {"prior": "normal", "iw_samples": 1, "inner": None, "tolerance": None, "n_examples": 300}
FD_SETTINGS = {"n_samples": 500, "tolerance": 1e-5, "solver": "dopri5",
               "feature_extractor": {"name": "lsgm-classifier", "metric_name": "fd_digits"}}


# ----------------------------------------------------------------------------- synthetic metrics documents
def make_doc(kind: str, scale: str, dataset: str, model: str, recipe: str, seed: int, metrics: dict,
             settings: dict, status: str = "ok", cell: dict | None = None) -> dict:
    """A metrics document in the ARCHITECTURE.md format, for run ``{scale}/{dataset}/{model}/{recipe}-s{seed}``."""
    name = f"{scale}/{dataset}/{model}/{recipe}-s{seed}"
    return {"kind": kind, "run": {"name": name, "model": model, "dataset": dataset, **(cell or NO_CELL), "seed": seed},
            "status": status, "reason": "nan loss" if status == "diverged" else None, "metrics": metrics,
            "settings": dict(settings, seed=seed), "checkpoint": {"path": f"{name}/model.pt", "ema": True, "step": 9},
            "provenance": {"commit": COMMIT, "versions": {}, "device": "cpu", "wall_seconds": 1.0, "config": {}}}


def nll_docs(model: str, recipe: str, nll: list[float], *, dataset: str = "digits", scale: str = "quick",
             nelbo_gap: float = 0.05, bound: bool = True, unit: str = "bpd", diverged: tuple = (),
             settings: dict | None = None, cell: dict | None = None) -> list[dict]:
    """One nll document per seed (seed i has NLL ``nll[i]``; NELBO = NLL + gap; diverged seeds: NaN)."""
    docs = []
    for seed, value in enumerate(nll):
        bad = seed in diverged
        v = math.nan if bad else value
        metrics = {"nelbo": v + nelbo_gap, "nll": v, "nll_stderr": 0.01, "nelbo_stderr": 0.011, "unit": unit,
                   "prior": "normal" if model == "vae" else "ode", "n_examples": 300}
        if bound:
            metrics.update(nelbo_bound=v + 2 * nelbo_gap, nelbo_bound_stderr=0.012)
        base = settings or (VAE_NLL if model == "vae" else LSGM_NLL)
        docs.append(make_doc("nll", scale, dataset, model, recipe, seed, metrics, base,
                             "diverged" if bad else "ok", cell))
    return docs


def fd_docs(model: str, recipe: str, fd: list[float], *, dataset: str = "digits", scale: str = "quick",
            metric: str = "fd_digits", diverged: tuple = (), cell: dict | None = None) -> list[dict]:
    return [make_doc("fid", scale, dataset, model, recipe, seed, {metric: math.nan if seed in diverged else v},
                     FD_SETTINGS, "diverged" if seed in diverged else "ok", cell)
            for seed, v in enumerate(fd)]


def cell(sde: str, text: str) -> dict:
    weighting, sampling, q_objective = text.split("-")
    return {"sde": sde, "weighting": weighting, "sampling": sampling, "q_objective": q_objective}


def cell_docs(sde: str, text: str, fd: list[float], nelbo: list[float], diverged: tuple = ()) -> list[dict]:
    """A Table 6 cell's runs (recipe = the cell's run name), one per seed."""
    c = cell(sde, text)
    recipe = f"{sde}-w_{c['weighting']}-{c['sampling']}-q_{c['q_objective']}"
    return (fd_docs("lsgm", recipe, fd, cell=c, diverged=diverged)
            + nll_docs("lsgm", recipe, nelbo, nelbo_gap=0.0, bound=False, cell=c, diverged=diverged))


@pytest.fixture
def metrics() -> list[dict]:
    """Quick scale: 3 seeds per recipe, a recipe with a diverged seed, a one-seed recipe, the stage-2 control,
    the pixel SGM, the binary stand-in, the Table 6 grid and its backbone."""
    return [
        *nll_docs("lsgm", "fid", [2.0, 2.1, 2.2]), *fd_docs("lsgm", "fid", [3.0, 3.2, 3.4]),
        *nll_docs("lsgm", "nll", [1.9, 1.8, 1.95], diverged=(1,)), *fd_docs("lsgm", "nll", [4.0, 4.0, 4.0], diverged=(1,)),
        *nll_docs("lsgm", "balanced", [2.412345678]), *fd_docs("lsgm", "balanced", [12.3456789]),
        *nll_docs("vae", "balanced", [2.3, 2.4, 2.5], bound=False), *fd_docs("vae", "balanced", [9.0, 9.5, 10.0]),
        *nll_docs("vae", "balanced_stage2", [2.2, 2.3, 2.4], bound=False),
        *fd_docs("sgm", "cifar10", [5.0, 5.5, 6.0], cell={**NO_CELL, "sde": "vesde"}),
        *nll_docs("lsgm", "mnist", [85.0, 85.5, 86.0], dataset="digits_binary", unit="nats", nelbo_gap=1.0),
        *nll_docs("vae", "mnist", [88.0, 88.5, 89.0], dataset="digits_binary", unit="nats", nelbo_gap=2.0,
                  bound=False),
        *cell_docs("vpsde", "ll-uniform-rew", [1.0, 1.1, 0.9], [2.5, 2.6, 2.4]),
        *cell_docs("vpsde", "un-is-rew", [1.1, 1.2, 1.0], [2.7, 2.6, 2.8]),
        *cell_docs("vpsde", "re-is-rew", [2.0, 2.1, 1.9], [2.45, 2.55, 2.5]),
        *cell_docs("geometric", "un-uniform-rew", [1.0, 1.0, 1.0], [2.0, 2.0, 2.0], diverged=(0, 1, 2)),
        *cell_docs("geometric", "ll-uniform-rew", [3.0, 3.1, 3.2], [2.9, 3.0, 3.1]),
        *nll_docs("vae", "table6", [2.8, 2.9, 3.0], bound=False), *fd_docs("vae", "table6", [7.0, 7.5, 8.0]),
    ]


@pytest.fixture
def tables(metrics) -> dict[str, pd.DataFrame]:
    return build_tables(metrics, "quick", COMMIT)


def ours(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["source"] == "ours"]


def printed(df: pd.DataFrame, key: str = "Method") -> pd.DataFrame:
    """The table as printed in markdown, indexed by our row labels (rows of ours only)."""
    return render(df)[df["source"] == "ours"].set_index(key)


# ----------------------------------------------------------------------------- rows over seeds
def test_a_row_is_a_recipe_over_its_seeds(tables):
    df = tables["table2"]
    pipeline = "VAE backbone + stage-2 steps (Normal prior, recipe balanced_stage2)"
    versus = f"score prior vs more training: LSGM − {pipeline}"
    assert list(ours(df)["Method"]) == ["LSGM, recipe balanced", versus, "LSGM, recipe fid", "LSGM, recipe nll",
                                        "VAE backbone (recipe balanced)", pipeline,
                                        "Pixel SGM (VESDE), recipe cifar10"]
    # under an LSGM whose recipe has a stage-2 control: LSGM - that control, paired per seed
    rows = ours(df).set_index("Method")
    diff = rows.loc[versus, "NLL (bpd)"]
    lsgm, control = rows.loc["LSGM, recipe balanced", "NLL (bpd)"], rows.loc[pipeline, "NLL (bpd)"]
    assert diff.difference and diff.n == lsgm.n == 1 < control.n  # the seeds both have (the LSGM's: seed 0)
    assert diff.values[0] == pytest.approx(lsgm.values[0] - control.values[0])
    cell = ours(df).set_index("Method").loc["LSGM, recipe fid", "NLL (bpd)"]
    assert isinstance(cell, Agg) and cell.n == 3 and cell.mean == pytest.approx(2.1)
    assert cell.std == pytest.approx(statistics.stdev([2.0, 2.1, 2.2]))  # sample std, ddof=1
    # ± is the standard error with the evaluations' own error: sqrt(std² / n + eval_se²) (nll_stderr 0.01 per seed)
    assert cell.se == pytest.approx(math.sqrt(0.1 ** 2 / 3 + 0.01 ** 2))
    text = printed(df)
    assert text.loc["LSGM, recipe fid", "NLL (bpd)"] == "2.10 ± 0.06"
    assert text.loc["LSGM, recipe fid", "n"] == "3"
    assert text.loc["LSGM, recipe fid", "fd_digits (ours)"] == "3.20 ± 0.12"  # no recorded error: std / sqrt(n)
    assert text.loc["LSGM, recipe balanced", "n"] == "1"  # one seed: its value ± its evaluation's error, n = 1
    assert text.loc["LSGM, recipe balanced", "NLL (bpd)"] == "2.41 ± 0.01"
    assert text.loc["Pixel SGM (VESDE), recipe cifar10", "NLL (bpd)"] == "—"  # not measured
    assert "n = 1–3 seeds per row of ours (column n; seeds 0, 1, 2)" in df.attrs["caption"]
    assert "n = 3 seeds per row of ours" in tables["table4"].attrs["caption"]


def test_a_diverged_seed_makes_the_row_nan_and_is_counted(tables, tmp_path):
    df = tables["table2"]
    text = printed(df)
    assert text.loc["LSGM, recipe nll", "NLL (bpd)"] == "NaN (1 of 3 seeds diverged)"
    assert text.loc["LSGM, recipe nll", "fd_digits (ours)"] == "NaN (1 of 3 seeds diverged)"
    assert text.loc["LSGM, recipe nll", "n"] == "3"
    write_tables(tables, tmp_path)
    seeds = pd.read_csv(tmp_path / "table2.seeds.csv", keep_default_na=False, dtype=str)
    mine = seeds[(seeds["row"] == "LSGM, recipe nll") & (seeds["metric"] == "nll")]
    assert list(mine["seed"]) == ["0", "1", "2"] and list(mine["status"]) == ["ok", "diverged", "ok"]
    assert [mine["value"].iloc[i] for i in (0, 1, 2)] == ["1.9", "NaN", "1.95"]  # nothing dropped
    csv = pd.read_csv(tmp_path / "table2.csv", keep_default_na=False, dtype=str).set_index("Method")
    assert csv.loc["LSGM, recipe nll", "NLL (bpd)"] == "NaN" and csv.loc["LSGM, recipe nll", "NLL (bpd) diverged"] == "1"


def test_csv_has_mean_std_n_at_full_precision_and_a_per_seed_csv(tables, tmp_path):
    write_tables(tables, tmp_path)
    csv = pd.read_csv(tmp_path / "table2.csv", keep_default_na=False, dtype=str).set_index("Method")
    for suffix in ("", " std", " n", " diverged"):
        assert f"NELBO (bpd){suffix}" in csv.columns and f"NLL (bpd){suffix}" in csv.columns
    assert float(csv.loc["LSGM, recipe balanced", "NLL (bpd)"]) == 2.412345678
    assert csv.loc["LSGM, recipe balanced", "NLL (bpd) std"] == "NaN" and csv.loc["LSGM, recipe balanced", "n"] == "1"
    assert float(csv.loc["LSGM, recipe fid", "NLL (bpd) std"]) == pytest.approx(0.1)
    assert csv.loc["LSGM (FID)", "NLL (bpd)"] == "3.43" and csv.loc["LSGM (FID)", "bound"] == "True"
    assert csv.loc["VDVAE", "FID"] == "—" and csv.loc["VDVAE", "NLL (bpd) std"] == "—"
    seeds = pd.read_csv(tmp_path / "table2.seeds.csv", keep_default_na=False, dtype=str)
    assert list(seeds.columns) == list(SEED_COLUMNS)
    fid_rows = seeds[seeds["row"] == "LSGM, recipe fid"]
    assert len(fid_rows) == 3 * 3  # 3 seeds x (NELBO, NLL, FD)
    bound = fid_rows[fid_rows["metric"] == "nelbo_bound"].iloc[0]
    assert (bound["eval_stderr"], bound["estimator"], bound["t_draws"], bound["K"], bound["M"]) == \
        ("0.012", "nelbo_dsm_bound", "16", "1", "")
    nll = fid_rows[fid_rows["metric"] == "nll"].iloc[0]
    assert (nll["estimator"], nll["prior"], nll["tolerance"], nll["n_examples"], nll["commit"]) == \
        ("iw_estimate_ode", "ode", "1e-05", "300", COMMIT)
    fd = fid_rows[fid_rows["metric"] == "fd_digits"].iloc[0]
    assert fd["n_samples"] == "500" and fd["estimator"] == "fd_digits_features"
    assert set(pd.read_csv(tmp_path / "table6.seeds.csv", keep_default_na=False)["column"]) >= {"w_ll U rew.",
                                                                                                "no score prior"}


# ----------------------------------------------------------------------------- labels and sections
def test_our_labels_never_equal_a_paper_label_up_to_case(tables):
    published = load_published()
    for key, df in tables.items():
        label = "SDE" if key == "table6" else "Method"
        paper = {r["method"].casefold() for r in published_rows(published, key)}
        mine = set(ours(df)[label])
        assert mine and not {m.casefold() for m in mine} & paper, key
        assert set(ours(df)["Section"]) == {OURS_SECTION}, key
        assert OURS_SECTION not in set(df[df["source"] != "ours"]["Section"]), key
    t2 = tables["table2"]
    assert list(t2[t2["source"] == "paper"]["Section"]) == ["LSGM (paper)"] * 4
    assert t2.set_index("Method").loc["VDVAE", "Section"] == "VAEs"  # baselines keep the paper's family


def test_a_label_equal_to_a_papers_is_refused():
    with pytest.raises(ValueError, match="table2: rows of ours labelled like the paper's rows: lsgm \\(fid\\)"):
        check_labels("table2", ["lsgm (fid)", "LSGM, recipe nll"], ["LSGM (FID)", "LSGM (NLL)"])


def test_the_stage2_control_is_named_and_explained(tables):
    assert "VAE backbone + stage-2 steps (Normal prior, recipe balanced_stage2)" in set(tables["table2"]["Method"])
    cap = tables["table2"].attrs["caption"]
    assert "trained on for the LSGM's stage-2 steps with its Normal prior and the stage-2 optimizer" in cap
    assert "stage-2 steps" not in tables["table4"].attrs["caption"]


# ----------------------------------------------------------------------------- like for like
def test_nelbo_beside_nll_for_every_row_with_the_estimator_columns(tables):
    for key in ("table2", "table3", "table4", "table5"):
        df = tables[key]
        nelbo, nll = (c for c in df.columns if c.startswith(("NELBO", "NLL")))
        assert df.columns.get_loc(nelbo) + 1 == df.columns.get_loc(nll), key
        assert {"K", "M", "prior term", "ODE tol."} <= set(df.columns), key
    text = printed(tables["table2"])
    assert text.loc["LSGM, recipe fid", "NELBO (bpd)"] == "2.20 ± 0.06"  # nelbo_bound = NLL + 0.1
    assert text.loc["VAE backbone (recipe balanced)", "NELBO (bpd)"] == "2.45 ± 0.06"  # its NELBO
    estimator = ["K", "M", "prior term", "ODE tol.", "t_eps (NLL)", "t_eps (NELBO)"]
    assert list(text.loc["LSGM, recipe fid", estimator]) == ["1", "1", "ode", "1e-05", "1e-05", "0.01"]
    assert list(text.loc["VAE backbone (recipe balanced)", estimator]) == ["1", "—", "normal", "—", "—", "—"]
    cap = tables["table2"].attrs["caption"]
    assert "fallback" not in cap and "t_draws=16" in cap


def test_nelbo_falls_back_to_nelbo_and_says_so():
    docs = nll_docs("lsgm", "fid", [2.0, 2.1], bound=False) + nll_docs("lsgm", "nll", [2.0, 2.1])
    df = build_tables(docs, "quick", COMMIT, only=("table2",))["table2"]
    assert printed(df).loc["LSGM, recipe fid", "NELBO (bpd)"] == "2.10 ± 0.05"  # nelbo = NLL + 0.05 (2 seeds)
    assert "fallback for LSGM recipes fid (no `nelbo_bound` in their metrics files)" in df.attrs["caption"]


def test_mixed_k_is_refused_naming_the_rows_and_the_fix(metrics):
    old = [d for d in metrics if not (d["run"]["model"] == "vae" and d["kind"] == "nll")]
    old += nll_docs("vae", "balanced", [2.3, 2.4, 2.5], bound=False, settings=dict(VAE_NLL, iw_samples=100))
    with pytest.raises(ValueError) as err:
        build_tables(old, "quick", COMMIT, only=("table2",))
    message = str(err.value)
    assert len(message.splitlines()) == 1 and message.startswith("table2: the measured NLL rows differ in K")
    assert "iw_samples=100: 'VAE backbone (recipe balanced)'" in message and "'LSGM, recipe fid'" in message
    assert "config.yaml scales.quick.eval.nll and scales.quick.defaults.vae.eval.nll" in message


def test_lsgm_rows_with_other_m_or_tolerance_are_refused():
    for key, name in (("inner", "M \\(inner ODE solves\\)"), ("tolerance", "ODE tolerance")):
        docs = nll_docs("lsgm", "fid", [2.0]) + nll_docs("lsgm", "nll", [2.0], settings={**LSGM_NLL, key: 4})
        with pytest.raises(ValueError, match=f"table2: the measured NLL rows differ in {name}"):
            build_tables(docs, "quick", COMMIT, only=("table2",))
    vae = nll_docs("lsgm", "fid", [2.0]) + nll_docs("vae", "balanced", [2.0], bound=False)  # M, tol: LSGM only
    build_tables(vae, "quick", COMMIT, only=("table2",))


def test_captions_claim_no_bound_for_our_lsgm_nll(tables):
    for key, df in tables.items():
        for line in df.attrs["caption"].splitlines():
            assert "≤" not in line or "paper's notation" in line, (key, line)
        assert "bounds the true NLL" not in df.attrs["caption"]
        mine = render(df)[df["source"] == "ours"]
        assert not mine.map(lambda v: "≤" in v).any().any(), key
    cap = tables["table2"].attrs["caption"]
    assert "an estimate, not a bound, for the LSGM rows" in cap and "K=1" in cap and "M=1" in cap
    assert "NELBO (bits/dim, ours): negative ELBO, an upper bound on -log p(x) in expectation" in cap
    paper = render(tables["table2"]).set_index("Method")
    assert paper.loc["LSGM (FID)", "NLL (bpd)"] == "≤ 3.43" and paper.loc["VAE Backbone", "NLL (bpd)"] == "2.96"


def test_fd_is_never_labelled_fid(tables):
    df = tables["table2"]
    assert ours(df)["FID"].isna().all()  # FD numbers live in their own column
    assert df[df["source"] != "ours"]["fd_digits (ours)"].isna().all()
    assert "NOT FID" in df.attrs["caption"]
    t6 = tables["table6"]
    assert set(ours(t6)["Metric"]) == {"fd_digits", "NELBO (bpd)"}
    assert set(t6[t6["source"] == "paper"]["Metric"]) == {"FID", "NELBO (bpd)"}


def test_unit_mismatch_is_an_error():
    with pytest.raises(ValueError, match="nats"):
        build_tables(nll_docs("lsgm", "fid", [1.0], unit="nats"), "quick", COMMIT)


# ----------------------------------------------------------------------------- Δ vs paper
def test_stand_in_rows_are_not_comparable_never_a_number(tables):
    text = printed(tables["table2"])
    for label in ("LSGM, recipe fid", "VAE backbone (recipe balanced)", "Pixel SGM (VESDE), recipe cifar10"):
        assert text.loc[label, "reproduced"] == NOT_COMPARABLE_DATA
        assert {text.loc[label, "Δ NLL vs paper"], text.loc[label, "Δ FID vs paper"]} == {"not comparable"}
    stage2 = "VAE backbone + stage-2 steps (Normal prior, recipe balanced_stage2)"
    assert text.loc[stage2, "reproduced"] == "—"  # no paper counterpart
    assert printed(tables["table5"]).loc["LSGM, recipe mnist", "reproduced"] == NOT_COMPARABLE_DATA
    assert set(ours(tables["table6"])["vs paper"]) <= {NOT_COMPARABLE_DATA, None}
    assert "not comparable (stand-in data)" in tables["table6"].attrs["caption"]


def test_paper_scale_delta_and_reproduced():
    docs = [*nll_docs("lsgm", "fid", [3.43, 3.45, 3.44], dataset="cifar10", scale="paper"),
            *fd_docs("lsgm", "fid", [2.4, 2.5, 2.6], dataset="cifar10", scale="paper", metric="fid"),
            *nll_docs("lsgm", "nll", [2.87, 2.86, 2.88], dataset="cifar10", scale="paper"),
            *fd_docs("lsgm", "nll", [6.9, 6.8, 7.0], dataset="cifar10", scale="paper", metric="fid"),
            *nll_docs("lsgm", "balanced", [2.95, 2.95], dataset="cifar10", scale="paper"),
            *fd_docs("lsgm", "balanced", [2.0, 2.0], dataset="cifar10", scale="paper", metric="fd_digits"),
            *fd_docs("sgm", "cifar10", [2.2, 2.25, 2.15], dataset="cifar10", scale="paper", metric="fid",
                    cell={**NO_CELL, "sde": "vesde"})]
    df = build_tables(docs, "paper", COMMIT, only=("table2",))["table2"]
    mine = ours(df).set_index("Method")
    assert mine.loc["LSGM, recipe fid", "Δ NLL vs paper"] == pytest.approx(0.01)
    assert mine.loc["LSGM, recipe fid", "Δ FID vs paper"] == pytest.approx(0.4)
    assert mine.loc["LSGM, recipe fid", "reproduced"] == "no (FID)"  # 0.4 > 5 % of 2.10
    assert mine.loc["LSGM, recipe nll", "reproduced"] == "yes"
    assert mine.loc["Pixel SGM (VESDE), recipe cifar10", "reproduced"] == "yes"  # SDE (NCSN++): FID 2.20
    assert mine.loc["Pixel SGM (VESDE), recipe cifar10", "Δ NLL vs paper"] is None  # the paper prints none
    assert mine.loc["LSGM, recipe balanced", "reproduced"] == f"yes; FID {NOT_COMPARABLE_FD}"  # NLL only
    assert render(df).set_index("Method").loc["LSGM, recipe fid", "Δ FID vs paper"] == "+0.40"
    cap = df.attrs["caption"]
    assert "|Δ NLL| <= 0.02 bits/dim" in cap and "|Δ FID| <= 5% of the paper's FID" in cap
    assert "offline stand-in" not in cap


def test_counterparts_are_data():
    rows = {(r["table"], r["method"]): r.get("ours") for r in load_published()["rows"]}
    assert rows[("table2", "LSGM (FID)")] == {"kind": "lsgm", "recipe": "fid"}
    assert rows[("table2", "VAE Backbone")] == {"kind": "vae", "recipe": "balanced"}
    assert rows[("table2", "SDE (NCSN++)")] == {"kind": "sgm", "recipe": "cifar10"}
    assert rows[("table3", "SDE")] == {"kind": "sgm", "recipe": "celeba"}
    assert rows[("table2", "NVAE")] is None


# ----------------------------------------------------------------------------- Table 6
def test_table6_cells_over_seeds(tables):
    df = tables["table6"]
    assert list(df.columns[4:14]) == list(TABLE6_COLUMNS.values())
    text = printed(df, "SDE")
    vp = text.loc["VPSDE (measured)"].set_index("Metric")
    assert vp.loc["fd_digits", "w_ll U rew."] == f"1.00 ± 0.06 {MARK}" and vp.loc["fd_digits", "n"] == "3"
    assert vp.loc["NELBO (bpd)", "w_re U rew."] == "—"  # not run
    geo = text.loc["Geom. VPSDE (measured)"].set_index("Metric")
    assert geo.loc["NELBO (bpd)", "w_un U rew."] == "NaN (3 of 3 seeds diverged)"
    assert geo.loc["NELBO (bpd)", "w_un r_un rew."] == NA  # undefined, even if run
    paper = render(df)[df["source"] == "paper"].set_index(["SDE", "Metric"])
    assert paper.loc[("Geom. VPSDE", "FID"), "w_ll U rew."] == "10.18"
    assert paper.loc[("Geom. VPSDE", "FID"), "w_un U rew."] == "NaN"
    assert paper.loc[("VPSDE", "NELBO (bpd)"), "w_un r_un rew."] == "2.98"


def test_table6_marks_the_cells_not_distinguishable_from_the_best(tables):
    vp = ours(tables["table6"]).set_index(["SDE", "Metric"]).loc[("VPSDE (measured)", "fd_digits")]
    # means 1.0 (best), 1.1 and 2.0, std 0.1, n 3: |1.1 - 1.0| = 0.1 <= 2 sqrt(2 x 0.1²/3) = 0.163; 1.0 > 0.163
    assert vp["w_ll U rew."].mark and vp["w_un r_un rew."].mark and not vp["w_re r_re rew."].mark
    nelbo = ours(tables["table6"]).set_index(["SDE", "Metric"]).loc[("VPSDE (measured)", "NELBO (bpd)")]
    # means 2.5, 2.7, 2.5 (best 2.5): 2.7 - 2.5 = 0.2 > 0.163
    assert nelbo["w_ll U rew."].mark and nelbo["w_re r_re rew."].mark and not nelbo["w_un r_un rew."].mark
    cap = tables["table6"].attrs["caption"]
    assert "|mean - best mean| <= 2 sqrt(se² + se_best²), se as for every ±" in cap and "(n = 3 per cell)" in cap


def test_table6_marks_a_constructed_case():
    agg = {"a": Agg((1.0, 1.2)), "b": Agg((1.3, 1.5)), "c": Agg((1.6, 1.8)), "d": Agg((math.nan, 1.0)), "e": NA}
    marked = mark_best(agg)  # se = 0.1 each: bound 2 sqrt(0.02) = 0.283; b is 0.3 away, c 0.6
    assert [k for k, v in marked.items() if isinstance(v, Agg) and v.mark] == ["a"]
    close = mark_best({"a": Agg((1.0, 1.2)), "b": Agg((1.2, 1.4))})  # 0.2 <= 0.283
    assert all(v.mark for v in close.values())
    single = mark_best({"a": Agg((1.0,)), "b": Agg((1.01,))})  # n = 1: no marks
    assert not any(v.mark for v in single.values())


def test_table6_no_marks_with_one_seed():
    docs = cell_docs("vpsde", "ll-uniform-rew", [1.0], [2.5]) + cell_docs("vpsde", "un-is-rew", [1.0], [2.5])
    df = build_tables(docs, "quick", COMMIT, only=("table6",))["table6"]
    assert not render(df).map(lambda v: MARK in v).any().any()
    assert "with n = 1 no marks are drawn" in df.attrs["caption"]
    assert printed(df, "SDE").set_index("Metric").loc["fd_digits", "w_ll U rew."] == "1.00"


def test_table6_backbone_reference_row(tables):
    df = tables["table6"]
    ref = ours(df)[ours(df)["SDE"] == "VAE backbone (recipe table6, no score prior)"].set_index("Metric")
    assert list(ref.index) == ["fd_digits", "NELBO (bpd)"]
    assert ref.loc["fd_digits", "no score prior"].mean == pytest.approx(7.5)
    assert ref.loc["NELBO (bpd)", "no score prior"].mean == pytest.approx(2.95)  # its NELBO (NLL + 0.05)
    assert all(ref.loc["fd_digits", h] is None for h in TABLE6_COLUMNS.values())
    assert "(column 'no score prior'): its NELBO and FD" in df.attrs["caption"]
    assert not ours(tables["table2"])["Method"].str.contains("table6|w_ll").any()


def test_table6_paper_scale_delta_rows():
    c = cell("vpsde", "ll-uniform-rew")
    docs = (fd_docs("lsgm", "vpsde-w_ll-uniform-q_rew", [6.1, 6.2, 6.15], dataset="cifar10", scale="paper",
                    metric="fid", cell=c)
            + nll_docs("lsgm", "vpsde-w_ll-uniform-q_rew", [2.9, 2.9, 2.9], dataset="cifar10", scale="paper", cell=c))
    c2 = cell("vpsde", "un-uniform-rew")  # the paper prints NaN; ours diverged too
    docs += fd_docs("lsgm", "vpsde-w_un-uniform-q_rew", [1.0], dataset="cifar10", scale="paper", metric="fid",
                    diverged=(0,), cell=c2)
    df = build_tables(docs, "paper", COMMIT, only=("table6",))["table6"]
    rows = ours(df).set_index("Metric")
    assert rows.loc["Δ FID vs paper", "w_ll U rew."] == pytest.approx(0.0)
    assert rows.loc["FID reproduced", "w_ll U rew."] == "yes"
    assert rows.loc["FID reproduced", "w_un U rew."] == "yes (diverged)"
    assert rows.loc["fid", "vs paper"] == "see the Δ rows"
    assert render(df)[df["source"] == "ours"].set_index("Metric").loc["Δ FID vs paper", "w_ll U rew."] == "+0.00"
    assert "Reference row: none" in df.attrs["caption"]
    assert rows.loc["NELBO (bpd)", "vs paper"].startswith("not compared")


# ----------------------------------------------------------------------------- files and CLI
def test_written_files(tables, tmp_path):
    written = write_tables(tables, tmp_path)
    assert len(written) == 4 * len(tables)
    for key, df in tables.items():
        md = (tmp_path / f"{key}.md").read_text(encoding="utf-8")
        caption = (tmp_path / f"{key}.caption.txt").read_text(encoding="utf-8").strip()
        assert md.startswith(caption) and caption == df.attrs["caption"]
        back = pd.read_csv(tmp_path / f"{key}.csv", keep_default_na=False, dtype=str)
        assert len(back) == len(df)
    assert "| 2.10 ± 0.06" in (tmp_path / "table2.md").read_text(encoding="utf-8")


def write_json(path: Path, doc: dict) -> str:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


def test_cli_one_table_with_its_seeds_csv(metrics, tmp_path, capsys):
    files = [write_json(tmp_path / f"m{i}.json", d) for i, d in enumerate(metrics)]
    common = ["tables", "--metrics", *files, "--scale", "quick", "--commit", "abc123"]
    assert cli.main([*common, "--out-dir", str(tmp_path / "all")]) == 0
    one = tmp_path / "one"
    one.mkdir()
    assert cli.main([*common, "--table", "table2", "--md", str(one / "t.md"), "--csv", str(one / "t.csv"),
                     "--seeds-csv", str(one / "t.seeds.csv")]) == 0
    assert sorted(p.name for p in one.iterdir()) == ["t.csv", "t.md", "t.seeds.csv"]
    for suffix in ("md", "csv", "seeds.csv"):
        assert (one / f"t.{suffix}").read_bytes() == (tmp_path / "all" / f"table2.{suffix}").read_bytes()
    with pytest.raises(SystemExit):
        cli.main([*common, "--out-dir", str(tmp_path), "--seeds-csv", "x.csv"])
    capsys.readouterr()


def test_miniature_rows_sit_beside_the_paper_but_are_never_compared():
    """The paper's data and recipes at toy sizes (scale mini): rows are found on the paper's dataset, every Δ and
    verdict says why there is none."""
    from lsgm.report.comparison import NOT_COMPARABLE_MINI

    docs = [*nll_docs("lsgm", "fid", [3.43, 3.45], dataset="cifar10", scale="mini"),
            *fd_docs("lsgm", "fid", [2.4, 2.5], dataset="cifar10", scale="mini", metric="fid")]
    df = build_tables(docs, "mini", COMMIT, only=("table2",))["table2"]
    mine = ours(df).set_index("Method")
    assert mine.loc["LSGM, recipe fid", "Δ NLL vs paper"] == "not comparable"
    assert mine.loc["LSGM, recipe fid", "reproduced"] == NOT_COMPARABLE_MINI
    assert "toy sizes" in df.attrs["caption"]


def test_a_run_on_a_diverged_backbone_shows_the_reason(tmp_path):
    """A diverged backbone makes the runs built on it NaN with the reason "backbone diverged" in the printed cell, the
    caption and the per-seed CSV -- never a number of an earlier backbone."""
    backbone = "backbone diverged: runs/vae/mnist-s0/model.pt ended with status 'diverged' (nan loss)"
    lsgm = nll_docs("lsgm", "mnist", [85.0, 85.5], dataset="digits_binary", unit="nats", diverged=(0, 1))
    for doc in lsgm:
        doc["reason"] = backbone
    vae = nll_docs("vae", "mnist", [88.0, 88.5], dataset="digits_binary", unit="nats", bound=False, diverged=(0,))
    mixed = nll_docs("lsgm", "omniglot", [90.0, 91.0, 92.0], dataset="digits_binary", unit="nats", diverged=(0, 1))
    mixed[0]["reason"] = backbone
    df = build_tables([*lsgm, *vae, *mixed], "quick", COMMIT)["table5"]
    text = printed(df)
    assert text.loc["LSGM, recipe mnist", "NLL (nats)"] == "NaN (2 of 2 seeds: backbone diverged)"
    assert text.loc["VAE backbone (recipe mnist)", "NLL (nats)"] == "NaN (1 of 2 seeds diverged)"
    assert text.loc["LSGM, recipe omniglot", "NLL (nats)"] == "NaN (2 of 3 seeds diverged, 1 of them: backbone diverged)"
    assert "backbone diverged: the stage-1 backbone of the run diverged" in df.attrs["caption"]
    write_tables({"table5": df}, tmp_path)
    seeds = pd.read_csv(tmp_path / "table5.seeds.csv", keep_default_na=False, dtype=str)
    mine = seeds[(seeds["row"] == "LSGM, recipe mnist") & (seeds["metric"] == "nll")]
    assert list(mine["status"]) == ["diverged"] * 2 and list(mine["reason"]) == [backbone] * 2


def test_the_report_refuses_what_the_plan_refuses_t_eps_and_fd_sample_counts():
    """One like-for-like rule (lsgm.like_for_like) for the plan and the report: an LSGM NLL at another t_eps, or an
    FD on another number of samples, is not the same estimate (the report checked neither before)."""
    base = nll_docs("lsgm", "fid", [2.0]) + nll_docs("lsgm", "nll", [2.0], settings={**LSGM_NLL, "t_eps": 1e-3})
    with pytest.raises(ValueError, match=r"table2: the measured NLL rows differ in t_eps \(NLL\)"):
        build_tables(base, "quick", COMMIT, only=("table2",))
    fd = fd_docs("lsgm", "fid", [3.0]) + fd_docs("lsgm", "nll", [3.0])
    fd[1]["settings"]["n_samples"] = 100
    with pytest.raises(ValueError, match=r"table2: the measured FD/FID rows differ in sample count \(n_samples\)"):
        build_tables(nll_docs("lsgm", "fid", [2.0]) + nll_docs("lsgm", "nll", [2.0]) + fd, "quick", COMMIT,
                     only=("table2",))

"""The controls of every table with an LSGM row (lsgm/controls.py): the LSGM at initialisation (planned, trained for 0
steps from exactly the trained run's initial weights, evaluated like it), the sample-quality control (its prior
replaced by N(0, tau^2 I)) and the learned differences with their standard errors."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import yaml

from lsgm.controls import CONTROL_EVALS, init_name, table6_init_name
from lsgm.plan import Plan
from lsgm.report.render import SIGNIFICANT, render
from lsgm.report.runs import Agg
from lsgm.report.tables import build_tables

from test_tables import COMMIT, LSGM_NLL, make_doc

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())


# ------------------------------------------------------------------------------------------------ the plan
@pytest.mark.parametrize("scale", ["smoke", "quick", "paper", "mini"])
def test_every_lsgm_recipe_has_its_control_at_initialisation(scale):
    plan = Plan(CONFIG, scale)
    for run in [r for r in plan.runs.values() if r.kind == "lsgm" and r.init_of is None and r.evals]:
        is_cell = run.name not in CONFIG["recipes"]["lsgm"]
        name = table6_init_name(run.config["sde"]["type"]) if is_cell else init_name(run.name)
        init = plan.runs[("lsgm", run.dataset, name, run.seed)]
        assert init.config["train"]["steps"] == 0 and init.backbone is run.backbone
        if not is_cell:  # a recipe's control is its run config but for the steps (a Table 6 SDE's: its first cell's)
            differ = {k for k in set(run.config) | set(init.config) if run.config.get(k) != init.config.get(k)}
            assert differ == {"train", "name", "deviations"}, differ
            assert {**init.config["train"], "steps": run.config["train"]["steps"]} == run.config["train"]
            assert init.eval_settings["nll"] == run.eval_settings["nll"]
            assert set(init.evals) == set(run.evals) - set(CONTROL_EVALS)
        assert init.nodes == 1 and init.gpus_per_node <= 1  # it trains nothing


def test_every_trained_lsgm_with_an_fd_has_the_sample_quality_control():
    plan = Plan(CONFIG, "quick")
    for run in plan.runs.values():
        has = "fid_normal" in run.evals
        assert has == (run.kind == "lsgm" and run.init_of is None and "fid" in run.evals), run.stem
        if has:
            assert run.eval_settings["fid_normal"] == {**run.eval_settings["fid"], "latent": "matched_normal"}


def test_figure4_draws_the_lsgm_at_initialisation_beside_the_lsgm():
    plan = Plan(CONFIG, "quick")
    assert any(f"/lsgm/{init_name('celeba')}-s0/cost.json" in p for p in plan.figure4_inputs())


# ------------------------------------------------------------------------------------------------ the numbers
def test_the_combined_standard_error_adds_the_evaluations_error_to_the_spread_over_seeds():
    agg = Agg((1.0, 2.0, 4.0), stderrs=(0.3, 0.4, 0.5))
    want = math.sqrt(statistics.stdev([1.0, 2.0, 4.0]) ** 2 / 3 + (0.09 + 0.16 + 0.25) / 3)
    assert agg.se == pytest.approx(want)
    assert Agg((5.0,), stderrs=(0.2,)).se == pytest.approx(0.2)  # one seed: its evaluation's own error
    assert Agg((1.0, 2.0)).se == pytest.approx(statistics.stdev([1.0, 2.0]) / math.sqrt(2))  # none recorded


def _pair(recipe: str, seed: int, per_example: list[float], fd: float, fd_se: float, normal_fd: float | None = None):
    """nll (with per-example NELBOs) and fid documents of one seed; ``normal_fd``: its fid_normal too."""
    mean = statistics.fmean(per_example)
    se = statistics.stdev(per_example) / math.sqrt(len(per_example))
    metrics = {"nelbo": mean, "nll": mean, "nelbo_bound": mean, "nll_stderr": se, "nelbo_stderr": se,
               "nelbo_bound_stderr": se, "unit": "bpd", "prior": "ode", "n_examples": len(per_example)}
    nll = make_doc("nll", "quick", "digits", "lsgm", recipe, seed, metrics, LSGM_NLL)
    nll["per_example"] = {k: per_example for k in ("nelbo", "nll", "nelbo_bound")}
    fd = [make_doc("fid", "quick", "digits", "lsgm", recipe, seed, {"fd_digits": fd, "fd_digits_stderr": fd_se},
                   {"n_samples": 500, "tolerance": 1e-5})]
    if normal_fd is not None:
        doc = make_doc("fid_normal", "quick", "digits", "lsgm", recipe, seed,
                       {"fd_digits": normal_fd, "fd_digits_stderr": fd_se},
                       {"n_samples": 500, "latent": "matched_normal", "latent_scale": {"mean": 1.2693}})
        fd.append(doc)
    return [nll, *fd]


def test_learned_is_the_paired_difference_with_its_standard_error():
    """Per-example NELBOs that differ by a constant 0.01 bpd under a large spread over examples: the paired
    difference is exactly -0.01 with se 0 from the examples (marked *), while the unpaired errors (0.3 each) would
    hide it; the FD difference takes the two bootstrap errors."""
    base = [1.0 + 0.7 * math.sin(i) for i in range(50)]
    docs = []
    for seed, shift in enumerate((0.0, 0.002, -0.002)):
        docs += _pair("balanced", seed, [v - 0.01 + shift for v in base], fd=4.0 + seed * 0.1, fd_se=0.2,
                      normal_fd=4.5 + seed * 0.1)
        docs += _pair(init_name("balanced"), seed, [v + shift for v in base], fd=4.6 + seed * 0.1, fd_se=0.2)
    table = build_tables(docs, "quick", COMMIT, only=("table2",))["table2"]
    rows = {row["Method"]: row for _, row in table.iterrows()}
    learned = rows["learned: LSGM − at initialisation (recipe balanced)"]["NELBO (bpd)"]
    assert learned.mean == pytest.approx(-0.01) and learned.se < 1e-9 and learned.significant
    fd = rows["learned: LSGM − at initialisation (recipe balanced)"]["fd_digits (ours)"]
    assert fd.mean == pytest.approx(-0.6) and fd.se == pytest.approx(math.sqrt(0.2 ** 2 + 0.2 ** 2))
    prior = rows["learned prior: LSGM − its N(0, τ² I) control (recipe balanced)"]["fd_digits (ours)"]
    assert prior.mean == pytest.approx(-0.5) and not prior.significant  # 0.5 < 2 x 0.28
    assert any(k.startswith("LSGM at initialisation (recipe balanced") for k in rows)
    assert any("τ = 1.27" in k for k in rows)
    text = render(table)
    printed = text[text["Method"] == "learned: LSGM − at initialisation (recipe balanced)"]["NELBO (bpd)"].iloc[0]
    assert printed == f"-0.010 ± 0.000 {SIGNIFICANT}"


def test_without_per_example_values_the_difference_takes_both_errors():
    docs = []
    for seed in range(2):
        for recipe, value in (("balanced", 1.0), (init_name("balanced"), 1.05)):
            pair = _pair(recipe, seed, [value] * 10, fd=4.0, fd_se=0.1)
            pair[0].pop("per_example")
            pair[0]["metrics"].update(nelbo_bound_stderr=0.03)
            docs += pair
    table = build_tables(docs, "quick", COMMIT, only=("table2",))["table2"]
    learned = table[table["Method"].str.startswith("learned:")]["NELBO (bpd)"].iloc[0]
    assert learned.mean == pytest.approx(-0.05) and learned.se == pytest.approx(math.hypot(0.03, 0.03))

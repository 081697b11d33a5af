"""The scaling rules of a shrunken scale (lsgm/plan/scaling.py): the EMA horizon and the warm-up stay the official
fractions of the steps, every run of a scale smaller than the paper's gets them (recorded as deviations), and the
paper scale is the official recipes untouched."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml

from lsgm import recipes
from lsgm.plan import Plan
from lsgm.plan.scaling import Official, ema_decay, shrunk, warmup_steps

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())


def runs(scale: str, kind: str, name: str, config=None):
    plan = Plan(config or CONFIG, scale)
    return [r for r in plan.runs.values() if r.kind == kind and r.name == name]


@pytest.mark.parametrize("steps", [40, 200, 1000, 10_000, 365_625])
def test_the_initial_weights_keep_the_official_share_of_the_ema_at_any_length(steps):
    """The official LSGM EMA (0.9999 over 365,625 steps) keeps exp(-36.6) of the initial weights; the rule keeps that
    share (up to the discreteness of a short run), where the old fixed quick decay 0.99 kept 13 % after 200 steps."""
    d = ema_decay(steps, 365_625, 0.9999)
    official_share = 0.9999 ** 365_625
    assert d ** steps <= max(official_share, 1e-15) * 10
    assert 0.99 ** 200 > 0.13  # the quick scale before the rule


def test_the_ema_horizon_is_the_official_fraction_of_the_steps():
    for official_steps, official_decay, steps in ((365_625, 0.9999, 200), (1_300_001, 0.999, 300_000),
                                                  (78_000, 0.9999, 5_000)):
        d = ema_decay(steps, official_steps, official_decay)
        assert math.isclose((1 / (1 - d)) / steps, (1 / (1 - official_decay)) / official_steps, rel_tol=1e-9)
    assert ema_decay(3, 365_625, 0.9999) == 0.0  # shorter than one horizon step: the current weights
    assert ema_decay(365_625, 365_625, 0.9999) == pytest.approx(0.9999)


def test_the_warmup_is_the_official_fraction_of_the_steps():
    assert warmup_steps(1000, 365_625, 975) == 3  # 0.27 %
    assert warmup_steps(10, 365_625, 975) == 1  # at least one step where the recipe warms up
    assert warmup_steps(1000, 365_625, 0) == 0
    assert warmup_steps(800, 374_400, 9_360) == 20  # MNIST stage 2: 20 of 800 epochs = 2.5 %


def test_a_run_as_long_as_its_official_one_is_untouched():
    assert shrunk({"steps": 365_625}, Official(365_625, 0.9999, {"score_optim": 975})) == ({}, [])


def test_every_quick_lsgm_gets_the_rules_from_its_official_recipe_and_says_so():
    off = recipes.official_run("cifar10_balanced", "stage2")
    (run, *_) = runs("quick", "lsgm", "balanced")
    train = run.config["train"]
    assert train["ema_decay"] == pytest.approx(ema_decay(train["steps"], off.steps, float(off.args["ema_decay"])))
    for opt in ("vae_optim", "score_optim"):
        assert train[opt]["warmup_steps"] == warmup_steps(train["steps"], off.steps, off.warmup_steps)
    notes = [d for d in run.config["deviations"] if d.startswith("scaling rule:")]
    assert len(notes) == 3 and any("EMA decay" in n for n in notes), notes


@pytest.mark.parametrize("scale", ["smoke", "quick", "mini"])
def test_every_shrunken_run_with_an_official_recipe_is_scaled(scale):
    plan = Plan(CONFIG, scale)
    for run in plan.runs.values():  # (the stage-2 control takes its LSGM's train section, rules included)
        if run.kind == "classifier":  # the FD classifier has no official recipe
            assert not any(d.startswith("scaling rule:") for d in run.config["deviations"]), run.stem
            continue
        assert any(d.startswith("scaling rule:") for d in run.config["deviations"]), run.stem


def test_the_paper_scale_is_the_official_recipes():
    plan = Plan(CONFIG, "paper")
    for run in plan.runs.values():
        assert not any(d.startswith("scaling rule:") for d in run.config["deviations"]), run.stem
    (run, *_) = runs("paper", "lsgm", "balanced")
    assert run.config["train"]["ema_decay"] == 0.9999
    assert run.config["train"]["score_optim"]["warmup_steps"] == 975


def test_a_value_the_scale_sets_itself_wins_over_the_rule():
    cfg = copy.deepcopy(CONFIG)
    cfg["scales"]["quick"]["defaults"]["lsgm"]["config"]["train"]["ema_decay"] = 0.95
    (run, *_) = runs("quick", "lsgm", "balanced", cfg)
    assert run.config["train"]["ema_decay"] == 0.95
    assert not any("EMA decay" in d for d in run.config["deviations"])
    assert any("score_optim warm-up" in d for d in run.config["deviations"])


def test_a_miniature_keeps_the_durations_of_its_paper_scale_run():
    """mini shrinks the paper's runs: the Table 6 cell's reference is its paper-scale run (400 ASSUMED epochs), not
    the official 1875-epoch recipe."""
    (paper, *_) = [r for r in runs("paper", "lsgm", "vpsde-w_un-is-q_rew") if r.seed == 0]
    (mini, *_) = [r for r in runs("mini", "lsgm", "vpsde-w_un-is-q_rew") if r.seed == 0]
    want = warmup_steps(mini.config["train"]["steps"], paper.config["train"]["steps"],
                        paper.config["train"]["score_optim"]["warmup_steps"])
    assert mini.config["train"]["score_optim"]["warmup_steps"] == want
    assert any(f"of {paper.config['train']['steps']}" in d for d in mini.config["deviations"])

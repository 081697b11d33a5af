"""Config layers you can see (lsgm/plan/layers.py): every resolved run config and evaluation setting is exactly the
merge of its recorded named layers, and `lsgm plan --why` names the layer a value came from."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lsgm.plan import SCALES, Plan
from lsgm.plan.cli import main as plan_main
from lsgm.plan.resolve import eval_block

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.mark.parametrize("scale", SCALES)
def test_every_resolved_value_is_the_merge_of_its_named_layers(scale):
    """The record is complete: merging the layers in order gives the run config and the evaluation settings the DAG
    uses, for every run (recipes, Table 6 cells, the controls) of every scale."""
    plan = Plan(CONFIG, scale)
    for run in plan.runs.values():
        assert run.layers["config"].merged() == run.config, run.stem
        assert eval_block(run.layers["eval"], run.kind) == run.eval_settings, run.stem
        assert all(name for name, _ in run.layers["config"].entries), run.stem


def test_why_names_the_winning_layer(capsys):
    assert plan_main(["--scale", "quick", "--why", "quick/digits/lsgm/balanced-s0", "train.ema_decay"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["official", "recipe"] and "0.9999" in lines[1]
    assert "the scaling rules (lsgm/plan/scaling.py)" in lines[-1] and lines[-1].endswith("<- wins")
    assert plan_main(["--scale", "paper", "--why", "cifar10/lsgm/fid-s0", "eval.fid.tolerance"]) == 0
    out = capsys.readouterr().out
    assert "the official evaluation command of cifar10_fid" in out.splitlines()[-1]
    assert plan_main(["--scale", "quick", "--why", "digits/lsgm/balanced-s0", "eval.nll.t_draws"]) == 0
    assert "scales.quick.eval" in capsys.readouterr().out.splitlines()[-1]


def test_why_says_when_no_layer_sets_a_key_and_names_a_mistyped_run(capsys):
    assert plan_main(["--scale", "quick", "--why", "digits/lsgm/balanced-s0", "eval.fid.snr"]) == 0
    assert "no layer sets it (the command's default applies)" in capsys.readouterr().out
    assert plan_main(["--scale", "quick", "--why", "digits/lsgm/balancd-s0", "train.steps"]) == 2
    assert "did you mean quick/digits/lsgm/balanced-s0?" in capsys.readouterr().err

"""The method's combination rules (lsgm.methods): one home, and every user of a rule gets the same answer."""

from __future__ import annotations

import itertools

import pytest

from lsgm.config import ConfigError, RunConfig, SDEConfig, from_dict
from lsgm.methods import (
    Q_OBJECTIVES, SAMPLINGS, SDES, TABLE6_COLUMNS, TABLE6_SDES, WEIGHTINGS, Cell, objective_error, q_trains_score,
    sde_objective_error, undefined_reason,
)
from lsgm.report.runs import load_published, published_rows
from lsgm.diffusion.sde import make_sde
from lsgm.diffusion.time_sampling import make_time_sampler


def test_cell_parses_once_into_a_record():
    cell = Cell.parse("vpsde", "un-is-ll_is")
    assert (cell.sde, cell.weighting, cell.sampling, cell.q_objective) == ("vpsde", "un", "is", "ll_is")
    assert cell.text == "un-is-ll_is" and cell.run_name == "vpsde-w_un-is-q_ll_is"
    assert cell.objective == {"weighting": "un", "sampling": "is", "q_objective": "ll_is"}
    assert cell == Cell("vpsde", "un", "is", "ll_is") and hash(cell) == hash(Cell("vpsde", "un", "is", "ll_is"))


@pytest.mark.parametrize("sde, text, message", [
    ("vpsde", "ll-is-rwe", "Table 6 cell 'll-is-rwe' of SDE 'vpsde': q_objective 'rwe' is not one of rew, ll_is, "
                           "ll_uniform"),
    ("vpsde", "lll-is-rew", "weighting 'lll' is not one of ll, un, re"),
    ("vpsde", "ll-iss-rew", "sampling 'iss' is not one of uniform, is"),
    ("vpssde", "ll-is-rew", "sde 'vpssde' is not one of vpsde, geometric"),
    ("vpsde", "ll-is", "Table 6 cell 'll-is' of SDE 'vpsde' is not <weighting>-<sampling>-<q_objective>"),
    ("vpsde", "ll_is_rew", "is not <weighting>-<sampling>-<q_objective>"),
])
def test_a_typo_in_a_cell_is_a_one_line_error(sde, text, message):
    with pytest.raises(ValueError) as err:
        Cell.parse(sde, text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_table6_refuses_the_na_cells_and_cells_without_a_column():
    for text in ("ll-is-rew", "un-is-rew", "un-is-ll_is"):
        assert Cell.parse("geometric", text).table6_error.endswith("Remove it.")
        assert Cell.parse("vpsde", text).table6_error is None
    no_column = Cell.parse("vpsde", "ll-uniform-ll_uniform").table6_error
    assert "'ll-uniform-ll_uniform' is not a Table 6 column" in no_column


def test_na_cells_are_the_papers():
    """The cells the paper prints as n/a (published.yaml) are exactly those lsgm.methods calls n/a."""
    published = {(r["sde"], r["column"]): r for r in published_rows(load_published(), "table6")}
    for sde, (text, header) in itertools.product(TABLE6_SDES, TABLE6_COLUMNS.items()):
        assert bool(Cell.parse(sde, text).na_reason) == (published[(sde, header)]["fid"] == "n/a"), (sde, text)


@pytest.mark.parametrize("sde_type, weighting, sampling",
                         list(itertools.product(SDES, WEIGHTINGS, SAMPLINGS)))
def test_config_and_samplers_apply_the_same_rule(sde_type, weighting, sampling):
    """The typed config's check and the time-sampler factory refuse exactly the undefined combinations."""
    sde = make_sde(SDEConfig(type=sde_type))
    run = {"kind": "lsgm", "sde": {"type": sde_type}, "objective": {"weighting": weighting, "sampling": sampling}}
    if undefined_reason(sde_type, weighting, sampling):
        assert undefined_reason(sde_type, weighting, sampling) in sde_objective_error(sde_type, weighting, sampling)
        with pytest.raises(ConfigError, match="exists only for the VPSDE"):
            from_dict(RunConfig, run)
        with pytest.raises(ValueError, match="exists only for the VPSDE"):
            make_time_sampler(weighting, sampling, sde, 1e-2)
    else:
        assert sde_objective_error(sde_type, weighting, sampling) is None
        from_dict(RunConfig, run)
        assert make_time_sampler(weighting, sampling, sde, 1e-2).sample(4).t.shape == (4,)


def test_training_mode_rules_reach_the_config():
    assert objective_error("ll_is", "disjoint", True, True) is None
    for args, message in ((("rew", "disjoint", True, False), "needs q_objective ll_is or ll_uniform"),
                          (("ll_is", "disjoint", False, False), "needs train_vae: true"),
                          (("rew", "joint", True, True), "update_q_ema applies only")):
        assert message in objective_error(*args)
        q_objective, mode, train_vae, update_q_ema = args
        objective = {"q_objective": q_objective, "mode": mode, "train_vae": train_vae, "update_q_ema": update_q_ema}
        with pytest.raises(ConfigError, match=message):
            from_dict(RunConfig, {"kind": "lsgm", "objective": objective})


def test_the_config_takes_its_choices_from_the_rules():
    import typing

    from lsgm.config import ObjectiveConfig

    hints = typing.get_type_hints(ObjectiveConfig)
    assert typing.get_args(typing.get_type_hints(SDEConfig)["type"]) == SDES
    assert (typing.get_args(hints["weighting"]), typing.get_args(hints["sampling"]),
            typing.get_args(hints["q_objective"])) == (WEIGHTINGS, SAMPLINGS, Q_OBJECTIVES)


def test_q_trains_score_only_when_p_and_q_coincide():
    pairs = {(w, q) for w in WEIGHTINGS for q in Q_OBJECTIVES if q_trains_score(w, q)}
    assert pairs == {("ll", "rew")}

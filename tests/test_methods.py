"""The method's combination rules (lsgm.methods): one home, and every user of a rule gets the same answer."""

from __future__ import annotations

import itertools

import pytest

from lsgm.config import ConfigError, SDEConfig
from lsgm.methods import (
    Q_OBJECTIVES, SAMPLINGS, SDES, TABLE6_COLUMNS, WEIGHTINGS, Cell, check_sde_objective, q_trains_score,
    undefined_reason,
)
from lsgm.report.tables import load_published, published_rows
from lsgm.sde import make_sde
from lsgm.time_sampling import make_time_sampler


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
    with pytest.raises(ConfigError) as err:
        Cell.parse(sde, text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_table6_refuses_the_na_cells_and_cells_without_a_column():
    for text in ("ll-is-rew", "un-is-rew", "un-is-ll_is"):
        with pytest.raises(ConfigError, match="Remove it"):
            Cell.parse("geometric", text).check_table6("here")
        Cell.parse("vpsde", text).check_table6("here")
    with pytest.raises(ConfigError, match="'ll-uniform-ll_uniform' is not a Table 6 column"):
        Cell.parse("vpsde", "ll-uniform-ll_uniform").check_table6("here")


def test_na_cells_are_the_papers():
    """The cells the paper prints as n/a (published.yaml) are exactly those lsgm.methods calls n/a."""
    published = {(r["sde"], r["column"]): r for r in published_rows(load_published(), "table6")}
    for sde, (text, header) in itertools.product(SDES, TABLE6_COLUMNS.items()):
        assert bool(Cell.parse(sde, text).na_reason) == (published[(sde, header)]["fid"] == "n/a"), (sde, text)


@pytest.mark.parametrize("sde_type, weighting, sampling",
                         list(itertools.product(SDES, WEIGHTINGS, SAMPLINGS)))
def test_config_and_samplers_apply_the_same_rule(sde_type, weighting, sampling):
    """The typed config's check and the time-sampler factory refuse exactly the undefined combinations."""
    sde = make_sde(SDEConfig(type=sde_type))
    if undefined_reason(sde_type, weighting, sampling):
        with pytest.raises(ConfigError):
            check_sde_objective(sde_type, weighting, sampling)
        with pytest.raises(ValueError, match="exists only for the VPSDE"):
            make_time_sampler(weighting, sampling, sde, 1e-2)
    else:
        check_sde_objective(sde_type, weighting, sampling)
        assert make_time_sampler(weighting, sampling, sde, 1e-2).sample(4).t.shape == (4,)


def test_q_trains_score_only_when_p_and_q_coincide():
    pairs = {(w, q) for w in WEIGHTINGS for q in Q_OBJECTIVES if q_trains_score(w, q)}
    assert pairs == {("ll", "rew")}

"""The method's combination rules, in one place: which (SDE, weighting, t-sampling, encoder objective,
training mode) combinations exist, and the Table 6 cells. Torch-free and import-free; each rule answers with a
reason (or None) and the caller raises its own error: the typed config (so every run config is checked the same
way), the plan, the time samplers, the trainer and the tables.

Paper notation (Table 6): weighting w_ll | w_un | w_re  ->  ``ll`` | ``un`` | ``re``; t-sampling for the
score objective U[t_eps, 1] | r(t)  ->  ``uniform`` | ``is``; t-sampling for the encoder objective
"rew." | r_ll(t) | U  ->  ``rew`` | ``ll_is`` | ``ll_uniform``.
"""

from __future__ import annotations

from dataclasses import dataclass

SDES = ("vpsde", "geometric", "vesde")  # the VESDE: the pixel-space original SGM (score_sde), not a Table 6 row
TABLE6_SDES = ("vpsde", "geometric")
WEIGHTINGS = ("ll", "un", "re")
SAMPLINGS = ("uniform", "is")
Q_OBJECTIVES = ("rew", "ll_is", "ll_uniform")
# The paper's Table 6 columns in its order: the cell as config.yaml's table6.grid writes it -> the printed header.
TABLE6_COLUMNS = {
    "ll-uniform-rew": "w_ll U rew.", "ll-is-rew": "w_ll r_ll rew.",
    "un-uniform-rew": "w_un U rew.", "un-uniform-ll_is": "w_un U r_ll",
    "un-is-rew": "w_un r_un rew.", "un-is-ll_is": "w_un r_un r_ll",
    "re-uniform-rew": "w_re U rew.", "re-uniform-ll_is": "w_re U r_ll",
    "re-is-rew": "w_re r_re rew.", "re-is-ll_is": "w_re r_re r_ll",
}


def undefined_reason(sde: str, weighting: str, sampling: str) -> str | None:
    """Why an (SDE, weighting, t-sampling) combination does not exist, or ``None`` if it does."""
    if weighting == "un" and sampling == "is" and sde != "vpsde":
        return ("r_un(t) importance sampling (official drop_all_iw) exists only for the VPSDE "
                "(paper Table 6: n/a for the geometric VPSDE)")
    return None


def redundant_reason(sde: str, weighting: str, sampling: str) -> str | None:
    """Why a combination is a duplicate the paper prints as n/a: for the geometric VPSDE (and the VESDE) log sigma_t^2
    is linear in t, so r_ll(t) IS U[t_eps, 1] and 'll-is-*' repeats 'll-uniform-*'."""
    if sde in ("geometric", "vesde") and weighting == "ll" and sampling == "is":
        return "identical to 'll-uniform-*' for the geometric SDE (r_ll(t) = U; paper Table 6: n/a)"
    return None


def objective_error(q_objective: str, mode: str, train_vae: bool, update_q_ema: bool) -> str | None:
    """What breaks the training-mode rules the official code asserts (with the fix), or ``None``."""
    if mode == "disjoint" and q_objective == "rew":
        return "mode 'disjoint' needs q_objective ll_is or ll_uniform, not rew (the official code asserts it)"
    if mode == "disjoint" and not train_vae:
        return "mode 'disjoint' needs train_vae: true (the official code asserts it)"
    if update_q_ema and mode != "disjoint":
        return "update_q_ema applies only to mode 'disjoint'"
    return None


def q_trains_score(weighting: str, q_objective: str) -> bool:
    """Whether the encoder's objective and the score prior's coincide (w_ll with q "rew"; the official
    ``different_p_q_objectives`` is False), so the q loss trains the score network too."""
    return weighting == "ll" and q_objective == "rew"


def sde_objective_error(sde: str, weighting: str, sampling: str) -> str | None:
    """Why a run's (SDE, weighting, t-sampling) cannot be trained, as a run config's error, or ``None``."""
    reason = undefined_reason(sde, weighting, sampling)
    return f"weighting '{weighting}' with sampling '{sampling}' and SDE '{sde}': {reason}" if reason else None


@dataclass(frozen=True)
class Cell:
    """One Table 6 cell: an SDE and the column ``"<weighting>-<sampling>-<q_objective>"``, parsed once from
    config.yaml's ``table6.grid`` and passed on as this record (its fields travel in the run config's ``sde.type``
    and ``objective``, and come back from a metrics file's ``run`` section)."""

    sde: str
    weighting: str
    sampling: str
    q_objective: str

    @classmethod
    def parse(cls, sde: str, text: str) -> "Cell":
        """``Cell.parse("vpsde", "ll-is-rew")``; a ValueError of one line naming the part that is wrong and what
        it may be."""
        parts = text.split("-") if isinstance(text, str) else []
        if len(parts) != 3:
            raise ValueError(f"Table 6 cell {text!r} of SDE '{sde}' is not <weighting>-<sampling>-<q_objective> "
                             "(e.g. 'll-is-rew')")
        for part, value, allowed in zip(("sde", "weighting", "sampling", "q_objective"), (sde, *parts),
                                        (TABLE6_SDES, WEIGHTINGS, SAMPLINGS, Q_OBJECTIVES)):
            if value not in allowed:
                raise ValueError(f"Table 6 cell '{text}' of SDE '{sde}': {part} '{value}' is not one of "
                                 f"{', '.join(allowed)}")
        return cls(sde, *parts)

    @property
    def text(self) -> str:
        """``ll-is-rew``: the column, as config.yaml's grid and :data:`TABLE6_COLUMNS` write it."""
        return f"{self.weighting}-{self.sampling}-{self.q_objective}"

    @property
    def run_name(self) -> str:
        """``vpsde-w_un-is-q_rew``: the run's name (and target path component)."""
        return f"{self.sde}-w_{self.weighting}-{self.sampling}-q_{self.q_objective}"

    @property
    def objective(self) -> dict:
        """The run config's ``objective`` fields this cell sets."""
        return {"weighting": self.weighting, "sampling": self.sampling, "q_objective": self.q_objective}

    @property
    def na_reason(self) -> str | None:
        """Why the paper prints this cell as n/a (undefined or redundant), or ``None``."""
        return undefined_reason(self.sde, self.weighting, self.sampling) or \
            redundant_reason(self.sde, self.weighting, self.sampling)

    @property
    def table6_error(self) -> str | None:
        """Why this cell cannot be trained for Table 6 (no such column, or n/a in the paper), or ``None``."""
        if self.text not in TABLE6_COLUMNS:
            return f"'{self.text}' is not a Table 6 column; the columns: {', '.join(TABLE6_COLUMNS)}"
        if self.na_reason:
            return f"Table 6 cell '{self.text}' with the {self.sde} SDE: {self.na_reason}. Remove it."
        return None

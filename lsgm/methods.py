"""The method's combination rules, in one place: which (SDE, weighting, t-sampling, encoder objective,
training mode) combinations exist. Torch-free; used by the typed config (so every run config is checked
the same way), the plan, the samplers and the tables.

Paper notation (Table 6): weighting w_ll | w_un | w_re  ->  ``ll`` | ``un`` | ``re``; t-sampling for the
score objective U[t_eps, 1] | r(t)  ->  ``uniform`` | ``is``; t-sampling for the encoder objective
"rew." | r_ll(t) | U  ->  ``rew`` | ``ll_is`` | ``ll_uniform``.
"""

from __future__ import annotations

from dataclasses import dataclass

SDES = ("vpsde", "geometric")
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


def _error(message: str) -> Exception:
    from lsgm.config import ConfigError

    return ConfigError(message)


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


def check_objective(weighting: str, sampling: str, q_objective: str, mode: str, train_vae: bool,
                    update_q_ema: bool) -> None:
    """Training-mode rules the official code asserts; raises ConfigError with the fix."""
    if mode == "disjoint" and q_objective == "rew":
        raise _error("mode 'disjoint' needs q_objective ll_is or ll_uniform, not rew (the official code asserts it)")
    if mode == "disjoint" and not train_vae:
        raise _error("mode 'disjoint' needs train_vae: true (the official code asserts it)")
    if update_q_ema and mode != "disjoint":
        raise _error("update_q_ema applies only to mode 'disjoint'")


def q_trains_score(weighting: str, q_objective: str) -> bool:
    """Whether the encoder's objective and the score prior's coincide (w_ll with q "rew"; the official
    ``different_p_q_objectives`` is False), so the q loss trains the score network too."""
    return weighting == "ll" and q_objective == "rew"


def check_sde_objective(sde: str, weighting: str, sampling: str) -> None:
    reason = undefined_reason(sde, weighting, sampling)
    if reason:
        raise _error(f"weighting '{weighting}' with sampling '{sampling}' and SDE '{sde}': {reason}")


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
        """``Cell.parse("vpsde", "ll-is-rew")``; a ConfigError of one line naming the part that is wrong and
        what it may be."""
        parts = text.split("-") if isinstance(text, str) else []
        if len(parts) != 3:
            raise _error(f"Table 6 cell {text!r} of SDE '{sde}' is not <weighting>-<sampling>-<q_objective> "
                         "(e.g. 'll-is-rew')")
        for part, value, allowed in zip(("sde", "weighting", "sampling", "q_objective"), (sde, *parts),
                                        (SDES, WEIGHTINGS, SAMPLINGS, Q_OBJECTIVES)):
            if value not in allowed:
                raise _error(f"Table 6 cell '{text}' of SDE '{sde}': {part} '{value}' is not one of "
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

    def check_table6(self, where: str) -> None:
        """Refuse a cell that is no Table 6 column, or one the paper marks n/a, naming the reason."""
        if self.text not in TABLE6_COLUMNS:
            raise _error(f"{where}: '{self.text}' is not a Table 6 column; the columns: {', '.join(TABLE6_COLUMNS)}")
        if self.na_reason:
            raise _error(f"{where}: Table 6 cell '{self.text}' with the {self.sde} SDE: {self.na_reason}. Remove it.")


def split_batch(global_batch: int, world_size: int, max_per_process: int = 0) -> tuple[int, int]:
    """(per-process batch, gradient-accumulation steps) that realise ``global_batch`` on ``world_size``
    processes with at most ``max_per_process`` samples per forward pass (0: no cap). The smallest number of
    accumulation steps wins; global_batch = world_size * per_process * accumulation exactly, or ConfigError."""
    if global_batch < 1 or world_size < 1:
        raise _error(f"global batch {global_batch} and world size {world_size} must be >= 1")
    cap = max_per_process or global_batch
    for accum in range(1, global_batch + 1):
        per, rest = divmod(global_batch, world_size * accum)
        if rest == 0 and 1 <= per <= cap:
            return per, accum
        if per == 0:
            break
    raise _error(f"global batch {global_batch} cannot be split over {world_size} processes with at most "
                 f"{cap} samples each (need global = processes x per-process x accumulation); change the number "
                 f"of GPUs or train.max_batch_per_process")

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


def _error(message: str) -> Exception:
    from lsgm.config import ConfigError

    return ConfigError(message)


def undefined_reason(sde: str, weighting: str, sampling: str) -> str | None:
    """Why an (SDE, weighting, t-sampling) combination does not exist, or ``None`` if it does."""
    if sde in ("geometric", "vesde") and weighting == "un" and sampling == "is":
        return ("r_un(t) importance sampling (official drop_all_iw) exists only for the VPSDE "
                "(paper Table 6: n/a for the geometric VPSDE)")
    return None


def redundant_reason(sde: str, weighting: str, sampling: str) -> str | None:
    """Why a combination is a duplicate the paper prints as n/a: for the geometric VPSDE (and the VESDE) log sigma_t^2
    is linear in t, so r_ll(t) IS U[t_eps, 1] and 'll-is-*' repeats 'll-uniform-*'."""
    if sde in ("geometric", "vesde") and weighting == "ll" and sampling == "is":
        return "identical to 'll-uniform-*' for the geometric SDE (r_ll(t) = U; paper Table 6: n/a)"
    return None


def table6_na(sde: str, weighting: str, sampling: str) -> bool:
    """Whether the paper prints this Table 6 cell as n/a (undefined or redundant)."""
    return bool(undefined_reason(sde, weighting, sampling) or redundant_reason(sde, weighting, sampling))


def check_objective(weighting: str, sampling: str, q_objective: str, mode: str, train_vae: bool,
                    update_q_ema: bool) -> None:
    """Training-mode rules the official code asserts; raises ConfigError with the fix."""
    if mode == "disjoint" and q_objective == "rew":
        raise _error("mode 'disjoint' needs q_objective ll_is or ll_uniform, not rew (the official code asserts it)")
    if mode == "disjoint" and not train_vae:
        raise _error("mode 'disjoint' needs train_vae: true (the official code asserts it)")
    if update_q_ema and mode != "disjoint":
        raise _error("update_q_ema applies only to mode 'disjoint'")


def check_sde_objective(sde: str, weighting: str, sampling: str) -> None:
    reason = undefined_reason(sde, weighting, sampling)
    if reason:
        raise _error(f"weighting '{weighting}' with sampling '{sampling}' and SDE '{sde}': {reason}")


@dataclass(frozen=True)
class Cell:
    """One Table 6 cell, parsed once from its config string ``"<weighting>-<sampling>-<q_objective>"``."""

    sde: str
    weighting: str
    sampling: str
    q_objective: str

    @classmethod
    def parse(cls, sde: str, text: str) -> "Cell":
        parts = text.split("-")
        if len(parts) != 3 or sde not in SDES or parts[0] not in WEIGHTINGS or parts[1] not in SAMPLINGS \
                or parts[2] not in Q_OBJECTIVES:
            raise _error(f"Table 6 cell '{text}' of SDE '{sde}' is not <weighting>-<sampling>-<q_objective> with "
                         f"sde in {SDES}, weighting in {WEIGHTINGS}, sampling in {SAMPLINGS}, q in {Q_OBJECTIVES}")
        return cls(sde, *parts)

    @property
    def run_name(self) -> str:
        """``vpsde-w_un-is-q_rew``: the run's name (and target path component)."""
        return f"{self.sde}-w_{self.weighting}-{self.sampling}-q_{self.q_objective}"

    def check_table6(self, where: str) -> None:
        """Refuse the cells the paper marks n/a, naming the reason."""
        reason = undefined_reason(self.sde, self.weighting, self.sampling) or \
            redundant_reason(self.sde, self.weighting, self.sampling)
        if reason:
            cell = f"{self.weighting}-{self.sampling}-{self.q_objective}"
            raise _error(f"{where}: Table 6 cell '{cell}' with the {self.sde} SDE: {reason}. Remove it.")


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

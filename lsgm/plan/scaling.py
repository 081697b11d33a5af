"""The scaling rules of a shrunken scale: what a run with fewer steps than its official recipe keeps of it.

A scale smaller than the paper's (``quick``, ``smoke``, the miniature ``mini``) trains every model for far fewer steps
than its official recipe. Two of the recipe's settings are durations, not sizes, and are kept as FRACTIONS of the
steps, as the paper's runs have them (declared here before any table was read; lsgm/plan applies them to every run of
a scale whose base is not ``paper`` and records them in the run's deviations):

- **EMA horizon.** An EMA of decay d averages over about 1 / (1 - d) steps. The official horizon as a fraction of the
  official steps, h = 1 / ((1 - d_official) S_official), is kept: d(S) = 1 - 1 / (h S), clamped at 0 (an EMA that
  is the current weights). Officially h S is about 28-42, so the initial weights keep d^S = exp(-h S), ~1e-16 of the
  average; the same holds at any S.
- **Warm-up.** The official warm-up steps as a fraction of the official steps, w = W_official / S_official, is kept:
  W(S) = round(w S), at least 1 step where the recipe warms up at all.

Everything else of a recipe (learning rates, optimizers, KL schedule, objective, SDE) is kept as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

RULE_KEYS = frozenset({"train.ema_decay", "train.vae_optim.warmup_steps", "train.score_optim.warmup_steps"})
NOTE = "scaling rule:"  # how the rules' lines in a run's deviations start


@dataclass(frozen=True)
class Official:
    """The durations of an official run: its steps, EMA decay (None: no EMA) and warm-up steps per optimizer."""

    steps: int
    ema_decay: float | None
    warmup_steps: dict[str, int]


def ema_decay(steps: int, official_steps: int, official_decay: float) -> float:
    """The EMA decay at ``steps`` with the official horizon fraction (see the module docstring)."""
    if official_decay >= 1.0 or steps <= 0:
        return official_decay
    horizon_fraction = 1.0 / ((1.0 - official_decay) * official_steps)
    return max(0.0, 1.0 - 1.0 / (horizon_fraction * steps))


def warmup_steps(steps: int, official_steps: int, official_warmup: int) -> int:
    """The warm-up at ``steps`` with the official warm-up fraction (at least 1 where the recipe warms up)."""
    if official_warmup <= 0 or steps <= 0:
        return 0
    return max(1, round(official_warmup * steps / official_steps))


def apply(cfg: dict, reference: dict, explicit: dict) -> None:
    """Apply the rules to a run config ``cfg`` (in place) whose ``reference`` (the official recipe's run config; a
    miniature's: its paper-scale run's) has more steps; a value the scale sets itself (``explicit``: its layers'
    ``train``) stays. The rules' lines join the run's deviations."""
    ref = (reference or {}).get("train") or {}
    if "steps" not in ref or "steps" not in cfg.get("train", {}):
        return
    official = Official(
        steps=int(ref["steps"]), ema_decay=ref.get("ema_decay") if "ema_decay" not in explicit else None,
        warmup_steps={opt: int(ref[opt]["warmup_steps"]) for opt in ("vae_optim", "score_optim")
                      if "warmup_steps" in ref.get(opt, {}) and "warmup_steps" not in explicit.get(opt, {})})
    values, notes = shrunk(cfg["train"], official)
    cfg["train"] = {**cfg["train"], **{k: ({**cfg["train"].get(k, {}), **v} if isinstance(v, dict) else v)
                                       for k, v in values.items()}}
    cfg["deviations"] = sorted(set(cfg.get("deviations", [])) | set(notes))


def shrunk(train: dict, official: Official) -> tuple[dict, list[str]]:
    """``train`` (a run config's section, its ``steps`` the scale's) with the EMA decay and warm-ups the rules give it;
    -> (the updated keys as a partial ``train`` mapping, the deviation lines)."""
    steps = int(train["steps"])
    if steps >= official.steps:
        return {}, []
    out: dict = {}
    notes = []
    if official.ema_decay is not None:
        d = ema_decay(steps, official.steps, official.ema_decay)
        out["ema_decay"] = d
        notes.append(f"{NOTE} EMA decay {d:.6g} at {steps} steps (the official {official.ema_decay:g} over "
                     f"{official.steps} steps: the same horizon, {100 * (1 - official.ema_decay) ** -1 / official.steps:.3g} % "
                     "of the steps)")
    for opt, warm in sorted(official.warmup_steps.items()):
        w = warmup_steps(steps, official.steps, warm)
        out[opt] = {"warmup_steps": w}
        notes.append(f"{NOTE} {opt} warm-up {w} steps at {steps} steps (the official {warm} of "
                     f"{official.steps}: {100 * warm / official.steps:.3g} % of the steps)")
    return out, notes

"""The controls every table with an LSGM row carries (torch-free; the plan creates them, the report reads them):

- **LSGM at initialisation**: the same run config with ``train.steps`` 0 -- its backbone as stage 2 receives it, the
  initial mixing logit and eps', the same seed and so the same initial weights -- evaluated exactly like the LSGM.
  An LSGM recipe NAME has the control NAME + :data:`INIT_SUFFIX`; the Table 6 cells of one SDE start from one model,
  the control SDE + ``-init``. ``learned`` = LSGM - at initialisation, per seed, with its standard error.
- **The sample-quality control** ``fid_normal``: the LSGM's decoder with its score prior replaced by the Normal its
  mixed score is at initialisation, N(0, tau^2 I) with tau = (m(t_eps)/m(1))^alpha_0 (:func:`lsgm.score.
  initial_latent_scale`): what a rescaled prior gives without a learned one. ``learned prior`` = the LSGM's FD - this.

A control at initialisation NAME_init draws the Monte Carlo noise of its LSGM NAME (:func:`draws_name`; common random
numbers): ``learned`` is then a paired difference in which the evaluation's draws largely cancel. Training seeds, other
runs and other evaluations never share draws.
"""

from __future__ import annotations

from lsgm.eval.registry import CONTROL_EVALS  # noqa: F401  (the control evaluations: the registry's)

INIT_SUFFIX = "_init"


def init_name(recipe: str) -> str:
    """The run name of the control "at initialisation" of an LSGM recipe."""
    return f"{recipe}{INIT_SUFFIX}"


def table6_init_name(sde: str) -> str:
    """The run name of the control "at initialisation" of the Table 6 cells of one SDE."""
    return f"{sde}-init"


def draws_name(run_name: str) -> str:
    """The name whose evaluation draws ``run_name`` uses: an LSGM's control at initialisation (``.../NAME_init-sK``)
    draws what its LSGM (``.../NAME-sK``) draws; every other run its own."""
    head, _, leaf = run_name.rpartition("/")
    recipe, sep, seed = leaf.rpartition("-s")
    if sep and seed.isdigit() and recipe.endswith(INIT_SUFFIX):
        leaf = f"{recipe.removesuffix(INIT_SUFFIX)}-s{seed}"
    return f"{head}/{leaf}" if head else leaf


def init_of(recipe: str, sde: str | None = None) -> str | None:
    """The LSGM recipe (or, for a Table 6 control, ``"table6"``) whose control at initialisation ``recipe`` is; None
    when it is not one."""
    if recipe.endswith(INIT_SUFFIX):
        return recipe.removesuffix(INIT_SUFFIX)
    if sde is not None and recipe == table6_init_name(sde):
        return "table6"
    return None

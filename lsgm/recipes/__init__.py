"""The official recipes (``official.yaml``) parsed and translated into this project's run configs.

``official_run(recipe, stage)`` parses one README command, fills in the script's parser defaults and
returns an :class:`OfficialRun`: the official arguments plus the launch geometry (nodes x GPUs x per-GPU
batch, epochs). ``run_config(run)`` translates it into a (partial) ``RunConfig`` mapping and the list of
named deviations (official flags with no counterpart here). ``eval_settings(recipe)`` does the same for the
evaluation commands. Torch-free: the plan and the tests use it.

The parts: :mod:`lsgm.recipes.official` (the commands parsed, :class:`OfficialRun`, the epoch -> steps rule, the
evaluation commands), :mod:`lsgm.recipes.translate` (training commands -> run configs with named deviations) and
:mod:`lsgm.recipes.pixel_sgm` (score_sde's configs of the pixel baseline); everything is importable from here.
"""

from __future__ import annotations

from lsgm.recipes.official import (  # noqa: F401
    DATASET_NAMES, OFFICIAL_FILE, STAGE_SCRIPTS, OfficialRun, RecipeError, eval_commands, eval_settings, official,
    official_args, official_run, official_steps, parse_command, recipe_names, steps_per_epoch,
)
from lsgm.recipes.pixel_sgm import SCORE_SDE_FILE, score_sde, score_sde_config  # noqa: F401
from lsgm.recipes.translate import (  # noqa: F401
    ADAMAX_EPS, DAE_ADAM_EPS, IW_SAMPLE_P, IW_SAMPLE_Q, SCORE_ATTN_RESOLUTIONS, SCORE_CH_MULT, SDE_TYPES, VAE_ADAM_EPS,
    run_config, stage1_config, stage2_config,
)

"""The plan: ``config.yaml`` resolved into every job of one scale (pure Python, no Snakemake, no torch).

``layout`` (where every file of the DAG lives: the path patterns the rules and the plan share), ``common`` (names,
errors, merging, evaluation flags), ``run`` (one trained model: paths, launch geometry, resources), ``scaling``
(the official schedule fractions kept at every scale), ``layers`` (which config layer set each key of a run),
``control_runs`` (the at-initialisation controls), ``resolve`` (:class:`~lsgm.plan.resolve.Resolution`:
config.yaml -> every run of a scale), ``plan`` (:class:`Plan`: the resolution, checked across runs, and the DAG's
inputs and targets), ``released`` (:class:`ReleasedPlan`: the NVlabs/LSGM released checkpoints, imported and
evaluated; :func:`make_plan` gives the plan of any scale), ``cluster`` (the GPU kinds, a Snakemake profile read as
Snakemake reads it), ``cost`` (GPU-hours measured or estimated from counted FLOPs, GPU memory), ``cli``
(``lsgm plan``). Everything is importable from ``lsgm.plan``.
"""

from __future__ import annotations

from lsgm.plan.common import (  # noqa: F401
    SCALES,
    RELEASED,
    ALL_SCALES,
    KINDS,
    METRICS,
    TABLE_METRICS,
    EVALUATIONS,
    SAMPLES_FROM_FID,
    STAGES,
    RUN_SIZE_KEYS,
    RUN_DATA_KEYS,
    EVAL_SIZE_KEYS,
    DERIVED_OWN_KEYS,
    TRAIN_RESOURCE_KEYS,
    EVAL_RESOURCE_KEYS,
    PlanError,
    deep_merge,
    flat_keys,
    check_shrink,
    short_hash,
    check_eval_settings,
    _with_samples,
    resolved_settings,
    eval_args,
)
from lsgm.plan.run import (  # noqa: F401
    Run,
)
from lsgm.plan.plan import (  # noqa: F401
    Plan,
)
from lsgm.plan.released import (  # noqa: F401
    ReleasedPlan,
    ReleaseFile,
    make_plan,
)
from lsgm.plan.cluster import (  # noqa: F401
    GPUS,
    Profile,
    workflow_config,
)
from lsgm.plan.cost import (  # noqa: F401
    Costs,
    Estimate,
    load_measured,
)
from lsgm.plan.cli import (  # noqa: F401
    gpu_hours,
    Report,
    main,
)


# Config validation, the resolved plan of each scale, wildcard constraints and input functions.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml")

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))
from plan import SCALES, Plan, PlanError, eval_args  # noqa: E402

# Resolve every scale now, so a bad config fails at once whatever scale runs.
try:
    PLANS = {scale: Plan(config, scale) for scale in SCALES}
except PlanError as err:
    raise WorkflowError(f"config.yaml: {err}") from None
SCALE = config["scale"]


wildcard_constraints:
    scale="|".join(SCALES),
    dataset="[a-z0-9_]+",
    kind="vae|lsgm|sgm",
    run="[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*",
    seed=r"\d+",
    table=r"table\d+",
    features="inception|classifier",
    version="[A-Za-z0-9]+",


def all_targets():
    """The final targets of the configured scale: every evaluation, every table, Figure 4."""
    return PLANS[SCALE].targets()


def the_run(wc, kind=None):
    try:
        return PLANS[wc.scale].run(kind or wc.kind, wc.dataset, wc.run, wc.seed)
    except PlanError as err:
        raise WorkflowError(str(err)) from None


def launcher(run):
    """Several GPUs: one node, torch DDP via torchrun; otherwise the plain console script."""
    if run.gpus > 1:
        return f"torchrun --standalone --nnodes=1 --nproc_per_node={run.gpus} -m lsgm"
    return "lsgm"


def scale_res(wc, group):
    return PLANS[wc.scale].sc["resources"][group]


def train_threads(wc, kind):
    return scale_res(wc, "train")["threads"] * max(1, the_run(wc, kind).gpus)


def train_mem(wc, kind):
    return scale_res(wc, "train")["mem_mb"] * max(1, the_run(wc, kind).gpus)


def eval_gpus(wc):
    return scale_res(wc, "eval").get("gpus", 0)


def eval_threads(wc):
    return scale_res(wc, "eval")["threads"] * max(1, eval_gpus(wc))


def eval_mem(wc):
    return scale_res(wc, "eval")["mem_mb"] * max(1, eval_gpus(wc))


def eval_runtime(wc):
    return scale_res(wc, "eval").get("runtime", 60)


def fid_stats_for(wc):
    try:
        return PLANS[wc.scale].stats_path(wc.dataset)
    except PlanError as err:
        raise WorkflowError(str(err)) from None


def classifier_for_stats(wc):
    plan = PLANS[wc.scale]
    if wc.features != "classifier":
        return []
    return plan.run("classifier", wc.dataset, "fd", 0).model_path


def train_resources(kind):
    """Slurm plugin resources of a training job: gpu (-> --gpus), cpus_per_task, mem_mb, runtime (min)."""
    return dict(
        gpu=lambda wc: the_run(wc, kind).gpus,
        cpus_per_task=lambda wc: train_threads(wc, kind),
        mem_mb=lambda wc: train_mem(wc, kind),
        runtime=lambda wc: the_run(wc, kind).runtime,
    )


EVAL_RESOURCES = dict(gpu=eval_gpus, cpus_per_task=eval_threads, mem_mb=eval_mem, runtime=eval_runtime)


def eval_flags(metric):
    """`lsgm evaluate <metric>` flags of the run, from config.yaml's eval settings."""
    return lambda wc: eval_args(the_run(wc).eval_settings[metric])

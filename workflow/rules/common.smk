# Config validation, the resolved plan of each scale (lsgm/plan/: run configs, GPUs, launch commands,
# resources), wildcard constraints and the input functions the rules use. No arithmetic lives here, and no path:
# every file's pattern is in lsgm/plan/layout.py (the rules declare those patterns; the plan fills them in).
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from lsgm.config import RunConfig, from_dict, save_run_config
from lsgm.config_sources import ConfigSources
from lsgm.eval.registry import EVALUATIONS
from lsgm.plan import (
    ALL_SCALES,
    EVAL_RESOURCE_KEYS,
    RELEASED,
    SCALES,
    TRAIN_RESOURCE_KEYS,
    Plan,
    PlanError,
    eval_args,
    layout,
    make_plan,
)

from lsgm import snakemake_fix

_installed, _note = snakemake_fix.install()  # Snakemake's scheduler starts a timer chain per job event
if not _installed:
    print(_note, file=sys.stderr)

SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
# Every shell rule's software, used with `--sdm conda` (relative to workflow/rules/): pyproject.toml's pins
CONDA_ENV = "../envs/lsgm.yaml"
# config.yaml, the --configfile overlays and --config: errors name the one that set the value (lsgm/config_sources.py)
SOURCES = ConfigSources.of_workflow(
    Path(workflow.basedir) / "config.yaml", workflow.config_settings.configfiles, workflow.config_settings.config
)
SOURCES.retype(config)  # nested --config values: YAML scalars, not Snakemake's strings


def _plans(cfg, only=None):
    """config.yaml's shape (the schema, which fills in its defaults), then every scale resolved, so a bad config fails
    at once whatever scale runs. ``only``: the scales one job of a cluster needs (the submitting process has checked
    them all; each sbatch job runs its own Snakemake, which need not resolve the others again)."""
    validate(cfg, str(SCHEMA))
    wanted = [s for s in SCALES if only is None or s in only or (s == "paper" and RELEASED in only)]
    plans = {scale: Plan(cfg, scale) for scale in wanted}
    if RELEASED in cfg["scales"] and "paper" in plans and (only is None or RELEASED in only):
        plans[RELEASED] = make_plan(cfg, RELEASED, plans["paper"])  # the paper plan's runs, imported (released.py)
    return plans


def _schema_error(cfg):
    """The schema's most relevant error (jsonschema's best match), or None."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())
    return jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(cfg))


# One line leading with where the value was set and the offending key, not a page of schema.
try:
    PLANS = _plans(config, only={config["scale"]} if workflow.remote_exec else None)
except WorkflowError:
    error = _schema_error(config)
    if error is None:
        raise
    raise WorkflowError(SOURCES.schema_message(error)) from None
except PlanError as err:
    raise WorkflowError(SOURCES.blame(str(err), _plans, (WorkflowError, PlanError))) from None
SCALE = config["scale"]
if SCALE not in PLANS:
    raise WorkflowError(f"scale {SCALE}: config.yaml has no scales.{SCALE}")
# The released scale reads files nothing here makes: each is checked before any job (missing, unreadable, truncated:
# one line naming the file and where it goes); the first job then records every file's sha256 (rule release_manifest).
if SCALE == RELEASED:
    try:
        PLANS[SCALE].check_release()
    except PlanError as err:
        raise WorkflowError(f"released checkpoints: {err}") from None
# Seeds: one job per seed, or (scales.S.batch_seeds) one job for all seeds of a run -- its rules then declare one
# output per seed (per_seed) and name their logs "-seeds" instead of "-s{seed}" (SEED_STEM, TRAIN_STEM).
SEEDS = PLANS[SCALE].seeds
BATCH_SEEDS = PLANS[SCALE].batch_seeds
SEED_STEM = layout.seed_stem(BATCH_SEEDS)
TRAIN_STEM = layout.seed_stem(BATCH_SEEDS, with_kind=False)
# Runs with fewer seeds than the scale (the Table 6 grid under scales.S.table6_n_seeds) take one job per seed even where
# seeds are batched: the batched rules (train, evaluate) leave them to their one-seed variants (train_one_seed,
# evaluate_one_seed). A {run} wildcard is followed by "-s{seed}" in every path of those rules.
RUN_NAME = "[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*"
ONE_SEED = PLANS[SCALE].one_seed_runs() if BATCH_SEEDS else {}
ONE_SEED_RUN = "|".join(sorted({re.escape(name) for names in ONE_SEED.values() for name in names}))
BATCHED_RUN = f"(?!(?:{ONE_SEED_RUN})-s[0-9])(?:{RUN_NAME})" if ONE_SEED_RUN else RUN_NAME
_both = {n for k, names in ONE_SEED.items() for n in names for r in PLANS[SCALE].runs.values()
         if r.name == n and r.kind != k and r.kind != "classifier"}
if _both:
    raise WorkflowError(f"scale {SCALE}: runs {sorted(_both)} have one seed per job in one kind and batched seeds in "
                        "another; give them distinct names")


def per_seed(pattern):
    """The paths of a job with {seed} in ``pattern``: always a list, so every rule has one code path -- one path
    (the job's own {seed}) or, with seeds batched, one path per seed of the scale."""
    return expand(pattern, seed=SEEDS, allow_missing=True) if BATCH_SEEDS else [pattern]


def job_seeds(wc):
    """The seeds one job handles: its {seed}, or every seed of the scale when seeds are batched."""
    return [int(wc.seed)] if hasattr(wc, "seed") else SEEDS


# The scales that write their own (miniature) data, by data folder: rule make_data serves them.
DATA_PLANS = {plan.sc["data_root"]: plan for plan in PLANS.values() if plan.sc.get("data_sizes")}


wildcard_constraints:
    scale="|".join(ALL_SCALES),
    root="|".join(map(re.escape, DATA_PLANS)),
    dataset="[a-z0-9_]+",
    kind="vae|lsgm|sgm",
    run=RUN_NAME,
    seed=r"\d+",
    table=r"table\d+",
    features="inception|classifier",
    splits=r"(train|test)(\+(train|test))?",
    bits="[1-8]",
    version="[A-Za-z0-9]+",


def all_targets():
    """The final targets of the configured scale: every evaluation, every table, Figure 4."""
    return PLANS[SCALE].targets()


# A scale's reference: a committed reference run (reference/<scale>/, e.g. the quick scale's), else the paper's
# published numbers through the tables (lsgm/report/reproduction.py).
REFERENCE_ROOT = Path("reference")


def reference_run(scale):
    """The committed reference run of ``scale`` (its folder), or None: then the tables are compared with the paper."""
    folder = REFERENCE_ROOT / scale
    return folder if (folder / "metrics").is_dir() else None


def reproduction_inputs(wc):
    """This run's metrics files and the reference's (against a reference run), or the tables' CSVs (the paper) and
    the metrics (what stage 2 learned)."""
    metrics = sorted({r.metrics_path(m) for r in PLANS[wc.scale].runs.values() for m in r.evals})
    if reference_run(wc.scale) is None:
        return {"metrics": metrics, "tables": [layout.fill(layout.TABLE, scale=wc.scale, table=t, ext="csv")
                                               for t in PLANS[wc.scale].tables]}
    return {"metrics": metrics, "reference": sorted(map(str, (reference_run(wc.scale) / "metrics").rglob("*.json")))}


def reproduction_args(wc, input):
    """The flags of ``lsgm report reproduction`` for this scale's reference."""
    folder = reference_run(wc.scale)
    if folder is None:
        return f"--tables {' '.join(input.tables)} --metrics {' '.join(input.metrics)}"
    return f"--metrics {' '.join(input.metrics)} --reference {folder}"


def the_run(wc, kind=None, seed=None):
    """The plan's run of a job (a batched job: its first seed's, or ``seed``'s)."""
    try:
        return PLANS[wc.scale].run(kind or wc.kind, wc.dataset, wc.run, job_seeds(wc)[0] if seed is None else seed)
    except PlanError as err:
        raise WorkflowError(str(err)) from None


def the_runs(wc):
    """The plan's runs of a job, one per seed it handles."""
    return [the_run(wc, seed=s) for s in job_seeds(wc)]


def per_key(resources_of, keys):
    """Snakemake resources, one function per key, each reading the plan's resources of the job."""
    return {k: (lambda wc, k=k: resources_of(wc).get(k)) for k in keys}


# The plan's slurm resources (lsgm/plan/): a training job's (gpu, or nodes/gres/tasks for several nodes; cpus,
# mem_mb, runtime) and an evaluation job's; threads are Snakemake's local scheduling unit.
TRAIN_RESOURCES = per_key(lambda wc: the_run(wc).resources(), TRAIN_RESOURCE_KEYS)
EVAL_RESOURCES = per_key(lambda wc: PLANS[wc.scale].eval_resources(), EVAL_RESOURCE_KEYS)


# A job's threads: Snakemake exports OMP_NUM_THREADS (and MKL_NUM_THREADS, ...) = {threads} into every shell job, so
# torch uses exactly these (tests/test_workflow_e2e.py reads them back from each metrics file); `lsgm launch` shares
# a training job's threads, one node's worth, among the processes on each node (lsgm/launch.py).
def train_threads(wc):
    return the_run(wc).threads()


def eval_threads(wc):
    return PLANS[wc.scale].eval_resources()["cpus_per_task"]


def backbone_model(wc):
    """The backbone model.pt of each seed of an LSGM (or of the control that continues a backbone); else nothing."""
    return [r.backbone.model_path for r in the_runs(wc) if r.backbone]


# The evaluations (lsgm/eval/registry.py): those a job runs on every seed, and those on the first seed only
PER_SEED_EVALS = "|".join(n for n, e in EVALUATIONS.items() if not e.first_seed_only and n != "samples")
FIRST_SEED_EVALS = "|".join(n for n, e in EVALUATIONS.items() if e.first_seed_only)


def stats_if_read(wc):
    """The reference statistics of an evaluation that reads them (registry: Evaluation.inputs), else nothing."""
    return fid_stats_for(wc) if "stats" in EVALUATIONS[wc.metric].inputs else []


def inception_if_read(wc):
    return inception_for(wc) if "stats" in EVALUATIONS[wc.metric].inputs else []


def fid_stats_for(wc):
    try:
        return PLANS[wc.scale].stats_path(wc.dataset)
    except PlanError as err:
        raise WorkflowError(str(err)) from None


def data_for(wc):
    """A miniature's dataset (the make_data job's manifest) for a job that reads the data; else nothing."""
    manifest = PLANS[wc.scale].data_manifest(wc.dataset)
    return [manifest] if manifest else []


def _inception_weights(wc):
    """(weights file, whether the DAG writes it) of a job whose features are Inception's, else (None, False)."""
    plan = PLANS[wc.scale]
    features = getattr(wc, "features", None) or plan.sc["fd"]["features"].get(wc.dataset)
    weights = plan.inception_weights() if features == "inception" else None
    return weights, plan.sc["fd"].get("inception_weights") == "random"


def inception_for(wc):
    """The Inception-v3 weights as an input where the DAG writes them (a miniature's random ones). A user's file
    (scales.S.fd.inception_weights) is a flag only: a missing or corrupt one is the preflight's single line, not
    Snakemake's missing-input report (lsgm/preflight.py)."""
    weights, made = _inception_weights(wc)
    return [weights] if weights and made else []


def inception_flag(wc, input):
    """--inception-weights for a command that reads them (fid_stats; an evaluation whose registry inputs say so)."""
    metric = getattr(wc, "metric", None)
    if metric is not None and "inception_weights" not in EVALUATIONS[metric].inputs:
        return ""
    weights, _ = _inception_weights(wc)
    return f" --inception-weights {weights}" if weights else ""


def classifier_for_stats(wc):
    plan = PLANS[wc.scale]
    if wc.features != "classifier":
        return []
    return plan.run("classifier", wc.dataset, "fd", 0).model_path


def eval_flags(metric):
    """`lsgm evaluate <metric>` flags of the run, from config.yaml's eval settings."""
    return lambda wc: eval_args(the_run(wc).eval_settings[metric])


# The released scale's import jobs (rules import_official, release_manifest): the plan's files and flags.
TRAINING_SCALES = "|".join(SCALES)  # the train and run_config rules: never the released scale (it imports)


def import_input(wc):
    """The official checkpoint(s) of a released run's import job, and the manifest that checked them first."""
    plan = PLANS[wc.scale]
    job = plan.import_of(the_run(wc))
    return {"manifest": plan.manifest_path, "checkpoint": job["checkpoint"], "data": data_for(wc),
            **({"vae": job["vae"]} if "vae" in job else {})}


def import_flags(wc):
    return PLANS[wc.scale].import_args(the_run(wc))


def write_release_manifest(scale: str, out: str, log: str) -> None:
    """The release's manifest (sizes, sha256, CRCs checked; lsgm/plan/released.py), and a sha256sum-style log."""
    record = PLANS[scale].write_manifest(out)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    Path(log).write_text("".join(f"{f['sha256']}  {f['path']} ({f['bytes']} bytes)\n" for f in record["files"]))


def write_run_config(cfg: dict, out: str, log: str) -> None:
    """Validate a resolved run config again with the strict loader and write it atomically (torch-free), so the file on
    disk always loads with ``lsgm.config.load_run_config``."""
    run = from_dict(RunConfig, cfg, where=out)
    save_run_config(run, out)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    Path(log).write_text(f"wrote {out} ({run.kind} {run.name}, seed {run.seed})\n")


def preflight_or_stop(workflow):
    """The login-node preflight (lsgm/preflight.py) of a slurm run, in the Snakefile's onstart: after the DAG is built
    and before the executor submits a job. One summary; a fault stops the run (WorkflowError, exit 1). Other executors,
    dry runs and the jobs themselves (--no-hooks) never get here or return at once; --config preflight=false skips."""
    from lsgm import preflight

    result = preflight.of_workflow(workflow, config, PLANS[SCALE])
    if result is not None and result.problems:
        raise WorkflowError(f"preflight: {len(result.problems)} problem(s) above; nothing was submitted")

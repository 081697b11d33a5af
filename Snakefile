# LSGM reproducibility harness: the DAG. This file only composes; the rules live in workflow/rules/.
#   snakemake --cores all                        quick scale (offline digits)
#   snakemake --cores all --config scale=smoke   CI scale
#   snakemake --profile slurm                    paper scale on a Slurm cluster
#   snakemake -n                                 show the plan;  snakemake --report report.html
# The default target ends with results/{scale}/reproduction.md: this run beside reference/{scale}/ (or the paper).

configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    """Every target of the scale, then the reproduction report against the scale's reference."""
    input:
        all_targets(),
        layout.fill(layout.REPRODUCTION, scale=SCALE, ext="md"),
    default_target: True
    localrule: True


# A slurm run checks what a compute node would otherwise find after the queue wait -- account, partition and GPUs, the
# data, the Inception weights, the environment -- before anything is submitted (lsgm/preflight.py; docs/slurm.md).
onstart:
    preflight_or_stop(workflow)


# The run ends with one line: how many metrics reproduce the reference, printed when this run wrote the report (the
# Snakefile is evaluated again late in a run, so the run's start is read from the name of its log, not a variable).
onsuccess:
    from datetime import datetime

    report_md = Path(layout.fill(layout.REPRODUCTION, scale=SCALE, ext="md"))
    started = min(datetime.strptime(Path(p).name.split(".snakemake")[0], "%Y-%m-%dT%H%M%S.%f").timestamp() for p in log)
    if report_md.is_file() and report_md.stat().st_mtime >= started:
        print(f"reproduction ({report_md}): {report_md.read_text(encoding='utf-8').splitlines()[0]}")

# LSGM reproducibility harness: the DAG. This file only composes; the rules live in workflow/rules/.
#   snakemake --cores all                        quick scale (offline digits)
#   snakemake --cores all --config scale=smoke   CI scale
#   snakemake --profile slurm                    paper scale on a Slurm cluster
#   snakemake -n                                 show the plan;  snakemake --report report.html

configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
    localrule: True

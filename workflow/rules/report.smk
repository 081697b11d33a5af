# Compiled tables and Figure 4 (local: cheap, and they need every metrics file on the shared FS).
# Each table is its own job (so one table's target runs only its chain): `lsgm report tables --table`.


rule tables:
    """One paper table (ours beside the published rows): results/{scale}/tables/{table}.{md,csv,seeds.csv}."""
    input:
        metrics=lambda wc: PLANS[wc.scale].table_inputs(wc.table),
    output:
        md=report(
            "results/{scale}/tables/{table}.md",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "{table}", "format": "markdown"},
        ),
        csv=report(
            "results/{scale}/tables/{table}.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "{table}", "format": "csv"},
        ),
        seeds="results/{scale}/tables/{table}.seeds.csv",
    log:
        "logs/{scale}/tables/{table}.log",
    localrule: True
    shell:
        "lsgm report tables --table {wildcards.table} --metrics {input.metrics} --scale {wildcards.scale}"
        " --md {output.md} --csv {output.csv} --seeds-csv {output.seeds} > {log} 2>&1"


rule figure4:
    """Figure 4: FD/FID and NFE against the ODE tolerance; LSGM vs the pixel SGM (ODE and PC)."""
    input:
        metrics=lambda wc: PLANS[wc.scale].figure4_inputs(),
    output:
        png=report(
            "results/{scale}/figure4.png",
            caption="../report/figure4.rst",
            category="Figures",
            labels={"figure": "Figure 4"},
        ),
        csv="results/{scale}/figure4.csv",
    log:
        "logs/{scale}/figure4.log",
    localrule: True
    shell:
        "lsgm report figure4 --metrics {input.metrics} --scale {wildcards.scale}"
        " --out-dir results/{wildcards.scale} > {log} 2>&1"


rule variance:
    """The variance of each Table 6 cell's training estimators (score loss, encoder cross entropy), trained and in
    closed form (q = p = N(0, I)): results/{scale}/variance.{png,csv}, with a caption and provenance beside them."""
    input:
        models=lambda wc: PLANS[wc.scale].variance_inputs(),
    output:
        png=report(
            "results/{scale}/variance.png",
            caption="../report/variance.rst",
            category="Figures",
            labels={"figure": "Estimator variance"},
        ),
        csv=report(
            "results/{scale}/variance.csv",
            caption="../report/variance.rst",
            category="Tables",
            labels={"table": "variance", "format": "csv"},
        ),
    params:
        flags=lambda wc: eval_args(PLANS[wc.scale].variance_settings()),
    log:
        "logs/{scale}/variance.log",
    benchmark:
        "results/{scale}/benchmarks/variance.tsv"
    threads: eval_threads
    resources:
        **EVAL_RESOURCES,
    shell:
        "OMP_NUM_THREADS={threads} lsgm report variance --models {input.models} --scale {wildcards.scale} {params.flags}"
        " --out-dir results/{wildcards.scale} > {log} 2>&1"


rule reproduction:
    """This run beside its reference, metric by metric: results/{scale}/reproduction.{md,csv}, its first line the
    summary the run ends by printing (a committed reference run, reference/{scale}/; else the paper's numbers)."""
    input:
        unpack(reproduction_inputs),
    output:
        md="results/{scale}/reproduction.md",
        csv="results/{scale}/reproduction.csv",
    params:
        flags=reproduction_args,
    log:
        "logs/{scale}/reproduction.log",
    localrule: True
    shell:
        "lsgm report reproduction --scale {wildcards.scale} {params.flags} --md {output.md} --csv {output.csv}"
        " > {log} 2>&1"

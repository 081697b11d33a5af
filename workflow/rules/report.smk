# Compiled tables and Figure 4 (local: cheap, and they need every metrics file on the shared FS).
# Each table is its own job (so one table's target runs only its chain): `lsgm report tables --table`.


rule tables:
    """One paper table (ours beside the published rows): results/{scale}/tables/{table}.{md,csv,seeds.csv}."""
    input:
        metrics=lambda wc: PLANS[wc.scale].table_inputs(wc.table),
    output:
        md=report(
            layout.part(layout.TABLE, ext="md"),
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "{table}", "format": "markdown"},
        ),
        csv=report(
            layout.part(layout.TABLE, ext="csv"),
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "{table}", "format": "csv"},
        ),
        seeds=layout.part(layout.TABLE, ext="seeds.csv"),
    log:
        layout.log("tables", "{table}"),
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "lsgm report tables --table {wildcards.table} --metrics {input.metrics} --scale {wildcards.scale}"
        " --md {output.md} --csv {output.csv} --seeds-csv {output.seeds} > {log} 2>&1"


rule figure4:
    """Figure 4: FD/FID and NFE against the ODE tolerance; LSGM vs the pixel SGM (ODE and PC)."""
    input:
        metrics=lambda wc: PLANS[wc.scale].figure4_inputs(),
    output:
        png=report(
            layout.part(layout.FIGURE, figure="figure4", ext="png"),
            caption="../report/figure4.rst",
            category="Figures",
            labels={"figure": "Figure 4"},
        ),
        csv=layout.part(layout.FIGURE, figure="figure4", ext="csv"),
    params:
        out=subpath(output.csv, parent=True),
    log:
        layout.log("", "figure4"),
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "lsgm report figure4 --metrics {input.metrics} --scale {wildcards.scale}"
        " --out-dir {params.out} > {log} 2>&1"


rule variance:
    """The variance of each Table 6 cell's training estimators (score loss, encoder cross entropy), trained and in
    closed form (q = p = N(0, I)): results/{scale}/variance.{png,csv}, with a caption and provenance beside them."""
    input:
        models=lambda wc: PLANS[wc.scale].variance_inputs(),
    output:
        png=report(
            layout.part(layout.FIGURE, figure="variance", ext="png"),
            caption="../report/variance.rst",
            category="Figures",
            labels={"figure": "Estimator variance"},
        ),
        csv=report(
            layout.part(layout.FIGURE, figure="variance", ext="csv"),
            caption="../report/variance.rst",
            category="Tables",
            labels={"table": "variance", "format": "csv"},
        ),
    params:
        flags=lambda wc: eval_args(PLANS[wc.scale].variance_settings()),
        out=subpath(output.csv, parent=True),
    log:
        layout.log("", "variance"),
    benchmark:
        layout.benchmark("", "variance")
    threads: eval_threads
    resources:
        **EVAL_RESOURCES,
    conda:
        CONDA_ENV
    shell:
        "lsgm report variance --models {input.models} --scale {wildcards.scale} {params.flags}"
        " --out-dir {params.out} > {log} 2>&1"


rule reproduction:
    """This run beside its reference, metric by metric: results/{scale}/reproduction.{md,csv}, its first line the
    summary the run ends by printing (a committed reference run, reference/{scale}/; else the paper's numbers)."""
    input:
        unpack(reproduction_inputs),
    output:
        md=report(
            layout.part(layout.REPRODUCTION, ext="md"),
            caption="../report/reproduction.rst",
            category="Reproduction",
            labels={"report": "reproduction", "format": "markdown"},
        ),
        csv=report(
            layout.part(layout.REPRODUCTION, ext="csv"),
            caption="../report/reproduction.rst",
            category="Reproduction",
            labels={"report": "reproduction", "format": "csv"},
        ),
    params:
        flags=reproduction_args,
    log:
        layout.log("", "reproduction"),
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "lsgm report reproduction --scale {wildcards.scale} {params.flags} --md {output.md} --csv {output.csv}"
        " > {log} 2>&1"

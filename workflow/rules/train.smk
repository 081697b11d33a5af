# Run configs and training. Each training rule declares only the final model.pt (written last,
# atomically, by the CLI); resumable checkpoints live in checkpoints/ (a param, never an output), so a
# preempted or timed-out job that Snakemake retries (--retries) resumes where it stopped. The checkpoint
# folder name carries a hash of the resolved config: a changed config starts afresh.


rule run_config:
    """The RunConfig YAML of one run, resolved from config.yaml and validated by lsgm.config (written in the
    Snakemake process: no interpreter start per run)."""
    output:
        layout.CONFIG,
    params:
        config=lambda wc: the_run(wc).config,
    log:
        layout.log("run_config", layout.STEM),
    wildcard_constraints:
        kind="vae|lsgm|sgm|classifier",
    localrule: True
    run:
        write_run_config(params.config, output[0], log[0])


rule train:
    """A trained model of kind vae (stage 1: the NVAE backbone with a N(0, I) prior; or the control that continues a
    backbone), lsgm (stage 2: the latent score prior, end to end with its backbone: main configs and Table 6 cells)
    or sgm (the pixel-space SGM baseline). `lsgm train-<kind>` on the plan's processes; the plan gives the launcher
    and the resources. With scales.S.batch_seeds one job trains every seed of the run, one after the other."""
    input:
        config=per_seed(layout.CONFIG),
        vae=backbone_model,
        data=data_for,
    output:
        model=per_seed(layout.MODEL),
    params:
        out=lambda wc, output: [str(Path(p).parent) for p in output.model],
        vae=lambda wc, input: f" --vae {' '.join(input.vae)}" if input.vae else "",
        ckpt=lambda wc: [r.ckpt_dir for r in the_runs(wc)],
        lsgm=lambda wc: the_run(wc).launcher(),
    log:
        layout.log("train_{kind}", TRAIN_STEM),
    benchmark:
        layout.benchmark("train_{kind}", TRAIN_STEM)
    wildcard_constraints:
        kind="vae|lsgm|sgm",
    threads: train_threads
    # Long jobs first, short evaluations last: fewer idle cores at the end of a local run (train 2, FD/cost 1, rest 0).
    priority: 2
    resources:
        **TRAIN_RESOURCES,
    conda:
        CONDA_ENV
    shell:
        "{params.lsgm} train-{wildcards.kind} --config {input.config}{params.vae} --out {params.out}"
        " --ckpt-dir {params.ckpt} > {log} 2>&1"


rule train_classifier:
    """The small CNN whose features stand in for Inception-v3 offline (FD, never called FID)."""
    input:
        config=layout.part(layout.CONFIG, kind="classifier", run="fd", seed=0),
    output:
        model=layout.part(layout.MODEL, kind="classifier", run="fd", seed=0),
    params:
        out=subpath(output.model, parent=True),
    log:
        layout.log("train_classifier", "{dataset}"),
    benchmark:
        layout.benchmark("train_classifier", "{dataset}")
    threads: eval_threads
    resources:
        **EVAL_RESOURCES,
    conda:
        CONDA_ENV
    shell:
        "lsgm train-classifier --config {input.config} --out {params.out} > {log} 2>&1"

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
        scale=TRAINING_SCALES,
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
        scale=TRAINING_SCALES,
        run=BATCHED_RUN,
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


if ONE_SEED_RUN:

    use rule train as train_one_seed with:
        input:
            config=[layout.CONFIG],
            vae=backbone_model,
            data=data_for,
        output:
            model=[layout.MODEL],
        log:
            layout.log("train_{kind}", layout.seed_stem(False, with_kind=False)),
        benchmark:
            layout.benchmark("train_{kind}", layout.seed_stem(False, with_kind=False))
        wildcard_constraints:
            kind="vae|lsgm|sgm",
            scale=TRAINING_SCALES,
            run=ONE_SEED_RUN,


rule train_classifier:
    """The small CNN whose features stand in for Inception-v3 offline (FD, never called FID)."""
    input:
        config=layout.part(layout.CONFIG, kind="classifier", run="fd", seed=0),
    output:
        model=layout.part(layout.MODEL, kind="classifier", run="fd", seed=0),
    wildcard_constraints:
        scale=TRAINING_SCALES,
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


# The released scale: its models are the NVlabs/LSGM released checkpoints, imported instead of trained.


rule release_manifest:
    """Every file of the release: size, sha256 and its zip CRCs checked (a corrupted download fails here, one line,
    before any import or GPU job): results/released/release.json, the provenance of every released run."""
    output:
        layout.RELEASE_MANIFEST,
    log:
        layout.log("", "release_manifest"),
    wildcard_constraints:
        scale=RELEASED,
    localrule: True
    run:
        write_release_manifest(wildcards.scale, output[0], log[0])


rule import_official:
    """One released checkpoint -> model.pt (`lsgm import-official`: data only, the score's EMA as evaluate_vada.py
    takes it, cross-checked with its stage-1 NVAE, the source's sha256 in the model's meta); CPU only."""
    input:
        unpack(import_input),
    output:
        model=layout.MODEL,
    params:
        flags=import_flags,
    log:
        layout.log("import_{kind}", layout.STEM),
    wildcard_constraints:
        scale=RELEASED,
        kind="vae|lsgm",
    threads: lambda wc: PLANS[wc.scale].import_resources()["cpus_per_task"]
    resources:
        **per_key(lambda wc: PLANS[wc.scale].import_resources(), EVAL_RESOURCE_KEYS),
    conda:
        CONDA_ENV
    shell:
        "lsgm import-official {input.checkpoint} {params.flags} --out {output.model} > {log} 2>&1"

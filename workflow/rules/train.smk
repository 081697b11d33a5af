# Run configs and training. Each training rule declares only the final model.pt (written last,
# atomically, by the CLI); resumable checkpoints live in checkpoints/ (a param, never an output), so a
# preempted or timed-out job that Snakemake retries (--retries) resumes where it stopped. The checkpoint
# folder name carries a hash of the resolved config: a changed config starts afresh.


rule run_config:
    """The RunConfig YAML of one run, resolved from config.yaml and validated by lsgm.config."""
    output:
        "results/{scale}/configs/{dataset}/{kind}/{run}-s{seed}.yaml",
    params:
        config=lambda wc: the_run(wc).config,
    log:
        "logs/{scale}/run_config/{dataset}/{kind}/{run}-s{seed}.log",
    wildcard_constraints:
        kind="vae|lsgm|sgm|classifier",
    localrule: True
    script:
        "../scripts/write_run_config.py"


rule train_vae:
    """Stage 1: the NVAE backbone with a N(0, I) prior."""
    input:
        config="results/{scale}/configs/{dataset}/vae/{run}-s{seed}.yaml",
    output:
        model="results/{scale}/runs/{dataset}/vae/{run}-s{seed}/model.pt",
    params:
        out=subpath(output.model, parent=True),
        ckpt=lambda wc: the_run(wc, "vae").ckpt_dir,
        lsgm=lambda wc: the_run(wc, "vae").launcher(),
    log:
        "logs/{scale}/train_vae/{dataset}/{run}-s{seed}.log",
    benchmark:
        "results/{scale}/benchmarks/train_vae/{dataset}/{run}-s{seed}.tsv"
    threads: train_threads("vae")
    resources:
        **train_resources("vae"),
    shell:
        "{params.lsgm} train-vae --config {input.config} --out {params.out} --ckpt-dir {params.ckpt}"
        " > {log} 2>&1"


rule train_lsgm:
    """Stage 2: the latent score prior (end to end with its backbone): main configs and Table 6 cells."""
    input:
        config="results/{scale}/configs/{dataset}/lsgm/{run}-s{seed}.yaml",
        vae=lambda wc: the_run(wc, "lsgm").backbone.model_path,
    output:
        model="results/{scale}/runs/{dataset}/lsgm/{run}-s{seed}/model.pt",
    params:
        out=subpath(output.model, parent=True),
        ckpt=lambda wc: the_run(wc, "lsgm").ckpt_dir,
        lsgm=lambda wc: the_run(wc, "lsgm").launcher(),
    log:
        "logs/{scale}/train_lsgm/{dataset}/{run}-s{seed}.log",
    benchmark:
        "results/{scale}/benchmarks/train_lsgm/{dataset}/{run}-s{seed}.tsv"
    threads: train_threads("lsgm")
    resources:
        **train_resources("lsgm"),
    shell:
        "{params.lsgm} train-lsgm --config {input.config} --vae {input.vae} --out {params.out}"
        " --ckpt-dir {params.ckpt} > {log} 2>&1"


rule train_sgm:
    """The pixel-space SGM baseline (same SDE family, score network on x)."""
    input:
        config="results/{scale}/configs/{dataset}/sgm/{run}-s{seed}.yaml",
    output:
        model="results/{scale}/runs/{dataset}/sgm/{run}-s{seed}/model.pt",
    params:
        out=subpath(output.model, parent=True),
        ckpt=lambda wc: the_run(wc, "sgm").ckpt_dir,
        lsgm=lambda wc: the_run(wc, "sgm").launcher(),
    log:
        "logs/{scale}/train_sgm/{dataset}/{run}-s{seed}.log",
    benchmark:
        "results/{scale}/benchmarks/train_sgm/{dataset}/{run}-s{seed}.tsv"
    threads: train_threads("sgm")
    resources:
        **train_resources("sgm"),
    shell:
        "{params.lsgm} train-sgm --config {input.config} --out {params.out} --ckpt-dir {params.ckpt}"
        " > {log} 2>&1"


rule train_classifier:
    """The small CNN whose features stand in for Inception-v3 offline (FD, never called FID)."""
    input:
        config="results/{scale}/configs/{dataset}/classifier/fd-s0.yaml",
    output:
        model="results/{scale}/runs/{dataset}/classifier/fd-s0/model.pt",
    params:
        out=subpath(output.model, parent=True),
    log:
        "logs/{scale}/train_classifier/{dataset}.log",
    benchmark:
        "results/{scale}/benchmarks/train_classifier/{dataset}.tsv"
    threads: lambda wc: eval_threads(wc)
    resources:
        **EVAL_RESOURCES,
    shell:
        "lsgm train-classifier --config {input.config} --out {params.out} > {log} 2>&1"

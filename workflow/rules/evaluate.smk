# Reference statistics and evaluations. One metrics JSON per (run, evaluation), with its settings
# (docs/ARCHITECTURE.md "Metrics files"); a diverged run still gets its files (NaN metrics, exit 0).
# The evaluations are the registry's (lsgm/eval/registry.py); their flags come from config.yaml's eval settings as the
# plan resolves them (lsgm/plan/resolve.py, Resolution._eval_settings).
# `samples`: one PNG grid per trained model (its first seed; Plan.samples_targets), with a sidecar JSON.


rule make_data:
    """A miniature's dataset in its official file format (CIFAR-10 pickles, MNIST IDX, OMNIGLOT chardata.mat,
    CelebA-HQ-256 PNG folders), read by the paper loaders; the manifest (sizes, checksums, seed) is written last."""
    output:
        layout.DATA_MANIFEST,
    params:
        sizes=lambda wc: "--n-train {} --n-test {}".format(*DATA_PLANS[wc.root].sc["data_sizes"][wc.dataset]),
    log:
        layout.DATA_LOG,
    threads: 1
    resources:
        **per_key(lambda wc: DATA_PLANS[wc.root].eval_resources(), EVAL_RESOURCE_KEYS),
    conda:
        CONDA_ENV
    shell:
        "lsgm make-data --dataset {wildcards.dataset} --root {wildcards.root} {params.sizes} --seed 0 > {log} 2>&1"


rule inception_random:
    """Inception-v3 weights with torch-fidelity's keys and shapes, randomly initialised: the FID path runs end to end
    offline, and its numbers are meaningless (the sidecar JSON and every FID's settings say which weights)."""
    output:
        layout.INCEPTION_RANDOM,
    log:
        layout.part(layout.DATA_LOG, dataset="inception-random"),
    threads: 1
    resources:
        **per_key(lambda wc: DATA_PLANS[wc.root].eval_resources(), EVAL_RESOURCE_KEYS),
    conda:
        CONDA_ENV
    shell:
        "lsgm make-data --inception-weights {output} --seed 0 > {log} 2>&1"


rule fid_stats:
    """Reference feature statistics, cached under a versioned name (dataset-splits-bits-features-version.pt): the
    official specification of the dataset (lsgm.datasets_info.FID_REFERENCE; the plan asks for it)."""
    input:
        classifier=classifier_for_stats,
        data=data_for,
        inception=inception_for,
    output:
        layout.FID_STATS,
    params:
        classifier=lambda wc, input: f"--classifier {input.classifier}" if input.classifier else "",
        root=lambda wc: f"--root {r}" if (r := PLANS[wc.scale].sc.get("data_root")) else "",
        size=lambda wc: (f" --n-train {s[0]} --n-test {s[1]}"
                         if (s := PLANS[wc.scale].sc.get("data_sizes", {}).get(wc.dataset)) else ""),
        inception=inception_flag,
    log:
        layout.log("fid_stats", layout.FID_STATS_STEM),
    benchmark:
        layout.benchmark("fid_stats", layout.FID_STATS_STEM)
    threads: eval_threads
    resources:
        **EVAL_RESOURCES,
    conda:
        CONDA_ENV
    shell:
        "lsgm fid-stats --dataset {wildcards.dataset} --split {wildcards.splits}"
        " --bits {wildcards.bits} --features {wildcards.features} {params.classifier}"
        " {params.root}{params.size}{params.inception} --out {output} > {log} 2>&1"


rule evaluate:
    """An evaluation of the registry (lsgm/eval/registry.py) that runs on every seed -- nll (NELBO and NLL), fid (FID
    or FD in offline classifier features), fid_normal (an LSGM's sample-quality control: its decoder with its score
    prior replaced by the Normal its mixed score is at initialisation) -- with the settings config.yaml resolves."""
    input:
        model=per_seed(layout.MODEL),
        stats=stats_if_read,
        inception=inception_if_read,
    output:
        per_seed(layout.METRICS),
    params:
        command=lambda wc: EVALUATIONS[wc.metric].command,
        flags=lambda wc: eval_args(the_run(wc).eval_settings[wc.metric]),
        stats=lambda wc, input: f" --stats {input.stats}" if input.stats else "",
        inception=inception_flag,
    log:
        layout.log("eval_{metric}", SEED_STEM),
    benchmark:
        layout.benchmark("eval_{metric}", SEED_STEM)
    wildcard_constraints:
        metric=PER_SEED_EVALS,
        run=BATCHED_RUN,
    threads: eval_threads
    priority: 1  # see rule train
    resources:
        **EVAL_RESOURCES,
    conda:
        CONDA_ENV
    shell:
        "lsgm evaluate {params.command} --model {input.model} --out {output}{params.stats} {params.flags}"
        "{params.inception} > {log} 2>&1"


if ONE_SEED_RUN:

    use rule evaluate as evaluate_one_seed with:
        input:
            model=[layout.MODEL],
            stats=stats_if_read,
            inception=inception_if_read,
        output:
            [layout.METRICS],
        log:
            layout.log("eval_{metric}", layout.STEM),
        benchmark:
            layout.benchmark("eval_{metric}", layout.STEM)
        wildcard_constraints:
            metric=PER_SEED_EVALS,
            run=ONE_SEED_RUN,


rule evaluate_first_seed:
    """An evaluation that runs on a scale's first seed only: cost (NFE, seconds per batch and FD/FID per ODE tolerance,
    and PC steps for the pixel SGM: Figure 4)."""
    input:
        model=layout.MODEL,
        stats=stats_if_read,
        inception=inception_if_read,
    output:
        layout.METRICS,
    params:
        command=lambda wc: EVALUATIONS[wc.metric].command,
        flags=lambda wc: eval_args(the_run(wc).eval_settings[wc.metric]),
        stats=lambda wc, input: f" --stats {input.stats}" if input.stats else "",
        inception=inception_flag,
    log:
        layout.log("eval_{metric}", layout.STEM),
    benchmark:
        layout.benchmark("eval_{metric}", layout.STEM)
    wildcard_constraints:
        metric=FIRST_SEED_EVALS,
        kind="lsgm|sgm",
    threads: eval_threads
    priority: 1  # see rule train
    resources:
        **EVAL_RESOURCES,
    conda:
        CONDA_ENV
    shell:
        "lsgm evaluate {params.command} --model {input.model} --out {output}{params.stats} {params.flags}"
        "{params.inception} > {log} 2>&1"


rule samples:
    """Figure 5: a grid of samples of one trained model (decoder means), drawn as the FID draws them; a diverged
    run gives a placeholder saying so. The sidecar JSON records the settings, checkpoint and provenance."""
    input:
        model=layout.MODEL,
    output:
        png=report(
            layout.SAMPLES,
            caption="../report/samples.rst",
            category="Samples",
            subcategory="{kind} ({dataset})",
            labels={"run": "{run}", "seed": "{seed}"},
        ),
        json=layout.SAMPLES_JSON,
    params:
        flags=eval_flags("samples"),
    log:
        layout.log("samples", layout.STEM),
    benchmark:
        layout.benchmark("samples", layout.STEM)
    threads: eval_threads
    resources:
        **EVAL_RESOURCES,
    conda:
        CONDA_ENV
    shell:
        "lsgm evaluate samples --model {input.model} --out {output.png} {params.flags} > {log} 2>&1"

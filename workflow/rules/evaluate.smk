# Reference statistics and evaluations. One metrics JSON per (run, evaluation), with its settings
# (docs/ARCHITECTURE.md "Metrics files"); a diverged run still gets its files (NaN metrics, exit 0).
# Evaluation flags come from config.yaml (scales.S.eval < defaults.KIND.eval < runs.KIND.NAME.eval).
# `samples`: one PNG grid per trained model (its first seed; Plan.samples_targets), with a sidecar JSON.


rule fid_stats:
    """Reference feature statistics, cached under a versioned name (dataset-features-version.pt)."""
    input:
        classifier=classifier_for_stats,
    output:
        "results/{scale}/fid_stats/{dataset}-{features}-{version}.pt",
    params:
        classifier=lambda wc, input: f"--classifier {input.classifier}" if input.classifier else "",
        root=lambda wc: f"--root {r}" if (r := PLANS[wc.scale].sc.get("data_root")) else "",
    log:
        "logs/{scale}/fid_stats/{dataset}-{features}-{version}.log",
    benchmark:
        "results/{scale}/benchmarks/fid_stats/{dataset}-{features}-{version}.tsv"
    threads: eval_threads
    resources:
        **EVAL_RESOURCES,
    shell:
        "OMP_NUM_THREADS={threads} lsgm fid-stats --dataset {wildcards.dataset} --features {wildcards.features} {params.classifier}"
        " {params.root} --out {output} > {log} 2>&1"


rule eval_nll:
    """NELBO and NLL (ODE prior likelihood with IW samples K and inner repeats M; VAE: IW bound)."""
    input:
        model=per_seed("results/{scale}/runs/{dataset}/{kind}/{run}-s{seed}/model.pt"),
    output:
        per_seed("results/{scale}/metrics/{dataset}/{kind}/{run}-s{seed}/nll.json"),
    params:
        flags=eval_flags("nll"),
    log:
        f"logs/{{scale}}/eval_nll/{{dataset}}/{{kind}}/{{run}}-{SEED_TAG}.log",
    benchmark:
        f"results/{{scale}}/benchmarks/eval_nll/{{dataset}}/{{kind}}/{{run}}-{SEED_TAG}.tsv"
    threads: eval_threads
    resources:
        **EVAL_RESOURCES,
    shell:
        "OMP_NUM_THREADS={threads} lsgm evaluate nll --model {input.model} --out {output} {params.flags} > {log} 2>&1"


rule eval_fid:
    """FID (Inception) or FD (offline classifier features) from ODE samples."""
    input:
        model=per_seed("results/{scale}/runs/{dataset}/{kind}/{run}-s{seed}/model.pt"),
        stats=fid_stats_for,
    output:
        per_seed("results/{scale}/metrics/{dataset}/{kind}/{run}-s{seed}/fid.json"),
    params:
        flags=eval_flags("fid"),
    log:
        f"logs/{{scale}}/eval_fid/{{dataset}}/{{kind}}/{{run}}-{SEED_TAG}.log",
    benchmark:
        f"results/{{scale}}/benchmarks/eval_fid/{{dataset}}/{{kind}}/{{run}}-{SEED_TAG}.tsv"
    threads: eval_threads
    priority: 1  # see rule train
    resources:
        **EVAL_RESOURCES,
    shell:
        "OMP_NUM_THREADS={threads} lsgm evaluate fid --model {input.model} --stats {input.stats} --out {output} {params.flags}"
        " > {log} 2>&1"


rule eval_cost:
    """Sampling cost: NFE, seconds per batch and FD/FID per ODE tolerance (and PC steps for the pixel SGM)."""
    input:
        model="results/{scale}/runs/{dataset}/{kind}/{run}-s{seed}/model.pt",
        stats=fid_stats_for,
    output:
        "results/{scale}/metrics/{dataset}/{kind}/{run}-s{seed}/cost.json",
    params:
        flags=eval_flags("cost"),
    log:
        "logs/{scale}/eval_cost/{dataset}/{kind}/{run}-s{seed}.log",
    benchmark:
        "results/{scale}/benchmarks/eval_cost/{dataset}/{kind}/{run}-s{seed}.tsv"
    wildcard_constraints:
        kind="lsgm|sgm",
    threads: eval_threads
    priority: 1  # see rule train
    resources:
        **EVAL_RESOURCES,
    shell:
        "OMP_NUM_THREADS={threads} lsgm evaluate cost --model {input.model} --stats {input.stats} --out {output} {params.flags}"
        " > {log} 2>&1"


rule samples:
    """Figure 5: a grid of samples of one trained model (decoder means), drawn as the FID draws them; a diverged
    run gives a placeholder saying so. The sidecar JSON records the settings, checkpoint and provenance."""
    input:
        model="results/{scale}/runs/{dataset}/{kind}/{run}-s{seed}/model.pt",
    output:
        png=report(
            "results/{scale}/samples/{dataset}/{kind}/{run}-s{seed}.png",
            caption="../report/samples.rst",
            category="Samples",
            subcategory="{kind} ({dataset})",
            labels={"run": "{run}", "seed": "{seed}"},
        ),
        json="results/{scale}/samples/{dataset}/{kind}/{run}-s{seed}.json",
    params:
        flags=eval_flags("samples"),
    log:
        "logs/{scale}/samples/{dataset}/{kind}/{run}-s{seed}.log",
    benchmark:
        "results/{scale}/benchmarks/samples/{dataset}/{kind}/{run}-s{seed}.tsv"
    threads: eval_threads
    resources:
        **EVAL_RESOURCES,
    shell:
        "OMP_NUM_THREADS={threads} lsgm evaluate samples --model {input.model} --out {output.png} {params.flags} > {log} 2>&1"

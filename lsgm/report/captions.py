"""The captions: what every column of a table is, how it was measured (settings read from the metrics files),
and how our rows compare with the paper's.
"""

from __future__ import annotations

from lsgm.report.comparison import NOT_COMPARABLE_DATA, PAPER_FID_SAMPLES, not_comparable, reduced_protocol
from lsgm.controls import init_of
from lsgm.report.render import MARK, SIGNIFICANT, fmt_setting
from lsgm.report.runs import (
    BACKBONE_DIVERGED,
    OURS_SECTION,
    PAPER_SECTIONS,
    STAGE2_SUFFIX,
    TABLE6_BACKBONE,
    backbone_diverged,
    fd_names,
    group_runs,
    nelbo_key,
    recipe_of,
    scale_of,
)
from lsgm.report.table6 import BACKBONE_COLUMN, CHANCE_BEYOND_2SE, INIT_COLUMN, chance_of_at_least, learned_cells


UNITS = {"bpd": "bits/dim", "nats": "nats"}
CONTROLS = ("Controls: LSGM at initialisation = the same run config and seed with 0 stage-2 steps (its backbone as stage "
            "2 receives it, the mixing logit at its initial value, eps' ~ 0: the mixed score is then a Normal prior "
            "at another scale), evaluated exactly like the LSGM. learned = LSGM − at initialisation: each seed's "
            "difference (NELBO, NLL: paired over the same test examples, se from the per-example differences), then "
            f"mean ± se over seeds as above; {SIGNIFICANT} = more than 2 se from 0. Only a difference with "
            f"{SIGNIFICANT} is learned by stage 2; one without could be the initialisation or the evaluations' noise.")
SAMPLE_CONTROL = ("Sample-quality control: the LSGM's own decoder with its score prior replaced by N(0, τ² I), τ = "
                  "(m(t_eps)/m(1))^α₀ per latent channel (α₀ = sigmoid of the initial mixing logit): at "
                  "initialisation eps' ~ 0 and the probability-flow ODE is linear, dz/dt = -α₀ g²(t) z / 2, so the "
                  "initial prior is exactly this rescaled Normal (the VPSDE at logit -3: τ = 1.27). It separates a "
                  "learned prior from a rescaled one, with the decoder fixed: learned prior = LSGM − control (FD; se "
                  "from the two FDs' bootstrap errors, combined over seeds).")


def unique_settings(docs: list[dict], keys: tuple[str, ...], section: str = "settings") -> str:
    """``key=value`` for each key found in the documents' settings (``{a, b}`` when they differ)."""
    parts = []
    for key in keys:
        values = sorted({fmt_setting(d[section][key]) for d in docs if d.get(section, {}).get(key) is not None})
        if values:
            parts.append(f"{key}={values[0] if len(values) == 1 else '{' + ', '.join(values) + '}'}")
    return ", ".join(parts) if parts else "—"


def describe_fd(name: str) -> str:
    """What a sample-quality metric name means."""
    if name == "fid":
        return "fid = FID, Fréchet Inception Distance (Inception-v3 features)"
    return (f"{name} = Fréchet distance in the features of the offline `{name[3:]}` classifier "
            f"(an in-domain FD, NOT FID; not comparable in value with the paper's FID)")


def seeds_line(entries: list[dict]) -> str:
    """How many seeds each row of ours aggregates, and how."""
    groups = group_runs(entries)
    if not groups:
        return "Rows of ours: none."
    ns = sorted({len(g.entries) for g in groups})
    seeds = sorted({s for g in groups for s in g.seeds if s is not None})
    n = f"n = {ns[0]} seed{'s' * (ns[0] > 1)} per row of ours" if len(ns) == 1 else \
        f"n = {ns[0]}–{ns[-1]} seeds per row of ours"
    single = (" With n = 1 the ± is that evaluation's own standard error: no spread over seeds is known."
              if ns[0] == 1 else "")
    return (f"Rows of ours (section \"{OURS_SECTION}\"): one per recipe, mean ± se over its seeds; {n} (column n; "
            f"seeds {', '.join(map(str, seeds)) or '?'}); (n=k) on a cell with fewer seeds than its row. se is the "
            "standard error of the mean with the evaluations' Monte Carlo error in it: se² = std²/n + eval_se² (std: "
            "sample std over seeds; eval_se: the root mean square of the seeds' evaluation standard errors, over the "
            "test examples or the bootstrap of the samples; every seed's evaluation draws its own noise, and all "
            "share the test split, whose error the spread over seeds misses); tableN.csv has std, se and eval_se."
            f"{single} NaN (k of n seeds diverged): a seed diverged, so the mean is NaN (every seed's value is in "
            "tableN.seeds.csv).")


def _estimator_clause(docs: list[dict]) -> str:
    """How the rows' DSM term was estimated (``settings.dsm_estimator``): the control variate, or not recorded (the
    plain average of older files), or mixed."""
    kinds = {"control variate" if str(d["settings"].get("dsm_estimator") or "").startswith("control variate")
             else "plain" for d in docs}
    if kinds == {"control variate"}:
        return ("; the mixed score's Normal part a control variate, its share of the integral computed exactly, the "
                "draws estimating the rest")
    if kinds == {"control variate", "plain"}:
        return "; rows differ in the estimator (control variate or plain average: settings.dsm_estimator)"
    return ""


def nelbo_line(unit: str, nll_docs: list[dict]) -> str:
    """What the NELBO column is, and which LSGM rows fall back to ``nelbo`` (no ``nelbo_bound`` in their files)."""
    lsgm = [d for d in nll_docs if d["run"]["model"] != "vae" and d.get("status") != "diverged"]
    bound = [d for d in lsgm if nelbo_key(d) == "nelbo_bound"]
    fallback = sorted({recipe_of(d["run"]) for d in lsgm if nelbo_key(d) == "nelbo"})
    parts = []
    if bound:
        parts.append("LSGM rows: the prior cross entropy is the denoising score matching bound of Theorem 1 "
                     "(likelihood weighting, importance-sampled t in [t_eps, 1], "
                     f"{unique_settings(bound, ('t_draws',)).replace('—', 't_draws not recorded')}"
                     f"{_estimator_clause(bound)}) plus the "
                     "truncation term -D log m(t_eps) that makes it a bound on -log p(z0) for every SDE and t_eps "
                     "(column t_eps (NELBO))")
    if any(d["run"]["model"] == "vae" for d in nll_docs):
        parts.append("VAE rows: the exact N(0, I) prior")
    if fallback:
        which = "every LSGM row" if not bound else f"LSGM recipes {', '.join(fallback)}"
        parts.append(f"fallback for {which} (no `nelbo_bound` in their metrics files): `nelbo`, whose prior cross "
                     "entropy is the probability-flow ODE's -log p(z0), a Hutchinson estimate -- a bound only up to "
                     "the ODE solver's error, not the Theorem 1 bound")
    return (f"NELBO ({unit}, ours): negative ELBO, an upper bound on -log p(x) in expectation (over the encoder "
            f"sample and, for an LSGM, the diffusion time); {'; '.join(parts)}.")


def nll_line(unit: str, nll_docs: list[dict]) -> str:
    """What the NLL column is, with the estimator's settings."""
    lsgm = [d for d in nll_docs if d["run"]["model"] == "lsgm"]
    vae = [d for d in nll_docs if d["run"]["model"] == "vae"]
    k = unique_settings(nll_docs, ("iw_samples",)).replace("iw_samples", "K")
    line = f"NLL ({unit}, ours): importance-weighted -log (1/K sum_k exp(-NELBO_k)) with {k}"
    if lsgm:
        settings = unique_settings(lsgm, ("inner", "tolerance", "solver", "t_eps")).replace("inner", "M")
        line += (f"; LSGM rows: the prior's log p from the probability-flow ODE ({settings}, Hutchinson trace "
                 "estimator) -- an estimate, not a bound, for the LSGM rows (ODE error, Hutchinson noise, "
                 "logsumexp bias for K > 1)")
    if vae:
        line += "; VAE rows: the importance-weighted bound with the exact N(0, I) prior (an upper bound)"
    return line + (". Columns K, M, prior term, ODE tol., t_eps (NLL): the NLL estimator of each row (its nll files' "
                   "settings); t_eps (NELBO): the lower time of the NELBO's Theorem 1 integral.")


def compare_lines(table: str, meta: dict, published: dict, why_not: str | None) -> list[str]:
    """What ``Δ vs paper`` and ``reproduced`` mean, with the tolerance."""
    rule = published["reproduction"]
    nll_tol = f"|Δ NLL| <= {rule['nll'][meta['unit']]} {UNITS[meta['unit']]}"
    fid_tol = f"|Δ FID| <= {rule['fid']['relative']:.0%} of the paper's FID"
    tols = " and ".join(t for k, t in (("nll", nll_tol), ("fid", fid_tol)) if k in meta["metrics"])
    lines = [(f"Δ vs paper: our seed mean minus the paper's value for the paper's row measured the same way "
             f"(published.yaml `ours:`; — = no counterpart). reproduced: yes when {tols} for every compared metric "
             "(the ± std beside shows the seed spread; it is not part of the rule). NELBO is not compared: the "
             "paper prints no NELBO of the same estimator. An FD in classifier features is never compared with "
             "FID.")]
    if why_not == NOT_COMPARABLE_DATA:
        lines.append(f"At this scale our data is an offline stand-in: every comparison reads {NOT_COMPARABLE_DATA!r}.")
    elif why_not:
        lines.append(f"At this scale the models are the paper's recipes at toy sizes on toy data in the paper's formats "
                     f"(and FIDs use random Inception weights): every comparison reads {why_not!r}.")
    return lines


def metric_lines(table: str, meta: dict, entries: list[dict], published: dict) -> list[str]:
    """Caption lines defining the metrics of our rows and the settings they were measured with."""
    nll_docs = [e["nll"] for e in entries if e["nll"] is not None]
    fid_docs = [e["fid"] for e in entries if e["fid"] is not None]
    unit = UNITS[meta["unit"]]
    lines = [seeds_line(entries), nelbo_line(unit, nll_docs) if nll_docs else "NELBO (ours): none measured."]
    if table != "table6":
        lines.append(nll_line(unit, nll_docs) if nll_docs else "NLL (ours): none measured.")
        lines.append("≤ is the paper's notation: the paper prints it before its own LSGM NLLs (kept on those "
                     "paper rows); no row of ours carries it.")
    if "fid" in meta["metrics"]:
        names = sorted({n for e in entries for n in fd_names(e["fid"])})
        described = "; ".join(describe_fd(n) for n in names) or "none measured"
        lines.append(f"Sample quality (ours): {described}. n samples and sampler: "
                     f"{unique_settings(fid_docs, ('n_samples', 'sampler', 'tolerance', 'solver', 'temperature'))}.")
        lines.append("Paper rows: FID on 50k samples, Inception-v3 features.")
    if any(init_of(recipe_of(e["run"]), e["run"].get("sde")) for e in entries):
        lines.append(CONTROLS)
    if any(e["fid_normal"] is not None for e in entries):
        lines.append(SAMPLE_CONTROL)
    if any(e["run"]["model"] == "vae" and recipe_of(e["run"]).endswith(STAGE2_SUFFIX) for e in entries):
        lines.append("VAE backbone + stage-2 steps (Normal prior): the backbone trained on for the LSGM's stage-2 "
                     "steps with its Normal prior and the stage-2 optimizer -- it separates \"a better prior\" "
                     "from \"more training\"; 'score prior vs more training' = LSGM − that control, paired per seed "
                     "and test example as 'learned' (a stage-2 control continues the backbone of the LSGM whose recipe "
                     "its name carries).")
    if table != "table6":
        lines += compare_lines(table, meta, published, not_comparable(entries, meta))
    return lines


def commit_line(commit: str, entries: list[dict]) -> str:
    """The report's commit, plus the commits the metrics were computed at when they differ."""
    docs = [e[k] for e in entries for k in ("nll", "fid") if e[k] is not None]
    seen = sorted({d.get("provenance", {}).get("commit", "unknown") for d in docs} - {commit})
    extra = f" (metrics computed at: {', '.join(seen)})" if seen else ""
    return f"Commit: {commit}{extra}."


def dataset_line(meta: dict, entries: list[dict], scale: str) -> str:
    """Which data our rows were measured on, and what it stands in for."""
    used = sorted({e["run"]["dataset"] for e in entries})
    if not used:
        return f"Our rows: none measured at {scale} scale. Paper rows: {meta['dataset']}."
    standin = "" if used == [meta["dataset"]] else f" (offline stand-in for {meta['dataset']})"
    return f"Our rows: measured on `{', '.join(used)}`{standin}. Paper rows: {meta['dataset']}."


def table6_lines(entries: list[dict], meta: dict, relative: float) -> list[str]:
    """Table 6's own caption lines: columns, marks, the backbone reference, the comparison with the paper."""
    ns = sorted({len(g.entries) for g in group_runs([e for e in entries if e["run"]["model"] == "lsgm"])})
    marks = (f"{MARK} marks, per SDE and metric, the cell with the lowest mean and every cell not distinguishable "
             "from it: |mean - best mean| <= 2 sqrt(se² + se_best²), se as for every ± "
             f"(n = {', '.join(map(str, ns)) or '—'} per cell); cells with n < 2 are never marked")
    marks += "; with n = 1 no marks are drawn." if ns and ns[-1] < 2 else "."
    why_not = not_comparable(entries, meta)
    vs = (f"vs paper: {NOT_COMPARABLE_DATA} (our data is an offline stand-in)." if why_not == NOT_COMPARABLE_DATA else
          f"vs paper: {why_not} (the paper's recipes at toy sizes)." if why_not else
          f"vs paper: Δ FID vs paper = our mean - the paper's FID per cell; FID reproduced: |Δ| <= {relative:.0%} "
          "of the paper's FID (a cell diverged in both counts as reproduced); NELBO is not compared (the paper "
          "does not state its estimator).")
    columns = ("Columns: w_x = SGM weighting (ll, un, re); U = t ~ U[t_eps, 1], r_x = importance-sampled t; last "
               "part = encoder objective (rew. = reweighted, r_ll = likelihood weighting with r_ll(t) sampling). "
               "n/a: r_un(t) does not exist for the geometric VPSDE, and r_ll(t) is U[0, 1] for it.")
    has_backbone = any(e["run"]["model"] == "vae" for e in entries)
    reference = (f"Reference row: the Table 6 backbone, a VAE without a score prior (column '{BACKBONE_COLUMN}'): "
                 "its NELBO and FD." if has_backbone else
                 f"Reference row: none -- no metrics of the Table 6 backbone (vae recipe `{TABLE6_BACKBONE}`) among "
                 "the inputs.")
    init = (f"Column '{INIT_COLUMN}': the SDE's cells before stage 2 (they share one initial model: the first cell's "
            "run config with 0 stage-2 steps); rows 'learned …: cell − at initialisation' under each metric.")
    learned = learned_cells(entries)
    if learned:
        counts = "; ".join(f"{metric}: {k} of {n} cells" for metric, (k, n) in learned.items())
        init += (f" Cells whose learned difference exceeds 2 se ({SIGNIFICANT}): {counts}.")
        chance = {metric: chance_of_at_least(k, n) for metric, (k, n) in learned.items()}
        init += (f" A cell that learned nothing exceeds 2 se with probability {CHANCE_BEYOND_2SE:.1%}, so with many "
                 "cells a few * are expected from the evaluations' noise alone; the chance of at least as many * as "
                 "here if no cell had learned (binomial; the cells of an SDE share its at-initialisation value, so "
                 "their * are not independent and this is a guide): "
                 + "; ".join(f"{metric}: {p:.2f}" for metric, p in chance.items()) + ".")
        if all(p > 0.05 for p in chance.values()):
            init += (" No metric has more * than that noise gives (every chance above 0.05): at this budget the cells "
                     "measure the pipeline, not the ablation, and their differences are the initialisation's and the "
                     "evaluations' noise; a * here is not a learned difference.")
    return [columns, marks, reference, init, vs]


RELEASED = ("Rows of ours are the NVlabs/LSGM released checkpoints (scale released): each imported by lsgm "
            "import-official (weights only; the score's EMA as evaluate_vada.py takes it: from the optimizer for "
            "checkpoint.pt, as stored for checkpoint_fid.pt; every metrics file records the source file and its "
            "sha256, results/released/release.json all of them) and evaluated with its recipe's official evaluation "
            "settings. Nothing is trained at this scale, so there is no 'LSGM at initialisation' control (NVlabs "
            "released no initial weights) and no 'VAE backbone + stage-2 steps' control. The sample-quality control "
            "(N(0, τ² I) instead of the score prior) does run: it needs only the released decoder and the recipe's "
            "initial mixing logit, and costs one FID's decoding without any ODE solve; it tells what the trained "
            "prior adds over a rescaled Normal.")
RELEASED_OMITTED = ("Omitted: OMNIGLOT (Table 4) and the Table 6 ablation cells, for which NVlabs released no "
                    "checkpoints.")
OFFICIAL_SEMANTICS = ("Our evaluation vs evaluate_vada.py, side by side where cheap: FID here is on uint8-quantised "
                      "samples (round(255 x)) with the covariance pooled over all samples; column 'FID (official "
                      "cov.)' is the same samples' FID with the official convention, the mean of the per-process "
                      "means and covariances of its {processes} processes, so FID − FID (official cov.) is that "
                      "convention's share of a gap to the paper (± is the pooled FID's bootstrap se). Not measured "
                      "side by side: FID on float samples (the official input; torch-fidelity's Inception-v3 takes "
                      "uint8 only), the official decoder's density approximation for bins below 1e-5 mass (ours: "
                      "exact bin probabilities), the official NELBO (the ODE's; ours: Theorem 1's DSM bound). "
                      "docs/official_checkpoints.md.")


def released_lines(table: str, entries: list[dict]) -> list[str]:
    """What a table built from the released checkpoints says about them (scale released)."""
    if not any(scale_of(e["run"]) == "released" for e in entries):
        return []
    lines = [RELEASED, RELEASED_OMITTED]
    processes = sorted({e["fid"]["settings"]["official_processes"] for e in entries
                        if e["fid"] is not None and "official_processes" in e["fid"].get("settings", {})})
    if processes:
        lines.append(OFFICIAL_SEMANTICS.format(processes=", ".join(map(str, processes))))
    reduced = reduced_protocol(entries)
    if reduced:
        lines.append(f"Reduced protocol ({reduced}; the paper: FID on {PAPER_FID_SAMPLES:,} samples, the whole test "
                     "split): Δ vs paper is what this run gives, and no verdict is drawn.")
    return lines


def caption(table: str, published: dict, entries: list[dict], scale: str, commit: str) -> str:
    """The caption of one table: title, scale, dataset, metric definitions, settings, cell legend, commit."""
    meta = published["tables"][table]
    number = table.removeprefix("table")
    lines = [f"Table {number}: {meta['title']}. Scale: {scale}.",
             dataset_line(meta, entries, scale),
             *metric_lines(table, meta, entries, published),
             ("Cells: NaN = diverged; n/a = skipped or undefined combination; — = not measured / not "
             "reported. Lower is better for every metric."),
             *([f"{BACKBONE_DIVERGED}: the stage-1 backbone of the run diverged, so the run built on it was not "
                "trained (each seed's reason: column reason of tableN.seeds.csv)."]
               if any(backbone_diverged(e[k]) for e in entries for k in ("nll", "fid")) else []),
             (f"Sections: \"{OURS_SECTION}\" = measured here; \"{PAPER_SECTIONS['Ours']}\" = the paper's own rows; "
             "baselines keep the paper's family. Published numbers: "
             f"{meta['source']['seed']} ({meta['source']['table']}); source column: ours = measured here, "
             "paper [n] = the paper's citation n. Per-seed values and settings: tableN.seeds.csv."),
             commit_line(commit, entries)]
    if table == "table6":
        lines[-2:-2] = table6_lines(entries, meta, published["reproduction"]["fid"]["relative"])
    lines[2:2] = released_lines(table, entries)
    return "\n".join(lines)

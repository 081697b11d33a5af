"""What a job will cost before it is submitted (pure Python, no torch): GPU-hours and peak GPU memory per job.

* Measured: a GPU step time of ``benchmarks/paper_step.py`` (``benchmarks/results/paper_step_<gpu>.json``) gives a
  training job's GPU-hours (:func:`measured_hours`); where it exists it replaces the estimate.
* Estimated: the FLOPs ``benchmarks/paper_flops.py`` counted (``benchmarks/results/paper_flops.json``: matrix FLOPs of
  one step and of one network evaluation per image, on meta tensors) over a DECLARED GPU peak times a DECLARED
  utilisation range (:data:`UTILISATION`), printed as "estimate (FLOPs x assumed utilisation)" with the GPU named.
  Perfect scaling over the job's GPUs is assumed. Evaluations multiply by the ODE's number of function evaluations,
  which only a trained model has: the paper's published NFEs where there are some (:data:`NFE`), else an assumed one.
* Memory: parameters + gradients + optimizer states + EMA + the activations the counting pass saw at the job's
  per-process batch (:func:`memory_gib`), an estimate, checked against the declared GPU's memory.
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass
from pathlib import Path

from lsgm.plan.cluster import GPU, GPUS
from lsgm.plan.common import STAGES, short_hash
from lsgm.plan.run import Run

FLOPS_FILE = "benchmarks/results/paper_flops.json"
STEP_FILES = "benchmarks/results/paper_step_*.json"
# The declared utilisation of the GPU's dense peak (bf16) that the FLOP count is divided by: low and high end. Only
# matrix FLOPs are counted, and these networks (BatchNorm, Swish, squeeze-excitation, depthwise convolutions) spend
# part of every step in element-wise, memory-bound work. The published check (benchmarks/results/paper_flops.json
# "published_check": the NVAE README's CIFAR-10 model, 8 V100 x 55 h, fp16) implies about 21% of a V100's fp16 peak;
# newer GPUs' peaks grew faster than their memory bandwidth, so the range reaches below that.
UTILISATION = (0.10, 0.30)
# ODE function evaluations per sample (an adaptive solver's count depends on the trained model): the paper's where
# published, by (dataset, ODE tolerance) (NVlabs/LSGM project page: "23 and 138 NFE on CelebA-HQ-256 and CIFAR-10",
# the FID settings: tolerance 1e-2 and 1e-5), else ASSUMED_NFE (CIFAR-10's).
NFE = {("cifar10", 1e-5): 138, ("celeba256", 1e-2): 23}
ASSUMED_NFE = 138
BYTES_FP32 = 4
ADAM_STATES = 2  # Adam/AdamW/Adamax: two fp32 states per trainable parameter


def flop_fingerprint(config: dict) -> str:
    """What a run's FLOPs and activations depend on: its networks, data, objective and regularisation (a Table 6
    cell and its siblings share one count); a changed network makes ``lsgm plan`` call the count stale."""
    train = config.get("train", {})
    return short_hash({"kind": config.get("kind"), "data": config.get("data", {}).get("name"),
                       "vae": config.get("vae"), "score": config.get("score"), "objective": config.get("objective"),
                       "sr": [train.get(k) for k in ("sr_lambda_vae", "sr_lambda_score", "sr_score_conv")]})


REPO = Path(__file__).resolve().parents[2]  # the checkout lsgm is installed from (editable install)


def _located(name: str) -> Path:
    """A results file in the working directory (the workflow's root), else in the checkout lsgm comes from."""
    return Path(name) if Path(name).exists() or Path(name).is_absolute() else REPO / name


def load_flops(path: str = FLOPS_FILE) -> dict | None:
    try:
        return json.loads(_located(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_measured(pattern: str = STEP_FILES) -> tuple[dict | None, str | None]:
    """The first GPU result of benchmarks/paper_step.py, if any (content, path)."""
    found = glob.glob(pattern) or glob.glob(str(REPO / pattern))
    for path in sorted(found):
        if "cpu" in Path(path).name:
            continue
        with open(path, encoding="utf-8") as fh:
            return json.load(fh), path
    return None, None


def measured_hours(run: Run, measured: dict | None) -> float | None:
    """GPU-hours of a paper run from a measured step time (``{"steps": {"<recipe>/<stage>": {"seconds_per_step": s,
    "per_gpu_batch": b}}}``), scaled to this run's per-GPU batch and accumulation; None where nothing was measured."""
    if not measured or run.official is None or run.kind not in STAGES:
        return None
    entry = measured.get("steps", {}).get(f"{run.official}/{STAGES[run.kind]}")
    if not entry:
        return None
    per_gpu, accum = run.batch_split
    seconds = entry["seconds_per_step"] * accum * per_gpu / entry["per_gpu_batch"]
    return seconds * run.config["train"]["steps"] * max(1, run.gpus) / 3600.0


@dataclass(frozen=True)
class Estimate:
    """FLOPs -> GPU-hours on ``gpu`` at the utilisation range ``utilisation`` (low, high)."""

    gpu: GPU
    utilisation: tuple[float, float] = UTILISATION

    @property
    def peak(self) -> float:
        """FLOP/s of the GPU's dense peak at the recipes' precision (bf16; fp16 where it has none)."""
        return (self.gpu.bf16_tflops or self.gpu.fp16_tflops) * 1e12

    def hours(self, flops: float) -> tuple[float, float]:
        """(most, least) GPU-hours: at the low and at the high end of the utilisation range."""
        lo, hi = self.utilisation
        return flops / (self.peak * lo) / 3600.0, flops / (self.peak * hi) / 3600.0

    @property
    def label(self) -> str:
        precision = "bf16" if self.gpu.bf16_tflops else "fp16"
        lo, hi = self.utilisation
        return (f"estimate (FLOPs x assumed utilisation): FLOPs / ({self.gpu.name} {precision} peak "
                f"{self.peak / 1e12:,.0f} TFLOP/s x {lo:.0%}-{hi:.0%} utilisation)")


def estimate_for(name: str | None) -> list[Estimate]:
    from lsgm.plan.cluster import DEFAULT_ESTIMATE_GPUS

    return [Estimate(GPUS[n]) for n in ([name] if name else DEFAULT_ESTIMATE_GPUS)]


class Costs:
    """The counted FLOPs of one plan's runs (``paper_flops.json``), as per-job FLOPs and memory."""

    def __init__(self, flops: dict | None):
        self.doc = flops or {}
        self.runs = self.doc.get("runs", {})
        self.scale = self.doc.get("scale", "paper")  # the scale whose runs were counted

    def counted(self, run: Run) -> dict | None:
        """The run's count, if there is one for its current networks (else None: not counted, or stale)."""
        stem = run.stem.replace(f"/{run.name}-s", f"/{run.copies}-s") if run.copies else run.stem  # an LSGM at init
        entry = self.runs.get(stem) if run.scale == self.scale else None
        return entry if entry and entry.get("fingerprint") == flop_fingerprint(run.config) else None

    def stale(self, runs: list[Run]) -> list[str]:
        return [r.stem for r in runs if r.scale == self.scale and r.stem in self.runs and self.counted(r) is None]

    def train_flops(self, run: Run) -> float | None:
        """FLOPs of the whole training job: steps x (each process's micro-batches) x processes."""
        entry = self.counted(run)
        if entry is None:
            return None
        if run.config["train"]["steps"] == 0:  # an LSGM at initialisation trains nothing
            return 0.0
        per_process, accum = run.batch_split
        step = entry["train_step_flops"]
        processes = max(1, run.gpus)
        per_step = processes * (accum * per_process * step["per_sample"] + step["fixed"])
        return per_step * run.config["train"]["steps"]

    def memory_gib(self, run: Run) -> float | None:
        """Peak GPU memory of one process (estimate): fp32 weights, gradients, optimizer states, EMA copies, DDP's
        gradient buckets with more than one process, and the activations at its per-process batch."""
        entry = self.counted(run)
        if entry is None:
            return None
        params = sum(entry["parameters"].values())
        trainable = entry["trainable_parameters"]
        ddp = trainable if max(1, run.gpus) > 1 else 0
        weights = BYTES_FP32 * (params + trainable * (1 + ADAM_STATES) + entry["ema_parameters"] + ddp)
        act = entry["activation_bytes"]
        return (weights + act["fixed"] + act["per_sample"] * run.batch_split[0]) / 2**30

    # ------------------------------------------------------------------------------------------ evaluations
    def eval_flops(self, job: dict, run: Run | None) -> float | None:
        """FLOPs of one evaluation job (``Plan.eval_jobs`` entry), the ODE's NFE from :data:`NFE`; None where not
        estimated (the variance job, or a run not counted)."""
        s, kind = job["settings"], job["kind"]
        inception = self.doc.get("inception_flops_per_image", 0.0)
        if kind == "fid_stats" and self.scale == job.get("scale", self.scale):
            from lsgm.datasets_info import EXPECTED_COUNTS, FID_REFERENCE

            reference = FID_REFERENCE.get(job["run"])
            if reference is None or job["run"] not in EXPECTED_COUNTS:
                return None
            n = min(reference.max_samples, sum(EXPECTED_COUNTS[job["run"]][sp] for sp in reference.splits))
            return n * inception if inception else None
        entry = self.counted(run) if run is not None else None
        if entry is None:
            return None
        per = entry["eval_flops_per_image"]
        if kind == "fid":
            return s.get("n_samples", 0) * (self._sample_flops(run, per, s) + inception)
        if kind == "fid_normal":  # the sample-quality control: z0 ~ N(0, tau^2 I) decoded, no ODE
            return s.get("n_samples", 0) * (per.get("decoder", 0.0) + inception)
        if kind == "samples":
            return s.get("n", 64) * self._sample_flops(run, per, s)
        if kind == "cost":  # per ODE tolerance and PC step count: timed batches, and the FD of fd_samples samples
            settings = ([{**s, "sampler": "ode", "tolerance": t} for t in s.get("tolerances") or []]
                        + [{**s, "sampler": "pc", "pc_steps": n} for n in s.get("pc_steps") or []])
            return sum(s.get("fd_samples", 0) * (self._sample_flops(run, per, one) + inception)
                       + s.get("n_batches", 0) * s.get("batch_size", 0) * self._sample_flops(run, per, one)
                       for one in settings)
        if kind == "nll":
            from lsgm.datasets_info import EXPECTED_COUNTS

            n = EXPECTED_COUNTS.get(run.dataset, {}).get("test", 0)
            if s.get("n_batches"):
                n = min(n, s["n_batches"] * s.get("batch_size", 1))
            k = s.get("iw_samples", 1)
            if run.kind == "vae":
                return n * k * per["encoder_decoder"]
            nfe = self.nfe(run, s.get("tolerance"))
            prior = s.get("inner", 1) * nfe * per["nll_nfe"] if s.get("prior", "ode") == "ode" else 0.0
            return n * k * (per["encoder_decoder"] + prior)
        return None

    def nfe(self, run: Run, tolerance: float | None) -> int:
        return NFE.get((run.dataset, tolerance), ASSUMED_NFE)

    def _sample_flops(self, run: Run, per: dict, s: dict) -> float:
        """FLOPs of one sample: decoder (a VAE), ODE NFE x score (+ decoder: an LSGM), or 2 x PC steps x score."""
        if run.kind == "vae":
            return per["decoder"]
        nfe = 2 * s["pc_steps"] if s.get("sampler") == "pc" and s.get("pc_steps") else self.nfe(run, s.get("tolerance"))
        return nfe * per["sample_nfe"] + per.get("decoder", 0.0)


def fits(gib: float | None, gpu: GPU | None) -> str:
    """``yes`` / ``NO (x GiB > y GiB)`` against the declared GPU's memory, ``?`` where unknown."""
    if gib is None or gpu is None:
        return "?"
    return "yes" if gib <= gpu.memory_gib else f"NO ({gib:,.0f} > {gpu.memory_gib:g} GiB)"


def hours_text(hours: tuple[float, float] | None) -> str:
    """``least-most`` GPU-hours, to two significant figures below 10."""
    if hours is None or not math.isfinite(hours[0]):
        return "—"
    most, least = hours

    def h(x: float) -> str:
        return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"

    return f"{h(least)}-{h(most)}"

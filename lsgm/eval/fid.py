"""FID / FD: reference statistics, the Fréchet distance of generated samples, ``lsgm fid-stats``.

Protocol (reference doc section 6.2, with the official flaws fixed):
- samples: :mod:`lsgm.eval.generate` (one generator per sample index, so the set of samples does not
  depend on the batch size), quantised to uint8 (round(255 x), clamped) before the features.
- features: :mod:`lsgm.eval.features` (Inception-v3 pool3 at paper scale, the offline classifier
  otherwise; the metric is then named ``fd_<dataset>``, never ``fid``).
- statistics: pooled over ALL samples (the official code averages per-GPU covariances), Fréchet distance
  by torch-fidelity's ``fid_statistics_to_metric``; reference statistics once per dataset as the official
  ``scripts/precompute_fid_statistics.py`` computes them (:data:`lsgm.datasets_info.FID_REFERENCE`: CIFAR-10 and
  MNIST the training split, CelebA-HQ-256 and OMNIGLOT train + validation, all at the files' 8 bits, binary data as
  grey levels, at most 50,000 images), the specification in the file's name and metadata, validated on load.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.utils import get_featuresdict_from_dataset

from lsgm.eval.common import (
    SEED_RULE,
    EvalError,
    LoadedRun,
    load_user_file,
    evaluation_seed,
    metrics_record,
    quantize_uint8,
    resolve_device,
    set_bn_mode,
    to_rgb,
)
from lsgm.eval.features import INCEPTION_ENV, INCEPTION_FILE, Extractor, make_extractor
from lsgm.eval.generate import (
    SampleBatch,
    Sampling,
    make_sampling,
    matched_scale,
    sample_batch,
    sampling_settings,
)
from lsgm.datasets_info import FID_REFERENCE, FIDReference
from lsgm.io import OutputError, check_output, provenance
from lsgm.utils import atomic_torch_save

STATS_VERSION = 2  # 2: the official reference specification (splits, bits) in the name and metadata


# --------------------------------------------------------------------------------------------------
# Fréchet distance and reference statistics
# --------------------------------------------------------------------------------------------------


def feature_statistics(features: torch.Tensor) -> dict:
    """Pooled mean and covariance of ALL features [N, D] (torch-fidelity's ``fid_features_to_statistics``)."""
    if features.shape[0] < 2:
        raise EvalError("the Fréchet distance needs at least 2 samples; raise --n-samples")
    return fid_features_to_statistics(features.detach().cpu().to(torch.float64))


def frechet_distance(stats_a: dict, stats_b: dict) -> float:
    """Fréchet distance between two Gaussians ``{"mu", "sigma"}`` (torch-fidelity's formula)."""
    a = {k: np.asarray(stats_a[k], dtype=np.float64) for k in ("mu", "sigma")}
    b = {k: np.asarray(stats_b[k], dtype=np.float64) for k in ("mu", "sigma")}
    return float(fid_statistics_to_metric(a, b, verbose=False)[KEY_METRIC_FID])


FD_BOOTSTRAP_DRAWS = 20  # resamples of the generated features behind an FD's standard error


class ReferenceFD:
    """The Fréchet distance of many generated feature sets to one fixed reference, each without a matrix square
    root: the bootstrap behind an FD's standard error evaluates it ``draws`` times per setting, and torch-fidelity's
    ``sqrtm`` of a 2048 x 2048 product takes seconds on a CPU (minutes per cost evaluation at the paper's feature size).

    The same quantity as :func:`frechet_distance`, exactly: ``tr sqrtm(S1 S2) = sum_i sqrt(l_i)`` over the
    eigenvalues of ``S1 S2``, which equal those of the symmetric positive semi-definite ``A S2 A^T`` (N x N, with
    ``S1 = A^T A``, ``A`` the centred features over ``sqrt(N - 1)``) or of ``S2^1/2 S1 S2^1/2`` (D x D), whichever is
    smaller; ``eigvalsh`` of those is stable where ``sqrtm`` of a rank-deficient product is not (N <= D)."""

    def __init__(self, reference: dict):
        self.mu = np.asarray(reference["mu"], dtype=np.float64)
        self.sigma = np.asarray(reference["sigma"], dtype=np.float64)
        self.trace = float(np.trace(self.sigma))
        self._root = None  # S2^1/2, computed once where a set holds more samples than features

    def __call__(self, features: torch.Tensor) -> float:
        x = features.detach().cpu().to(torch.float64).numpy()
        n, dim = x.shape
        if n < 2:
            raise EvalError("the Fréchet distance needs at least 2 samples; raise --n-samples")
        mu = x.mean(axis=0)
        a = (x - mu) / math.sqrt(n - 1)
        if n <= dim:
            gram = a @ self.sigma @ a.T
        else:
            if self._root is None:
                w, v = np.linalg.eigh(self.sigma)
                self._root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
            b = a @ self._root
            gram = b.T @ b
        eig = np.linalg.eigvalsh((gram + gram.T) / 2)
        # eigenvalues that are zero in exact arithmetic (rank N - 1 < D) come out as +-(rounding) and their square
        # roots as ~1e-8 each: below numpy's rank tolerance (max |l| x size x eps, as matrix_rank) they are zero
        eig[eig < np.abs(eig).max(initial=0.0) * eig.size * np.finfo(np.float64).eps] = 0.0
        return float(np.sum((mu - self.mu) ** 2) + np.sum(a * a) + self.trace - 2.0 * np.sum(np.sqrt(eig)))


def per_process_statistics(features: torch.Tensor, processes: int) -> dict:
    """The official FID's statistics (evaluate_vada.py / the official fid code): ``processes`` GPUs each take
    ceil(N / processes) consecutive samples (the last one the rest), compute their own mean and covariance, and the
    statistics are averaged across the GPUs (not pooled: the spread of the per-GPU means is left out)."""
    n = features.shape[0]
    size = math.ceil(n / processes)
    shards = [features[i:i + size] for i in range(0, n, size)]
    if min(len(s) for s in shards) < 2:
        raise EvalError(f"{n} samples over {processes} processes leave a process fewer than 2 samples")
    stats = [feature_statistics(s) for s in shards]
    return {k: np.mean([np.asarray(st[k], dtype=np.float64) for st in stats], axis=0) for k in ("mu", "sigma")}


def fd_standard_error(features: torch.Tensor, reference: dict, *, draws: int = FD_BOOTSTRAP_DRAWS,
                      seed: int = 0) -> float:
    """The bootstrap standard error of ``frechet_distance(feature_statistics(features), reference)``: the standard
    deviation of the FD (:class:`ReferenceFD`) over ``draws`` resamples (with replacement) of the N generated
    features. The reference statistics are held fixed (they come from the whole reference set). The generator is its
    own, seeded by ``seed``, so no other random stream moves."""
    n = features.shape[0]
    gen = torch.Generator().manual_seed(seed)
    fd = ReferenceFD(reference)
    values = [fd(features[torch.randint(n, (n,), generator=gen)]) for _ in range(draws)]
    return float(np.std(values, ddof=1))


class _Uint8Images(Dataset):
    """A dataset's images as uint8 [3, H, W] (binary data as grey levels), the input torch-fidelity expects."""

    def __init__(self, dataset, count: int):
        self.dataset, self.count = dataset, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        x, _ = self.dataset[index]
        return to_rgb(quantize_uint8(x)[None])[0]


def reference_dataset(name: str, split: str = "train", root: str | None = None, expected_size: int | None = None,
                      bits: int = 8):
    """One split of the images reference statistics are computed on: no augmentation, never binarized, read at
    ``bits`` bits. ``expected_size``: the split's image count when it is not the official one (a miniature)."""
    from lsgm.data import DatasetError, get_dataset

    try:
        dataset = get_dataset(name, split, root=root, download=False, augment=False, expected_size=expected_size)
        if getattr(dataset, "binarize", False):
            dataset.binarize = False  # grey levels (probabilities), as the official statistics
        if getattr(dataset, "bits", 8) != bits:
            dataset.set_bits(bits)  # CelebA-HQ-256: the files' 8 bits, not the training loader's 5
    except DatasetError as err:
        raise EvalError(str(err)) from err
    return dataset


def reference_spec(dataset: str, splits: tuple[str, ...] | None = None, bits: int | None = None) -> FIDReference:
    """The official reference specification of ``dataset`` (:data:`FID_REFERENCE`), with ``splits`` / ``bits``
    overriding it where given (the statistics then record that they deviate)."""
    if dataset not in FID_REFERENCE:
        raise EvalError(f"no FID reference specification for dataset {dataset!r}; known: {', '.join(FID_REFERENCE)}")
    spec = FID_REFERENCE[dataset]
    if splits is None and bits is None:
        return spec
    return FIDReference(tuple(splits or spec.splits), spec.bits if bits is None else bits, spec.max_samples,
                        source=f"ours, deviating from {spec.tag} ({spec.source})")


def compute_reference_stats(dataset: str, extractor: Extractor, root: str | None = None, batch_size: int = 200,
                            max_samples: int | None = None, spec: FIDReference | None = None,
                            device: torch.device | str = "cpu", sizes: dict[str, int] | None = None) -> dict:
    """Statistics of ``extractor``'s features over the reference images of ``dataset`` (``spec``: its splits and
    bit depth, default the official :func:`reference_spec`), with versioned metadata. ``sizes``: a split's image
    count where it is not the official one (a miniature: ``{"train": n_train, "test": n_test}``)."""
    spec = spec or reference_spec(dataset)
    parts = [reference_dataset(dataset, split, root, (sizes or {}).get(split), spec.bits) for split in spec.splits]
    source = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    limit = spec.max_samples if max_samples is None else max_samples
    count = min(limit, len(source))
    cuda = torch.device(device).type == "cuda"
    feats = get_featuresdict_from_dataset(_Uint8Images(source, count), extractor.module, batch_size, cuda,
                                          save_cpu_ram=True, verbose=False)[extractor.layer]
    stats = feature_statistics(feats)
    return {
        "version": STATS_VERSION,
        "name": f"{dataset}-{spec.tag}-n{count}-{extractor.features}-{extractor.checksum[:8]}-v{STATS_VERSION}",
        "dataset": dataset, "split": "+".join(spec.splits), "n": count,
        "reference": {"splits": list(spec.splits), "bits": spec.bits, "max_samples": limit, "tag": spec.tag,
                      "source": spec.source, "official": spec == FID_REFERENCE.get(dataset),
                      "split_sizes": {p: len(d) for p, d in zip(spec.splits, parts)}},
        "extractor": extractor.describe(),
        "mu": torch.from_numpy(np.asarray(stats["mu"], dtype=np.float64)),
        "sigma": torch.from_numpy(np.asarray(stats["sigma"], dtype=np.float64)),
        "provenance": provenance(device),
    }


_STATS_KEYS = ("version", "name", "dataset", "split", "n", "reference", "extractor", "mu", "sigma")


def load_stats(path: str | Path) -> dict:
    """Load and validate a statistics file written by ``lsgm fid-stats``: its keys and version, ``mu`` [D] and
    ``sigma`` [D, D] finite tensors (before any sample is drawn; :func:`check_stats` then matches D to the extractor)."""
    path = Path(path)
    fix = f"recompute it with lsgm fid-stats --dataset NAME --features inception|classifier --out {path}"
    stats = load_user_file(path, "statistics file", fix)
    missing = [k for k in _STATS_KEYS if not isinstance(stats, dict) or k not in stats]
    if missing:
        raise EvalError(f"statistics file {path} lacks {missing}; {fix}")
    if stats["version"] != STATS_VERSION:
        raise EvalError(f"statistics file {path} has version {stats['version']}, this code reads {STATS_VERSION}; {fix}")
    mu, sigma, extractor = stats["mu"], stats["sigma"], stats["extractor"]
    if not (isinstance(extractor, dict) and {"features", "checksum"} <= set(extractor)):
        raise EvalError(f"statistics file {path}: its 'extractor' record lacks features/checksum; {fix}")
    if not (torch.is_tensor(mu) and torch.is_tensor(sigma)):
        raise EvalError(f"statistics file {path}: mu and sigma must be tensors, got {type(mu).__name__} and "
                        f"{type(sigma).__name__}; {fix}")
    if mu.ndim != 1 or tuple(sigma.shape) != (mu.numel(), mu.numel()):
        raise EvalError(f"statistics file {path}: mu has shape {list(mu.shape)} and sigma {list(sigma.shape)}, need "
                        f"mu [D] and sigma [D, D]; {fix}")
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise EvalError(f"statistics file {path}: mu or sigma holds NaN or inf; {fix}")
    return stats


def check_stats(stats: dict, extractor: Extractor, dataset: str, path: str | Path) -> None:
    """Statistics must come from the same extractor (checksum, feature dimension) and the model's dataset."""
    ref = stats["extractor"]
    if ref["features"] != extractor.features or ref["checksum"] != extractor.checksum:
        raise EvalError(f"statistics {path} were computed with {ref['features']} features (checksum "
                        f"{str(ref['checksum'])[:12]}), this evaluation uses {extractor.features} "
                        f"({extractor.checksum[:12]}); "
                        f"recompute them with lsgm fid-stats using the same extractor")
    if stats["mu"].numel() != extractor.dim:
        raise EvalError(f"statistics {path} hold {stats['mu'].numel()} features per image, the {extractor.features} "
                        f"extractor gives {extractor.dim}; recompute them with lsgm fid-stats using this extractor")
    if stats["dataset"] != dataset:
        raise EvalError(f"statistics {path} are for dataset {stats['dataset']!r}, the model is trained on {dataset!r}; "
                        f"pass the {dataset} statistics")


def extractor_for_stats(stats: dict, classifier: str | None, inception_weights: str | None,
                        device: torch.device | str) -> Extractor:
    """The extractor a statistics file names (``classifier`` overrides the recorded classifier path)."""
    ref = stats["extractor"]
    if ref["features"] == "classifier":
        return make_extractor("classifier", classifier or ref["weights"], device=device)
    return make_extractor("inception", inception_weights=inception_weights, device=device)


def sample_features(run: LoadedRun, extractor: Extractor, n_samples: int, batch_size: int, *, seed: int,
                    sampling: Sampling, device: torch.device) -> tuple[torch.Tensor, list[SampleBatch]]:
    """Features [n_samples, D] of the uint8-quantised samples 0 .. n_samples - 1 of ``seed``, and the batch
    records (images dropped)."""
    feats, batches = [], []
    for start in range(0, n_samples, batch_size):
        batch = sample_batch(run, start, min(batch_size, n_samples - start), seed=seed, sampling=sampling,
                             device=device)
        if not torch.isfinite(batch.images).all():
            raise FloatingPointError(f"non-finite samples in batch starting at {start}")
        feats.append(extractor(to_rgb(quantize_uint8(batch.images))))
        batch.images = batch.images[:0]
        batches.append(batch)
    return torch.cat(feats), batches


# --------------------------------------------------------------------------------------------------
# `lsgm evaluate fid`
# --------------------------------------------------------------------------------------------------


def evaluate_fid(model: str, stats: str | None, *, n_samples: int, tolerance: float, sampler: str,
                 pc_steps: int | None, snr: float, solver: str, batch_size: int, temperature: float,
                 vae_temperature: float, seed: int, bn_mode: str, t_eps: float, use_ema: bool,
                 classifier: str | None, inception_weights: str | None, device: str | None,
                 latent: str = "prior", official_processes: int | None = None) -> dict:
    """FID (Inception) or FD (classifier features) of ``n_samples`` samples against ``stats_path``: ODE samples, or
    for the pixel SGM (``sampler='pc'``) predictor-corrector samples with ``pc_steps`` steps, as the original SGM's
    published FIDs were measured. ``latent='matched_normal'``: an LSGM's decoder with its score prior replaced by the
    Normal its mixed score is at initialisation (the sample-quality control; a record of kind ``fid_normal``)."""
    from lsgm.eval.common import load_run

    if not stats:
        raise EvalError("--stats FILE.pt is required (lsgm fid-stats --dataset NAME --features ... --out FILE.pt)")
    stats_path = stats
    started = time.perf_counter()
    dev = resolve_device(device)
    run = load_run(model, use_ema=use_ema, device=dev)
    stats = load_stats(stats_path)
    extractor = extractor_for_stats(stats, classifier, inception_weights, dev)
    check_stats(stats, extractor, run.cfg.data.name, stats_path)
    sampling = make_sampling(run.kind, sampler=sampler, tolerance=tolerance, pc_steps=pc_steps, snr=snr,
                             solver=solver, t_eps=t_eps, temperature=temperature, vae_temperature=vae_temperature,
                             latent=latent)
    kind = "fid_normal" if latent == "matched_normal" else "fid"
    settings = {
        **sampling_settings(run.kind, sampling), "n_samples": n_samples, "batch_size": batch_size,
        "bn_mode": bn_mode, "seed": seed, "eval_seed": evaluation_seed(seed, run.cfg.name, kind), "seed_rule": SEED_RULE,
        "seeding": "per-sample generator seeded by (eval_seed, sample index)", "decoder": "mean",
        "quantization": "uint8 round(255 x)", "feature_extractor": extractor.describe(),
        "reference": {"path": str(stats_path), "name": stats["name"], "dataset": stats["dataset"],
                      "split": stats["split"], "n": stats["n"], **stats["reference"]},
        "statistics": "pooled mean/covariance over all samples; torch-fidelity fid_statistics_to_metric",
        "torch_fidelity_extractor": extractor.name,
    }
    name = extractor.metric_name
    metrics = {name: math.nan, f"{name}_stderr": math.nan, "nfe_mean": math.nan}
    settings["stderr"] = (f"{name}_stderr: bootstrap over the n_samples generated features ({FD_BOOTSTRAP_DRAWS} "
                          "resamples, the reference statistics fixed): the Monte Carlo error of the samples drawn")
    if run.diverged:
        return metrics_record(kind, run, metrics, settings, device=dev, started=started)
    if latent == "matched_normal":
        tau = matched_scale(run, t_eps).flatten()
        settings["latent_scale"] = {"tau": [round(float(v), 6) for v in tau], "mean": float(tau.mean()),
                                    "rule": "tau = (m(t_eps) / m(1))^alpha_0 per channel, alpha_0 = sigmoid(objective."
                                            "mixing_logit_init) (0 on inactive channels): the mixed score with eps' = 0",
                                    "mixing_logit_init": run.cfg.objective.mixing_logit_init}
    set_bn_mode(run.vae, bn_mode)
    try:
        feats, batches = sample_features(run, extractor, n_samples, batch_size, seed=settings["eval_seed"],
                                         sampling=sampling, device=dev)
    except (FloatingPointError, AssertionError) as err:  # NaN samples / solver underflow: not a crash
        return metrics_record(kind, run, metrics, settings, status="diverged", reason=f"sampling failed: {err}",
                              device=dev, started=started)
    ref = {"mu": stats["mu"].numpy(), "sigma": stats["sigma"].numpy()}
    metrics[name] = frechet_distance(feature_statistics(feats), ref)
    metrics[f"{name}_stderr"] = fd_standard_error(feats, ref, seed=settings["eval_seed"])
    if official_processes:  # the same samples, the official per-process covariances (docs/official_checkpoints.md)
        settings["official_processes"] = official_processes
        try:
            metrics[f"official_{name}"] = frechet_distance(per_process_statistics(feats, official_processes), ref)
        except EvalError as err:
            metrics[f"official_{name}"] = math.nan
            settings["official_note"] = str(err)
    nfe = np.array([b.nfe for b in batches], dtype=float)
    metrics["nfe_mean"] = float(nfe.mean())
    metrics["nfe_stderr"] = float(nfe.std(ddof=1) / math.sqrt(nfe.size)) if nfe.size > 1 else math.nan
    return metrics_record(kind, run, metrics, settings, device=dev, started=started)


# --------------------------------------------------------------------------------------------------
# `lsgm fid-stats`
# --------------------------------------------------------------------------------------------------


def _splits(value: str) -> tuple[str, ...] | None:
    if value == "official":
        return None
    parts = tuple(value.split("+"))
    if not parts or any(p not in ("train", "test") for p in parts) or len(set(parts)) != len(parts):
        raise argparse.ArgumentTypeError(f"{value!r}: use official, train, test or train+test")
    return parts


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _stats_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lsgm fid-stats", description="reference feature statistics for FID/FD, "
                                "computed once per dataset as the official precompute_fid_statistics.py does")
    p.add_argument("--dataset", required=True)
    p.add_argument("--features", required=True, choices=["inception", "classifier"])
    p.add_argument("--classifier", help="classifier model.pt (lsgm train-classifier) for --features classifier")
    p.add_argument("--inception-weights", help=f"path of {INCEPTION_FILE} (offline); also ${INCEPTION_ENV}")
    p.add_argument("--root", help="dataset folder (paper-scale datasets)")
    p.add_argument("--split", type=_splits, default=None, metavar="official|train|test|train+test",
                   help="the splits (default official: lsgm.datasets_info.FID_REFERENCE; another choice is recorded "
                        "as a deviation in the statistics)")
    p.add_argument("--bits", type=int, default=None, choices=range(1, 9), metavar="1..8",
                   help="bit depth the images are read at (default official: 8)")
    p.add_argument("--n-train", type=_positive, default=None, metavar="N",
                   help="the training split's image count when it is not the official one (a miniature)")
    p.add_argument("--n-test", type=_positive, default=None, metavar="N",
                   help="the test split's image count when it is not the official one (a miniature)")
    p.add_argument("--max-samples", type=_positive, default=None, help="default: the specification's 50,000")
    p.add_argument("--batch-size", type=_positive, default=200)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    """``lsgm fid-stats``: write reference statistics (exit 2 with a one-line error on bad input)."""
    args = _stats_parser().parse_args(argv)
    try:
        check_output(args.out)
        spec = reference_spec(args.dataset, args.split, args.bits)
        device = resolve_device(args.device)
        extractor = make_extractor(args.features, args.classifier, args.inception_weights, device)
        sizes = {k: v for k, v in (("train", args.n_train), ("test", args.n_test)) if v is not None}
        stats = compute_reference_stats(args.dataset, extractor, root=args.root, batch_size=args.batch_size,
                                        max_samples=args.max_samples, spec=spec, device=device, sizes=sizes)
    except (EvalError, OutputError) as err:
        print(f"lsgm fid-stats: error: {err}", file=sys.stderr)
        return 2
    atomic_torch_save(stats, Path(args.out))
    print(json.dumps({"out": args.out, "name": stats["name"], "n": stats["n"], "reference": stats["reference"],
                      "extractor": stats["extractor"]}))
    return 0

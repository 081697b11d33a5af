"""FID / FD: feature extractors registered with torch-fidelity, reference statistics, sample generation.

Protocol (reference doc section 6.2, with the official flaws fixed):
- samples: sample k draws its initial noise (and lower-scale VAE noise) from its own generator seeded by
  (seed, k), so the SET of samples does not depend on the batch size. LSGM: z_1 -> probability-flow ODE
  -> ``vae.decode`` (decoder mean); VAE: decoder mean of z_0 ~ N(0, T^2 I); pixel SGM: the ODE in pixel
  space mapped to [0, 1]. Images are quantised to uint8 (round(255 x), clamped) before the features.
  The adaptive ODE solve of one batch is one system (its step sizes depend on the whole batch, as in the
  official code), so final samples agree across batch sizes to the solver tolerance, their noise exactly.
- features: torch-fidelity's extractor API: ``inception-v3-compat`` (pool3, 2048-d) at paper scale, or
  offline the small classifier of :mod:`lsgm.nets.classifier` registered as ``lsgm-classifier``; the
  metric is then named ``fd_<dataset>``, never ``fid``.
- statistics: pooled over ALL samples (the official code averages per-GPU covariances), Fréchet distance
  by torch-fidelity's ``fid_statistics_to_metric``; reference statistics once per dataset on the training
  split (binary data as grey levels, never binarized), stored with versioned metadata and validated on load.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from lsgm.eval.common import (
    EvalError,
    LoadedRun,
    load_user_file,
    metrics_record,
    per_sample_normal,
    quantize_uint8,
    resolve_device,
    sample_generators,
    sample_seed,
    set_bn_mode,
    to_rgb,
)
from lsgm.nets.classifier import ARCH_VERSION, FeatureClassifier
from lsgm.utils import atomic_torch_save, file_sha256, provenance

STATS_VERSION = 1
CLASSIFIER_EXTRACTOR = "lsgm-classifier"
INCEPTION_EXTRACTOR = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_ENV = "LSGM_INCEPTION_WEIGHTS"
OFFLINE_ENV = "LSGM_OFFLINE"  # "1": never try torch-fidelity's download


# --------------------------------------------------------------------------------------------------
# Feature extractors
# --------------------------------------------------------------------------------------------------


def load_classifier(path: str | Path) -> tuple[FeatureClassifier, dict]:
    """The trained classifier of a ``lsgm train-classifier`` run (eval mode) and its model.pt dict."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"classifier {path} does not exist; train it with lsgm train-classifier --config RUN.yaml "
                        f"--out DIR, or pass --classifier DIR/model.pt")
    blob = load_user_file(path, f"classifier {path} is not a readable torch file; retrain it or fix --classifier")
    if not isinstance(blob, dict) or "classifier" not in blob.get("state", {}) or "arch" not in blob:
        raise EvalError(f"{path} is not a classifier model.pt (no state['classifier']); pass the classifier run's file")
    arch = dict(blob["arch"])
    if arch.pop("arch_version", None) != ARCH_VERSION:
        raise EvalError(f"{path} was trained with classifier architecture version {blob['arch'].get('arch_version')}, "
                        f"this code has {ARCH_VERSION}; retrain it with lsgm train-classifier")
    net = FeatureClassifier(**arch)
    net.load_state_dict(blob["state"]["classifier"])
    return net.eval(), blob


def state_checksum(module: torch.nn.Module) -> str:
    """sha256 over a module's state (sorted names, shapes, float64 values): identifies an extractor."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().to(torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor around :class:`FeatureClassifier`.

    Built by torch-fidelity as ``cls(name, features_list, **kwargs)``; the classifier's ``model.pt`` is
    passed as ``feature_extractor_weights_path``. Input: uint8 ``[B, 3, H, W]`` (grayscale repeated; the
    channels are averaged back for a 1-channel classifier) or ``[B, C, H, W]`` with the classifier's C.
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise EvalError("the lsgm-classifier feature extractor needs feature_extractor_weights_path=DIR/model.pt")
        self.net, blob = load_classifier(feature_extractor_weights_path)
        self.feature_dim = self.net.feature_dim
        self.dataset = blob["config"]["data"]["name"]
        self.checksum = state_checksum(self.net)
        self.requires_grad_(False)

    @staticmethod
    def get_provided_features_list():
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "features"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4):
            raise ValueError("lsgm-classifier expects uint8 images [B, C, H, W]")
        x = x.float() / 255.0
        if x.shape[1] != self.net.in_channels:
            if self.net.in_channels != 1:
                raise ValueError(f"classifier expects {self.net.in_channels} channels, got {x.shape[1]}")
            x = x.mean(dim=1, keepdim=True)  # repeated grayscale -> 1 channel (exact)
        feats = self.net.features(x)  # (B, feature_dim)
        out = {"features": feats, "logits": self.net.head(feats)}
        return tuple(out[name] for name in self.features_list)


def register_classifier_extractor() -> str:
    """Register :class:`ClassifierFeatureExtractor` with torch-fidelity (idempotent); returns its name."""
    if CLASSIFIER_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(CLASSIFIER_EXTRACTOR, ClassifierFeatureExtractor)
    return CLASSIFIER_EXTRACTOR


def inception_weights_path(explicit: str | None = None) -> Path | None:
    """Where the Inception weights are: ``explicit`` > $LSGM_INCEPTION_WEIGHTS > torch hub cache; ``None``
    if none of these exists (torch-fidelity would then download them)."""
    candidates = [explicit, os.environ.get(INCEPTION_ENV)]
    for cand in candidates:
        if cand:
            path = Path(cand).expanduser()
            if not path.is_file():
                raise EvalError(missing_inception_message(path))
            return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return cached if cached.is_file() else None


def missing_inception_message(path: Path | None = None) -> str:
    where = path or Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return (f"Inception-v3 weights not found at {where}: download {INCEPTION_URL} on a machine with internet and "
            f"put {INCEPTION_FILE} there (or pass --inception-weights PATH / set {INCEPTION_ENV}), or use the offline "
            f"classifier features (--features classifier)")


@dataclass
class Extractor:
    """A torch-fidelity feature extractor plus what identifies it in statistics files."""

    module: FeatureExtractorBase
    name: str  # torch-fidelity registry name
    layer: str
    features: str  # "inception" | "classifier"
    checksum: str
    weights: str
    dim: int
    metric_name: str  # "fid" (Inception) | "fd_<dataset>"

    def describe(self) -> dict:
        return {"name": self.name, "features": self.features, "layer": self.layer, "checksum": self.checksum,
                "weights": self.weights, "dim": self.dim, "metric_name": self.metric_name}

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> features [B, dim] (float64, CPU)."""
        out = self.module.convert_features_tuple_to_dict(self.module(images_uint8))
        return out[self.layer].detach().to("cpu", torch.float64)


def make_extractor(features: str, classifier: str | Path | None = None, inception_weights: str | None = None,
                   device: torch.device | str = "cpu") -> Extractor:
    """Build the ``inception`` (torch-fidelity's Inception-v3, pool3) or ``classifier`` feature extractor."""
    cuda = torch.device(device).type == "cuda"
    if features == "classifier":
        if classifier is None:
            raise EvalError("--features classifier needs --classifier DIR/model.pt (lsgm train-classifier)")
        name = register_classifier_extractor()
        module = create_feature_extractor(name, ["features"], cuda=cuda, verbose=False,
                                          feature_extractor_weights_path=str(classifier))
        return Extractor(module, name, "features", "classifier", module.checksum, str(classifier),
                         module.feature_dim, f"fd_{module.dataset}")
    if features != "inception":
        raise EvalError(f"--features must be 'inception' or 'classifier', got {features!r}")
    path = inception_weights_path(inception_weights)
    if path is None and os.environ.get(OFFLINE_ENV) == "1":
        raise EvalError(missing_inception_message())
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # torch.hub's "Downloading ..." line
            module = create_feature_extractor(INCEPTION_EXTRACTOR, ["2048"], cuda=cuda, verbose=False,
                                              feature_extractor_weights_path=None if path is None else str(path))
    except (OSError, RuntimeError) as err:  # URLError is an OSError: offline and not cached
        if path is None:
            raise EvalError(missing_inception_message()) from err
        raise EvalError(f"Inception-v3 weights {path} are unreadable ({type(err).__name__}); re-download "
                        f"{INCEPTION_URL}") from err
    path = path or Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return Extractor(module, INCEPTION_EXTRACTOR, "2048", "inception", file_sha256(path), str(path), 2048, "fid")


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


class _Uint8Images(Dataset):
    """A dataset's images as uint8 [3, H, W] (binary data as grey levels), the input torch-fidelity expects."""

    def __init__(self, dataset, count: int):
        self.dataset, self.count = dataset, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        x, _ = self.dataset[index]
        return to_rgb(quantize_uint8(x)[None])[0]


def reference_dataset(name: str, split: str = "train", root: str | None = None):
    """The images reference statistics are computed on: no augmentation, never binarized."""
    from lsgm.data import DatasetError, get_dataset

    try:
        dataset = get_dataset(name, split, root=root, download=False, augment=False)
    except DatasetError as err:
        raise EvalError(str(err)) from err
    if getattr(dataset, "binarize", False):
        dataset.binarize = False  # grey levels (probabilities), as the official statistics
    return dataset


def compute_reference_stats(dataset: str, extractor: Extractor, root: str | None = None, batch_size: int = 200,
                            max_samples: int | None = None, split: str = "train",
                            device: torch.device | str = "cpu") -> dict:
    """Statistics of ``extractor``'s features over the ``split`` of ``dataset``, with versioned metadata."""
    source = reference_dataset(dataset, split, root)
    count = len(source) if max_samples is None else min(max_samples, len(source))
    cuda = torch.device(device).type == "cuda"
    feats = get_featuresdict_from_dataset(_Uint8Images(source, count), extractor.module, batch_size, cuda,
                                          save_cpu_ram=True, verbose=False)[extractor.layer]
    stats = feature_statistics(feats)
    return {
        "version": STATS_VERSION,
        "name": f"{dataset}-{split}-n{count}-{extractor.features}-{extractor.checksum[:8]}-v{STATS_VERSION}",
        "dataset": dataset, "split": split, "n": count,
        "extractor": extractor.describe(),
        "mu": torch.from_numpy(np.asarray(stats["mu"], dtype=np.float64)),
        "sigma": torch.from_numpy(np.asarray(stats["sigma"], dtype=np.float64)),
        "provenance": provenance(device),
    }


_STATS_KEYS = ("version", "name", "dataset", "split", "n", "extractor", "mu", "sigma")


def load_stats(path: str | Path) -> dict:
    """Load and validate a statistics file written by ``lsgm fid-stats``."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"statistics file {path} does not exist; compute it with lsgm fid-stats --dataset NAME "
                        f"--features inception|classifier --out {path}")
    stats = load_user_file(path, f"statistics file {path} is unreadable; recompute it with lsgm fid-stats")
    missing = [k for k in _STATS_KEYS if not isinstance(stats, dict) or k not in stats]
    if missing:
        raise EvalError(f"statistics file {path} lacks {missing}; recompute it with lsgm fid-stats")
    if stats["version"] != STATS_VERSION:
        raise EvalError(f"statistics file {path} has version {stats['version']}, this code reads {STATS_VERSION}; "
                        f"recompute it with lsgm fid-stats")
    return stats


def check_stats(stats: dict, extractor: Extractor, dataset: str, path: str | Path) -> None:
    """Statistics must come from the same extractor (checksum) and the model's dataset."""
    ref = stats["extractor"]
    if ref["features"] != extractor.features or ref["checksum"] != extractor.checksum:
        raise EvalError(f"statistics {path} were computed with {ref['features']} features (checksum "
                        f"{ref['checksum'][:12]}), this evaluation uses {extractor.features} "
                        f"({extractor.checksum[:12]}); "
                        f"recompute them with lsgm fid-stats using the same extractor")
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


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


@dataclass
class SampleBatch:
    images: torch.Tensor  # [B, C, H, W] float in [0, 1]
    nfe: int  # score evaluations of this batch's solve (0 for the VAE)
    sampler_seconds: float  # ODE / PC solve only
    seconds: float  # whole batch: noise, solve, decode (device synchronised)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode(vae, z0: torch.Tensor, temperature: float, generators: list[torch.Generator]) -> torch.Tensor:
    """Decoder mean of z0 [B, ...]; lower-scale groups ~ N(0, temperature^2 I) (the official ``--vae_temp``),
    each sample's lower noise from its generator (decoded one by one in eval mode; BN train mode needs the
    batch, so there the noise is per batch)."""
    has_lower = vae.n_groups > vae.cfg.num_groups_per_scale
    if not has_lower:
        return vae.decode(z0, temperature=temperature)
    if vae.training:
        return vae.decode(z0, temperature=temperature, generator=generators[0])
    return torch.cat([vae.decode(z0[i : i + 1], temperature=temperature, generator=g)
                      for i, g in enumerate(generators)])


@torch.no_grad()
def sample_batch(run: LoadedRun, start: int, count: int, *, seed: int, sampler: str = "ode",
                 tolerance: float = 1e-5, solver: str = "dopri5", t_eps: float = 1e-5, temperature: float = 1.0,
                 vae_temperature: float = 1.0, pc_steps: int = 1000, snr: float = 0.16,
                 device: torch.device | str = "cpu") -> SampleBatch:
    """Samples ``start .. start + count - 1`` of an evaluation seeded ``seed`` (images in [0, 1]).

    ``temperature`` scales the noise the top latent starts from (LSGM: z_1 of the ODE / PC sampler; VAE: its
    N(0, I) prior of z0), ``vae_temperature`` the lower-scale groups of the decoder (official ``--temp`` and
    ``--vae_temp`` of evaluate_vada.py)."""
    from lsgm.sampling import ode_sample, pc_sample
    from lsgm.score import to_unit

    device = torch.device(device)
    gens = sample_generators(seed, start, count, device="cpu")
    _sync(device)
    begin = time.perf_counter()
    if run.kind == "vae":
        z0 = per_sample_normal(tuple(run.vae.latent_shape), gens, device, scale=temperature)
        images, nfe, solve = _decode(run.vae, z0, vae_temperature, gens), 0, 0.0
    else:
        shape = tuple(run.vae.latent_shape) if run.kind == "lsgm" else (
            run.data.channels, run.data.image_size, run.data.image_size)
        # the prior N(0, prior_var I): N(0, I) for VP-type SDEs, N(0, sigma_max^2 I) for the VESDE
        z1 = per_sample_normal(shape, gens, device, scale=(temperature if run.kind == "lsgm" else 1.0) * run.sde.prior_std)
        if sampler == "ode":
            res = ode_sample(run.score, run.sde, z1.shape, t_eps, rtol=tolerance, atol=tolerance, method=solver, z1=z1)
        else:
            # the PC sampler's Langevin/predictor noise is one stream per batch (its API takes one generator)
            pc_gen = torch.Generator(device=device)
            pc_gen.manual_seed(sample_seed(seed, start, stream=1))
            res = pc_sample(run.score, run.sde, z1.shape, pc_steps, t_eps, snr=snr, generator=pc_gen, z1=z1)
        nfe, solve = res.nfe, res.seconds
        images = _decode(run.vae, res.z0, vae_temperature, gens) if run.kind == "lsgm" else to_unit(res.z0, run.cfg.data.centered)
    _sync(device)
    return SampleBatch(images.float().clamp(0, 1), nfe, solve, time.perf_counter() - begin)


def sample_features(run: LoadedRun, extractor: Extractor, n_samples: int, batch_size: int, **kwargs
                    ) -> tuple[torch.Tensor, list[SampleBatch]]:
    """Features [n_samples, D] of the uint8-quantised samples 0 .. n_samples - 1, and the batch records
    (images dropped)."""
    feats, batches = [], []
    for start in range(0, n_samples, batch_size):
        batch = sample_batch(run, start, min(batch_size, n_samples - start), **kwargs)
        if not torch.isfinite(batch.images).all():
            raise FloatingPointError(f"non-finite samples in batch starting at {start}")
        feats.append(extractor(to_rgb(quantize_uint8(batch.images))))
        batch.images = batch.images[:0]
        batches.append(batch)
    return torch.cat(feats), batches


# --------------------------------------------------------------------------------------------------
# `lsgm evaluate fid`
# --------------------------------------------------------------------------------------------------


def evaluate_fid(model: str, stats_path: str, *, n_samples: int = 50_000, tolerance: float = 1e-5,
                 solver: str = "dopri5", batch_size: int = 64, temperature: float = 1.0,
                 vae_temperature: float = 1.0, seed: int = 0,
                 bn_mode: str = "eval", t_eps: float = 1e-5, use_ema: bool = True, classifier: str | None = None,
                 inception_weights: str | None = None, device: str | None = None) -> dict:
    """FID (Inception) or FD (classifier features) of ``n_samples`` samples against ``stats_path``."""
    from lsgm.eval.common import load_run

    started = time.perf_counter()
    dev = resolve_device(device)
    run = load_run(model, use_ema=use_ema, device=dev)
    stats = load_stats(stats_path)
    extractor = extractor_for_stats(stats, classifier, inception_weights, dev)
    check_stats(stats, extractor, run.cfg.data.name, stats_path)
    settings = {
        "n_samples": n_samples, "tolerance": tolerance if run.kind != "vae" else None,
        "solver": solver if run.kind != "vae" else None, "t_eps": t_eps if run.kind != "vae" else None,
        "batch_size": batch_size, "temperature": temperature if run.kind != "sgm" else None,
        "vae_temperature": vae_temperature if run.kind != "sgm" else None, "bn_mode": bn_mode, "seed": seed,
        "seeding": "per-sample generator seeded by (seed, sample index)", "decoder": "mean",
        "quantization": "uint8 round(255 x)", "feature_extractor": extractor.describe(),
        "reference": {"path": str(stats_path), "name": stats["name"], "dataset": stats["dataset"],
                      "split": stats["split"], "n": stats["n"]},
        "statistics": "pooled mean/covariance over all samples; torch-fidelity fid_statistics_to_metric",
        "torch_fidelity_extractor": extractor.name,
    }
    metrics = {extractor.metric_name: math.nan, "nfe_mean": math.nan}
    if run.diverged:
        return metrics_record("fid", run, metrics, settings, device=dev, started=started)
    set_bn_mode(run.vae, bn_mode)
    try:
        feats, batches = sample_features(run, extractor, n_samples, batch_size, seed=seed, tolerance=tolerance,
                                         solver=solver, t_eps=t_eps, temperature=temperature,
                                         vae_temperature=vae_temperature, device=dev)
    except (FloatingPointError, AssertionError) as err:  # NaN samples / solver underflow: not a crash
        return metrics_record("fid", run, metrics, settings, status="diverged", reason=f"sampling failed: {err}",
                              device=dev, started=started)
    ref = {"mu": stats["mu"].numpy(), "sigma": stats["sigma"].numpy()}
    metrics[extractor.metric_name] = frechet_distance(feature_statistics(feats), ref)
    metrics["nfe_mean"] = float(np.mean([b.nfe for b in batches]))
    return metrics_record("fid", run, metrics, settings, device=dev, started=started)


# --------------------------------------------------------------------------------------------------
# `lsgm fid-stats`
# --------------------------------------------------------------------------------------------------


def _stats_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lsgm fid-stats", description="reference feature statistics for FID/FD "
                                "(training split, computed once per dataset)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--features", required=True, choices=["inception", "classifier"])
    p.add_argument("--classifier", help="classifier model.pt (lsgm train-classifier) for --features classifier")
    p.add_argument("--inception-weights", help=f"path of {INCEPTION_FILE} (offline); also ${INCEPTION_ENV}")
    p.add_argument("--root", help="dataset folder (paper-scale datasets)")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--max-samples", type=int, default=None, help="default: the whole split")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    """``lsgm fid-stats``: write reference statistics (exit 2 with a one-line error on bad input)."""
    args = _stats_parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
        extractor = make_extractor(args.features, args.classifier, args.inception_weights, device)
        stats = compute_reference_stats(args.dataset, extractor, root=args.root, batch_size=args.batch_size,
                                        max_samples=args.max_samples, split=args.split, device=device)
    except EvalError as err:
        print(f"lsgm fid-stats: error: {err}", file=sys.stderr)
        return 2
    atomic_torch_save(stats, Path(args.out))
    print(json.dumps({"out": args.out, "name": stats["name"], "n": stats["n"], "extractor": stats["extractor"]}))
    return 0

"""Reference statistics for FID / FD, as the official ``scripts/precompute_fid_statistics.py`` computes them
(:data:`lsgm.datasets_info.FID_REFERENCE`: CIFAR-10 and MNIST the training split, CelebA-HQ-256 and OMNIGLOT train +
validation, all at the files' 8 bits, binary data as grey levels, at most 50,000 images), the specification in the
file's name and metadata, validated on load; and the command that writes them, ``lsgm fid-stats``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset
from torch_fidelity.utils import get_featuresdict_from_dataset

from lsgm.datasets_info import FID_REFERENCE, FIDReference
from lsgm.eval.common import EvalError, load_user_file, quantize_uint8, resolve_device, to_rgb
from lsgm.eval.features import INCEPTION_ENV, INCEPTION_FILE, Extractor, make_extractor
from lsgm.eval.frechet import feature_statistics
from lsgm.io import OutputError, check_output, provenance
from lsgm.utils import atomic_torch_save

STATS_VERSION = 2  # 2: the official reference specification (splits, bits) in the name and metadata


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

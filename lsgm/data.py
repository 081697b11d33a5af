"""Datasets: the paper's (MNIST, OMNIGLOT, CIFAR-10, CelebA-HQ-256) and the offline digits stand-ins."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle
import shutil
import tarfile
import urllib.request
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.io import loadmat
from sklearn.datasets import load_digits
from torch.utils.data import Dataset
from torchvision.datasets import MNIST
from torchvision.datasets import mnist as mnist_reader
from torchvision.datasets.utils import download_url

from lsgm.datasets_info import DATASETS, EXPECTED_COUNTS, DatasetInfo  # noqa: F401  (re-exported)


# Offline digits: per class, the first DIGITS_TEST_PER_CLASS indices of a RandomState(DIGITS_SPLIT_SEED)
# permutation of that class form the test split (10 x 30 = 300 test, 1,497 train).
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_PER_CLASS = 30

# Official MD5 checksums. Source: torchvision 0.29.2 (`torchvision.datasets.MNIST.resources`,
# `CIFAR10.tgz_md5`, `CIFAR10.train_list/test_list`), i.e. the values torchvision itself verifies
# downloads against; tests/test_data.py checks that these tables still equal torchvision's.
MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_FILES: dict[str, tuple[str, str]] = {  # split -> (images, labels), uncompressed names
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR10_FILES: dict[str, tuple[str, ...]] = {
    "train": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
    "test": ("test_batch",),
}

# OMNIGLOT (IWAE split). No official checksum is published for chardata.mat and we do not know one
# with certainty, so the file is verified by parsing it and checking the array shapes
# (`data` 784 x 24,345, `testdata` 784 x 8,070, values in [0, 1]) -- never by an invented checksum.
OMNIGLOT_URL = "https://raw.github.com/yburda/iwae/master/datasets/OMNIGLOT/chardata.mat"
OMNIGLOT_FILE = "chardata.mat"
OMNIGLOT_KEYS = {"train": "data", "test": "testdata"}

CELEBA_FOLDERS = {"train": "train", "test": "validation"}
CELEBA_SUFFIXES = (".png", ".jpg", ".jpeg")
CELEBA_SIZE = 256
CELEBA_BITS = 5

_DOWNLOAD_HINT = "or pass download=True (config data.download: true)"


class DatasetError(RuntimeError):
    """A dataset that cannot be used: missing or corrupt files. The one-line message says the fix."""


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name`` (one of :data:`DATASETS`)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def get_dataset(
    name: str,
    split: Literal["train", "test"],
    root: str | os.PathLike | None = None,
    download: bool = False,
    augment: bool = True,
) -> Dataset:
    """The ``split`` of dataset ``name`` as a map-style dataset of ``(x, label)`` items.

    ``x`` is float32 ``[C, H, W]`` in [0, 1] (in {0, 1} for binary data), ``label`` an int (-1 when the
    dataset has none). Random horizontal flips (CIFAR-10, CelebA) are applied to the training split
    only and only when ``augment``.

    Dynamic binarization (``digits_binary``, ``mnist``, ``omniglot``; train AND test, as the official
    code) draws ``x ~ Bernoulli(p)`` anew on every access with ``torch.bernoulli`` on torch's default
    generator, as do the flips (``torch.rand``). So a run is reproducible under ``torch.manual_seed``
    and resumable by saving/restoring ``torch.get_rng_state()``; with DataLoader workers, each worker's
    torch seed is derived from the main process's generator when the iterator is created.

    ``digits``/``digits_binary``: scikit-learn's bundled 1,797 8x8 digits with a FIXED stratified split
    (per class, the first 30 of a ``numpy.random.RandomState(0)`` permutation are test): 1,497 train /
    300 test, identical on every call; ``root``/``download`` are ignored. The paper datasets live
    under ``root`` (``MNIST/raw``, ``omniglot/chardata.mat``, ``cifar-10-batches-py``,
    ``celeba256/{train,validation}``); files are checksum- or parse-verified, and missing or corrupt
    files raise :class:`DatasetError` naming the file, the folder and the fix.
    """
    info = dataset_info(name)
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    flip = augment and split == "train"
    if name in ("digits", "digits_binary"):
        images, labels = _load_digits(split)
        return ImageDataset(images, labels, max_value=16, binarize=info.binary)
    folder = _require_root(name, root)
    if name == "mnist":
        images, labels = _load_mnist(folder, split, download)
        return ImageDataset(images, labels, pad=2, binarize=True)
    if name == "omniglot":
        return ImageDataset(_load_omniglot(folder, split, download), None, pad=2, binarize=True)
    if name == "cifar10":
        images, labels = _load_cifar10(folder, split, download)
        return ImageDataset(images, labels, flip=flip)
    return ImageDataset(_celeba_images(folder, split), None, flip=flip, bits=CELEBA_BITS)


class ImageDataset(Dataset):
    """``(x, label)`` items from uint8 images ``[C, H, W]``, transformed on every access.

    The transform is: optional bit reduction ``floor(v / 2^(8 - bits))`` (the official
    ``floor(x * 255 / 2^(8 - bits))`` computed on the integers, so it is exact), scaling to [0, 1] by the
    maximal raw value, zero padding by ``pad`` pixels, a random horizontal flip when ``flip``, and
    ``torch.bernoulli`` when ``binarize``. ``images`` is a uint8 tensor ``[N, C, H, W]`` or any indexable
    object of length N returning such ``[C, H, W]`` tensors (lazy image files).
    """

    def __init__(self, images, labels: torch.Tensor | None, *, max_value: int = 255, pad: int = 0,
                 flip: bool = False, bits: int = 8, binarize: bool = False):
        self.images, self.labels = images, labels
        self.shift = 8 - bits
        self.max_value = max_value if bits == 8 else 2**bits - 1
        self.pad, self.flip, self.binarize = pad, flip, binarize

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raw = self.images[index]  # uint8 [C, H, W]
        x = (raw >> self.shift).float() / self.max_value
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)  # [C, H + 2 pad, W + 2 pad]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.binarize:
            x = torch.bernoulli(x)
        label = -1 if self.labels is None else int(self.labels[index])
        return x, label


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def _require_root(name: str, root: str | os.PathLike | None) -> Path:
    if root is None:
        raise DatasetError(f"{name}: no dataset folder given; pass root=DIR (config data.root)")
    return Path(root).expanduser()


def md5sum(path: Path) -> str:
    """Hex MD5 of the file at ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _corrupt(name: str, path: Path, why: str) -> DatasetError:
    why = " ".join(str(why).split())  # one line
    return DatasetError(f"{name}: corrupt file {path} ({why}); delete it and re-fetch it")


def _verify_md5(name: str, path: Path, expected: str) -> None:
    actual = md5sum(path)
    if actual != expected:
        raise _corrupt(name, path, f"md5 {actual}, expected {expected}")


def _missing(name: str, folder: Path, files: dict[str, str], source: str, hint: str = _DOWNLOAD_HINT):
    listed = ", ".join(f"{f} ({check})" for f, check in files.items())
    return DatasetError(f"{name}: missing {listed}; put them in {folder} (from {source}) {hint}")


def _check_count(name: str, split: str, n: int, where: Path) -> None:
    expected = EXPECTED_COUNTS[name][split]
    if n != expected:
        raise DatasetError(f"{name}: {split} split in {where} has {n} images, expected {expected}; "
                           f"the data is incomplete or not the official release: delete it and re-fetch it")


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


# --------------------------------------------------------------------------------------------------
# digits (scikit-learn, offline)
# --------------------------------------------------------------------------------------------------


def digits_split_indices(targets: np.ndarray, split: str) -> np.ndarray:
    """Sorted indices of the fixed stratified digits ``split`` (see :data:`DIGITS_TEST_PER_CLASS`)."""
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)  # RandomState streams are frozen across numpy versions
    test = np.concatenate([rng.permutation(np.flatnonzero(targets == c))[:DIGITS_TEST_PER_CLASS]
                           for c in range(10)])
    if split == "test":
        return np.sort(test)
    return np.setdiff1d(np.arange(len(targets)), test)


def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``[N, 1, 8, 8]`` with values 0..16 and int64 labels ``[N]``."""
    digits = load_digits()
    index = digits_split_indices(digits.target, split)
    images = torch.from_numpy(digits.images[index].astype(np.uint8)).unsqueeze(1)  # [N, 1, 8, 8]
    return images, torch.from_numpy(digits.target[index].astype(np.int64))


# --------------------------------------------------------------------------------------------------
# MNIST (IDX files, torchvision layout <root>/MNIST/raw)
# --------------------------------------------------------------------------------------------------


def _load_mnist(root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 1, 28, 28]`` uint8 and labels ``[N]`` from the IDX files of ``split``.

    A ``.gz`` file present in the raw folder is always verified against its official MD5 (and
    extracted when the uncompressed file is missing); the uncompressed files are verified by parsing
    (IDX header and size) and by the expected image count.
    """
    raw = root / "MNIST" / "raw"
    names = MNIST_FILES[split]
    if download and not all((raw / n).exists() or (raw / f"{n}.gz").exists() for n in names):
        _download_mnist(root, raw, split)
    paths = [_mnist_file(raw, n, split) for n in names]
    images = _parse(paths[0], "mnist", mnist_reader.read_image_file)
    labels = _parse(paths[1], "mnist", mnist_reader.read_label_file)
    if images.shape[1:] != (28, 28) or len(labels) != len(images) or bool((labels > 9).any()):
        raise _corrupt("mnist", raw, f"images {tuple(images.shape)} do not match labels {tuple(labels.shape)}")
    _check_count("mnist", split, len(images), raw)
    return images.unsqueeze(1), labels  # [N, 1, 28, 28], [N]


def _mnist_file(raw: Path, name: str, split: str) -> Path:
    """The uncompressed IDX file ``name``, after verifying (and if needed extracting) its ``.gz``."""
    path, gz = raw / name, raw / f"{name}.gz"
    if gz.exists():
        _verify_md5("mnist", gz, MNIST_MD5[gz.name])
        if not path.exists():
            _gunzip("mnist", gz, path)
    if not path.exists():
        wanted = {f"{n}.gz": f"md5 {MNIST_MD5[n + '.gz']}" for n in MNIST_FILES[split]}
        raise _missing("mnist", raw, wanted, MNIST_URLS[0])
    return path


def _gunzip(name: str, gz: Path, out: Path) -> None:
    tmp = out.with_name(out.name + ".part")
    try:
        with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (OSError, EOFError) as err:
        tmp.unlink(missing_ok=True)
        raise _corrupt(name, gz, _one_line(err)) from err
    os.replace(tmp, out)


def _download_mnist(root: Path, raw: Path, split: str) -> None:
    try:
        MNIST(str(root), train=split == "train", download=True)
    except (OSError, RuntimeError) as err:
        wanted = {f"{n}.gz": f"md5 {MNIST_MD5[n + '.gz']}" for n in MNIST_FILES[split]}
        hint = f"by hand; download failed: {_one_line(err)}"
        raise _missing("mnist", raw, wanted, MNIST_URLS[0], hint) from err


def _parse(path: Path, name: str, reader):
    """``reader(path)``, turning any parse failure of a truncated or garbage file into DatasetError."""
    try:
        return reader(str(path))
    except Exception as err:  # noqa: BLE001 -- any failure to parse means the file is unusable
        raise _corrupt(name, path, _one_line(err)) from err


# --------------------------------------------------------------------------------------------------
# CIFAR-10 (python pickles, <root>/cifar-10-batches-py)
# --------------------------------------------------------------------------------------------------


def _load_cifar10(root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 3, 32, 32]`` uint8 and labels ``[N]``; every batch file is MD5-verified.

    If batch files are missing, ``<root>/cifar-10-python.tar.gz`` is used (fetched first when
    ``download``): its MD5 is verified, then it is extracted.
    """
    folder = root / CIFAR10_FOLDER
    names = CIFAR10_FILES[split]
    if not all((folder / n).exists() for n in names):
        _cifar10_from_archive(root, download)
    batches = [_cifar10_batch(folder / n) for n in names]
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    _check_count("cifar10", split, len(images), folder)
    return images, labels


def _cifar10_from_archive(root: Path, download: bool) -> None:
    archive = root / CIFAR10_ARCHIVE
    if download and not archive.exists():
        try:
            download_url(CIFAR10_URL, str(root), filename=CIFAR10_ARCHIVE, md5=CIFAR10_ARCHIVE_MD5)
        except (OSError, RuntimeError) as err:
            raise _missing("cifar10", root, {CIFAR10_ARCHIVE: f"md5 {CIFAR10_ARCHIVE_MD5}"}, CIFAR10_URL,
                           f"by hand; download failed: {_one_line(err)}") from err
    if not archive.exists():
        raise _missing("cifar10", root, {CIFAR10_ARCHIVE: f"md5 {CIFAR10_ARCHIVE_MD5}"}, CIFAR10_URL)
    _verify_md5("cifar10", archive, CIFAR10_ARCHIVE_MD5)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
    except (OSError, EOFError, tarfile.TarError) as err:
        raise _corrupt("cifar10", archive, _one_line(err)) from err


def _cifar10_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One verified pickle batch: images ``[n, 3, 32, 32]`` uint8, labels ``[n]`` int64."""
    if not path.exists():
        raise _missing("cifar10", path.parent, {path.name: f"md5 {CIFAR10_MD5[path.name]}"}, CIFAR10_URL)
    _verify_md5("cifar10", path, CIFAR10_MD5[path.name])
    entry = _parse(path, "cifar10", _unpickle)
    data, labels = np.asarray(entry.get("data")), np.asarray(entry.get("labels"), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise _corrupt("cifar10", path, f"unexpected arrays data {data.shape} labels {labels.shape}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # [n, 3, 32, 32], channel-major rows
    return images, torch.from_numpy(labels)


def _unpickle(path: str) -> dict:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    if not isinstance(entry, dict):
        raise TypeError(f"expected a dict, got {type(entry).__name__}")
    return entry


# --------------------------------------------------------------------------------------------------
# OMNIGLOT (IWAE chardata.mat, <root>/omniglot/chardata.mat)
# --------------------------------------------------------------------------------------------------


def _load_omniglot(root: Path, split: str, download: bool) -> torch.Tensor:
    """Images ``[N, 1, 28, 28]`` uint8 from ``chardata.mat``, reshaped as the official code does."""
    path = root / "omniglot" / OMNIGLOT_FILE
    if download and not path.exists():
        _fetch_omniglot(path)
    if not path.exists():
        raise _missing("omniglot", path.parent, {OMNIGLOT_FILE: "verified by parsing and array shapes"},
                       OMNIGLOT_URL)
    arrays = _parse(path, "omniglot", _read_chardata)
    _check_count("omniglot", split, arrays[split].shape[1], path)
    flat = arrays[split].astype(np.float32)  # [784, N]
    images = (255 * flat.reshape(28, 28, -1).transpose(2, 1, 0)).astype(np.uint8)  # [N, 28, 28]
    return torch.from_numpy(images).unsqueeze(1)  # [N, 1, 28, 28]


def _read_chardata(path: str) -> dict[str, np.ndarray]:
    """``{"train": data, "test": testdata}`` (each ``[784, N]`` in [0, 1]) from a chardata.mat file."""
    mat = loadmat(path)
    arrays = {split: np.asarray(mat[key]) for split, key in OMNIGLOT_KEYS.items()}
    for split, arr in arrays.items():
        if arr.ndim != 2 or arr.shape[0] != 784 or arr.size == 0 or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"{OMNIGLOT_KEYS[split]} has shape {arr.shape}, expected 784 x N in [0, 1]")
    return arrays


def _fetch_omniglot(path: Path) -> None:
    """Download chardata.mat to ``path``; kept only if it parses with the official array shapes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(OMNIGLOT_URL, timeout=60) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _missing("omniglot", path.parent, {OMNIGLOT_FILE: "verified by parsing and array shapes"},
                       OMNIGLOT_URL, f"by hand; download failed: {_one_line(err)}") from err
    try:
        arrays = _parse(tmp, "omniglot", _read_chardata)
        for split, arr in arrays.items():
            _check_count("omniglot", split, arr.shape[1], tmp)
    except DatasetError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# CelebA-HQ-256 (prepared image folder or LMDB, <root>/celeba256)
# --------------------------------------------------------------------------------------------------


def _celeba_images(root: Path, split: str):
    """Lazy 256 x 256 RGB images of ``split`` from ``<root>/celeba256/<train|validation>`` (images or LMDB).

    The image folder (``*.png``/``*.jpg``, in sorted file-name order) is preferred; otherwise
    ``<root>/celeba256/<train|validation>.lmdb`` (the official converter's raw RGB bytes keyed by index)
    is used when the ``lmdb`` package is importable. There is no download: CelebA-HQ must be prepared.
    """
    base = root / "celeba256"
    folder = base / CELEBA_FOLDERS[split]
    lmdb_path = base / f"{CELEBA_FOLDERS[split]}.lmdb"
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in CELEBA_SUFFIXES)
        _check_count("celeba256", split, len(files), folder)
        return ImageFiles(files)
    if lmdb_path.exists() and importlib.util.find_spec("lmdb") is not None:
        images = LmdbImages(lmdb_path)
        _check_count("celeba256", split, len(images), lmdb_path)
        return images
    raise DatasetError(f"celeba256: missing {folder} (*.png or *.jpg, {CELEBA_SIZE}x{CELEBA_SIZE} RGB) and "
                       f"{lmdb_path} (needs the lmdb package); prepare CelebA-HQ-256 "
                       f"({EXPECTED_COUNTS['celeba256']['train']}/{EXPECTED_COUNTS['celeba256']['test']} "
                       f"train/validation) there; download=True cannot fetch it")


def _check_image(path, image: np.ndarray) -> torch.Tensor:
    if image.shape != (CELEBA_SIZE, CELEBA_SIZE, 3):
        raise DatasetError(f"celeba256: {path} has shape {image.shape}, expected "
                           f"({CELEBA_SIZE}, {CELEBA_SIZE}, 3); re-prepare the dataset")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # [3, H, W]


class ImageFiles:
    """Indexable list of image files, decoded on access to uint8 ``[3, 256, 256]`` tensors."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
        except OSError as err:
            raise _corrupt("celeba256", path, _one_line(err)) from err
        return _check_image(path, array)


class LmdbImages:
    """Indexable LMDB of raw RGB bytes keyed by ``str(index)``; the environment opens lazily per process."""

    def __init__(self, path: Path):
        self.path, self._env = path, None
        self._length = self._open().stat()["entries"]

    def _open(self):
        if self._env is None:
            import lmdb  # optional dependency, only needed for this format

            self._env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False, meminit=False)
        return self._env

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_env": None}  # LMDB handles must not cross process boundaries

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> torch.Tensor:
        with self._open().begin(write=False) as txn:
            data = txn.get(str(index).encode())
        if data is None or len(data) != 3 * CELEBA_SIZE * CELEBA_SIZE:
            raise _corrupt("celeba256", self.path, f"entry {index} missing or of the wrong size")
        array = np.frombuffer(data, dtype=np.uint8).reshape(CELEBA_SIZE, CELEBA_SIZE, 3)
        return _check_image(f"{self.path}[{index}]", array)

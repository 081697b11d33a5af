"""CIFAR-10: the python pickles in ``<root>/cifar-10-batches-py`` (or the verified archive), flipped in training."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.utils import download_url

from lsgm.data.common import (
    ImageDataset,
    check_count,
    corrupt,
    is_official,
    md5sum,
    missing,
    missing_unofficial,
    one_line,
    parse_file,
    require_root,
    verify_md5,
)
from lsgm.datasets_info import DatasetInfo

# Official MD5 checksums. Source: torchvision 0.29.2 (`CIFAR10.tgz_md5`, `CIFAR10.train_list/test_list`),
# the values torchvision itself verifies downloads against; tests/test_data.py checks they still agree.
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


def load(info: DatasetInfo, split: str, root, download: bool, flip: bool,
         expected_size: int | None = None) -> ImageDataset:
    """8-bit RGB images with their labels; random horizontal flips when ``flip``."""
    images, labels = _load_cifar10(require_root(info.name, root), split, download, expected_size)
    return ImageDataset(images, labels, flip=flip)


def _load_cifar10(root: Path, split: str, download: bool,
                  expected_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 3, 32, 32]`` uint8 and labels ``[N]``; every batch file is MD5-verified at the official size.

    If batch files are missing, ``<root>/cifar-10-python.tar.gz`` is used (fetched first when
    ``download``): its MD5 is verified, then it is extracted. A split of a non-official ``expected_size`` (a
    miniature) has no official checksum to match: its batches are verified by unpickling, array shapes and the
    count, and it is never downloaded.
    """
    official = is_official("cifar10", split, expected_size)
    folder = root / CIFAR10_FOLDER
    names = CIFAR10_FILES[split]
    if not all((folder / n).exists() for n in names):
        if not official and not (root / CIFAR10_ARCHIVE).exists():
            raise missing_unofficial("cifar10", folder, [n for n in names if not (folder / n).exists()], split,
                                     expected_size)
        _cifar10_from_archive(root, download, official)
    batches = [_cifar10_batch(folder / n, official) for n in names]
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    check_count("cifar10", split, len(images), folder, None if official else expected_size)
    return images, labels


def _cifar10_from_archive(root: Path, download: bool, official: bool = True) -> None:
    """Extract ``<root>/cifar-10-python.tar.gz``, MD5-verified (and fetched when ``download``) if ``official``."""
    archive = root / CIFAR10_ARCHIVE
    if download and not archive.exists():
        try:
            download_url(CIFAR10_URL, str(root), filename=CIFAR10_ARCHIVE, md5=CIFAR10_ARCHIVE_MD5)
        except (OSError, RuntimeError) as err:
            why = one_line(err)
            if archive.exists():  # downloaded, but not the official archive: say so, and do not keep it
                why = f"the downloaded file has md5 {md5sum(archive)}, expected {CIFAR10_ARCHIVE_MD5}"
                archive.unlink()
            raise missing("cifar10", root, {CIFAR10_ARCHIVE: f"md5 {CIFAR10_ARCHIVE_MD5}"}, CIFAR10_URL,
                           f"by hand; download failed: {why}") from err
    if not archive.exists():
        raise missing("cifar10", root, {CIFAR10_ARCHIVE: f"md5 {CIFAR10_ARCHIVE_MD5}"}, CIFAR10_URL)
    if official:
        verify_md5("cifar10", archive, CIFAR10_ARCHIVE_MD5)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
    except (OSError, EOFError, tarfile.TarError) as err:
        raise corrupt("cifar10", archive, one_line(err)) from err


def _cifar10_batch(path: Path, official: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One verified pickle batch: images ``[n, 3, 32, 32]`` uint8, labels ``[n]`` int64 (MD5 if ``official``)."""
    if not path.exists():
        if not official:
            raise corrupt("cifar10", path.parent.parent / CIFAR10_ARCHIVE, f"{path.name} is not in the archive")
        raise missing("cifar10", path.parent, {path.name: f"md5 {CIFAR10_MD5[path.name]}"}, CIFAR10_URL)
    if official:
        verify_md5("cifar10", path, CIFAR10_MD5[path.name])
    entry = parse_file(path, "cifar10", _unpickle)
    data, labels = np.asarray(entry.get("data")), np.asarray(entry.get("labels"), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise corrupt("cifar10", path, f"unexpected arrays data {data.shape} labels {labels.shape}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # [n, 3, 32, 32], channel-major rows
    return images, torch.from_numpy(labels)


def _unpickle(path: str) -> dict:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    if not isinstance(entry, dict):
        raise TypeError(f"expected a dict, got {type(entry).__name__}")
    return entry

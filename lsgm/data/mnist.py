"""MNIST: the IDX files in torchvision's layout ``<root>/MNIST/raw``, padded to 32 x 32, dynamically binarized."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import torch
from torchvision.datasets import MNIST
from torchvision.datasets import mnist as mnist_reader

from lsgm.data.common import (
    ImageDataset,
    check_count,
    corrupt,
    is_official,
    missing,
    missing_unofficial,
    one_line,
    parse_file,
    require_root,
    verify_md5,
)
from lsgm.datasets_info import DatasetInfo

# Official MD5 checksums. Source: torchvision 0.29.2 (`torchvision.datasets.MNIST.resources`), i.e. the values
# torchvision itself verifies downloads against; tests/test_data.py checks that this table still equals torchvision's.
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


def load(info: DatasetInfo, split: str, root, download: bool, flip: bool,
         expected_size: int | None = None) -> ImageDataset:
    """Train or test images padded by 2 pixels (28 -> 32), binarized on every access; never flipped."""
    images, labels = _load_mnist(require_root(info.name, root), split, download, expected_size)
    return ImageDataset(images, labels, pad=2, binarize=True)


def _load_mnist(root: Path, split: str, download: bool,
                expected_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 1, 28, 28]`` uint8 and labels ``[N]`` from the IDX files of ``split``.

    A ``.gz`` file present in the raw folder is always verified against its official MD5 (and
    extracted when the uncompressed file is missing); the uncompressed files are verified by parsing
    (IDX header and size) and by the expected image count. A split of a non-official ``expected_size`` (a
    miniature) cannot match the official MD5s: its ``.gz`` files are only extracted (a truncated one fails its
    CRC), and it is never downloaded.
    """
    official = is_official("mnist", split, expected_size)
    raw = root / "MNIST" / "raw"
    names = MNIST_FILES[split]
    if official and download and not all((raw / n).exists() or (raw / f"{n}.gz").exists() for n in names):
        _download_mnist(root, raw, split)
    paths = [_mnist_file(raw, n, split, None if official else expected_size) for n in names]
    images = parse_file(paths[0], "mnist", mnist_reader.read_image_file)
    labels = parse_file(paths[1], "mnist", mnist_reader.read_label_file)
    if images.shape[1:] != (28, 28) or len(labels) != len(images) or bool((labels > 9).any()):
        raise corrupt("mnist", raw, f"images {tuple(images.shape)} do not match labels {tuple(labels.shape)}")
    check_count("mnist", split, len(images), raw, None if official else expected_size)
    return images.unsqueeze(1), labels  # [N, 1, 28, 28], [N]


def _mnist_file(raw: Path, name: str, split: str, unofficial_size: int | None = None) -> Path:
    """The uncompressed IDX file ``name``, after verifying (and if needed extracting) its ``.gz`` (no MD5 for a
    split of a non-official size ``unofficial_size``)."""
    path, gz = raw / name, raw / f"{name}.gz"
    if gz.exists():
        if unofficial_size is None:
            verify_md5("mnist", gz, MNIST_MD5[gz.name])
        if not path.exists():
            _gunzip("mnist", gz, path)
    if not path.exists() and unofficial_size is not None:
        raise missing_unofficial("mnist", raw, [f"{name}.gz"], split, unofficial_size)
    if not path.exists():
        wanted = {f"{n}.gz": f"md5 {MNIST_MD5[n + '.gz']}" for n in MNIST_FILES[split]}
        raise missing("mnist", raw, wanted, MNIST_URLS[0])
    return path


def _gunzip(name: str, gz: Path, out: Path) -> None:
    tmp = out.with_name(f"{out.name}.{os.getpid()}.part")  # per process: parallel jobs may extract at once
    try:
        with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (OSError, EOFError) as err:
        tmp.unlink(missing_ok=True)
        raise corrupt(name, gz, one_line(err)) from err
    os.replace(tmp, out)


def _download_mnist(root: Path, raw: Path, split: str) -> None:
    try:
        MNIST(str(root), train=split == "train", download=True)
    except (OSError, RuntimeError) as err:
        wanted = {f"{n}.gz": f"md5 {MNIST_MD5[n + '.gz']}" for n in MNIST_FILES[split]}
        hint = f"by hand; download failed: {one_line(err)}"
        raise missing("mnist", raw, wanted, MNIST_URLS[0], hint) from err

"""Offline digits: scikit-learn's bundled 1,797 8x8 images (17 grey levels), continuous or dynamically binarized.

A FIXED stratified split (per class, the first 30 of a ``numpy.random.RandomState(0)`` permutation are test):
1,497 train / 300 test, identical on every call; ``root``/``download`` are ignored.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from lsgm.data.common import ImageDataset
from lsgm.datasets_info import DatasetInfo

# Offline digits: per class, the first DIGITS_TEST_PER_CLASS indices of a RandomState(DIGITS_SPLIT_SEED)
# permutation of that class form the test split (10 x 30 = 300 test, 1,497 train).
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_PER_CLASS = 30


def load(info: DatasetInfo, split: str, root, download: bool, flip: bool,
         expected_size: int | None = None) -> ImageDataset:
    """``digits`` (grey levels) or ``digits_binary`` (dynamically binarized); never flipped. ``expected_size`` is
    ignored: the split is fixed (1,497 / 300)."""
    images, labels = _load_digits(split)
    return ImageDataset(images, labels, max_value=16, binarize=info.binary)


def digits_split_indices(targets: np.ndarray, split: str) -> np.ndarray:
    """Sorted indices of the fixed stratified digits ``split`` (see :data:`DIGITS_TEST_PER_CLASS`)."""
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)  # RandomState streams are frozen across numpy versions
    test = np.concatenate([rng.permutation(np.flatnonzero(targets == c))[:DIGITS_TEST_PER_CLASS]
                           for c in range(10)])
    if split == "test":
        return np.sort(test)
    return np.setdiff1d(np.arange(len(targets)), test)


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as ``(images [1797, 8, 8] uint8 0..16, targets [1797] int64)``, read from its
    data file (``sklearn/datasets/data/digits.csv.gz``: 64 pixels then the label per line, as
    ``sklearn.datasets.load_digits`` reads it) without importing scikit-learn, which costs ~1.6 s per process."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the digits stand-in reads scikit-learn's bundled data: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8).astype(np.uint8), data[:, -1].astype(np.int64)


def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``[N, 1, 8, 8]`` with values 0..16 and int64 labels ``[N]``."""
    images, targets = read_digits()
    index = digits_split_indices(targets, split)
    return torch.from_numpy(images[index]).unsqueeze(1), torch.from_numpy(targets[index])  # [N, 1, 8, 8], [N]

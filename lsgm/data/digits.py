"""Offline digits: scikit-learn's bundled 1,797 8x8 images (17 grey levels), continuous or dynamically binarized.

A FIXED stratified split (per class, the first 30 of a ``numpy.random.RandomState(0)`` permutation are test):
1,497 train / 300 test, identical on every call; ``root``/``download`` are ignored.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from lsgm.data.common import ImageDataset
from lsgm.datasets_info import DatasetInfo

# Offline digits: per class, the first DIGITS_TEST_PER_CLASS indices of a RandomState(DIGITS_SPLIT_SEED)
# permutation of that class form the test split (10 x 30 = 300 test, 1,497 train).
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_PER_CLASS = 30


def load(info: DatasetInfo, split: str, root, download: bool, flip: bool) -> ImageDataset:
    """``digits`` (grey levels) or ``digits_binary`` (dynamically binarized); never flipped."""
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


def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``[N, 1, 8, 8]`` with values 0..16 and int64 labels ``[N]``."""
    digits = load_digits()
    index = digits_split_indices(digits.target, split)
    images = torch.from_numpy(digits.images[index].astype(np.uint8)).unsqueeze(1)  # [N, 1, 8, 8]
    return images, torch.from_numpy(digits.target[index].astype(np.int64))

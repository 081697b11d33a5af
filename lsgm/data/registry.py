"""Dataset name -> loader: the one place a dataset is wired in (its facts live in :mod:`lsgm.datasets_info`)."""

from __future__ import annotations

import importlib
import os
from typing import Callable, Literal

from torch.utils.data import Dataset

from lsgm.data.common import DatasetError
from lsgm.datasets_info import DATASETS, DatasetInfo

# loader(info, split, root, download, flip, expected_size) -> map-style dataset of (x, label)
Loader = Callable[[DatasetInfo, str, "str | os.PathLike | None", bool, bool, "int | None"], Dataset]

# Dataset name -> the module (under lsgm.data) whose ``load`` reads it. Imported on first use: torchvision and
# scipy cost seconds per process, and every DAG job is a process (the digits stand-ins need neither).
LOADERS: dict[str, str] = {
    "digits": "digits",
    "digits_binary": "digits",
    "mnist": "mnist",
    "omniglot": "omniglot",
    "cifar10": "cifar10",
    "celeba256": "celeba",
}


def loader(name: str) -> Loader:
    """The ``load`` function of dataset ``name``'s module."""
    return importlib.import_module(f"lsgm.data.{LOADERS[name]}").load


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
    expected_size: int | None = None,
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

    ``expected_size``: the split's image count when it is not the official one (a miniature, ``lsgm make-data``;
    the run config's ``data.n_train`` / ``data.n_test``). The official checksums are of the official release, so
    such a split is verified by parsing, array shapes and that count, and never downloaded; None (the official
    size) keeps every official check. The digits stand-ins ignore it.
    """
    info = dataset_info(name)
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    if expected_size is not None and (isinstance(expected_size, bool) or not isinstance(expected_size, int)
                                      or expected_size < 1):
        raise DatasetError(f"expected_size must be an integer >= 1 or None, got {expected_size!r}")
    return loader(name)(info, split, root, download, augment and split == "train", expected_size)

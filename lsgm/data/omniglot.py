"""OMNIGLOT: the IWAE split's ``chardata.mat`` in ``<root>/omniglot``, padded to 32 x 32, dynamically binarized."""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import torch
from scipy.io import loadmat

from lsgm.data.common import (
    DatasetError,
    ImageDataset,
    check_count,
    is_official,
    missing,
    missing_unofficial,
    one_line,
    parse_file,
    require_root,
)
from lsgm.datasets_info import DatasetInfo

# OMNIGLOT (IWAE split). No official checksum is published for chardata.mat and we do not know one
# with certainty, so the file is verified by parsing it and checking the array shapes
# (`data` 784 x 24,345, `testdata` 784 x 8,070, values in [0, 1]) -- never by an invented checksum.
OMNIGLOT_URL = "https://raw.github.com/yburda/iwae/master/datasets/OMNIGLOT/chardata.mat"
OMNIGLOT_FILE = "chardata.mat"
OMNIGLOT_KEYS = {"train": "data", "test": "testdata"}


def load(info: DatasetInfo, split: str, root, download: bool, flip: bool,
         expected_size: int | None = None) -> ImageDataset:
    """Unlabelled images padded by 2 pixels (28 -> 32), binarized on every access; never flipped."""
    images = _load_omniglot(require_root(info.name, root), split, download, expected_size)
    return ImageDataset(images, None, pad=2, binarize=True)


def _load_omniglot(root: Path, split: str, download: bool, expected_size: int | None = None) -> torch.Tensor:
    """Images ``[N, 1, 28, 28]`` uint8 from ``chardata.mat``, reshaped as the official code does.

    A split of a non-official ``expected_size`` (a miniature) is checked against that count and never downloaded.
    """
    official = is_official("omniglot", split, expected_size)
    path = root / "omniglot" / OMNIGLOT_FILE
    if official and download and not path.exists():
        _fetch_omniglot(path)
    if not path.exists() and not official:
        raise missing_unofficial("omniglot", path.parent, [OMNIGLOT_FILE], split, expected_size)
    if not path.exists():
        raise missing("omniglot", path.parent, {OMNIGLOT_FILE: "verified by parsing and array shapes"},
                       OMNIGLOT_URL)
    arrays = parse_file(path, "omniglot", _read_chardata)
    check_count("omniglot", split, arrays[split].shape[1], path, None if official else expected_size)
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
        raise missing("omniglot", path.parent, {OMNIGLOT_FILE: "verified by parsing and array shapes"},
                       OMNIGLOT_URL, f"by hand; download failed: {one_line(err)}") from err
    try:
        arrays = parse_file(tmp, "omniglot", _read_chardata)
        for split, arr in arrays.items():
            check_count("omniglot", split, arr.shape[1], tmp)
    except DatasetError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)

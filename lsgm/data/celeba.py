"""CelebA-HQ-256: a prepared image folder or LMDB in ``<root>/celeba256`` (27k/3k split), 5-bit, flipped in training.

There is no download: CelebA-HQ must be prepared.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lsgm.data.common import DatasetError, ImageDataset, check_count, corrupt, is_official, one_line, require_root
from lsgm.datasets_info import EXPECTED_COUNTS, DatasetInfo

CELEBA_FOLDERS = {"train": "train", "test": "validation"}
CELEBA_SUFFIXES = (".png", ".jpg", ".jpeg")
CELEBA_SIZE = 256
CELEBA_BITS = 5


def load(info: DatasetInfo, split: str, root, download: bool, flip: bool,
         expected_size: int | None = None) -> ImageDataset:
    """Lazily decoded images reduced to 5 bits; random horizontal flips when ``flip``."""
    images = _celeba_images(require_root(info.name, root), split, expected_size)
    return ImageDataset(images, None, flip=flip, bits=CELEBA_BITS)


def _celeba_images(root: Path, split: str, expected_size: int | None = None):
    """Lazy 256 x 256 RGB images of ``split`` from ``<root>/celeba256/<train|validation>`` (images or LMDB).

    The image folder (``*.png``/``*.jpg``, in sorted file-name order) is preferred; otherwise
    ``<root>/celeba256/<train|validation>.lmdb`` (the official converter's raw RGB bytes keyed by index)
    is used when the ``lmdb`` package is importable. There is no download: CelebA-HQ must be prepared.
    There is no checksum either, so a non-official ``expected_size`` (a miniature) only changes the count checked.
    """
    size = None if is_official("celeba256", split, expected_size) else expected_size
    base = root / "celeba256"
    folder = base / CELEBA_FOLDERS[split]
    lmdb_path = base / f"{CELEBA_FOLDERS[split]}.lmdb"
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in CELEBA_SUFFIXES)
        check_count("celeba256", split, len(files), folder, size)
        return ImageFiles(files)
    if lmdb_path.exists() and importlib.util.find_spec("lmdb") is not None:
        images = LmdbImages(lmdb_path)
        check_count("celeba256", split, len(images), lmdb_path, size)
        return images
    counts = (f"{EXPECTED_COUNTS['celeba256']['train']}/{EXPECTED_COUNTS['celeba256']['test']} train/validation"
              if size is None else f"{size} {CELEBA_FOLDERS[split]} images, data.n_{split}")
    raise DatasetError(f"celeba256: missing {folder} (*.png or *.jpg, {CELEBA_SIZE}x{CELEBA_SIZE} RGB) and "
                       f"{lmdb_path} (needs the lmdb package); prepare CelebA-HQ-256 ({counts}) there "
                       f"(a miniature: lsgm make-data); download=True cannot fetch it")


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
            raise corrupt("celeba256", path, one_line(err)) from err
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
            raise corrupt("celeba256", self.path, f"entry {index} missing or of the wrong size")
        array = np.frombuffer(data, dtype=np.uint8).reshape(CELEBA_SIZE, CELEBA_SIZE, 3)
        return _check_image(f"{self.path}[{index}]", array)

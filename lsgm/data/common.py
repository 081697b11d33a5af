"""What every dataset shares: the error type, the per-access image transform, and the file checks.

Files are checksum- or parse-verified; a missing or corrupt file raises :class:`DatasetError` with one line
naming the file, the folder and the fix.

A split of a non-official size (``expected_size``, the run config's ``data.n_train`` / ``data.n_test``, e.g. a
miniature written by ``lsgm make-data``) cannot match the official checksums, which are of the official release:
its files are verified by parsing, array shapes and the count only, and it is never downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lsgm.datasets_info import EXPECTED_COUNTS
from lsgm.io import file_digest

DOWNLOAD_HINT = "or pass download=True (config data.download: true)"


class DatasetError(RuntimeError):
    """A dataset that cannot be used: missing or corrupt files. The one-line message says the fix."""


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
        self._raw_max = max_value
        self.set_bits(bits)
        self.pad, self.flip, self.binarize = pad, flip, binarize

    @property
    def bits(self) -> int:
        return 8 - self.shift

    def set_bits(self, bits: int) -> None:
        """Read the images at ``bits`` bits (8: as stored); FID reference statistics read the files' own depth."""
        if not 1 <= bits <= 8:
            raise DatasetError(f"bits must be in [1, 8], got {bits}")
        self.shift = 8 - bits
        self.max_value = self._raw_max if bits == 8 else 2**bits - 1

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


def require_root(name: str, root: str | os.PathLike | None) -> Path:
    if root is None:
        raise DatasetError(f"{name}: no dataset folder given; pass root=DIR (config data.root)")
    return Path(root).expanduser()


def md5sum(path: Path) -> str:
    """Hex MD5 of the file at ``path``."""
    return file_digest(path, "md5")


def corrupt(name: str, path: Path, why: str) -> DatasetError:
    why = " ".join(str(why).split())  # one line
    return DatasetError(f"{name}: corrupt file {path} ({why}); delete it and re-fetch it")


def verify_md5(name: str, path: Path, expected: str) -> None:
    actual = md5sum(path)
    if actual != expected:
        raise corrupt(name, path, f"md5 {actual}, expected {expected}")


def missing(name: str, folder: Path, files: dict[str, str], source: str, hint: str = DOWNLOAD_HINT):
    listed = ", ".join(f"{f} ({check})" for f, check in files.items())
    return DatasetError(f"{name}: missing {listed}; put them in {folder} (from {source}) {hint}")


def is_official(name: str, split: str, expected_size: int | None) -> bool:
    """Whether ``split`` is expected at its official size (``expected_size`` None or equal to it): only then do the
    official checksums apply and may the official files be downloaded."""
    return expected_size is None or expected_size == EXPECTED_COUNTS[name][split]


def check_count(name: str, split: str, n: int, where: Path, expected_size: int | None = None) -> None:
    """``n`` images must be the official count, or ``expected_size`` when one is given (a non-official split)."""
    if expected_size is None:
        expected = EXPECTED_COUNTS[name][split]
        if n != expected:
            raise DatasetError(f"{name}: {split} split in {where} has {n} images, expected {expected}; "
                               f"the data is incomplete or not the official release: delete it and re-fetch it "
                               f"(a split of another size, e.g. a miniature, needs data.n_{split})")
    elif n != expected_size:
        raise DatasetError(f"{name}: {split} split in {where} has {n} images, expected {expected_size} "
                           f"(data.n_{split}); the data is incomplete or of another size: rewrite it "
                           f"(lsgm make-data) or set data.n_{split} to its size")


def missing_unofficial(name: str, folder: Path, files, split: str, expected_size: int) -> DatasetError:
    """The files of a non-official ``split`` are missing: no official source has them, so there is no download."""
    return DatasetError(f"{name}: missing {', '.join(files)} of a {expected_size}-image {split} split (not the "
                        f"official size, so never downloaded); put them in {folder}, e.g. with lsgm make-data "
                        f"--dataset {name} --root ROOT")


def one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def parse_file(path: Path, name: str, reader):
    """``reader(path)``, turning any parse failure of a truncated or garbage file into DatasetError."""
    try:
        return reader(str(path))
    except Exception as err:  # noqa: BLE001 -- any failure to parse means the file is unusable
        raise corrupt(name, path, one_line(err)) from err

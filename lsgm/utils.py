"""Tensor helpers: broadcasting, per-sample sums, device synchronisation, torch files (atomic save; the one loader of
the torch files a user passes, as data, with one-line errors).

Torch-free file helpers and provenance are :mod:`lsgm.io`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lsgm.io import atomic_write


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so ``x`` ([B] or scalar) broadcasts against a tensor of ``ndim`` dims."""
    missing = ndim - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target has only {ndim}")
    return x.reshape(*x.shape, *([1] * missing))


def sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dim but the first: [B, ...] -> [B]."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA) so a wall-clock time covers it; a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (:func:`lsgm.io.atomic_write`)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


class UserFileError(ValueError):
    """A file a user passes (model.pt, statistics, a checkpoint) that cannot be used; the message is one line naming
    the file, what is wrong and the fix."""


class UnsafeFileError(UserFileError):
    """A torch file that would need to run code to load (a pickle with classes outside the allow-list)."""


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive
_LEGACY_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # the legacy format's magic number, as pickled after its 0x80


def _first_sentence(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text.split(". ")[0][:200]


def load_torch_file(path: str | Path, noun: str, fix: str, *, allowed: tuple[type, ...] = (),
                    map_location: Any = "cpu") -> Any:
    """``torch.load`` of a file a user passes (model.pt, FD/FID statistics, checkpoints) as DATA: tensors and plain
    containers only (``weights_only=True``) plus the classes in ``allowed`` (e.g. the official checkpoints'
    ``argparse.Namespace``), so a crafted file cannot run code. Every way the file can be unusable is one
    :class:`UserFileError` line: ``"{noun} {path} <what is wrong>; {fix}"`` -- missing, unreadable, not a torch file at
    all ("is not a {noun}"), corrupted or truncated, or holding objects whose loading would run code
    (:class:`UnsafeFileError`, naming the refused global where torch does)."""
    import pickle

    path, tail = Path(path), f"; {fix}" if fix else ""
    if not path.is_file():
        raise UserFileError(f"{noun} {path} {'is a folder' if path.is_dir() else 'does not exist'}{tail}")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as err:
        raise UserFileError(f"{noun} {path} cannot be read ({err.strerror or type(err).__name__}){tail}") from None
    if not (head.startswith(_ZIP_MAGIC) or (head[:1] == b"\x80" and _LEGACY_MAGIC in head)):
        raise UserFileError(f"{path} is not a {noun}: torch.save did not write it (it begins {head[:8]!r}; a torch "
                            f"file begins {_ZIP_MAGIC!r}){tail}")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        refused = next((line for line in lines if "global" in line.lower()), None)  # the refused class, if named
        if refused is None:  # e.g. "Unsupported operand": damaged bytes, not a refused class
            raise UserFileError(f"{noun} {path} is corrupted or truncated (its pickle does not parse){tail}") from None
        extra = f" and {', '.join(c.__name__ for c in allowed)}" if allowed else ""
        raise UnsafeFileError(f"{noun} {path} was NOT loaded: it holds objects other than tensors, plain data{extra}, "
                              f"and loading them would run code ({refused[:160]}){tail}") from None
    except Exception as err:  # noqa: BLE001 - torch's zip reader / unpickler on damaged bytes: many types, one cause
        raise UserFileError(f"{noun} {path} is corrupted or truncated ({_first_sentence(err)}){tail}") from None

"""Tensor helpers: broadcasting, per-sample sums, device synchronisation, torch files (atomic save, load as data).

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


class UnsafeFileError(ValueError):
    """A torch file that would need to run code to load (a pickle with classes outside the allow-list)."""


def load_data_file(path: Path, map_location="cpu", allowed: tuple[type, ...] = ()) -> Any:
    """``torch.load`` of a file a user passes (model.pt, FD/FID statistics, checkpoints) as DATA: tensors and
    plain containers only (``weights_only=True``) plus the classes in ``allowed`` (e.g. the official checkpoints'
    ``argparse.Namespace``), so a crafted file cannot run code; anything else is refused with
    :class:`UnsafeFileError` (one line, naming the refused global where torch does). Raises OSError /
    RuntimeError for unreadable files as torch does."""
    import pickle

    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        why = next((line for line in lines if "global" in line.lower()), lines[0])  # the refused class, if named
        extra = f" and {', '.join(c.__name__ for c in allowed)}" if allowed else ""
        raise UnsafeFileError(f"{path} was NOT loaded: it holds objects other than tensors, plain data{extra}, and "
                              f"loading them would run code ({why[:160]})") from None

"""Small shared helpers: broadcasting, atomic writes, provenance, seeding."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


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


def _umask_mode() -> int:
    """The mode a plainly created file gets (0o666 less the umask): mkstemp's 0o600 would hide results
    from the rest of a group on a shared cluster file system."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder + ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, _umask_mode())
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON with NaN/inf allowed (a diverged run writes NaN metrics), written atomically."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _umask_mode())
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_commit(short: bool = False) -> str:
    """The commit of the source tree (``+dirty`` if modified), or ``unknown`` outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short" if short else "--verify", "HEAD"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("LSGM_COMMIT", "unknown")


_PACKAGES = ("torch", "torchvision", "torchdiffeq", "torch-fidelity", "numpy", "scipy", "scikit-learn", "snakemake")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{os.cpu_count()} (torch threads {torch.get_num_threads()})"


def provenance(device: torch.device | str | None = None, **extra: Any) -> dict[str, Any]:
    """What produced a result: commit, package versions, device, host."""
    return {
        "commit": git_commit(),
        "versions": package_versions(),
        "device": device_name(device),
        "host": platform.node(),
        **extra,
    }


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def is_finite(x: float | torch.Tensor) -> bool:
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all())
    return math.isfinite(x)

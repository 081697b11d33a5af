"""Torch-free file helpers: atomic writes, file digests, and the provenance every result records.

Nothing here imports torch at module level, so the report, the workflow scripts and the config code can
write files and record provenance without it; :func:`device_name` imports torch only when called.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable


def _umask_mode() -> int:
    """The mode a plainly created file gets (0o666 less the umask): mkstemp's 0o600 would hide results
    from the rest of a group on a shared cluster file system."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a temp file in ``path``'s folder, then ``os.replace`` it to ``path`` (never half-written;
    the temp file is removed if ``write`` fails)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _umask_mode())
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _json_default(obj: Any) -> Any:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is imported
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON with NaN/inf allowed (a diverged run writes NaN metrics), written atomically."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest (``hashlib`` algorithm name) of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (hex)."""
    return file_digest(path, "sha256")


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


def device_name(device: Any = None) -> str:
    """``cuda:<GPU name>`` or ``cpu:<processor> x<cores> (torch threads N)`` of a torch device (default CPU)."""
    import torch

    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{os.cpu_count()} (torch threads {torch.get_num_threads()})"


def provenance(device: Any = None, **extra: Any) -> dict[str, Any]:
    """What produced a result: commit, package versions, device, host."""
    return {
        "commit": git_commit(),
        "versions": package_versions(),
        "device": device_name(device),
        "host": platform.node(),
        **extra,
    }

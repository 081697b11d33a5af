"""Torch-free file helpers: atomic writes (and the removal of the temp files a killed writer leaves), the check
that an output can be written before any work, file digests, and the provenance every result records.

Nothing here imports torch at module level, so the report, the workflow scripts and the config code can
write files and record provenance without it; :func:`device_name` imports torch only when called.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

# A temp file of an atomic write is ``.NAME.PID@HOST.XXXXXXXX.tmp`` (mkstemp's 8 characters): it names its writer, so
# the next start can tell a dead writer's file from a live one's (:func:`clean_stale_temps`). Earlier versions wrote
# ``.NAME.XXXXXXXX.tmp``. A file of another host (a shared file system: its pid means nothing here) or of an earlier
# version is stale once untouched for STALE_SECONDS (a write keeps its file's mtime fresh).
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.[a-z0-9_]{8}\.tmp")
_PIDLESS_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")
STALE_SECONDS = 3600


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def temp_prefix(name: str) -> str:
    """The start of this process's temp file names for ``name``: ``.NAME.PID@HOST.``."""
    return f".{name}.{os.getpid()}@{_host()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale(path: Path, now: float) -> bool:
    """Whether ``path`` (a name of our pattern) is a temp file whose writer is gone."""
    match = _TEMP.fullmatch(path.name)
    if match and match["host"] == _host():
        return not _alive(int(match["pid"]))
    try:
        return now - path.stat().st_mtime > STALE_SECONDS
    except FileNotFoundError:
        return False


def clean_stale_temps(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temp files our atomic writes left in ``folder`` (only those for ``name``, if given) when their writer
    is gone: this host's with a dead pid; another host's or an earlier version's when untouched for an hour. Files of
    any other pattern, and a live writer's, are left alone. Returns the removed paths."""
    removed, now = [], time.time()
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for path in Path(folder).iterdir():
            match = _TEMP.fullmatch(path.name) or _PIDLESS_TEMP.fullmatch(path.name)
            if match is None or (name is not None and match["name"] != name) or not path.is_file():
                continue
            if _stale(path, now):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


class OutputError(ValueError):
    """An output that cannot be written; the message (one line) names the path and the fix."""


def check_output(path: str | Path, flag: str = "--out", folder: bool = False) -> Path:
    """Before any work, make sure ``path`` (a file; with ``folder`` a folder) can be written: the folder that will hold
    it exists and takes a new file, or its nearest existing parent folder does (the rest is created on writing). Stale
    temp files of our atomic writes there are removed (:func:`clean_stale_temps`). Raises :class:`OutputError`."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file, not a folder; give a folder")
    if not folder and path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give the path of a file")
    target = path if folder else path.parent
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{flag} {path}: {existing} is a file, so the folder {target} cannot be created; choose "
                          f"another {flag}")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=temp_prefix("write-check"), suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"{flag} {path}: cannot create files in {existing} ({err.strerror or type(err).__name__}); "
                          f"choose a writable {flag} or fix the folder's permissions") from None
    if existing == target:
        clean_stale_temps(target, None if folder else path.name)
    return path


def _umask_mode() -> int:
    """The mode a plainly created file gets (0o666 less the umask): mkstemp's 0o600 would hide results
    from the rest of a group on a shared cluster file system."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a temp file in ``path``'s folder (named after this process: :func:`temp_prefix`), then
    ``os.replace`` it to ``path`` (never half-written; the temp file is removed if ``write`` fails, and one a killed
    process leaves is removed at the next start by :func:`check_output`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
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


def recorded_reason(model_path: str | Path) -> str | None:
    """The reason a run ended as it did, as its run.json beside ``model_path`` records it (None if unreadable)."""
    try:
        return json.loads((Path(model_path).parent / "run.json").read_text()).get("reason")
    except (OSError, ValueError, AttributeError):
        return None


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
    """``cuda:<GPU name> (torch threads N)`` or ``cpu:<processor> x<cores> (torch threads N)`` of a torch device
    (default CPU); N: the process's CPU threads (the job's share, :mod:`lsgm.launch`)."""
    import torch

    device = torch.device(device or "cpu")
    threads = f"(torch threads {torch.get_num_threads()})"
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)} {threads}"
    return f"cpu:{platform.processor() or platform.machine()} x{os.cpu_count()} {threads}"


def provenance(device: Any = None, **extra: Any) -> dict[str, Any]:
    """What produced a result: commit, package versions, device, host."""
    return {
        "commit": git_commit(),
        "versions": package_versions(),
        "device": device_name(device),
        "host": platform.node(),
        **extra,
    }

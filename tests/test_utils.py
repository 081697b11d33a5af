"""Shared helpers: atomic writes, broadcasting, provenance."""

import json
import math
import os
import stat

import pytest
import torch

from lsgm.io import atomic_write_json, provenance
from lsgm.utils import append_dims, atomic_torch_save, sum_except_batch


def test_atomic_json_allows_nan_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "m.json"
    atomic_write_json(path, {"nelbo": float("nan"), "t": torch.tensor([1.0, 2.0])})
    doc = json.loads(path.read_text())
    assert math.isnan(doc["nelbo"]) and doc["t"] == [1.0, 2.0]
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_atomic_files_get_umask_permissions_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {})
        atomic_torch_save({"x": 1}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    for name in ("a.json", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert len(list(tmp_path.iterdir())) == 1


def test_broadcast_helpers():
    x = torch.arange(3.0)
    assert append_dims(x, 4).shape == (3, 1, 1, 1)
    with pytest.raises(ValueError):
        append_dims(torch.zeros(2, 3), 1)
    assert sum_except_batch(torch.ones(2, 3, 4)).tolist() == [12.0, 12.0]


def test_provenance_names_commit_versions_and_device():
    prov = provenance("cpu")
    assert prov["commit"] and prov["versions"]["torch"] and prov["device"].startswith("cpu")


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_stale_temp_files_of_our_own_atomic_writes_are_removed(tmp_path):
    """A temp file of an atomic write names its writer (pid @ host): one of a dead writer on this host is removed, a
    live writer's stays; another host's (its pid means nothing here) and the pid-less names of earlier versions go
    only when untouched for an hour; files not of our pattern stay."""
    from lsgm.io import clean_stale_temps, temp_prefix

    ours = temp_prefix("m.json")  # .m.json.<pid>@<host>.
    pid, host = str(os.getpid()), ours.rsplit("@", 1)[1].rstrip(".")
    dead = ours.replace(f".{pid}@", f".{_dead_pid()}@")
    names = {"dead": f"{dead}abcd_123.tmp", "live": f"{ours}abcd_123.tmp",
             "other host": f".m.json.{pid}@not-{host}.abcd_123.tmp", "other host, old": f".m.json.1@not-{host}.x1y2z3w4.tmp",
             "old version": ".m.json.abcd_123.tmp", "old version, old": ".ckpt.pt.q9w8e7r6.tmp",
             "not ours": ".m.json.tmp", "not ours either": "m.json.abcd_123.tmp", "result": "m.json"}
    for key, name in names.items():
        (tmp_path / name).write_text(key)
        if key.endswith(", old") or key.startswith("not ours"):
            os.utime(tmp_path / name, (0, 0))
    removed = clean_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(names[k] for k in ("dead", "other host, old", "old version, old"))
    kept = {"live", "other host", "old version", "not ours", "not ours either", "result"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[k] for k in kept)
    assert clean_stale_temps(tmp_path, name="other.json") == []


def test_atomic_write_names_its_temp_file_after_its_writer(tmp_path):
    from lsgm.io import atomic_write, temp_prefix

    seen = []
    atomic_write(tmp_path / "x.json", lambda tmp: (seen.append(os.path.basename(tmp)), open(tmp, "w").close()))
    assert seen[0].startswith(temp_prefix("x.json")) and seen[0].endswith(".tmp")
    assert f".{os.getpid()}@" in seen[0]

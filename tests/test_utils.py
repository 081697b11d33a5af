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

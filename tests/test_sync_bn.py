"""SyncBatchNorm for the NVAE under DDP (lsgm.nets.sync_bn): 2 gloo processes on CPU, each on half a batch, give
the outputs, running statistics and gradients of one process with plain BatchNorm2d on the whole batch; without
a process group it is plain BatchNorm; the conversion keeps state_dict keys and the BN-scale penalty."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from lsgm.config import VAEConfig
from lsgm.data import dataset_info
from lsgm.nets.layers import norm_scale_penalty
from lsgm.nets.nvae import NVAE
from lsgm.nets.sync_bn import CPUSyncBatchNorm2d, convert_sync_batchnorm

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "sync_bn_step.py"
TOL = dict(atol=1e-5, rtol=1e-5)


def _worker_module():
    spec = importlib.util.spec_from_file_location("sync_bn_step", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_gloo_processes(out: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), str(out)], env={**env, "RANK": str(r)}, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_two_processes_on_halves_equal_one_process_on_the_whole_batch(tmp_path):
    """Outputs and input gradients of each half, parameter gradients summed over the processes (DDP then averages
    them, as for every other parameter), running mean/var and num_batches_tracked after two steps, and the eval
    output (running statistics): all as plain BatchNorm2d on the concatenated batch, for a BN layer and a small
    NVAE cell stack."""
    ref = _worker_module().steps()
    ranks = _two_gloo_processes(tmp_path)
    for name, whole in ref.items():
        assert whole["types"] == ["BatchNorm2d"]
        halves = [r[name] for r in ranks]
        assert all(h["types"] == ["CPUSyncBatchNorm2d"] for h in halves)
        for key, value in whole.items():
            if key == "types":
                continue
            if key.startswith(("out", "xgrad")):
                got = torch.cat([h[key] for h in halves])
            elif key.startswith("grad."):
                got = halves[0][key] + halves[1][key]
            else:  # buffers, parameters and the eval output: the same on every process
                torch.testing.assert_close(halves[1][key], halves[0][key], **TOL, msg=f"{name} {key}: ranks differ")
                got = halves[0][key]
            torch.testing.assert_close(got, value, **TOL, msg=f"{name} {key}")
        assert whole["state.0.num_batches_tracked" if name == "cells" else "state.num_batches_tracked"] == 2


def test_without_process_group_it_is_plain_batchnorm():
    worker = _worker_module()
    plain, converted = worker.steps(), worker.steps(convert=True)
    for name in plain:
        assert converted[name]["types"] == ["CPUSyncBatchNorm2d"]
        for key, value in plain[name].items():
            if key != "types":
                torch.testing.assert_close(converted[name][key], value, atol=0, rtol=0, msg=f"{name} {key}")


def _tiny_vae() -> NVAE:
    torch.manual_seed(0)
    return NVAE(VAEConfig(num_channels=8), dataset_info("digits"))


def test_conversion_keeps_state_dict_parameters_and_bn_penalty():
    vae = _tiny_vae()
    keys, params = list(vae.state_dict()), list(vae.parameters())
    penalty = norm_scale_penalty(vae)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in vae.modules())
    assert n_bn > 0
    converted = convert_sync_batchnorm(vae)  # a CPU module: CPUSyncBatchNorm2d
    assert sum(type(m) is CPUSyncBatchNorm2d for m in converted.modules()) == n_bn
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    assert list(converted.state_dict()) == keys
    assert all(a is b for a, b in zip(converted.parameters(), params, strict=True))  # optimizers stay valid
    assert torch.equal(norm_scale_penalty(converted), penalty)
    # a checkpoint of the converted model loads strictly into an unconverted one (single-process evaluation)
    _tiny_vae().load_state_dict(converted.state_dict(), strict=True)
    # torch's own nn.SyncBatchNorm (what a GPU module gets) keeps the keys and the penalty as well
    torch_sync = nn.SyncBatchNorm.convert_sync_batchnorm(_tiny_vae())
    assert sum(type(m) is nn.SyncBatchNorm for m in torch_sync.modules()) == n_bn
    assert list(torch_sync.state_dict()) == keys
    assert torch.equal(norm_scale_penalty(torch_sync), penalty)


def test_a_module_off_the_cpu_gets_torchs_syncbatchnorm():
    """Dispatch by the module's device (a meta-device module stands in for a GPU one)."""
    vae = _tiny_vae().to("meta")
    types = {type(m) for m in convert_sync_batchnorm(vae).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert types == {nn.SyncBatchNorm}

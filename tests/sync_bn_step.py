"""Two training steps and one eval pass of a BatchNorm2d and of a small NVAE cell stack (BN-Swish and MBConv
residual cells) on this process's share of fixed batches of 8, with the outputs, input gradients, parameter
gradients and buffers as the result.

``steps(world, rank)`` with no process group runs the plain modules on the whole batch (the reference), or the
converted ones (:class:`lsgm.nets.sync_bn.SyncBatchNorm` without a process group: plain BatchNorm behaviour).
As a script under ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` it joins a gloo process group, converts the
modules to SyncBatchNorm, runs its share and saves the result to ``OUT/rank{RANK}.pt``. Used by tests/test_sync_bn.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

BATCH = 8


def models() -> dict[str, nn.Module]:
    from lsgm.nets.layers import ResidualCell, batchnorm

    torch.manual_seed(0)
    bn = batchnorm(4)
    cells = nn.Sequential(batchnorm(4), ResidualCell(4, 4, 1, "bnswish", True), ResidualCell(4, 4, 1, "mbconv6", True))
    with torch.no_grad():  # non-trivial affine parameters
        for m in (*bn.modules(), *cells.modules()):
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand_like(m.weight) + 0.5)
                m.bias.copy_(torch.randn_like(m.bias))
    return {"bn": bn, "cells": cells}


def steps(world: int = 1, rank: int = 0, convert: bool = False) -> dict:
    """Two train-mode forward/backward passes on this rank's share, then an eval pass on a whole batch."""
    from lsgm.nets.sync_bn import convert_sync_batchnorm

    share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    result = {}
    for name, model in models().items():
        if convert:
            model = convert_sync_batchnorm(model)
        g = torch.Generator().manual_seed(1)
        rec: dict[str, torch.Tensor] = {}
        model.train()
        for k in range(2):
            x = 2.0 * torch.randn(BATCH, 4, 6, 6, generator=g) + 1.0
            weights = torch.randn(BATCH, 4, 6, 6, generator=g)  # upstream gradient: the loss is not BN-invariant
            xs = x[share].clone().requires_grad_(True)
            out = model(xs)
            (out * weights[share]).sum().backward()
            rec[f"out{k}"], rec[f"xgrad{k}"] = out.detach(), xs.grad
        rec.update({f"grad.{n}": p.grad for n, p in model.named_parameters()})
        rec.update({f"state.{n}": v.clone() for n, v in model.state_dict().items()})
        model.eval()
        with torch.no_grad():
            rec["eval"] = model(torch.randn(BATCH, 4, 6, 6, generator=g))
        rec["types"] = sorted({type(m).__name__ for m in model.modules() if "BatchNorm" in type(m).__name__})
        result[name] = rec
    return result


if __name__ == "__main__":
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    res = steps(world, rank, convert=True)
    torch.save(res, Path(sys.argv[1]) / f"rank{rank}.pt")
    dist.destroy_process_group()

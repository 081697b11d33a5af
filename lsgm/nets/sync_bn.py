"""BatchNorm synchronised across DDP processes (the official NVAE/LSGM code uses SyncBatchNorm).

:func:`convert_sync_batchnorm` converts a model's BatchNorm layers before DDP wrapping:

* on GPU to torch's own ``nn.SyncBatchNorm`` (``nn.SyncBatchNorm.convert_sync_batchnorm``);
* on CPU (gloo: CI and CPU runs) to :class:`CPUSyncBatchNorm2d`, because torch refuses SyncBatchNorm there twice
  over: its forward raises on CPU tensors once a process group exists, and ``DistributedDataParallel`` raises for a
  CPU module that holds any ``nn.SyncBatchNorm`` ("SyncBatchNorm layers only work with GPU modules"). So the CPU
  layer is a ``BatchNorm2d`` subclass (also counted by ``norm_scale_penalty``) computing the same thing.

Both keep parameters, buffers and state_dict keys, so checkpoints load into the unconverted model. Without a
process group, with one process, or in eval mode (running statistics) both are plain BatchNorm.

:class:`CPUSyncBatchNorm2d` in training mode, per channel over the batch of all processes (N values): one
autograd-aware ``all_reduce`` of (sum, sum of squares, count) in float64; mean and biased variance normalise, the
unbiased variance (x N / (N - 1)) and the mean update the running statistics with the module's momentum (a
cumulative average when ``momentum`` is None) and ``num_batches_tracked``, as torch does. The all-reduce's backward
all-reduces the gradients of the statistics, so every process gets the gradient of the sum of all processes' losses
(as torch's SyncBatchNorm backward; DDP then averages the parameter gradients).
"""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

__all__ = ["CPUSyncBatchNorm2d", "convert_sync_batchnorm"]


class CPUSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with statistics over all processes of ``process_group`` (default: the world) in training mode,
    through collectives of any backend (gloo on CPU); see the module docstring."""

    def __init__(self, *args, process_group=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _sync_group(self):
        """The process group to synchronise over in this call, or None (plain BatchNorm)."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group or dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self._sync_group()
        if group is None:
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        c, x64 = input.shape[1], input.double()
        local = torch.cat([x64.sum((0, 2, 3)), (x64 * x64).sum((0, 2, 3)), x64.new_full((1,), input.numel() / c)])
        total = dist_fn.all_reduce(local, group=group)  # autograd-aware: backward all-reduces the gradient
        n = total[2 * c]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0.0)  # biased: normalises
        if self.track_running_stats:
            with torch.no_grad():
                unbiased = var * (n / (n - 1)) if n > 1 else var
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        scale = torch.rsqrt(var + self.eps).to(input.dtype).view(1, c, 1, 1)
        out = (input - mean.to(input.dtype).view(1, c, 1, 1)) * scale
        if self.affine:
            out = out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return out


def _convert_cpu(module: nn.Module, process_group) -> nn.Module:
    out = module
    if type(module) is nn.BatchNorm2d:
        out = CPUSyncBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats, process_group=process_group)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias  # the same Parameter objects
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child, process_group))
    return out


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Every BatchNorm of ``module`` synchronised across the processes of ``process_group`` (default: the world):
    torch's ``nn.SyncBatchNorm`` for a module on an accelerator, :class:`CPUSyncBatchNorm2d` for the
    ``BatchNorm2d`` layers of a CPU module. Parameters, buffers and state_dict keys are kept. Returns the converted
    module (``module`` itself unless it is a BatchNorm layer)."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    if any(t.device.type != "cpu" for t in tensors):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    return _convert_cpu(module, process_group)

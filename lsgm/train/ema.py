"""Exponential moving average of a module's parameters: a small standalone object.

Not an optimizer subclass (the official ``util/ema.py`` wraps the optimizer and broke on newer PyTorch,
LSGM issue 18). Only floating-point parameters are averaged; buffers are used as they are.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class EMA:
    """Shadow copy ``s <- decay * s + (1 - decay) * p`` of every parameter of ``module``.

    ``state_dict()``/``load_state_dict()`` round-trip the shadow and the decay (for checkpoints);
    ``averaged_state_dict(module)`` is ``module.state_dict()`` with the parameters replaced by their
    averages (what ``model.pt`` stores under ``"ema"``, loadable with ``module.load_state_dict``);
    ``with ema.swapped(module):`` runs code with the averaged weights and restores the live ones after.
    """

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {name: p.detach().clone() for name, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        names, params = zip(*module.named_parameters())
        torch._foreach_lerp_([self.shadow[n] for n in names], [p.detach() for p in params], 1.0 - self.decay)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state does not match the module; differing names: {sorted(missing)[:5]}")
        self.decay, self.num_updates = float(state["decay"]), int(state["num_updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)

    def averaged_state_dict(self, module: nn.Module) -> dict:
        out = {k: v.detach().clone() for k, v in module.state_dict().items()}
        out.update({k: v.clone() for k, v in self.shadow.items()})
        return out

    @contextlib.contextmanager
    def swapped(self, module: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averaged parameters into ``module``."""
        live = {name: p.detach().clone() for name, p in module.named_parameters()}
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(self.shadow[name])
        try:
            yield module
        finally:
            with torch.no_grad():
                for name, p in module.named_parameters():
                    p.copy_(live[name])

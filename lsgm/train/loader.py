"""The training batch stream: endless, sharded over processes, and resumable."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lsgm.config import ConfigError
from lsgm.data import get_dataset


class InfiniteLoader:
    """Endless batches of ``x`` with a resumable order.

    Each epoch is a ``DistributedSampler(seed, epoch)`` permutation (every rank its shard, drop_last), cut
    into full batches of ``batch_size`` (per process). ``state_dict`` = (epoch, position in batches, seed);
    resuming skips the consumed indices without loading them. The DataLoader gets its own generator, so
    creating an iterator never consumes the global torch RNG. With ``num_workers == 0`` the per-access
    randomness of the dataset (dynamic binarization, flips) comes from the global torch RNG, which the
    checkpoint restores: resume is exact. With workers, the order is exact but the per-access draws after
    a resume differ (workers are re-seeded per iterator)."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, pin_memory: bool = False):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise ConfigError(f"per-process batch {batch_size} (train.global_batch / processes / accumulation) exceeds "
                              f"the {len(self.sampler)} training items per process")
        self.epoch, self.position, self._it = 0, 0, None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if (state["seed"], state["batch_size"]) != (self.seed, self.batch_size):
            raise ConfigError(f"checkpoint data order {state} does not match seed {self.seed} / batch {self.batch_size}")
        self.epoch, self.position, self._it = int(state["epoch"]), int(state["position"]), None

    def _start(self) -> None:
        self.sampler.set_epoch(self.epoch)
        indices = list(self.sampler)[self.position * self.batch_size: self.batches_per_epoch * self.batch_size]
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self._it = iter(DataLoader(self.dataset, batch_size=self.batch_size, sampler=indices, drop_last=True,
                                   num_workers=self.num_workers, generator=gen, pin_memory=self.pin_memory))

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self._start()
        x = next(self._it)[0]
        self.position += 1
        return x


def fixed_batches(run, n_batches: int):
    """The first ``n_batches`` test batches in dataset order (no augmentation), on the run's device: the validation
    batches of every trainer."""
    cfg, size = run.cfg, run.per_process_batch
    data = get_dataset(cfg.data.name, "test", root=cfg.data.root, download=cfg.data.download, augment=False,
                       expected_size=cfg.data.n_test)
    n = min(len(data), n_batches * size)
    for start in range(0, n, size):
        idx = range(start, min(start + size, n))
        yield torch.stack([data[i][0] for i in idx]).to(run.device)


def first_batches(dataset: Dataset, batch_size: int, n_batches: int, device: torch.device):
    """The first ``n_batches`` batches of ``x`` of a DataLoader over ``dataset`` in order (its per-access randomness,
    and the DataLoader's base seed, from the global torch RNG: call it under a fixed RNG), on ``device``."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return (x.to(device) for _, (x, _) in zip(range(n_batches), loader))

"""Train the small feature classifier used for the offline Fréchet distance (``fd_<dataset>``).

``lsgm train-classifier --config RUN.yaml --out DIR [--set key=value ...]`` with ``kind: classifier``:
cross-entropy on the dataset's labelled TRAINING split, ``train.steps`` steps of ``train.global_batch``,
optimizer and learning-rate schedule from ``train.score_optim``. Binary datasets are used as grey levels
(never binarized), exactly what the reference statistics and the decoder-mean samples look like. Writes
the usual run files (``config.yaml``, ``stats.jsonl``, ``run.json`` with the TEST accuracy under
``validation``, ``model.pt`` with ``state['classifier']`` and ``arch``) through :class:`lsgm.train.run.Run`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lsgm.config import ConfigError
from lsgm.data import DatasetInfo, dataset_info, get_dataset
from lsgm.nets.classifier import FeatureClassifier
from lsgm.train.cli import cli_main
from lsgm.train.distributed import unwrap
from lsgm.train.loader import InfiniteLoader
from lsgm.train.loop import mean_stats
from lsgm.train.optim import make_optimizer, set_lr
from lsgm.train.rng import fixed_rng
from lsgm.train.run import Run
from lsgm.train.schedules import lr_at


@dataclass
class LabelledBatch:
    x: torch.Tensor  # [B, C, H, W] in [0, 1]
    y: torch.Tensor  # [B] class indices

    def to(self, device, non_blocking: bool = False) -> "LabelledBatch":
        return LabelledBatch(self.x.to(device, non_blocking=non_blocking), self.y.to(device, non_blocking=non_blocking))


class LabelledLoader(InfiniteLoader):
    """:class:`InfiniteLoader` (same resumable order) yielding images AND labels."""

    def __next__(self) -> LabelledBatch:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self._start()
        x, y = next(self._it)
        self.position += 1
        return LabelledBatch(x, y)


def grey_dataset(name: str, split: str, root: str | None, download: bool, augment: bool,
                 expected_size: int | None = None):
    """A labelled split as grey levels: binary datasets are NOT binarized (see the module docstring)."""
    dataset = get_dataset(name, split, root=root, download=download, augment=augment, expected_size=expected_size)
    if getattr(dataset, "binarize", False):
        dataset.binarize = False
    return dataset


def build_classifier(info: DatasetInfo) -> FeatureClassifier:
    if not info.num_classes:
        raise ConfigError(f"dataset {info.name!r} has no labels; a feature classifier needs a labelled dataset")
    return FeatureClassifier(info.channels, info.num_classes)


class ClassifierTask:
    def __init__(self, run: Run):
        cfg = run.cfg
        self.run, self.cfg, self.info = run, cfg, dataset_info(cfg.data.name)
        self.net = run.wrap(build_classifier(self.info))
        self.opt = make_optimizer(unwrap(self.net).parameters(), cfg.train.score_optim)
        train = grey_dataset(cfg.data.name, "train", cfg.data.root, cfg.data.download, augment=True,
                             expected_size=cfg.data.n_train)
        t = cfg.train
        self.loader = LabelledLoader(train, run.per_process_batch, cfg.seed, run.dist.rank, run.dist.world_size,
                                     cfg.data.num_workers, run.device.type == "cuda")
        self.modules, self.optimizers, self.emas = {"classifier": unwrap(self.net)}, {"classifier": self.opt}, {}
        self.meta = {"stage": "classifier", "optimizer": {"classifier": f"{t.score_optim.name} (train.score_optim)"},
                     "purpose": "offline feature extractor for fd_<dataset> (not Inception, never reported as FID)",
                     "binary_data": "grey levels, not binarized" if self.info.binary else None}

    def train_step(self, batches: list[LabelledBatch], step: int) -> dict[str, float]:
        lr = lr_at(step, self.run.total_steps, self.cfg.train.score_optim)
        set_lr(self.opt, lr)
        self.net.train()
        params, stats = list(self.net.parameters()), []
        for batch, weight in self.run.micro_batches(batches, self.net):
            logits = self.net(batch.x)
            loss = self.run.force_nan(F.cross_entropy(logits, batch.y), step)
            self.run.check_finite(step, loss=loss)
            self.run.backward(weight * loss, params)
            stats.append({"loss": loss.item(), "train_accuracy": (logits.argmax(1) == batch.y).float().mean().item()})
        norms = self.run.step(step, {"classifier": (self.opt, params)})
        return {**mean_stats(stats), "lr": lr, **norms}

    @torch.no_grad()
    def validate(self) -> dict:
        net = unwrap(self.net).eval()
        cfg = self.cfg
        test = grey_dataset(cfg.data.name, "test", cfg.data.root, cfg.data.download, augment=False,
                            expected_size=cfg.data.n_test)
        correct = 0
        with fixed_rng(cfg.seed + 1, self.run.device):
            for start in range(0, len(test), 256):
                items = [test[i] for i in range(start, min(start + 256, len(test)))]
                x = torch.stack([it[0] for it in items]).to(self.run.device)
                y = torch.tensor([it[1] for it in items], device=self.run.device)
                correct += int((net(x).argmax(1) == y).sum())
        return {"split": "test", "n": len(test), "test_accuracy": correct / len(test)}

    def model_state(self) -> dict:
        return {"state": {"classifier": unwrap(self.net).state_dict()}, "ema": None,
                "arch": dict(unwrap(self.net).hparams)}


def build(run: Run, args: argparse.Namespace) -> ClassifierTask:
    return ClassifierTask(run)


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, "classifier", build)

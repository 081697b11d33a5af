"""Datasets: the paper's (MNIST, OMNIGLOT, CIFAR-10, CelebA-HQ-256) and the offline digits stand-ins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DatasetInfo:
    """What the models and evaluations need to know about a dataset.

    ``image_size`` is the model's input size (after padding, e.g. MNIST 28 -> 32). ``levels`` is the
    number of intensity levels of the (discrete) data: 2 means binary data with a Bernoulli decoder,
    otherwise a discretized mixture of logistics over ``levels`` equally spaced values in [0, 1].
    ``crop`` pixels are removed on each side before the reconstruction likelihood (2 for MNIST/OMNIGLOT,
    so their NLL is over 28 x 28 = 784 dims, as in the paper).
    """

    name: str
    channels: int
    image_size: int
    levels: int
    crop: int = 0
    num_classes: int | None = None
    unit: Literal["bpd", "nats"] = "bpd"

    @property
    def binary(self) -> bool:
        return self.levels == 2

    @property
    def eval_dims(self) -> int:
        """Number of data dimensions the likelihood is over (after cropping)."""
        side = self.image_size - 2 * self.crop
        return self.channels * side * side

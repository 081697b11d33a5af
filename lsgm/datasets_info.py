"""What the models, evaluations and the plan need to know about each dataset, without importing torch:
:class:`DatasetInfo` per dataset and the official split sizes (also the epoch -> step conversion of the plan)."""

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


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", channels=1, image_size=8, levels=17, num_classes=10, unit="bpd"),
    "digits_binary": DatasetInfo("digits_binary", channels=1, image_size=8, levels=2, num_classes=10, unit="nats"),
    "mnist": DatasetInfo("mnist", channels=1, image_size=32, levels=2, crop=2, num_classes=10, unit="nats"),
    "omniglot": DatasetInfo("omniglot", channels=1, image_size=32, levels=2, crop=2, unit="nats"),
    "cifar10": DatasetInfo("cifar10", channels=3, image_size=32, levels=256, num_classes=10, unit="bpd"),
    "celeba256": DatasetInfo("celeba256", channels=3, image_size=256, levels=32, unit="bpd"),
}


@dataclass(frozen=True)
class FIDReference:
    """How a dataset's FID/FD reference statistics are computed: the splits (concatenated, in this order), the bit
    depth the images are read at (8: the files' own; a training loader's bit reduction is not applied), at most
    ``max_samples`` images, no augmentation, binary data as grey levels (never binarized). ``source`` says where
    the specification comes from (the official ``scripts/precompute_fid_statistics.py``, or our choice)."""

    splits: tuple[str, ...]
    bits: int = 8
    max_samples: int = 50_000
    source: str = "official scripts/precompute_fid_statistics.py"

    @property
    def tag(self) -> str:
        """The specification in a file name: ``train-8bit``, ``train+test-8bit``."""
        return f"{'+'.join(self.splits)}-{self.bits}bit"


_OFFICIAL = "official scripts/precompute_fid_statistics.py"
# The official script reads the training split of cifar10 and mnist and the training + validation splits of
# celeba_256 and omniglot (CelebA-HQ-256: 27,000 + 3,000 = 30,000 images), through its generic transform at 8 bits
# (reference doc section 6.2). The offline stand-ins follow the cifar10 rule (our choice: they have no official one).
FID_REFERENCE: dict[str, FIDReference] = {
    "cifar10": FIDReference(("train",), source=f"{_OFFICIAL}: the 50,000 training images"),
    "celeba256": FIDReference(("train", "test"), source=f"{_OFFICIAL}: train + validation (30,000 images) at 8 "
                                                         "bits, not the training loader's 5 bits"),
    "mnist": FIDReference(("train",), source=f"{_OFFICIAL}: the training split, grey levels"),
    "omniglot": FIDReference(("train", "test"), source=f"{_OFFICIAL}: train + test, grey levels"),
    "digits": FIDReference(("train",), source="ours (offline stand-in, no official statistics): the training split"),
    "digits_binary": FIDReference(("train",), source="ours (offline stand-in, no official statistics): the training "
                                                     "split, grey levels"),
}


def offline_standin(name: str) -> str:
    """The offline dataset that stands in for ``name`` below the paper scale: the binarized digits for binary data
    (MNIST, OMNIGLOT), the grey-level digits otherwise (CIFAR-10, CelebA-HQ-256)."""
    return "digits_binary" if DATASETS[name].binary else "digits"


# Number of images per split; a loaded split of another size is an error (partial/truncated data).
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "mnist": {"train": 60_000, "test": 10_000},
    "omniglot": {"train": 24_345, "test": 8_070},
    "cifar10": {"train": 50_000, "test": 10_000},
    "celeba256": {"train": 27_000, "test": 3_000},
}

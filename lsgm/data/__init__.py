"""Datasets: the paper's (MNIST, OMNIGLOT, CIFAR-10, CelebA-HQ-256) and the offline digits stand-ins.

One module per dataset (``digits``, ``mnist``, ``omniglot``, ``cifar10``, ``celeba``), each with a
``load(info, split, root, download, flip)``; :mod:`lsgm.data.registry` maps names to loaders; the shared
transform and file checks are :mod:`lsgm.data.common`; the torch-free facts (:class:`DatasetInfo`, split
sizes) are :mod:`lsgm.datasets_info`.
"""

from lsgm.data.common import DatasetError, ImageDataset, md5sum
from lsgm.data.registry import LOADERS, dataset_info, get_dataset
from lsgm.datasets_info import DATASETS, EXPECTED_COUNTS, DatasetInfo

__all__ = ["DATASETS", "EXPECTED_COUNTS", "LOADERS", "DatasetError", "DatasetInfo", "ImageDataset", "dataset_info",
           "get_dataset", "md5sum"]

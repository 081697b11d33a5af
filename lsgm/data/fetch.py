"""``lsgm fetch-data``: the paper's datasets into the data folder, on the login node, verified as the jobs verify them.

MNIST, CIFAR-10 and OMNIGLOT are downloaded where the network allows (the loaders' own sources and checks: the official
MD5s of torchvision for MNIST and CIFAR-10, parsing and array shapes for OMNIGLOT's ``chardata.mat``, and the official
image counts); a dataset already there is only verified. Where the download fails (no network on the node, a
firewall, a file with the wrong checksum) the line says exactly which file to fetch from where, its checksum, and the
folder to put it in. CelebA-HQ-256 has no download: ``lsgm prepare-celeba`` converts the tfrecords the official code
uses (:mod:`lsgm.data.celeba_prepare`). One line per dataset; exit 1 if any is not ready.

    lsgm fetch-data [--root data] [--datasets mnist cifar10 omniglot celeba256]
"""

from __future__ import annotations

import argparse
import sys

from lsgm.data.common import DatasetError
from lsgm.data.registry import get_dataset
from lsgm.datasets_info import EXPECTED_COUNTS

DOWNLOADABLE = ("mnist", "cifar10", "omniglot")
PAPER = (*DOWNLOADABLE, "celeba256")
CELEBA_HINT = ("no download exists: fetch https://storage.googleapis.com/glow-demo/data/celeba-tfr.tar (the official "
               "code's source), tar -xf it, then lsgm prepare-celeba --tfrecords celeba-tfr --root {root} "
               "(docs/slurm.md)")


def fetch(dataset: str, root: str) -> str:
    """Download (where needed) and verify both splits of ``dataset`` under ``root``; the line to print. Raises
    DatasetError (one line naming the file, its source and checksum, the folder) where that fails."""
    counts, errors = [], []
    for split in ("train", "test"):
        try:
            try:
                data = get_dataset(dataset, split, root=root, download=False)
            except DatasetError:
                if dataset not in DOWNLOADABLE:
                    raise
                data = get_dataset(dataset, split, root=root, download=True)
        except DatasetError as err:  # both splits' files, in one line (MNIST: four files)
            if str(err) not in errors:
                errors.append(str(err))
            continue
        counts.append(f"{split} {len(data):,}")
    if errors:
        raise DatasetError(" | ".join(errors))
    return f"{dataset}: ok ({', '.join(counts)} images, verified) in {root}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lsgm fetch-data", description=__doc__.splitlines()[0])
    p.add_argument("--root", default="data", help="the data folder (config.yaml scales.paper.data_root: data)")
    p.add_argument("--datasets", nargs="+", choices=PAPER, default=list(PAPER))
    args = p.parse_args(argv)
    failed = 0
    for dataset in args.datasets:
        try:
            print(fetch(dataset, args.root), flush=True)
        except DatasetError as err:
            failed += 1
            line = " ".join(str(err).split())
            if dataset == "celeba256":
                line += f"; {CELEBA_HINT.format(root=args.root)}"
            print(f"lsgm fetch-data: {line}", file=sys.stderr, flush=True)
    total = len(args.datasets)
    print(f"{total - failed} of {total} datasets ready in {args.root}"
          + (f" ({', '.join(f'{d} {sum(EXPECTED_COUNTS[d].values()):,}' for d in args.datasets)} images expected)"
             if failed else ""))
    return 1 if failed else 0

"""The ``lsgm`` command line: ``lsgm <command> [options]``.

Each command's implementation lives in its own module as ``main(argv: list[str]) -> int``; this file
only dispatches, so ``lsgm --help`` stays fast (no torch import).
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train-vae": ("lsgm.train.vae", "stage 1: train the NVAE backbone with a Normal prior"),
    "train-lsgm": ("lsgm.train.lsgm", "stage 2: train the LSGM (score prior, optionally end to end)"),
    "train-sgm": ("lsgm.train.sgm", "train the pixel-space score model baseline"),
    "train-classifier": ("lsgm.train.classifier", "train the feature classifier used for offline FD"),
    "fid-stats": ("lsgm.eval.reference", "compute reference feature statistics for FID/FD"),
    "make-data": ("lsgm.data.miniature", "write a miniature dataset in the official formats (or random Inception)"),
    "fetch-data": ("lsgm.data.fetch", "download and verify MNIST, CIFAR-10, OMNIGLOT (login node); check CelebA-HQ"),
    "prepare-celeba": ("lsgm.data.celeba_prepare", "CelebA-HQ-256 from the official code's tfrecords into data/"),
    "evaluate": ("lsgm.eval.cli", "evaluate a trained run: nll | fid | cost | samples"),
    "report": ("lsgm.report.cli", "compile tables and figures: tables | figure4 | variance | reproduction"),
    "import-official": ("lsgm.official.importer", "convert an NVlabs/LSGM train_vae/train_vada checkpoint to model.pt"),
    "make-release": ("lsgm.official.writer", "write a miniature NVlabs/LSGM release (official-format, random weights)"),
    "launch": ("lsgm.launch", "start an lsgm command on N nodes x P processes (srun + torchrun, or torchrun locally)"),
    "plan": ("lsgm.plan", "every job of a scale as submitted, with GPU-hours and GPU memory (--profile slurm)"),
}


def _usage() -> str:
    lines = ["usage: lsgm <command> [options]", "", "commands:"]
    lines += [f"  {name:<18} {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"lsgm: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except BrokenPipeError:  # `lsgm plan --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())

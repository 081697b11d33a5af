"""The bootstrap behind a cost row's ``fd_stderr``, side by side in one run: torch-fidelity's Fréchet distance
(``sqrtm`` of the D x D product) per resample, as until c1edef7, against :class:`lsgm.eval.frechet.ReferenceFD` (no
``sqrtm``), on Inception-sized features (D = 2048) against fixed reference statistics. Writes
``benchmarks/results/fd_bootstrap.json``: seconds per standard error and the two standard errors' relative
difference, for each sample count.

    OMP_NUM_THREADS=1 python benchmarks/fd_bootstrap.py [--dim 2048] [--samples 4 100 1000] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lsgm.eval.frechet import FD_BOOTSTRAP_DRAWS, fd_standard_error, feature_statistics, frechet_distance  # noqa: E402
from lsgm.io import atomic_write_json, provenance  # noqa: E402


def sqrtm_standard_error(features: torch.Tensor, reference: dict, draws: int, seed: int = 0) -> float:
    """The earlier bootstrap: the same resamples (same generator), each FD by torch-fidelity's formula."""
    n = features.shape[0]
    gen = torch.Generator().manual_seed(seed)
    values = [frechet_distance(feature_statistics(features[torch.randint(n, (n,), generator=gen)]), reference)
              for _ in range(draws)]
    return float(np.std(values, ddof=1))


def timed(fn) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=2048, help="feature dimension (Inception pool3: 2048)")
    p.add_argument("--samples", type=int, nargs="+", default=[4, 100, 1000],
                   help="generated samples per FD (the mini scale's cost rows: 4)")
    p.add_argument("--reference", type=int, default=6000, help="reference features behind the fixed statistics")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fd_bootstrap.json"))
    args = p.parse_args(argv)
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(args.dim, args.dim)) / np.sqrt(args.dim)  # correlated features, full-rank reference
    reference = feature_statistics(torch.from_numpy(rng.normal(size=(args.reference, args.dim)) @ mix))
    rows = []
    for n in args.samples:
        feats = torch.from_numpy(rng.normal(size=(n, args.dim)) @ mix + 0.1)
        old, old_s = timed(lambda: sqrtm_standard_error(feats, reference, FD_BOOTSTRAP_DRAWS))
        new, new_s = timed(lambda: fd_standard_error(feats, reference))
        rows.append({"n_samples": n, "sqrtm_seconds": round(old_s, 3), "reference_fd_seconds": round(new_s, 3),
                     "speedup": round(old_s / new_s, 1), "stderr_sqrtm": old, "stderr_reference_fd": new,
                     "relative_difference": abs(new - old) / abs(old)})
        print(rows[-1], flush=True)
    record = {"what": "bootstrap FD standard error, torch-fidelity sqrtm per draw vs lsgm.eval.frechet.ReferenceFD",
              "dim": args.dim, "draws": FD_BOOTSTRAP_DRAWS, "reference_features": args.reference, "rows": rows,
              "threads": torch.get_num_threads(),
              "provenance": provenance("cpu", wall_seconds=time.perf_counter() - started)}
    atomic_write_json(Path(args.out), record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

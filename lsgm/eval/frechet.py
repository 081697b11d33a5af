"""The Fréchet distance and its standard error: pooled feature statistics (torch-fidelity's), the distance of two
Gaussians (torch-fidelity's ``fid_statistics_to_metric``), :class:`ReferenceFD` (the same distance of many feature sets
to one reference without a matrix square root, behind the bootstrap standard error), and the official evaluation's
per-process covariance (a convention shown beside ours)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_statistics_to_metric,
)

from lsgm.eval.common import EvalError


def feature_statistics(features: torch.Tensor) -> dict:
    """Pooled mean and covariance of ALL features [N, D] (torch-fidelity's ``fid_features_to_statistics``)."""
    if features.shape[0] < 2:
        raise EvalError("the Fréchet distance needs at least 2 samples; raise --n-samples")
    return fid_features_to_statistics(features.detach().cpu().to(torch.float64))


def frechet_distance(stats_a: dict, stats_b: dict) -> float:
    """Fréchet distance between two Gaussians ``{"mu", "sigma"}`` (torch-fidelity's formula)."""
    a = {k: np.asarray(stats_a[k], dtype=np.float64) for k in ("mu", "sigma")}
    b = {k: np.asarray(stats_b[k], dtype=np.float64) for k in ("mu", "sigma")}
    return float(fid_statistics_to_metric(a, b, verbose=False)[KEY_METRIC_FID])


FD_BOOTSTRAP_DRAWS = 20  # resamples of the generated features behind an FD's standard error


class ReferenceFD:
    """The Fréchet distance of many generated feature sets to one fixed reference, each without a matrix square
    root: the bootstrap behind an FD's standard error evaluates it ``draws`` times per setting, and torch-fidelity's
    ``sqrtm`` of a 2048 x 2048 product takes seconds on a CPU (minutes per cost evaluation at the paper's feature size).

    The same quantity as :func:`frechet_distance`, exactly: ``tr sqrtm(S1 S2) = sum_i sqrt(l_i)`` over the
    eigenvalues of ``S1 S2``, which equal those of the symmetric positive semi-definite ``A S2 A^T`` (N x N, with
    ``S1 = A^T A``, ``A`` the centred features over ``sqrt(N - 1)``) or of ``S2^1/2 S1 S2^1/2`` (D x D), whichever is
    smaller; ``eigvalsh`` of those is stable where ``sqrtm`` of a rank-deficient product is not (N <= D)."""

    def __init__(self, reference: dict):
        self.mu = np.asarray(reference["mu"], dtype=np.float64)
        self.sigma = np.asarray(reference["sigma"], dtype=np.float64)
        self.trace = float(np.trace(self.sigma))
        self._root = None  # S2^1/2, computed once where a set holds more samples than features

    def __call__(self, features: torch.Tensor) -> float:
        x = features.detach().cpu().to(torch.float64).numpy()
        n, dim = x.shape
        if n < 2:
            raise EvalError("the Fréchet distance needs at least 2 samples; raise --n-samples")
        mu = x.mean(axis=0)
        a = (x - mu) / math.sqrt(n - 1)
        if n <= dim:
            gram = a @ self.sigma @ a.T
        else:
            if self._root is None:
                w, v = np.linalg.eigh(self.sigma)
                self._root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
            b = a @ self._root
            gram = b.T @ b
        eig = np.linalg.eigvalsh((gram + gram.T) / 2)
        # eigenvalues that are zero in exact arithmetic (rank N - 1 < D) come out as +-(rounding) and their square
        # roots as ~1e-8 each: below numpy's rank tolerance (max |l| x size x eps, as matrix_rank) they are zero
        eig[eig < np.abs(eig).max(initial=0.0) * eig.size * np.finfo(np.float64).eps] = 0.0
        return float(np.sum((mu - self.mu) ** 2) + np.sum(a * a) + self.trace - 2.0 * np.sum(np.sqrt(eig)))


def per_process_statistics(features: torch.Tensor, processes: int) -> dict:
    """The official FID's statistics (evaluate_vada.py / the official fid code): ``processes`` GPUs each take
    ceil(N / processes) consecutive samples (the last one the rest), compute their own mean and covariance, and the
    statistics are averaged across the GPUs (not pooled: the spread of the per-GPU means is left out)."""
    n = features.shape[0]
    size = math.ceil(n / processes)
    shards = [features[i:i + size] for i in range(0, n, size)]
    if min(len(s) for s in shards) < 2:
        raise EvalError(f"{n} samples over {processes} processes leave a process fewer than 2 samples")
    stats = [feature_statistics(s) for s in shards]
    return {k: np.mean([np.asarray(st[k], dtype=np.float64) for st in stats], axis=0) for k in ("mu", "sigma")}


def fd_standard_error(features: torch.Tensor, reference: dict, *, draws: int = FD_BOOTSTRAP_DRAWS,
                      seed: int = 0) -> float:
    """The bootstrap standard error of ``frechet_distance(feature_statistics(features), reference)``: the standard
    deviation of the FD (:class:`ReferenceFD`) over ``draws`` resamples (with replacement) of the N generated
    features. The reference statistics are held fixed (they come from the whole reference set). The generator is its
    own, seeded by ``seed``, so no other random stream moves."""
    n = features.shape[0]
    gen = torch.Generator().manual_seed(seed)
    fd = ReferenceFD(reference)
    values = [fd(features[torch.randint(n, (n,), generator=gen)]) for _ in range(draws)]
    return float(np.std(values, ddof=1))

"""Like for like, once: which evaluation settings every row of one table must share, and where rows differ.

The plan refuses a config.yaml whose table would mix estimators (before anything runs); the report refuses metrics
files that do (after). Both ask :func:`mismatches` with their rows and word the error for their reader.

* NLL: the same K importance samples (``iw_samples``) in every row; among rows whose prior is a score model (LSGM),
  also the same prior term, M inner ODE solves, ODE tolerance and end time ``t_eps`` (a K = 100 VAE bound beside
  K = 1 LSGM estimates, or two ODE tolerances, are not one estimate).
* FD / FID: the same sample count ``n_samples`` (an FD's bias depends on it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

NLL_ALL = ("iw_samples",)
NLL_SCORE_PRIOR = ("iw_samples", "prior", "inner", "tolerance", "t_eps")
FID = ("n_samples",)


def compared(metric: str, model: str) -> tuple[str, ...]:
    """The settings of ``metric`` ("nll" | "fid") a row of ``model`` ("vae" | "lsgm" | "sgm") shares with the others."""
    if metric == "fid":
        return FID
    return NLL_SCORE_PRIOR if model == "lsgm" else NLL_ALL


def mismatches(rows: Iterable[tuple[str, str, str, dict[str, Any]]]) -> list[tuple[str, str, dict[Any, list[str]]]]:
    """``rows``: ``(metric, model, label, settings)`` of one table. Returns ``(metric, key, {value: [labels]})`` for
    every compared setting with more than one value, in the order the rows first show them (empty: like for like)."""
    seen: dict[tuple[str, str], dict[Any, list[str]]] = {}
    for metric, model, label, settings in rows:
        for key in compared(metric, model):
            labels = seen.setdefault((metric, key), {}).setdefault(settings.get(key), [])
            if label not in labels:
                labels.append(label)
    return [(metric, key, values) for (metric, key), values in seen.items() if len(values) > 1]

"""Where every file of the DAG lives: one pattern per kind of file, its fields named like the rules' wildcards.

The rules declare these patterns as they are (Snakemake fills the wildcards); the plan fills them with
:func:`fill` (every field) or :func:`part` (some fields, the others left as wildcards). Nothing else writes a
``results/``, ``logs/`` or ``checkpoints/`` path, so moving a folder is one edit here.

A model of one seed is ``{dataset}/{kind}/{run}-s{seed}`` (:data:`STEM`) under each folder of its scale.
"""

from __future__ import annotations

import posixpath
import re

STEM = "{dataset}/{kind}/{run}-s{seed}"

# the trained models and their evaluations
CONFIG = f"results/{{scale}}/configs/{STEM}.yaml"
MODEL = f"results/{{scale}}/runs/{STEM}/model.pt"
METRICS = f"results/{{scale}}/metrics/{STEM}/{{metric}}.json"
SAMPLES = f"results/{{scale}}/samples/{STEM}.png"
SAMPLES_JSON = f"results/{{scale}}/samples/{STEM}.json"  # the sidecar of SAMPLES
CHECKPOINTS = f"checkpoints/{{scale}}/{STEM}-{{fingerprint}}"  # resume state; the config hash in the name
FID_STATS_STEM = "{dataset}-{splits}-{bits}bit-{features}-{version}"  # reference statistics, versioned
FID_STATS = f"results/{{scale}}/fid_stats/{FID_STATS_STEM}.pt"

# the released scale: its checkpoints' sizes and sha256 (the first job; lsgm/plan/released.py)
RELEASE_MANIFEST = "results/{scale}/release.json"

# what the scale compiles
TABLE = "results/{scale}/tables/{table}.{ext}"  # ext: md, csv, seeds.csv
FIGURE = "results/{scale}/{figure}.{ext}"  # figure4 / variance; png, csv
REPRODUCTION = "results/{scale}/reproduction.{ext}"  # md, csv

# a miniature's data (in the scale's data_root)
DATA_MANIFEST = "{root}/{dataset}.manifest.json"
INCEPTION_RANDOM = "{root}/inception-random.pth"
DATA_LOG = "logs/make_data/{root}/{dataset}.log"

_FIELD = re.compile(r"\{(\w+)\}")


def part(pattern: str, **fields) -> str:
    """``pattern`` with the given fields filled in and the others left as wildcards."""
    return _FIELD.sub(lambda m: str(fields[m[1]]) if m[1] in fields else m[0], pattern)


def fill(pattern: str, **fields) -> str:
    """``pattern`` with every field filled in (a missing one is an error)."""
    missing = sorted(set(_FIELD.findall(pattern)) - set(fields))
    if missing:
        raise KeyError(f"layout pattern {pattern!r} needs {', '.join(missing)}")
    return part(pattern, **fields)


def seed_stem(batch_seeds: bool, with_kind: bool = True) -> str:
    """The stem of a job's log and benchmark: one seed's (``...-s{seed}``) or, with the scale's seeds batched into
    one job (``scales.S.batch_seeds``), ``...-seeds``; ``with_kind=False`` for a job that names its kind
    (``train_{kind}``)."""
    stem = STEM if with_kind else "{dataset}/{run}-s{seed}"
    return stem.replace("-s{seed}", "-seeds") if batch_seeds else stem


def log(job: str, stem: str) -> str:
    """The log of a job: ``logs/{scale}/<job>/<stem>.log`` (``job`` empty: ``logs/{scale}/<stem>.log``)."""
    return posixpath.join("logs/{scale}", job, f"{stem}.log")


def benchmark(job: str, stem: str) -> str:
    """Snakemake's benchmark file of a job: ``results/{scale}/benchmarks/<job>/<stem>.tsv`` (``job`` may be empty)."""
    return posixpath.join("results/{scale}/benchmarks", job, f"{stem}.tsv")

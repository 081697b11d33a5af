#!/usr/bin/env bash
# Run by Snakemake once, in the new conda environment of workflow/envs/lsgm.yaml, from the workflow's folder: the
# harness itself (its dependencies are the environment's pinned ones).
set -euo pipefail
python -m pip install --no-deps --no-build-isolation -e .

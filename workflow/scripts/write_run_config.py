"""Write one run's RunConfig YAML (Snakemake `script:` of rule run_config).

The resolved mapping comes from workflow/scripts/plan.py via params; it is validated again here with the
strict loader, so the file on disk always loads with ``lsgm.config.load_run_config``. Written atomically
without importing torch (this runs once per run, locally).
"""

import os
import tempfile
from pathlib import Path

import yaml

from lsgm.config import RunConfig, from_dict, to_dict


def main(cfg: dict, out: str, log: str) -> None:
    run = from_dict(RunConfig, cfg, where=out)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(to_dict(run), fh, sort_keys=False)
    os.replace(tmp, path)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    Path(log).write_text(f"wrote {out} ({run.kind} {run.name}, seed {run.seed})\n")


main(snakemake.params.config, snakemake.output[0], snakemake.log[0])  # noqa: F821

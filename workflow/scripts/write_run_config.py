"""Write one run's RunConfig YAML (Snakemake `script:` of rule run_config).

The resolved mapping comes from workflow/scripts/plan.py via params; it is validated again here with the
strict loader, so the file on disk always loads with ``lsgm.config.load_run_config``. Written atomically by
``lsgm.config.save_run_config`` without importing torch (this runs once per run, locally).
"""

from pathlib import Path

from lsgm.config import RunConfig, from_dict, save_run_config


def main(cfg: dict, out: str, log: str) -> None:
    run = from_dict(RunConfig, cfg, where=out)
    save_run_config(run, out)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    Path(log).write_text(f"wrote {out} ({run.kind} {run.name}, seed {run.seed})\n")


main(snakemake.params.config, snakemake.output[0], snakemake.log[0])  # noqa: F821

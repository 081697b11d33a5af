"""Dump everything the plan resolves, for every scale, as one JSON document: every run's config, launcher, resources,
job row, evaluation settings and flags, paths; the targets, table and figure inputs, evaluation jobs. A refactor that
claims "behaviour unchanged" dumps before and after and compares the two files (they must be byte-identical).

    python scripts/plan_dump.py > before.json   (then after the change: ... > after.json; cmp before.json after.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lsgm.plan import SCALES, Plan, eval_args  # noqa: E402


def dump(scale: str, config: dict) -> dict:
    plan = Plan(config, scale)
    runs = {}
    for key, run in sorted(plan.runs.items(), key=lambda kv: str(kv[0])):
        runs["/".join(map(str, key))] = {
            "config": run.config, "launcher": run.launcher(), "resources": run.resources(), "job": run.job(),
            "evals": list(run.evals), "eval_settings": run.eval_settings,
            "flags": {m: eval_args(s) for m, s in run.eval_settings.items()},
            "paths": [run.model_path, run.config_path, *(run.metrics_path(m) for m in run.evals)],
            "backbone": run.backbone.stem if run.backbone else None}
    return {"runs": runs, "targets": plan.targets(), "tables": {t: plan.table_inputs(t) for t in plan.tables},
            "figure4": plan.figure4_inputs(), "variance": plan.variance_inputs(), "eval_jobs": plan.eval_jobs(),
            "samples": plan.samples_targets()}


def main() -> int:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    print(json.dumps({scale: dump(scale, config) for scale in SCALES}, indent=1, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

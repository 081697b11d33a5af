"""The report, the plan, the config and the file helpers import without torch (each in a fresh interpreter).

The report and the workflow's planning run where torch may be absent or slow to import; a torch import that
creeps in through a helper (as ``lsgm.utils`` once did for the atomic writes) fails here.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import lsgm.report

ROOT = Path(__file__).resolve().parent.parent
REPORT_MODULES = sorted(f"lsgm.report.{m.name}" for m in pkgutil.iter_modules(lsgm.report.__path__))
TORCH_FREE = ["lsgm.report", *REPORT_MODULES, "lsgm.io", "lsgm.config", "lsgm.datasets_info", "lsgm.methods",
              "lsgm.recipes", "lsgm.plan", "lsgm.config_sources", "lsgm.launch", "lsgm.cli", "lsgm.eval.registry",
              "lsgm.eval.settings", "lsgm.controls", "lsgm.preflight"]


def test_every_report_module_is_listed():
    assert {"lsgm.report.cli", "lsgm.report.tables", "lsgm.report.figure"} <= set(REPORT_MODULES)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_imports_without_torch(module):
    code = (f"import sys, {module}\n"
            f"assert {module}.__file__.startswith({str(ROOT)!r}), {module}.__file__\n"
            f"bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            f"assert not bad, 'imports torch'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"{module}: {proc.stderr.strip().splitlines()[-1:]}"

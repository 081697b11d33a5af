"""The command line's papercuts stay fixed: every command's --help works and names what it can do, a closed pipe is
not an error, a mistyped run name lists the names there are."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lsgm.cli import COMMANDS, main
from lsgm.plan import SCALES, Plan, PlanError

ROOT = Path(__file__).resolve().parents[1]


def test_the_top_level_help_names_every_evaluation_and_report(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "nll | fid | cost | samples" in out and "tables | figure4 | variance | reproduction" in out
    assert set(COMMANDS) <= set(out.split())


@pytest.mark.parametrize("command", ["launch", "report", "plan", "evaluate", "fid-stats", "import-official"])
def test_every_command_has_a_help(command):
    proc = subprocess.run([sys.executable, "-m", "lsgm", command, "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "usage:" in proc.stdout and not proc.stderr.strip(), proc.stderr


def test_report_help_shows_reproduction_and_every_scale():
    proc = subprocess.run([sys.executable, "-m", "lsgm", "report", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    text = " ".join(proc.stdout.split())
    assert "reproduction" in text and all(scale in text for scale in SCALES)


def test_a_closed_pipe_is_not_a_traceback():
    proc = subprocess.run(f"{sys.executable} -m lsgm plan --scale quick --json | head -1", shell=True,
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.strip() == "{" and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_a_mistyped_run_name_lists_the_runs_there_are():
    plan = Plan(yaml.safe_load((ROOT / "config.yaml").read_text()), "quick")
    with pytest.raises(PlanError) as err:
        plan.run("lsgm", "digits", "balancd", 0)
    message = str(err.value)
    assert "did you mean 'balanced'?" in message and "balanced_init" in message and "\n" not in message
    with pytest.raises(PlanError, match="has no seed 7; its seeds: 0, 1, 2"):
        plan.run("lsgm", "digits", "balanced", 7)
    with pytest.raises(PlanError, match="did you mean 'digits'"):
        plan.run("lsgm", "digit", "balanced", 0)


def test_the_workflow_lints_clean_and_its_conda_environment_has_the_projects_pins():
    """`snakemake --lint` has nothing to say; every shell rule names workflow/envs/lsgm.yaml (for --sdm conda), whose
    pip pins are exactly pyproject.toml's."""
    import tomllib

    proc = subprocess.run(["snakemake", "--lint"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and "Congratulations" in proc.stdout + proc.stderr, proc.stdout[-2000:]
    env = yaml.safe_load((ROOT / "workflow" / "envs" / "lsgm.yaml").read_text())
    pins = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "python=3.11" in env["dependencies"]
    assert (ROOT / "workflow" / "envs" / "lsgm.post-deploy.sh").stat().st_mode & 0o111

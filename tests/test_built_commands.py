"""Every `lsgm` command line a dry run builds is one the `lsgm` CLI accepts: the built command lines, not the
configs they came from, parsed by the very parsers the jobs run (argparse stops before any work). A flag a rule adds
to a command that does not take it (e.g. --inception-weights on `lsgm evaluate nll`) fails here, on the plan,
instead of in the first job of a cluster run."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from lsgm import cli

ROOT = Path(__file__).resolve().parents[1]


class _Parsed(Exception):
    """Raised instead of returning from parse_args: the command line was accepted; nothing runs."""


def built_commands(*args: str) -> list[list[str]]:
    proc = subprocess.run(["snakemake", "-n", "-p", "--forceall", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    commands = []
    for line in re.findall(r"^Shell command: (.+)$", proc.stdout + proc.stderr, flags=re.M):
        if line == "None":
            continue
        words = shlex.split(line.split(" > ", 1)[0].removeprefix("set -euo pipefail; ").strip())
        assert words[0] == "lsgm", line
        commands.append(words[1:])
        if words[1] == "launch":  # the launched command is checked too
            commands.append(words[words.index("--") + 1:])
    return commands


def rejected(argv: list[str], monkeypatch) -> str | None:
    """None if `lsgm argv` parses, else argparse's message."""
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    try:
        cli.main(argv)
    except _Parsed:
        return None
    except SystemExit as stop:
        return f"exit {stop.code}"
    finally:
        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", original)
    return "returned without parsing"


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A miniature NVlabs/LSGM release (random weights): the released scale's dry run checks its files first."""
    from lsgm.official import writer
    from lsgm.plan import make_plan
    from lsgm.plan.cluster import workflow_config

    config, _ = workflow_config(ROOT / "config.yaml", None)
    root = tmp_path_factory.mktemp("release")
    config["released_root"] = str(root)
    writer.write_release(make_plan(config, "released"), root, seed=0)
    return root


@pytest.mark.parametrize("args", [("--config", "scale=mini"), ("--config", "scale=quick"), ("--profile", "slurm"),
                                  ("--config", "scale=released")], ids=["mini", "quick", "paper-slurm", "released"])
def test_every_built_command_line_parses(args, monkeypatch, capsys, request):
    if "scale=released" in args:
        args = (*args, f"released_root={request.getfixturevalue('release')}")
    commands = built_commands(*args)
    assert len(commands) > 20
    bad = {}
    for argv in commands:
        why = rejected(argv, monkeypatch)
        if why:
            bad[" ".join(argv[:2])] = (why, capsys.readouterr().err.strip().splitlines()[-1:], " ".join(argv))
    assert not bad, bad
